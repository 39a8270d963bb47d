"""A detached exec's output: a ring while nobody owns the exec, flow control while someone does."""

from __future__ import annotations

import asyncio

from guest_agent.wire_stdio import WireSink


def test_unowned_output_overwrites_the_oldest_and_history_keeps_the_last_window():
    owned = [False]

    async def scenario():
        sink = WireSink(lambda seq, data: None, window=300, chunk_size=100, unread=lambda: not owned[0])
        for n in range(10):
            await asyncio.wait_for(sink.write(bytes([n]) * 100), 5)  # never waits: nobody reads
        assert sink.unacked_bytes == 300 and sink.dropped_bytes == 700
        assert [seq for seq, _ in sink.held()] == [7, 8, 9]
        owned[0] = True  # someone attached: flow control again
        sink.ack(8)
        await sink.write(b"a" * 100)
        await sink.write(b"b" * 100)
        blocked = asyncio.ensure_future(sink.write(b"c" * 100))
        await asyncio.sleep(0)
        assert not blocked.done()
        owned[0] = False  # ... and went away: the waiting write goes on, over the oldest
        sink.poke()
        await asyncio.wait_for(blocked, 5)
        assert [seq for seq, _ in sink.held()] == [10, 11, 12]  # the last window, read or not

    asyncio.run(scenario())


def test_an_exec_that_is_not_detached_keeps_only_what_is_unacknowledged():
    async def scenario():
        sink = WireSink(lambda seq, data: None, window=1000, chunk_size=100)
        for _ in range(3):
            await sink.write(b"x")
        sink.ack(1)
        assert [seq for seq, _ in sink.held()] == [2]
        assert sink.history is None

    asyncio.run(scenario())
