"""A ZeroMQ socket driven by an asyncio loop, with no extra thread and no per-message task.

ZeroMQ signals readiness through an edge-triggered fd: after any send or
receive the fd may not fire again although messages are waiting. So every
operation is followed by a check of ``ZMQ_EVENTS``, and receiving drains
what is there (in bounded batches, so one busy peer cannot starve the loop).
Messages are handed to a plain callback: the fastest path from the wire to
the handler that a Python event loop allows.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import zmq

log = logging.getLogger(__name__)

#: Messages handled per loop callback before yielding to other work.
BATCH = 256

# Plain ints: pyzmq's flag enums cost microseconds per operation on this hot path.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | _NOBLOCK


class LoopSocket:
    """Feeds every message received on ``socket`` to ``on_message``; loop thread only.

    ``on_writable`` (optional) is called when the socket can take messages
    again after a send returned False.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        socket: zmq.Socket,
        on_message: Callable[[list[zmq.Frame]], None],
        on_writable: Callable[[], None] | None = None,
    ) -> None:
        self.loop = loop
        self.socket = socket
        self._on_message = on_message
        self._on_writable = on_writable
        self._want_writable = False
        self._check_scheduled = False
        self._checking = False
        self._closed = False
        self._fd: int = socket.get(zmq.FD)  # type: ignore[assignment]
        loop.add_reader(self._fd, self._check)
        self._schedule_check()

    def _schedule_check(self) -> None:
        if not self._check_scheduled and not self._closed:
            self._check_scheduled = True
            self.loop.call_soon(self._check)

    def _check(self) -> None:
        self._check_scheduled = False
        if self._closed:
            return
        # Sends made by the handlers below need no extra look: this loop reads EVENTS again.
        self._checking = True
        try:
            self._drain()
        finally:
            self._checking = False

    def _drain(self) -> None:
        socket = self.socket
        for _ in range(BATCH):
            try:
                events: int = socket.get(_EVENTS)  # type: ignore[assignment]
            except zmq.ZMQError:
                return
            if events & _POLLOUT and self._want_writable:
                self._want_writable = False
                if self._on_writable is not None:
                    self._on_writable()
            if not events & _POLLIN:
                return
            try:
                frames = socket.recv_multipart(_NOBLOCK, copy=False)
            except zmq.Again:
                return
            except zmq.ZMQError as error:
                log.warning("receive failed: %s", error)
                return
            try:
                self._on_message(frames)
            except Exception:
                log.exception("message handler failed")
            if self._closed:
                return
        self._schedule_check()  # more may be waiting: continue after other callbacks

    def send(self, frames: list[bytes | memoryview | zmq.Frame]) -> bool:
        """Send without blocking; False if the socket (or, for a ROUTER, the peer) cannot take it now."""
        if self._closed:
            return False
        socket = self.socket
        try:
            # Copied into libzmq: a zero-copy send wakes pyzmq's garbage-collector thread for every
            # message, which costs more than copying a 256 KiB chunk (and fights for the GIL).
            for frame in frames[:-1]:
                socket.send(frame, _SNDMORE_NOBLOCK)
            socket.send(frames[-1], _NOBLOCK)
            sent = True
        except zmq.Again:
            self._want_writable = True
            sent = False
        except zmq.ZMQError as error:
            if error.errno != zmq.EHOSTUNREACH:
                log.warning("send failed: %s", error)
            sent = False
        if not self._checking:
            # A send may consume the fd's edge for pending input: look again soon.
            self._schedule_check()
        return sent

    def close(self, linger: int = 0) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self._fd)
        self.socket.close(linger=linger)
