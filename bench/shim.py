"""The containerd shim: ``containerd-shim-uvmexec-v1`` (process isolation) against containerd's own runc v2 shim.

One private containerd (own config, root, state and sockets; the CRI plugin
off; :mod:`host_proxy.shim.testbed`, as the shim's tests use) with the
project's busybox image imported serves every case; both runtimes run in it,
interleaved:

- ``shim_exec``: ``ctr task exec`` of ``true`` into a running container
  (its init sleeps) through our shim and through ``io.containerd.runc.v2``
  (the baseline). Target: at most 1.0×.
- ``shim_run``: ``ctr run --rm`` of ``true`` to its exit through each (no
  target stated: shown against the runc shim), then where our shim's time
  goes in such a run: medians of traced runs, from the start and delete
  commands' own begin and end (noted by the wrapper containerd runs as
  ``containerd-shim-uvmexec-v1``) and the server's debug log (``-debug``:
  when it serves, its private agent's spawn and ready line, and when each
  ttRPC call arrived and was answered), kept by a hard link since containerd
  removes the bundle. Untraced runs carry none of it.
- ``shim_memory``: RSS (and PSS, private) of our shim's processes for one
  running container — the server and its private agent, each listed — next
  to the runc shim's RSS, measured in the same run. Target: at most 40 MiB
  for our shim's processes together (shown as a ratio to a 40 MiB figure).

Nothing is left behind: the containers are removed and containerd stopped,
and a process, mount or shim socket that outlived it is an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from host_proxy.shim.testbed import (
    PROJECT,
    RUNC_RUNTIME,
    RUNTIME,
    SHIM,
    Containerd,
    start_containerd,
    stop_containerd,
)
from vm_images.oci_image import DEFAULT_REF, write_image_tarball

from .measure import Options, interleave, median
from .report import FamilyResult, Target

EXEC_TARGET = Target("<=", 1.0)
MEMORY_TARGET_MIB = 40.0
MEMORY_TARGET = Target("<=", 1.0)  # of the target's own figure
OURS = "uvmexec shim"
RUNC = "runc v2 shim"

#: What containerd runs as a shim (ours: this checkout's; runc's: the real binary), through ``sh``: while
#: ``DIR/trace`` exists it also notes each command's begin and end (wall clock) and the CPU time of the
#: command's process (``times``: the children line), and keeps our server's log by a hard link that outlives
#: the bundle. Untraced, it only execs (both shims pay that one ``sh``).
WRAPPER = """#!/bin/sh
{setup}
if [ ! -e {dir}/trace ]; then
  exec {command} "$@"
fi
id=; previous=; command=
for argument; do [ "$previous" = -id ] && id=$argument; previous=$argument; command=$argument; done
began=$(date +%s.%N)
{command} {trace_flags} "$@"
status=$?
ended=$(date +%s.%N)
exec 3>>{dir}/trace.log
printf '%s %s %s %s ' "$id" "$command" "$began" "$ended" >&3
times >&3
if [ "$command" = start ] && [ -e shim.log ]; then ln -f shim.log {dir}/logs/"$id".log; fi
exit $status
"""
RUNC_SHIM = "containerd-shim-runc-v2"
PR_SET_CHILD_SUBREAPER = 36


def _wrapper_dir(bench_dir: str, runc_shim: str) -> Callable[[str], str]:
    def make(directory: str) -> str:
        bin_dir = os.path.join(bench_dir, "bin")
        os.makedirs(bin_dir, exist_ok=True)
        os.makedirs(os.path.join(bench_dir, "logs"), exist_ok=True)
        for name, setup, command, trace_flags in (
                (SHIM, f"PYTHONPATH={PROJECT}; export PYTHONPATH", f"{sys.executable} -m host_proxy.shim", "-debug"),
                (RUNC_SHIM, "", runc_shim, "")):
            wrapper = os.path.join(bin_dir, name)
            with open(wrapper, "w") as script:
                script.write(WRAPPER.format(dir=bench_dir, setup=setup, command=command, trace_flags=trace_flags))
            os.chmod(wrapper, 0o755)
        return bin_dir
    return make


def _check(done: subprocess.CompletedProcess[bytes], what: str) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited with {done.returncode}: {done.stderr.decode(errors='replace').strip()}")


# -- memory ----------------------------------------------------------------------------------


@dataclass
class Memory:
    name: str
    pid: int
    rss_kib: int
    pss_kib: int
    private_kib: int

    def describe(self) -> str:
        return (f"{self.name} (pid {self.pid}) RSS {self.rss_kib / 1024:.1f} MiB, PSS {self.pss_kib / 1024:.1f} MiB, "
                f"private {self.private_kib / 1024:.1f} MiB")


def _memory(name: str, pid: int) -> Memory:
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return Memory(name, pid, fields.get("Rss", 0), fields.get("Pss", 0),
                  fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0))


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _shim_processes(daemon: Containerd, container_id: str) -> list[tuple[str, int]]:
    """(role, pid) of the shim processes serving ``container_id``: a shim server, and its children."""
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    found = []
    for pid in pids:
        words = _cmdline(pid)
        if "-address" in words and daemon.address in words and "-id" in words and container_id in words \
                and "start" not in words and "delete" not in words:
            role = "runc shim" if os.path.basename(words[0]).startswith("containerd-shim-runc") else "shim server"
            found.append((role, pid))
    for _, server in list(found):
        for pid in pids:
            if _ppid(pid) == server:
                words = _cmdline(pid)
                if "guest_agent" in words:
                    found.append(("private agent", pid))
    return found


# -- the traced runs ---------------------------------------------------------------------------

#: (phase, from event, to event): the breakdown of one traced ``ctr run --rm`` through our shim.
PHASES = (
    ("ctr until the start command runs", "ctr", "start began"),
    ("start command (binds, spawns the server, prints the address)", "start began", "start ended"),
    ("server up (its interpreter and imports, until it serves)", "start ended", "serving"),
    ("Create (arrival to answer)", "Create called", "Create answered"),
    ("  of which the private agent (spawn to ready)", "agent spawned", "agent ready"),
    ("Create answered to Start called", "Create answered", "Start called"),
    ("Start (arrival to answer)", "Start called", "Start answered"),
    ("Start answered to Wait answered (true runs and exits)", "Start answered", "Wait answered"),
    ("Wait answered to Delete answered", "Wait answered", "Delete answered"),
    ("Delete answered to Shutdown answered", "Delete answered", "Shutdown answered"),
    ("Shutdown answered to the delete command", "Shutdown answered", "delete began"),
    ("delete command (cleanup after the shim)", "delete began", "delete ended"),
    ("delete command ended to ctr's exit", "delete ended", "ctr exited"),
)


#: Hypervisor isolation's run, in order: the Create boots the VM.
GUEST_PHASES = (
    ("ctr until the start command runs", "ctr", "start began"),
    ("start command", "start began", "start ended"),
    ("server up (its interpreter and imports, until it serves)", "start ended", "serving"),
    ("Create (arrival to answer)", "Create called", "Create answered"),
    ("  of which QEMU start to the agent's hello (VM boot)", "QEMU started", "VM ready"),
    ("  of which the rest: connect, the rootfs on the share, config.json, runc create in the guest", "VM ready",
     "Create answered"),
    ("Create answered to Start called", "Create answered", "Start called"),
    ("Start (runc start in the guest)", "Start called", "Start answered"),
    ("Start answered to Wait answered (true runs and exits)", "Start answered", "Wait answered"),
    ("Wait answered to Delete answered", "Wait answered", "Delete answered"),
    ("Delete answered to Shutdown answered (the VM is stopped after)", "Delete answered", "Shutdown answered"),
    ("Shutdown answered to ctr's exit", "Shutdown answered", "ctr exited"),
)
GUEST_EXEC_TARGET = Target("<=", 1.3)


def _log_time(line: str) -> float | None:
    # logging's default asctime: "2026-12-03 13:05:27,162" (local time)
    try:
        stamp = time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
        return time.mktime(stamp) + int(line[20:23]) / 1000
    except ValueError:
        return None


def _server_events(path: str) -> dict[str, float]:
    events: dict[str, float] = {}
    with open(path, errors="replace") as log:
        for line in log:
            moment = _log_time(line)
            if moment is None:
                continue
            if "ttrpc: serving" in line:
                events.setdefault("serving", moment)
            elif "private agent" in line and ": ready after" in line:
                # "private agent PID: ready after 0.316 s": spawned that long before (it may be spawned before
                # the server configured its log)
                events.setdefault("agent ready", moment)
                events.setdefault("agent spawned", moment - float(line.split(": ready after ")[1].split()[0]))
            elif "utility VM up:" in line and ", boot " in line:
                # "utility VM up: QEMU pid N, tcg, boot 9.8s, kernel ...": QEMU started that long before
                events.setdefault("VM ready", moment)
                events.setdefault("QEMU started", moment - float(line.split(", boot ")[1].split("s")[0]))
            elif "ttrpc: " in line and (" called " in line or " answered " in line):
                words = line.split("ttrpc: ", 1)[1].split()
                events.setdefault(f"{words[0]} {words[1]}", moment)  # the first of each: the init's
    return events


def _minutes_seconds(text: str) -> float:
    minutes, _, seconds = text.rstrip("s").partition("m")
    return int(minutes) * 60 + float(seconds)


def _wrapper_records(bench_dir: str, container_id: str) -> dict[str, float]:
    """From trace.log: each command's begin and end, and the CPU seconds of its process (``times``)."""
    found: dict[str, float] = {}
    with open(os.path.join(bench_dir, "trace.log")) as trace:
        lines = trace.read().splitlines()
    for line, children in zip(lines, lines[1:], strict=False):
        # "ID COMMAND BEGAN ENDED <shell user> <shell sys>" then "<children user> <children sys>"
        words = line.split()
        if len(words) == 6 and words[0] == container_id:
            found[f"{words[1]} began"] = float(words[2])
            found[f"{words[1]} ended"] = float(words[3])
            found[f"{words[1]} cpu"] = sum(_minutes_seconds(word) for word in children.split())
    return found


#: This process's own children when it became a subreaper (containerd; a private agent an earlier
#: family started for its tasks): never taken for adopted shims.
_OWN_CHILDREN: set[int] = set()


def _adopted(exclude: int) -> list[int]:
    """This process's children other than ``exclude`` (containerd) and its own from before it became a
    subreaper: shims it adopted as a subreaper."""
    mine = os.getpid()
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != exclude
            and int(entry) not in _OWN_CHILDREN and _ppid(int(entry)) == mine]


def _reap(pid: int, timeout: float = 30.0) -> float:
    """Wait (on a pidfd, at most ``timeout``) for an adopted shim to end; its CPU seconds and its reaped
    children's (wait4's rusage)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return 0.0
    try:
        if not select.select([pidfd], [], [], timeout)[0]:
            raise RuntimeError(f"adopted shim process {pid} ({' '.join(_cmdline(pid))}) did not end")
    finally:
        os.close(pidfd)
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_utime + usage.ru_stime


def _traced_run(daemon: Containerd, bench_dir: str, container_id: str, runtime: str) -> dict[str, float]:
    """One ``ctr run --rm true`` with the trace on: event name -> wall-clock time, and "X cpu" -> seconds.

    This process is a child subreaper meanwhile (the caller's doing): the shim's long-lived process, once
    its start command exits, is its child, and reaping it tells its CPU time with its private agent's.
    """
    began = time.time()
    done = daemon.ctr(*daemon.run_args(container_id, "true", extra=("--rm",), runtime=runtime), check=False)
    events = {"ctr": began, "ctr exited": time.time()}
    _check(done, f"ctr run --rm {container_id} true ({runtime})")
    assert daemon.process is not None
    events["server cpu"] = sum(_reap(pid) for pid in _adopted(daemon.process.pid))
    events.update(_wrapper_records(bench_dir, container_id))
    log = os.path.join(bench_dir, "logs", f"{container_id}.log")
    if os.path.exists(log):
        events.update(_server_events(log))
        os.unlink(log)
    return events


@contextlib.contextmanager
def _subreaper(daemon: Containerd) -> Iterator[None]:
    """This process adopts orphans meanwhile; at the end it reaps what it adopted and stops adopting."""
    libc = ctypes.CDLL(None, use_errno=True)
    mine = os.getpid()
    _OWN_CHILDREN.clear()
    _OWN_CHILDREN.update(int(entry) for entry in os.listdir("/proc") if entry.isdigit() and _ppid(int(entry)) == mine)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        if daemon.process is not None:
            for pid in _adopted(daemon.process.pid):
                _reap(pid)


# -- the family ------------------------------------------------------------------------------


def run(options: Options) -> list[FamilyResult]:
    exec_result = FamilyResult("shim_exec", "containerd: ctr task exec of true in a running container, "
                                            "our shim vs the runc v2 shim")
    run_result = FamilyResult("shim_run", "containerd: ctr run --rm of true to exit, our shim vs the runc v2 shim")
    memory_result = FamilyResult("shim_memory", "containerd: memory of the shim processes of one running container")
    guest_exec = FamilyResult("shim_guest_exec", "containerd, hypervisor isolation: ctr task exec of true in a "
                                                 "running container vs runc exec run inside the guest")
    guest_run = FamilyResult("shim_guest_run", "containerd, hypervisor isolation: ctr run --rm of true to exit, "
                                               "VM boot included, broken down")
    missing = [tool for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2") if shutil.which(tool) is None]
    if missing:
        for result in (exec_result, run_result, memory_result):
            result.notes.append(f"skipped: {', '.join(missing)} not installed (.ci/setup installs them)")
        return [result.finish() for result in (exec_result, run_result, memory_result, guest_exec, guest_run)]
    bench_dir = tempfile.mkdtemp(prefix="uvm-bench-shim-", dir="/tmp")
    daemon: Containerd | None = None
    try:
        image = os.path.join(bench_dir, "busybox.tar")
        write_image_tarball(image)
        options.progress("shim: starting a private containerd")
        env = dict(os.environ)
        if env.pop("PYTHONDONTWRITEBYTECODE", ""):
            # As installed, the shim's modules have their bytecode; without it every interpreter the shim starts
            # would compile the project's sources again. A private cache, filled by the warm-up runs:
            env["PYTHONPYCACHEPREFIX"] = os.path.join(bench_dir, "pycache")
            exec_result.notes.append("PYTHONDONTWRITEBYTECODE is set here: containerd (and so every shim) got a "
                                     "private bytecode cache instead (PYTHONPYCACHEPREFIX), as an installed "
                                     "package has its bytecode")
        runc_shim = shutil.which(RUNC_SHIM)
        assert runc_shim is not None
        daemon = start_containerd(image, DEFAULT_REF, shim_dir=_wrapper_dir(bench_dir, runc_shim), env=env)
        _exec_and_memory(daemon, exec_result, memory_result, options)
        _runs(daemon, bench_dir, run_result, options)
    except Exception as error:
        exec_result.errors.append(f"{type(error).__name__}: {error}")
    try:
        if daemon is not None:
            _hypervisor(daemon, bench_dir, guest_exec, guest_run, memory_result, options)
    except Exception as error:
        guest_exec.errors.append(f"{type(error).__name__}: {error}")
    finally:
        if daemon is not None:
            found = stop_containerd(daemon)
            if found:
                exec_result.errors.append(f"left behind after containerd stopped: {found}")
        shutil.rmtree(bench_dir, ignore_errors=True)
    return [result.finish() for result in (exec_result, memory_result, run_result, guest_exec, guest_run)]


def _exec_and_memory(daemon: Containerd, result: FamilyResult, memory: FamilyResult, options: Options) -> None:
    containers = {OURS: ("bench-ours", RUNTIME), RUNC: ("bench-runc", RUNC_RUNTIME)}
    for container_id, runtime in containers.values():
        daemon.ctr(*daemon.run_args(container_id, "sleep", "1000000", extra=("-d",), runtime=runtime))
    try:
        numbers = itertools.count()

        def exec_case(container_id: str) -> Callable[[], None]:
            def once() -> None:
                exec_id = f"e{next(numbers)}"
                _check(daemon.ctr("task", "exec", "--fifo-dir", daemon.fifo_dir, "--exec-id", exec_id,
                                  container_id, "true", check=False), f"ctr task exec {container_id} true")
            return once

        cases = {f"ctr task exec true, {name}": exec_case(container_id)
                 for name, (container_id, _) in containers.items()}
        rounds, per_round = options.pick(3, 6), options.pick(3, 10)
        options.progress(f"shim: exec, {len(cases)} cases, {rounds} rounds x {per_round}")
        samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=options.pick(2, 5),
                             progress=lambda message: options.progress(f"shim: exec {message}"))
        base = result.add(f"ctr task exec true, {RUNC}", samples[f"ctr task exec true, {RUNC}"], is_baseline=True)
        result.add(f"ctr task exec true, {OURS}", samples[f"ctr task exec true, {OURS}"]).compare(base, EXEC_TARGET)
        _memory_figures(daemon, memory, containers)
    finally:
        for container_id, _ in containers.values():
            daemon.ctr("task", "kill", "-s", "KILL", container_id, check=False)
            daemon.ctr("task", "rm", "-f", container_id, check=False)
            daemon.ctr("containers", "rm", container_id, check=False)


def _memory_figures(daemon: Containerd, result: FamilyResult, containers: dict[str, tuple[str, str]]) -> None:
    ours = [_memory(role, pid) for role, pid in _shim_processes(daemon, containers[OURS][0])]
    theirs = [_memory(role, pid) for role, pid in _shim_processes(daemon, containers[RUNC][0])]
    if not ours or not theirs:
        raise RuntimeError(f"shim processes not found (ours {ours}, runc {theirs})")
    kib = 1024
    base = result.add(f"RSS, {RUNC}", [sum(m.rss_kib for m in theirs) * kib], unit="bytes", is_baseline=True)
    target = result.add(f"the target ({MEMORY_TARGET_MIB:g} MiB)", [MEMORY_TARGET_MIB * kib * kib], unit="bytes",
                        is_baseline=True)
    total = result.add(f"RSS, {OURS} (server + private agent)", [sum(m.rss_kib for m in ours) * kib], unit="bytes")
    total.compare(target, MEMORY_TARGET)
    total.compare(base)
    for memory in ours:
        result.add(f"  RSS, {memory.name}", [memory.rss_kib * kib], unit="bytes").compare(base)
    result.add(f"PSS, {OURS} (server + private agent)", [sum(m.pss_kib for m in ours) * kib],
               unit="bytes").compare(target)
    result.add(f"private, {OURS} (server + private agent)", [sum(m.private_kib for m in ours) * kib],
               unit="bytes").compare(target)
    result.notes.append("one running container each (its init sleeps), after the exec cases; private = "
                        "Private_Clean + Private_Dirty of smaps_rollup (what no other process shares)")
    for memory in ours + theirs:
        result.notes.append(memory.describe())


def _runs(daemon: Containerd, bench_dir: str, result: FamilyResult, options: Options) -> None:
    numbers = itertools.count()

    def run_case(runtime: str) -> Callable[[], None]:
        def once() -> None:
            container_id = f"run{next(numbers)}"
            _check(daemon.ctr(*daemon.run_args(container_id, "true", extra=("--rm",), runtime=runtime), check=False),
                   f"ctr run --rm {container_id} true ({runtime})")
        return once

    cases = {f"ctr run --rm true, {RUNC}": run_case(RUNC_RUNTIME), f"ctr run --rm true, {OURS}": run_case(RUNTIME)}
    rounds, per_round = options.pick(2, 5), options.pick(1, 2)
    options.progress(f"shim: run, {len(cases)} cases, {rounds} rounds x {per_round}")
    samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=1,
                         progress=lambda message: options.progress(f"shim: run {message}"))
    base = result.add(f"ctr run --rm true, {RUNC}", samples[f"ctr run --rm true, {RUNC}"], is_baseline=True)
    result.add(f"ctr run --rm true, {OURS}", samples[f"ctr run --rm true, {OURS}"]).compare(base)

    traced = options.pick(2, 5)
    options.progress(f"shim: {traced} traced runs each")
    phases: dict[str, list[float]] = {name: [] for name, _, _ in PHASES}
    cpu: dict[str, dict[str, list[float]]] = {OURS: {}, RUNC: {}}
    missing: set[str] = set()
    marker = os.path.join(bench_dir, "trace")
    open(marker, "w").close()
    try:
        with _subreaper(daemon):
            for index in range(traced):
                for name, runtime in ((RUNC, RUNC_RUNTIME), (OURS, RUNTIME)):
                    events = _traced_run(daemon, bench_dir, f"traced-{runtime.split('.')[2]}-{index}", runtime)
                    parts = {"start command": events.get("start cpu", 0.0),
                             "shim process (and what it reaped)": events["server cpu"],
                             "delete command": events.get("delete cpu", 0.0)}
                    for part, seconds in parts.items():
                        cpu[name].setdefault(part, []).append(seconds)
                    cpu[name].setdefault("all", []).append(sum(parts.values()))
                    if name != OURS:
                        continue
                    for phase, first, last in PHASES:
                        if first in events and last in events:
                            phases[phase].append(events[last] - events[first])
                        else:
                            missing.update({first, last} - set(events))
    finally:
        os.unlink(marker)
    cpu_base = result.add(f"CPU per run, {RUNC} (every process of it)", cpu[RUNC]["all"], is_baseline=True)
    result.add(f"CPU per run, {OURS} (every process of it)", cpu[OURS]["all"]).compare(cpu_base)
    for part in ("start command", "shim process (and what it reaped)", "delete command"):
        result.add(f"  CPU: {part}", cpu[OURS][part], note="traced runs")
    for name, _, _ in PHASES:
        if phases[name]:
            result.add(f"  phase: {name}", phases[name], note="traced runs")
    result.notes.append(
        f"traced runs ({traced} of each shim, alternating): CPU time moves far less with load than wall time — the "
        "start and delete commands' from the wrapper's `times`, the long-lived shim process's from wait4 (this "
        "process adopts it as a child subreaper), including what it reaped: our private agent, runc, the "
        "container's `true`")
    for name in (RUNC, OURS):
        result.notes.append(f"CPU per run, {name}: " + ", ".join(
            f"{part} {median(values) * 1000:.0f} ms" for part, values in cpu[name].items() if part != "all"))
    result.notes.append("phases: our shim's traced runs (wall clock: the wrapper's `date`, the server's debug "
                        "log to the millisecond); untraced runs carry no trace")
    if missing:
        result.notes.append(f"not seen in the trace: {', '.join(sorted(missing))}")
    whole = [phases[name] for name, _, _ in PHASES if phases[name] and not name.startswith(" ")]
    if whole:
        result.notes.append(f"traced phases add up to {sum(median(samples) for samples in whole):.3f} s")


# -- hypervisor isolation ----------------------------------------------------------------------


def _hypervisor(daemon: Containerd, bench_dir: str, exec_result: FamilyResult, run_result: FamilyResult,
                memory: FamilyResult, options: Options) -> None:
    """The same through our shim in hypervisor isolation: exec against the in-guest floor, memory of the
    shim per pod (the VM apart), and a traced ``ctr run --rm`` with the VM's boot in it."""
    from host_proxy import AgentClient
    from host_proxy.shim.sandbox import GUEST_INFO_NAME, RECORD_NAME
    from vm_images import build_image
    from vm_images.launch import GuestInfo

    from .guest_tasks import EXEC_FLOOR, _in_guest

    options.progress("shim, hypervisor: building (or reusing) the guest image")
    build_image()
    daemon.isolation = "hypervisor"
    container_id = "bench-guest"
    began = time.monotonic()
    daemon.ctr(*daemon.run_args(container_id, "sleep", "1000000", extra=("-d",)))
    exec_result.notes.append(f"ctr run -d of the container (VM boot included): {time.monotonic() - began:.1f} s")
    try:
        with open(os.path.join(daemon.bundle(container_id), RECORD_NAME)) as record:
            run_dir = json.load(record)["run_dir"]
        with open(os.path.join(run_dir, GUEST_INFO_NAME)) as info_file:
            info = GuestInfo.from_json(json.load(info_file))
        numbers = itertools.count()

        def exec_once() -> None:
            _check(daemon.ctr("task", "exec", "--fifo-dir", daemon.fifo_dir, "--exec-id", f"g{next(numbers)}",
                              container_id, "true", check=False), f"ctr task exec {container_id} true")

        rounds, per_round = options.pick(2, 5), options.pick(3, 10)
        floor_name, ours_name = "guest floor: runc exec true, in the guest", f"ctr task exec true, {OURS}"
        with AgentClient.connect(info.agent_endpoint, server_key=info.server_key, client_key=info.client_key,
                                 timeout=30) as client:
            scratch = tempfile.mkdtemp(prefix="floor-", dir=bench_dir)
            cases = {floor_name: _in_guest(client, EXEC_FLOOR, [container_id], per_round, scratch, "shim-floor"),
                     ours_name: exec_once}
            options.progress(f"shim, hypervisor: exec, {rounds} rounds x {per_round}")
            samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=options.pick(1, 3),
                                 calls={floor_name: 1},
                                 progress=lambda message: options.progress(f"shim, hypervisor: exec {message}"))
        floor = exec_result.add(floor_name, samples[floor_name], is_baseline=True)
        exec_result.add(ours_name, samples[ours_name]).compare(floor, GUEST_EXEC_TARGET)
        exec_result.notes.append(f"guest: {info.accel.upper()}, kernel {info.kernel_release}, booted by the shim "
                                 f"to the agent's hello in {info.boot_seconds:.1f} s")
        shim = [_memory(role, pid) for role, pid in _shim_processes(daemon, container_id)]
        if shim:
            target = memory.add(f"the target ({MEMORY_TARGET_MIB:g} MiB), hypervisor", [MEMORY_TARGET_MIB * 1024 * 1024],
                                unit="bytes", is_baseline=True)
            memory.add(f"RSS, {OURS}, hypervisor isolation (one pod; QEMU apart)",
                       [sum(m.rss_kib for m in shim) * 1024], unit="bytes").compare(target, MEMORY_TARGET)
            memory.notes.extend(f"hypervisor: {m.describe()}" for m in shim)
            memory.notes.append(f"hypervisor: QEMU itself (the VM, {info.accel}) RSS "
                                f"{_memory('qemu', info.pid).rss_kib / 1024:.0f} MiB, not counted")
    finally:
        daemon.ctr("task", "kill", "-s", "KILL", container_id, check=False)
        daemon.ctr("task", "rm", "-f", container_id, check=False)
        daemon.ctr("containers", "rm", container_id, check=False)

    traced = options.pick(1, 3)
    options.progress(f"shim, hypervisor: {traced} traced runs")
    phases: dict[str, list[float]] = {name: [] for name, _, _ in GUEST_PHASES}
    totals: list[float] = []
    marker = os.path.join(bench_dir, "trace")
    open(marker, "w").close()
    try:
        with _subreaper(daemon):
            for index in range(traced):
                events = _traced_run(daemon, bench_dir, f"guest-run-{index}", RUNTIME)
                totals.append(events["ctr exited"] - events["ctr"])
                for phase, first, last in GUEST_PHASES:
                    if first in events and last in events:
                        phases[phase].append(events[last] - events[first])
    finally:
        os.unlink(marker)
        daemon.isolation = "process"
    run_result.add(f"ctr run --rm true, {OURS}, hypervisor isolation", totals, note="traced runs")
    for name, _, _ in GUEST_PHASES:
        if phases[name]:
            run_result.add(f"  phase: {name}", phases[name], note="traced runs")
    run_result.notes.append("no target: the VM's boot under TCG dominates; the phases come from the start "
                            "command's wrapper and the server's debug log")
