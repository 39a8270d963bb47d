"""Would uvloop help? The real client and agent on asyncio or uvloop, all four pairings, interleaved.

``python -m bench.profile uvloop`` starts four driver processes (an event
loop policy is per process): each sets its client's loop (asyncio or uvloop),
starts its own agent on ipc — ``python -m guest_agent``, or
:mod:`bench.uvloop_agent` for uvloop — and runs batches of ``status()`` and
``true`` lifecycles on command. The batches are interleaved across the four
drivers, and each pairing is compared with asyncio/asyncio.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable

from tests.support.agent import ROOT

from .measure import interleave, median, percentile

PAIRINGS = (("asyncio", "asyncio"), ("asyncio", "uvloop"), ("uvloop", "asyncio"), ("uvloop", "uvloop"))


def driver(agent_loop: str, client_loop: str) -> None:
    """The child: serve ``status N`` / ``lifecycle N`` commands on stdin with a JSON list of samples each."""
    if client_loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from common import ProcessSpec, Stdio

    from .lifecycle import lifecycle_case
    from .measure import time_call
    from .services import Services

    module = "bench.uvloop_agent" if agent_loop == "uvloop" else "guest_agent"
    with Services("uvm-bench-uvloop-") as services:
        agent = services.agent(services.ipc("agent"), module=module)
        proxied = agent.client.create_exec("uvloop", "status", ProcessSpec(args=["true"]), Stdio())
        work = {"status": proxied.status, "lifecycle": lifecycle_case(agent.client.create_exec, "uvloop-life")}
        print("ready", flush=True)
        for line in sys.stdin:
            name, count = line.split()
            samples = [sample for _ in range(int(count)) for sample in time_call(work[name])]
            print(json.dumps(samples), flush=True)
        proxied.delete()


class Driver:
    """The parent's handle on one driver process."""

    def __init__(self, agent_loop: str, client_loop: str) -> None:
        self.name = f"agent {agent_loop} / client {client_loop}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.profile", "_driver", agent_loop, client_loop],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready = self.process.stdout.readline()
        if ready.strip() != "ready":
            self.close()
            raise RuntimeError(f"{self.name}: driver did not start ({ready!r})")

    def batch(self, work: str, count: int) -> Callable[[], list[float]]:
        def run() -> list[float]:
            assert self.process.stdin is not None and self.process.stdout is not None
            self.process.stdin.write(f"{work} {count}\n")
            self.process.stdin.flush()
            return json.loads(self.process.stdout.readline())

        return run

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def compare(rounds: int = 20, status_batch: int = 300, lifecycle_batch: int = 30) -> None:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        sys.exit("bench.profile uvloop: uvloop is not installed (pip install uvloop)")
    drivers = [Driver(agent_loop, client_loop) for agent_loop, client_loop in PAIRINGS]
    try:
        cases = {}
        for each in drivers:
            cases[f"status()   {each.name}"] = each.batch("status", status_batch)
            cases[f"lifecycle  {each.name}"] = each.batch("lifecycle", lifecycle_batch)
        samples = interleave(cases, rounds=rounds, per_round=1, warmup=1)
    finally:
        for each in drivers:
            each.close()
    for work in ("status()  ", "lifecycle "):
        base = median(samples[f"{work} {drivers[0].name}"])
        for each in drivers:
            values = samples[f"{work} {each.name}"]
            print(f"  {work} {each.name:34} n={len(values):5}  median {median(values) * 1e6:8.1f} µs  "
                  f"p99 {percentile(values, 0.99) * 1e6:8.1f} µs  {median(values) / base:5.2f}× asyncio/asyncio")
