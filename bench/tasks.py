"""Execs in a running container: ``true`` through ``LocalTask`` against ``runc exec`` run directly.

One busybox container (its init sleeps) serves both cases, interleaved:

- ``runc exec ID true`` (the baseline: what running the process in the
  container costs without uvmexec — runc starts it, waits for it, exits);
- ``LocalTask`` exec of ``true``: create, start (``runc exec --detach`` on
  the private agent), wait, delete (target: at most 1.2× the baseline).

runc runs on the agent's loop thread, so while it runs the agent answers
nobody else. The second table measures that: a ``ping`` to the same agent,
idle and while another thread runs exec lifecycles back to back.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

from common import Exec, ProcessSpec, Stdio
from host_proxy import LocalTask
from host_proxy.private_agent import private_client
from vm_images.busybox import make_bundle

from .lifecycle import describe_phases, lifecycle_case
from .measure import Options, interleave, median, percentile
from .report import FamilyResult, Target, format_time

TARGET = Target("<=", 1.2)


def _runc_exec(task_id: str) -> None:
    subprocess.run(["runc", "exec", task_id, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)


def _stall(task: LocalTask, rounds: int, per_round: int) -> tuple[list[float], list[float]]:
    """Ping latencies of the task's agent: idle, and while execs start one after another."""
    client = private_client()

    def pings(count: int) -> list[float]:
        samples = []
        for _ in range(count):
            began = time.perf_counter()
            client.ping()
            samples.append(time.perf_counter() - began)
        return samples

    idle, busy = [], []
    lifecycle = lifecycle_case(lambda tid, eid, spec, stdio: task.create_exec(eid, spec, stdio), task.id)

    def churn(stop: threading.Event) -> None:
        while not stop.is_set():
            lifecycle()

    for _ in range(rounds):
        idle += pings(per_round)
        stop = threading.Event()
        worker = threading.Thread(target=churn, args=(stop,), name="bench-task-churn")
        worker.start()
        try:
            busy += pings(per_round)
        finally:
            stop.set()
            worker.join()
    return idle, busy


def run(options: Options) -> list[FamilyResult]:
    result = FamilyResult("tasks", "exec lifecycle of true in a running container (create, start, wait, delete)")
    stall = FamilyResult("task_stall", "ping to the private agent, idle and while execs start in a container")
    rounds, per_round = options.pick(3, 10), options.pick(10, 30)
    directory = tempfile.mkdtemp(prefix="uvm-bench-tasks-")
    task_id = f"bench-tasks-{int(time.time())}"
    task: LocalTask | None = None
    phases: dict[str, list[float]] = {}
    try:
        bundle = make_bundle(f"{directory}/bundle", ProcessSpec(args=["sleep", "1000000"], env=["PATH=/bin"]))
        task = LocalTask(task_id, bundle.path, rootfs=bundle.rootfs)
        task.init.start()
        made: LocalTask = task

        def create(tid: str, eid: str, spec: ProcessSpec, stdio: Stdio) -> Exec:
            return made.create_exec(eid, spec, stdio)

        cases: dict[str, Any] = {
            "runc exec true (directly)": lambda: _runc_exec(task_id),
            "LocalTask exec true": lifecycle_case(create, task_id, phases),
        }
        options.progress(f"tasks: {len(cases)} cases, {rounds} rounds x {per_round}")
        samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=options.pick(3, 10),
                             progress=lambda message: options.progress(f"tasks: {message}"))
        options.progress("tasks: agent stall")
        idle, busy = _stall(task, rounds, per_round * 5)
    finally:
        if task is not None:
            task.init.force_exit(255)
            task.delete()
        shutil.rmtree(directory, ignore_errors=True)
    base = result.add("runc exec true (directly)", samples["runc exec true (directly)"], is_baseline=True)
    result.add("LocalTask exec true", samples["LocalTask exec true"]).compare(base, TARGET)
    result.notes.append(f"LocalTask exec true, median per call: {describe_phases(phases)}")
    quiet = stall.add("ping, agent idle", idle, is_baseline=True)
    stall.add("ping while execs start", busy).compare(quiet)
    stall.notes.append(f"while execs start, the slowest ping waited {format_time(max(busy))} "
                       f"(p99 {format_time(percentile(busy, 0.99))}, median {format_time(median(busy))}): "
                       "runc runs on the agent's loop thread")
    return [result.finish(), stall.finish()]
