"""Fixtures for the SSH tunnel tests: a real sshd, and real TCP servers standing in for the agent."""

from __future__ import annotations

import os
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from tests.support.sshd import SshServer


@pytest.fixture(scope="module")
def sshd() -> Iterator[SshServer]:
    """One sshd shared by a module's tests that do not stop it."""
    with SshServer() as server:
        yield server


@pytest.fixture
def own_sshd() -> Iterator[SshServer]:
    """An sshd for one test, which may stop and restart it."""
    with SshServer() as server:
        yield server


@pytest.fixture
def zmq_socket() -> Iterator[Callable[[int], zmq.Socket[Any]]]:
    """A factory of ZeroMQ sockets on a private context; all closed (linger 0) after the test."""
    context: zmq.Context[Any] = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []

    def make(kind: int) -> zmq.Socket[Any]:
        sock = context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sockets.append(sock)
        return sock

    yield make
    for sock in sockets:
        sock.close()
    context.destroy(linger=0)  # also whatever a failed test left open; term() would wait for it


class EchoServer:
    """A TCP echo server on 127.0.0.1, one thread for all connections.

    Each connection gets back every byte it sends; when the client half-closes,
    the server half-closes after echoing the rest, then closes. ``wait_idle``
    waits until no connection is open (so fds can be compared).
    """

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self._stop_r, self._stop_w = os.pipe()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._stop_r, selectors.EVENT_READ, None)
        self._pending: dict[socket.socket, bytearray] = {}  # unsent echo per connection
        self._eof: set[socket.socket] = set()
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="echo-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select():
                if key.fileobj == self._stop_r:
                    return
                if key.fileobj is self._listener:
                    conn, _ = self._listener.accept()
                    conn.setblocking(False)
                    with self._idle:
                        self._pending[conn] = bytearray()
                    self._selector.register(conn, selectors.EVENT_READ, None)
                else:
                    assert isinstance(key.fileobj, socket.socket)
                    self._service(key.fileobj)

    def _service(self, conn: socket.socket) -> None:
        pending = self._pending[conn]
        try:
            if not pending and conn not in self._eof:
                data = conn.recv(65536)
                if data:
                    pending += data
                else:
                    self._eof.add(conn)
            if pending:
                del pending[: conn.send(pending)]
        except BlockingIOError:
            pass
        except OSError:
            self._drop(conn)
            return
        if not pending and conn in self._eof:
            self._drop(conn)
            return
        # Read only when everything read so far was echoed: bounded, like the tunnel.
        self._selector.modify(conn, selectors.EVENT_WRITE if pending else selectors.EVENT_READ)

    def _drop(self, conn: socket.socket) -> None:
        self._selector.unregister(conn)
        conn.close()
        self._eof.discard(conn)
        with self._idle:
            del self._pending[conn]
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(10)
        for conn in list(self._pending):
            conn.close()
        self._selector.close()
        self._listener.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


@pytest.fixture(scope="module")
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


class OneShotServer:
    """A TCP server on 127.0.0.1 that runs ``handler(conn)`` on its own thread for one connection.

    ``result(timeout)`` joins the thread and returns what the handler returned
    (or re-raises what it raised). ``release`` is an Event handlers may wait on.
    """

    def __init__(self, handler: Callable[[socket.socket, threading.Event], Any]) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.release = threading.Event()
        self._handler = handler
        self._outcome: list[Any] = []
        self._thread = threading.Thread(target=self._run, name="one-shot-server", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError as error:  # closed before anyone connected
            self._outcome.append(error)
            return
        with conn:
            try:
                self._outcome.append(self._handler(conn, self.release))
            except BaseException as error:
                self._outcome.append(error)

    def result(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the server handler did not finish in time"
        (outcome,) = self._outcome
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def close(self) -> None:
        self.release.set()
        # shutdown() wakes a thread blocked in accept() on Linux; close() alone does not.
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(10)
        self._listener.close()


@pytest.fixture
def one_shot_server() -> Iterator[Callable[[Callable[[socket.socket, threading.Event], Any]], OneShotServer]]:
    """A factory of ``OneShotServer``s, all closed at the end of the test."""
    servers: list[OneShotServer] = []

    def make(handler: Callable[[socket.socket, threading.Event], Any]) -> OneShotServer:
        server = OneShotServer(handler)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


class TcpForwarder:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:upstream_port`` on one thread.

    ``cut()`` drops every forwarded connection (a network cut, as the far side
    sees it). While ``blackhole`` is True, new connections are accepted and
    never answered (a host that stopped responding), until ``cut()``.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.blackhole = False
        self.blackholed = threading.Event()  # set when a connection was swallowed
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._cut = threading.Event()
        self._stop = threading.Event()
        self._peers: dict[socket.socket, socket.socket | None] = {}
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name="tcp-forwarder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select():
                if key.fileobj == self._wake_r:
                    os.read(self._wake_r, 64)
                    if self._cut.is_set():
                        self._cut.clear()
                        self._drop_all()
                elif key.fileobj is self._listener:
                    self._accept()
                else:
                    assert isinstance(key.fileobj, socket.socket)
                    self._forward(key.fileobj)
        self._drop_all()

    def _accept(self) -> None:
        conn, _ = self._listener.accept()
        if self.blackhole:
            self._peers[conn] = None  # held open, never read
            self.blackholed.set()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        self._peers[conn], self._peers[upstream] = upstream, conn
        self._selector.register(conn, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        peer = self._peers[sock]
        assert peer is not None
        try:
            data = sock.recv(65536)
            if data:
                peer.sendall(data)  # blocking is fine for the few bytes of SSH control traffic here
                return
        except OSError:
            pass
        self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        if sock not in self._peers:  # already dropped along with its peer
            return
        peer = self._peers.pop(sock)
        for each in (sock, peer):
            if each is None:
                continue
            self._peers.pop(each, None)
            if each.fileno() in self._selector.get_map():  # blackholed ones never were
                self._selector.unregister(each)
            each.close()

    def _drop_all(self) -> None:
        for sock in list(self._peers):
            self._drop(sock)

    def cut(self) -> None:
        self._cut.set()
        os.write(self._wake_w, b"c")

    def close(self) -> None:
        self._stop.set()
        os.write(self._wake_w, b"s")
        self._thread.join(10)
        self._selector.close()
        self._listener.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


@pytest.fixture
def forwarder(own_sshd: SshServer) -> Iterator[TcpForwarder]:
    """A forwarder to ``own_sshd``; its known_hosts name is ``[127.0.0.1]:<forwarder port>``."""
    forwarder = TcpForwarder(own_sshd.port)
    yield forwarder
    forwarder.close()
