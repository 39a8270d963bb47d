"""The agent's operations: decode -> validate -> call the exec core -> encode.

``REQUESTS`` maps each op to a handler returning the reply's result (or a
:class:`Then` when something must be sent after the reply); errors are
``ExecError``\\ s, turned into error replies by the server. ``NOTIFICATIONS``
are the ops that get no reply (acknowledgements, stdin data).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common import protocol
from common.errors import (
    InvalidArgumentError,
    UnavailableError,
    already_exists_error,
    not_found_error,
    task_not_found_error,
)
from common.protocol import STREAMS, CreateArgs, CreateTaskArgs
from common.spec import MAX_ID_BYTES
from common.supervisor import TaskCore

from .execs import AgentExec

if TYPE_CHECKING:
    from .server import Agent, Session


@dataclass
class Then:
    """A result, and what to send once the reply is out (replayed output, exit records)."""

    result: Any
    after: Callable[[], None]


def _lookup(agent: Agent, message: dict[str, Any]) -> AgentExec:
    task_id, exec_id = protocol.get_exec_ids(message)
    record = agent.execs.get((task_id, exec_id))
    if record is None:
        raise not_found_error(task_id, exec_id)
    return record


def op_ping(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    return {}


def _task(agent: Agent, task_id: str) -> TaskCore:
    task = agent.supervisor.tasks.get(task_id)
    if task is None:
        raise task_not_found_error(task_id)
    return task


def _new_record(agent: Agent, session: Session, args: CreateArgs | CreateTaskArgs, exec_id: str,
                make_core: Callable[..., Any] | None) -> AgentExec:
    """Check the ids, the agent's capacity and the handle, then make and track the exec."""
    key = (args.task_id, exec_id)
    if key in agent.execs:
        raise already_exists_error(*key)
    if len(agent.execs) >= agent.max_execs:
        raise UnavailableError(f"the agent already tracks {len(agent.execs)} execs; delete some first")
    if args.handle is not None and args.handle in agent.handles:
        raise InvalidArgumentError(f"invalid message: h: handle {args.handle} is in use")
    handle = args.handle if args.handle is not None else agent.new_handle()
    record = AgentExec(agent.supervisor, handle, session, args, agent.window, make_core=make_core)
    agent.execs[key] = record
    agent.handles[record.handle] = record
    return record


def op_create(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    """An exec: a bare process of the agent's machine, or with ``in_task`` one inside that task's container."""
    args = CreateArgs(message)
    make_core = None
    if protocol.get_bool(message, "in_task", False):
        task = _task(agent, args.task_id)
        make_core = functools.partial(task.create_exec, args.exec_id, args.spec)
    return {"h": _new_record(agent, session, args, args.exec_id, make_core).handle}


def op_create_task(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    """A task from a bundle (rootfs mounted now); its init is the exec whose id is the task id."""
    args = CreateTaskArgs(message)

    def make_task(**stdio: Any) -> Any:
        return TaskCore(agent.supervisor, args.task_id, args.bundle, rootfs=args.rootfs,
                        create_init=args.create_init, **stdio).init

    record = _new_record(agent, session, args, args.task_id, make_task)
    return {"h": record.handle, "terminal": record.core.spec.terminal,
            "pid": _task(agent, args.task_id).created_pid}


def op_task_kill(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    """containerd's Kill of a task's init: before its start, the process ``runc create`` made."""
    task = _task(agent, protocol.get_str(message, "task", MAX_ID_BYTES))
    # The task checks the signal after the state, as for an exec's kill: pass what came.
    task.kill(message.get("signal"), protocol.get_bool(message, "all", False))  # type: ignore[arg-type]
    return {}


def op_pids(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    task = _task(agent, protocol.get_str(message, "task", MAX_ID_BYTES))
    return {"pids": [protocol.process_info_to_wire(info) for info in task.pids()]}


def op_task_stats(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    task = _task(agent, protocol.get_str(message, "task", MAX_ID_BYTES))
    return {"stats": task.stats()}


def op_start(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    record = _lookup(agent, message)
    record.core.start()
    pid = record.core.snapshot.pid
    record.send_started(pid)
    return {"pid": pid}


def op_kill(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    record = _lookup(agent, message)
    # The core checks the signal after the state, as for LocalExec: pass what came.
    record.core.kill(message.get("signal"), protocol.get_bool(message, "all", False))  # type: ignore[arg-type]
    return {}


def op_resize_pty(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    record = _lookup(agent, message)
    record.core.resize_pty(message.get("width"), message.get("height"))  # type: ignore[arg-type]
    return {}


def op_close_io(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    record = _lookup(agent, message)
    last_sent = protocol.get_int(message, "q", -1, protocol.MAX_SEQ, default=-1)
    if record.stdin is not None:
        record.stdin.end_after(last_sent)
    record.core.close_io()
    return {}


def op_status(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    return _lookup(agent, message).wire_status()


def op_force_exit(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    _lookup(agent, message).core.force_exit(message.get("status"))  # type: ignore[arg-type]
    return {}


def op_delete(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    """Delete an exec; a task's init: the whole task (container, mounts, every exec of it)."""
    record = _lookup(agent, message)
    task = agent.supervisor.tasks.get(record.core.task_id)
    if task is None or record.core is not task.init:
        final = record.core.delete()
        agent.forget_exec(record)
        return protocol.status_to_wire(final)
    final = task.delete()
    for owned in [other for other in agent.execs.values() if task.owns(other.core)]:
        agent.forget_exec(owned)
    return protocol.status_to_wire(final)


def op_stats(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    """What the agent holds right now: for operators, and for tests that look for leaks."""
    memory = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                memory[key] = int(value.split()[0])
    return {
        "execs": len(agent.execs),
        "running": len(agent.supervisor.running),
        "sessions": len(agent.sessions),
        "watched": agent.supervisor.reaper.watched,
        "orphans_reaped": agent.supervisor.reaper.orphans_reaped,
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": memory.get("Threads", 0),
        "rss_kib": memory.get("VmRSS", 0),
        "peak_rss_kib": memory.get("VmHWM", 0),
        "held_output_bytes": sum(sink.unacked_bytes for record in agent.execs.values()
                                 for sink in record.sinks.values()),
        # What waits in sessions' outboxes for connections that do not read, and connections that
        # have not spoken yet (see guest_agent/connections.py).
        "held_messages": sum(len(held.outbox) for held in agent.sessions.values()),
        "held_message_bytes": sum(held.outbox_bytes for held in agent.sessions.values()),
        "pending_connections": agent.pending_connections(),
    }


#: How much of an exec's command line ``list`` shows (characters; longer ones are cut with "...").
LIST_ARGS_CHARS = 256
#: A ``list`` page holds statuses up to about this many bytes (and at least one): a reply stays
#: small whatever the paths, so even a client that asks and never reads makes libzmq hold little.
LIST_PAGE_BYTES = 256 * 1024


def _status_bytes(status: dict[str, Any]) -> int:
    """About what a listed exec takes on the wire: its strings (the command line's too) and a
    bound for the rest."""
    size = 160
    for value in status.values():
        if isinstance(value, str):
            size += len(value.encode())
        elif isinstance(value, list):
            size += sum(len(item.encode()) + 8 for item in value if isinstance(item, str))
    return size


def _listed(record: AgentExec) -> dict[str, Any]:
    """An exec's status, with its command line (cut to LIST_ARGS_CHARS) and when it was created."""
    shown: list[str] = []
    room = LIST_ARGS_CHARS
    for arg in record.core.spec.args:
        if len(arg) > room:  # the first that does not fit is cut, and ends the list
            shown.append(arg[:max(room, 0)] + "...")
            break
        shown.append(arg)
        room -= len(arg) + 1
    return {**protocol.status_to_wire(record.core.snapshot), "args": shown,
            "created": protocol.datetime_to_wire(record.created_at)}


def op_list(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    """One page of the execs the agent tracks, in handle order; ``next`` is the cursor for the
    following page (None at the end). Each entry is a status with ``args`` (the command line,
    cut) and ``created``."""
    after = protocol.get_int(message, "after", 0, protocol.MAX_HANDLE, default=0)
    handles = sorted(handle for handle in agent.handles if handle > after)
    page: list[dict[str, Any]] = []
    size = 0
    for handle in handles:
        status = _listed(agent.handles[handle])
        size += _status_bytes(status)
        if page and size > LIST_PAGE_BYTES:
            break
        page.append(status)
    return {"execs": page, "next": handles[len(page) - 1] if len(page) < len(handles) else None}


#: The most output one ``logs`` reply carries (it travels in the reply's header).
LOGS_PAGE_BYTES = 256 * 1024


def op_logs(agent: Agent, session: Session, message: dict[str, Any]) -> dict[str, Any]:
    """Output the agent holds for one stream of an exec, numbered after ``after``, at most
    LOGS_PAGE_BYTES: a detached exec's last window of output (read or not), else what is
    unacknowledged. Nothing changes hands: it is not acknowledged, and the owner stays."""
    record = _lookup(agent, message)
    stream = protocol.get_int(message, "stream", STREAMS[0], STREAMS[-1])
    after = protocol.get_int(message, "after", -1, protocol.MAX_SEQ, default=-1)
    sink = record.sinks.get(stream)
    chunks: list[bytes] = []
    first = last = -1
    size = 0
    more = False
    for seq, chunk in list(sink.held()) if sink is not None else []:
        if seq <= after:
            continue
        if chunks and size + len(chunk) > LOGS_PAGE_BYTES:
            more = True
            break
        first = seq if first < 0 else first
        last = seq
        chunks.append(chunk)
        size += len(chunk)
    return {"data": chunks, "first": first, "last": last, "more": more,
            "dropped": sink.dropped_bytes if sink is not None else 0}


def op_attach(agent: Agent, session: Session, message: dict[str, Any]) -> Then:
    """Take over an exec: its unacknowledged output and exit record now go to this session."""
    record = _lookup(agent, message)
    record.set_owner(session)
    firsts = record.first_unacked()
    result = {
        "h": record.handle,
        "status": protocol.status_to_wire(record.core.status()),
        "stdio": {
            "stdin": record.stdin is not None,
            "stdout": protocol.STDOUT in record.sinks,
            "stderr": protocol.STDERR in record.sinks,
        },
        "first": firsts,
        "stdin_q": record.stdin.last_received if record.stdin is not None else -1,
    }
    return Then(result, lambda: record.replay([first - 1 for first in firsts]))


def op_resync(agent: Agent, session: Session, message: dict[str, Any]) -> Then:
    """After a reconnect: which execs still exist, and replay of what the host has not acknowledged."""
    entries = protocol.get_list(message, "execs", agent.max_execs)
    known, replays = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise InvalidArgumentError(f"invalid message: execs[{index}]: must be a map")
        handle = protocol.get_int(entry, "h", 0, protocol.MAX_HANDLE)
        acked = protocol.get_seqs(entry, "acked")
        record = agent.handles.get(handle)
        if record is None:
            known.append({"h": handle, "known": False})
            continue
        record.set_owner(session)
        known.append({"h": handle, "known": True, "pid": record.core.snapshot.pid,
                      "stdin_q": record.stdin.last_received if record.stdin is not None else -1,
                      "stdin_acked": record.stdin.delivered if record.stdin is not None else -1})
        replays.append((record, acked))
    session.drop_pending()

    def replay_all() -> None:
        for record, acked in replays:
            record.replay(acked)

    return Then({"execs": known}, replay_all)


def note_ack(agent: Agent, session: Session, message: dict[str, Any], payload: memoryview | None) -> None:
    record = agent.handles.get(protocol.get_int(message, "h", 0, protocol.MAX_HANDLE))
    stream = protocol.get_int(message, "s", 1, 2)
    seq = protocol.get_int(message, "q", -1, protocol.MAX_SEQ)
    if record is not None and stream in STREAMS:
        record.ack(session, stream, seq)


def note_stdin(agent: Agent, session: Session, message: dict[str, Any], payload: memoryview | None) -> None:
    record = agent.handles.get(protocol.get_int(message, "h", 0, protocol.MAX_HANDLE))
    seq = protocol.get_int(message, "q", 0, protocol.MAX_SEQ)
    if record is None or record.owner is not session or record.stdin is None:
        return
    record.stdin.feed(seq, bytes(payload) if payload is not None else b"")


def note_bye(agent: Agent, session: Session, message: dict[str, Any], payload: memoryview | None) -> None:
    agent.forget_session(session)


REQUESTS: dict[str, Callable[..., Any]] = {
    "ping": op_ping,
    "create": op_create,
    "create_task": op_create_task,
    "pids": op_pids,
    "task_stats": op_task_stats,
    "task_kill": op_task_kill,
    "start": op_start,
    "kill": op_kill,
    "resize_pty": op_resize_pty,
    "close_io": op_close_io,
    "status": op_status,
    "force_exit": op_force_exit,
    "delete": op_delete,
    "list": op_list,
    "stats": op_stats,
    "attach": op_attach,
    "logs": op_logs,
    "resync": op_resync,
}

NOTIFICATIONS: dict[str, Callable[..., None]] = {
    "ack": note_ack,
    "stdin": note_stdin,
    "bye": note_bye,
}
