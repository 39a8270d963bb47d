"""Hypervisor isolation's own rules: the container runs in the shim's utility VM.

The VM is booted by the shim from the image this project builds (QEMU, TCG
here), at the first Create; containers sharing ``io.kubernetes.cri.sandbox-id``
share one shim and its one VM. (The behaviour both isolations share is tested
in test_containerd.py, in each.) Every test ends with nothing left: no QEMU,
no mount under the share, no run directory (conftest.py checks).
"""

from __future__ import annotations

import os
import platform
import signal

import pytest

from .conftest import RUNTIME, Containerd, ends_within, running_ctr
from .test_containerd import _read_line

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600),
              pytest.mark.parametrize("containerd", ["hypervisor"], indirect=True)]


def _qemu_pids(containerd: Containerd) -> list[int]:
    """The QEMUs whose command line names the private containerd's directory (the shim's VMs)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    words = cmdline.read().split(b"\0")
            except OSError:
                continue
            if words[0].endswith(b"qemu-system-x86_64") and any(
                    containerd.directory.encode() in word for word in words):
                found.append(int(entry))
    return found


def _vms_end(containerd: Containerd, timeout: float = 60) -> bool:
    """True once every VM of the shim has ended, within ``timeout``: the shim (or containerd's ``delete``
    command, after a dead shim) stops it after answering, so it may still be on its way out."""
    return all(ends_within(pid, timeout) for pid in _qemu_pids(containerd))


def _exec(containerd: Containerd, container: str, exec_id: str, *command: str) -> bytes:
    return containerd.ctr("task", "exec", "--fifo-dir", containerd.fifo_dir, "--exec-id", exec_id, container,
                          *command).stdout


def _remove(containerd: Containerd, container: str) -> None:
    containerd.ctr("task", "rm", "-f", container)
    containerd.ctr("containers", "rm", container)


def test_the_container_runs_on_the_guests_kernel_and_the_vm_goes_with_it(containerd: Containerd) -> None:
    result = containerd.ctr(*containerd.run_args("c1", "uname", "-r", extra=("--rm",)))
    assert result.stdout.strip() and result.stdout.strip().decode() != platform.release()
    assert _vms_end(containerd)  # the shim stops its VM once the container was deleted


def test_two_containers_of_one_pod_share_one_shim_and_one_vm(containerd: Containerd) -> None:
    pod = ("-d", "--annotation", "io.kubernetes.cri.sandbox-id=pod1")
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=pod))
    containerd.ctr(*containerd.run_args("c2", "sleep", "100000", extra=pod))
    assert len(_qemu_pids(containerd)) == 1
    boot_ids = [_exec(containerd, container, "b", "cat", "/proc/sys/kernel/random/boot_id")
                for container in ("c1", "c2")]
    with open("/proc/sys/kernel/random/boot_id", "rb") as host:
        assert boot_ids[0] == boot_ids[1] != host.read()
    with open(os.path.join(containerd.bundle("c1"), "address")) as first, \
            open(os.path.join(containerd.bundle("c2"), "address")) as second:
        assert first.read() == second.read()
    _remove(containerd, "c1")  # containerd runs the delete command for c1: the pod's VM stays
    assert len(_qemu_pids(containerd)) == 1
    assert _exec(containerd, "c2", "e", "echo", "ok") == b"ok\n"
    _remove(containerd, "c2")
    assert _vms_end(containerd)


def test_a_lost_guest_ends_the_container_with_255_and_its_delete_cleans_up(containerd: Containerd) -> None:
    with running_ctr(containerd, *containerd.run_args("c1", "sh", "-c", "echo ready; exec sleep 100000")) as run:
        first = _read_line(run.stdout)
        assert first == b"ready\n", run.stderr.read() if not first else first  # type: ignore[union-attr]
        (qemu,) = _qemu_pids(containerd)
        os.kill(qemu, signal.SIGKILL)
        assert run.wait(60) == 255
        assert b"" == run.stderr.read()  # type: ignore[union-attr]
    # ctr run deleted the task once it exited: the shim answered Delete with the guest gone.
    assert "c1" not in containerd.ctr("task", "ls", "-q").stdout.decode().split()
    containerd.ctr("containers", "rm", "c1")
    assert _vms_end(containerd)


def test_a_sigkilled_shim_is_cleaned_up_by_task_rm_vm_and_all(containerd: Containerd) -> None:
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=("-d",)))
    with open(os.path.join(containerd.bundle("c1"), "shim.pid")) as pid_file:
        shim = int(pid_file.read())
    assert len(_qemu_pids(containerd)) == 1
    os.kill(shim, signal.SIGKILL)
    containerd.ctr("task", "rm", "-f", "c1", check=False)  # containerd may have cleaned up already
    containerd.ctr("containers", "rm", "c1")
    assert _vms_end(containerd)


def test_a_guest_that_does_not_boot_in_time_is_refused_with_its_boot_log(containerd: Containerd) -> None:
    options = os.path.join(containerd.directory, "shim.toml")
    with open(options, "w") as options_file:
        options_file.write("boot_timeout = 1\n")
    result = containerd.ctr("run", "--rm", "--fifo-dir", containerd.fifo_dir, "--runtime", RUNTIME,
                            "--runtime-config-path", options, "--annotation", "io.uvmexec.isolation=hypervisor",
                            containerd.image, "c1", "true", check=False)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert "the utility VM was not ready within 1s" in stderr and "serial console" in stderr, stderr
    containerd.ctr("containers", "rm", "c1", check=False)  # a failed run --rm may leave the record
    assert _vms_end(containerd)
