"""Stdio ends that are the wire: output goes to the host under a credit window, stdin comes from it.

Output: each chunk gets the next sequence number of its stream and stays in
the unacknowledged buffer until the host acknowledges it, so it can be
replayed after a reconnect. ``write`` waits while ``window`` bytes are
unacknowledged: the pump then stops reading the pipe and the process blocks.
That is the flow control; ZeroMQ's high-water marks are not.

A detached exec's output (``keep``) is a ring instead while nobody owns the
exec: a write that finds the window full drops the oldest unacknowledged
chunks rather than wait, so the process never blocks on output nobody reads.
Its last ``window`` bytes, read or not, stay in ``history`` for ``logs``.

Stdin: chunks arrive numbered; duplicates (replays) are dropped, a gap is
dropped too (the host resends from the last acknowledged chunk on resync).
Each chunk is acknowledged once the process's pipe took it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable

from common.supervisor import InputSource, OutputSink

log = logging.getLogger(__name__)


class WireSink(OutputSink):
    """One output stream of one exec, sent to whichever session owns the exec."""

    def __init__(self, send_chunk: Callable[[int, bytes], None], window: int, chunk_size: int,
                 unread: Callable[[], bool] | None = None) -> None:
        """``unread``, for a detached exec: True while nobody owns it (then the output is a ring)."""
        self._send_chunk = send_chunk
        self.window = window
        self.chunk_size = chunk_size
        self.last_seq = -1
        self._unacked: collections.deque[tuple[int, bytes]] = collections.deque()
        self._unacked_bytes = 0
        self._credit: asyncio.Future[None] | None = None
        self._aborted = False
        #: A replay is due: new chunks are kept (and numbered) but not sent; the replay sends them.
        self.holding = False
        self._unread = unread
        #: A detached exec's last ``window`` bytes of output, read or not: (seq, chunk), oldest first.
        self.history: collections.deque[tuple[int, bytes]] | None = collections.deque() if unread else None
        self._history_bytes = 0
        self.dropped_bytes = 0  # unread output a detached exec overwrote

    @property
    def unacked_bytes(self) -> int:
        return self._unacked_bytes

    @property
    def unacked_chunks(self) -> int:
        return len(self._unacked)

    async def write(self, data: bytes | memoryview) -> None:
        while self._unacked_bytes >= self.window and not self._aborted:
            if self._unread is not None and self._unread():
                _, oldest = self._unacked.popleft()  # nobody reads it: the ring turns
                self._unacked_bytes -= len(oldest)
                self.dropped_bytes += len(oldest)
                continue
            self._credit = asyncio.get_running_loop().create_future()
            await self._credit
        if self._aborted:
            return
        chunk = bytes(data)
        self.last_seq += 1
        self._unacked.append((self.last_seq, chunk))
        self._unacked_bytes += len(chunk)
        if self.history is not None:
            self.history.append((self.last_seq, chunk))
            self._history_bytes += len(chunk)
            while self._history_bytes > self.window:
                _, old = self.history.popleft()
                self._history_bytes -= len(old)
        if not self.holding:
            self._send_chunk(self.last_seq, chunk)

    def poke(self) -> None:
        """The exec's owner changed: a write waiting for credit looks again (it may not need to)."""
        if self._credit is not None and not self._credit.done():
            self._credit.set_result(None)

    def held(self) -> collections.deque[tuple[int, bytes]]:
        """The output ``logs`` can show: a detached exec's history, else what is unacknowledged."""
        return self.history if self.history is not None else self._unacked

    def ack(self, seq: int) -> None:
        """The host wrote every chunk up to ``seq``: free them and let the pump go on."""
        while self._unacked and self._unacked[0][0] <= seq:
            _, chunk = self._unacked.popleft()
            self._unacked_bytes -= len(chunk)
        if self._credit is not None and self._unacked_bytes < self.window:
            if not self._credit.done():
                self._credit.set_result(None)
            self._credit = None

    def replay(self, after_seq: int) -> int:
        """Send again every unacknowledged chunk numbered after ``after_seq``; the bytes sent."""
        sent = 0
        for seq, chunk in self._unacked:
            if seq > after_seq:
                self._send_chunk(seq, chunk)
                sent += len(chunk)
        return sent

    async def close(self) -> None:
        return None  # unacknowledged chunks stay for replay until the exec is deleted

    def abort(self) -> None:
        self._aborted = True
        self._unacked.clear()
        self._unacked_bytes = 0
        if self.history is not None:
            self.history.clear()
            self._history_bytes = 0
        if self._credit is not None and not self._credit.done():
            self._credit.set_result(None)


class WireSource(InputSource):
    """Stdin fed by the host's numbered chunks; ends after the chunk ``close_io`` named."""

    def __init__(self, send_ack: Callable[[int], None], window: int) -> None:
        self._send_ack = send_ack
        self.window = window
        self.last_received = -1
        self._delivered = -1
        self._queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self._queued_bytes = 0
        self._end_after: int | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._closed = False

    def feed(self, seq: int, data: bytes) -> None:
        """A chunk from the host; out-of-order or over-window chunks are dropped (logged)."""
        if self._closed or seq <= self.last_received:
            return
        if seq != self.last_received + 1:
            log.warning("stdin chunk %d arrived after %d; dropped until the host resends", seq, self.last_received)
            return
        if self._queued_bytes + len(data) > self.window:
            log.warning("stdin chunk %d exceeds the window; dropped", seq)
            return
        self.last_received = seq
        self._queue.append((seq, data))
        self._queued_bytes += len(data)
        self._wake()

    def end_after(self, seq: int) -> None:
        """End of input once every chunk up to ``seq`` was delivered (``close_io``)."""
        if self._end_after is None:
            self._end_after = seq
            self._wake()

    def end(self) -> bool:
        return self._end_after is not None

    @property
    def delivered(self) -> int:
        """The last chunk the process's pipe took (what the host may forget)."""
        return self._delivered

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _acknowledge_delivered(self) -> None:
        if self._delivered >= 0:
            self._send_ack(self._delivered)

    async def read(self, max_bytes: int) -> bytes:
        # Being asked for more means the previous chunk reached the process.
        self._acknowledge_delivered()
        while True:
            if self._closed:
                return b""
            if self._queue:
                seq, data = self._queue[0]
                if len(data) > max_bytes:
                    self._queue[0] = (seq, data[max_bytes:])
                    self._queued_bytes -= max_bytes
                    return data[:max_bytes]
                self._queue.popleft()
                self._queued_bytes -= len(data)
                self._delivered = seq
                return data
            if self._end_after is not None and self._delivered >= self._end_after:
                return b""
            self._wakeup = asyncio.get_running_loop().create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def close(self) -> None:
        if not self._closed:
            self._acknowledge_delivered()
        self._closed = True
        self._queue.clear()
        self._queued_bytes = 0
        self._wake()
