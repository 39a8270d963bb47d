"""``uvmexec run -t`` in a real terminal (see :mod:`tests.cli.terminal`)."""

from __future__ import annotations

import os
import signal
import termios
import time

import pytest

from .helpers import cli_env, gone, run_cli
from .terminal import COOKED, set_size


@pytest.mark.timeout(60)
def test_stty_size_follows_the_outer_window(terminal):
    term = terminal("run", "-i", "-t", "--", "sh", "-c",
                    "stty size; echo READY; while read line; do stty size; done", rows=24, cols=80)
    term.expect(b"24 80\r\n")
    term.expect(b"READY")
    assert term.lflag() & COOKED == 0, "the outer terminal should be raw while the command runs"
    set_size(term.slave, 40, 132)
    # Asking again until the answer changes: uvmexec forwards the resize asynchronously.
    deadline = time.monotonic() + 20
    answers = []
    while not answers or answers[-1] != b"40 132":
        assert time.monotonic() < deadline, f"no resize seen; answers: {answers}"
        term.type(b"\r")
        answers.append(term.expect_new(rb"(\d+ \d+)\r\n").group(1))
    assert set(answers) <= {b"24 80", b"40 132"}
    term.type(b"\x04")  # ^D: the guest's tty turns it into EOF, read fails, sh exits
    assert term.wait_for_exit() == 0
    assert term.lflag() & COOKED == COOKED, "the outer terminal should be cooked again"


@pytest.mark.timeout(60)
def test_the_terminal_is_restored_after_the_command_exits(terminal):
    term = terminal("run", "-it", "--", "sh", "-c", "echo READY; read x; exit 7")
    term.expect(b"READY")
    assert term.lflag() & COOKED == 0
    term.type(b"bye\r")
    assert term.wait_for_exit() == 7
    assert termios.tcgetattr(term.slave) == term.before


@pytest.mark.timeout(60)
def test_ctrl_c_is_a_key_for_the_guest_terminal(terminal):
    term = terminal("run", "-it", "--", "sh", "-c", "echo READY; exec sleep 60")
    term.expect(b"READY")
    term.type(b"\x03")  # raw: not our SIGINT, but a byte the guest's line discipline turns into SIGINT
    assert term.wait_for_exit() == 130
    assert term.lflag() & COOKED == COOKED


@pytest.mark.timeout(60)
def test_the_terminal_is_restored_when_the_command_is_killed(terminal):
    term = terminal("run", "-it", "--", "sh", "-c", "echo PID $$ READY; exec sleep 60")
    screen = term.expect(b" READY")
    pid = int(screen.split(b"PID ")[1].split()[0])
    assert term.lflag() & COOKED == 0
    os.kill(pid, signal.SIGKILL)  # the embedded agent runs it on this host
    assert term.wait_for_exit() == 137
    assert term.lflag() & COOKED == COOKED


@pytest.mark.timeout(60)
def test_the_terminal_is_restored_when_uvmexec_is_terminated(terminal):
    term = terminal("run", "-it", "--", "sh", "-c", "echo PID $$ READY; exec sleep 60")
    screen = term.expect(b" READY")
    pid = int(screen.split(b"PID ")[1].split()[0])
    term.process.send_signal(signal.SIGTERM)  # forwarded to the command; uvmexec then unwinds
    assert term.wait_for_exit() == 143
    assert term.lflag() & COOKED == COOKED
    assert gone(pid)


@pytest.mark.timeout(60)
def test_the_pty_carries_stdout_and_stderr_and_term(tmp_path):
    result = run_cli(["run", "-t", "--", "sh", "-c", "echo out; echo err >&2; echo $TERM; test -t 1"],
                     tmp_path, env=cli_env(tmp_path, TERM="vt100"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"out\r\nerr\r\nvt100\r\n"
    assert result.stderr == b""


@pytest.mark.timeout(60)
def test_interactive_tty_needs_a_terminal(tmp_path):
    result = run_cli(["run", "-it", "--", "true"], tmp_path, stdin_data=b"")
    assert result.returncode == 125
    assert result.stderr == b"uvmexec: the input device is not a TTY (drop -t, or run from a terminal)\n"
