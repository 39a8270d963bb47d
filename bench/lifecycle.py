"""Exec lifecycle of ``true`` — create, start, wait, delete — against ``subprocess.run(["true"])``.

Cases, interleaved: ``subprocess.run(["true"])`` (the baseline: what a Python
program pays to run a process at all), ``LocalExec`` (the same contract on
this host, no wire), and ``ProxiedExec`` through a local agent over ipc (the
target: at most 2× ``subprocess.run``) and over tcp with CURVE (shown for
reference). No stdio is attached in any case (``/dev/null``).
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Callable

from common import Exec, ProcessSpec, Stdio
from host_proxy import LocalExec

from .measure import Options, interleave, median
from .report import FamilyResult, Target, format_time
from .services import Services

TARGET = Target("<=", 2.0)
SPEC = ProcessSpec(args=["true"])


PHASES = ("create", "start", "wait", "delete")


def lifecycle_case(create: Callable[..., Exec], task_id: str,
                   phases: dict[str, list[float]] | None = None) -> Callable[[], None]:
    """One iteration: create, start, wait and delete ``true``; a wrong exit status is an error.

    With ``phases``, each call's own duration is appended under its name.
    """
    numbers = itertools.count()
    clock = time.perf_counter

    def once() -> None:
        started = clock()
        made = create(task_id, f"true-{next(numbers)}", SPEC, Stdio())
        created = clock()
        made.start()
        running = clock()
        status = made.wait(timeout=60)
        exited = clock()
        made.delete()
        if phases is not None:
            for name, duration in zip(PHASES, (created - started, running - created, exited - running,
                                               clock() - exited), strict=True):
                phases.setdefault(name, []).append(duration)
        if status.exit_status != 0:
            raise RuntimeError(f"{task_id}: true exited with {status.exit_status}")

    return once


def describe_phases(phases: dict[str, list[float]]) -> str:
    """``create 90 µs, start 1.10 ms, ...``: the median of each call."""
    return ", ".join(f"{name} {format_time(median(phases[name]))}" for name in PHASES if phases.get(name))


def subprocess_true() -> None:
    subprocess.run(["true"], check=True)


def run(options: Options) -> FamilyResult:
    result = FamilyResult("lifecycle", "exec lifecycle of true (create, start, wait, delete)")
    rounds, per_round = options.pick(3, 20), options.pick(20, 50)
    phases: dict[str, dict[str, list[float]]] = {"LocalExec true": {}, "uvmexec ipc true": {},
                                                 "uvmexec tcp+curve true": {}}
    with Services("uvm-bench-life-") as services:
        ipc = services.agent(services.ipc("agent"))
        tcp = services.agent("tcp://127.0.0.1:0", curve=True)
        cases = {
            "subprocess.run(true)": subprocess_true,
            "LocalExec true": lifecycle_case(LocalExec, "bench-life-local", phases["LocalExec true"]),
            "uvmexec ipc true": lifecycle_case(ipc.client.create_exec, "bench-life-ipc", phases["uvmexec ipc true"]),
            "uvmexec tcp+curve true": lifecycle_case(tcp.client.create_exec, "bench-life-tcp",
                                                     phases["uvmexec tcp+curve true"]),
        }
        options.progress(f"lifecycle: {len(cases)} cases, {rounds} rounds x {per_round}")
        samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=options.pick(10, 50),
                             progress=lambda message: options.progress(f"lifecycle: {message}"))
    base = result.add("subprocess.run(true)", samples["subprocess.run(true)"], is_baseline=True)
    local = result.add("LocalExec true", samples["LocalExec true"])
    local.compare(base)
    proxied = result.add("uvmexec ipc true", samples["uvmexec ipc true"])
    proxied.compare(base, TARGET)
    proxied.compare(local)
    result.add("uvmexec tcp+curve true", samples["uvmexec tcp+curve true"]).compare(base)
    for name, split in phases.items():
        result.notes.append(f"{name}, median per call: {describe_phases(split)}")
    return result.finish()
