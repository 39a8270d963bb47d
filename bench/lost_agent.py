"""``status()``, ``pid`` and ``state`` of a proxied exec whose agent was SIGKILLed and is not back.

containerd asks a shim for ``State`` whenever it likes, and hcsshim answers
from memory; so does ``ProxiedExec``. Cases, interleaved, each one call of
``status()`` + ``pid`` + ``state`` on a running ``sleep``:

- ``LocalExec`` (the baseline: a snapshot read on this host),
- ``ProxiedExec`` with its agent up,
- ``ProxiedExec`` with its agent SIGKILLed (target: at most 2× the baseline,
  i.e. the same order: microseconds, never a round trip or a timeout).

Then the reconnect deadline: how long after the kill the exec is ended with
255 (the deadline it was given, plus the time to notice).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from common import Exec, ExecState, ProcessSpec, Stdio
from host_proxy import AgentClient, LocalExec

from .measure import Options, interleave
from .report import FamilyResult, Target, format_time
from .services import Services

TARGET = Target("<=", 2.0)
SPEC = ProcessSpec(args=["sleep", "1000"])


def _reader(made: Exec) -> Callable[[], None]:
    def once() -> None:
        status = made.status()
        if status.status is not ExecState.RUNNING or made.pid != status.pid or made.state is not status.status:
            raise RuntimeError(f"{made!r}: not running: {status}")

    return once


def run(options: Options) -> FamilyResult:
    result = FamilyResult("lost_agent", "status(), pid and state of a running exec whose agent is gone")
    rounds, per_round = options.pick(3, 10), options.pick(200, 1000)
    deadline = options.pick(3.0, 10.0)
    local = LocalExec("bench-lost", "local", SPEC, Stdio())
    local.start()
    with Services("uvm-bench-lost-") as services:
        up = services.agent(services.ipc("up"))
        doomed = services.agent(services.ipc("doomed"))
        client = AgentClient.connect(doomed.endpoint, timeout=10, reconnect_timeout=deadline)
        services.defer(client.close)
        alive = up.client.create_exec("bench-lost", "alive", SPEC, Stdio())
        alive.start()
        lost = client.create_exec("bench-lost", "lost", SPEC, Stdio())
        lost.start()
        orphan_pid = lost.pid
        try:
            os.kill(doomed.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            cases = {"LocalExec": _reader(local), "ProxiedExec, agent up": _reader(alive),
                     "ProxiedExec, agent SIGKILLed": _reader(lost)}
            options.progress(f"lost_agent: {len(cases)} cases, {rounds} rounds x {per_round}")
            samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=10)
            if time.monotonic() - killed_at >= deadline:
                result.notes.append("the reads outlasted the reconnect deadline: raise per_round's budget")
            final = lost.wait(timeout=deadline + 30)
            ended_after = time.monotonic() - killed_at
            if final.exit_status != 255:
                raise RuntimeError(f"the lost exec ended with {final.exit_status}, not 255")
        finally:
            # The agent died without killing its process, as a crash would.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(orphan_pid, signal.SIGKILL)
            for made in (alive, local):
                made.force_exit(255)
                made.delete()
    base = result.add("LocalExec", samples["LocalExec"], is_baseline=True)
    result.add("ProxiedExec, agent up", samples["ProxiedExec, agent up"]).compare(base, TARGET)
    result.add("ProxiedExec, agent SIGKILLed", samples["ProxiedExec, agent SIGKILLed"]).compare(base, TARGET)
    result.notes.append(f"reconnect deadline {deadline:g} s: the lost exec ended with 255 after "
                        f"{format_time(ended_after)}")
    return result.finish()
