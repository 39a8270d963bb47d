"""Waiting, with a deadline, until a file in a directory holds given bytes: inotify, never a clock."""

from __future__ import annotations

import ctypes
import os
import select
import time
from collections.abc import Callable

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_CREATE = 0x00000100

_libc = ctypes.CDLL(None, use_errno=True)


class DirectoryWatch:
    """An inotify watch on one directory: every write to a file in it wakes :meth:`wait_until`."""

    def __init__(self, directory: str) -> None:
        self.fd = _libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, os.fsencode(directory), _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE) < 0:
            error = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(error, f"inotify_add_watch {directory}")

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """True once ``condition()`` holds; False if it still does not after ``timeout`` seconds.

        The condition is checked again after every change in the directory; events queue in the
        inotify fd, so a change between a check and the wait is never missed.
        """
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if readable:
                self._drain()
        return True

    def _drain(self) -> None:
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def read_bytes(path: str) -> bytes | None:
    """The file's content, or None if it does not exist."""
    try:
        with open(path, "rb") as source:
            return source.read()
    except FileNotFoundError:
        return None
