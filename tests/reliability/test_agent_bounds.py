"""What an authenticated peer can make the agent hold: each cap, reached and held.

The agent's caps (SECURITY.md, "What the agent holds for a peer") are exercised here one by one
with raw DEALER peers — including peers that never read, which is what most of the caps are for:
replays (attach and resync), the messages held for a session that does not read (libzmq's
ZMQ_SNDHWM, then the session's outbox), the reply cache, sessions and execs. Each test reads the
agent's own counters (``stats``) through an authorized observer.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from guest_agent import server
from host_proxy import AgentClient
from tests.reliability.helpers import poll_agent, settle

pytestmark = pytest.mark.timeout(300)

MiB = 1024 * 1024
WINDOW = 4 * MiB
_ids = itertools.count(1)


class Peer:
    """A raw DEALER of one session. ``events=False`` says hello as a request-only connection;
    ``reads=False`` makes one that stops reading after its hello (libzmq takes one message and
    the kernel a small buffer; the rest stays with the agent)."""

    def __init__(self, endpoint: str, session: str, *, events: bool = True, reads: bool = True) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if not reads:
            self.socket.setsockopt(zmq.RCVHWM, 1)
            self.socket.setsockopt(zmq.RCVBUF, 4096)
        self.monitor = self.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.socket.connect(endpoint)
        reply = self.request("hello", versions=[1], session=session, events=events)
        assert "result" in reply, reply

    def send(self, op: str, *data: bytes, **fields: Any) -> int:
        request_id = next(_ids)
        self.socket.send_multipart([msgpack.packb({"id": request_id, "op": op, **fields}), *data])
        return request_id

    def flood(self, count: int, op: str, **fields: Any) -> int:
        """Send up to ``count`` requests without reading; stop early if libzmq takes none for 2 s
        (the agent no longer reads them). How many went."""
        self.socket.setsockopt(zmq.SNDTIMEO, 2000)
        for sent in range(count):
            try:
                self.socket.send(msgpack.packb({"id": next(_ids), "op": op, **fields}))
            except zmq.Again:
                return sent
        return count

    def receive(self, request_id: int) -> dict[str, Any]:
        """The reply to ``request_id`` (whatever else comes first is dropped)."""
        while True:
            assert self.socket.poll(30_000), f"no reply to request {request_id}"
            message = msgpack.unpackb(self.socket.recv_multipart()[0], strict_map_key=False)
            if message.get("id") == request_id or message.get("ev") == "error":
                return message

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        return self.receive(self.send(op, **fields))

    def many(self, requests: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Pipelined, then every reply in order."""
        ids = [self.send(op, **fields) for op, fields in requests]
        return [self.receive(request_id) for request_id in ids]

    def was_disconnected(self, timeout_ms: int) -> bool:
        """Whether the agent ended this connection within ``timeout_ms``. libzmq notices the end only
        when it reads, so what the agent sent before is read (and dropped) meanwhile."""
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            ready = dict(poller.poll(max(0, int((deadline - time.monotonic()) * 1000))))
            if self.monitor in ready:
                return True
            if not ready:
                return False
            while self.socket.poll(0):
                self.socket.recv_multipart()

    def close(self) -> None:
        self.socket.disable_monitor()
        self.monitor.close()
        self.socket.close()
        self.context.term()


@pytest.fixture
def peers(ipc_agent) -> Iterator[Any]:
    made: list[Peer] = []

    def peer(session: str, **options: Any) -> Peer:
        made.append(Peer(ipc_agent.endpoints[0], session, **options))
        return made[-1]

    try:
        yield peer
    finally:
        for each in made:
            each.close()


def _rss_mib(client: AgentClient) -> float:
    settle(client)
    return client.stats()["rss_kib"] / 1024


# -- replays -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["attach", "resync", "two-sessions"])
def test_repeated_replays_do_not_make_the_agent_hold_a_window_each(ipc_agent, client, peers, how):
    """An exec has a full window (4 MiB) of stdout nobody acknowledged. Its owner's event
    connection does not read; 60 attach (or resync) requests come on a request-only connection
    of the same session, or alternately from two such sessions. Before: each request handed
    another copy of the window to libzmq (+240 MiB for 60). Now a replay waits while the exec's
    previous one is unacknowledged on a connection still open, and replaces any other waiting."""
    owner = peers("owner", reads=False)  # the event connection: it never reads
    asker = peers("owner", events=False)
    other, other_asker = (peers("other", reads=False), peers("other", events=False)) if how == "two-sessions" else (
        None, None)
    ids = {"task": "replay", "exec": "e"}
    created = asker.request("create", **ids, spec={"args": ["head", "-c", str(64 * MiB), "/dev/zero"]},
                            stdio={"stdout": True})
    asker.request("start", **ids)
    poll_agent(lambda: client.stats()["held_output_bytes"] >= WINDOW, 30, "the exec's window full")
    before = _rss_mib(client)
    for index in range(60):
        if how == "resync":
            reply = asker.request("resync", execs=[{"h": created["result"]["h"], "acked": [-1, -1]}])
        else:
            reply = (other_asker if other_asker is not None and index % 2 else asker).request("attach", **ids)
        assert "result" in reply, reply
    grown = _rss_mib(client) - before
    print(f"\n60 x {how}: agent RSS {before:.0f} -> {before + grown:.0f} MiB (+{grown:.1f})")
    asker.request("force_exit", **ids, status=9)
    asker.request("delete", **ids)
    assert grown < 3 * WINDOW / MiB + 16, f"the agent grew by {grown:.1f} MiB"
    assert not owner.was_disconnected(0) and (other is None or not other.was_disconnected(0))


# -- messages held for a session that does not read ----------------------------------------------------


def _until_held_and_let_go(peer: Peer, client: AgentClient, batch: int, op: str,
                           **fields: Any) -> tuple[int, int, int, int]:
    """Send requests that ``peer`` never reads the replies of: until the agent holds some in the
    session's outbox (libzmq's queue is full), then until it holds none again (it ended the
    connection). ``(sent when it first held some, how many, sent when it let go, most bytes held)``."""
    sent = 0
    while sent < 50 * batch and not client.stats()["held_messages"]:
        went = peer.flood(batch, op, **fields)
        sent += went
        settle(client)
        assert went, "the agent stopped reading requests"
    first, held = sent, client.stats()["held_messages"]
    most = 0
    while sent < 300 * batch:
        went = peer.flood(batch, op, **fields)
        sent += went
        settle(client)
        stats = client.stats()
        if not stats["held_messages"] or not went:
            break
        most = max(most, stats["held_message_bytes"])
    return first, held, sent, most


def test_a_session_that_does_not_read_is_held_to_sndhwm_then_the_outbox_then_disconnected(ipc_agent, client,
                                                                                         peers):
    """Pings on an event connection that never reads: their replies fill the connection's libzmq
    queue (ZMQ_SNDHWM, 1,000 messages) and a few kernel buffers, then the session's outbox
    (MAX_OUTBOX, 65,536 messages). Past that the agent ends the connection (its client would
    reconnect and resync). Before: libzmq's queue took 100,000 messages, and past the outbox the
    agent dropped the oldest replies — holes in what the client was sent — and kept the connection."""
    assert server.SEND_HWM == 1000 and server.MAX_OUTBOX == 65536
    peer = peers("deaf", reads=False)
    first, held, sent, _ = _until_held_and_let_go(peer, client, 1000, "ping")
    print(f"\noutbox: {held} messages held after {first} pings; the agent let go after {sent}")
    assert 0 < held <= first - server.SEND_HWM, f"{held} held after {first} pings"
    assert server.MAX_OUTBOX <= sent - server.SEND_HWM, f"let go after {sent} pings"
    assert peer.was_disconnected(30_000), "the agent kept a connection that does not read"
    assert client.stats()["held_messages"] == 0


def test_the_outbox_is_bounded_by_bytes_too(ipc_agent, client, peers):
    """Status replies of ~17 KiB (an exec with four 4 KiB paths) to an event connection that does
    not read: the outbox reaches MAX_OUTBOX_BYTES (64 MiB) long before 65,536 messages, and the
    agent ends the connection there; its RSS grows by no more than that and libzmq's queue."""
    path = "/" + "p" * 4095
    peer = peers("deaf-big", reads=False)
    asker = peers("deaf-big", events=False)
    ids = {"task": "big", "exec": "e"}
    asker.request("create", **ids, spec={"args": ["true"]}, stdio={}, paths=[path, path, path], bundle=path)
    before = _rss_mib(client)
    first, held, sent, most = _until_held_and_let_go(peer, client, 200, "status", **ids)
    grown = client.stats()["peak_rss_kib"] / 1024 - before
    print(f"\n{sent} status replies of ~17 KiB not read: outbox at most {most / MiB:.1f} MiB; agent peak RSS "
          f"+{grown:.1f} MiB")
    assert peer.was_disconnected(30_000), "the agent kept a connection that does not read"
    asker.request("delete", **ids)
    assert sent < server.MAX_OUTBOX // 4 and most <= server.MAX_OUTBOX_BYTES
    assert grown < server.MAX_OUTBOX_BYTES / MiB + server.SEND_HWM * 17 / 1024 + 32


# -- the reply cache, sessions, execs ---------------------------------------------------------------


def test_the_reply_cache_is_bounded_by_bytes(ipc_agent, client, peers):
    """1,000 status replies of ~17 KiB are 17 MiB: more than the cache's 16 MiB though fewer than
    its 1,024 entries. The oldest are forgotten by bytes (a resent id that old is refused, never
    redone), the newest are answered again from the cache."""
    path = "/" + "p" * 4095
    peer = peers("cache")
    ids = {"task": "t" * 256, "exec": "e" * 256}  # the largest status: ~17 KiB
    peer.request("create", **ids, spec={"args": ["true"]}, stdio={}, paths=[path, path, path], bundle=path)
    first = peer.send("status", **ids)
    peer.receive(first)
    last = first
    for _ in range(999):
        last = peer.send("status", **ids)
        peer.receive(last)
    peer.socket.send(msgpack.packb({"id": first, "op": "status", **ids}))
    too_old = peer.receive(first)
    assert too_old["error"]["code"] == "failed_precondition" and "too old" in too_old["error"]["message"]
    peer.socket.send(msgpack.packb({"id": last, "op": "status", **ids}))
    assert "result" in peer.receive(last)
    assert len(msgpack.packb(peer.receive(peer.send("status", **ids)))) > 16 * 1024
    peer.request("delete", **ids)


def test_sessions_are_capped_and_an_idle_one_makes_room(ipc_agent, peers):
    """MAX_SESSIONS (1,024) sessions that each own an exec: one more is refused. Once one of them
    owns nothing, a new session takes its place."""
    peer = peers("s0")
    for index in range(server.MAX_SESSIONS):
        assert "result" in peer.request("hello", versions=[1], session=f"s{index}")
        assert "result" in peer.request("create", task="sessions", exec=f"e{index}", spec={"args": ["true"]},
                                        stdio={})
    refused = peer.request("hello", versions=[1], session="one-too-many")
    assert refused["error"]["code"] == "failed_precondition" and "maximum" in refused["error"]["message"]
    assert "result" in peer.request("hello", versions=[1], session="s0")
    peer.request("delete", task="sessions", exec="e0")
    assert "result" in peer.request("hello", versions=[1], session="one-more")
    assert peer.request("stats")["result"]["sessions"] == server.MAX_SESSIONS
    for index in range(1, server.MAX_SESSIONS):
        peer.request("delete", task="sessions", exec=f"e{index}")


def test_execs_are_capped(ipc_agent, client, peers):
    """MAX_EXECS (20,000) created execs: the next create is refused (unavailable) until one is deleted."""
    peer = peers("execs")
    batch = 1000
    for start in range(0, server.MAX_EXECS, batch):
        replies = peer.many([("create", {"task": "execs", "exec": f"e{index}", "spec": {"args": ["true"]},
                                         "stdio": {}}) for index in range(start, start + batch)])
        assert all("result" in reply for reply in replies), [r for r in replies if "result" not in r][:1]
    refused = peer.request("create", task="execs", exec="one-too-many", spec={"args": ["true"]}, stdio={})
    assert refused["error"]["code"] == "unavailable"
    peer.request("delete", task="execs", exec="e0")
    assert "result" in peer.request("create", task="execs", exec="one-more", spec={"args": ["true"]}, stdio={})
    for start in range(1, server.MAX_EXECS, batch):
        peer.many([("delete", {"task": "execs", "exec": f"e{index}"})
                   for index in range(start, min(start + batch, server.MAX_EXECS))])
    peer.request("delete", task="execs", exec="one-more")
    assert client.stats()["execs"] == 0
