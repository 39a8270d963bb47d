"""Stdout throughput: ``head -c SIZE /dev/zero`` streamed into a host file, against ``LocalExec``.

Cases, interleaved run by run: ``head`` writing the file itself (no pump in
between; note that head writes 8 KiB at a time, which a pump that reads big
chunks from a 256 KiB pipe can beat), ``LocalExec`` (the supervisor's pump
in this process: the baseline), the raw two-process ceilings of a unix
socket and of pyzmq over ipc (:mod:`bench.rawpipe`), and ``ProxiedExec``
through a local agent over ipc (target: at least 0.5× ``LocalExec``) and tcp
with CURVE (for reference). Each run's
time covers create to delete; the file is checked for its size and removed
outside the timing. Memory must stay bounded: the peak RSS (VmHWM, reset
before each run) of the agent and of this client process is reported.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from common import Exec, ProcessSpec, Stdio
from common.supervisor.spawn import PIPE_SIZE
from host_proxy import LocalExec

from . import rawpipe
from .measure import Options, cpu_seconds, interleave, median, mib, peak_rss_kib, reset_peak_rss
from .rawpipe import RawPipe
from .report import FamilyResult, Target
from .services import Services

TARGET = Target(">=", 0.5)


def exec_producer(create: Callable[..., Exec], name: str, size: int) -> Callable[[str], None]:
    """Run ``head -c SIZE /dev/zero`` through the exec contract with stdout into the given path."""
    numbers = itertools.count()
    spec = ProcessSpec(args=["head", "-c", str(size), "/dev/zero"])

    def produce(path: str) -> None:
        made = create("bench-stream", f"{name}-{next(numbers)}", spec, Stdio(stdout=path))
        made.start()
        status = made.wait(timeout=600)
        made.delete()
        if status.exit_status != 0:
            raise RuntimeError(f"{name}: head exited with {status.exit_status}")

    return produce


def shell_producer(size: int) -> Callable[[str], None]:
    """``head`` writing the file itself: no process in between."""

    def produce(path: str) -> None:
        with open(path, "ab") as out:
            subprocess.run(["head", "-c", str(size), "/dev/zero"], stdout=out, check=True)

    return produce


class StreamCase:
    """One run: ``produce(path)`` must put ``size`` bytes into ``path``; keeps the peak RSS per process."""

    def __init__(self, name: str, path: str, size: int, produce: Callable[[str], None],
                 watched: dict[str, int] | None = None, servers: tuple[int, ...] = ()) -> None:
        self.name = name
        self.path = path
        self.size = size
        self.produce = produce
        self.watched = watched or {}  # label -> pid whose peak RSS is tracked
        self.peaks: dict[str, int] = {}
        #: Processes whose CPU time (with their reaped children's, e.g. head) counts, besides this one.
        self.cpu_pids: tuple[int | str, ...] = ("self", *servers)
        self.cpu: list[float] = []

    def _cpu_now(self) -> float:
        return sum(cpu_seconds(pid, children=True) for pid in self.cpu_pids)

    def __call__(self) -> list[float]:
        for pid in self.watched.values():
            reset_peak_rss(pid)
        cpu_before = self._cpu_now()
        started = time.perf_counter()
        self.produce(self.path)
        elapsed = time.perf_counter() - started
        self.cpu.append(self._cpu_now() - cpu_before)
        for label, pid in self.watched.items():
            peak = peak_rss_kib(pid)
            if peak is not None:
                self.peaks[label] = max(self.peaks.get(label, 0), peak)
        written = os.path.getsize(self.path)
        os.unlink(self.path)
        if written != self.size:
            raise RuntimeError(f"{self.name}: {written} bytes reached the file, not {self.size}")
        return [elapsed]


def run(options: Options) -> FamilyResult:
    size = options.pick(64, 1024) * 1024 * 1024
    rounds = options.pick(2, 5)
    result = FamilyResult("throughput", f"stdout throughput: head -c {size // 2**20}M /dev/zero into a host file")
    scratch = tempfile.mkdtemp(prefix="uvm-bench-out-", dir=options.scratch)
    try:
        with Services("uvm-bench-stream-") as services:
            ipc = services.agent(services.ipc("agent"))
            tcp = services.agent("tcp://127.0.0.1:0", curve=True)
            me = os.getpid()
            senders = {transport: services.rawpipe(transport) for transport in ("unix", "zmq")}
            pipes = {transport: RawPipe(transport, endpoint, size) for transport, (_, endpoint) in senders.items()}
            cases = {
                "head > file (no pump)": StreamCase("raw", f"{scratch}/raw", size, shell_producer(size)),
                "LocalExec": StreamCase("local", f"{scratch}/local", size, exec_producer(LocalExec, "local", size),
                                        {"client": me}),
                "raw unix socket pipe": StreamCase("unix", f"{scratch}/unix", size, pipes["unix"].produce,
                                                   servers=(senders["unix"][0].pid,)),
                "raw pyzmq ipc pipe": StreamCase("zmq", f"{scratch}/zmq", size, pipes["zmq"].produce,
                                                 servers=(senders["zmq"][0].pid,)),
                "uvmexec ipc": StreamCase("ipc", f"{scratch}/ipc", size,
                                          exec_producer(ipc.client.create_exec, "ipc", size),
                                          {"agent": ipc.pid, "client": me}, servers=(ipc.pid,)),
                "uvmexec tcp+curve": StreamCase("tcp", f"{scratch}/tcp", size,
                                                exec_producer(tcp.client.create_exec, "tcp", size),
                                                {"agent": tcp.pid, "client": me}, servers=(tcp.pid,)),
            }
            options.progress(f"throughput: {len(cases)} cases x {rounds} runs of {size // 2**20} MiB")
            try:
                samples = interleave(cases, rounds=rounds, per_round=1, warmup=1,
                                     progress=lambda message: options.progress(f"throughput: {message}"))
            finally:
                for pipe in pipes.values():
                    pipe.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    raw = result.add("head > file (no pump)", samples["head > file (no pump)"], bytes_per_run=size)
    local = result.add("LocalExec", samples["LocalExec"], bytes_per_run=size, is_baseline=True)
    local.compare(raw)
    result.add("raw unix socket pipe", samples["raw unix socket pipe"], bytes_per_run=size).compare(local)
    raw_zmq = result.add("raw pyzmq ipc pipe", samples["raw pyzmq ipc pipe"], bytes_per_run=size)
    raw_zmq.compare(local)
    proxied = result.add("uvmexec ipc", samples["uvmexec ipc"], bytes_per_run=size)
    proxied.compare(local, TARGET)
    proxied.compare(raw_zmq)
    result.add("uvmexec tcp+curve", samples["uvmexec tcp+curve"], bytes_per_run=size).compare(local)
    gib = size / 2**30
    result.notes.append("CPU time per GiB, every process involved (head included): " + ", ".join(
        f"{name} {median(case.cpu) / gib:.2f} s" for name, case in cases.items()))
    for name, case in cases.items():
        if case.peaks:
            result.figure(name).note = ", ".join(f"{label} peak RSS {mib(kib)}" for label, kib in case.peaks.items())
            result.notes.append(f"{name}: {result.figure(name).note}")
    result.notes.append(f"raw pipes (bench/rawpipe.py): a sender process reads head's {PIPE_SIZE // 1024} KiB pipe "
                        f"{rawpipe.CHUNK // 1024} KiB at a time and sends it bare (ZeroMQ PAIR, high-water mark "
                        f"{rawpipe.WINDOW_CHUNKS} chunks; or a unix stream socket); this process writes it to the "
                        "file: the least any two-process design pays on that transport")
    result.notes.append(f"output files in {options.scratch or tempfile.gettempdir()}; peak RSS is VmHWM, "
                        "reset through /proc/PID/clear_refs before each run")
    return result.finish()
