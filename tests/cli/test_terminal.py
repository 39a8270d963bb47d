"""``uvmexec run -t`` in a real terminal: a pty whose slave is uvmexec's controlling tty.

The test holds the master (it is the person at the keyboard and the screen)
and, for inspection, the slave: ``tcgetattr`` on it shows whether uvmexec has
the terminal raw, and ``TIOCSWINSZ`` on it resizes the window, which makes the
kernel send SIGWINCH to uvmexec (the foreground process group).
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from .helpers import ROOT, UVMEXEC, cli_env, gone, read_until, reap, run_cli

COOKED = termios.ICANON | termios.ECHO


def _set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _become_session_leader_with_ctty() -> None:
    # Between fork and exec in the child: fd 0 (the pty slave) becomes the controlling terminal.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@dataclass
class Terminal:
    master: int
    slave: int
    process: subprocess.Popen
    before: list  # the slave's attributes before uvmexec started
    screen: bytearray = field(default_factory=bytearray)

    def expect(self, needle: bytes, timeout: float = 20.0) -> bytes:
        return read_until(self.master, needle, timeout, self.screen)

    def expect_new(self, pattern: bytes, timeout: float = 20.0) -> re.Match:
        """Wait for ``pattern`` (a regex) in what arrives from now on."""
        fresh = bytearray()
        deadline = time.monotonic() + timeout
        while (found := re.search(pattern, fresh)) is None:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{pattern!r} not seen within {timeout}s; got {bytes(fresh)!r}"
            readable, _, _ = select.select([self.master], [], [], remaining)
            if readable:
                fresh += os.read(self.master, 65536)
        self.screen += fresh
        return found

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def lflag(self) -> int:
        return termios.tcgetattr(self.slave)[3]

    def wait_for_exit(self) -> int:
        code = reap(self.process)
        self._drain()
        return code

    def _drain(self) -> None:
        # Keep what the command wrote last; the master reads EIO once nothing holds the slave but us.
        os.set_blocking(self.master, False)
        try:
            while chunk := os.read(self.master, 65536):
                self.screen += chunk
        except OSError:
            pass


@pytest.fixture
def terminal(tmp_path) -> Iterator:
    opened: list[Terminal] = []

    def start(*args: str, rows: int = 24, cols: int = 80) -> Terminal:
        master, slave = os.openpty()
        _set_size(slave, rows, cols)
        before = termios.tcgetattr(slave)
        assert before[3] & COOKED == COOKED
        process = subprocess.Popen(UVMEXEC + list(args), stdin=slave, stdout=slave, stderr=slave,
                                   env=cli_env(tmp_path, TERM="xterm-256color"), cwd=ROOT,
                                   start_new_session=True, preexec_fn=_become_session_leader_with_ctty)
        made = Terminal(master, slave, process, before)
        opened.append(made)
        return made

    yield start
    for made in opened:
        if made.process.poll() is None:
            made.process.kill()
        made.process.wait()
        os.close(made.master)
        os.close(made.slave)


@pytest.mark.timeout(60)
def test_stty_size_follows_the_outer_window(terminal):
    term = terminal("run", "-i", "-t", "--", "sh", "-c",
                    "stty size; echo READY; while read line; do stty size; done", rows=24, cols=80)
    term.expect(b"24 80\r\n")
    term.expect(b"READY")
    assert term.lflag() & COOKED == 0, "the outer terminal should be raw while the command runs"
    _set_size(term.slave, 40, 132)
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
