"""Exit status conventions, on every backend."""

from __future__ import annotations

import os
import signal

import pytest

from common import Stdio
from tests.support.io import FifoReader

from .helpers import sh


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_exit_codes(backend, code):
    made = backend.create(sh(f"exit {code}"))
    made.start()
    assert made.wait(timeout=20).exit_status == code


@pytest.mark.parametrize(("signum", "expected"), [(signal.SIGKILL, 137), (signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_death_by_signal_is_128_plus_n(backend, tmp_path, signum, expected):
    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(sh("echo ready; exec sleep 1000"), Stdio(stdout=out.path))
    made.start()
    out.read_until(b"ready")
    made.kill(signum)
    assert made.wait(timeout=20).exit_status == expected


def test_a_trap_handler_chooses_its_own_code(backend, tmp_path):
    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(sh("trap 'kill $!; exit 7' TERM; sleep 1000 & echo ready; wait"), Stdio(stdout=out.path))
    made.start()
    out.read_until(b"ready")
    made.kill(signal.SIGTERM)
    assert made.wait(timeout=20).exit_status == 7


def test_a_process_that_shrugs_off_sigterm_still_dies_by_sigkill(backend, tmp_path):
    from common import ExecState

    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(sh("trap 'echo term-ignored' TERM; sleep 1000 & echo ready; wait; wait"),
                          Stdio(stdout=out.path))
    made.start()
    out.read_until(b"ready")
    made.kill(signal.SIGTERM)
    out.read_until(b"term-ignored")
    assert made.state is ExecState.RUNNING
    made.kill(signal.SIGKILL, all=True)
    assert made.wait(timeout=20).exit_status == 137


def test_a_process_starts_with_default_signal_dispositions_and_an_empty_mask(backend, tmp_path):
    """Whatever the spawning side inherited (the guest's init starts the agent as a background
    job, which ignores SIGINT and SIGQUIT), the process starts clean, as under runc.

    A signal ignored when a shell starts stays ignored in what it execs (POSIX), so the shell's
    child shows the start's dispositions, and the program it execs dies of SIGQUIT. (The shell
    itself is not the probe: bash and busybox sh ignore SIGQUIT on their own — so "ready" is
    echoed by the exec'd ``cat`` from stdin, and the signal goes only once ``cat`` runs.)"""
    out = FifoReader(str(tmp_path / "out"))
    stdin = str(tmp_path / "in")
    os.mkfifo(stdin)
    writer = os.open(stdin, os.O_RDWR | os.O_CLOEXEC)  # held: cat gets no EOF
    try:
        os.write(writer, b"ready\n")
        made = backend.create(sh("grep -E '^Sig(Ign|Blk):' /proc/self/status; exec cat"),
                              Stdio(stdout=out.path, stdin=stdin))
        made.start()
        probed = out.read_until(b"ready")
        made.kill(signal.SIGQUIT)
        assert made.wait(timeout=20).exit_status == 128 + signal.SIGQUIT
    finally:
        os.close(writer)
    assert probed.split() == [b"SigBlk:", b"0" * 16, b"SigIgn:", b"0" * 16, b"ready"]
