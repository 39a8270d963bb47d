"""One client's connection to an agent, on the loop thread: requests, events, reconnects.

A single DEALER socket carries every exec of the client. The connection
survives drops: ZeroMQ reconnects by itself, and on each new handshake the
connection says ``hello`` again. If the agent still has the same boot id it
``resync``\\ s — the agent replays unacknowledged output and exit records,
pending requests are resent under their original ids (the agent answers a
resent id from its reply cache instead of doing it twice). If the agent
restarted, or stays away longer than ``reconnect_timeout``, every tracked
exec is force-exited with 255 and its waiters released.

Loop-thread only; :class:`~host_proxy.client.AgentClient` is the thread-safe face.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from common import protocol
from common.errors import (
    AuthenticationError,
    ExecError,
    UnavailableError,
    UnimplementedError,
    describe,
)
from common.zmqloop import LoopSocket

from .direct import DirectRequests

if TYPE_CHECKING:
    from .loop_thread import LoopThread
    from .remote_exec import InStream, RemoteExec

log = logging.getLogger(__name__)

#: Complete messages libzmq may hold for one of our sockets before the loop (or a direct request's
#: caller) reads them: at most this many times MAX_MESSAGE_BYTES per connection (ZMQ_RCVHWM is
#: counted in messages). Past it libzmq stops reading the socket and the agent waits.
RECEIVE_HWM = 16
#: Handshakes the agent ended without a word (ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL) before
#: connecting gives up. A wrong server key ends every one; an agent shedding connections under a
#: flood of unauthenticated ones ends only some, and libzmq retries by itself meanwhile.
HANDSHAKE_ATTEMPTS = 5

_MONITORED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_DISCONNECTED
)


@dataclass
class CurveKeys:
    """Raw z85 keys for a CURVE client: the agent's public key, and ours."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes


@dataclass
class _Pending:
    op: str
    frames: list[Any]
    future: concurrent.futures.Future[Any]
    deadline: float
    timer: Any = None
    internal: bool = False
    on_result: Callable[[Any], None] | None = None


class Connection:
    """The loop-side state of an :class:`~host_proxy.client.AgentClient`."""

    def __init__(
        self,
        loop_thread: LoopThread,
        endpoint: str,
        *,
        display: str,
        curve: CurveKeys | None,
        timeout: float,
        reconnect_timeout: float,
    ) -> None:
        self.loop_thread = loop_thread
        self.loop = loop_thread.loop
        self.endpoint = endpoint
        self.display = display
        self.curve = curve
        self.timeout = timeout
        self.reconnect_timeout = reconnect_timeout
        self.session_id = bytes([secrets.randbelow(255) + 1]) + secrets.token_bytes(15)
        self.state = "connecting"
        self.boot_id: str | None = None
        self.agent_info: dict[str, Any] = {}
        self.window = protocol.DEFAULT_WINDOW
        self.execs: dict[int, RemoteExec] = {}
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)  # next() is atomic: callers on any thread take ids
        self._acks: set[InStream] = set()
        self._ack_scheduled = False
        self._lost_timer: Any = None
        self._opened: concurrent.futures.Future[dict[str, Any]] | None = None
        self._hello_id: int | None = None
        self._handshakes_ended = 0
        self.reconnects = 0
        #: Why this client stopped talking to its agent for good (it broke a bound), or None.
        self.failure: str | None = None
        #: Notified whenever ``state`` becomes "ready" or "closed" (waiters on any thread).
        self.settled = threading.Condition()
        #: Called on the loop with "lost", "ready" (back), "restarted" or "gone" (see AgentClient.watch).
        self.watchers: list[Callable[[str], None]] = []
        self._socket: LoopSocket | None = None
        self._monitor: LoopSocket | None = None
        self.direct = DirectRequests(self)

    def next_request_id(self) -> int:
        """A fresh request id (any thread)."""
        return next(self._ids)

    def configure_socket(self, socket: zmq.Socket) -> None:
        """The options every DEALER of this connection shares (any thread, before connect)."""
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RECONNECT_IVL, 100)
        socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        socket.setsockopt(zmq.HANDSHAKE_IVL, 2000)
        socket.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_FRAME_BYTES)
        socket.setsockopt(zmq.RCVHWM, RECEIVE_HWM)
        socket.setsockopt(zmq.SNDHWM, 100_000)
        if self.curve is not None:
            socket.setsockopt(zmq.CURVE_SERVERKEY, self.curve.server_public)
            socket.setsockopt(zmq.CURVE_PUBLICKEY, self.curve.client_public)
            socket.setsockopt(zmq.CURVE_SECRETKEY, self.curve.client_secret)

    # -- opening and closing --------------------------------------------------------

    def open(self, opened: concurrent.futures.Future[dict[str, Any]]) -> None:
        """Connect and say hello; ``opened`` gets the hello result or an UnavailableError."""
        self._opened = opened
        socket: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        self.configure_socket(socket)
        monitor = socket.get_monitor_socket(_MONITORED)
        self._monitor = LoopSocket(self.loop, monitor, self._on_monitor_event)
        self._socket = LoopSocket(self.loop, socket, self._on_message)
        try:
            socket.connect(self.endpoint)
        except zmq.ZMQError as error:
            self._fail_open(UnavailableError(f"cannot connect to the agent at {self.display}: {error}"))
            return
        self._say_hello()
        self.loop.call_later(self.timeout, self._open_timed_out)

    def _open_timed_out(self) -> None:
        self._fail_open(UnavailableError(f"the agent at {self.display} did not answer within {self.timeout:g}s"))

    def _fail_open(self, error: ExecError) -> None:
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(error)
            self.close()

    def close(self) -> None:
        """Stop talking; execs not yet exited are exited here with 255 (the agent keeps them)."""
        if self.state == "closed":
            return
        if self.state == "ready" and self._socket is not None and self.failure is None:
            self._socket.send([protocol.pack({"op": "bye"})])
        self.state = "closed"
        self.direct.close()
        why = self.failure or "the client was closed"
        for remote in list(self.execs.values()):
            remote.force_locally(255, why)
        self._fail_all(UnavailableError(self.failure or f"the client for {self.display} is closed"))
        if self._lost_timer is not None:
            self._lost_timer.cancel()
        if self._socket is not None:
            self._socket.socket.disable_monitor()
            self._socket.close()
        if self._monitor is not None:
            self._monitor.close()
        self._settle()

    def refuse_agent(self, why: str) -> None:
        """The agent broke a bound this host holds every agent to (``why`` says which): stop
        talking to it for good. Its execs end here with 255 and that reason; requests fail with it."""
        if self.state == "closed":
            return
        self.failure = f"the agent at {self.display} sent {why}; this client no longer talks to it"
        log.error("%s", self.failure)
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(UnavailableError(self.failure))
        self.close()

    def _settle(self) -> None:
        with self.settled:
            self.settled.notify_all()

    def _tell(self, what: str) -> None:
        for watcher in list(self.watchers):
            try:
                watcher(what)
            except Exception:  # a watcher's bug must not break the connection
                log.exception("connection watcher %r failed", watcher)

    # -- requests ----------------------------------------------------------------------

    def request(self, op: str, fields: dict[str, Any], future: concurrent.futures.Future[Any],
                internal: bool = False, on_result: Callable[[Any], None] | None = None,
                request_id: int | None = None) -> None:
        """Send a request; ``future`` gets the result, or the ExecError the agent answered.

        ``on_result`` runs on the loop with a successful result before any later
        message is handled (so, e.g., a start is recorded before that exec's exit).
        """
        if self.state == "closed":
            future.set_exception(UnavailableError(self.failure or f"the client for {self.display} is closed"))
            return
        if self.state == "gone" and not internal:
            future.set_exception(UnavailableError(
                f"the agent at {self.display} has been unreachable for more than {self.reconnect_timeout:g}s"))
            return
        if request_id is None:
            request_id = self.next_request_id()
        frames = [protocol.request_frame(request_id, op, fields)]
        pending = _Pending(op, frames, future, time.monotonic() + self.timeout, internal=internal,
                           on_result=on_result)
        pending.timer = self.loop.call_later(self.timeout, self._request_timed_out, request_id)
        self._pending[request_id] = pending
        if internal or self.state == "ready":
            self._send(frames)
        # Otherwise it goes out when the connection is resynced.

    def _request_timed_out(self, request_id: int) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            return
        if self.state == "lost":
            pending.timer = self.loop.call_later(self.timeout, self._request_timed_out, request_id)
            return  # the reconnect deadline decides, and fails it with every other
        del self._pending[request_id]
        if not pending.future.done():
            pending.future.set_exception(
                UnavailableError(f"the agent at {self.display} did not answer {pending.op!r} within {self.timeout:g}s")
            )

    def _send(self, frames: list[Any]) -> None:
        if self._socket is not None and not self._socket.send(frames):
            log.debug("agent %s cannot take a message now; it is resent on resync", self.display)

    def _fail_all(self, error: ExecError) -> None:
        pending, self._pending = self._pending, {}
        for item in pending.values():
            if item.timer is not None:
                item.timer.cancel()
            if not item.future.done():
                item.future.set_exception(error)

    # -- notifications to the agent -----------------------------------------------------

    def queue_ack(self, stream: InStream) -> None:
        self._acks.add(stream)
        if not self._ack_scheduled:
            self._ack_scheduled = True
            self.loop.call_soon(self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_scheduled = False
        acks, self._acks = self._acks, set()
        if self.state != "ready":
            return  # resync tells the agent where each stream is
        for stream in acks:
            self._send([protocol.pack({"op": "ack", "h": stream.owner.handle, "s": stream.stream,
                                       "q": stream.written})])
            stream.acknowledged(stream.written)

    def send_stdin(self, handle: int, seq: int, data: bytes) -> None:
        if self.state == "ready":
            self._send([protocol.pack({"op": "stdin", "h": handle, "q": seq}), data])

    def send_close_io(self, remote: RemoteExec, last_sent: int) -> None:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.request("close_io", {"task": remote.task_id, "exec": remote.exec_id, "q": last_sent}, future)
        future.add_done_callback(lambda done: done.exception())  # errors (a deleted exec) are moot

    def end_abandoned(self, remote: RemoteExec) -> None:
        """An exec the host ended after its create got no answer turned out to exist on the agent:
        end and delete it there (answers do not matter: it may be gone already), then forget it."""
        if remote.handle not in self.execs:
            return
        ids = {"task": remote.task_id, "exec": remote.exec_id}
        for op, fields in (("force_exit", {**ids, "status": 1}), ("delete", ids)):
            future: concurrent.futures.Future[Any] = concurrent.futures.Future()
            self.request(op, fields, future)
            future.add_done_callback(lambda done: done.exception())
        self.forget(remote)
        log.warning("exec %s: its create got no answer, but the agent has it after all; ended and deleted it there",
                    remote.label)

    def forget(self, remote: RemoteExec) -> None:
        """Stop routing anything to this exec and drop what is queued for it."""
        for stream in remote.streams.values():
            stream.abort()
        if remote.stdin is not None:
            remote.stdin.abort()
        self.execs.pop(remote.handle, None)

    def dispatch_event(self, callback: Callable[[Any], None], event: Any) -> None:
        self.loop_thread.dispatch(callback, event)

    # -- incoming ------------------------------------------------------------------------

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        # libzmq bounds each frame (MAXMSGSIZE) but delivers a message only once all its frames are
        # in: look at its size before anything else, and drop an agent that sends more than a message.
        problem = protocol.message_problem(frames)
        if problem is not None:
            self.refuse_agent(problem)
            return
        try:
            header = protocol.unpack(frames[0].buffer)
        except ExecError as error:
            log.warning("undecodable message from the agent at %s: %s", self.display, error)
            return
        if "id" in header:
            self._on_reply(header)
            return
        if len(frames[0]) > protocol.MAX_EVENT_BYTES:
            self.refuse_agent(f"an event of {len(frames[0])} bytes (the limit is {protocol.MAX_EVENT_BYTES})")
            return
        event = header.get("ev")
        try:
            if event == "out" and len(frames) == 2:
                remote = self.execs.get(header.get("h"))  # type: ignore[arg-type]
                stream = header.get("s")
                if remote is not None and stream in protocol.STREAMS:
                    remote.streams[stream].on_chunk(protocol.get_int(header, "q", 0, protocol.MAX_SEQ),
                                                    frames[1].buffer)
            elif event == "exited":
                remote = self.execs.get(header.get("h"))  # type: ignore[arg-type]
                if remote is not None:
                    protocol.get_int(header, "status", 0, 255)
                    protocol.get_seqs(header, "q")
                    remote.on_exit(header)
            elif event == "started":
                remote = self.execs.get(header.get("h"))  # type: ignore[arg-type]
                if remote is not None:
                    remote.on_started(protocol.get_int(header, "pid", 1, 2**31))
            elif event == "stdin_ack":
                remote = self.execs.get(header.get("h"))  # type: ignore[arg-type]
                if remote is not None and remote.stdin is not None:
                    remote.stdin.on_ack(protocol.get_int(header, "q", -1, protocol.MAX_SEQ))
            elif event == "error":
                log.warning("the agent at %s rejected a message: %s", self.display, header.get("error"))
            else:
                log.debug("ignored event %r", event)
        except ExecError as error:
            log.warning("malformed %r event from the agent at %s: %s", event, self.display, error)

    def _on_reply(self, header: dict[str, Any]) -> None:
        request_id = header.get("id")
        pending = self._pending.get(request_id)  # type: ignore[arg-type]
        if pending is None:
            return  # the answer to a resent request we already had
        if protocol.wants_new_hello(header) and not pending.internal:
            return  # sent before a re-hello reached a restarted agent; the hello decides
        del self._pending[request_id]  # type: ignore[arg-type]
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.future.done():
            return
        try:
            result = protocol.reply_result(header)
        except ExecError as error:
            pending.future.set_exception(error)
        else:
            if pending.on_result is not None:
                try:
                    pending.on_result(result)
                except ExecError as error:
                    pending.future.set_exception(error)
                    return
            pending.future.set_result(result)

    def _on_monitor_event(self, frames: list[zmq.Frame]) -> None:
        try:
            event = parse_monitor_message([frame.bytes for frame in frames])["event"]
        except Exception:  # a monitor message we cannot read is not worth failing for
            return
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self._handshakes_ended = 0
            if self.state in ("connecting", "lost", "gone") and self._hello_id is None:
                self._say_hello()
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._fail_open(AuthenticationError(
                f"the agent at {self.display} refused this client's key (it is not among its authorized keys)"
            ))
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._fail_open(AuthenticationError(
                f"the CURVE handshake with the agent at {self.display} failed (wrong server key, or not a uvmexec agent)"
            ))
        elif event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            # The agent closed the connection mid-handshake: it could not decrypt our hello (a wrong
            # server key) -- or it is shedding connections it has not authenticated yet. Only the
            # first fails every time: give libzmq's reconnects a few chances before saying so.
            self._handshakes_ended += 1
            if self._handshakes_ended >= HANDSHAKE_ATTEMPTS:
                self._fail_open(AuthenticationError(
                    f"the agent at {self.display} ended {self._handshakes_ended} CURVE handshakes in a row "
                    "(a wrong server key, a peer that is not a uvmexec agent, or an agent refusing "
                    "connections under load)"))
        elif event == zmq.EVENT_DISCONNECTED:
            if self.state == "ready":
                self._lost()
            self._forget_handshake()

    def _forget_handshake(self) -> None:
        """A hello or resync in flight died with its connection: the next handshake starts over."""
        for request_id, pending in list(self._pending.items()):
            if pending.internal:
                del self._pending[request_id]
                if pending.timer is not None:
                    pending.timer.cancel()
        self._hello_id = None

    # -- hello, loss and resync -------------------------------------------------------------

    def _say_hello(self) -> None:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._hello_id = self.next_request_id()
        self.request("hello", protocol.hello_fields(self.session_id), future, internal=True,
                     request_id=self._hello_id)
        future.add_done_callback(lambda done: self.loop.call_soon_threadsafe(self._on_hello, done))

    def _on_hello(self, done: concurrent.futures.Future[Any]) -> None:
        self._hello_id = None
        if self.state == "closed":
            return
        error = done.exception()
        if error is not None:
            if isinstance(error, UnimplementedError):
                self._fail_open(error)
            elif self.state == "connecting":
                self._fail_open(UnavailableError(f"hello to the agent at {self.display} failed: {error}"))
            return
        result = done.result()
        if not isinstance(result, dict) or not isinstance(result.get("boot_id"), str):
            self._fail_open(UnavailableError(f"the peer at {self.display} is not a uvmexec agent"))
            return
        try:
            window = protocol.get_int(result, "window", 1, protocol.MAX_WINDOW, default=protocol.DEFAULT_WINDOW)
        except ExecError:
            self.refuse_agent(f"a credit window of {describe(result.get('window'))} bytes in hello "
                              f"(this host accepts 1 to {protocol.MAX_WINDOW})")
            return
        self.agent_info = result
        self.window = window
        if self.state == "connecting":
            self.boot_id = result["boot_id"]
            self.state = "ready"
            if self._opened is not None and not self._opened.done():
                self._opened.set_result(result)
            self._settle()
            return
        if result["boot_id"] != self.boot_id:
            self._agent_restarted(result["boot_id"])
            return
        self._resync()

    def _lost(self) -> None:
        log.warning("lost the agent at %s; waiting up to %gs for it", self.display, self.reconnect_timeout)
        self.state = "lost"
        self._lost_timer = self.loop.call_later(self.reconnect_timeout, self._gave_up)
        self._tell("lost")

    def _gave_up(self) -> None:
        self._lost_timer = None
        if self.state != "lost":
            return
        why = f"the agent at {self.display} was unreachable for {self.reconnect_timeout:g}s"
        self.state = "gone"  # new requests fail at once until the agent answers again
        self._tell("gone")
        for remote in list(self.execs.values()):
            remote.force_locally(255, why)
        self._fail_all(UnavailableError(why))

    def _agent_restarted(self, boot_id: str) -> None:
        why = f"the agent at {self.display} restarted (boot {self.boot_id} -> {boot_id})"
        self._tell("restarted")
        for handle, remote in list(self.execs.items()):
            if remote.on_agent or remote.abandoned:  # the ones still only here start on the new agent
                remote.force_locally(255, why)
                del self.execs[handle]
        self._fail_all(UnavailableError(why))
        self.boot_id = boot_id
        self._back()

    def _resync(self) -> None:
        # The agent may know an exec whose create was sent but not answered (the reply lost in the
        # cut): ask about it too, or its start, output and exit would never be replayed.
        live = [remote for remote in self.execs.values()
                if (remote.final is None or remote.abandoned) and (remote.on_agent or remote.create_sent)]
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.request("resync", {"execs": [{"h": remote.handle, "acked": remote.acked()} for remote in live]},
                     future, internal=True)
        for remote in live:  # the agent counts its window from what the resync acknowledges
            for stream in remote.streams.values():
                stream.acknowledged(stream.written)
        future.add_done_callback(lambda done: self.loop.call_soon_threadsafe(self._on_resync, done, live))

    def _on_resync(self, done: concurrent.futures.Future[Any], live: list[RemoteExec]) -> None:
        if self.state == "closed":
            return
        if done.exception() is not None:
            log.warning("resync with the agent at %s failed: %s", self.display, done.exception())
            return  # still lost; the next handshake tries again
        entries = {entry.get("h"): entry for entry in done.result().get("execs", []) if isinstance(entry, dict)}
        self._back()
        # Stdin the agent missed goes first, then requests held meanwhile (a close_io must follow its stdin).
        for remote in live:
            remote.after_resync(entries.get(remote.handle, {"known": False}))
        for pending in list(self._pending.values()):
            if not pending.internal:
                self._send(pending.frames)

    def _back(self) -> None:
        self.reconnects += 1
        self.state = "ready"
        if self._lost_timer is not None:
            self._lost_timer.cancel()
            self._lost_timer = None
        log.info("the agent at %s is back", self.display)
        self._settle()
        self._tell("ready")
