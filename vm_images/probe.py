"""Readiness probes: does the guest answer at the application level?

A TCP connect to a QEMU user-net forward proves nothing (slirp accepts
before anything listens in the guest), so readiness is an application reply:

- ``agent_hello``: the agent answers ``hello`` over ZeroMQ with CURVE. It is
  the default ``AgentProbe``; any callable with the same signature can
  replace it (e.g. one built on ``host_proxy.AgentClient``).
- ``ssh_banner``: the guest's sshd sends its ``SSH-`` identification line.

Both make one attempt bounded by ``timeout`` and raise ``NotReady`` when the
guest does not answer (yet); the launcher owns the retry loop.
"""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path
from typing import Protocol

import msgpack
import zmq
import zmq.auth

PROTOCOL_VERSIONS = [1]
# Without it a ZeroMQ client waits 30 s on a slirp connection nobody answers.
HANDSHAKE_IVL_MS = 1000


class NotReady(Exception):
    """The guest did not answer this attempt; trying again may succeed."""


class ProbeFailed(Exception):
    """The guest answered, but not as a working agent would; retrying will not help."""


class AgentProbe(Protocol):
    def __call__(self, endpoint: str, server_key: Path, client_key: Path,
                 timeout: float) -> str:
        """Return the agent's boot id, or raise NotReady / ProbeFailed."""
        ...


def agent_hello(endpoint: str, server_key: Path, client_key: Path, timeout: float) -> str:
    """Send one ``hello`` on a fresh CURVE DEALER and return the reply's ``boot_id``.

    ``server_key`` is the agent's public certificate, ``client_key`` the
    client's secret certificate (``zmq.auth`` files). An ``error`` reply
    raises ProbeFailed with the agent's code and message.
    """
    try:
        server_public, _ = zmq.auth.load_certificate(str(server_key))
        client_public, client_secret = zmq.auth.load_certificate(str(client_key))
    except (OSError, ValueError) as error:
        raise ProbeFailed(f"cannot load the CURVE certificates: {error}") from None
    if client_secret is None:
        raise ProbeFailed(f"{client_key} holds no secret key")
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = context.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.curve_serverkey = server_public
        sock.curve_publickey = client_public
        sock.curve_secretkey = client_secret
        sock.connect(endpoint)
        request = {"id": 1, "op": "hello", "versions": PROTOCOL_VERSIONS,
                   "session": secrets.token_hex(16)}
        sock.send(msgpack.packb(request))
        deadline = time.monotonic() + timeout
        while True:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                raise NotReady(f"no hello reply from {endpoint} within {timeout:.1f}s")
            frames = sock.recv_multipart()
            reply = _decode(frames[0])
            if reply.get("id") == 1:
                return _boot_id(reply, endpoint)
            # A reply or event for another id cannot come from a fresh socket's
            # session, but ignoring it is harmless; keep waiting for ours.
    finally:
        sock.close(linger=0)


def _decode(frame: bytes) -> dict[str, object]:
    try:
        reply = msgpack.unpackb(frame, raw=False)
    except (ValueError, msgpack.UnpackException) as error:
        raise ProbeFailed(f"hello reply is not msgpack: {error}") from None
    if not isinstance(reply, dict):
        raise ProbeFailed(f"hello reply is not a map: {reply!r:.200}")
    return reply


def _boot_id(reply: dict[str, object], endpoint: str) -> str:
    error = reply.get("error")
    if isinstance(error, dict):
        raise ProbeFailed(f"agent at {endpoint} refused hello: "
                          f"{error.get('code')}: {error.get('message')}")
    result = reply.get("result")
    if not isinstance(result, dict) or not isinstance(result.get("boot_id"), str):
        raise ProbeFailed(f"hello reply from {endpoint} has no result.boot_id: {reply!r:.300}")
    return str(result["boot_id"])


def ssh_banner(host: str, port: int, timeout: float) -> str:
    """Return the sshd's identification line (``SSH-2.0-...``) or raise NotReady."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            received = b""
            while b"\n" not in received and len(received) < 512:
                conn.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = conn.recv(512)
                if not chunk:  # slirp closes once the guest refuses the forward
                    break
                received += chunk
    except OSError as error:
        raise NotReady(f"no SSH banner on {host}:{port}: {error}") from None
    line = received.split(b"\n", 1)[0].strip()
    if not line.startswith(b"SSH-"):
        raise NotReady(f"no SSH banner on {host}:{port} (got {line[:80]!r})")
    return line.decode(errors="replace")
