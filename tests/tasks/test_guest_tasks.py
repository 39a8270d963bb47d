"""Hypervisor isolation: a task run by runc inside the QEMU guest, its bundle placed by the host on the VM's
9p share (``client.create_task(..., share=...)``). Boots the session's guest (shared with the qemu backends)."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from common import ProcessSpec, Stdio, Task
from common.errors import ExecError, InvalidArgumentError
from host_proxy import AgentClient, BundleShare
from tests.support.backends import shared_guest

from .conftest import SLEEPER
from .helpers import mounts_at_or_under

pytestmark = pytest.mark.vm


class Guest:
    """A client of the guest's agent, the VM's share, and bare execs in the guest's own root."""

    def __init__(self, info: Any, client: AgentClient) -> None:
        self.info = info
        self.client = client
        self.share = BundleShare(info.share_dir, info.guest_share_dir)
        self._numbers = iter(range(10**9))

    def bare(self, *args: str) -> tuple[int, str]:
        """Run ``args`` in the guest, outside any container: (exit status, stdout+stderr)."""
        out = io.BytesIO()
        made = self.client.create_exec(f"bare-{os.getpid()}", f"bare-{next(self._numbers)}",
                                       ProcessSpec(args=list(args)), Stdio(stdout=out, stderr=out))
        made.start()
        status = made.wait(timeout=60).exit_status
        made.delete()
        return status, out.getvalue().decode()

    def leftovers(self, task_id: str) -> dict[str, Any]:
        """What of the task the guest still has: runc state, mounts, cgroups, processes; and the host: mounts
        under and the directory in the share."""
        status, listed = self.bare("runc", "list", "--format", "json")
        assert status == 0, listed
        _, mounts = self.bare("cat", "/proc/mounts")
        _, cgroups = self.bare("find", "/sys/fs/cgroup", "-name", f"*{task_id}*")
        host_dir = os.path.join(self.info.share_dir, task_id)
        return {
            "runc": [entry["id"] for entry in json.loads(listed or "null") or [] if entry["id"] == task_id],
            "guest mounts": [line for line in mounts.splitlines() if task_id in line],
            "cgroups": cgroups.split(),
            "host mounts": mounts_at_or_under(host_dir),
            "share dir": os.path.lexists(host_dir),
        }


@pytest.fixture(scope="module")
def guest(request: pytest.FixtureRequest) -> Iterator[Guest]:
    info = shared_guest(request.config)
    with AgentClient.connect(info.agent_endpoint, server_key=info.server_key, client_key=info.client_key,
                             timeout=30) as client:
        yield Guest(info, client)


@pytest.fixture
def in_guest(guest: Guest) -> Iterator[Callable[..., Task]]:
    """``in_guest(task_id, bundle, stdio=None)``: a task in the guest, deleted after the test (and then
    nothing of it may be left in the guest or on the host)."""
    made: list[Task] = []

    def create(task_id: str, bundle: Any, stdio: Stdio | None = None, **options: Any) -> Task:
        task = guest.client.create_task(task_id, bundle.path, stdio, rootfs=bundle.rootfs, share=guest.share,
                                        **options)
        made.append(task)
        return task

    yield create
    for task in made:
        with contextlib.suppress(ExecError):
            task.init.force_exit(255)
        with contextlib.suppress(ExecError):
            task.delete()
        assert guest.leftovers(task.id) == {"runc": [], "guest mounts": [], "cgroups": [], "host mounts": [],
                                            "share dir": False}


def _started(in_guest: Callable[..., Task], task_id: str, bundle: Any) -> Task:
    task = in_guest(task_id, bundle)
    task.init.start()
    return task


def _run(task: Task, exec_id: str, *args: str) -> tuple[int, str]:
    out = io.BytesIO()
    made = task.create_exec(exec_id, ProcessSpec(args=list(args)), Stdio(stdout=out, stderr=out))
    made.start()
    status = made.wait(timeout=60).exit_status
    made.delete()
    return status, out.getvalue().decode()


def test_the_container_runs_on_the_guests_kernel(guest, in_guest, task_id, bundle_of):
    task = _started(in_guest, task_id, bundle_of())
    assert _run(task, "uname", "uname", "-r") == (0, guest.info.kernel_release + "\n")
    assert guest.info.kernel_release != os.uname().release
    # And it is in the guest: the guest's runc knows it, the host's does not see its pid.
    status, listed = guest.bare("runc", "list", "-q")
    assert task_id in listed.split()


def test_the_container_sees_only_its_own_processes(in_guest, task_id, bundle_of):
    task = _started(in_guest, task_id, bundle_of())
    status, out = _run(task, "ps", "ps", "-o", "pid,args")
    assert status == 0, out
    _, *processes = out.splitlines()
    assert [line.split() for line in processes] == [["1", "sleep", "100000"],
                                                    [processes[1].split()[0], "/bin/ps", "-o", "pid,args"]]
    # pids() are the guest's pids, the init's first.
    infos = task.pids()
    assert [info.exec_id for info in infos] == [task_id] and infos[0].pid == task.init.pid


def test_a_file_written_in_the_container_is_in_the_upper_dir_on_the_host(in_guest, task_id, bundle_of):
    bundle = bundle_of()
    task = _started(in_guest, task_id, bundle)
    assert _run(task, "write", "sh", "-c", "echo from-the-guest > /written; chmod 640 /written") == (0, "")
    written = bundle.upper / "written"
    assert written.read_text() == "from-the-guest\n"
    # passthrough: owner and mode are the container's.
    assert (written.stat().st_uid, written.stat().st_mode & 0o777) == (0, 0o640)
    # The host's files are not visible: the root is the busybox tree.
    assert _run(task, "ls", "ls", "/opt/uvmexec")[0] != 0


def test_the_hostname_is_the_specs(in_guest, task_id, bundle_of):
    task = _started(in_guest, task_id, bundle_of(hostname="boxed-in-the-guest"))
    assert _run(task, "hostname", "hostname") == (0, "boxed-in-the-guest\n")


def test_the_inits_exit_kills_every_exec(in_guest, task_id, bundle_of):
    task = _started(in_guest, task_id, bundle_of())
    made = task.create_exec("sleeper", ProcessSpec(args=["sleep", "100000"]))
    made.start()
    task.init.kill(9)
    assert task.init.wait(timeout=60).exit_status == 128 + 9
    assert made.wait(timeout=60).exit_status == 128 + 9
    made.delete()


def test_delete_leaves_nothing_in_the_guest_or_on_the_host(guest, in_guest, task_id, bundle_of):
    task = _started(in_guest, task_id, bundle_of())
    during = guest.leftovers(task_id)
    assert during["runc"] == [task_id] and during["cgroups"] and during["host mounts"] and during["share dir"]
    task.init.kill(9)
    task.init.wait(timeout=60)
    task.delete()
    assert guest.leftovers(task_id) == {"runc": [], "guest mounts": [], "cgroups": [], "host mounts": [],
                                        "share dir": False}


def test_bad_bundles_are_refused_on_the_host_and_leave_nothing(guest, task_id, bundle_of, tmp_path):
    no_config = bundle_of()
    os.unlink(os.path.join(no_config.path, "config.json"))
    with pytest.raises(InvalidArgumentError, match="config.json: cannot read it"):
        guest.client.create_task(task_id, no_config.path, rootfs=no_config.rootfs, share=guest.share)
    no_root = tmp_path / "no-root"
    no_root.mkdir()
    (no_root / "config.json").write_bytes((Path(bundle_of().path) / "config.json").read_bytes())
    with pytest.raises(InvalidArgumentError, match="root filesystem .* is not a directory"):
        guest.client.create_task(task_id, str(no_root), share=guest.share)
    broken = bundle_of()
    with pytest.raises(InvalidArgumentError, match=r"rootfs\[0\] \(overlay"):
        guest.client.create_task(task_id, broken.path, share=guest.share,
                                 rootfs=[type(broken.rootfs[0])("overlay", "overlay", ["lowerdir=/no/such/dir"])])
    assert guest.leftovers(task_id) == {"runc": [], "guest mounts": [], "cgroups": [], "host mounts": [],
                                        "share dir": False}


def test_an_init_missing_from_the_rootfs_fails_the_creation(guest, in_guest, task_id, bundle_of):
    # As runc create would (containerd's Create must fail then): checked in the guest, on its rootfs.
    with pytest.raises(InvalidArgumentError, match=r"process\.args\[0\]: '/no/such/init'"):
        in_guest(task_id, bundle_of(ProcessSpec(args=["/no/such/init"])))
    assert guest.leftovers(task_id)["runc"] == []


def test_execs_of_a_guest_task_have_the_specs_env_and_cwd(in_guest, task_id, bundle_of):
    task = _started(in_guest, task_id, bundle_of(SLEEPER))
    out = io.BytesIO()
    made = task.create_exec("env", ProcessSpec(args=["sh", "-c", 'echo "$GREETING $(pwd)"'], env=["GREETING=hi"],
                                               cwd="/etc"), Stdio(stdout=out))
    made.start()
    assert made.wait(timeout=60).exit_status == 0
    assert out.getvalue() == b"hi /etc\n"
    made.delete()
