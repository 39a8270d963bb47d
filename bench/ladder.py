"""Where a ``status()`` round trip goes: a ladder of floors from a raw ping up to uvmexec, and piece costs.

``python -m bench.profile breakdown`` runs, interleaved, over ipc:

- A: blocking DEALER on the caller's thread -> blocking echo (the raw ping);
- B: the same client -> an echo served through the agent's event-loop
  plumbing (:class:`common.zmqloop.LoopSocket` on asyncio): the server-side
  architecture, no protocol; B2: the leanest asyncio echo
  (:func:`bench.echo.serve_lean`), what that plumbing could cost;
- C: a DEALER owned by a loop thread, the caller handing each request over
  and waiting on a Future (as ``AgentClient`` does) -> blocking echo: the
  client-side architecture, no protocol;
- D: C's client -> B's server: the floor of the design;
- E: ``AgentClient.ping()`` -> the agent; F: ``ProxiedExec.status()`` -> the agent.

For each: median and p99 latency, and the CPU time per round trip burnt by
the client process and by the server process (``/proc/PID/stat``, all
threads, ZeroMQ's I/O threads included). Then the costs of the pieces of one
status round trip timed alone (codec, status conversion, the thread hop).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import time
import timeit
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

from common import ProcessSpec, Stdio
from common.zmqloop import LoopSocket
from host_proxy.loop_thread import LoopThread

from .measure import cpu_per_call, interleave, median, percentile
from .ping import RawPinger
from .services import Services


class LoopPinger:
    """The client-side floor of uvmexec's design: a DEALER owned by a loop thread.

    The caller hands each request to the loop (``call_soon_threadsafe``) and
    waits on a ``concurrent.futures.Future`` that the loop resolves when the
    reply arrives — the same hops ``AgentClient`` makes, without its protocol.
    """

    def __init__(self, endpoint: str, loop_thread: LoopThread) -> None:
        self.loop_thread = loop_thread
        self._pending: dict[int, concurrent.futures.Future[Any]] = {}
        self._ids = itertools.count(1)

        def make() -> LoopSocket:
            socket: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(endpoint)
            return LoopSocket(loop_thread.loop, socket, self._on_message)

        self.socket = loop_thread.call(make)

    def _on_message(self, frames: list[zmq.Frame]) -> None:
        reply = msgpack.unpackb(frames[0].buffer)
        future = self._pending.pop(reply["id"], None)
        if future is not None:
            future.set_result(reply)

    def _send(self, request_id: int, future: concurrent.futures.Future[Any]) -> None:
        self._pending[request_id] = future
        self.socket.send([msgpack.packb({"id": request_id, "op": "status", "task": "bench-task",
                                         "exec": "bench-exec"})])

    def ping(self) -> None:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.loop_thread.loop.call_soon_threadsafe(self._send, next(self._ids), future)
        future.result(10)

    def close(self) -> None:
        self.loop_thread.call(self.socket.close)


def ladder(rounds: int = 20, per_round: int = 200, cpu_calls: int = 5000) -> None:
    """Print the ladder A..F: latency and CPU per round trip."""
    from host_proxy.loop_thread import shared_loop

    with Services("uvm-bench-ladder-") as services:
        agent = services.agent(services.ipc("agent"))
        proxied = agent.client.create_exec("ladder", "status", ProcessSpec(args=["true"]), Stdio())
        blocking = services.echo(services.ipc("echo-blocking"))
        looped = services.echo(services.ipc("echo-asyncio"), loop="asyncio")
        lean = services.echo(services.ipc("echo-lean"), loop="lean")
        loop_thread = shared_loop()
        closers: list[Callable[[], None]] = []

        def pinger(endpoint: str, thread: LoopThread | None = None) -> Callable[[], None]:
            made = RawPinger(endpoint) if thread is None else LoopPinger(endpoint, thread)
            closers.append(made.close)
            return made.ping

        cases: dict[str, tuple[Callable[[], object], int]] = {
            "A blocking client -> blocking echo": (pinger(blocking.endpoint), blocking.pid),
            "B blocking client -> asyncio LoopSocket echo": (pinger(looped.endpoint), looped.pid),
            "B2 blocking client -> lean asyncio echo": (pinger(lean.endpoint), lean.pid),
            "C loop-thread client -> blocking echo": (pinger(blocking.endpoint, loop_thread), blocking.pid),
            "D loop-thread client -> asyncio LoopSocket echo": (pinger(looped.endpoint, loop_thread), looped.pid),
            "E AgentClient.ping() -> agent": (agent.client.ping, agent.pid),
            "F ProxiedExec.status() -> agent": (proxied.status, agent.pid),
        }
        samples = interleave({name: fn for name, (fn, _) in cases.items()}, rounds=rounds, per_round=per_round,
                             warmup=200)
        cpu = {name: cpu_per_call(fn, pid, cpu_calls) for name, (fn, pid) in cases.items()}
        for close in closers:
            close()
        proxied.delete()
    base = median(samples["A blocking client -> blocking echo"])
    print(f"  {'case':50} {'median':>9} {'p99':>9} {'vs A':>6} {'client CPU':>11} {'server CPU':>11}")
    for name in cases:
        client_cpu, server_cpu = cpu[name]
        print(f"  {name:50} {median(samples[name]) * 1e6:7.1f}µs {percentile(samples[name], 0.99) * 1e6:7.1f}µs "
              f"{median(samples[name]) / base:5.2f}× {client_cpu * 1e6:9.1f}µs {server_cpu * 1e6:9.1f}µs")


def _per_call(fn: Callable[[], object], number: int) -> float:
    """Best-of-5 seconds per call."""
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def pieces() -> None:
    """Time the pieces of a status round trip one by one, in this process."""
    from common import protocol
    from host_proxy.loop_thread import shared_loop

    request = {"id": 12345, "op": "status", "task": "bench-task", "exec": "bench-exec"}
    with Services("uvm-bench-pieces-") as services:
        agent = services.agent(services.ipc("agent"))
        proxied = agent.client.create_exec("pieces", "status", ProcessSpec(args=["true"]), Stdio())
        status = proxied.status()
        proxied.delete()
    wire = protocol.status_to_wire(status)
    reply = protocol.pack({"id": 12345, "result": wire})
    loop = shared_loop()

    def hop() -> None:
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        loop.loop.call_soon_threadsafe(future.set_result, None)
        future.result()

    socket: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    events = int(socket.getsockopt(zmq.EVENTS))
    rows: list[tuple[str, Callable[[], object]]] = [
        ("msgpack.packb(status request)", lambda: msgpack.packb(request)),
        ("protocol.unpack(status request)", lambda: protocol.unpack(msgpack.packb(request))),
        ("protocol.unpack(status reply)", lambda: protocol.unpack(reply)),
        ("protocol.status_to_wire", lambda: protocol.status_to_wire(status)),
        ("protocol.status_from_wire", lambda: protocol.status_from_wire(wire)),
        ("socket.getsockopt(zmq.EVENTS) (builds a SocketOption enum)", lambda: socket.getsockopt(zmq.EVENTS)),
        ("events & zmq.POLLIN (enum Flag arithmetic)", lambda: events & zmq.POLLIN),
        ("events & 1 (plain int)", lambda: events & 1),
        ("hop: call_soon_threadsafe + Future.result (idle loop thread)", hop),
        ("concurrent.futures.Future() + set_result + result()", _future_roundtrip),
        ("time.monotonic()", time.monotonic),
    ]
    for name, fn in rows:
        number = 2000 if name.startswith("hop") else 20000
        print(f"  {_per_call(fn, number) * 1e6:8.2f} µs  {name}")
    socket.close(0)


def _future_roundtrip() -> None:
    future: concurrent.futures.Future[None] = concurrent.futures.Future()
    future.set_result(None)
    future.result()
