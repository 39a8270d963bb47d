"""Creation rules and lifecycle events, on every backend."""

from __future__ import annotations

import signal
import threading

import pytest

from common import ExecExited, ExecStarted, ProcessSpec, Stdio
from common.errors import AlreadyExistsError, ExecError, InvalidArgumentError

from .helpers import EventLog, sh


def test_a_live_id_cannot_be_created_twice(backend):
    task_id, exec_id = backend.new_ids()
    backend.create(ProcessSpec(args=["true"]), task_id=task_id, exec_id=exec_id)
    with pytest.raises(AlreadyExistsError) as raised:
        backend.create(ProcessSpec(args=["true"]), task_id=task_id, exec_id=exec_id)
    assert str(raised.value) == f"exec: '{exec_id}' in task: '{task_id}' already exists"


def test_an_exited_exec_still_holds_its_id(backend):
    task_id, exec_id = backend.new_ids()
    made = backend.create(ProcessSpec(args=["true"]), task_id=task_id, exec_id=exec_id)
    made.start()
    made.wait(timeout=20)
    with pytest.raises(AlreadyExistsError):
        backend.create(ProcessSpec(args=["true"]), task_id=task_id, exec_id=exec_id)


def test_same_exec_id_in_another_task_is_fine(backend):
    task_id, exec_id = backend.new_ids()
    backend.create(ProcessSpec(args=["true"]), task_id=task_id, exec_id=exec_id)
    backend.create(ProcessSpec(args=["true"]), task_id=task_id + "-other", exec_id=exec_id)


@pytest.mark.parametrize("which", ["task", "exec"])
def test_empty_ids_are_invalid(backend, which):
    task_id, exec_id = backend.new_ids()
    ids = {"task_id": "" if which == "task" else task_id, "exec_id": "" if which == "exec" else exec_id}
    with pytest.raises(InvalidArgumentError):
        backend.create(ProcessSpec(args=["true"]), **ids)


def test_empty_args_are_invalid():
    with pytest.raises(InvalidArgumentError, match="args"):
        ProcessSpec(args=[])


def test_terminal_with_a_stderr_target_is_invalid(backend, tmp_path):
    with pytest.raises(InvalidArgumentError, match="stderr"):
        backend.create(ProcessSpec(args=["true"], terminal=True), Stdio(stderr=str(tmp_path / "err")))


def test_a_failed_creation_leaves_the_id_free(backend, tmp_path):
    task_id, exec_id = backend.new_ids()
    with pytest.raises(InvalidArgumentError):
        backend.create(ProcessSpec(args=["true"], terminal=True), Stdio(stderr=str(tmp_path / "err")),
                       task_id=task_id, exec_id=exec_id)
    backend.create(ProcessSpec(args=["true"]), task_id=task_id, exec_id=exec_id)


def test_an_unopenable_stdio_path_is_invalid_and_names_it(backend, tmp_path):
    missing_dir = tmp_path / "no-such-dir" / "out.log"
    with pytest.raises(InvalidArgumentError, match="no-such-dir"):
        backend.create(ProcessSpec(args=["true"]), Stdio(stdout=str(missing_dir)))


def test_started_then_exited_once_each(backend):
    log = EventLog()
    made = backend.create(sh("exit 6"), on_event=log)
    made.start()
    final = made.wait(timeout=20)
    log.wait_exited()
    made.delete()
    assert log.events == [
        ExecStarted(made.id, final.pid),
        ExecExited(made.id, final.pid, 6, final.exited_at),
    ]


def test_exit_event_of_a_killed_exec(backend, tmp_path):
    from tests.support.io import FifoReader

    log = EventLog()
    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(sh("echo ready; exec sleep 1000"), Stdio(stdout=out.path), on_event=log)
    made.start()
    out.read_until(b"ready")
    made.kill(signal.SIGKILL)
    final = made.wait(timeout=20)
    log.wait_exited()
    assert [type(event) for event in log.events] == [ExecStarted, ExecExited]
    assert log.events[1].exit_status == 137 == final.exit_status


def test_callbacks_may_call_status(backend):
    seen: list[object] = []
    holder: list[object] = []

    def on_event(event):
        seen.append((type(event).__name__, holder[0].status().status.value))  # type: ignore[attr-defined]
        if isinstance(event, ExecExited):
            log(event)

    log = EventLog()
    made = backend.create(ProcessSpec(args=["true"]), on_event=on_event)
    holder.append(made)
    made.start()
    made.wait(timeout=20)
    log.wait_exited()
    assert seen[-1] == ("ExecExited", "exited")
    assert seen[0][0] == "ExecStarted"


@pytest.mark.parametrize("ending", ["force_exit", "delete"])
def test_an_exec_that_never_started_publishes_nothing(backend, ending):
    log = EventLog()
    made = backend.create(ProcessSpec(args=["true"]), on_event=log)
    if ending == "force_exit":
        made.force_exit(5)
        made.delete()
    else:
        made.delete()
    # A started exec on the same backend, created after, proves delivery is flowing.
    probe_log = EventLog()
    probe = backend.create(ProcessSpec(args=["true"]), on_event=probe_log)
    probe.start()
    probe.wait(timeout=20)
    probe_log.wait_exited()
    assert log.events == []


def test_force_exit_of_a_running_exec_publishes_its_status(backend, tmp_path):
    from tests.support.io import FifoReader

    log = EventLog()
    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(sh("echo ready; exec sleep 1000"), Stdio(stdout=out.path), on_event=log)
    made.start()
    out.read_until(b"ready")
    made.force_exit(77)
    log.wait_exited()
    assert [type(event) for event in log.events] == [ExecStarted, ExecExited]
    assert log.events[1].exit_status == 77


def test_failed_start_publishes_nothing(backend):
    log = EventLog()
    made = backend.create(ProcessSpec(args=["/nonexistent"]), on_event=log)
    with pytest.raises(ExecError):
        made.start()
    probe_log = EventLog()
    probe = backend.create(ProcessSpec(args=["true"]), on_event=probe_log)
    probe.start()
    probe_log.wait_exited()
    assert log.events == []


@pytest.mark.parametrize("drain_timeout", ["2", -1, float("nan"), float("inf"), True, None, 3601])
def test_a_bad_drain_timeout_is_refused_at_creation(backend, drain_timeout):
    with pytest.raises(InvalidArgumentError, match="invalid drain_timeout"):
        backend.create(ProcessSpec(args=["true"]), drain_timeout=drain_timeout)
    backend.create(ProcessSpec(args=["true"]), drain_timeout=0).start()


def test_the_exit_is_published_before_waiters_are_released(backend, tmp_path):
    """As hcsshim publishes TaskExit before Wait returns: a shim forwarding ExecExited and
    answering Wait never answers with an exit containerd has not heard of."""
    waiter_returned = threading.Event()
    seen_in_callback: list[bool] = []

    def on_event(event: object) -> None:
        if isinstance(event, ExecExited):
            # Hold the callback a moment: a waiter released early would return meanwhile.
            seen_in_callback.append(waiter_returned.wait(0.3))

    made = backend.create(sh("exit 5"), on_event=on_event)
    waiter = threading.Thread(target=lambda: (made.wait(timeout=20), waiter_returned.set()))
    waiter.start()
    made.start()
    waiter.join(30)
    assert waiter_returned.is_set()
    assert seen_in_callback == [False]
