"""Containers in the QEMU guest (hypervisor isolation): ``create_task`` against runc run inside the guest.

One guest is booted; every container's bundle is placed by the host on the
VM's 9p share (``create_task(..., share=...)``), for uvmexec and the floors alike.

- ``guest-task-exec``: the lifecycle of ``true`` exec'd in a running
  container (its init sleeps) through ``create_task``'s task — create,
  start, wait, delete — against the in-guest floor: a Python loop run in the
  guest by one bare exec, timing ``runc exec ID true`` (what running the
  process in the container costs inside the guest without uvmexec). Target:
  at most 1.25x.
- ``guest-task-start``: the container start — from ``create_task`` (the host
  mounts the rootfs on the share, the agent checks config.json) through
  ``init.start()`` (``runc create`` + ``runc start``) to the first byte of
  the init's output on this host — against the same ``runc create`` +
  ``runc start`` to the first byte of a pipe, timed inside the guest on a
  bundle placed once on the share. No target: the difference is what
  placing the bundle and the round trips cost.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import BinaryIO, cast

from common import ExecState, ProcessSpec, Stdio
from host_proxy import AgentClient, BundleShare
from host_proxy.shared_bundle import SharedBundle
from vm_images.busybox import make_bundle

from .lifecycle import describe_phases, lifecycle_case
from .measure import Options, interleave, median
from .report import FamilyResult, Figure, Target, format_time

NEAR_FLOOR = Target("<=", 1.25)
GUEST_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SLEEPER = ProcessSpec(args=["sleep", "1000000"], env=["PATH=/bin:/usr/bin"])
#: The init of the start cases: its first output byte ends the measurement.
GREETER = ProcessSpec(args=["echo", "started"], env=["PATH=/bin:/usr/bin"])

#: In the guest: one warm-up, then one line per timed ``runc exec ID true``.
EXEC_FLOOR = """\
import subprocess, sys
import time
argv = ["runc", "exec", sys.argv[1], "true"]
quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
subprocess.run(argv, **quiet)
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    subprocess.run(argv, **quiet)
    print(time.perf_counter() - started)
"""

#: In the guest: per line, runc create + start of the bundle argv[1] until the init's first output byte.
START_FLOOR = """\
import os, subprocess, sys
import time
bundle, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for number in range(count + 1):
    name = f"{prefix}-{number}"
    read_end, write_end = os.pipe()
    started = time.perf_counter()
    subprocess.run(["runc", "create", "--bundle", bundle, name], stdin=subprocess.DEVNULL, stdout=write_end,
                   check=True)
    os.close(write_end)
    subprocess.run(["runc", "start", name], check=True)
    first = os.read(read_end, 1)
    elapsed = time.perf_counter() - started
    os.close(read_end)
    subprocess.run(["runc", "delete", "--force", name], check=True)
    if not first:
        sys.exit(f"{name}: no output")
    if number:  # the first is the warm-up
        print(elapsed)
"""


def _in_guest(client: AgentClient, script: str, args: list[str], count: int, scratch: str,
              name: str) -> Callable[[], list[float]]:
    """One bare exec of a Python loop in the guest per call; its ``count`` printed times are the samples."""
    numbers = itertools.count()
    spec = ProcessSpec(args=["python3", "-c", script, *args, str(count)], env=[GUEST_PATH])

    def once() -> list[float]:
        path = os.path.join(scratch, f"{name}.out")
        made = client.create_exec(f"bench-{name}", f"floor-{next(numbers)}", spec, Stdio(stdout=path, stderr=path))
        made.start()
        status = made.wait(timeout=600)
        made.delete()
        with open(path) as out:
            text = out.read()
        os.unlink(path)
        samples = []
        for line in text.splitlines():
            try:
                samples.append(float(line))
            except ValueError:
                pass
        if status.exit_status != 0 or len(samples) != count:
            raise RuntimeError(f"{name}: exit {status.exit_status}, {len(samples)} of {count} samples: {text[-500:]}")
        return samples

    return once


class _FirstByte:
    """A stdout target that notes when the first byte arrived."""

    def __init__(self) -> None:
        self.at = 0.0
        self.arrived = threading.Event()

    def write(self, data: bytes) -> int:
        if not self.arrived.is_set():
            self.at = time.perf_counter()
            self.arrived.set()
        return len(data)


def _start_case(client: AgentClient, share: BundleShare, scratch: str) -> Callable[[], list[float]]:
    numbers = itertools.count()

    def once() -> list[float]:
        number = next(numbers)
        bundle = make_bundle(os.path.join(scratch, f"start-{number}"), GREETER)
        first = _FirstByte()
        started = time.perf_counter()
        task = client.create_task(f"bench-start-{os.getpid()}-{number}", bundle.path, Stdio(stdout=cast(BinaryIO, first)),
                                  rootfs=bundle.rootfs, share=share)
        try:
            task.init.start()
            if not first.arrived.wait(60):
                raise RuntimeError(f"{task.id}: no output from the init in 60 s")
            elapsed = first.at - started
            task.init.wait(timeout=60)
        finally:
            if task.init.state is ExecState.RUNNING:
                task.init.force_exit(255)
            task.delete()
            shutil.rmtree(bundle.path, ignore_errors=True)
        return [elapsed]

    return once


def run(options: Options) -> list[FamilyResult]:
    from vm_images import boot, build_image

    options.progress("guest tasks: building (or reusing) the image")
    image = build_image()
    scratch = tempfile.mkdtemp(prefix="uvm-bench-guest-tasks-", dir=options.scratch)
    exec_result = FamilyResult("guest-task-exec", "in the QEMU guest: lifecycle of true exec'd in a running container")
    start_result = FamilyResult("guest-task-start", "in the QEMU guest: container start to the init's first output byte")
    rounds, per_round = options.pick(2, 8), options.pick(4, 10)
    phases: dict[str, list[float]] = {}
    try:
        with boot(image) as info, AgentClient.connect(info.agent_endpoint, server_key=info.server_key,
                                                      client_key=info.client_key, timeout=30) as client:
            options.progress(f"guest tasks: ready after {info.boot_seconds:.1f} s ({info.accel})")
            share = BundleShare(info.share_dir, info.guest_share_dir)
            task_id = f"bench-task-{os.getpid()}"
            bundle = make_bundle(os.path.join(scratch, "sleeper"), SLEEPER)
            task = client.create_task(task_id, bundle.path, rootfs=bundle.rootfs, share=share)
            try:
                task.init.start()
                exec_cases = {
                    "guest floor: runc exec true, in the guest": _in_guest(
                        client, EXEC_FLOOR, [task_id], per_round, scratch, "exec-floor"),
                    "create_task exec true": lifecycle_case(
                        lambda tid, eid, spec, stdio: task.create_exec(eid, spec, stdio), task_id, phases),
                }
                options.progress(f"guest tasks: exec, {rounds} rounds x {per_round}")
                exec_samples = interleave(exec_cases, rounds=rounds, per_round=per_round, warmup=options.pick(1, 2),
                                          calls={"guest floor: runc exec true, in the guest": 1},
                                          progress=lambda message: options.progress(f"guest tasks exec: {message}"))
            finally:
                task.init.force_exit(255)
                task.delete()
            greeter = make_bundle(os.path.join(scratch, "greeter"), GREETER)
            placed = SharedBundle(share, f"bench-start-floor-{os.getpid()}", greeter.path, greeter.rootfs)
            try:
                start_rounds, start_per_round = options.pick(2, 4), options.pick(2, 5)
                start_cases = {
                    "guest floor: runc create+start, in the guest": _in_guest(
                        client, START_FLOOR, [placed.guest_path, f"floor-{os.getpid()}"],
                        start_per_round, scratch, "start-floor"),
                    "create_task + init.start": _start_case(client, share, scratch),
                }
                options.progress(f"guest tasks: start, {start_rounds} rounds x {start_per_round}")
                start_samples = interleave(
                    start_cases, rounds=start_rounds, per_round=start_per_round, warmup=1,
                    calls={"guest floor: runc create+start, in the guest": 1},
                    progress=lambda message: options.progress(f"guest tasks start: {message}"))
            finally:
                placed.remove()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    floor = exec_result.add("guest floor: runc exec true, in the guest",
                            exec_samples["guest floor: runc exec true, in the guest"], is_baseline=True)
    exec_result.add("create_task exec true", exec_samples["create_task exec true"]).compare(floor, NEAR_FLOOR)
    exec_result.notes.append(f"create_task exec true, median per call: {describe_phases(phases)}")
    exec_result.notes.append(f"guest: {info.accel.upper()}, kernel {info.kernel_release}, booted to the agent's "
                             f"hello in {info.boot_seconds:.1f} s; bundles on the VM's virtio-9p share")
    start_floor = Figure("guest floor: runc create+start, in the guest",
                         start_samples["guest floor: runc create+start, in the guest"], is_baseline=True)
    uvm_start = Figure("create_task + init.start", start_samples["create_task + init.start"])
    uvm_start.compare(start_floor)
    start_result.figures = [start_floor, uvm_start]
    difference = median(uvm_start.samples) - median(start_floor.samples)
    start_result.notes.append(f"create_task + init.start {'more' if difference >= 0 else 'less'} than the floor by "
                              f"{format_time(abs(difference))} (medians): the host's mounts on the share, "
                              "config.json, the round trips; runc itself dominates both under TCG")
    return [exec_result.finish(), start_result.finish()]
