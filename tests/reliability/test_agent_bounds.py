"""What an authenticated peer can make the agent hold: each cap, reached and held.

Raw DEALER peers, including peers that never read: replays (attach and resync). Each test reads
the agent's own counters (``stats``) through an authorized observer.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

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
