"""``create_init``: a task whose init's process exists from its creation, as containerd's Create and Start.

Real runc through the private agent (process isolation); the same task code runs in the guest.
"""

from __future__ import annotations

import io
import signal

import pytest

from common import ExecState, ProcessSpec, Stdio
from common.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from host_proxy import LocalTask
from tests.conformance.helpers import EventLog
from tests.support.io import FifoReader

from .conftest import SLEEPER
from .helpers import cgroup_dirs, mounts_at_or_under, runc_ids


def _created(task_id, bundle, cleanup, stdio=None, **options) -> LocalTask:
    return cleanup(LocalTask(task_id, bundle.path, stdio, rootfs=bundle.rootfs, create_init=True, **options))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_init_process_exists_before_start_and_is_the_one_that_runs(task_id, bundle_of, cleanup, tmp_path):
    out = FifoReader(str(tmp_path / "out"))
    init = ProcessSpec(args=["sh", "-c", "echo started as $$; exit 3"], env=["PATH=/bin"])
    log = EventLog()
    task = _created(task_id, bundle_of(init), cleanup, Stdio(stdout=out.path), on_event=log)
    pid = task.created_pid
    assert pid > 0 and _alive(pid)
    # runc's created container: the process is in its cgroup, waiting for its start.
    assert any(path.endswith(task_id) for path in cgroup_dirs(pid))
    assert task_id in runc_ids()
    # The init is still CREATED under the exec contract: pid 0, no event.
    status = task.init.status()
    assert (status.status, status.pid) == (ExecState.CREATED, 0)
    assert [(info.pid, info.exec_id) for info in task.pids()] == [(pid, task_id)]
    assert task.stats()["pids"]["current"] >= 1  # runc init's threads count too
    assert log.events == []
    task.init.start()
    assert task.init.pid == pid
    assert out.read_until(b"\n") == b"started as 1\n"
    assert task.init.wait(timeout=30).exit_status == 3
    assert [type(event).__name__ for event in log.events] == ["ExecStarted", "ExecExited"]
    assert task.created_pid == pid


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_kill_before_start_ends_the_init_with_the_processs_status(task_id, bundle_of, cleanup, signum):
    log = EventLog()
    task = _created(task_id, bundle_of(), cleanup, on_event=log)
    pid = task.created_pid
    task.kill(signum)
    final = task.init.wait(timeout=30)
    assert final.status is ExecState.EXITED
    if signum == signal.SIGKILL:
        assert final.exit_status == 128 + signal.SIGKILL
    else:  # runc's init (Go) handles SIGTERM and exits (with 2 on runc 1.1): its status, whatever it is
        assert final.exit_status != 0
    assert not _alive(pid)
    assert log.events == []  # never started: the exec contract publishes nothing
    with pytest.raises(FailedPreconditionError, match="invalid state: 'exited' for start"):
        task.init.start()
    assert task.delete().exit_status == final.exit_status
    assert task_id not in runc_ids()


def test_kill_all_before_start_and_a_bad_signal(task_id, bundle_of, cleanup):
    task = _created(task_id, bundle_of(), cleanup)
    with pytest.raises(InvalidArgumentError, match="invalid signal 0"):
        task.kill(0)
    task.kill(signal.SIGKILL, all=True)
    assert task.init.wait(timeout=30).exit_status == 128 + signal.SIGKILL


def test_kill_after_start_is_the_inits_kill(task_id, bundle_of, cleanup):
    task = _created(task_id, bundle_of(), cleanup)
    task.init.start()
    task.kill(signal.SIGKILL)  # (a pid namespace's init ignores SIGTERM without a handler)
    assert task.init.wait(timeout=30).exit_status == 128 + signal.SIGKILL
    with pytest.raises(NotFoundError):
        task.kill(signal.SIGKILL)  # exited: the exec contract's error


def test_a_task_without_create_init_keeps_the_contracts_kill(task_id, bundle_of, cleanup):
    bundle = bundle_of()
    task = cleanup(LocalTask(task_id, bundle.path, rootfs=bundle.rootfs))
    assert task.created_pid == 0
    with pytest.raises(FailedPreconditionError, match="invalid state: 'created' for kill"):
        task.kill(signal.SIGKILL)


def test_delete_before_start_kills_the_created_process(task_id, bundle_of, cleanup):
    bundle = bundle_of()
    task = _created(task_id, bundle, cleanup)
    pid = task.created_pid
    final = task.delete()
    assert (final.exit_status, final.pid) == (0, 0)
    assert not _alive(pid)
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []


def test_a_terminal_init_created_early_gets_its_pty_and_stdin_at_start(task_id, bundle_of, cleanup, tmp_path):
    init = ProcessSpec(args=["sh", "-c", "stty size; read line; echo got-$line"], env=["PATH=/bin"], terminal=True,
                       console_size=(30, 100))
    out = tmp_path / "out"
    task = _created(task_id, bundle_of(init), cleanup, Stdio(stdin=io.BytesIO(b"typed\n"), stdout=str(out)))
    task.init.start()
    assert task.init.wait(timeout=30).exit_status == 0
    assert b"30 100\r\n" in out.read_bytes() and b"got-typed" in out.read_bytes()


def test_runc_create_refusing_fails_the_creation_and_leaves_nothing(task_id, bundle_of):
    # runc refuses a hostname without a UTS namespace of the container's own, at create.
    bundle = bundle_of(SLEEPER, namespaces=("pid", "mount", "ipc", "network"))
    with pytest.raises(InvalidArgumentError, match=r"runc create: .*hostname"):
        LocalTask(task_id, bundle.path, rootfs=bundle.rootfs, create_init=True)
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []
