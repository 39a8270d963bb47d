"""Every row of the contract's rules table (common/rules.py, CONTRACT.md), on every backend."""

from __future__ import annotations

import datetime
import signal
import threading

import pytest

from common import ExecState, ProcessSpec, Stdio
from common.errors import (
    DeadlineExceededError,
    ExecError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
)
from tests.support.io import FifoReader

from .helpers import sh


def _started_sleeper(backend, tmp_path, script: str = "echo ready; sleep 1000 & wait"):
    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(sh(script), Stdio(stdout=out.path))
    made.start()
    out.read_until(b"ready")
    return made, out


# -- id, pid, state, status ---------------------------------------------------


def test_id_pid_state_and_status_through_the_lifecycle(backend, tmp_path, held_fifo):
    out = FifoReader(str(tmp_path / "out"))
    task_id, exec_id = backend.new_ids()
    made = backend.create(sh("echo ready; read line; exit 5"), Stdio(stdin=held_fifo, stdout=out.path),
                          task_id=task_id, exec_id=exec_id)
    assert made.id == exec_id
    assert made.pid == 0
    assert made.state is ExecState.CREATED
    created = made.status()
    assert (created.id, created.exec_id, created.pid, created.status) == (task_id, exec_id, 0, ExecState.CREATED)
    assert created.exit_status == 255 and created.exited_at is None

    made.start()
    out.read_until(b"ready")
    assert made.pid > 0
    assert made.state is ExecState.RUNNING
    running = made.status()
    assert running.status is ExecState.RUNNING
    assert running.pid == made.pid
    assert running.exit_status == 255 and running.exited_at is None

    pid = made.pid
    made.close_io()
    final = made.wait(timeout=20)
    assert final.status is ExecState.EXITED
    assert final.exit_status == 5
    assert made.pid == pid, "pid is kept after exit"
    assert made.state is ExecState.EXITED
    assert isinstance(final.exited_at, datetime.datetime)
    assert final.exited_at.utcoffset() == datetime.timedelta(0)
    assert made.status() == final


def test_status_reports_paths_terminal_and_bundle(backend, tmp_path):
    stdout_path = tmp_path / "out.log"
    made = backend.create(ProcessSpec(args=["true"]), Stdio(stdout=stdout_path, stderr=str(tmp_path / "err.log")))
    status = made.status()
    assert status.stdout == str(stdout_path)
    assert status.stderr == str(tmp_path / "err.log")
    assert status.stdin == ""
    assert status.terminal is False
    assert status.bundle == ""


# -- start -------------------------------------------------------------------


def test_start_twice_is_invalid_state(backend):
    made = backend.create(ProcessSpec(args=["true"]))
    made.start()
    tid, eid = made.status().id, made.id
    with pytest.raises(FailedPreconditionError) as raised:
        made.start()
    assert str(raised.value) in {
        f"exec: '{eid}' in task: '{tid}' is in invalid state: 'running' for start",
        f"exec: '{eid}' in task: '{tid}' is in invalid state: 'exited' for start",
    }
    made.wait(timeout=20)
    with pytest.raises(FailedPreconditionError, match=r"is in invalid state: 'exited' for start$"):
        made.start()


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (ProcessSpec(args=["/nonexistent/program"]), "/nonexistent/program"),
        (ProcessSpec(args=["no-such-command-uvmexec"]), "no-such-command-uvmexec"),
        (ProcessSpec(args=["true"], cwd="/nonexistent-dir"), "/nonexistent-dir"),
        (ProcessSpec(args=["true"], env=["PATH=/nonexistent"]), "true"),
    ],
    ids=["missing-path", "missing-in-PATH", "bad-cwd", "spec-PATH-is-used"],
)
def test_failed_start_names_the_cause_and_exits_with_1(backend, spec, named):
    events: list[object] = []
    made = backend.create(spec, on_event=events.append)
    released = threading.Event()
    waited: list[object] = []

    def waiter() -> None:
        waited.append(made.wait(timeout=20))
        released.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    with pytest.raises(ExecError) as raised:
        made.start()
    assert named in str(raised.value)
    assert released.wait(20), "a failed start releases waiters"
    thread.join(20)
    final = waited[0]
    assert final.status is ExecState.EXITED and final.exit_status == 1  # type: ignore[attr-defined]
    assert final.exited_at is not None  # type: ignore[attr-defined]
    assert made.pid == 0
    assert made.state is ExecState.EXITED
    made.delete()
    assert events == [], "a failed start publishes no events"


@pytest.mark.not_in_container(
    "runc enters cwd before it drops to the user (runc 1.1 finalizeNamespace tries chdir as root "
    "first), so in a container a user may start in a cwd it could not enter itself")
def test_failed_start_as_a_user_who_cannot_enter_cwd(backend):
    spec = ProcessSpec(args=["true"], cwd="/root", user=_nobody())
    made = backend.create(spec)
    with pytest.raises(ExecError, match="/root"):
        made.start()
    assert made.status().exit_status == 1


def _nobody():
    from common import User

    return User(uid=65534, gid=65534)


# -- kill --------------------------------------------------------------------


def test_kill_on_created_is_invalid_state(backend):
    made = backend.create(ProcessSpec(args=["true"]))
    tid, eid = made.status().id, made.id
    with pytest.raises(FailedPreconditionError) as raised:
        made.kill(signal.SIGKILL)
    assert str(raised.value) == f"exec: '{eid}' in task: '{tid}' is in invalid state: 'created' for kill"


def test_kill_on_exited_is_not_found(backend):
    made = backend.run(["true"])
    made.wait(timeout=20)
    tid, eid = made.status().id, made.id
    with pytest.raises(NotFoundError) as raised:
        made.kill(signal.SIGKILL)
    assert str(raised.value) == f"exec: '{eid}' in task: '{tid}' not found"


@pytest.mark.parametrize("bad_signal", [0, -1, 65, 1000])
def test_kill_with_unknown_signal_is_invalid_argument(backend, tmp_path, bad_signal):
    made, _ = _started_sleeper(backend, tmp_path)
    with pytest.raises(InvalidArgumentError):
        made.kill(bad_signal)
    assert made.state is ExecState.RUNNING
    made.kill(signal.SIGKILL, all=True)
    assert made.wait(timeout=20).exit_status == 137


def test_kill_state_is_checked_before_the_signal(backend):
    made = backend.create(ProcessSpec(args=["true"]))
    with pytest.raises(FailedPreconditionError):
        made.kill(0)


def test_kill_all_signals_the_whole_process_group(backend, tmp_path):
    made, out = _started_sleeper(backend, tmp_path, "sleep 1000 & echo $!; sleep 1000 & echo $!; echo ready; wait")
    grandchildren = out.read_until(b"ready").split()[:2]
    made.kill(signal.SIGTERM, all=True)
    assert made.wait(timeout=20).exit_status == 143
    assert not _alive(backend, grandchildren), "grandchildren died with their group"


def test_kill_without_all_signals_only_the_process(backend, tmp_path):
    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(sh("sleep 1000 & echo $!; echo ready; wait"), Stdio(stdout=out.path), drain_timeout=0.2)
    made.start()
    grandchild = out.read_until(b"ready").split()[0].decode()
    made.kill(signal.SIGKILL)
    assert made.wait(timeout=20).exit_status == 137
    assert _alive(backend, [grandchild.encode()]), "the grandchild outlived a kill without all"
    backend.run(["kill", "-9", grandchild]).wait(timeout=20)


def _alive(backend, pids: list[bytes]) -> bool:
    """Whether any of ``pids`` runs on the exec's side (zombies awaiting their reaper count as dead)."""
    script = 'for p in "$@"; do s=$(cut -d" " -f3 /proc/$p/stat 2>/dev/null); [ -n "$s" ] && [ "$s" != Z ] && exit 0; done; exit 1'
    probe = backend.create(ProcessSpec(args=["sh", "-c", script, "sh", *[pid.decode() for pid in pids]]))
    probe.start()
    return probe.wait(timeout=20).exit_status == 0


def test_kill_racing_a_natural_exit_is_success_or_not_found(backend):
    for _ in range(30):
        made = backend.run(["true"])
        try:
            made.kill(signal.SIGTERM)
        except NotFoundError:
            pass
        assert made.wait(timeout=20).exit_status in (0, 143)


# -- resize_pty --------------------------------------------------------------


def test_resize_on_a_non_tty_is_failed_precondition(backend):
    made = backend.create(ProcessSpec(args=["true"]))
    tid, eid = made.status().id, made.id
    for step in ("created", "exited"):
        with pytest.raises(FailedPreconditionError) as raised:
            made.resize_pty(80, 24)
        assert str(raised.value) == f"exec: '{eid}' in task: '{tid}' is not a tty", step
        if step == "created":
            made.start()
            made.wait(timeout=20)


def test_resize_on_a_tty_that_is_not_running_is_ignored(backend):
    made = backend.create(ProcessSpec(args=["true"], terminal=True))
    made.resize_pty(100, 40)
    made.start()
    made.wait(timeout=20)
    made.resize_pty(120, 50)


@pytest.mark.parametrize("size", [(70000, 5), (-1, 24), ("80", None)])
def test_resize_on_a_tty_that_is_not_running_is_ignored_whatever_the_size(backend, size):
    made = backend.create(ProcessSpec(args=["true"], terminal=True))
    made.resize_pty(*size)
    made.start()
    made.wait(timeout=20)
    made.resize_pty(*size)


def test_resize_of_a_running_tty_checks_the_size(backend, tmp_path, held_fifo):
    made = backend.create(ProcessSpec(args=["cat"], terminal=True), Stdio(stdin=held_fifo))
    made.start()
    with pytest.raises(InvalidArgumentError, match="width 70000"):
        made.resize_pty(70000, 5)
    made.resize_pty(100, 30)


# -- close_io ----------------------------------------------------------------


def test_close_io_is_valid_in_any_state_and_idempotent(backend):
    made = backend.create(ProcessSpec(args=["cat"]), Stdio(stdin=_io_bytes(b"")))
    made.close_io()
    made.close_io()
    made.start()
    made.close_io()
    assert made.wait(timeout=20).exit_status == 0
    made.close_io()
    made.close_io()


def _io_bytes(data: bytes):
    import io

    return io.BytesIO(data)


# -- wait --------------------------------------------------------------------


def test_wait_timeout_is_deadline_exceeded_and_timeout_error(backend):
    made = backend.create(ProcessSpec(args=["true"]))
    with pytest.raises(DeadlineExceededError):
        made.wait(timeout=0.05)
    with pytest.raises(TimeoutError):
        made.wait(timeout=0.05)


def test_wait_before_start_blocks_through_start_and_exit(backend):
    made = backend.create(sh("exit 4"))
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(made.wait(timeout=20)))
    thread.start()
    made.start()
    thread.join(30)
    assert results and results[0].exit_status == 4  # type: ignore[attr-defined]


def test_twenty_concurrent_waiters_get_the_same_status(backend, tmp_path):
    made, _ = _started_sleeper(backend, tmp_path)
    results: list[object] = []
    lock = threading.Lock()

    def waiter() -> None:
        status = made.wait(timeout=30)
        with lock:
            results.append(status)

    threads = [threading.Thread(target=waiter) for _ in range(20)]
    for thread in threads:
        thread.start()
    made.kill(signal.SIGKILL, all=True)
    for thread in threads:
        thread.join(40)
    assert len(results) == 20
    assert all(result == results[0] for result in results)
    assert results[0].exit_status == 137  # type: ignore[attr-defined]
    assert made.wait(timeout=0) == results[0], "after exit wait returns at once"


# -- force_exit --------------------------------------------------------------


def test_force_exit_on_running_terminates_and_records_status(backend, tmp_path):
    made, _ = _started_sleeper(backend, tmp_path)
    waiter_result: list[object] = []
    thread = threading.Thread(target=lambda: waiter_result.append(made.wait(timeout=30)))
    thread.start()
    made.force_exit(99)
    thread.join(30)
    assert waiter_result and waiter_result[0].exit_status == 99  # type: ignore[attr-defined]
    final = made.status()
    assert final.status is ExecState.EXITED and final.exit_status == 99 and final.exited_at is not None
    made.force_exit(3)
    assert made.status().exit_status == 99, "force_exit on an exited exec does nothing"


def test_force_exit_on_created_and_exited(backend):
    made = backend.create(ProcessSpec(args=["true"]))
    made.force_exit(7)
    assert made.state is ExecState.EXITED
    assert made.wait(timeout=5).exit_status == 7
    made.force_exit(8)
    assert made.status().exit_status == 7
    done = backend.run(["true"])
    assert done.wait(timeout=20).exit_status == 0
    done.force_exit(9)
    assert done.status().exit_status == 0


# -- delete ------------------------------------------------------------------


def test_delete_running_is_invalid_state(backend, tmp_path):
    made, _ = _started_sleeper(backend, tmp_path)
    tid, eid = made.status().id, made.id
    with pytest.raises(FailedPreconditionError) as raised:
        made.delete()
    assert str(raised.value) == f"exec: '{eid}' in task: '{tid}' is in invalid state: 'running' for delete"


def test_delete_created_exits_with_zero_and_releases_waiters(backend):
    made = backend.create(ProcessSpec(args=["true"]))
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(made.wait(timeout=20)))
    thread.start()
    final = made.delete()
    thread.join(30)
    assert final.status is ExecState.EXITED and final.exit_status == 0
    assert results and results[0].exit_status == 0  # type: ignore[attr-defined]


def test_after_delete_everything_but_id_is_not_found(backend):
    made = backend.run(["true"])
    made.wait(timeout=20)
    final = made.delete()
    assert final.exit_status == 0
    assert made.id
    calls = [
        lambda: made.pid,
        lambda: made.state,
        made.status,
        made.start,
        lambda: made.kill(9),
        lambda: made.resize_pty(1, 1),
        made.close_io,
        lambda: made.wait(timeout=1),
        lambda: made.force_exit(1),
        made.delete,
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()


def test_an_id_may_be_reused_after_delete(backend):
    task_id, exec_id = backend.new_ids()
    first = backend.create(sh("exit 3"), task_id=task_id, exec_id=exec_id)
    first.start()
    assert first.wait(timeout=20).exit_status == 3
    first.delete()
    second = backend.create(sh("exit 4"), task_id=task_id, exec_id=exec_id)
    second.start()
    assert second.wait(timeout=20).exit_status == 4
