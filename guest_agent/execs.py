"""One exec as the agent holds it: the common ExecCore plus the wire ends of its stdio.

The exec belongs to one session at a time (its creator, or whoever attached
last); output chunks, stdin acknowledgements and the exit record go to that
session. A detached exec (``create`` with ``detached``) keeps its output as
a ring while no session owns it (see :class:`~guest_agent.wire_stdio.WireSink`). The exit record stays until the exec is deleted, so a client that
reconnects or attaches later still learns how it ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common import protocol
from common.protocol import STDERR, STDOUT, CreateArgs
from common.state import ExecStatus, utc_now
from common.supervisor import ExecCore, Supervisor

from .wire_stdio import WireSink, WireSource

if TYPE_CHECKING:
    from .server import Session


class AgentExec:
    """An exec, its wire stdio, and the session it reports to."""

    def __init__(self, supervisor: Supervisor, handle: int, owner: Session, args: CreateArgs, window: int) -> None:
        self.handle = handle
        self.created_at = utc_now()
        self.detached = args.detached
        self.sinks: dict[int, WireSink] = {}
        self.owner: Session | None = None
        self.set_owner(owner)
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
        self._wire_snapshot: ExecStatus | None = None
        self._wire: dict[str, Any] = {}
        self.core = ExecCore(
            supervisor,
            args.task_id,
            args.exec_id,
            args.spec,
            stdin=self.stdin,
            stdout=self.sinks.get(STDOUT),
            stderr=self.sinks.get(STDERR),
            stdio_paths=args.paths,  # type: ignore[arg-type]
            bundle=args.bundle,
            drain_timeout=args.drain_timeout,
        )
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

    def ack(self, stream: int, seq: int) -> None:
        sink = self.sinks.get(stream)
        if sink is not None:
            sink.ack(seq)

    def replay(self, acked: tuple[int, int] | list[int]) -> None:
        """Resend output the owner has not acknowledged, then the exit record if there is one."""
        for stream, after in zip((STDOUT, STDERR), acked, strict=False):
            sink = self.sinks.get(stream)
            if sink is not None:
                sink.ack(after)
                sink.replay(after)
        if self.exit_header is not None:
            self._send([protocol.pack(self.exit_header)])

    def release(self) -> None:
        """The exec was deleted: drop what is held for it."""
        for sink in self.sinks.values():
            sink.abort()
        if self.stdin is not None:
            self.stdin.close()
