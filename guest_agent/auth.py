"""Who may talk to the agent: CURVE keys, checked by a ZAP handler on the agent's own loop.

libzmq asks the ZAP handler bound at ``inproc://zeromq.zap.01`` about every
CURVE handshake. Answering it on the event loop (rather than pyzmq's
authenticator thread) keeps the agent single-threaded and small.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable

import zmq
import zmq.auth

from common.trust import UntrustedPathError, require_secret, trusted_file, trusted_key_directory
from common.zmqloop import LoopSocket

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"


class KeyFileError(ValueError):
    """A key file or directory that cannot be used; the message names it."""


def load_server_secret(path: str) -> tuple[bytes, bytes]:
    """``(public, secret)`` z85 keys from a zmq.auth secret certificate file that only root or
    we can change and nobody else can read (see :mod:`common.trust`)."""
    try:
        real, status = trusted_file(path, what="--server-key", secret=True)
        public, secret = zmq.auth.load_certificate(real)
    except UntrustedPathError as error:
        raise KeyFileError(str(error)) from None
    except (OSError, ValueError) as error:
        raise KeyFileError(f"cannot read server key {path!r}: {error}") from None
    if secret is None:
        raise KeyFileError(f"{path!r} holds no secret key (give the *.key_secret file)")
    try:
        require_secret(real, status, what="--server-key")
    except UntrustedPathError as error:
        raise KeyFileError(str(error)) from None
    return public, secret


def load_authorized_keys(directory: str) -> set[bytes]:
    """The raw 32-byte public keys of every ``*.key`` certificate in ``directory``; the directory
    and every key in it must be writable by nobody but root or us (see :mod:`common.trust`)."""
    try:
        real_directory = trusted_key_directory(directory, what="--authorized-keys")
        names = sorted(os.listdir(real_directory))
    except UntrustedPathError as error:
        raise KeyFileError(str(error)) from None
    except OSError as error:
        raise KeyFileError(f"cannot read authorized keys directory {directory!r}: {error.strerror}") from None
    keys: set[bytes] = set()
    for name in names:
        if not name.endswith(".key"):
            continue
        path = os.path.join(real_directory, name)
        try:
            real, _ = trusted_file(path, what="--authorized-keys")
            public, _ = zmq.auth.load_certificate(real)
        except UntrustedPathError as error:
            raise KeyFileError(str(error)) from None
        except (OSError, ValueError) as error:
            raise KeyFileError(f"cannot read authorized key {path!r}: {error}") from None
        keys.add(zmq.utils.z85.decode(public))
    if not keys:
        raise KeyFileError(f"no public keys (*.key) in {directory!r}")
    return keys


def fingerprint(raw_key: bytes) -> str:
    return "SHA256:" + hashlib.sha256(raw_key).hexdigest()[:16]


class RefusalLog:
    """Refused handshakes logged at a bounded rate: a token bucket of ``burst`` lines that refills
    at one line per ``interval`` seconds. Refusals over it are counted, and :meth:`flush` sums them
    up in one line (the ZAP handler calls it ``interval`` seconds after the first one counted, and
    when it closes). So a flood costs at most ``burst`` lines, then two a minute.

    Inside a VM the agent's log is the serial console: a file on the host that nobody rotates,
    and anyone who can reach the port can make the agent refuse them.
    """

    def __init__(self, logger: logging.Logger, *, burst: int = 10, interval: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.interval = interval
        self.suppressed = 0
        self._log = logger
        self._clock = clock
        self._tokens = float(burst)
        self._refilled = clock()
        self._since = 0.0
        self._last = ""

    def refused(self, message: str) -> bool:
        """Log ``message`` now if the bucket allows, else count it. True for the first one counted
        since the last flush: the caller then arranges a :meth:`flush` ``interval`` seconds later."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) / self.interval)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            self._log.warning("%s", message)
            return False
        self.suppressed += 1
        self._last = message
        if self.suppressed == 1:
            self._since = now
            return True
        return False

    def flush(self) -> None:
        """One line for every refusal counted since the last flush (none if there were none)."""
        if self.suppressed:
            self._log.warning("refused %d more handshakes in %.0fs, not logged one by one; the last: %s",
                              self.suppressed, self._clock() - self._since, self._last)
            self.suppressed = 0


class ZapHandler:
    """Admits CURVE clients whose public key is authorized; everything else is refused (and
    logged through a :class:`RefusalLog`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, context: zmq.Context, authorized: set[bytes]) -> None:
        self.authorized = authorized
        self.refused = 0
        self._loop = loop
        self._refusals = RefusalLog(log)
        self._flush_timer: asyncio.TimerHandle | None = None
        socket = context.socket(zmq.ROUTER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.bind(ZAP_ENDPOINT)
        self._socket = LoopSocket(loop, socket, self._on_request)

    def _on_request(self, frames: list[zmq.Frame]) -> None:
        parts = [frame.bytes for frame in frames]
        # [peer identity, empty, version, request id, domain, address, routing id, mechanism, credentials...]
        if len(parts) < 8:
            log.warning("malformed ZAP request with %d frames", len(parts))
            return
        envelope, version, request_id = parts[:2], parts[2], parts[3]
        address, mechanism, credentials = parts[5], parts[7], parts[8:]
        if mechanism == b"CURVE" and credentials and credentials[0] in self.authorized:
            status, text = b"200", b"OK"
        else:
            self.refused += 1
            status, text = b"400", b"key not authorized"
            offered = fingerprint(credentials[0]) if credentials else "no key"
            message = (f"refused {mechanism.decode(errors='replace')} client from "
                       f"{address.decode(errors='replace')} ({offered})")
            if self._refusals.refused(message):
                self._flush_timer = self._loop.call_later(self._refusals.interval, self._flush)
        self._socket.send([*envelope, version, request_id, status, text, b"", b""])

    def _flush(self) -> None:
        self._flush_timer = None
        self._refusals.flush()

    def close(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._refusals.flush()
        self._socket.close()
