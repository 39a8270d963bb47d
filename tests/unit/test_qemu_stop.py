"""``QemuProcess.stop`` returns only once the process is gone, also when it is not our child (no VM needed).

A daemonized QEMU belongs to init (or a subreaper), which reaps it some time
after it exits; until then it is a zombie. The stand-in here is a ``sleep``
orphaned the same way, with no QMP socket, so stop() gets to SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
from pathlib import Path

import pytest

from vm_images import qemu
from vm_images.qemu import QemuProcess


def _orphan() -> int:
    """A process whose parent is not us: a background job of a shell that has already exited."""
    with subprocess.Popen(["sh", "-c", "sleep 300 </dev/null >/dev/null 2>&1 & echo $!"],
                          stdout=subprocess.PIPE) as shell:
        assert shell.stdout is not None
        pid = int(shell.stdout.read())
    return pid


@pytest.mark.timeout(60)
def test_stop_returns_once_a_process_that_is_not_our_child_is_reaped(tmp_path):
    pid = _orphan()
    pidfd = os.pidfd_open(pid)
    try:
        process = QemuProcess(pid, tmp_path / "no-qmp.sock")
        assert process.stop(timeout=1.5) == "SIGTERM"
        if qemu.PIDFD_REPORTS_REAPING:
            reaped = select.poll()
            reaped.register(pidfd, 0)  # only POLLHUP: the pidfd of a reaped process
            assert reaped.poll(0) == [(pidfd, select.POLLHUP)]
            assert not Path(f"/proc/{pid}").exists()
        assert process.stop() == "already exited"  # and a second stop is harmless
    finally:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(pidfd)


@pytest.mark.parametrize(("release", "reports"), [
    ("6.1.0-18-amd64", False), ("5.10.0", False), ("6.8.12", False),
    ("6.9.0", True), ("6.18.44-fc-v1147", True), ("7.0.1", True), ("unknown", False),
])
def test_which_kernels_report_reaping_on_a_pidfd(release, reports):
    assert qemu._pidfd_reports_reaping(release) is reports
