"""Profile the hot paths on both sides with py-spy, and time their parts in isolation.

::

    python -m bench.profile status|lifecycle|stream [--seconds 10] [--rate 250] [--out DIR] [--native]
    python -m bench.profile guest-status|guest-lifecycle   # the agent in the QEMU guest (bench.guest_profile)
    python -m bench.profile breakdown     # see bench.ladder

A workload runs against a local agent over ipc while ``py-spy record`` samples
the agent process and this client process (every thread). The summary shows,
per thread, how busy it was (samples / (rate x seconds)) and the functions
with the most samples, by self and by inclusive time; the raw collapsed
stacks are kept in ``--out`` for flame graphs. ``breakdown`` decomposes a
``status()`` round trip into floors and pieces (:mod:`bench.ladder`).

Needs ``py-spy`` (``pip install py-spy``) for the recordings; ``breakdown``
runs without it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from common import ProcessSpec, Stdio

from .lifecycle import lifecycle_case
from .measure import median
from .services import Services
from .throughput import exec_producer

_LINE_NUMBER = re.compile(r":\d+\)$")


# -- workloads ---------------------------------------------------------------------------------


def _workload(name: str, services: Services, out_dir: str) -> tuple[Callable[[], object], int]:
    """One iteration of the named workload against a fresh ipc agent, and that agent's pid."""
    agent = services.agent(services.ipc("agent"))
    if name == "status":
        proxied = agent.client.create_exec("profile", "status", ProcessSpec(args=["true"]), Stdio())
        services.defer(proxied.delete)
        return proxied.status, agent.pid
    if name == "lifecycle":
        return lifecycle_case(agent.client.create_exec, "profile-life"), agent.pid
    if name == "stream":
        produce = exec_producer(agent.client.create_exec, "profile-stream", 256 * 1024 * 1024)
        path = os.path.join(out_dir, "stream.out")

        def stream() -> None:
            produce(path)
            os.unlink(path)

        return stream, agent.pid
    raise ValueError(name)


def _spy(pid: int, output: str, seconds: float, rate: int, native: bool) -> subprocess.Popen[bytes]:
    command = ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--threads", "--nonblocking",
               "--rate", str(rate), "--duration", str(int(seconds)), "--output", output]
    if native:
        command.append("--native")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize(path: str, rate: int, seconds: float, top: int) -> str:
    """Per thread: busy fraction, then the top functions by self and by inclusive samples."""
    self_counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    with open(path) as stacks:
        for line in stacks:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            thread, *frames = stack.split(";")
            thread = thread.split(": ", 1)[-1]
            frames = [_LINE_NUMBER.sub(")", frame) for frame in frames] or ["(no python frame)"]
            count = int(count_text)
            totals[thread] += count
            self_counts[thread][frames[-1]] += count
            for frame in set(frames):
                inclusive[thread][frame] += count
    lines = []
    for thread, total in totals.most_common():
        lines.append(f"  thread {thread}: {total} samples, busy {100 * total / (rate * seconds):.0f}% of the time")
        for title, counter in (("self", self_counts[thread]), ("inclusive", inclusive[thread])):
            lines.append(f"    top {title}:")
            for frame, count in counter.most_common(top):
                lines.append(f"      {100 * count / total:5.1f}%  {frame}")
    return "\n".join(lines)


def record(workload: str, seconds: float, rate: int, out_dir: str, native: bool, top: int) -> None:
    if shutil.which("py-spy") is None:
        sys.exit("bench.profile: py-spy is not installed (pip install py-spy)")
    os.makedirs(out_dir, exist_ok=True)
    with Services("uvm-bench-profile-") as services:
        once, agent_pid = _workload(workload, services, out_dir)
        for _ in range(20):
            once()  # warm up before sampling starts
        outputs = {"agent": os.path.join(out_dir, f"{workload}-agent.txt"),
                   "client": os.path.join(out_dir, f"{workload}-client.txt")}
        spies = [_spy(agent_pid, outputs["agent"], seconds, rate, native),
                 _spy(os.getpid(), outputs["client"], seconds, rate, native)]
        time.sleep(1.0)  # py-spy attaches
        durations = []
        deadline = time.monotonic() + seconds + 1.0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            once()
            durations.append(time.perf_counter() - started)
        for spy in spies:
            _, errors = spy.communicate(timeout=60)
            if spy.returncode != 0:
                print(errors.decode(errors="replace"), file=sys.stderr)
    print(f"{workload}: {len(durations)} iterations while sampling, median {median(durations) * 1e6:.0f} µs "
          f"(py-spy --nonblocking at {rate} Hz slows them somewhat)")
    for side, path in outputs.items():
        print(f"\n{side} ({path}):")
        print(summarize(path, rate, seconds, top))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=["status", "lifecycle", "stream", "guest-status", "guest-lifecycle",
                                             "breakdown"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "uvmexec-bench-profiles"),
                        help="where the collapsed stacks go (default: %(default)s)")
    parser.add_argument("--native", action="store_true", help="include C frames (zmq, msgpack, the kernel calls)")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if args.workload == "breakdown":
        from .ladder import ladder, pieces

        print("round trip over ipc, interleaved (CPU: per round trip, whole process, all threads):")
        ladder()
        print("\npieces of one status() round trip, timed alone:")
        pieces()
    elif args.workload.startswith("guest-"):
        from .guest_profile import profile_guest

        profile_guest(args.workload.removeprefix("guest-"), max(args.seconds, 20.0), min(args.rate, 100),
                      args.out, args.top, args.native)
    else:
        record(args.workload, args.seconds, args.rate, args.out, args.native, args.top)


if __name__ == "__main__":
    main()
