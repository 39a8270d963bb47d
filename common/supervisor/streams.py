"""Stdio ends and the pumps that move bytes between a process and them.

An :class:`OutputSink` takes a stream's bytes (a host file or FIFO, a file
object, or — in the agent — the wire); an :class:`InputSource` yields stdin
bytes. Sinks apply backpressure by not returning from ``write`` until they
took the bytes, and pumps read the process's pipe only after the previous
chunk was taken, so at most one chunk per stream is ever held in memory and
a slow target makes the process block on its pipe.

All classes here are used from their event loop's thread only.
"""

from __future__ import annotations

import abc
import asyncio
import errno
import logging
import os
import stat
import threading
from typing import BinaryIO

log = logging.getLogger(__name__)

#: Bytes read from a process pipe at once.
CHUNK_SIZE = 128 * 1024


async def wait_readable(fd: int) -> None:
    """Wait until ``fd`` is readable (or at EOF/error)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, _set_done, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def wait_writable(fd: int) -> None:
    """Wait until ``fd`` can take bytes (or has an error to report)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(fd, _set_done, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write every byte of ``data`` to a non-blocking (or regular-file) fd."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await wait_writable(fd)
            continue
        view = view[written:]


class OutputSink(abc.ABC):
    """Where one output stream goes. ``write`` returns once the bytes were taken."""

    chunk_size = CHUNK_SIZE

    @abc.abstractmethod
    async def write(self, data: bytes | memoryview) -> None:
        """Take all of ``data``; may wait as long as the target needs (backpressure)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Everything taken has been delivered; release the target."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Release the target now, dropping whatever is not yet delivered."""


class InputSource(abc.ABC):
    """Where stdin comes from."""

    @abc.abstractmethod
    async def read(self, max_bytes: int) -> bytes:
        """The next bytes, at most ``max_bytes``; ``b""`` at end of input."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop reading and release the source; a pending ``read`` is cancelled by its caller."""

    def end(self) -> bool:
        """``close_io`` arrived: True if the source itself ends after what it holds.

        A source fed from elsewhere (the wire) knows which bytes were already
        taken on the far side and ends after them; a local source returns
        False and the pump is stopped after its current chunk instead.
        """
        return False


class _Blocker:
    """A blocking ``open`` of a FIFO, run in a thread, that can be abandoned.

    Opening a FIFO blocks until the other end is opened. To abandon it we open
    the other end ourselves, which lets the blocked open return; the thread
    then closes what it got.
    """

    def __init__(self, path: str, flags: int) -> None:
        self.path = path
        self.flags = flags
        self.abandoned = False
        self._lock = threading.Lock()

    def open(self) -> int:
        fd = os.open(self.path, self.flags | os.O_CLOEXEC)
        with self._lock:
            if self.abandoned:
                os.close(fd)
                raise OSError(errno.ECANCELED, "open abandoned")
        return fd

    def abandon(self) -> None:
        with self._lock:
            self.abandoned = True
        other_end = os.O_RDONLY if self.flags & (os.O_WRONLY | os.O_RDWR) else os.O_WRONLY
        try:
            fd = os.open(self.path, other_end | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # nobody waits (ENXIO) or the FIFO is gone: the thread is not blocked here
        os.close(fd)


async def open_fifo(path: str, flags: int, cancelled: list[_Blocker]) -> int:
    """Open a FIFO end without blocking the loop; waits (in a thread) for the peer if needed."""
    try:
        return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno != errno.ENXIO:
            raise
    blocker = _Blocker(path, flags)
    cancelled.append(blocker)
    try:
        fd = await asyncio.get_running_loop().run_in_executor(None, blocker.open)
    except asyncio.CancelledError:
        blocker.abandon()
        raise
    finally:
        cancelled.remove(blocker)
    os.set_blocking(fd, False)
    return fd


def open_output_path(path: str) -> tuple[int | None, bool]:
    """Open an output path now if that cannot block: ``(fd, False)``; a FIFO gives ``(None, True)``.

    A regular file (or a missing path, which is created) is opened for append,
    never truncated. Anything else that opens at once (a tty, a character
    device) gets a non-blocking fd of its own, written when it can take bytes.
    Raises ``OSError``; callers add the path.
    """
    try:
        if stat.S_ISFIFO(os.stat(path).st_mode):
            return None, True
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.set_blocking(fd, False)  # our own open file description: nobody else is affected
    return fd, False


class _DeferredClose:
    """An fd that is closed only once no coroutine waits on it.

    A read or write waiting for readiness is cancelled by its caller, and the
    cancellation runs (its ``remove_reader``/``remove_writer``) a loop step
    later. Closing the fd at once would let a new open reuse the number in
    between, and the late removal would then unregister *that* fd, whose
    reads would never be polled again. So ``close`` only marks the fd while a
    wait is in flight, and the last waiter closes it.
    """

    def __init__(self) -> None:
        self.fd: int | None = None
        self._users = 0
        self._closing = False

    def enter(self) -> None:
        self._users += 1

    def leave(self) -> None:
        self._users -= 1
        if self._closing and self._users == 0:
            self._close_now()

    def close(self) -> None:
        self._closing = True
        if self._users == 0:
            self._close_now()

    @property
    def closing(self) -> bool:
        return self._closing

    def _close_now(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class PathSink(OutputSink):
    """A host path: a regular file (opened at creation) or a FIFO (opened when first needed)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = _DeferredClose()
        self._file.fd, self._is_fifo = open_output_path(path)
        self._pending_opens: list[_Blocker] = []

    async def write(self, data: bytes | memoryview) -> None:
        self._file.enter()
        try:
            if self._file.fd is None:
                fd = await open_fifo(self.path, os.O_WRONLY, self._pending_opens)
                if self._file.closing:
                    os.close(fd)
                    raise OSError(errno.EBADF, "output closed")
                self._file.fd = fd
            await write_all(self._file.fd, data)
        finally:
            self._file.leave()

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        for blocker in list(self._pending_opens):
            blocker.abandon()
        self._file.close()


class FileObjectSink(OutputSink):
    """A caller's binary file object, written from a worker thread (it may block)."""

    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self._lock = threading.Lock()

    def _write(self, data: bytes | memoryview) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                written = self.target.write(view)
                if written is None:
                    raise BlockingIOError(errno.EAGAIN, "output file object is non-blocking and full")
                view = view[written:]

    async def write(self, data: bytes | memoryview) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._write, bytes(data))

    async def close(self) -> None:
        flush = getattr(self.target, "flush", None)
        if flush is not None:
            await asyncio.get_running_loop().run_in_executor(None, flush)

    def abort(self) -> None:
        pass  # the caller owns the object; nothing of ours to release


class PathSource(InputSource):
    """Stdin from a host path: a regular file, or anything that may block (a FIFO, a tty).

    A FIFO is opened when first read (opening it waits for a writer); other
    non-regular files are opened at once, non-blocking, and read when readable.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = _DeferredClose()
        mode = os.stat(path).st_mode
        self._is_fifo = stat.S_ISFIFO(mode)
        self._pollable = not stat.S_ISREG(mode)
        if not self._is_fifo:
            self._file.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | (os.O_NONBLOCK if self._pollable else 0))
        self._pending_opens: list[_Blocker] = []

    async def read(self, max_bytes: int) -> bytes:
        self._file.enter()
        try:
            if self._file.fd is None:
                fd = await open_fifo(self.path, os.O_RDONLY, self._pending_opens)
                if self._file.closing:
                    os.close(fd)
                    return b""
                self._file.fd = fd
            if not self._pollable:
                return os.read(self._file.fd, max_bytes)
            while True:
                # Poll first: a FIFO reads as EOF until a writer appears.
                await wait_readable(self._file.fd)
                if self._file.closing:
                    return b""
                try:
                    return os.read(self._file.fd, max_bytes)
                except BlockingIOError:
                    continue
                except OSError as error:
                    if error.errno == errno.EIO:  # a tty whose session went away
                        return b""
                    raise
        finally:
            self._file.leave()

    def close(self) -> None:
        for blocker in list(self._pending_opens):
            blocker.abandon()
        self._file.close()


class FileObjectSource(InputSource):
    """Stdin from a caller's binary file object, read in a worker thread (it may block)."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source
        reader = getattr(source, "read1", None)
        self._read = reader if callable(reader) else source.read

    async def read(self, max_bytes: int) -> bytes:
        data = await asyncio.get_running_loop().run_in_executor(None, self._read, max_bytes)
        return bytes(data or b"")

    def close(self) -> None:
        pass  # the caller owns the object


class DrainSignal:
    """Set once the drain deadline after a process's exit has passed."""

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for waiter in self._waiters:
            _set_done(waiter)
        self._waiters.clear()

    async def wait_readable_unless_set(self, fd: int) -> None:
        """Wait until ``fd`` is readable or this signal is set, whichever comes first."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _set_done, ready)
        self._waiters.append(ready)
        try:
            await ready
        finally:
            loop.remove_reader(fd)
            if ready in self._waiters:
                self._waiters.remove(ready)


class NullSink(OutputSink):
    """Discards everything (an output with no target that must still be read, e.g. a pty)."""

    async def write(self, data: bytes | memoryview) -> None:
        return None

    async def close(self) -> None:
        return None

    def abort(self) -> None:
        return None


async def pump_output(fd: int, sink: OutputSink, drain: DrainSignal, label: str) -> bool:
    """Copy a process pipe (or pty master) into ``sink`` until EOF.

    Once ``drain`` is set, stop waiting for more bytes: take what the pipe
    already holds and return. Returns True if EOF was reached, False if the
    drain deadline cut the stream short. A sink that fails (a FIFO whose
    reader left) is logged once and the rest is discarded, so the process
    never blocks on a pipe nobody empties. Does not close ``fd``.
    """
    chunk_size = sink.chunk_size
    while True:
        try:
            data = os.read(fd, chunk_size)
        except BlockingIOError:
            if drain.is_set():
                return False
            await drain.wait_readable_unless_set(fd)
            continue
        except OSError as error:
            if error.errno == errno.EIO:  # pty master after the last slave fd closed
                return True
            raise
        if not data:
            return True
        try:
            await sink.write(data)
        except OSError as error:
            log.warning("%s: output target failed (%s); discarding the rest", label, error)
            sink.abort()
            sink = NullSink()


async def read_unless_stopped(source: InputSource, max_bytes: int, stop: asyncio.Event) -> bytes | None:
    """The source's next bytes, or None if ``stop`` was set first (a read already done is kept)."""
    reading = asyncio.ensure_future(source.read(max_bytes))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # The caller itself was cancelled: a read left pending would keep polling the
        # source's fd after the caller closed the source.
        reading.cancel()
        raise
    finally:
        stopping.cancel()
    if not reading.done():
        reading.cancel()
        return None
    return reading.result()


async def pump_input(source: InputSource, fd: int, stop: asyncio.Event, *, eof_bytes: bytes | None = None) -> None:
    """Copy ``source`` into the process's stdin until the source ends or ``stop`` is set.

    Bytes already read from the source are always delivered before stopping.
    For a pipe the caller closes ``fd`` afterwards (EOF); for a pty,
    ``eof_bytes`` (the terminal's EOF character) is written once instead.
    A process that closed its stdin ends the pump quietly.
    """
    try:
        while not stop.is_set():
            data = await read_unless_stopped(source, CHUNK_SIZE, stop)
            if not data:
                break
            await write_all(fd, data)
        if eof_bytes:
            await write_all(fd, eof_bytes)
    except (BrokenPipeError, ConnectionResetError):
        pass
    except OSError as error:
        if error.errno != errno.EIO:
            log.warning("stdin pump stopped: %s", error)
