"""Fan-out: many concurrent ``sleep 1`` execs on one connection, every exit status checked.

A run creates and starts N execs (from a pool of client threads, as a shim
serving many requests would; and from one thread, for reference), waits for
all of them and measures the wall time from the first create to the last
exit; deleting them is timed apart. Baselines in the same run: the ideal (one
sleep: every exec runs at once), ``subprocess.Popen`` N times, and
``LocalExec``. Target: at most 3 s for 1,000 execs, i.e. 3× the ideal. The
agent's peak RSS (VmHWM, reset before each run) is reported.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import subprocess
import time
from collections.abc import Callable

from common import Exec, ProcessSpec, Stdio
from host_proxy import LocalExec

from .measure import Options, interleave, median, mib, peak_rss_kib, reset_peak_rss
from .report import FamilyResult, Target
from .services import Services

SLEEP = 1.0
TARGET = Target("<=", 3.0)
THREADS = 16


class FanOut:
    """One run of ``count`` concurrent sleeps through ``create``; keeps timings and peaks on the side."""

    def __init__(self, name: str, create: Callable[..., Exec], count: int, threads: int,
                 watched: dict[str, int]) -> None:
        self.name = name
        self.create = create
        self.count = count
        self.threads = threads
        self.watched = watched
        self.spec = ProcessSpec(args=["sleep", f"{SLEEP:g}"])
        self.started_all: list[float] = []
        self.deleted_all: list[float] = []
        self.peaks: dict[str, int] = {}
        self.wrong: list[str] = []
        self._runs = itertools.count()

    def _create_and_start(self, task_id: str, number: int) -> Exec:
        made = self.create(task_id, f"sleep-{number}", self.spec, Stdio())
        made.start()
        return made

    def __call__(self) -> list[float]:
        for pid in self.watched.values():
            reset_peak_rss(pid)
        task_id = f"bench-fan-{self.name}-{next(self._runs)}"
        with concurrent.futures.ThreadPoolExecutor(self.threads) as pool:
            started = time.perf_counter()
            made = list(pool.map(lambda number: self._create_and_start(task_id, number), range(self.count)))
            self.started_all.append(time.perf_counter() - started)
            statuses = [execution.wait(timeout=120) for execution in made]
            wall = time.perf_counter() - started
            for label, pid in self.watched.items():
                self.peaks[label] = max(self.peaks.get(label, 0), peak_rss_kib(pid) or 0)
            deleting = time.perf_counter()
            list(pool.map(lambda execution: execution.delete(), made))
            self.deleted_all.append(time.perf_counter() - deleting)
        wrong = [status for status in statuses if status.exit_status != 0]
        if wrong:
            self.wrong.append(f"{self.name}: {len(wrong)} of {self.count} exit statuses were not 0 "
                              f"(first: {wrong[0].exit_status})")
        return [wall]


def popen_fanout(count: int) -> Callable[[], None]:
    """The floor: ``subprocess.Popen`` ``count`` sleeps from this thread, then wait for each."""

    def once() -> None:
        children = [subprocess.Popen(["sleep", f"{SLEEP:g}"]) for _ in range(count)]
        codes = [child.wait() for child in children]
        if any(codes):
            raise RuntimeError(f"Popen fan-out: {sum(1 for code in codes if code)} sleeps failed")

    return once


def run(options: Options) -> FamilyResult:
    count = options.pick(200, 1000)
    result = FamilyResult("fanout", f"fan-out: {count} concurrent `sleep 1` execs on one connection")
    rounds = options.pick(1, 3)
    with Services("uvm-bench-fan-") as services:
        ipc = services.agent(services.ipc("agent"))
        me = os.getpid()
        fanouts = {
            f"LocalExec, {THREADS} threads": FanOut("local", LocalExec, count, THREADS, {"client": me}),
            f"uvmexec ipc, {THREADS} threads": FanOut("ipc", ipc.client.create_exec, count, THREADS,
                                                      {"agent": ipc.pid, "client": me}),
            "uvmexec ipc, 1 thread": FanOut("ipc1", ipc.client.create_exec, count, 1,
                                            {"agent": ipc.pid, "client": me}),
        }
        cases: dict[str, Callable[[], object]] = {f"subprocess.Popen x{count}": popen_fanout(count), **fanouts}
        options.progress(f"fanout: {len(cases)} cases x {rounds} runs of {count}")
        samples = interleave(cases, rounds=rounds, per_round=1, warmup=options.pick(0, 1),
                             progress=lambda message: options.progress(f"fanout: {message}"))
    ideal = result.add(f"ideal (sleep {SLEEP:g} s)", [SLEEP], is_baseline=True)
    popen = result.add(f"subprocess.Popen x{count}", samples[f"subprocess.Popen x{count}"])
    popen.compare(ideal)
    local_name = f"LocalExec, {THREADS} threads"
    local = result.add(local_name, samples[local_name])
    local.compare(ideal)
    for name, fanout in fanouts.items():
        figure = local
        if name != local_name:
            figure = result.add(name, samples[name])
            figure.compare(ideal, TARGET if count >= 1000 else None)
            figure.compare(local)
        figure.note = ", ".join(f"{label} peak RSS {mib(kib)}" for label, kib in fanout.peaks.items())
        result.notes.append(f"{name}: all started after {median(fanout.started_all):.2f} s (median), "
                            f"deleting all took {median(fanout.deleted_all):.2f} s; {figure.note}")
        result.errors.extend(fanout.wrong)
    if count < 1000:
        result.notes.append(f"quick mode: {count} execs, so the 3 s target (for 1,000) is not applied")
    return result.finish()
