"""The agent's request loop: ROUTER sockets, sessions, and the execs they own.

Everything runs on one asyncio loop in the main thread: the sockets, the ZAP
handler, the supervisor's reaper and pumps. A message is decoded, validated
and dispatched through :data:`guest_agent.handlers.REQUESTS` (or
``NOTIFICATIONS``) without creating a task; handlers are synchronous and
thin. Nothing a peer sends can raise out of :meth:`Agent._on_message`: bad
input gets an error reply (or is dropped when it cannot be answered) and the
agent keeps serving everyone else.

A *session* is one client's conversation. It is named by the client in
``hello`` and survives reconnects, so output and exits that happened while a
connection was down are replayed to the same session when it comes back.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import resource
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from common import protocol
from common.errors import (
    ExecError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnimplementedError,
    describe,
)
from common.supervisor import Supervisor
from common.trust import check_ipc_endpoint
from common.zmqloop import LoopSocket

from . import handlers
from .auth import ZapHandler, load_authorized_keys, load_server_secret
from .connections import ConnectionGuard, max_pending_for
from .execs import AgentExec

log = logging.getLogger(__name__)

AGENT_NAME = "uvmexec-agent/0.1.0"
#: Replies remembered per session, so a request resent after a reconnect is answered, not redone.
REPLY_CACHE = 1024
#: ... and at most this many bytes of them (a few list pages), whatever the replies' sizes.
REPLY_CACHE_BYTES = 16 * 1024 * 1024
#: Messages held for a session whose connection cannot take them right now, and their bytes: past
#: either, the agent ends that connection (its client reconnects and resyncs; nothing is lost).
MAX_OUTBOX = 65536
MAX_OUTBOX_BYTES = 64 * 1024 * 1024
MAX_SESSIONS = 1024
MAX_EXECS = 20000
#: Per connection, the messages libzmq may hold to send (ZMQ_SNDHWM; past it they wait in the
#: session's outbox) and received but not yet read (ZMQ_RCVHWM; past it libzmq stops reading).
SEND_HWM = 1000
RECEIVE_HWM = 1000
#: A connection must complete its ZMTP/CURVE handshake within this (ZMQ_HANDSHAKE_IVL, ms).
HANDSHAKE_MS = 5000
_RETRY_FIRST, _RETRY_MAX = 0.01, 1.0


class Session:
    """One client's conversation with the agent; survives reconnects."""

    def __init__(self, session_id: str, loop: asyncio.AbstractEventLoop,
                 end_connection: Callable[[tuple[int, bytes]], None]) -> None:
        self.id = session_id
        self.loop = loop
        self.version = 0
        #: The connection that gets the session's events: its listener, routing id, and both.
        self.listener: LoopSocket | None = None
        self.routing_id: bytes | None = None
        self.route: tuple[int, bytes] | None = None
        self._end_connection = end_connection
        self.outbox: collections.deque[list[Any]] = collections.deque()
        self.outbox_bytes = 0
        self.replies: collections.OrderedDict[int, list[Any]] = collections.OrderedDict()
        self.reply_bytes = 0
        #: Highest request id whose reply was evicted from the cache: older unknown ids are refused.
        self.forgotten_below = -1
        self.owned: set[AgentExec] = set()
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = _RETRY_FIRST

    def send(self, frames: list[Any]) -> None:
        """Send to this session's current connection, holding what it cannot take yet."""
        if self.listener is None or self.routing_id is None:
            return  # not connected: resync replays output and exits
        if not self.outbox and self.listener.send([self.routing_id, *frames]):
            return
        size = sum(len(frame) for frame in frames)
        if len(self.outbox) >= MAX_OUTBOX or self.outbox_bytes + size > MAX_OUTBOX_BYTES:
            self._overflow()
            return
        self.outbox.append(frames)
        self.outbox_bytes += size
        self._schedule_retry()

    def _overflow(self) -> None:
        """The client does not read: end its connection rather than hold more (or drop some, which
        would leave a gap in its streams). It reconnects, resyncs, and gets everything replayed."""
        log.warning("session %s does not read (%d messages, %d bytes held for it): ending its connection",
                    self.id, len(self.outbox), self.outbox_bytes)
        route = self.route
        self.detach()
        if route is not None:
            self._end_connection(route)

    def flush(self) -> None:
        moved = False
        while self.outbox and self.listener is not None and self.routing_id is not None:
            if not self.listener.send([self.routing_id, *self.outbox[0]]):
                if moved:
                    self._retry_delay = _RETRY_FIRST  # it is reading: look again soon
                self._schedule_retry()
                return
            self.outbox_bytes -= sum(len(frame) for frame in self.outbox.popleft())
            moved = True
        self._retry_delay = _RETRY_FIRST

    def _schedule_retry(self) -> None:
        if self._retry is None:
            self._retry = self.loop.call_later(self._retry_delay, self._retry_now)
            self._retry_delay = min(self._retry_delay * 2, _RETRY_MAX)

    def _retry_now(self) -> None:
        self._retry = None
        self.flush()

    def reply(self, listener: LoopSocket, routing_id: bytes, request_id: int, header: dict[str, Any]) -> None:
        """Answer on the connection the request came from, and remember the answer."""
        frames = [protocol.pack(header)]
        self.replies[request_id] = frames
        self.reply_bytes += len(frames[0])
        while len(self.replies) > REPLY_CACHE or (self.reply_bytes > REPLY_CACHE_BYTES and len(self.replies) > 1):
            evicted, evicted_frames = self.replies.popitem(last=False)
            self.reply_bytes -= len(evicted_frames[0])
            self.forgotten_below = max(self.forgotten_below, evicted)
        self.answer(listener, routing_id, frames)

    def answer(self, listener: LoopSocket, routing_id: bytes, frames: list[Any]) -> None:
        if listener is self.listener and routing_id == self.routing_id:
            self.send(frames)  # the event connection: in order with events, held if need be
        elif not listener.send([routing_id, *frames]):
            # A request-only connection that cannot take it: its client falls back to
            # the event connection and gets this answer from the cache.
            log.debug("session %s: dropped a reply to a request-only connection", self.id)

    def detach(self) -> None:
        """The event connection is gone (or no longer this session's): send it nothing more."""
        self.listener = self.routing_id = self.route = None
        self.drop_pending()

    def drop_pending(self) -> None:
        """A resync replays what matters; anything still held is stale."""
        self.outbox.clear()
        self.outbox_bytes = 0
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._retry_delay = _RETRY_FIRST


class Agent:
    """The agent: listens, authenticates, and runs execs for its sessions."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listen: list[str],
        *,
        server_key: str | None = None,
        authorized_keys: str | None = None,
        insecure: bool = False,
        window: int = protocol.DEFAULT_WINDOW,
    ) -> None:
        self.loop = loop
        self.boot_id = uuid.uuid4().hex
        self.window = window
        self.max_execs = MAX_EXECS
        self.supervisor = Supervisor(loop, reap_orphans=True)
        self.context = zmq.Context()
        self.sessions: dict[str, Session] = {}
        self.routes: dict[tuple[int, bytes], Session] = {}
        self.execs: dict[tuple[str, str], AgentExec] = {}
        self.handles: dict[int, AgentExec] = {}
        self._next_handle = 1
        self._listeners: list[LoopSocket] = []
        self._guards: list[ConnectionGuard] = []
        self._zap: ZapHandler | None = None
        self.endpoints: list[str] = []
        try:
            self._listen(listen, server_key, authorized_keys, insecure)
        except BaseException:
            self.close()
            raise

    # -- sockets -------------------------------------------------------------

    def _listen(self, endpoints: list[str], server_key: str | None, authorized_keys: str | None,
                insecure: bool) -> None:
        curve: tuple[bytes, bytes] | None = None
        if server_key or authorized_keys:
            if not (server_key and authorized_keys):
                raise ValueError("--server-key and --authorized-keys go together")
            curve = load_server_secret(server_key)
            self._zap = ZapHandler(self.loop, self.context, load_authorized_keys(authorized_keys))
        for endpoint in endpoints:
            socket = self.context.socket(zmq.ROUTER)
            try:
                self._configure(socket, endpoint, curve, insecure)
                socket.bind(endpoint)
            except zmq.ZMQError as error:
                socket.close()
                raise ValueError(f"cannot listen on {endpoint}: {error}") from None
            except BaseException:
                socket.close()
                raise
            index = len(self._listeners)
            listener = LoopSocket(self.loop, socket, functools.partial(self._on_message, index))
            self._listeners.append(listener)
            fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self._guards.append(ConnectionGuard(self.loop, socket, max_pending_for(fd_limit),
                                                functools.partial(self._connection_closed, index)))
            self.endpoints.append(socket.getsockopt_string(zmq.LAST_ENDPOINT))

    @staticmethod
    def _configure(socket: zmq.Socket, endpoint: str, curve: tuple[bytes, bytes] | None, insecure: bool) -> None:
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # No ROUTER_HANDOVER: libzmq 4.3 aborts the process when a connection whose routing id was
        # handed over ends. Clients let ZeroMQ pick a fresh routing id per connection and say hello.
        socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        # libzmq's default gives a peer 30 s to finish its handshake, holding an fd all along.
        socket.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_MS)
        if endpoint.startswith("tcp://"):
            if curve is not None:
                socket.setsockopt(zmq.CURVE_SERVER, 1)
                socket.setsockopt(zmq.CURVE_PUBLICKEY, curve[0])
                socket.setsockopt(zmq.CURVE_SECRETKEY, curve[1])
            elif not insecure:
                raise ValueError(f"{endpoint}: tcp needs --server-key and --authorized-keys (or --insecure)")
            socket.setsockopt(zmq.HEARTBEAT_IVL, 2000)
            socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10000)
        elif endpoint.startswith("ipc://"):
            check_ipc_endpoint(endpoint, create=True)  # UntrustedPathError, a ValueError: one line
        else:
            raise ValueError(f"{endpoint}: only ipc:// and tcp:// endpoints can be listened on")

    def close(self) -> None:
        """Kill every running exec's process group, close the sockets (no waiting)."""
        for guard in self._guards:
            guard.close()
        for listener in self._listeners:
            listener.close()
        self.supervisor.close()
        if self._zap is not None:
            self._zap.close()
        self.context.term()

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop serving, kill what runs, reap it (within ``grace``), end every task, close."""
        for guard in self._guards:
            guard.close()
        for listener in self._listeners:
            listener.close()
        for core in list(self.supervisor.running):
            core.force_exit(255)
        await self.supervisor.reaper.wait_all(grace)
        # What the execs left behind: background children of exited execs, and whatever was
        # orphaned to this subreaper.
        self.supervisor.reaper.kill_everything(grace)
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.close()

    # -- dispatch ------------------------------------------------------------

    def _on_message(self, index: int, frames: list[zmq.Frame]) -> None:
        listener = self._listeners[index]
        routing_id = frames[0].bytes
        session = self.routes.get((index, routing_id))
        if session is None and len(frames) > 1:
            # Past its handshake: no longer pending. (Not frames[0]: pyzmq 24 forgets a frame's
            # properties, ZMQ_SRCFD among them, once its .bytes were read.)
            self._guards[index].spoke(routing_id, frames[1])
        if len(frames) not in (2, 3):
            self._protocol_error(listener, routing_id, f"expected 1 or 2 frames, got {len(frames) - 1}")
            return
        payload = frames[2].buffer if len(frames) == 3 else None
        if payload is not None and len(payload) > protocol.MAX_CHUNK_BYTES:
            self._protocol_error(listener, routing_id, f"data frame of {len(payload)} bytes is over the limit")
            return
        try:
            header = protocol.unpack(frames[1].buffer)
        except InvalidArgumentError as error:
            self._protocol_error(listener, routing_id, error.message)
            return
        if session is not None:
            session.flush()
        op = header.get("op")
        request_id = header.get("id")
        if request_id is None:
            self._on_notification(session, op, header, payload)
            return
        if not isinstance(request_id, int) or isinstance(request_id, bool) or not 0 <= request_id <= protocol.MAX_REQUEST_ID:
            self._protocol_error(listener, routing_id, "id must be an unsigned 63-bit integer")
            return
        if op == "hello":
            bound, hello_reply = self._hello(index, routing_id, header)
            if bound is None:
                listener.send([routing_id, protocol.pack({"id": request_id, **hello_reply})])
            else:
                bound.reply(listener, routing_id, request_id, {"id": request_id, **hello_reply})
            return
        if session is None:
            # "retry": a client that reconnected to a restarted agent says hello and sorts it out.
            refusal = FailedPreconditionError("no session: send hello first")
            listener.send([routing_id, protocol.pack({"id": request_id, "error": refusal.to_wire(), "retry": True})])
            return
        cached = session.replies.get(request_id)
        if cached is not None:
            session.answer(listener, routing_id, cached)  # a resent request: answer again, never redo it
            return
        if request_id <= session.forgotten_below:
            # Possibly handled long ago (its reply is no longer cached): never risk doing it twice.
            too_old = FailedPreconditionError(f"request {request_id} is too old to be answered again")
            session.answer(listener, routing_id, [protocol.pack({"id": request_id, "error": too_old.to_wire()})])
            return
        reply, after = self._handle(session, op, header)
        session.reply(listener, routing_id, request_id, {"id": request_id, **reply})
        if after is not None:
            after()

    def _handle(self, session: Session, op: object, header: dict[str, Any]
                ) -> tuple[dict[str, Any], Callable[[], None] | None]:
        """Run one request's handler: ``({"result": …} or {"error": …}, what to send after the reply)``."""
        try:
            handler = handlers.REQUESTS.get(op) if isinstance(op, str) else None
            if handler is None:
                raise UnimplementedError(f"unknown op {describe(op)}")
            result = handler(self, session, header)
            if isinstance(result, handlers.Then):
                return {"result": result.result}, result.after
            return {"result": result}, None
        except ExecError as error:
            return {"error": error.to_wire()}, None
        except Exception as error:  # a bug must not take the agent down
            log.exception("op %r failed", op)
            return {"error": ExecError(f"internal agent error: {error!r}").to_wire()}, None

    def _on_notification(self, session: Session | None, op: object, header: dict[str, Any],
                         payload: memoryview | None) -> None:
        handler = handlers.NOTIFICATIONS.get(op) if isinstance(op, str) else None
        if session is None or handler is None:
            log.debug("dropped notification %r from %s", op, "an unknown peer" if session is None else session.id)
            return
        try:
            handler(self, session, header, payload)
        except ExecError as error:
            log.warning("dropped %r from session %s: %s", op, session.id, error.message)

    def _protocol_error(self, listener: LoopSocket, routing_id: bytes, message: str) -> None:
        log.warning("bad message from a client: %s", message)
        error = InvalidArgumentError(message)
        listener.send([routing_id, protocol.pack({"ev": "error", "error": error.to_wire()})])

    # -- sessions ------------------------------------------------------------

    def _hello(self, index: int, routing_id: bytes, header: dict[str, Any]) -> tuple[Session | None, dict[str, Any]]:
        try:
            version = protocol.choose_version(header.get("versions"))
            if version is None:
                raise UnimplementedError(
                    f"no common protocol version: the agent speaks {list(protocol.VERSIONS)}, "
                    f"the client offered {describe(header.get('versions'))}"
                )
            session_id = protocol.get_str(header, "session", 64)
            takes_events = protocol.get_bool(header, "events", True)
        except ExecError as error:
            return None, {"error": error.to_wire()}
        session = self.sessions.get(session_id)
        if session is None:
            if len(self.sessions) >= MAX_SESSIONS and not self._evict_idle_session():
                full = FailedPreconditionError(f"the agent serves the maximum of {MAX_SESSIONS} sessions")
                return None, {"error": full.to_wire()}
            session = Session(session_id, self.loop, self._end_connection)
            self.sessions[session_id] = session
        route = (index, routing_id)
        stale = self.routes.get(route)
        if stale is not None and stale is not session and stale.route == route:
            stale.detach()
        self.routes[route] = session
        session.version = version
        if takes_events:
            # This connection now gets the session's events. A session has one event connection:
            # the previous one (dead, or a client opening more to make the agent hold more) is ended.
            if session.route is not None and session.route != route:
                self._end_connection(session.route)
            session.listener = self._listeners[index]
            session.routing_id = routing_id
            session.route = route
        return session, {
            "result": {
                "version": version,
                "boot_id": self.boot_id,
                "agent": AGENT_NAME,
                "pid": os.getpid(),
                "features": ["resync", "attach", "tty", "stdin"],
                "window": self.window,
                "max_chunk": protocol.MAX_CHUNK_BYTES,
            }
        }

    def _evict_idle_session(self) -> bool:
        for _session_id, session in self.sessions.items():
            if not session.owned:
                self.forget_session(session)
                return True
        return False

    def forget_session(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        for route, routed in list(self.routes.items()):
            if routed is session:
                del self.routes[route]
        session.detach()
        for owned in list(session.owned):
            owned.set_owner(None)

    # -- connections -----------------------------------------------------------

    def _end_connection(self, route: tuple[int, bytes]) -> None:
        """End a connection the agent holds no more for (libzmq closes it; its DISCONNECTED follows).
        Whatever was sent on it is dropped with it, so replays sent there no longer count."""
        self._guards[route[0]].end(route[1])
        self._release_replays(route)

    def _connection_closed(self, index: int, routing_id: bytes) -> None:
        """A connection that had spoken is gone (the monitor said so): forget its routing id."""
        route = (index, routing_id)
        session = self.routes.pop(route, None)
        if session is not None and session.route == route:
            session.detach()
        self._release_replays(route)

    def pending_connections(self) -> int:
        return sum(guard.pending for guard in self._guards)

    def _release_replays(self, route: tuple[int, bytes]) -> None:
        for record in list(self.execs.values()):
            record.connection_gone(route)

    # -- execs ---------------------------------------------------------------

    def new_handle(self) -> int:
        """A handle no exec uses (clients may choose their own, so skip those)."""
        while self._next_handle in self.handles:
            self._next_handle += 1
        handle = self._next_handle
        self._next_handle += 1
        return handle

    def forget_exec(self, record: AgentExec) -> None:
        self.execs.pop((record.core.task_id, record.core.exec_id), None)
        self.handles.pop(record.handle, None)
        record.set_owner(None)
        record.release()

