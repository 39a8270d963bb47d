"""The host's stdin feeder stays inside the agent's credit window (one layer, a fake connection)."""

from __future__ import annotations

import asyncio

from common.supervisor import InputSource
from host_proxy.remote_exec import OutStdin


class OddSizedSource(InputSource):
    """Returns whatever size it likes, as pipes and sockets do, and never ends."""

    sizes = [1, 70_000, 131_072, 5, 99_999, 131_072, 4096]

    def __init__(self) -> None:
        self.turn = 0

    async def read(self, max_bytes: int) -> bytes:
        self.turn += 1
        return b"x" * min(max_bytes, self.sizes[self.turn % len(self.sizes)])

    def close(self) -> None:
        pass


class ClosingSource(OddSizedSource):
    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


class RecordingConnection:
    window = 1024 * 1024

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []
        self.window_full = asyncio.Event()

    def send_stdin(self, handle: int, seq: int, data: bytes) -> None:
        self.sent.append((seq, len(data)))
        if sum(size for _, size in self.sent) >= self.window - 1:
            self.window_full.set()


class Owner:
    handle = 7
    label = "t/e"

    def __init__(self, conn: RecordingConnection) -> None:
        self.conn = conn


def test_stdin_never_sends_more_than_the_credit_left():
    async def scenario() -> None:
        conn = RecordingConnection()
        feeder = OutStdin(Owner(conn), OddSizedSource(), conn.window)  # type: ignore[arg-type]
        feeder.start()
        await asyncio.wait_for(conn.window_full.wait(), 10)
        await asyncio.sleep(0)  # one more turn: a feeder that overflows would send now
        assert sum(size for _, size in conn.sent) <= conn.window
        feeder.on_ack(conn.sent[0][0])  # credit for the first chunk: it may send that much more
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        unacked = sum(size for _, size in conn.sent[1:])
        assert unacked <= conn.window
        feeder.abort()

    asyncio.run(scenario())


def test_stop_after_the_exit_aborted_the_feeder_returns_what_was_sent():
    """close_io racing the exec's exit: the exit aborts the feeder (possibly before its task ever
    ran), and a stop() that comes after must still answer, not raise CancelledError."""
    async def scenario() -> None:
        conn = RecordingConnection()
        source = ClosingSource()
        feeder = OutStdin(Owner(conn), source, conn.window)  # type: ignore[arg-type]
        feeder.start()
        feeder.abort()  # the exit, before the feeder's task had a turn
        assert await asyncio.wait_for(feeder.stop(), 10) == -1
        assert conn.sent == []
        assert source.closed >= 1, "the source is released although the feeder never ran"

    asyncio.run(scenario())
