"""Timing, statistics, memory and machine helpers shared by every benchmark family.

Machines here are shared and noisy, so a figure is only ever compared with a
baseline measured *in the same invocation*, interleaved with it:
:func:`interleave` runs every case a few iterations at a time, round after
round, rotating the order, so that load changes hit all cases alike.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

@dataclass
class Options:
    """What every family is run with."""

    full: bool = False
    #: Directory for output files (the throughput targets); None: the system's temporary directory.
    scratch: str | None = None
    progress: Callable[[str], None] = field(default=lambda message: None)

    def pick(self, quick: T, full: T) -> T:
        return full if self.full else quick


#: A case runs one iteration. It returns None (the harness times the call) or
#: a list of samples in seconds that it measured itself (e.g. inside a guest).
CaseFn = Callable[[], Any]


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in (0, 1]): an observed sample, never an interpolation."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def time_call(fn: CaseFn) -> list[float]:
    """Run ``fn`` once: its own samples if it returns some, else its wall time."""
    started = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - started
    if isinstance(result, list):
        return [float(sample) for sample in result]
    return [elapsed]


def interleave(
    cases: Mapping[str, CaseFn],
    *,
    rounds: int,
    per_round: int,
    warmup: int,
    calls: dict[str, int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Samples per case, measured in ``rounds`` rounds of ``per_round`` iterations per case.

    Each case first runs ``warmup`` unmeasured iterations. The case order
    rotates every round, so no case always runs right after the same neighbour.
    ``calls`` overrides ``per_round`` for cases that return many samples per call.
    """
    names = list(cases)
    calls = calls or {}
    for name in names:
        for _ in range(warmup):
            cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = cases[name]
            for _ in range(calls.get(name, per_round)):
                samples[name].extend(time_call(fn))
        if progress is not None:
            progress(f"round {round_index + 1}/{rounds}")
    return samples


# -- memory ----------------------------------------------------------------------------


def _status_field(pid: int | str, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key == field:
                    return int(value.split()[0])
    except OSError:
        return None
    return None


def peak_rss_kib(pid: int | str = "self") -> int | None:
    """VmHWM of ``pid`` in KiB (None if the process is gone)."""
    return _status_field(pid, "VmHWM")


def rss_kib(pid: int | str = "self") -> int | None:
    return _status_field(pid, "VmRSS")


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self", *, children: bool = False) -> float:
    """User + system CPU time of every thread of ``pid`` so far (plus its reaped children's, if asked)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    total = int(fields[11]) + int(fields[12])
    if children:
        total += int(fields[13]) + int(fields[14])
    return total / _TICKS


def cpu_per_call(fn: Callable[[], object], server_pid: int, count: int) -> tuple[float, float]:
    """(this process, ``server_pid``) CPU seconds per call of ``fn``, over ``count`` calls in a row."""
    client_before, server_before = cpu_seconds(), cpu_seconds(server_pid)
    for _ in range(count):
        fn()
    return (cpu_seconds() - client_before) / count, (cpu_seconds(server_pid) - server_before) / count


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset VmHWM to the current RSS (``/proc/PID/clear_refs`` "5"); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


# -- the machine -----------------------------------------------------------------------------


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def format_load(load: Iterable[float]) -> str:
    return " ".join(f"{value:.2f}" for value in load)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_total_gib() -> float:
    kib = 0
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    kib = int(line.split()[1])
    except OSError:
        pass
    return kib / 1024 / 1024


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    import msgpack
    import zmq

    try:
        with open("/etc/os-release") as release:
            pretty = next((line.split("=", 1)[1].strip().strip('"') for line in release
                           if line.startswith("PRETTY_NAME=")), "unknown")
    except OSError:
        pretty = "unknown"
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_total_gib(), 1),
        "os": pretty,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(str(part) for part in msgpack.version),
    }


def source_state(root: str) -> str:
    """The commit measured, and how many files differ from it (read-only git calls)."""
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        changed = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    if not commit:
        return "unknown (not a git checkout)"
    return f"{commit}" + (f" + {len(changed)} modified files" if changed else " (clean)")


def private_directory(prefix: str, parent: str | None = None) -> str:
    """A fresh 0700 directory (ipc sockets must live in one)."""
    return tempfile.mkdtemp(prefix=prefix, dir=parent)
