"""Test-side ends of stdio: a FIFO the test reads with deadlines, and helpers around it."""

from __future__ import annotations

import os
import select
import time


class FifoReader:
    """A FIFO at ``path`` that the test reads; give ``path`` as an exec's stdout or stderr.

    The read end is opened non-blocking at once, so the exec's writer open
    never waits. Reads wait on the fd with a deadline, never by sleeping.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.data = bytearray()

    def read_until(self, needle: bytes, timeout: float = 20.0) -> bytes:
        """Read until ``needle`` has been seen; return everything read so far."""
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{needle!r} not seen within {timeout}s; got {bytes(self.data)!r}")
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if readable:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    # No writer (yet, or any more): wait for one instead of spinning.
                    self._wait_for_writer(deadline)
                self.data += chunk
        return bytes(self.data)

    def _wait_for_writer(self, deadline: float) -> None:
        # An EOF'd FIFO polls readable forever; reopen to block until the next writer.
        os.close(self.fd)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        remaining = max(0.0, deadline - time.monotonic())
        select.select([self.fd], [], [], remaining)

    def read_to_eof(self, timeout: float = 20.0) -> bytes:
        """Read until the writer closes (after at least one writer came)."""
        deadline = time.monotonic() + timeout
        seen_data = bool(self.data)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no EOF within {timeout}s; got {bytes(self.data)!r}")
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(self.fd, 65536)
            if not chunk and seen_data:
                return bytes(self.data)
            if not chunk:
                self._wait_for_writer(deadline)
                continue
            seen_data = True
            self.data += chunk

    def close(self) -> None:
        os.close(self.fd)


def wait_for(condition, timeout: float = 20.0, what: str = "condition", poll=None) -> None:
    """Wait until ``condition()`` is true, blocking on ``poll(remaining)`` between checks.

    ``poll`` must block until something may have changed (an event, a select);
    there is no sleeping fallback on purpose.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{what} not reached within {timeout}s")
        if poll is None:
            raise TypeError("wait_for needs a blocking poll function")
        poll(remaining)
