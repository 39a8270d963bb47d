"""The local terminal under ``uvmexec run -t``: its size, and raw mode that is always undone.

Promise: :class:`RawMode` puts a tty in raw mode on ``enter()`` and puts back
exactly the attributes it found on ``restore()``, which is idempotent and
called from a ``finally`` by its user, so every exit path — the command's
exit, an error, SIGTERM/SIGHUP (handled as ordinary events by the run loop,
which then unwinds) — leaves the terminal as it was. ``reenter()`` re-applies
raw mode after a SIGCONT (a shell may have reset the terminal while
``uvmexec`` was stopped). Nothing here raises for a terminal that went away
(EIO after a hang-up): there is nothing left to restore then.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import tty


def terminal_fd(*candidates: int) -> int | None:
    """The first of ``candidates`` that is a terminal, or None."""
    for fd in candidates:
        try:
            if os.isatty(fd):
                return fd
        except OSError:
            continue
    return None


def interrupt_key(fd: int) -> bytes | None:
    """The key that sends SIGINT on the terminal ``fd`` as it is now (normally Ctrl-C), or None."""
    try:
        key = termios.tcgetattr(fd)[6][termios.VINTR]
    except (termios.error, OSError):
        return None
    key = key if isinstance(key, bytes) else bytes([key])
    return None if key in (b"", b"\0", b"\xff") else key  # _POSIX_VDISABLE: none


def window_size(fd: int | None) -> tuple[int, int] | None:
    """``(rows, cols)`` of the terminal on ``fd``, or None if unknown (not a tty, or 0x0)."""
    if fd is None:
        return None
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    if rows == 0 or cols == 0:
        return None
    return rows, cols


class RawMode:
    """Raw mode on one tty fd, restored to what it was."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list | None = None

    def enter(self) -> None:
        self._saved = termios.tcgetattr(self.fd)
        self.reenter()

    def reenter(self) -> None:
        if self._saved is None:
            return
        try:
            # TCSANOW: bytes typed ahead of the command belong to it, so nothing is flushed.
            tty.setraw(self.fd, termios.TCSANOW)
        except (termios.error, OSError):
            pass

    def restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        try:
            # TCSADRAIN: the command's last output is shown under the mode it was written for.
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)
        except (termios.error, OSError):
            pass

    def __enter__(self) -> RawMode:
        self.enter()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()
