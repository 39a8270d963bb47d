"""One exec as the agent holds it: the common ExecCore plus the wire ends of its stdio.

The exec belongs to one session at a time (its creator, or whoever attached
last); output chunks, stdin acknowledgements and the exit record go to that
session. A detached exec (``create`` with ``detached``) keeps its output as
a ring while no session owns it (see :class:`~guest_agent.wire_stdio.WireSink`). The exit record stays until the exec is deleted, so a client that
reconnects or attaches later still learns how it ended.

A replay (after ``attach`` or ``resync``) resends up to a window per stream, and libzmq keeps a
copy of what it was handed until the peer reads it. So an exec has at most one replay in flight:
from when it is handed to a connection until the owner acknowledges its last chunk or that
connection is gone. A replay asked for meanwhile waits, and replaces any other waiting one — it
adds nothing to what is queued, whoever asks and however often (a client sending attach after
attach without reading once made the agent hold a window per request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common import protocol
from common.protocol import STDERR, STDOUT, STREAMS, CreateArgs, CreateTaskArgs
from common.state import ExecStatus, utc_now
from common.supervisor import ExecCore, Supervisor

from .wire_stdio import WireSink, WireSource

if TYPE_CHECKING:
    from .server import Session


class AgentExec:
    """An exec, its wire stdio, and the session it reports to.

    ``make_core`` makes the exec's core from its stdio ends (keywords ``stdin``, ``stdout``,
    ``stderr``, ``stdio_paths``, ``drain_timeout``): a task's init or exec
    (:class:`~common.supervisor.TaskCore`). By default it is a bare process of ``args.spec``.
    """

    def __init__(self, supervisor: Supervisor, handle: int, owner: Session, args: CreateArgs | CreateTaskArgs,
                 window: int, *, make_core: Callable[..., ExecCore] | None = None) -> None:
        self.handle = handle
        self.created_at = utc_now()
        self.detached = args.detached
        self.sinks: dict[int, WireSink] = {}
        self.owner: Session | None = None
        chunk = protocol.MAX_CHUNK_BYTES
        unread = (lambda: self.owner is None) if args.detached else None
        if args.stdout:
            self.sinks[STDOUT] = WireSink(lambda seq, data: self._send_chunk(STDOUT, seq, data), window, chunk,
                                          unread)
        if args.stderr:
            self.sinks[STDERR] = WireSink(lambda seq, data: self._send_chunk(STDERR, seq, data), window, chunk,
                                          unread)
        self.stdin = WireSource(self._send_stdin_ack, window) if args.stdin else None
        self.exit_header: dict[str, Any] | None = None
        #: A replay waiting for the one in flight: per stream, resend the chunks after this number.
        self._replay_after: list[int] | None = None
        #: The replay in flight: the connection it went to, and per stream the last chunk it sent
        #: that the session on that connection has not acknowledged yet.
        self._replaying: tuple[tuple[int, bytes], dict[int, int]] | None = None
        self._wire_snapshot: ExecStatus | None = None
        self._wire: dict[str, Any] = {}
        stdio: dict[str, Any] = {
            "stdin": self.stdin,
            "stdout": self.sinks.get(STDOUT),
            "stderr": self.sinks.get(STDERR),
            "stdio_paths": args.paths,
            "drain_timeout": args.drain_timeout,
        }
        try:
            if make_core is None:
                assert isinstance(args, CreateArgs)
                self.core = ExecCore(supervisor, args.task_id, args.exec_id, args.spec, bundle=args.bundle, **stdio)
            else:
                self.core = make_core(**stdio)
        except BaseException:
            self.release()  # refused (a task that cannot be made): nothing of it stays
            raise
        self.set_owner(owner)
        self.core.add_exit_listener(self._on_exit)

    def wire_status(self) -> dict[str, Any]:
        """The exec's status map (kept while the status is unchanged: status is the commonest op)."""
        snapshot = self.core.status()
        if self._wire_snapshot is not snapshot:
            self._wire_snapshot = snapshot
            self._wire = protocol.status_to_wire(snapshot)
        return self._wire

    def set_owner(self, session: Session | None) -> None:
        if self.owner is not None:
            self.owner.owned.discard(self)
        self.owner = session
        if session is not None:
            session.owned.add(self)
        if self.detached and session is None:
            for sink in self.sinks.values():
                sink.poke()

    def _send(self, frames: list[Any]) -> None:
        if self.owner is not None:
            self.owner.send(frames)

    def _send_chunk(self, stream: int, seq: int, data: bytes) -> None:
        self._send([protocol.pack({"ev": "out", "h": self.handle, "s": stream, "q": seq}), data])

    def send_started(self, pid: int) -> None:
        """Before any output of the exec: its owner learns the start on the event connection."""
        self._send([protocol.pack({"ev": "started", "h": self.handle, "pid": pid})])

    def _send_stdin_ack(self, seq: int) -> None:
        self._send([protocol.pack({"ev": "stdin_ack", "h": self.handle, "q": seq})])

    def _on_exit(self, status: ExecStatus) -> None:
        self.exit_header = {
            "ev": "exited",
            "h": self.handle,
            "status": status.exit_status,
            "at": protocol.datetime_to_wire(status.exited_at),
            "pid": status.pid,
            "started": status.pid != 0,
            "forced": self.core.forced,
            "cut": self.core.output_cut,
            "q": self.last_seqs(),
        }
        if self._replay_after is None:  # else the waiting replay sends it, after the output it names
            self._send([protocol.pack(self.exit_header)])

    def last_seqs(self) -> list[int]:
        return [self.sinks[stream].last_seq if stream in self.sinks else -1 for stream in (STDOUT, STDERR)]

    def first_unacked(self) -> list[int]:
        """Per stream, the sequence number of the oldest chunk a new reader has not seen."""
        firsts = []
        for stream in (STDOUT, STDERR):
            sink = self.sinks.get(stream)
            firsts.append(sink.last_seq + 1 - sink.unacked_chunks if sink is not None else 0)
        return firsts

    def ack(self, session: Session, stream: int, seq: int) -> None:
        """``session`` wrote every chunk of ``stream`` up to ``seq``: credit if it owns the exec, and
        the end of a replay in flight if that went to its connection (an owner that was taken
        over still reads what it was sent)."""
        sink = self.sinks.get(stream)
        if sink is None:
            return
        if session is self.owner:
            sink.ack(seq)
        if self._replaying is not None and self._replaying[0] == session.route:
            lasts = self._replaying[1]
            if lasts.get(stream, seq) <= seq:
                lasts.pop(stream, None)
            if not lasts:
                self._replaying = None
                self._replay_now()

    def replay(self, acked: tuple[int, int] | list[int]) -> None:
        """Resend output the owner has not acknowledged, then the exit record if there is one
        (now, or once the replay in flight is done: see the module's docstring)."""
        afters = [-1, -1]
        for index, (stream, after) in enumerate(zip(STREAMS, acked, strict=False)):
            afters[index] = after
            sink = self.sinks.get(stream)
            if sink is not None:
                sink.ack(after)
                sink.holding = True
        self._replay_after = afters
        self._replay_now()

    def connection_gone(self, route: tuple[int, bytes]) -> None:
        """What was sent on ``route`` is dropped with it: a replay in flight there no longer counts."""
        if self._replaying is not None and self._replaying[0] == route:
            self._replaying = None
            self._replay_now()

    def _replay_now(self) -> None:
        if self._replay_after is None or self._replaying is not None:
            return
        afters, self._replay_after = self._replay_after, None
        lasts: dict[int, int] = {}
        for stream, after in zip(STREAMS, afters, strict=True):
            sink = self.sinks.get(stream)
            if sink is not None:
                sink.holding = False
                if sink.replay(after):
                    lasts[stream] = sink.last_seq
        if self.exit_header is not None:
            self._send([protocol.pack(self.exit_header)])
        route = self.owner.route if self.owner is not None else None
        if lasts and route is not None:
            self._replaying = (route, lasts)

    def release(self) -> None:
        """The exec was deleted: drop what is held for it."""
        self._replay_after = self._replaying = None
        for sink in self.sinks.values():
            sink.abort()
        if self.stdin is not None:
            self.stdin.close()
