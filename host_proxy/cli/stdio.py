"""uvmexec's own stdin and stdout/stderr, shaped as the file objects ``Stdio`` takes.

Promise:

- :class:`FdReader` reads fd 0 as it is (pipe, tty, socket, regular file)
  without changing its flags — the open file description is shared with the
  shell — and ``cancel()`` makes a read that is blocked, or any later one,
  return EOF at once. The library reads stdin in a worker thread; without
  this, a command that exits while nobody types would leave that thread
  blocked and ``uvmexec`` could not exit. ``on_data``, if given, sees every
  chunk read (on that thread), before the library does. With ``detach_keys``
  (docker's Ctrl-P Ctrl-Q on a raw terminal) the sequence is never passed on:
  ``on_detach`` is called, and reads then return nothing until cancelled.
- :class:`FdWriter` writes every byte it is given to an fd at once (no
  buffering: a prompt shows before its newline), and when the reader of that
  fd has gone (EPIPE) it calls ``on_broken`` once and drops the rest, as a
  local program dies on SIGPIPE rather than writing into the void forever.
"""

from __future__ import annotations

import errno
import os
import select
import threading
from collections.abc import Callable


class FdReader:
    """A binary, cancellable reader of one fd (it does not own the fd)."""

    def __init__(self, fd: int, on_data: Callable[[bytes], None] | None = None, *,
                 detach_keys: bytes = b"", on_detach: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.on_data = on_data
        self.detach_keys = detach_keys
        self.on_detach = on_detach
        self.detached = False
        self._held = b""  # the start of the detach sequence, until the next read says what it was
        self._wake_read, self._wake_write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._cancelled = threading.Event()

    def read1(self, size: int = 65536) -> bytes:
        if size is None or size < 0:
            size = 65536
        while True:
            if self.detached:
                self._cancelled.wait()  # nothing more for the command; cancel() lets us go
                return b""
            data = self._read_fd(size)
            if not self.detach_keys:
                return data
            if not data:  # EOF, or cancelled: what was held back was not the sequence after all
                held, self._held = self._held, b""
                return held if not self._cancelled.is_set() else b""
            data = self._without_detach_keys(data)
            if data:
                return data
            # Nothing to pass on yet (the start of the sequence, or the sequence): read on, or wait.

    def _without_detach_keys(self, data: bytes) -> bytes:
        data, self._held = self._held + data, b""
        keys = self.detach_keys
        at = data.find(keys)
        if at >= 0:
            self.detached = True
            if self.on_detach is not None:
                self.on_detach()
            return data[:at]
        for size in range(len(keys) - 1, 0, -1):
            if data.endswith(keys[:size]):
                data, self._held = data[:-size], data[-size:]
                break
        return data

    def _read_fd(self, size: int) -> bytes:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        poller.register(self._wake_read, select.POLLIN)
        while not self._cancelled.is_set():
            try:
                events = dict(poller.poll())
            except InterruptedError:
                continue
            if self._cancelled.is_set():
                break
            if self.fd not in events:
                continue
            try:
                data = os.read(self.fd, size)
            except BlockingIOError:
                continue  # someone else (a shell sharing the fd) took the bytes first
            except OSError as error:
                if error.errno in (errno.EIO, errno.EBADF):
                    return b""  # the terminal hung up, or the fd is gone: that is EOF
                raise
            if data and self.on_data is not None:
                self.on_data(data)
            return data
        return b""

    read = read1

    def cancel(self) -> None:
        self._cancelled.set()
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass

    def close(self) -> None:
        self.cancel()
        for fd in (self._wake_read, self._wake_write):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_read = self._wake_write = -1


class FdWriter:
    """An unbuffered binary writer of one fd (it does not own the fd)."""

    def __init__(self, fd: int, on_broken: Callable[[], None] | None = None) -> None:
        self.fd = fd
        self.on_broken = on_broken
        self.broken = False
        self._lock = threading.Lock()

    def write(self, data: bytes | memoryview) -> int:
        size = len(data)
        with self._lock:
            if self.broken:
                return size
            view = memoryview(data)
            try:
                while view:
                    try:
                        written = os.write(self.fd, view)
                    except BlockingIOError:
                        # Someone left the shared fd non-blocking: wait until it takes bytes.
                        select.select([], [self.fd], [])
                        continue
                    view = view[written:]
            except BrokenPipeError:
                self.broken = True
                if self.on_broken is not None:
                    self.on_broken()
            except OSError as error:
                if error.errno != errno.EIO:
                    raise
                self.broken = True  # the terminal hung up: nobody can see the rest
        return size

    def flush(self) -> None:
        pass
