"""Exec lifecycle state, the status snapshot, and the two lifecycle events."""

from __future__ import annotations

import datetime
import enum
import os
from dataclasses import dataclass

#: exit_status reported while an exec has not exited (containerd's convention).
RUNNING_EXIT_STATUS = 255


class ExecState(enum.StrEnum):
    """Where an exec is in its life: CREATED -> RUNNING -> EXITED (or CREATED -> EXITED)."""

    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"


#: The only transitions an exec may make; anything else is hcsshim's invalid-state error.
ALLOWED_TRANSITIONS: dict[ExecState, frozenset[ExecState]] = {
    ExecState.CREATED: frozenset({ExecState.RUNNING, ExecState.EXITED}),
    ExecState.RUNNING: frozenset({ExecState.EXITED}),
    ExecState.EXITED: frozenset(),
}


@dataclass(frozen=True)
class ExecStatus:
    """A snapshot of one exec, mirroring containerd's ``task.StateResponse``.

    ``stdin``/``stdout``/``stderr`` are the host paths given at creation (``""``
    for none or for a file object). While the exec has not exited,
    ``exit_status`` is 255 and ``exited_at`` is None.
    """

    id: str
    exec_id: str
    bundle: str
    pid: int
    status: ExecState
    stdin: str
    stdout: str
    stderr: str
    terminal: bool
    exit_status: int
    exited_at: datetime.datetime | None


@dataclass(frozen=True)
class ExecStarted:
    """Published once when an exec's process has started (containerd's TaskExecStarted)."""

    exec_id: str
    pid: int


@dataclass(frozen=True)
class ExecExited:
    """Published once, after all output reached its targets (containerd's TaskExit)."""

    exec_id: str
    pid: int
    exit_status: int
    exited_at: datetime.datetime


ExecEvent = ExecStarted | ExecExited


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def exit_status_from_wait(wait_status: int) -> int:
    """Map a ``waitpid`` status to the exit status convention: code, or 128+N for signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)
