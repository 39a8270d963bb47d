"""The agent's wire stdio ends: credit windows, replay, ordering (one layer, no sockets)."""

from __future__ import annotations

import asyncio

from guest_agent.wire_stdio import WireSink, WireSource


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_sink_stops_taking_bytes_at_its_window_until_acknowledged():
    sent: list[tuple[int, bytes]] = []

    async def scenario():
        sink = WireSink(lambda seq, data: sent.append((seq, data)), window=300, chunk_size=100)
        for _ in range(3):
            await sink.write(b"x" * 100)
        blocked = asyncio.ensure_future(sink.write(b"y" * 100))
        await asyncio.sleep(0)  # let it run up to its wait for credit
        assert not blocked.done() and len(sent) == 3
        sink.ack(0)
        await asyncio.wait_for(blocked, 5)
        assert [seq for seq, _ in sent] == [0, 1, 2, 3]
        assert sink.unacked_bytes == 300

    run(scenario())


def test_a_sink_replays_only_what_was_not_acknowledged():
    sent: list[int] = []

    async def scenario():
        sink = WireSink(lambda seq, data: sent.append(seq), window=10_000, chunk_size=100)
        for _ in range(5):
            await sink.write(b"z")
        sink.ack(2)
        sent.clear()
        sink.replay(2)
        assert sent == [3, 4]
        sink.replay(3)
        assert sent == [3, 4, 4]

    run(scenario())


def test_an_aborted_sink_releases_a_blocked_writer():
    async def scenario():
        sink = WireSink(lambda seq, data: None, window=1, chunk_size=1)
        await sink.write(b"a")
        blocked = asyncio.ensure_future(sink.write(b"b"))
        await asyncio.sleep(0)
        sink.abort()
        await asyncio.wait_for(blocked, 5)

    run(scenario())


def test_a_source_delivers_in_order_drops_duplicates_and_gaps_and_ends_after_close_io():
    acks: list[int] = []

    async def scenario():
        source = WireSource(acks.append, window=1000)
        source.feed(0, b"zero")
        source.feed(0, b"dup")
        source.feed(2, b"gap")
        source.feed(1, b"one")
        source.end_after(1)
        got = [await source.read(100), await source.read(100), await source.read(100)]
        assert got == [b"zero", b"one", b""]
        assert acks[-1] == 1
        assert source.delivered == 1

    run(scenario())


def test_a_source_waits_for_the_chunks_close_io_names():
    async def scenario():
        source = WireSource(lambda seq: None, window=1000)
        source.end_after(0)  # close_io overtook chunk 0 (it was resent after a reconnect)
        reading = asyncio.ensure_future(source.read(10))
        await asyncio.sleep(0)
        assert not reading.done()
        source.feed(0, b"late")
        assert await asyncio.wait_for(reading, 5) == b"late"
        assert await source.read(10) == b""

    run(scenario())


def test_a_source_refuses_more_than_its_window():
    async def scenario():
        source = WireSource(lambda seq: None, window=5)
        source.feed(0, b"12345")
        source.feed(1, b"6")
        assert source.last_received == 0

    run(scenario())
