"""A private containerd with this checkout's shim on its PATH: what the shim's tests and benchmarks drive.

:func:`start_containerd` starts one (own config, root, state and sockets in a
fresh directory; the CRI plugin off) and imports an image tarball;
:func:`stop_containerd` kills what containers remain, stops it, ends whatever
still names its directory and removes the directory, and returns what it had
to clean up (a test asserts that nothing was left; a benchmark reports it).

The shim containerd runs is the console script ``containerd-shim-uvmexec-v1``
when the installed one runs this checkout's code (CI: ``.ci/setup`` installs
the project); otherwise a wrapper that runs ``python3 -m host_proxy.shim`` from
this checkout. Standard library only; no test framework.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .main import runc_root

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIM = "containerd-shim-uvmexec-v1"
RUNTIME = "io.containerd.uvmexec.v1"
RUNC_RUNTIME = "io.containerd.runc.v2"
PROCESS_ISOLATION = ["--annotation", "io.uvmexec.isolation=process"]
CTR_TIMEOUT = 240  # a Create in hypervisor isolation boots a VM (TCG here)
BOOT_TIMEOUT = 30
LEFTOVER_GRACE = 15.0


def installed_shim() -> str | None:
    """The installed console script, if it runs this checkout's code."""
    installed = shutil.which(SHIM)
    if installed is None:
        return None
    reply = subprocess.run([installed, "-v"], capture_output=True, text=True, timeout=30, check=False)
    return installed if reply.returncode == 0 and reply.stdout.split()[-1:] == [PROJECT] else None


def describe_shim() -> str:
    """Which shim containerd will run, in words."""
    return installed_shim() or f"a wrapper running python3 -m host_proxy.shim from {PROJECT}"


def shim_bin_dir(directory: str) -> str:
    """A directory holding ``containerd-shim-uvmexec-v1`` that runs this checkout (made in ``directory`` if need be)."""
    installed = installed_shim()
    if installed is not None:
        return os.path.dirname(installed)
    bin_dir = os.path.join(directory, "bin")
    os.makedirs(bin_dir, exist_ok=True)
    wrapper = os.path.join(bin_dir, SHIM)
    with open(wrapper, "w") as script:
        script.write(f"#!/bin/sh\nPYTHONPATH={PROJECT} exec {sys.executable} -m host_proxy.shim \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return bin_dir


def processes_naming(text: str) -> list[str]:
    """``"PID: command line"`` of every process whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    words = cmdline.read().decode(errors="replace").replace("\0", " ")
            except OSError:
                continue
            if text in words:
                found.append(f"{entry}: {words}")
    return found


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (zombies excluded), from /proc."""
    table: dict[int, tuple[str, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat_file:
                    fields = stat_file.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            table[int(entry)] = (fields[0], int(fields[1]))
    found: list[int] = []
    frontier, seen = [pid], {pid}
    while frontier:
        parent = frontier.pop()
        for child, (state, ppid) in table.items():
            if ppid == parent and child not in seen:
                seen.add(child)
                frontier.append(child)
                if state != "Z":
                    found.append(child)
    return found


def ends_within(pid: int, timeout: float) -> bool:
    """True if process ``pid`` ends (or is gone) within ``timeout`` seconds (waits on a pidfd)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as mountinfo:
        return [line.split()[4] for line in mountinfo if line.split()[4].startswith(path + "/")]


@dataclass
class Containerd:
    directory: str
    address: str
    env: dict[str, str]
    config: str
    image: str
    #: What ``run_args`` asks of our shim: ``process`` or ``hypervisor``.
    isolation: str = "process"
    process: subprocess.Popen[bytes] | None = None
    logger: threading.Thread | None = None

    def launch(self) -> None:
        """Start containerd and return once it is serving (its log says so)."""
        self.process = subprocess.Popen(["containerd", "--config", self.config], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=self.env,
                                        start_new_session=True)
        booted = threading.Event()
        self.logger = threading.Thread(target=_keep_log, args=(
            self.process, os.path.join(self.directory, "containerd.log"), booted))
        self.logger.start()
        if not booted.wait(BOOT_TIMEOUT):
            raise RuntimeError(f"containerd did not boot within {BOOT_TIMEOUT}s")

    def terminate(self) -> None:
        """SIGTERM containerd and reap it; remove the sockets it leaves behind."""
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
        if self.logger is not None:
            self.logger.join(30)
        for leftover in (self.address, self.address + ".ttrpc"):
            if os.path.exists(leftover):
                os.unlink(leftover)

    def restart(self) -> None:
        self.terminate()
        self.launch()

    def ctr(self, *args: str, check: bool = True, timeout: float = CTR_TIMEOUT,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:  # noqa: A002 - subprocess's name
        result = subprocess.run(["ctr", "--address", self.address, *args], capture_output=True, env=self.env,
                                timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {result.returncode}: {result.stderr.decode()}")
        return result

    def ctr_popen(self, *args: str, **options: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ctr", "--address", self.address, *args], env=self.env, **options)  # type: ignore[call-overload]

    def run_args(self, container_id: str, *command: str, extra: tuple[str, ...] = (),
                 runtime: str = RUNTIME) -> list[str]:
        isolation = ["--annotation", f"io.uvmexec.isolation={self.isolation}"] if runtime == RUNTIME else []
        return ["run", "--fifo-dir", self.fifo_dir, "--runtime", runtime, *isolation, *extra,
                self.image, container_id, *command]

    @property
    def fifo_dir(self) -> str:
        return os.path.join(self.directory, "fifo")

    @property
    def state(self) -> str:
        return os.path.join(self.directory, "state")

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "containerd.log")

    def runc_ids(self, namespace: str = "default") -> list[str]:
        """The containers in the runc state root the shim keeps for this containerd's ``namespace``."""
        root = runc_root(self.address, namespace)
        if not os.path.isdir(root):
            return []
        listed = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True, text=True,
                                check=True, timeout=30)
        return listed.stdout.split()

    def namespaces(self) -> list[str]:
        """The namespaces containerd knows (``default`` at least)."""
        listed = self.ctr("namespaces", "ls", "-q", check=False).stdout.decode().split()
        return sorted(set(listed) | {"default"})

    def bundle(self, container_id: str) -> str:
        return os.path.join(self.state, "io.containerd.runtime.v2.task", "default", container_id)


def start_containerd(image_tarball: str | None, image: str, *, debug: bool = False,
                     shim_dir: Callable[[str], str] = shim_bin_dir, env: dict[str, str] | None = None,
                     isolation: str = "process") -> Containerd:
    """A private containerd serving, with ``image_tarball`` imported if given (its name: ``image``); stop it with
    :func:`stop_containerd`. ``debug``: containerd logs at debug level and runs shims with ``-debug``.
    ``shim_dir(directory)`` names the directory put first on containerd's PATH (default: :func:`shim_bin_dir`);
    ``env`` is containerd's environment, and so its shims' (default: this process's); ``isolation`` is
    what :meth:`Containerd.run_args` asks of our shim."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        raise RuntimeError("containerd and ctr are not installed: run .ci/setup")
    directory = tempfile.mkdtemp(prefix="uvm-ctd-", dir="/tmp")  # short: sockets live in it
    address = os.path.join(directory, "c.sock")
    config = os.path.join(directory, "config.toml")
    with open(config, "w") as config_file:
        config_file.write(f"""version = 2
root = "{directory}/root"
state = "{directory}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{address}"
[ttrpc]
  address = "{address}.ttrpc"
""" + ('[debug]\n  level = "debug"\n' if debug else ""))
    env = dict(os.environ if env is None else env)
    daemon = Containerd(directory, address, env, config, image, isolation)
    try:
        env["PATH"] = os.pathsep.join([shim_dir(directory), env.get("PATH", "")])
        daemon.launch()
        if image_tarball is not None:
            daemon.ctr("images", "import", image_tarball)
    except BaseException:
        stop_containerd(daemon)
        raise
    return daemon


def _keep_log(process: subprocess.Popen[bytes], path: str, booted: threading.Event) -> None:
    """Copy containerd's log to ``path`` until it exits; set ``booted`` at its "booted" line."""
    assert process.stdout is not None
    with open(path, "wb", buffering=0) as log, process.stdout:  # unbuffered: readable while it runs
        for line in process.stdout:
            log.write(line)
            if b"containerd successfully booted" in line:
                booted.set()


@dataclass
class Leftovers:
    """What :func:`stop_containerd` found still there after containerd stopped (and then removed)."""

    runc_containers: list[str] = field(default_factory=list)
    processes: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)
    vm_run_dirs: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.runc_containers or self.processes or self.mounts or self.sockets or self.vm_run_dirs)


def stop_containerd(daemon: Containerd) -> Leftovers:
    """Kill and remove every container, stop containerd, end what still names its directory, remove it."""
    namespaces = ["default"]
    if daemon.process is not None and daemon.process.poll() is None:
        namespaces = daemon.namespaces()
        for namespace in namespaces:
            ns = ("--namespace", namespace)
            for container in daemon.ctr(*ns, "containers", "ls", "-q", check=False).stdout.decode().split():
                daemon.ctr(*ns, "task", "kill", "-s", "KILL", container, check=False)
                daemon.ctr(*ns, "task", "rm", "-f", container, check=False)
                daemon.ctr(*ns, "containers", "rm", container, check=False)
    found = Leftovers()
    for namespace in namespaces:
        left = daemon.runc_ids(namespace)
        found.runc_containers += [f"{namespace}/{container}" for container in left]
        for container in left:
            subprocess.run(["runc", "--root", runc_root(daemon.address, namespace), "delete", "--force", container],
                           capture_output=True, check=False, timeout=30)
    children = descendants(daemon.process.pid) if daemon.process is not None else []
    daemon.terminate()
    # A `delete` command containerd started just before it stopped may still be finishing: give each
    # process naming our directory a bounded while to end; what outlives it is a leak.
    found.processes = [line for line in processes_naming(daemon.directory)
                       if not ends_within(int(line.split(":")[0]), LEFTOVER_GRACE)]
    for pid in children + [int(line.split(":")[0]) for line in found.processes]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    found.mounts = _mounts_under(daemon.directory)
    for point in sorted(found.mounts, key=len, reverse=True):  # off first: rmtree would reach through a mount
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=30)
    sockets = os.path.join(daemon.directory, "uvmexec-s")
    found.sockets = os.listdir(sockets) if os.path.isdir(sockets) else []
    vms = os.path.join(daemon.directory, "uvmexec-vm")
    found.vm_run_dirs = os.listdir(vms) if os.path.isdir(vms) else []
    shutil.rmtree(daemon.directory, ignore_errors=True)
    return found
