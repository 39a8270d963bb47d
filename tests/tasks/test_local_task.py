"""LocalTask: a container on this host (process isolation), run by real runc through the private agent."""

from __future__ import annotations

import io
import os
import re
import signal
import threading
import uuid

import pytest

from common import ExecExited, ExecStarted, ExecState, ProcessSpec, Rlimit, Stdio, User
from common.errors import ExecError, InvalidArgumentError, NotFoundError
from host_proxy import LocalTask
from tests.conformance.helpers import EventLog
from tests.support.io import FifoReader
from tests.support.procs import wait_exited

from .conftest import SLEEPER
from .helpers import cgroup_dirs, mounts_at_or_under, runc_ids, running

PATH = "PATH=/bin:/usr/bin:/sbin:/usr/sbin"


def _started(task_id, bundle, cleanup, stdio=None, **options) -> LocalTask:
    task = cleanup(LocalTask(task_id, bundle.path, stdio, rootfs=bundle.rootfs, **options))
    task.init.start()
    return task


def _run(task: LocalTask, exec_id: str, spec: ProcessSpec) -> tuple[int, str]:
    out = io.BytesIO()
    made = task.create_exec(exec_id, spec, Stdio(stdout=out, stderr=out))
    made.start()
    status = made.wait(timeout=30).exit_status
    made.delete()
    return status, out.getvalue().decode()


def test_the_container_sees_only_its_own_processes(task_id, bundle_of, cleanup, tmp_path):
    # The init says when it runs its own program: `runc start` returns before that, and until
    # then pid 1 is still runc's init.
    init_out = FifoReader(str(tmp_path / "init-out"))
    init = ProcessSpec(args=["sh", "-c", "echo ready; exec sleep 100000"], env=["PATH=/bin"])
    task = _started(task_id, bundle_of(init), cleanup, Stdio(stdout=init_out.path))
    init_out.read_until(b"ready")
    status, out = _run(task, "ps", ProcessSpec(args=["ps", "-o", "pid,args"]))
    assert status == 0
    _, *processes = out.splitlines()
    assert [line.split() for line in processes] == [["1", "sleep", "100000"], [processes[1].split()[0], "/bin/ps",
                                                                                "-o", "pid,args"]]
    # Pids are host pids: the init's is the one this host sees in the container's cgroup.
    assert any(path.endswith(task_id) for path in cgroup_dirs(task.init.pid))


def test_pids_name_the_exec_each_process_is(task_id, bundle_of, cleanup, tmp_path):
    task = _started(task_id, bundle_of(), cleanup)
    out = FifoReader(str(tmp_path / "out"))
    made = task.create_exec("parent", ProcessSpec(args=["sh", "-c", "sleep 1000 & echo ready; wait"]),
                            Stdio(stdout=out.path))
    made.start()
    out.read_until(b"ready")
    infos = task.pids()
    by_exec = {info.exec_id: info.pid for info in infos}
    assert by_exec[task_id] == task.init.pid
    assert by_exec["parent"] == made.pid
    assert len(infos) == 3 and [info.exec_id for info in infos].count("") == 1, infos
    task.init.kill(signal.SIGKILL)
    assert made.wait(timeout=30).exit_status == 137
    task.init.wait(timeout=30)
    assert task.pids() == []


def test_its_root_is_the_bundles_rootfs(task_id, bundle_of, cleanup, tmp_path):
    bundle = bundle_of()
    host_only = tmp_path / f"host-only-{uuid.uuid4().hex}"
    host_only.write_text("the host's\n")
    task = _started(task_id, bundle, cleanup)
    status, out = _run(task, "write", ProcessSpec(args=["sh", "-c", f"echo from-inside > /written; "
                                                                     f"test -e {host_only} && echo host-visible; "
                                                                     "cat /etc/hostname 2>/dev/null; ls /bin/busybox"]))
    assert (status, out) == (0, "/bin/busybox\n")
    assert (bundle.upper / "written").read_text() == "from-inside\n"


def test_hostname_env_cwd_and_user_come_from_the_specs(task_id, bundle_of, cleanup, tmp_path):
    init_spec = ProcessSpec(args=["sh", "-c", 'echo "$(hostname) $GREETING $(pwd) $(id -u)"; exec sleep 100000'],
                            env=[PATH, "GREETING=hello"], cwd="/tmp")
    out = FifoReader(str(tmp_path / "init.out"))
    task = _started(task_id, bundle_of(init_spec, hostname="box-7"), cleanup, Stdio(stdout=out.path))
    assert out.read_until(b"\n").decode() == "box-7 hello /tmp 0\n"
    status, exec_out = _run(task, "who", ProcessSpec(
        args=["sh", "-c", 'echo "$(id -un):$(id -gn) $(id -G) $(pwd) $FOO"; env | sort'],
        env=[PATH, "FOO=bar"], cwd="/var/www", user=User(uid=33, gid=33, additional_gids=(3,))))
    assert status == 0
    first, *env = exec_out.splitlines()
    assert first == "www-data:www-data 33 3 /var/www bar"
    assert env == sorted(["FOO=bar", PATH, "HOME=/var/www", "PWD=/var/www", "SHLVL=1"])


def test_the_init_exit_kills_every_exec(task_id, bundle_of, cleanup, tmp_path):
    task = _started(task_id, bundle_of(), cleanup)
    out = FifoReader(str(tmp_path / "out"))
    log = EventLog()
    made = task.create_exec("victim", ProcessSpec(args=["sh", "-c", "echo ready; sleep 1000"]),
                            Stdio(stdout=out.path), on_event=log)
    made.start()
    out.read_until(b"ready")
    task.init.kill(signal.SIGKILL)
    assert task.init.wait(timeout=30).exit_status == 137
    # The init's exit is reported after its execs': this one is already EXITED.
    assert made.state is ExecState.EXITED
    assert made.status().exit_status == 137
    log.wait_exited()
    assert [type(event) for event in log.events] == [ExecStarted, ExecExited]


def test_kill_all_signals_every_process_of_the_container(task_id, bundle_of, cleanup, tmp_path):
    # The init traps SIGTERM and carries on, so every process's fate is the signal's, not the init's exit.
    init_out = FifoReader(str(tmp_path / "init.out"))
    init_spec = ProcessSpec(args=["sh", "-c", "trap 'echo init-got-term' TERM; echo up; "
                                              "while :; do sleep 1000 & wait; done"], env=[PATH])
    task = _started(task_id, bundle_of(init_spec), cleanup, Stdio(stdout=init_out.path))
    init_out.read_until(b"up")
    out = FifoReader(str(tmp_path / "out"))
    made = task.create_exec("bystander", ProcessSpec(args=["sh", "-c", "sleep 1000 & echo ready; wait"]),
                            Stdio(stdout=out.path), drain_timeout=0.5)
    made.start()
    out.read_until(b"ready")
    pids = [info.pid for info in task.pids()]
    assert len(pids) == 4, pids  # the init, its sleep, the exec, its sleep
    task.init.kill(signal.SIGTERM, all=True)
    assert made.wait(timeout=30).exit_status == 143
    init_out.read_until(b"init-got-term")
    wait_exited([pid for pid in pids if pid != task.init.pid])  # every process but the trapping init
    assert running(pids) == [task.init.pid]
    task.init.kill(signal.SIGKILL, all=True)
    assert task.init.wait(timeout=30).exit_status == 137


def test_a_terminal_exec_resizes(task_id, bundle_of, cleanup, tmp_path):
    task = _started(task_id, bundle_of(), cleanup)
    out = FifoReader(str(tmp_path / "out"))
    script = "trap 'stty size; exit 0' WINCH; stty size; tty; sleep 1000 & wait"
    made = task.create_exec("tty", ProcessSpec(args=["sh", "-c", script], terminal=True, console_size=(24, 80)),
                            Stdio(stdout=out.path))
    made.start()
    assert re.match(rb"24 80\r\n/dev/pts/\d+\r\n", out.read_until(b"/dev/pts/"))
    made.resize_pty(132, 43)
    assert made.wait(timeout=30).exit_status == 0
    assert b"43 132" in out.read_to_eof()


def test_a_terminal_init_with_stdin(task_id, bundle_of, cleanup, tmp_path):
    init_spec = ProcessSpec(args=["sh", "-c", "stty size; read line; echo got-$line"], env=[PATH], terminal=True,
                            console_size=(30, 100))
    out = tmp_path / "out"
    task = _started(task_id, bundle_of(init_spec), cleanup, Stdio(stdin=io.BytesIO(b"typed\n"), stdout=str(out)))
    assert task.init.status().terminal
    assert task.init.wait(timeout=30).exit_status == 0
    # The terminal echoes what was typed, maybe before stty prints: look for each, not for an order.
    assert b"30 100\r\n" in out.read_bytes() and b"got-typed" in out.read_bytes()


def test_delete_leaves_no_mount_cgroup_runc_state_or_process(task_id, bundle_of, cleanup, tmp_path):
    bundle = bundle_of()
    log = EventLog()
    task = _started(task_id, bundle, cleanup, on_event=log)
    init_pid = task.init.pid
    made = task.create_exec("bg", ProcessSpec(args=["sh", "-c", "sleep 1000 & sleep 1000"]))
    made.start()
    pids = [info.pid for info in task.pids()]
    cgroups = cgroup_dirs(init_pid)
    assert task_id in runc_ids() and mounts_at_or_under(bundle.path) and cgroups
    task.init.kill(signal.SIGKILL)
    task.init.wait(timeout=30)
    final = task.delete()
    assert (final.exit_status, final.pid, final.status) == (137, init_pid, ExecState.EXITED)
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []
    assert [path for path in cgroups if os.path.exists(path)] == []
    assert running(pids) == []
    log.wait_exited()
    assert log.events == [ExecStarted(task_id, init_pid), ExecExited(task_id, init_pid, 137, final.exited_at)]
    for call in (made.status, task.init.status, task.pids, task.delete):
        with pytest.raises(NotFoundError):
            call()
    # The id is free again.
    again = _started(task_id, bundle_of(), cleanup)
    assert again.init.state is ExecState.RUNNING


def test_a_task_never_started_deletes_cleanly(task_id, bundle_of, cleanup):
    bundle = bundle_of()
    task = cleanup(LocalTask(task_id, bundle.path, rootfs=bundle.rootfs))
    final = task.delete()
    assert (final.exit_status, final.pid) == (0, 0)
    assert mounts_at_or_under(bundle.path) == []


# -- bad input: a clear error, and nothing left behind ----------------------------------------------


def _broken_bundle(bundle_of, fault: str):
    bundle = bundle_of()
    rootfs = bundle.rootfs
    if fault == "no-config":
        os.unlink(os.path.join(bundle.path, "config.json"))
    elif fault == "not-oci":
        with open(os.path.join(bundle.path, "config.json"), "w") as config:
            config.write('{"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": "sh"}}')
    elif fault == "no-rootfs":
        os.rmdir(os.path.join(bundle.path, "rootfs"))
        rootfs = []
    elif fault == "bad-mount":
        rootfs = [type(mount)("overlay", "overlay", ["lowerdir=/nonexistent-lower", *mount.options[1:]])
                  for mount in rootfs]
    return bundle, rootfs


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("no-config", "config.json: cannot read it: No such file or directory"),
        ("not-oci", "config.json: process.args: must be a list"),
        ("no-rootfs", "root filesystem"),
        ("bad-mount", "rootfs[0] (overlay of 'overlay' on"),
    ],
)
def test_a_bundle_that_cannot_make_a_task(task_id, bundle_of, fault, message):
    bundle, rootfs = _broken_bundle(bundle_of, fault)
    with pytest.raises(InvalidArgumentError) as raised:
        LocalTask(task_id, bundle.path, rootfs=rootfs)
    assert message in str(raised.value)
    assert mounts_at_or_under(bundle.path) == []
    assert task_id not in runc_ids()
    # Nothing holds the id: a good bundle takes it.
    good = bundle_of()
    LocalTask(task_id, good.path, rootfs=good.rootfs).delete()


def test_an_init_program_not_in_the_root_filesystem_fails_creation_as_runc_create_would(task_id, bundle_of):
    # containerd expects its Create to fail then (TestRegressionIssue6429), before any start.
    bundle = bundle_of(ProcessSpec(args=["/bin/no-such-init"]))
    with pytest.raises(InvalidArgumentError, match=r"process\.args\[0\]: '/bin/no-such-init'"):
        LocalTask(task_id, bundle.path, rootfs=bundle.rootfs)
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []


@pytest.mark.parametrize(
    ("init", "options", "message"),
    [
        # runc itself refuses: a hostname needs a UTS namespace of the container's own.
        (SLEEPER, {"namespaces": ("pid", "mount", "ipc", "network")}, "hostname"),
    ],
    ids=["runc-refuses"],
)
def test_an_init_that_cannot_start_fails_like_any_start(task_id, bundle_of, cleanup, init, options, message):
    bundle = bundle_of(init, **options)
    log = EventLog()
    task = cleanup(LocalTask(task_id, bundle.path, rootfs=bundle.rootfs, on_event=log))
    with pytest.raises(ExecError) as raised:
        task.init.start()
    assert message in str(raised.value)
    final = task.init.status()
    assert (final.status, final.exit_status, final.pid) == (ExecState.EXITED, 1, 0)
    assert task_id not in runc_ids()
    assert task.delete().exit_status == 1
    assert mounts_at_or_under(bundle.path) == []
    assert log.events == []


def test_rlimits_and_umask_of_an_exec(task_id, bundle_of, cleanup):
    # NOFILE with soft == hard: runc 1.1.5 sets a lower soft NOFILE racily (see the conformance
    # suite's not_in_container marks); every other limit is set before the process runs.
    task = _started(task_id, bundle_of(), cleanup)
    status, out = _run(task, "limits", ProcessSpec(
        args=["sh", "-c", "ulimit -Ss; ulimit -Hs; ulimit -Sn; ulimit -Hn; umask"],
        rlimits=[Rlimit("RLIMIT_STACK", 4096 * 1024, 16384 * 1024), Rlimit("RLIMIT_NOFILE", 300, 300)],
        user=User(umask=0o027)))
    assert (status, out.split()) == (0, ["4096", "16384", "300", "300", "0027"])


def test_instant_exits_are_never_lost(task_id, bundle_of, cleanup):
    """A process that is gone before runc returns is still the supervisor's to reap: it is watched in
    the loop step runc's exit made it known, before the agent's orphan sweep can run."""
    task = _started(task_id, bundle_of(), cleanup)
    made = [task.create_exec(f"quick-{index}", ProcessSpec(args=["sh", "-c", f"exit {index % 7}"]))
            for index in range(24)]
    threads = [threading.Thread(target=each.start) for each in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [each.wait(timeout=60).exit_status for each in made] == [index % 7 for index in range(24)]
