"""Which state allows which exec operation, and the error it gets otherwise — written once.

These are the per-state MUST rules of hcsshim's ``shimExec`` interface
(``cmd/containerd-shim-runhcs-v1/exec.go``) as :class:`common.Exec` states
them. The side that runs a process (:class:`~common.supervisor.ExecCore`,
behind ``LocalExec`` and the agent) and the host's record of a process behind
an agent (``host_proxy.ProxiedExec``) both ask here before they act, so the
two cannot drift apart. Each check raises the contract's error or returns
whether there is anything to do. This module does no I/O.

======================  ==========  ================================  ==================
operation               CREATED     RUNNING                           EXITED
======================  ==========  ================================  ==================
start                   proceed     invalid state … for start         invalid state
kill(signal)            invalid     deliver (signal checked after)    not found
resize_pty (a tty)      ignored     resize (size checked)             ignored
resize_pty (no tty)     not a tty   not a tty                         not a tty
close_io                proceed     proceed                           proceed (no-op)
force_exit(status)      exit        kill, exit                        nothing
delete                  exit 0      invalid state … for delete        release
======================  ==========  ================================  ==================

After ``delete()`` every operation is ``NotFoundError`` (:func:`check_live`).

A task (a container, :class:`common.task.Task`) adds containerd's rules for the
execs inside it, with hcsshim's messages (``task_hcs.go``):
:func:`check_task_exec` (creating one needs a RUNNING init and a fresh id) and
:func:`check_task_delete` (not while the init runs).
Arguments are checked after the state, as containerd and hcsshim do, except
``force_exit``'s status, which is checked first: a bad status is a bad call
whatever the state.
"""

from __future__ import annotations

import math

from .errors import (
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    already_exists_error,
    describe,
    invalid_state_error,
    not_a_tty_error,
    not_found_error,
)
from .spec import MAX_TERMINAL_DIM
from .state import ExecState

MAX_SIGNAL = 64  # SIGRTMAX on Linux
#: How long an exited process's pipes may stay open (a background child holds them) before
#: the exit is reported anyway.
DEFAULT_DRAIN_TIMEOUT = 2.0
MAX_DRAIN_TIMEOUT = 3600.0


def check_signal(signum: object) -> int:
    if not isinstance(signum, int) or isinstance(signum, bool) or not 1 <= signum <= MAX_SIGNAL:
        raise InvalidArgumentError(f"invalid signal {describe(signum)}: must be an integer in [1, {MAX_SIGNAL}]")
    return signum


def check_exit_status(status: object) -> int:
    if not isinstance(status, int) or isinstance(status, bool) or not 0 <= status <= 255:
        raise InvalidArgumentError(f"invalid exit status {describe(status)}: must be an integer in [0, 255]")
    return status


def check_terminal_size(width: object, height: object) -> tuple[int, int]:
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TERMINAL_DIM:
            raise InvalidArgumentError(
                f"invalid terminal {name} {describe(value)}: must be an integer in [0, {MAX_TERMINAL_DIM}]"
            )
    return width, height  # type: ignore[return-value]


def check_drain_timeout(value: object) -> float:
    """A drain timeout in seconds: a real number in [0, MAX_DRAIN_TIMEOUT] (not a bool or a string)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_DRAIN_TIMEOUT
    ):
        raise InvalidArgumentError(
            f"invalid drain_timeout {describe(value)}: must be a number of seconds in [0, {MAX_DRAIN_TIMEOUT:g}]"
        )
    return float(value)


def check_live(tid: str, eid: str, deleted: bool) -> None:
    if deleted:
        raise not_found_error(tid, eid)


def check_start(tid: str, eid: str, state: ExecState) -> None:
    if state is not ExecState.CREATED:
        raise invalid_state_error(tid, eid, state, "start")


def check_kill(tid: str, eid: str, state: ExecState, signum: object) -> int:
    if state is ExecState.CREATED:
        raise invalid_state_error(tid, eid, state, "kill")
    if state is ExecState.EXITED:
        raise not_found_error(tid, eid)
    return check_signal(signum)


def check_resize(tid: str, eid: str, state: ExecState, terminal: bool, width: object, height: object) -> bool:
    """True: resize the running terminal. False: a terminal that does not run; the call is ignored,
    whatever the size."""
    if not terminal:
        raise not_a_tty_error(tid, eid)
    if state is not ExecState.RUNNING:
        return False
    check_terminal_size(width, height)
    return True


def check_force_exit(state: ExecState, status: object) -> bool:
    """True: end the exec with ``status``. False: it already exited; nothing to do."""
    check_exit_status(status)
    return state is not ExecState.EXITED


def check_delete(tid: str, eid: str, state: ExecState) -> None:
    if state is ExecState.RUNNING:
        raise invalid_state_error(tid, eid, state, "delete")


def check_task_exec(tid: str, eid: str, init_state: ExecState) -> None:
    """An exec may be created in task ``tid`` only while its init runs, and never under the init's id."""
    if eid == tid:
        raise already_exists_error(tid, eid)
    if init_state is not ExecState.RUNNING:
        raise FailedPreconditionError(f"exec: '' in task: '{tid}' must be running to create additional execs")


def check_task_delete(tid: str, init_state: ExecState) -> None:
    """A task is deleted only once its init is not running (as the init's own delete)."""
    check_delete(tid, tid, init_state)


def wait_timeout_error(tid: str, eid: str, timeout: float | None) -> DeadlineExceededError:
    return DeadlineExceededError(f"exec: '{eid}' in task: '{tid}' did not exit within {timeout}s")


def check_wait_timeout(timeout: object) -> float | None:
    """None (wait for ever) or a number of seconds >= 0; an infinite one is None."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout) or timeout < 0:
        raise InvalidArgumentError(f"invalid wait timeout {describe(timeout)}: must be None or a number of seconds >= 0")
    return None if math.isinf(timeout) else float(timeout)
