"""What the agent knows of its connections: it caps those that have not spoken, and can end one.

libzmq accepts every connection its listener sees and gives it ``ZMQ_HANDSHAKE_IVL`` to complete
the ZMTP (and CURVE) handshake, with no cap on how many it holds meanwhile: a peer that opens
connections and never finishes a handshake costs the agent an fd and an engine each, and at the fd
limit libzmq's accept fails in a busy loop and no authorized client gets in. ROUTER has no option
to cap connections, so each listener is watched through a socket monitor:

- ``EVENT_ACCEPTED`` names a new connection's fd: the connection is *pending* until its first
  message reaches the agent (``ZMQ_SRCFD`` of that message names the fd). Over CURVE only an
  authenticated peer gets a message through, so pending is "not (yet) authenticated".
- When more than ``max_pending`` connections are pending, the oldest are ended. A flood's idle
  connections are the oldest; a client that handshakes and says hello at once stays.
- ``EVENT_DISCONNECTED``/``EVENT_CLOSED`` end a connection's record; for one that had spoken, the
  agent is told (``on_closed``) so it forgets its routing id.

Ending a connection is ``shutdown(2)``, never ``close(2)``: the fd stays libzmq's, whose engine
sees the connection end and closes it itself. Before that the guard takes its own reference to
the fd (``dup``) and checks that it is still the socket it recorded (same inode): an fd number
libzmq already closed and reused for something else is never touched.

The monitor is a ZeroMQ socket the agent's loop reads; while its queue (a few hundred events) is
full, libzmq's I/O thread waits for the loop, which also stops it accepting faster than the agent
sheds.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable

import zmq

from common.zmqloop import LoopSocket

log = logging.getLogger(__name__)

#: Connections that have not sent a message yet, at most (and at most an eighth of the fd limit).
MAX_PENDING = 512
#: ZMQ_SRCFD (zmq_msg_get): the fd a received message came from. libzmq 4.x, deprecated but kept.
_SRCFD = int(getattr(zmq, "SRCFD", 2))
_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED
_ACCEPTED = int(zmq.EVENT_ACCEPTED)
_GONE = (int(zmq.EVENT_DISCONNECTED), int(zmq.EVENT_CLOSED))


def max_pending_for(fd_limit: int) -> int:
    """The pending cap for an agent that may hold ``fd_limit`` fds: far below it, so that the
    listener never reaches the limit (execs need fds too)."""
    return max(16, min(MAX_PENDING, fd_limit // 8))


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:
        return None


def _shutdown(fd: int, inode: int) -> bool:
    """End the connection on ``fd`` if ``fd`` is still the socket with ``inode``; True if it was."""
    try:
        own = os.dup(fd)  # our reference: the socket cannot be closed and its number reused under us
    except OSError:
        return False
    try:
        status = os.fstat(own)
        if status.st_ino != inode or not stat.S_ISSOCK(status.st_mode):
            return False
        sock = socket.socket(fileno=own)
        own = -1  # the socket object owns it now
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
        return True
    except OSError:
        return False
    finally:
        if own >= 0:
            os.close(own)


class ConnectionGuard:
    """One listener's connections: pending ones capped, spoken ones mapped fd <-> routing id."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listener: zmq.Socket, max_pending: int,
                 on_closed: Callable[[bytes], None]) -> None:
        self.max_pending = max_pending
        self._on_closed = on_closed
        #: fd -> inode of connections not heard from yet, oldest first.
        self._pending: collections.OrderedDict[int, int] = collections.OrderedDict()
        #: fd -> (inode, routing id) of connections that sent a message; and routing id -> fd.
        self._spoken: dict[int, tuple[int, bytes]] = {}
        self._fds: dict[bytes, int] = {}
        self.shed = 0
        self._listener = listener
        self._monitor = LoopSocket(loop, listener.get_monitor_socket(_EVENTS), self._on_event)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def spoke(self, routing_id: bytes, frame: zmq.Frame) -> None:
        """The first message from ``routing_id`` (``frame`` is one of its frames, whose ``bytes``
        were not read): it is past the handshake; remember which fd it came on."""
        try:
            fd = int(frame.get(_SRCFD))  # type: ignore[arg-type]
        except zmq.ZMQError:
            return
        inode = _inode(fd) if fd >= 0 else None
        if inode is None:
            return
        self._pending.pop(fd, None)
        self._forget_fd(fd)
        self._spoken[fd] = (inode, routing_id)
        self._fds[routing_id] = fd

    def end(self, routing_id: bytes) -> bool:
        """Shut down the connection ``routing_id`` came on (libzmq then closes it and reports
        DISCONNECTED, which calls ``on_closed``). False if it is unknown or already gone."""
        fd = self._fds.get(routing_id)
        if fd is None:
            return False
        return _shutdown(fd, self._spoken[fd][0])

    def _forget_fd(self, fd: int) -> None:
        old = self._spoken.pop(fd, None)
        if old is not None and self._fds.get(old[1]) == fd:
            del self._fds[old[1]]

    def _on_event(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 1 or len(frames[0].bytes) < 6:
            return
        event, fd = struct.unpack("=HI", frames[0].bytes[:6])
        if event == _ACCEPTED:
            self._accepted(fd)
        elif event in _GONE:
            self._pending.pop(fd, None)
            spoken = self._spoken.get(fd)
            self._forget_fd(fd)
            if spoken is not None:
                self._on_closed(spoken[1])

    def _accepted(self, fd: int) -> None:
        inode = _inode(fd)
        if inode is None:
            return  # already gone (its DISCONNECTED follows)
        spoken = self._spoken.get(fd)
        if spoken is not None:
            if spoken[0] == inode:
                return  # its first message was handled before this event
            self._forget_fd(fd)  # that connection ended without an event: a stale record
        self._pending[fd] = inode
        self._pending.move_to_end(fd)
        while len(self._pending) > self.max_pending:
            old_fd, old_inode = self._pending.popitem(last=False)
            if _shutdown(old_fd, old_inode):
                self.shed += 1
                if self.shed == 1 or self.shed % 1000 == 0:
                    log.warning("more than %d connections have not completed a handshake: ended the "
                                "oldest (%d so far)", self.max_pending, self.shed)

    def close(self) -> None:
        self._monitor.close()
