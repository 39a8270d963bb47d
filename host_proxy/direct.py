"""Requests answered on the caller's own thread, without a hop through the background loop.

Handing a request to the loop thread and waking the caller again costs two
thread switches — on a small machine, more than the agent takes to answer.
So a caller borrows one of a few extra DEALER sockets of the same session
(request-only: ``hello`` with ``events: false``, so the session's events
stay on the loop's connection), sends, and waits for the answer itself,
like a plain ZeroMQ request.

It is only a fast path. When it cannot answer — no idle socket, the
connection is not ready, no answer in time, or the agent asks for a new
hello — the request goes through the loop with the *same* id, and the agent
answers it from its reply cache if it already did it. The pool is bounded,
so a thousand calling threads still make a handful of connections.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

import zmq

from common import protocol
from common.errors import ExecError

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)

#: Sockets in the pool: enough for a few busy threads, few enough to stay a small number of connections.
MAX_SOCKETS = 4
#: How long a direct request waits before handing over to the loop (which owns timeouts and reconnects).
DIRECT_WAIT_MS = 2000

_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)


class FallBack(Exception):
    """The fast path cannot answer this request; send it through the loop with the same id."""


class DirectRequests:
    """A bounded pool of request-only sockets, each used by one thread at a time."""

    def __init__(self, connection: Connection) -> None:
        self._conn = connection
        self._lock = threading.Lock()
        self._idle: list[zmq.Socket] = []
        self._created = 0
        self._closed = False

    def _borrow(self) -> zmq.Socket | None:
        with self._lock:
            if self._closed:
                return None
            if self._idle:
                return self._idle.pop()
            if self._created >= MAX_SOCKETS:
                return None
            self._created += 1
            index = self._created
        try:
            return self._open(index)
        except (ExecError, zmq.ZMQError, FallBack) as error:
            log.debug("no direct request socket: %s", error)
            with self._lock:
                self._created -= 1
            return None

    def _give_back(self, socket: zmq.Socket) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(socket)
                return
        socket.close(linger=0)

    def _discard(self, socket: zmq.Socket) -> None:
        socket.close(linger=0)
        with self._lock:
            self._created -= 1

    def _open(self, index: int) -> zmq.Socket:
        conn = self._conn
        socket: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        try:
            conn.configure_socket(socket)
            socket.connect(conn.endpoint)
            self._exchange(socket, conn.next_request_id(), "hello", protocol.hello_fields(conn.session_id, events=False),
                           wait_ms=int(conn.timeout * 1000))
        except BaseException:
            socket.close(linger=0)
            raise
        return socket

    def _exchange(self, socket: zmq.Socket, request_id: int, op: str, fields: dict[str, Any],
                  wait_ms: int = DIRECT_WAIT_MS) -> Any:
        socket.send(protocol.request_frame(request_id, op, fields), _NOBLOCK)
        return self._answer(socket, request_id, op, wait_ms)

    def _answer(self, socket: zmq.Socket, request_id: int, op: str, wait_ms: int = DIRECT_WAIT_MS) -> Any:
        while True:
            if not socket.poll(wait_ms, _POLLIN):
                raise FallBack(f"no answer to {op!r} within {wait_ms} ms")
            frames = socket.recv_multipart(_NOBLOCK)
            problem = protocol.message_problem(frames)
            if problem is not None:
                # An agent that breaks the message bounds is refused on every connection of the client.
                self._conn.loop.call_soon_threadsafe(self._conn.refuse_agent, problem)
                raise FallBack(f"the agent sent {problem}")
            try:
                header = protocol.unpack(frames[0])
            except ExecError as error:
                raise FallBack(f"undecodable answer: {error}") from None
            if header.get("id") != request_id:
                continue  # the late answer to an earlier request that went the other way
            if protocol.wants_new_hello(header):
                raise FallBack("the agent wants a new hello")
            return protocol.reply_result(header)

    def request(self, request_id: int, op: str, fields: dict[str, Any]) -> Any:
        """The result, an ExecError from the agent, or FallBack (then use the loop, same id)."""
        result = self.request_many([(request_id, (op, fields))])[0]
        if isinstance(result, ExecError):
            raise result
        return result

    def request_many(self, requests: list[tuple[int, tuple[str, dict[str, Any]]]]) -> list[Any]:
        """Send every request back to back on one connection (so the agent takes them in order),
        then collect each result or ExecError; FallBack if the fast path cannot answer them all."""
        if self._conn.state != "ready":
            raise FallBack("the connection is not ready")
        socket = self._borrow()
        if socket is None:
            raise FallBack("no idle direct socket")
        try:
            for request_id, (op, fields) in requests:
                socket.send(protocol.request_frame(request_id, op, fields), _NOBLOCK)
            results: list[Any] = []
            for request_id, (op, _) in requests:
                try:
                    results.append(self._answer(socket, request_id, op))
                except ExecError as error:
                    results.append(error)
        except FallBack:
            self._discard(socket)  # it may hold a late answer or a dead connection: start afresh
            raise
        except zmq.ZMQError as error:
            self._discard(socket)
            raise FallBack(str(error)) from None
        self._give_back(socket)
        return results

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for socket in idle:
            socket.close(linger=0)
