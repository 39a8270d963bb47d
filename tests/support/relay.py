"""A TCP relay the test controls: it can cut every connection, or refuse new ones for a while.

Put it between an ``AgentClient`` and a tcp agent to break the connection at
will, the way a flaky network or a restarting VM network would.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading


class TcpRelay:
    """Relays 127.0.0.1:<port> to ``target``; ``cut()`` resets every relayed connection."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._listener: socket.socket | None = None
        self.port = 0
        self.accepted = 0
        self._wake_read, self._wake_write = socket.socketpair()
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self._running = True
        self._commands: list[str] = []
        self._done = threading.Condition(self._lock)
        self._generation = 0
        self._listen()
        self._thread = threading.Thread(target=self._run, name="tcp-relay", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        listener.setblocking(False)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._selector.register(listener, selectors.EVENT_READ, "accept")

    def _command(self, command: str) -> None:
        with self._lock:
            self._commands.append(command)
            generation = self._generation + 1
            self._wake_write.send(b"x")
            while self._generation < generation:
                self._done.wait()

    def cut(self) -> None:
        """Reset every relayed connection now (new ones are accepted)."""
        self._command("cut")

    def go_down(self) -> None:
        """Reset everything and refuse new connections until :meth:`come_back`."""
        self._command("down")

    def come_back(self) -> None:
        self._command("up")

    def close(self) -> None:
        if self._running:
            self._command("stop")
            self._thread.join(10)
        self._wake_read.close()
        self._wake_write.close()
        self._selector.close()

    def _reset(self, sock: socket.socket) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()

    def _cut_all(self) -> None:
        for sock in list(self._pairs):
            self._reset(sock)
        self._pairs.clear()

    def _handle_commands(self) -> None:
        self._wake_read.recv(4096)
        with self._lock:
            commands, self._commands = self._commands, []
        for command in commands:
            if command in ("cut", "down", "stop"):
                self._cut_all()
            if command in ("down", "stop") and self._listener is not None:
                self._selector.unregister(self._listener)
                self._listener.close()
                self._listener = None
            if command == "up" and self._listener is None:
                self._listen()
            if command == "stop":
                self._running = False
        with self._lock:
            self._generation += 1
            self._done.notify_all()

    def _run(self) -> None:
        while self._running:
            for key, _ in self._selector.select():
                if key.data == "wake":
                    self._handle_commands()
                    if not self._running:
                        return
                elif key.data == "accept":
                    self._accept()
                else:
                    self._forward(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            client, _ = self._listener.accept()
        except BlockingIOError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._reset(client)
            return
        self.accepted += 1
        for sock in (client, upstream):
            sock.setblocking(True)
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        self._selector.register(client, selectors.EVENT_READ, "data")
        self._selector.register(upstream, selectors.EVENT_READ, "data")

    def _forward(self, sock: socket.socket) -> None:
        peer = self._pairs.get(sock)
        if peer is None:
            return
        try:
            data = sock.recv(262144)
            if data:
                peer.sendall(data)
                self._moved(sock, peer, data)
                return
        except OSError:
            pass
        self._pairs.pop(sock, None)
        self._pairs.pop(peer, None)
        self._reset(sock)
        self._reset(peer)

    def _moved(self, sock: socket.socket, peer: socket.socket, data: bytes) -> None:
        """Called after ``data`` went from ``sock`` to ``peer``; subclasses watch the traffic here."""
