"""Tasks through the wire: AgentClient.create_task against a real agent running real runc."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
from collections.abc import Iterator

import pytest

from common import ExecState, ProcessSpec, Stdio
from common.errors import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from host_proxy import AgentClient
from tests.support.procs import zombies
from vm_images.busybox import make_bundle

from .helpers import cgroup_dirs, mounts_at_or_under, runc_ids, running

SLEEPER = ProcessSpec(args=["sh", "-c", "echo init-ready; exec sleep 1000"], env=["PATH=/bin:/usr/bin"])


@pytest.fixture
def client(ipc_agent) -> Iterator[AgentClient]:
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as connected:
        yield connected


def _task_id(tmp_path) -> str:
    return f"agent-{os.path.basename(tmp_path)}"[:64]


def test_a_container_through_the_agent_leaves_nothing_behind(client, ipc_agent, tmp_path):
    bundle = make_bundle(tmp_path / "bundle", SLEEPER, hostname="through-the-wire")
    task_id = _task_id(tmp_path)
    out = tmp_path / "init.out"
    task = client.create_task(task_id, bundle.path, Stdio(stdout=str(out)), rootfs=bundle.rootfs)
    assert (task.id, task.bundle, task.init.id) == (task_id, bundle.path, task_id)
    assert task.init.state is ExecState.CREATED and task.init.pid == 0
    assert mounts_at_or_under(os.path.join(bundle.path, "rootfs")), "the rootfs is mounted at creation"
    task.init.start()
    init_pid = task.init.pid
    assert init_pid > 0 and task.init.status().bundle == bundle.path
    cgroups = cgroup_dirs(init_pid)
    assert cgroups and all(os.path.isdir(path) for path in cgroups)
    ps_out = io.BytesIO()
    ps = task.create_exec("ps", ProcessSpec(args=["ps", "-o", "pid,args"]), Stdio(stdout=ps_out))
    ps.start()
    assert ps.wait(timeout=20).exit_status == 0
    header, *processes = ps_out.getvalue().decode().splitlines()
    assert [line.split()[1:] for line in processes] == [["sleep", "1000"], ["/bin/ps", "-o", "pid,args"]]
    assert processes[0].split()[0] == "1", "the init is pid 1 of the container's own pid namespace"
    assert [(info.pid, info.exec_id) for info in task.pids()] == [(init_pid, task_id)]
    task.init.kill(signal.SIGKILL)
    assert task.init.wait(timeout=20).exit_status == 137
    final = task.delete()
    assert final.exit_status == 137 and final.pid == init_pid
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []
    assert [path for path in cgroups if os.path.exists(path)] == []
    assert running([init_pid]) == []
    assert zombies(ipc_agent.pid) == []
    assert client.stats()["execs"] == 0
    assert out.read_bytes() == b"init-ready\n"
    for call in (task.pids, task.delete, lambda: task.create_exec("late", SLEEPER)):
        with pytest.raises(NotFoundError):
            call()
    with pytest.raises(NotFoundError):
        task.init.status()


def test_the_task_rules_hold_on_the_host_and_on_the_agent(client, tmp_path):
    bundle = make_bundle(tmp_path / "bundle", SLEEPER)
    task_id = _task_id(tmp_path)
    task = client.create_task(task_id, bundle.path, rootfs=bundle.rootfs)
    try:
        with pytest.raises(FailedPreconditionError, match=f"exec: '' in task: '{task_id}' must be running"):
            task.create_exec("early", ProcessSpec(args=["true"]))
        # The agent judges the same, for a client that does not ask the host's record first.
        early = client.create_exec(task_id, "early", ProcessSpec(args=["true"]), in_task=True)
        with pytest.raises(FailedPreconditionError, match="must be running to create additional execs"):
            early.start()
        early.delete()
        with pytest.raises(AlreadyExistsError):
            client.create_task(task_id, bundle.path)
        task.init.start()
        with pytest.raises(AlreadyExistsError, match=f"exec: '{task_id}' in task: '{task_id}' already exists"):
            task.create_exec(task_id, ProcessSpec(args=["true"]))
        task.create_exec("once", ProcessSpec(args=["true"]))
        with pytest.raises(AlreadyExistsError):
            task.create_exec("once", ProcessSpec(args=["true"]))
        with pytest.raises(FailedPreconditionError, match=f"exec: '{task_id}' in task: '{task_id}' is in invalid "
                                                          "state: 'running' for delete"):
            task.delete()
        task.init.kill(signal.SIGKILL, all=True)
        task.init.wait(timeout=20)
        with pytest.raises(FailedPreconditionError):
            task.create_exec("late", ProcessSpec(args=["true"]))
    finally:
        task.init.force_exit(255)
        task.delete()
    assert task_id not in runc_ids()


@pytest.mark.parametrize("fault", ["no-config", "no-rootfs", "bad-mount", "bad-id"])
def test_a_task_that_cannot_be_made_leaves_nothing(client, tmp_path, fault):
    bundle = make_bundle(tmp_path / "bundle", SLEEPER)
    task_id, rootfs = _task_id(tmp_path), bundle.rootfs
    if fault == "no-config":
        os.unlink(os.path.join(bundle.path, "config.json"))
        expected = "config.json: cannot read it"
    elif fault == "no-rootfs":
        os.rmdir(os.path.join(bundle.path, "rootfs"))
        expected = "rootfs[0] (overlay of 'overlay' on "
    elif fault == "bad-mount":
        rootfs = [type(mount)(mount.type, mount.source, [*mount.options, "no_such_option=1"]) for mount in rootfs]
        expected = "rootfs[0] (overlay"
    else:
        task_id = "not/a/container/id"
        expected = "a container id is made of"
    with pytest.raises(InvalidArgumentError, match=re.escape(expected)):
        client.create_task(task_id, bundle.path, rootfs=rootfs)
    assert mounts_at_or_under(bundle.path) == []
    assert client.stats()["execs"] == 0
    assert task_id not in runc_ids()


def test_an_agent_that_stops_deletes_its_containers(workdir, tmp_path):
    """SIGTERM: the agent kills what runs, then removes every container's runc state and mounts."""
    from tests.support.agent import AgentProcess

    agent = AgentProcess([f"ipc://{workdir}/stopping.sock"]).start()
    bundle = make_bundle(tmp_path / "bundle", SLEEPER)
    task_id = _task_id(tmp_path)
    try:
        with AgentClient.connect(agent.endpoints[0], timeout=10) as client:
            task = client.create_task(task_id, bundle.path, rootfs=bundle.rootfs)
            task.init.start()
            made = task.create_exec("bystander", ProcessSpec(args=["sleep", "1000"]))
            made.start()
            pids = [info.pid for info in task.pids()]
            assert len(pids) == 2 and task_id in runc_ids()
            assert agent.process is not None
            agent.process.send_signal(signal.SIGTERM)  # not agent.stop(): that kills what is left itself
            assert agent.process.wait(30) == 0
            assert running(pids) == []
            assert task_id not in runc_ids()
            assert mounts_at_or_under(bundle.path) == []
    finally:
        agent.stop()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"bundle": 7}, "bundle must be a path"),
        ({"bundle": ""}, "bundle: must not be empty"),
        ({"rootfs": "overlay"}, "rootfs must be a list of Mounts"),
        ({"rootfs": [("overlay", "overlay", [])]}, "rootfs: each entry must be a Mount"),
        ({"stdio": "out.log"}, "stdio must be a Stdio"),
        ({"drain_timeout": -1}, "invalid drain_timeout"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(client, tmp_path, arguments, message):
    bundle = make_bundle(tmp_path / "bundle", SLEEPER)
    task_id = _task_id(tmp_path)
    with pytest.raises(InvalidArgumentError, match=message):
        client.create_task(task_id, **{"bundle": bundle.path, **arguments})
    assert client.stats()["execs"] == 0
    client.create_task(task_id, bundle.path, rootfs=bundle.rootfs).delete()  # the id was not held


def test_tasks_leave_the_agent_no_fd_no_watch_and_no_zombie(client, ipc_agent, tmp_path):
    def one_task(number: int) -> None:
        bundle = make_bundle(tmp_path / f"bundle-{number}", SLEEPER)
        task = client.create_task(f"{_task_id(tmp_path)}-{number}", bundle.path, Stdio(stdout=io.BytesIO()),
                                  rootfs=bundle.rootfs)
        task.init.start()
        for spec in (ProcessSpec(args=["true"]), ProcessSpec(args=["sh", "-c", "stty size"], terminal=True),
                     ProcessSpec(args=["/no-such-program"])):
            made = task.create_exec("e", spec, Stdio(stdout=io.BytesIO()))
            with contextlib.suppress(InvalidArgumentError):
                made.start()
            made.wait(timeout=20)
            made.delete()
        task.init.kill(signal.SIGKILL)
        task.init.wait(timeout=20)
        task.delete()

    one_task(0)  # the agent's first task loads what it keeps loaded
    before = client.stats()
    for number in range(1, 4):
        one_task(number)
    after = client.stats()
    assert (after["fds"], after["watched"], after["execs"], after["running"]) == (before["fds"], 0, 0, 0)
    assert zombies(ipc_agent.pid) == []
