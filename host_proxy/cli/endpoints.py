"""What is wrong with an endpoint or a key file, said before connecting, and after a failed handshake.

Promise: every problem found here is a :class:`~host_proxy.cli.errors.CliError`
(exit 125) whose one line names the option (or the environment variable it
came from), the file or the endpoint, and the fix:

- :func:`check_endpoint`: the endpoint's syntax (scheme, host, port in
  1..65535, an ipc path), before anything is opened;
- :func:`check_certificate`, :func:`check_file`: a key file exists, is a
  file, and is a ZeroMQ certificate (with a secret key where one is needed),
  before connecting — so a wrong ``--keys`` is not reported as the agent's
  fault. (Whether a key file's permissions may be trusted is the library's
  judgement, made when it loads the file.)
- :func:`first_bytes` and :func:`peer_mechanism` look at what a tcp peer
  says first: nothing, a ZeroMQ greeting (with its security mechanism,
  ``NULL`` or ``CURVE``), or something else entirely — which turns "the
  handshake failed" into "that port is sshd" or "that agent uses CURVE".
"""

from __future__ import annotations

import os
import select
import socket
import time
from dataclasses import dataclass

from .errors import CliError

SCHEMES = "ipc:///path, tcp://HOST:PORT or ssh://[USER@]HOST[:PORT]"
# ZMTP 3.0: a greeting opens with this signature (0xFF, 8 bytes of padding, 0x7F).
_SIGNATURE_FIRST, _SIGNATURE_LAST, _SIGNATURE_SIZE = 0xFF, 0x7F, 10
# The start of our greeting: signature and version 3.0. The peer answers with its own, mechanism
# included; ours is never sent, so no handshake is attempted and none fails.
_GREETING_START = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00"
_MECHANISM = slice(12, 32)


@dataclass(frozen=True)
class Named:
    """A value and how to name it to the person who gave it: ``--server-key`` or ``$UVMEXEC_SERVER_KEY``."""

    value: str
    name: str


def option(value: str | None, flag: str, variable: str) -> Named | None:
    """The option's value, else its environment variable's, named as it was given."""
    if value:
        return Named(value, flag)
    from_env = os.environ.get(variable)
    return Named(from_env, f"${variable}") if from_env else None


def check_endpoint(endpoint: Named) -> None:
    """Refuse an endpoint whose syntax is wrong, naming what to write instead."""
    text = endpoint.value
    scheme, separator, rest = text.partition("://")
    where = f"{endpoint.name} {text}"
    if not separator or scheme not in ("ipc", "tcp", "ssh"):
        raise CliError(f"{where}: not an endpoint; give {SCHEMES}")
    if scheme == "ipc":
        if not rest:
            raise CliError(f"{where}: no socket path; give ipc:///path/to/agent.sock")
        return
    if scheme == "tcp":
        host, colon, port = rest.rpartition(":")
        if not colon or "]" in port:
            raise CliError(f"{where}: no port; give tcp://HOST:PORT (the VM's agent: use --vm)")
        if host.startswith("[") != host.endswith("]") or host.strip("[]") in ("", "*"):
            raise CliError(f"{where}: {host!r} is not a host to connect to; give tcp://HOST:PORT")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise CliError(f"{where}: port {port!r} is not in 1..65535; give tcp://HOST:PORT")
        return
    from common.errors import InvalidArgumentError

    from ..ssh_endpoint import parse_ssh_endpoint

    try:
        parse_ssh_endpoint(text)
    except InvalidArgumentError as error:
        detail = str(error).replace(f"ssh endpoint {text!r}: ", "")
        raise CliError(f"{where}: {detail}; give ssh://[USER@]HOST[:PORT][?agent=tcp://HOST:PORT]") from None


def check_file(path: Named, what: str, fix: str) -> None:
    """The file exists and is a regular file we can open."""
    try:
        with open(path.value, "rb"):
            pass
    except FileNotFoundError:
        raise CliError(f"{path.name} {path.value}: no such file ({fix})") from None
    except IsADirectoryError:
        raise CliError(f"{path.name} {path.value}: is a directory, not {what} ({fix})") from None
    except OSError as error:
        raise CliError(f"{path.name} {path.value}: cannot read it: {error.strerror} ({fix})") from None


def check_certificate(path: Named, *, secret: bool, fix: str) -> None:
    """The file is a ZeroMQ certificate (``uvmexec keygen`` makes them), with a secret key if ``secret``."""
    import zmq.auth

    what = "a secret certificate" if secret else "a public certificate"
    check_file(path, what, fix)
    try:
        public, secret_key = zmq.auth.load_certificate(path.value)
    except (OSError, ValueError):
        raise CliError(f"{path.name} {path.value}: not a ZeroMQ certificate ({fix})") from None
    if not public:
        raise CliError(f"{path.name} {path.value}: holds no public key ({fix})")
    if secret and not secret_key:
        raise CliError(f"{path.name} {path.value}: holds no secret key, only a public one ({fix})")


def check_directory(path: Named, fix: str) -> None:
    if not os.path.exists(path.value):
        raise CliError(f"{path.name} {path.value}: no such directory ({fix})")
    if not os.path.isdir(path.value):
        raise CliError(f"{path.name} {path.value}: not a directory ({fix})")


def tcp_address(endpoint: str) -> tuple[str, int]:
    """``(host, port)`` of a checked ``tcp://`` endpoint."""
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    return host.strip("[]"), int(port)


def first_bytes(sock: socket.socket, wait: float) -> bytes | None:
    """What a freshly connected peer sends of its own accord within ``wait`` seconds (b"" if it
    closed; None if it said nothing). A ZeroMQ peer sends its signature at once."""
    readable, _, _ = select.select([sock], [], [], wait)
    if not readable:
        return None
    try:
        return sock.recv(64)
    except OSError:
        return b""


def is_zmtp(data: bytes) -> bool:
    return bool(data) and data[0] == _SIGNATURE_FIRST and (len(data) < _SIGNATURE_SIZE
                                                           or data[_SIGNATURE_SIZE - 1] == _SIGNATURE_LAST)


def shown(data: bytes) -> str:
    """The start of what a peer said, printable and short."""
    text = data.split(b"\n", 1)[0].decode("ascii", errors="replace").strip()
    text = "".join(c if c.isprintable() else "?" for c in text)[:40]
    return repr(text) if text else f"{len(data)} binary bytes"


def peer_mechanism(host: str, port: int, timeout: float = 2.0) -> str | None:
    """The ZeroMQ security mechanism the peer at ``host:port`` offers ("NULL", "CURVE", ...),
    "" if it is not a ZeroMQ peer, None if it cannot be told (unreachable, silent)."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_GREETING_START)
            data = b""
            while len(data) < _MECHANISM.stop:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                readable, _, _ = select.select([sock], [], [], remaining)
                if not readable:
                    break
                chunk = sock.recv(64)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    if not data:
        return None
    if not is_zmtp(data):
        return ""
    if len(data) < _MECHANISM.stop:
        return None
    return data[_MECHANISM].rstrip(b"\0").decode("ascii", errors="replace")
