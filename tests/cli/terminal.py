"""A real terminal for ``uvmexec``: a pty whose slave is its controlling tty.

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
import struct
import subprocess
import termios
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .helpers import ROOT, UVMEXEC, cli_env, read_until, reap

COOKED = termios.ICANON | termios.ECHO


def set_size(fd: int, rows: int, cols: int) -> None:
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

    def wait_for_exit(self, timeout: float = 20.0) -> int:
        code = reap(self.process, timeout)
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


@contextmanager
def terminals(tmp_path) -> Iterator[Callable[..., Terminal]]:
    """``start(*args, rows=, cols=)`` runs ``uvmexec ARGS`` in a new terminal; all are ended on exit."""
    opened: list[Terminal] = []

    def start(*args: str, rows: int = 24, cols: int = 80) -> Terminal:
        master, slave = os.openpty()
        set_size(slave, rows, cols)
        before = termios.tcgetattr(slave)
        assert before[3] & COOKED == COOKED
        process = subprocess.Popen(UVMEXEC + list(args), stdin=slave, stdout=slave, stderr=slave,
                                   env=cli_env(tmp_path, TERM="xterm-256color"), cwd=ROOT,
                                   start_new_session=True, preexec_fn=_become_session_leader_with_ctty)
        made = Terminal(master, slave, process, before)
        opened.append(made)
        return made

    try:
        yield start
    finally:
        for made in opened:
            if made.process.poll() is None:
                made.process.kill()
            made.process.wait()
            os.close(made.master)
            os.close(made.slave)
