"""The ``ssh://`` transport: a guest's agent reached through SSH, exposed to ZeroMQ on a private ipc socket.

``SshTunnel`` dials SSH with paramiko (key auth; the host key checked against
an OpenSSH ``known_hosts`` file, never auto-added), listens on a Unix socket in
a fresh 0700 directory, and splices every connection accepted there to a
``direct-tcpip`` channel to the agent's address on the guest (by default its
loopback ``127.0.0.1:5555``). A ZeroMQ DEALER connects to ``tunnel.endpoint``
as to any ipc endpoint; its own reconnect logic drives ours: when the SSH
connection dies every relayed connection is closed, and the next one accepted
re-dials SSH.

Errors at this edge: a refused, unreachable, timed-out or unauthenticated SSH
server raises :class:`~common.errors.UnavailableError`; bad URLs and unusable
key or known_hosts files raise :class:`~common.errors.InvalidArgumentError`.
No paramiko or socket exception leaks out.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import paramiko
from paramiko.common import MSG_CHANNEL_WINDOW_ADJUST

from common.errors import AuthenticationError, InvalidArgumentError, UnavailableError

from .known_hosts import KnownHosts, describe_key, load_private_key
from .ssh_endpoint import SshTarget

log = logging.getLogger(__name__)
# A library does not print: paramiko's transport logs (routed below this
# logger) and ours reach stderr only if the application configures logging.
log.addHandler(logging.NullHandler())


_CHUNK = 64 * 1024  # the most either direction of one relay holds in our hands
_BURST = 8  # chunks one relay may move per wake-up before the others get a turn
_BACKLOG = 16


# -- the tunnel ----------------------------------------------------------------------------------


class SshTunnel:
    """An SSH connection to ``target`` whose agent port is served on ``endpoint`` (``ipc://...``).

    Construction dials SSH at once and raises ``UnavailableError`` if the
    server cannot be reached within ``timeout`` seconds, offers a host key
    that ``known_hosts`` does not list for it (the message names the offered
    key's type and SHA256 fingerprint), or rejects ``ssh_key``. Unreadable key
    or known_hosts files raise ``InvalidArgumentError``.

    Then one background thread relays: each connection accepted on the ipc
    socket gets its own ``direct-tcpip`` channel to the agent's address; bytes
    flow both ways, with half-closes passed on, until both directions ended.
    Neither direction holds more than 64 KiB of ours, and a channel is read
    only as fast as the Unix side drains it, so a slow reader stalls the
    writer instead of growing a buffer. If the agent's port refuses, that one
    connection is closed.

    Reconnect: when the SSH connection dies (sshd killed, network cut, dead
    peer found by keepalives after about ``3 * keepalive`` seconds), every
    relayed connection is closed; the next accepted connection re-dials SSH
    with the same checks, and is closed at once if that fails (ZeroMQ retries
    with its own backoff). ``reconnects`` counts successful re-dials.

    ``close()`` may be called from any thread, any number of times. It stops
    the relay thread, closes every channel, the SSH connection and the
    listening socket, and removes the private directory; nothing (thread, fd,
    socket file) is left behind. A re-dial in progress is abandoned within
    about 0.1 s (a host name being resolved finishes resolving first).
    """

    def __init__(
        self,
        target: SshTarget,
        *,
        ssh_key: str | os.PathLike[str],
        known_hosts: str | os.PathLike[str],
        timeout: float = 10.0,
        keepalive: float = 15.0,
    ) -> None:
        if not timeout > 0:
            raise InvalidArgumentError(f"ssh timeout must be positive, not {timeout!r}")
        if not keepalive > 0:
            raise InvalidArgumentError(f"ssh keepalive must be positive, not {keepalive!r}")
        self.target = target
        self._timeout = float(timeout)
        self._keepalive = keepalive
        self._key_path = Path(ssh_key)
        self._known_hosts_path = Path(known_hosts)
        self._key = load_private_key(self._key_path)
        KnownHosts.load(self._known_hosts_path)  # fail now, not at the first re-dial

        self.reconnects = 0
        self._close_lock = threading.Lock()  # serialises close() callers
        self._closed = False
        # Guards _transport and _closing, which close() reads from another
        # thread to abort a dial or a blocking channel call in progress.
        self._lock = threading.Lock()
        self._closing = False
        self._transport: paramiko.Transport | None = None
        self._relays: set[_Relay] = set()
        self._accepting = True
        self._failures_in_a_row = 0  # connections we could not relay since the last one we could

        with contextlib.ExitStack() as resources:
            # The stop pipe is written once by close() and never drained, so it
            # stays readable and interrupts every wait of the relay thread. The
            # wake pipe is drained; paramiko's thread writes it when a channel's
            # send window grows.
            self._stop_r, self._stop_w = _pipe(resources)
            self._wake_r, self._wake_w = _pipe(resources)
            self._transport = self._dial()
            resources.callback(self._drop_transport)
            self._directory = tempfile.mkdtemp(prefix="uvmexec-ssh-")  # mode 0700
            resources.callback(shutil.rmtree, self._directory, True)
            self._socket_path = os.path.join(self._directory, "agent.sock")
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            resources.callback(self._listener.close)
            try:
                self._listener.bind(self._socket_path)
                self._listener.listen(_BACKLOG)
            except OSError as error:
                raise UnavailableError(f"ssh tunnel: cannot listen on {self._socket_path}: {error}") from None
            self._listener.setblocking(False)
            self._selector = selectors.DefaultSelector()
            resources.callback(self._selector.close)
            self._selector.register(self._stop_r, selectors.EVENT_READ, _STOP)
            self._selector.register(self._wake_r, selectors.EVENT_READ, _WAKE)
            self._selector.register(self._listener, selectors.EVENT_READ, _ACCEPT)
            self._thread = threading.Thread(target=self._run, name=f"uvmexec-ssh-relay {target}", daemon=True)
            self._thread.start()
            self._resources = resources.pop_all()

    @property
    def endpoint(self) -> str:
        """The ZeroMQ endpoint that reaches the agent: ``ipc:///<private 0700 dir>/agent.sock``."""
        return f"ipc://{self._socket_path}"

    @property
    def directory(self) -> str:
        """The private directory holding the socket; removed by ``close()``."""
        return self._directory

    def close(self) -> None:
        """Stop relaying and release everything; see the class docstring. Idempotent, any thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            with self._lock:
                self._closing = True
                transport = self._transport
            os.write(self._stop_w, b"x")
            if transport is not None:
                # paramiko's blocking calls (negotiation, auth, channel open,
                # sends) watch transport.active, so this ends them promptly.
                transport.close()
            if self._thread is not threading.current_thread():
                self._thread.join()
            self._resources.close()

    def __enter__(self) -> SshTunnel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._relays)} connections"
        return f"<SshTunnel {self.target} agent {self.target.agent} at {self.endpoint}: {state}>"

    # -- dialing (constructor, then the relay thread only) --------------------------------------

    def _dial(self) -> paramiko.Transport:
        """Connect, check the host key and authenticate within the timeout; ``UnavailableError`` if not."""
        deadline = time.monotonic() + self._timeout
        try:
            known_hosts = KnownHosts.load(self._known_hosts_path)
        except InvalidArgumentError as error:  # it was readable when the tunnel was made
            raise UnavailableError(f"ssh {self.target}: cannot check the host key: {error}") from None
        stage = "connecting"
        transport: paramiko.Transport | None = None
        try:
            sock = self._connect(deadline)
            try:
                transport = paramiko.Transport(sock)
            except BaseException:
                sock.close()
                raise
            with self._lock:
                if self._closing:
                    transport.close()
                    raise UnavailableError(f"ssh {self.target}: the tunnel was closed")
                self._transport = transport
            transport.name = f"uvmexec-ssh-transport {self.target}"
            transport.set_log_channel(f"{__name__}.paramiko")
            _watch_send_windows(transport, self._wake)
            _prefer_known_key_types(transport, known_hosts.keys_for(self.target.known_hosts_name))
            _prefer_aead_ciphers(transport)
            stage = "negotiating SSH"
            transport.banner_timeout = transport.handshake_timeout = _remaining(deadline)
            transport.start_client(timeout=_remaining(deadline))
            if not transport.initial_kex_done:  # paramiko returns quietly when its timeout passes
                raise TimeoutError()
            self._check_host_key(transport.get_remote_server_key(), known_hosts)
            stage = "authenticating"
            self._authenticate(transport, deadline)
            transport.set_keepalive(max(1, round(self._keepalive)))
            return transport
        except UnavailableError:
            self._forget(transport)
            raise
        except TimeoutError:
            self._forget(transport)
            raise UnavailableError(
                f"ssh {self.target}: timed out after {self._timeout:g} s while {stage}"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as error:
            self._forget(transport)
            if self._closing:
                raise UnavailableError(f"ssh {self.target}: the tunnel was closed") from None
            if time.monotonic() >= deadline:  # paramiko's own timeouts raise plain SSHExceptions
                raise UnavailableError(
                    f"ssh {self.target}: timed out after {self._timeout:g} s while {stage}"
                ) from None
            reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise UnavailableError(f"ssh {self.target}: failed while {stage}: {reason}") from None
        except Exception as error:  # paramiko choking on a strange peer must not escape either
            self._forget(transport)
            log.debug("ssh %s: unexpected error while %s", self.target, stage, exc_info=True)
            raise UnavailableError(
                f"ssh {self.target}: failed while {stage}: {type(error).__name__}: {error}"
            ) from None

    def _connect(self, deadline: float) -> socket.socket:
        """A connected TCP socket to the SSH server; the wait also ends when close() is called."""
        try:
            addresses = socket.getaddrinfo(self.target.host, self.target.port, type=socket.SOCK_STREAM)
        except socket.gaierror as error:
            raise UnavailableError(
                f"ssh {self.target}: cannot resolve {self.target.host}: {error.strerror}"
            ) from None
        failure: OSError = OSError(f"no address for {self.target.host}")
        for family, kind, proto, _, address in addresses:
            sock = _QuickAckSocket(family, kind, proto)
            try:
                sock.setblocking(False)
                code = sock.connect_ex(address)
                if code == errno.EINPROGRESS:
                    with selectors.DefaultSelector() as waiter:
                        waiter.register(sock, selectors.EVENT_WRITE)
                        waiter.register(self._stop_r, selectors.EVENT_READ)
                        ready = {key.fileobj for key, _ in waiter.select(_remaining(deadline))}
                    if self._stop_r in ready:
                        raise UnavailableError(f"ssh {self.target}: the tunnel was closed")
                    if not ready:
                        raise TimeoutError()
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, f"cannot connect to {self.target.address}: {os.strerror(code)}")
                sock.setblocking(True)
                _tune_tcp(sock, self._keepalive)
                return sock
            except UnavailableError:  # an OSError too, but final: the tunnel is closing
                sock.close()
                raise
            except OSError as error:  # includes TimeoutError; try the next address, if any
                sock.close()
                failure = error
            except BaseException:
                sock.close()
                raise
        raise failure

    def _check_host_key(self, key: paramiko.PKey, known_hosts: KnownHosts) -> None:
        name = self.target.known_hosts_name
        where = f"ssh {self.target.address}: host key verification failed"
        if known_hosts.is_revoked(key):
            raise AuthenticationError(
                f"{where}: the server offered {describe_key(key)}, REVOKED in {known_hosts.path}"
            )
        known = known_hosts.keys_for(name)
        if not known:
            raise AuthenticationError(
                f"{where}: no key for {name} in known_hosts {known_hosts.path}; "
                f"the server offered {describe_key(key)}"
            )
        if any(candidate.asbytes() == key.asbytes() for candidate in known):
            return
        same_type = [candidate for candidate in known if candidate.get_name() == key.get_name()]
        if same_type:
            expected = ", ".join(candidate.fingerprint for candidate in same_type)
            raise AuthenticationError(
                f"{where}: HOST KEY CHANGED for {name}: the server offered {describe_key(key)}, "
                f"known_hosts {known_hosts.path} has {expected}"
            )
        types = ", ".join(sorted({candidate.get_name() for candidate in known}))
        raise AuthenticationError(
            f"{where}: the server offered {describe_key(key)}, but known_hosts {known_hosts.path} "
            f"lists only {types} keys for {name}"
        )

    def _authenticate(self, transport: paramiko.Transport, deadline: float) -> None:
        transport.auth_timeout = _remaining(deadline)
        rejected = f"ssh {self.target}: the server rejected key {self._key_path} ({describe_key(self._key)})"
        try:
            further = transport.auth_publickey(self.target.user, self._key)
        except paramiko.BadAuthenticationType as error:
            allowed = ", ".join(error.allowed_types) or "none"
            raise AuthenticationError(f"{rejected}: public keys are not accepted (allowed: {allowed})") from None
        except paramiko.AuthenticationException:
            # paramiko reports a lost connection and its own timeout as
            # AuthenticationException too; tell them apart from a rejection.
            if not transport.is_active():
                raise EOFError("the connection closed") from None
            if time.monotonic() >= deadline:
                raise TimeoutError() from None
            raise AuthenticationError(rejected) from None
        if further:
            raise AuthenticationError(f"{rejected}: it demands more authentication ({', '.join(further)})")

    def _forget(self, transport: paramiko.Transport | None) -> None:
        if transport is None:
            return
        with self._lock:
            if self._transport is transport:
                self._transport = None
        _close_transport(transport)

    def _drop_transport(self) -> None:
        with self._lock:
            transport, self._transport = self._transport, None
        if transport is not None:
            _close_transport(transport)

    def _wake(self) -> None:
        """Called on paramiko's thread: a channel's send window grew, so relays may move on."""
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    # -- the relay thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._relay_until_stopped()
        except Exception:  # a bug; log it rather than kill the thread silently
            log.exception("ssh tunnel %s: relay thread failed", self.target)
            # Refuse new clients rather than leave them queued in the backlog forever.
            self._listener.close()
        finally:
            for relay in list(self._relays):
                self._end(relay)
            self._drop_transport()

    def _relay_until_stopped(self) -> None:
        while True:
            ready: set[_Relay] = set()
            woken = False
            for key, _ in self._selector.select():
                if key.data is _STOP:
                    return
                if key.data is _WAKE:
                    _drain(self._wake_r)
                    woken = True
                elif key.data is _ACCEPT:
                    self._accept()
                else:
                    ready.add(key.data)
            if woken:
                # Some channel's send window grew. Which relay waited for it is
                # racy to tell (it may have grown just before its interest was
                # computed), and relays are few: give every one a turn.
                ready.update(self._relays)
            for relay in ready:
                if relay in self._relays:  # not ended earlier in this round
                    self._service(relay)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except BlockingIOError:
                return
            except OSError as error:
                # Out of fds, most likely. The listener would stay readable and
                # spin the loop, so stop watching it until a relay ends.
                log.warning("ssh tunnel %s: accept failed: %s", self.target, error)
                self._pause_accepting()
                return
            sock.setblocking(False)
            try:
                channel = self._open_channel()
            except UnavailableError as error:
                sock.close()  # the client sees a disconnect and retries on its own schedule
                if self._closing:  # the dial was abandoned on purpose
                    return
                self._failures_in_a_row += 1
                # ZeroMQ retries every reconnect interval: say it once per outage.
                level = logging.WARNING if self._failures_in_a_row == 1 else logging.DEBUG
                log.log(level, "%s (%d in a row)", error, self._failures_in_a_row)
                continue
            self._failures_in_a_row = 0
            relay = _Relay(sock, channel)
            self._relays.add(relay)
            self._service(relay)

    def _open_channel(self) -> paramiko.Channel:
        """A channel to the agent, over a re-dialed SSH connection if it died; else UnavailableError."""
        transport = self._live_transport()
        target = self.target
        try:
            channel = transport.open_channel(
                "direct-tcpip",
                (target.agent_host, target.agent_port),
                ("127.0.0.1", 0),
                timeout=self._timeout,
            )
        except paramiko.ChannelException as error:
            raise UnavailableError(
                f"ssh {target}: the server cannot reach agent {target.agent}: {error.text}"
            ) from None
        except (OSError, EOFError, paramiko.SSHException) as error:
            raise UnavailableError(
                f"ssh {target}: opening a channel to {target.agent} failed: {error}"
            ) from None
        channel.settimeout(0.0)  # every channel call of the relay loop must be non-blocking
        # Extended data would make the channel's fd readable while recv() finds
        # nothing: a busy loop. direct-tcpip has none, but do not bet on the server.
        channel.set_combine_stderr(True)
        return channel

    def _live_transport(self) -> paramiko.Transport:
        """The SSH connection, re-dialed if it died (UnavailableError if that fails)."""
        with self._lock:
            transport = self._transport
        if transport is not None and transport.is_active():
            return transport
        self._drop_transport()
        transport = self._dial()
        self.reconnects += 1
        log.info("ssh tunnel %s: reconnected (%d)", self.target, self.reconnects)
        return transport

    def _service(self, relay: _Relay) -> None:
        try:
            relay.pump()
        except (OSError, EOFError, paramiko.SSHException) as error:
            # The Unix peer reset, or the channel / SSH connection broke under us.
            log.debug("ssh tunnel %s: relay ended: %s", self.target, error)
            self._end(relay)
            return
        if relay.finished:
            self._end(relay)
        else:
            sock_events, channel_events = relay.interest()
            _watch(self._selector, relay.sock, sock_events, relay)
            _watch(self._selector, relay.channel_fd, channel_events, relay)

    def _end(self, relay: _Relay) -> None:
        self._relays.discard(relay)
        _watch(self._selector, relay.sock, 0, relay)
        _watch(self._selector, relay.channel_fd, 0, relay)  # before close() closes the channel's pipe
        relay.close()
        if not self._accepting:
            self._accepting = True
            self._selector.register(self._listener, selectors.EVENT_READ, _ACCEPT)

    def _pause_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            self._selector.unregister(self._listener)


class _Relay:
    """One accepted Unix connection spliced to one channel. Used by the relay thread only.

    "up" is Unix socket → channel, "down" is channel → Unix socket. Each
    direction holds at most one chunk; the next chunk is read only when the
    previous one was passed on, and a direction's EOF is passed on as a
    half-close once its last bytes were.
    """

    def __init__(self, sock: socket.socket, channel: paramiko.Channel) -> None:
        self.sock = sock
        self.channel = channel
        self.channel_fd = channel.fileno()  # paramiko's pipe: readable when data, EOF or close arrived
        self.up = b""
        self.down = b""
        self.sock_eof = False
        self.channel_eof = False
        self.up_done = False
        self.down_done = False

    @property
    def finished(self) -> bool:
        return self.up_done and self.down_done

    def interest(self) -> tuple[int, int]:
        """Selector events wanted now on (the Unix socket, the channel's fd)."""
        sock_events = 0
        if not self.up and not self.sock_eof and not self.up_done and self.channel.send_ready():
            sock_events |= selectors.EVENT_READ
        if self.down:
            sock_events |= selectors.EVENT_WRITE
        channel_events = selectors.EVENT_READ if not self.down and not self.channel_eof else 0
        return sock_events, channel_events

    def pump(self) -> None:
        """Move what can move without blocking; raises OSError/EOFError/SSHException if broken."""
        for _ in range(_BURST):
            moved_up = self._pump_up()
            moved_down = self._pump_down()
            if not (moved_up or moved_down):
                return

    def _pump_up(self) -> bool:
        if self.up_done:
            return False
        if self.channel.closed:  # the far end is gone: nothing more can go that way
            self.up, self.up_done = b"", True
            return False
        moved = False
        if not self.up and not self.sock_eof and self.channel.send_ready():
            try:
                data = self.sock.recv(_CHUNK)
            except BlockingIOError:
                data = None
            if data == b"":
                self.sock_eof = True
            elif data:
                self.up, moved = data, True
        while self.up and self.channel.send_ready():
            sent = self.channel.send(self.up)  # non-blocking: the window is open and only we use it
            if sent == 0:
                raise EOFError("channel closed while sending")
            self.up = self.up[sent:]
            moved = True
        if not self.up and self.sock_eof:
            self.channel.shutdown_write()
            self.up_done = True
        return moved

    def _pump_down(self) -> bool:
        if self.down_done:
            return False
        moved = False
        if not self.down and not self.channel_eof:
            try:
                data = self.channel.recv(_CHUNK)
            except TimeoutError:  # socket.timeout: nothing buffered yet
                data = None
            if data == b"":
                self.channel_eof = True
            elif data:
                self.down, moved = data, True
        while self.down:
            try:
                sent = self.sock.send(self.down)
            except BlockingIOError:
                break
            self.down = self.down[sent:]
            moved = True
        if not self.down and self.channel_eof:
            self.sock.shutdown(socket.SHUT_WR)
            self.down_done = True
        return moved

    def close(self) -> None:
        try:
            # Closes the channel's pipe fds first, then sends CLOSE, which
            # fails if the SSH connection just died: nothing left to tell.
            self.channel.close()
        except (OSError, EOFError, paramiko.SSHException):
            pass
        finally:
            self.sock.close()


# -- helpers -------------------------------------------------------------------------------------

_STOP, _WAKE, _ACCEPT = object(), object(), object()


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError()
    return remaining


def _pipe(resources: contextlib.ExitStack) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    resources.callback(os.close, read_fd)
    resources.callback(os.close, write_fd)
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    return read_fd, write_fd


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _watch(selector: selectors.BaseSelector, fileobj: socket.socket | int, events: int, data: object) -> None:
    """Make ``selector`` watch ``fileobj`` for exactly ``events`` (0: not at all)."""
    try:
        key = selector.get_key(fileobj)
    except KeyError:
        if events:
            selector.register(fileobj, events, data)
        return
    if not events:
        selector.unregister(fileobj)
    elif key.events != events:
        selector.modify(fileobj, events, data)


class _QuickAckSocket(socket.socket):
    """The SSH connection's socket, acknowledging every segment at once.

    sshd treats a connection without a terminal as bulk traffic and leaves
    Nagle on: its next small packet waits for our ACK, which Linux delays by
    up to 40 ms. An exit event queued behind a chunk then took 40 ms to arrive.
    Re-arming TCP_QUICKACK before each read (it is not sticky) removes that.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        try:
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        return super().recv(bufsize, flags)


def _tune_tcp(sock: socket.socket, keepalive: float) -> None:
    # Small ZeroMQ frames must not wait for Nagle.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # paramiko's keepalive only sends; a peer that vanished (VM paused, cable
    # cut) is found by TCP giving up on unacknowledged data.
    interval = max(1, round(keepalive))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", interval), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 3 * interval * 1000)


def _watch_send_windows(transport: paramiko.Transport, on_window_adjust: Callable[[], None]) -> None:
    """Call ``on_window_adjust`` (on paramiko's thread) whenever a channel's send window grows.

    paramiko has no fd or callback for that (``Channel.fileno()`` only signals
    readability), so wrap its per-message handler on this one transport. That
    table is private: tests/ssh/test_paramiko_private.py fails if paramiko
    changes it, and pyproject.toml pins paramiko to the versions it passed on.
    """
    table = dict(transport._channel_handler_table)
    handle = table[MSG_CHANNEL_WINDOW_ADJUST]

    def window_adjusted(channel: paramiko.Channel, message: paramiko.Message) -> None:
        handle(channel, message)
        on_window_adjust()

    table[MSG_CHANNEL_WINDOW_ADJUST] = window_adjusted
    transport._channel_handler_table = table


def _prefer_known_key_types(transport: paramiko.Transport, known: list[paramiko.PKey]) -> None:
    """Ask for the host key types known_hosts has for this server first, as ssh does.

    Otherwise a server with several host keys may present one we have no
    entry for (say ed25519 when known_hosts pins its rsa key) and fail the check.
    """
    known_types = {key.get_name() for key in known}
    if "ssh-rsa" in known_types:
        known_types |= {"rsa-sha2-512", "rsa-sha2-256"}
    options = transport.get_security_options()
    options.key_types = sorted(options.key_types, key=lambda algorithm: algorithm not in known_types)


def _prefer_aead_ciphers(transport: paramiko.Transport) -> None:
    """Put AES-GCM first: one AEAD pass per packet instead of a cipher plus an HMAC.

    paramiko's packetizer is pure Python around ``cryptography`` calls, so
    this moves about 30 % more bytes per CPU second (measured on loopback).
    """
    options = transport.get_security_options()
    options.ciphers = sorted(options.ciphers, key=lambda cipher: "-gcm@" not in cipher)


def _close_transport(transport: paramiko.Transport) -> None:
    transport.close()
    # Transport.close() does not wait for paramiko's thread, and nothing may outlive close().
    if transport.is_alive() and transport is not threading.current_thread():
        transport.join(10.0)
        if transport.is_alive():
            log.warning("ssh transport thread %s did not stop", transport.name)
    # Transport.close() does nothing for a transport that is not active (its thread never ran, or
    # it is ending), and then leaves the TCP socket to paramiko's thread or to nobody: close it here
    # (closing twice is harmless). A ResourceWarning for this socket once failed the tunnel tests.
    transport.sock.close()
