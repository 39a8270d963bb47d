"""The host's half of one proxied exec, on the loop thread: output writers, stdin feeder, exit.

Output chunks are written to the local targets in sequence order and
acknowledged once written; the agent sends no more than its window ahead of
the acknowledgements, so at most a window per stream is ever queued here. The
exec becomes EXITED on the host only when the agent's exit record arrived
*and* every chunk it names has been written — the same promise ``LocalExec``
keeps. Stdin is read from the local source under the agent's credit window
and kept until acknowledged, so it can be resent after a reconnect.

It is also the record ``ProxiedExec`` answers ``pid``, ``state`` and
``status()`` from, without asking the agent (hcsshim serves these from memory
too): the start reply or ``started`` event sets ``pid``, the exit record and
the last output written set ``final``. The record lags the agent by the
events in flight, never more, and keeps answering when the agent is gone.

Loop-thread only, except what :class:`ProxiedExec` uses: the read-only
attributes (``pid``, ``final``, ``finalized``, ``deleted``, set once each),
:attr:`RemoteExec.state`, :meth:`RemoteExec.status`, and the methods that say
they may be called from any thread.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common import protocol
from common.errors import ExecError
from common.protocol import STDERR, STDOUT
from common.state import (
    RUNNING_EXIT_STATUS,
    ExecEvent,
    ExecExited,
    ExecStarted,
    ExecState,
    ExecStatus,
    utc_now,
)
from common.supervisor import InputSource, NullSink, OutputSink
from common.supervisor.streams import CHUNK_SIZE, read_unless_stopped

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)


class InStream:
    """One output stream arriving from the agent, written to its local sink in order.

    The agent may have at most its window (and the chunk that crossed it) unacknowledged: the host
    counts what arrived after the last acknowledgement it sent, and an agent that goes past that is
    refused (:meth:`Connection.refuse_agent`) instead of queued without end.
    """

    def __init__(self, owner: RemoteExec, stream: int, sink: OutputSink, first_seq: int = 0) -> None:
        self.owner = owner
        self.stream = stream
        self.sink = sink
        self.expected = first_seq
        self.written = first_seq - 1
        #: (seq, size) of the chunks taken after the last acknowledgement the agent was sent.
        self._unacked: collections.deque[tuple[int, int]] = collections.deque()
        self._unacked_bytes = 0
        self._queue: collections.deque[tuple[int, Any]] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._written_since_ack = 0
        self._failed = False

    @property
    def idle(self) -> bool:
        return not self._queue and self._writer is None

    def on_chunk(self, seq: int, data: Any) -> None:
        if seq != self.expected:
            if seq < self.expected:
                self.owner.conn.queue_ack(self)  # a replayed duplicate: remind the agent where we are
            return  # a gap (lost across a reconnect) is filled by the resync's replay
        self._unacked.append((seq, len(data)))
        self._unacked_bytes += len(data)
        window = self.owner.conn.window
        if self._unacked_bytes > window + protocol.MAX_CHUNK_BYTES:
            self.owner.conn.refuse_agent(
                f"{self._unacked_bytes} bytes of {'stdout' if self.stream == STDOUT else 'stderr'} of exec "
                f"{self.owner.label} beyond its last acknowledgement, more than its credit window of {window} "
                "bytes allows")
            return
        self.expected += 1
        self._queue.append((seq, data))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    async def _write_queued(self) -> None:
        try:
            while self._queue:
                seq, data = self._queue[0]
                if not self._failed:
                    try:
                        await self.sink.write(data)
                    except OSError as error:
                        log.warning("exec %s: %s target failed (%s); discarding the rest",
                                    self.owner.label, "stdout" if self.stream == STDOUT else "stderr", error)
                        self._failed = True
                        self.sink.abort()
                        self.sink = NullSink()
                self._queue.popleft()
                self.written = seq
                # One acknowledgement per quarter window, or when caught up, keeps the agent
                # streaming without a message back for every chunk.
                self._written_since_ack += len(data)
                if not self._queue or self._written_since_ack >= self.owner.conn.window // 4:
                    self._written_since_ack = 0
                    self.owner.conn.queue_ack(self)
        finally:
            self._writer = None
        self.owner.check_exit()

    def acknowledged(self, seq: int) -> None:
        """The agent was told (an ack, or a resync) that every chunk up to ``seq`` is written."""
        while self._unacked and self._unacked[0][0] <= seq:
            self._unacked_bytes -= self._unacked.popleft()[1]

    def abort(self) -> None:
        self._queue.clear()
        if self._writer is not None:
            self._writer.cancel()
        self.sink.abort()


class OutStdin:
    """Stdin read from the local source and sent under the agent's credit window."""

    def __init__(self, owner: RemoteExec, source: InputSource, window: int, next_seq: int = 0) -> None:
        self.owner = owner
        self.source = source
        self.window = window
        self.last_sent = next_seq - 1
        self._unacked: collections.deque[tuple[int, bytes]] = collections.deque()
        self._unacked_bytes = 0
        self._credit: asyncio.Future[None] | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while not self._stop.is_set():
                while self._unacked_bytes >= self.window and not self._stop.is_set():
                    self._credit = asyncio.get_running_loop().create_future()
                    await self._credit
                if self._stop.is_set():
                    break
                # Never more than the credit left: the agent refuses a chunk that overflows the window.
                credit = min(CHUNK_SIZE, self.window - self._unacked_bytes)
                data = await read_unless_stopped(self.source, credit, self._stop)
                if data is None:
                    break
                if not data:
                    # The source ended: the process gets EOF without close_io (as LocalExec does).
                    self.owner.conn.send_close_io(self.owner, self.last_sent)
                    break
                self.last_sent += 1
                self._unacked.append((self.last_sent, data))
                self._unacked_bytes += len(data)
                self.owner.conn.send_stdin(self.owner.handle, self.last_sent, data)
        except OSError as error:
            log.warning("exec %s: reading stdin failed: %s", self.owner.label, error)
        finally:
            self.source.close()

    def on_ack(self, seq: int) -> None:
        while self._unacked and self._unacked[0][0] <= seq:
            _, data = self._unacked.popleft()
            self._unacked_bytes -= len(data)
        if self._credit is not None and self._unacked_bytes < self.window and not self._credit.done():
            self._credit.set_result(None)

    def resend_after(self, received: int) -> None:
        for seq, data in self._unacked:
            if seq > received:
                self.owner.conn.send_stdin(self.owner.handle, seq, data)

    async def stop(self) -> int:
        """Stop reading (bytes already read were sent); the last sequence number sent."""
        self._stop.set()
        if self._credit is not None and not self._credit.done():
            self._credit.set_result(None)
        if self._task is not None:
            try:
                await asyncio.shield(self._task)
            except asyncio.CancelledError:
                if not self._task.cancelled():
                    raise  # it is this call that was cancelled
                # The exec ended first and aborted the feeder: what was sent stands.
        return self.last_sent

    def abort(self) -> None:
        self._stop.set()
        if self._task is None:
            self.source.close()
            return
        self._task.cancel()
        # A task cancelled before its first step never runs its ``finally``: close the source here
        # too (closing twice is harmless).
        self._task.add_done_callback(lambda _: self.source.close())


class RemoteExec:
    """Everything the host keeps about one exec running behind the agent."""

    def __init__(
        self,
        conn: Connection,
        handle: int,
        task_id: str,
        exec_id: str,
        *,
        bundle: str,
        terminal: bool,
        paths: tuple[str, str, str],
        stdin: InputSource | None,
        stdout: OutputSink | None,
        stderr: OutputSink | None,
        on_event: Callable[[ExecEvent], None] | None,
        first_seqs: tuple[int, int] = (0, 0),
        stdin_next: int = 0,
    ) -> None:
        self.conn = conn
        self.handle = handle
        self.task_id = task_id
        self.exec_id = exec_id
        self.label = f"{task_id}/{exec_id}"
        self.bundle = bundle
        self.terminal = terminal
        self.paths = paths
        self.on_event = on_event
        self.streams: dict[int, InStream] = {
            STDOUT: InStream(self, STDOUT, stdout or NullSink(), first_seqs[0]),
            STDERR: InStream(self, STDERR, stderr or NullSink(), first_seqs[1]),
        }
        self.stdin = OutStdin(self, stdin, conn.window, stdin_next) if stdin is not None else None
        self.pid = 0
        #: True once the agent knows the exec (its create was answered, or it was attached).
        self.on_agent = False
        #: The create request not yet sent: it goes out with the first call that needs the agent.
        self.pending_create: dict[str, Any] | None = None
        self.create_request_id: int | None = None
        #: The create went out at least once (the agent may know the exec before we hear so).
        self.create_sent = False
        #: ExecStarted went out (or the start happened before this client attached).
        self.start_published = False
        #: Ended here after a create that got no answer: if the agent does know it, end it there.
        self.abandoned = False
        #: close_io came before the create was sent: start() sends it ahead of the start.
        self.stdin_closed_before_start = False
        self.create_lock = threading.Lock()
        self._events_lock = threading.Lock()
        self.exit_header: dict[str, Any] | None = None
        self.final: ExecStatus | None = None
        self._snapshot: ExecStatus | None = None
        self.finalized = threading.Event()
        self.deleted = False
        #: Ended here without the agent (it was unreachable); the agent may still run it.
        self.forced_locally = False
        #: Why it was ended here (set with ``forced_locally``).
        self.forced_reason: str | None = None
        self._finalizing = False

    # -- what the host knows (any thread) ----------------------------------------

    @property
    def state(self) -> ExecState:
        """EXITED once final here; RUNNING once started (output may still be on its way); else CREATED."""
        if self.final is not None:
            return ExecState.EXITED
        return ExecState.RUNNING if self.pid else ExecState.CREATED

    def status(self) -> ExecStatus:
        """The exec's status from this host's record: no round trip, so it answers with the agent gone."""
        final = self.final
        if final is not None:
            return final
        pid = self.pid
        snapshot = self._snapshot
        if snapshot is None or snapshot.pid != pid:
            # Made once per state (it changes only at start and exit): status() is the commonest call.
            snapshot = self._snapshot = ExecStatus(
                id=self.task_id,
                exec_id=self.exec_id,
                bundle=self.bundle,
                pid=pid,
                status=ExecState.RUNNING if pid else ExecState.CREATED,
                stdin=self.paths[0],
                stdout=self.paths[1],
                stderr=self.paths[2],
                terminal=self.terminal,
                exit_status=RUNNING_EXIT_STATUS,
                exited_at=None,
            )
        return snapshot

    # -- ending it without the agent (any thread) ------------------------------------

    def end_unstarted(self, exit_status: int, exited_at: datetime.datetime | None = None, pid: int = 0) -> None:
        """Any thread: end an exec without an exit record and without events — it never started
        (force_exit or delete before start, a failed start, a refused create), or the agent's
        delete reply is the last word on it. Waiters are released."""
        self.pending_create = None
        self.conn.loop_thread.call(self.finish, exit_status, exited_at, False, pid)

    def close_stdin_before_start(self) -> None:
        """Any thread, before the create is sent: stop the host's stdin reader before it began;
        ``start()`` sends ``close_io`` between the create and the start, so the process gets
        EOF at once (with a tty, the EOF character), as ``close_io`` before start gives a local
        process."""
        def drop() -> None:
            if self.stdin is not None:
                self.stdin.abort()
                self.stdin = None
            self.stdin_closed_before_start = True

        self.conn.loop_thread.call(drop)

    def refuse(self, error: ExecError) -> None:
        """The create or start failed: EXITED with 1, like any failed start (no event).

        A refusal the agent answered leaves nothing there. A create that got no answer may
        still have reached it: the record stays routed, and if the agent turns out to know the
        exec (its ``started`` event, a resync), the host ends and deletes it there.
        """
        self.abandoned = self.create_sent and not error.from_peer
        self.end_unstarted(1)

    def end_here(self, exit_status: int, why: str) -> None:
        """Any thread: the agent cannot be asked (unreachable): end the exec here."""
        self.conn.loop_thread.call(self.force_locally, exit_status, why)

    def stop_stdin(self) -> int:
        """Any thread: stop feeding stdin; the sequence number of the last chunk sent (-1: none)."""
        if self.stdin is None:
            return -1
        return self.conn.loop_thread.run(self.stdin.stop())

    # -- lifecycle -------------------------------------------------------------

    def on_started(self, pid: int) -> None:
        """Record the start once: from the caller's ``start()``, the agent's ``started`` event or a resync.

        Any thread. The lock keeps ExecStarted ahead of ExecExited whichever thread gets here first.
        """
        if self.abandoned:
            self.conn.end_abandoned(self)
            return
        with self._events_lock:
            if self.start_published:
                return
            self.start_published = True
            self.pid = self.pid or pid
            if self.on_event is not None:
                self.conn.dispatch_event(self.on_event, ExecStarted(self.exec_id, self.pid))
        if self.stdin is not None and self.final is None:
            self.conn.loop.call_soon_threadsafe(self.stdin.start)

    def on_exit(self, header: dict[str, Any]) -> None:
        if self.abandoned:
            self.conn.end_abandoned(self)
            return
        if self.exit_header is not None or self.final is not None:
            return
        self.exit_header = header
        self.check_exit()

    def check_exit(self) -> None:
        """Finalize once the exit record is here and every chunk it names is written."""
        header = self.exit_header
        if header is None or self._finalizing:
            return
        if header.get("started") and not header.get("forced"):
            last = header["q"]
            for stream, last_seq in zip((STDOUT, STDERR), last, strict=False):
                state = self.streams[stream]
                if state.written < last_seq or not state.idle:
                    return
        self._finalizing = True
        asyncio.get_running_loop().create_task(self._finalize(header))

    async def _finalize(self, header: dict[str, Any]) -> None:
        if self.stdin is not None:
            self.stdin.abort()
        for state in self.streams.values():
            if header.get("forced"):
                state.abort()
                continue
            try:
                await state.sink.close()
            except OSError as error:
                log.warning("exec %s: closing output: %s", self.label, error)
        exited_at = protocol.datetime_from_wire(header.get("at")) or utc_now()
        self.finish(header["status"], exited_at, bool(header.get("started")), header.get("pid", self.pid))

    def finish(self, exit_status: int, exited_at: datetime.datetime | None, started: bool, pid: int) -> None:
        """Become EXITED on the host: publish the exit (if the exec started), then release waiters.

        Loop thread. Waiters are released through the event dispatcher, behind the exit event, so
        a shim that forwards ExecExited and answers Wait never reports an exit before its event.
        """
        if self.final is not None:
            return
        self.pid = pid or self.pid
        self.final = ExecStatus(
            id=self.task_id,
            exec_id=self.exec_id,
            bundle=self.bundle,
            pid=self.pid,
            status=ExecState.EXITED,
            stdin=self.paths[0],
            stdout=self.paths[1],
            stderr=self.paths[2],
            terminal=self.terminal,
            exit_status=exit_status,
            exited_at=exited_at or utc_now(),
        )
        if not (started and self.on_event is not None):
            self.finalized.set()
            return
        with self._events_lock:
            if not self.start_published:
                # The start was never recorded (its event and reply were lost): publish it first.
                self.start_published = True
                self.conn.dispatch_event(self.on_event, ExecStarted(self.exec_id, self.pid))
            self.conn.dispatch_event(self.on_event, ExecExited(self.exec_id, self.pid, exit_status,
                                                               self.final.exited_at))  # type: ignore[arg-type]
        self.conn.dispatch_event(lambda _: self.finalized.set(), None)

    def force_locally(self, exit_status: int, why: str) -> None:
        """The agent is gone (or lost this exec): end it here without it."""
        if self.final is not None:
            return
        log.warning("exec %s: %s; exiting it with %d", self.label, why, exit_status)
        self.forced_locally = True
        self.forced_reason = why
        for state in self.streams.values():
            state.abort()
        if self.stdin is not None:
            self.stdin.abort()
        self.finish(exit_status, utc_now(), self.pid != 0, self.pid)

    # -- reconnects ---------------------------------------------------------------

    def acked(self) -> list[int]:
        return [self.streams[STDOUT].written, self.streams[STDERR].written]

    def after_resync(self, entry: dict[str, Any]) -> None:
        if self.abandoned:
            if entry.get("known"):
                self.conn.end_abandoned(self)
            else:
                self.conn.forget(self)
            return
        if not entry.get("known"):
            if self.on_agent:
                self.force_locally(255, "the agent no longer knows it")
            return  # a create that never arrived: it is still pending and will be sent again
        self.on_agent = True
        if entry.get("pid"):
            self.on_started(entry["pid"])  # once: the started event may have been lost with the connection
        if self.stdin is not None:
            # Acknowledgements sent while the connection was down are lost: take the agent's word.
            self.stdin.on_ack(entry.get("stdin_acked", -1))
            self.stdin.resend_after(entry.get("stdin_q", -1))
