"""In the QEMU guest: uvmexec against SSH and qemu-ga, all on the same booted guest in one run.

One guest is booted (``vm_images.boot(build_image())``; TCG here) and reached
five ways at once: uvmexec over tcp (CURVE, through the user-net port
forward) and over ssh:// (a paramiko tunnel to the agent on the guest's
loopback), paramiko ``exec_command`` on a kept-open connection, OpenSSH
``ssh`` reusing a ControlMaster, and qemu-ga ``guest-exec`` polled with
``guest-exec-status`` every millisecond.

Three tables:

- ``rtt``: one round trip host -> guest: uvmexec ``ping()`` and ``status()``
  against a raw pyzmq+msgpack ping to an echo server *in the guest*
  (:mod:`bench.echo`, run there by uvmexec, CURVE with the agent's keys)
  over the same two paths: a port forward added for it (QMP
  ``hostfwd_add``), and an SSH tunnel. Shown for the analysis; no target.
- ``true``: one ``true`` per iteration through each path, interleaved with
  the guest's own floor — a Python loop *inside the guest* timing
  ``subprocess.run(["true"])`` (one uvmexec exec per round prints each
  iteration's time). Targets: uvmexec faster than every peer, and within
  1.25× of the floor.
- ``stream``: ``head -c 64M /dev/zero`` into a host file through uvmexec
  (tcp, ssh) and the two SSH paths. Target: uvmexec faster than either.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import zmq.auth

from common import Exec, ExecState, ProcessSpec, Stdio
from host_proxy import AgentClient

from .lifecycle import describe_phases, lifecycle_case
from .measure import Options, interleave, median, mib
from .peers import QGA_POLL_INTERVAL, ControlMasterPeer, ParamikoPeer, QgaPeer
from .ping import RawPinger
from .report import FamilyResult, Figure, Target, fastest
from .throughput import StreamCase, exec_producer

if TYPE_CHECKING:
    from vm_images import GuestInfo

BEAT_EVERY_PEER = Target("<", 1.0)
NEAR_FLOOR = Target("<=", 1.25)
STREAM_FASTER = Target(">", 1.0)
PEERS = ("qemu-ga guest-exec + status poll", "paramiko exec_command (kept open)", "ssh ControlMaster")
GUEST_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Where the raw echo listens in the guest, and the agent's secret certificate there.
GUEST_ECHO_PORT = 5600
GUEST_AGENT_SECRET = "/etc/uvmexec/agent.key_secret"

#: Runs inside the guest: one warm-up, then one line per timed ``subprocess.run(["true"])``.
FLOOR_SCRIPT = """\
import subprocess, time
subprocess.run(["true"])
for _ in range({count}):
    started = time.perf_counter()
    subprocess.run(["true"])
    print(time.perf_counter() - started)
"""


@dataclass
class Paths:
    """Every way into the one guest."""

    tcp: AgentClient
    ssh: AgentClient
    paramiko: ParamikoPeer
    openssh: ControlMasterPeer
    qga: QgaPeer


def _ssh_url(info: GuestInfo, agent: str | None = None) -> str:
    url = f"ssh://{info.ssh_user}@{info.ssh_host}:{info.ssh_port}"
    return f"{url}?agent={agent}" if agent else url


def _connect(info: GuestInfo, stack: contextlib.ExitStack, directory: str) -> Paths:
    host, port, user = info.ssh_host, info.ssh_port, info.ssh_user
    key, known_hosts = str(info.ssh_key), str(info.known_hosts)
    tcp = stack.enter_context(AgentClient.connect(info.agent_endpoint, server_key=info.server_key,
                                                  client_key=info.client_key, timeout=30))
    ssh = stack.enter_context(AgentClient.connect(_ssh_url(info), server_key=info.server_key,
                                                  client_key=info.client_key, ssh_key=key,
                                                  known_hosts=known_hosts, timeout=30))
    paramiko_peer = ParamikoPeer(host, port, user, key, known_hosts)
    stack.callback(paramiko_peer.close)
    openssh = ControlMasterPeer(host, port, user, key, known_hosts, directory)
    stack.callback(openssh.close)
    qga = QgaPeer(str(info.qga_socket))
    stack.callback(qga.close)
    return Paths(tcp, ssh, paramiko_peer, openssh, qga)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class GuestEcho:
    """:mod:`bench.echo` running in the guest (started by uvmexec), reachable by tcp and by SSH."""

    def __init__(self, info: GuestInfo, client: AgentClient, scratch: str, stack: contextlib.ExitStack) -> None:
        from host_proxy.ssh_endpoint import parse_ssh_endpoint
        from host_proxy.ssh_tunnel import SshTunnel
        from vm_images.qmp import Qmp

        source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "echo.py")
        with open(source) as echo_source:
            script = echo_source.read()
        log = os.path.join(scratch, "echo.out")
        self.exec: Exec = client.create_exec(
            "bench-guest-echo", "echo", ProcessSpec(args=[
                "python3", "-c", script, "--listen", f"tcp://*:{GUEST_ECHO_PORT}", "--curve-secret", GUEST_AGENT_SECRET,
            ], env=[GUEST_PATH]), Stdio(stdout=log))
        self.exec.start()
        stack.callback(self.stop)
        _wait_for_line(log, "echo ready", self.exec, 120.0)
        port = _free_port()
        with Qmp.connect(info.qmp_socket) as qmp:
            qmp.execute("human-monitor-command",
                        **{"command-line": f"hostfwd_add net0 tcp:127.0.0.1:{port}-:{GUEST_ECHO_PORT}"})
        self.tcp_endpoint = f"tcp://127.0.0.1:{port}"
        tunnel = SshTunnel(parse_ssh_endpoint(_ssh_url(info, f"tcp://127.0.0.1:{GUEST_ECHO_PORT}")),
                           ssh_key=info.ssh_key, known_hosts=info.known_hosts, timeout=30)
        stack.callback(tunnel.close)
        self.ssh_endpoint = tunnel.endpoint
        server_public, _ = zmq.auth.load_certificate(info.server_key)
        client_public, client_secret = zmq.auth.load_certificate(info.client_key)
        assert client_secret is not None
        self.curve = (server_public, client_public, client_secret)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.exec.kill(15)
            self.exec.wait(timeout=30)
            self.exec.delete()


def _wait_for_line(path: str, text: str, made: Exec, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(path) as out:
            if text in out.read():
                return
        if made.state is ExecState.EXITED:
            break
        time.sleep(0.1)
    raise RuntimeError(f"the echo server in the guest did not print {text!r} (state {made.state.value})")


def guest_floor(client: AgentClient, count: int, scratch: str) -> Callable[[], list[float]]:
    """One exec of a Python loop in the guest; its ``count`` per-iteration times are the samples."""
    numbers = itertools.count()
    spec = ProcessSpec(args=["python3", "-c", FLOOR_SCRIPT.format(count=count)], env=[GUEST_PATH])

    def once() -> list[float]:
        path = os.path.join(scratch, "floor.out")
        made = client.create_exec("bench-guest-floor", f"floor-{next(numbers)}", spec, Stdio(stdout=path))
        made.start()
        status = made.wait(timeout=300)
        made.delete()
        with open(path) as out:
            samples = [float(line) for line in out if line.strip()]
        os.unlink(path)
        if status.exit_status != 0 or len(samples) != count:
            raise RuntimeError(f"in-guest floor: exit {status.exit_status}, {len(samples)} of {count} samples")
        return samples

    return once


def _measure_rtt(paths: Paths, echo: GuestEcho, options: Options) -> FamilyResult:
    result = FamilyResult("guest-rtt", "in the QEMU guest: one round trip, uvmexec vs a raw ping to an echo in the guest")
    rounds, per_round = options.pick(2, 10), options.pick(10, 30)
    raw_tcp, raw_ssh = RawPinger(echo.tcp_endpoint, echo.curve), RawPinger(echo.ssh_endpoint, echo.curve)
    # Running execs: status() of one that never started is answered on the host alone.
    created = {name: client.create_exec("bench-guest-rtt", f"status-{name}", ProcessSpec(args=["sleep", "100000"]),
                                        Stdio())
               for name, client in (("tcp", paths.tcp), ("ssh", paths.ssh))}
    for made in created.values():
        made.start()
    try:
        cases: dict[str, Callable[[], object]] = {
            "raw ping tcp+curve": raw_tcp.ping,
            "uvmexec ping() tcp+curve": paths.tcp.ping,
            "uvmexec status() tcp+curve": created["tcp"].status,
            "raw ping ssh": raw_ssh.ping,
            "uvmexec ping() ssh": paths.ssh.ping,
            "uvmexec status() ssh": created["ssh"].status,
        }
        options.progress(f"guest rtt: {len(cases)} cases, {rounds} rounds x {per_round}")
        samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=5,
                             progress=lambda message: options.progress(f"guest rtt: {message}"))
    finally:
        raw_tcp.close()
        raw_ssh.close()
        for made in created.values():
            made.force_exit(0)
            made.delete()
    for path in ("tcp+curve", "ssh"):
        raw = result.add(f"raw ping {path}", samples[f"raw ping {path}"], is_baseline=True)
        result.add(f"uvmexec ping() {path}", samples[f"uvmexec ping() {path}"]).compare(raw)
        result.add(f"uvmexec status() {path}", samples[f"uvmexec status() {path}"]).compare(raw)
    result.notes.append(f"raw ping: a blocking DEALER here -> bench/echo.py in the guest (python3 -c, CURVE with the "
                        f"agent's keys) on port {GUEST_ECHO_PORT}, forwarded by QMP hostfwd_add or tunnelled by SSH")
    return result.finish()


def _measure_true(paths: Paths, options: Options, scratch: str) -> FamilyResult:
    result = FamilyResult("guest-true", "in the QEMU guest: lifecycle of true, uvmexec vs SSH vs qemu-ga")
    rounds, per_round = options.pick(2, 12), options.pick(4, 10)
    phases: dict[str, dict[str, list[float]]] = {"uvmexec tcp+curve true": {}, "uvmexec ssh true": {}}
    cases = {
        "guest floor: subprocess.run(true) in the guest": guest_floor(paths.tcp, per_round, scratch),
        "uvmexec tcp+curve true": lifecycle_case(paths.tcp.create_exec, "bench-guest-tcp",
                                                 phases["uvmexec tcp+curve true"]),
        "uvmexec ssh true": lifecycle_case(paths.ssh.create_exec, "bench-guest-ssh", phases["uvmexec ssh true"]),
        PEERS[0]: paths.qga.true,
        PEERS[1]: paths.paramiko.true,
        PEERS[2]: paths.openssh.true,
    }
    floor_name = next(iter(cases))
    options.progress(f"guest true: {len(cases)} cases, {rounds} rounds x {per_round}")
    samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=options.pick(1, 2),
                         calls={floor_name: 1}, progress=lambda message: options.progress(f"guest true: {message}"))
    figures = {name: Figure(name, samples[name]) for name in cases}  # in the order of ``cases``
    floor = figures[floor_name]
    floor.is_baseline = True
    best = fastest([figures[name] for name in PEERS])
    for name in phases:
        figures[name].compare(best, BEAT_EVERY_PEER)
        figures[name].compare(floor, NEAR_FLOOR)
    for name in PEERS:
        figures[name].compare(floor)
    result.figures = list(figures.values())
    for name, split in phases.items():
        result.notes.append(f"{name}, median per call: {describe_phases(split)}")
    polls = paths.qga.polls / max(1, paths.qga.execs)
    result.notes.append(f"qemu-ga: guest-exec-status polled every {QGA_POLL_INTERVAL * 1000:g} ms, "
                        f"{polls:.1f} polls per exec on average")
    result.notes.append(f"uvmexec rows beat every peer when their ratio to the fastest peer ({best.case}) is < 1")
    result.notes.append(f"in-guest floor median {median(floor.samples) * 1000:.1f} ms: every path pays it")
    return result.finish()


def _measure_stream(paths: Paths, options: Options, scratch: str) -> FamilyResult:
    size = options.pick(16, 64) * 1024 * 1024
    result = FamilyResult("guest-stream", f"in the QEMU guest: head -c {size // 2**20}M /dev/zero into a host file")
    rounds = options.pick(1, 4)
    command = f"head -c {size} /dev/zero"
    cases = {
        "uvmexec tcp+curve": StreamCase("tcp", f"{scratch}/tcp", size,
                                        exec_producer(paths.tcp.create_exec, "guest-tcp", size)),
        "uvmexec ssh": StreamCase("ssh", f"{scratch}/ssh", size,
                                  exec_producer(paths.ssh.create_exec, "guest-ssh", size)),
        "ssh ControlMaster": StreamCase("openssh", f"{scratch}/openssh", size,
                                        lambda path: paths.openssh.stream(command, path)),
        "paramiko exec_command": StreamCase("paramiko", f"{scratch}/paramiko", size,
                                            lambda path: paths.paramiko.stream(command, path)),
    }
    options.progress(f"guest stream: {len(cases)} cases x {rounds} runs of {size // 2**20} MiB")
    samples = interleave(cases, rounds=rounds, per_round=1, warmup=options.pick(0, 1),
                         progress=lambda message: options.progress(f"guest stream: {message}"))
    figures = {name: result.add(name, samples[name], bytes_per_run=size) for name in cases}
    openssh, paramiko_figure = figures["ssh ControlMaster"], figures["paramiko exec_command"]
    openssh.is_baseline = True
    paramiko_figure.compare(openssh)
    best = fastest([openssh, paramiko_figure])
    for name in ("uvmexec tcp+curve", "uvmexec ssh"):
        figures[name].compare(best, STREAM_FASTER)
    result.notes.append(f"uvmexec rows beat both SSH paths when their rate ratio to the faster one ({best.case}) is > 1")
    return result.finish()


def run(options: Options) -> list[FamilyResult]:
    from vm_images import boot, build_image

    options.progress("guest: building (or reusing) the image")
    image = build_image()
    options.progress("guest: booting")
    scratch = tempfile.mkdtemp(prefix="uvm-bench-guest-", dir=options.scratch)
    try:
        with boot(image) as info, contextlib.ExitStack() as stack:
            options.progress(f"guest: ready after {info.boot_seconds:.1f} s ({info.accel})")
            paths = _connect(info, stack, scratch)
            echo = GuestEcho(info, paths.tcp, scratch, stack)
            rtt = _measure_rtt(paths, echo, options)
            echo.stop()
            lifecycle = _measure_true(paths, options, scratch)
            stream = _measure_stream(paths, options, scratch)
            stats = paths.tcp.stats()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rtt.notes.insert(0, f"guest: {info.accel.upper()}, 2 vCPUs, kernel {info.kernel_release}, booted to the agent's "
                        f"hello in {info.boot_seconds:.1f} s; guest agent RSS {mib(stats.get('rss_kib'))}, peak "
                        f"{mib(stats.get('peak_rss_kib'))} (since boot)")
    return [rtt, lifecycle, stream]
