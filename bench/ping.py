"""Op round trip: ``ProxiedExec.status()`` against a raw pyzmq+msgpack ping on the same kind of endpoint.

For each transport — ipc in a private directory, tcp on 127.0.0.1 with CURVE
(as the agent's tcp always is), and plaintext tcp (the agent's ``--insecure``)
— one agent process and one raw echo server process (:mod:`bench.echo`) are
started. The raw client is a blocking DEALER on the caller's thread sending a
msgpack map shaped like a status request; uvmexec's figure is ``status()`` on
a created (never started) exec, which always asks the agent.
``AgentClient.ping()`` is shown too: the framework's round trip without the
status map. Target: ``status()`` at most 1.5× the raw ping. The CPU time per
round trip of both processes (every thread, ZeroMQ's I/O threads included) is
noted too: unlike latency, it does not depend on what a thread wake-up costs
on the host at the time.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import msgpack
import zmq

from common import ProcessSpec, Stdio

from .measure import Options, cpu_per_call, interleave
from .report import FamilyResult, Target
from .services import Services

TARGET = Target("<=", 1.5)

#: (name, kind of endpoint, CURVE)
TRANSPORTS = (("ipc", "ipc", False), ("tcp+curve", "tcp", True), ("tcp plain", "tcp", False))


class RawPinger:
    """A DEALER that sends one status-shaped msgpack map and waits for the answer, on this thread."""

    def __init__(self, endpoint: str, curve: tuple[bytes, bytes, bytes] | None = None) -> None:
        self.socket: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            server_public, client_public, client_secret = curve
            self.socket.setsockopt(zmq.CURVE_SERVERKEY, server_public)
            self.socket.setsockopt(zmq.CURVE_PUBLICKEY, client_public)
            self.socket.setsockopt(zmq.CURVE_SECRETKEY, client_secret)
        self.socket.connect(endpoint)
        self._ids = itertools.count(1)

    def ping(self) -> None:
        request_id = next(self._ids)
        self.socket.send(msgpack.packb({"id": request_id, "op": "status", "task": "bench-task",
                                        "exec": "bench-exec"}))
        reply = msgpack.unpackb(self.socket.recv())
        if reply.get("id") != request_id:
            raise RuntimeError(f"raw ping: reply {reply!r} to request {request_id}")

    def close(self) -> None:
        self.socket.close(0)


def _curve_keys(services: Services) -> tuple[bytes, bytes, bytes]:
    import zmq.auth

    server_public, _ = zmq.auth.load_certificate(services.keys.agent_public)
    client_public, client_secret = zmq.auth.load_certificate(services.keys.client_secret)
    assert client_secret is not None
    return server_public, client_public, client_secret


def run(options: Options) -> FamilyResult:
    result = FamilyResult("ping", "op round trip: status() vs raw pyzmq+msgpack ping (same endpoint kind)")
    rounds, per_round = options.pick(3, 40), options.pick(100, 250)
    with Services("uvm-bench-ping-") as services:
        cases: dict[str, Callable[[], object]] = {}
        servers: dict[str, int] = {}
        execs = []
        pingers = []
        try:
            for name, kind, curve in TRANSPORTS:
                listen = services.ipc(f"agent-{kind}") if kind == "ipc" else "tcp://127.0.0.1:0"
                echo_listen = services.ipc("echo") if kind == "ipc" else "tcp://127.0.0.1:0"
                agent = services.agent(listen, curve=curve, insecure=kind == "tcp" and not curve)
                echo = services.echo(echo_listen, curve=curve)
                pinger = RawPinger(echo.endpoint, _curve_keys(services) if curve else None)
                pingers.append(pinger)
                # A running exec: status() of one that never started is answered on the host alone.
                proxied = agent.client.create_exec("bench-ping", f"status-{kind}-{int(curve)}",
                                                   ProcessSpec(args=["sleep", "100000"]), Stdio())
                proxied.start()
                execs.append(proxied)
                cases[f"raw ping {name}"] = pinger.ping
                cases[f"uvmexec status() {name}"] = proxied.status
                cases[f"uvmexec ping() {name}"] = agent.client.ping
                servers[f"raw ping {name}"] = echo.pid
                servers[f"uvmexec status() {name}"] = agent.pid
            options.progress(f"ping: {len(cases)} cases, {rounds} rounds x {per_round}")
            samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=options.pick(50, 500),
                                 progress=lambda message: options.progress(f"ping: {message}"))
            cpu = {name: cpu_per_call(cases[name], pid, options.pick(1000, 5000)) for name, pid in servers.items()}
        finally:
            for proxied in execs:
                proxied.force_exit(0)
                proxied.delete()
            for pinger in pingers:
                pinger.close()
    for name, _, _ in TRANSPORTS:
        raw = result.add(f"raw ping {name}", samples[f"raw ping {name}"], is_baseline=True)
        # status() is answered from the host's record now (no round trip): shown, not held to the target.
        result.add(f"uvmexec status() {name}", samples[f"uvmexec status() {name}"]).compare(raw)
        result.add(f"uvmexec ping() {name}", samples[f"uvmexec ping() {name}"]).compare(raw, TARGET)
    result.notes.append("CPU per round trip (this client process / the server process, every thread; "
                        + ", ".join(f"{name} {client * 1e6:.0f}/{server * 1e6:.0f} µs"
                                    for name, (client, server) in cpu.items()) + ")")
    result.notes.append("raw ping: a blocking DEALER on the calling thread -> a ROUTER echo (decode + encode) in "
                        "its own process; uvmexec: the public synchronous API against a real agent process")
    return result.finish()
