"""``uvmexec run --vm`` and ``uvmexec vm up|down`` end to end, with the background VM in a private state directory."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from vm_images.qemu import PIDFD_REPORTS_REAPING

from .helpers import ROOT, UVMEXEC, cli_env, discard, read_until, reap, run_cli


@pytest.mark.vm
@pytest.mark.timeout(600)
def test_run_vm_boots_a_vm_and_runs_in_it(tmp_path):
    env = cli_env(tmp_path, UVMEXEC_VM_STATE=str(tmp_path / "vm"))
    try:
        result = run_cli(["run", "--vm", "--", "uname", "-r"], tmp_path, env=env, timeout=540)
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(rb"\d+\.\d+\.\d+-\d+-amd64\n", result.stdout), result.stdout
        assert b"VM ready in" in result.stderr  # the progress display, as plain lines off a terminal
        status = run_cli(["vm", "status", "--json"], tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["running"] is True
        listed = run_cli(["ps", "--vm"], tmp_path, env=env)
        assert (listed.returncode, listed.stdout.split()) == (
            0, [b"TASK", b"EXEC", b"PID", b"STATE", b"EXIT", b"COMMAND", b"CREATED"])
        again = run_cli(["run", "--vm", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], tmp_path, env=env)
        assert (again.returncode, again.stdout, again.stderr) == (3, b"out\n", b"err\n")
        # The guest's passwd and group, not this host's: its nobody, group and home.
        nobody = run_cli(["run", "--vm", "-u", "nobody", "--", "sh", "-c", 'id -u; id -g; echo "$HOME"'], tmp_path,
                         env=env)
        assert (nobody.returncode, nobody.stdout) == (0, b"65534\n65534\n/nonexistent\n"), nobody.stderr
        # vm down while a command runs: the wait ends at once, with 255 and one line.
        running = subprocess.Popen(UVMEXEC + ["run", "--vm", "--", "sh", "-c", "echo started; exec sleep 100"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=env, cwd=ROOT)
        try:
            assert running.stdout is not None and running.stderr is not None
            read_until(running.stdout.fileno(), b"started\n", timeout=120)
            stopped = run_cli(["vm", "down"], tmp_path, env=env, timeout=60)
            assert stopped.returncode == 0, stopped.stderr
            began = time.monotonic()
            assert reap(running, timeout=20) == 255
            assert time.monotonic() - began < 10  # not the 30 s a lost agent is waited for
            stderr = running.stderr.read().decode()
            assert stderr.count("\n") == 1, stderr
            assert stderr.startswith("uvmexec: the VM stopped while the command ran"), stderr
        finally:
            discard(running)
    finally:
        down = run_cli(["vm", "down"], tmp_path, env=env, timeout=60)
    assert down.returncode == 0, down.stderr
    assert run_cli(["vm", "status"], tmp_path, env=env).returncode == 3


@pytest.mark.vm
@pytest.mark.timeout(600)
def test_vm_down_returns_only_once_qemu_is_gone(tmp_path):
    env = cli_env(tmp_path, UVMEXEC_VM_STATE=str(tmp_path / "vm"))
    up = run_cli(["vm", "up", "--json", "--memory", "512", "--cpus", "2", "--boot-timeout", "300"], tmp_path,
                 env=env, timeout=540)
    assert up.returncode == 0, up.stderr
    pid = json.loads(up.stdout)["pid"]
    # A handle on this very process: what it says cannot be about a recycled pid.
    pidfd = os.pidfd_open(pid)
    try:
        down = run_cli(["vm", "down"], tmp_path, env=env, timeout=60)
        assert (down.returncode, down.stdout) == (0, b"stopped (quit)\n"), down.stderr
        assert _exited(pidfd), _proc_state(pid)
        if PIDFD_REPORTS_REAPING:  # a kernel that can tell: not merely exited, reaped (no zombie left)
            reaped = select.poll()
            reaped.register(pidfd, 0)  # no events asked for: only POLLHUP, a reaped process's pidfd reports it
            assert reaped.poll(0) == [(pidfd, select.POLLHUP)], _proc_state(pid)
            assert not os.path.exists(f"/proc/{pid}"), _proc_state(pid)
    finally:
        if not _exited(pidfd):  # a failure above: leave no VM behind
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)
        run_cli(["vm", "down"], tmp_path, env=env, timeout=60)


def _exited(pidfd: int) -> bool:
    exited = select.poll()
    exited.register(pidfd, select.POLLIN)
    return bool(exited.poll(0))


def _proc_state(pid: int) -> str:
    try:
        return "state: " + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _lines_start_clean(screen: bytes, prefix: bytes) -> None:
    """Every ``prefix`` line on the screen starts a line: after a newline, or after the live status
    line was erased (carriage return, erase to the end of line)."""
    at = screen.find(prefix)
    while at != -1:
        before = screen[:at]
        assert at == 0 or before.endswith((b"\n", b"\r\x1b[K")), f"written into a line: {screen[at - 60:at + 30]!r}"
        at = screen.find(prefix, at + 1)


@pytest.mark.vm
@pytest.mark.timeout(600)
def test_the_progress_line_is_live_only_on_a_terminal_and_finished_first(tmp_path, terminal):
    term = terminal("vm", "build")  # fast once the image is built (the first build takes a minute)
    assert term.wait_for_exit(timeout=540) == 0
    screen = bytes(term.screen)
    assert b"checking the guest image" in screen and b"\r\x1b[K" in screen  # it was drawn live
    _lines_start_clean(screen, b"uvmexec: ")
    _lines_start_clean(screen, b"[vm_images")
    piped = run_cli(["vm", "build"], tmp_path, timeout=540)
    assert piped.returncode == 0, piped.stderr
    assert b"\r" not in piped.stderr and b"\x1b" not in piped.stderr
    assert b"uvmexec: checking the guest image" in piped.stderr
