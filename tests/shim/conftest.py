"""A private containerd per test, with the busybox image imported and our shim on its PATH.

Each test gets its own containerd (own config, root, state and sockets; the
CRI plugin off), started here and stopped after the test, and then nothing
may be left: no process naming the test's directory, no mount under it, no
shim socket. The shim containerd runs is the console script
``containerd-shim-uvmexec-v1`` when the installed one runs this checkout's
code (CI: ``.ci/setup`` installs the project); otherwise a wrapper that runs
``python3 -m host_proxy.shim`` from this checkout — the report header says
which.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.procs import descendants
from vm_images.oci_image import DEFAULT_REF, write_image_tarball

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIM = "containerd-shim-uvmexec-v1"
RUNTIME = "io.containerd.uvmexec.v1"
PROCESS_ISOLATION = ["--annotation", "io.uvmexec.isolation=process"]
CTR_TIMEOUT = 60
LEFTOVER_GRACE = 15.0


def _installed_shim() -> str | None:
    """The installed console script, if it runs this checkout's code."""
    installed = shutil.which(SHIM)
    if installed is None:
        return None
    reply = subprocess.run([installed, "-v"], capture_output=True, text=True, timeout=30, check=False)
    return installed if reply.returncode == 0 and reply.stdout.split()[-1:] == [PROJECT] else None


#: Lines for the report's "containerd suite" section (test_containerd_suite.py: counts, misses, times).
SUMMARY = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.section("containerd suite")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_report_header() -> str:
    installed = _installed_shim()
    return f"shim: {installed or f'a wrapper running python3 -m host_proxy.shim from {PROJECT}'}"


def _shim_bin_dir(directory: str) -> str:
    installed = _installed_shim()
    if installed is not None:
        return os.path.dirname(installed)
    bin_dir = os.path.join(directory, "bin")
    os.makedirs(bin_dir)
    wrapper = os.path.join(bin_dir, SHIM)
    with open(wrapper, "w") as script:
        script.write(f"#!/bin/sh\nPYTHONPATH={PROJECT} exec {sys.executable} -m host_proxy.shim \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return bin_dir


def _processes_naming(text: str) -> list[str]:
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


def _ends_within(pid: int, timeout: float) -> bool:
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
    image: str = DEFAULT_REF
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
        assert booted.wait(30), "containerd did not boot within 30s"

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

    def run_args(self, container_id: str, *command: str, extra: tuple[str, ...] = ()) -> list[str]:
        return ["run", "--fifo-dir", self.fifo_dir, "--runtime", RUNTIME, *PROCESS_ISOLATION, *extra,
                self.image, container_id, *command]

    def namespaces(self) -> list[str]:
        """The namespaces containerd knows (``default`` at least, once something used it)."""
        listed = self.ctr("namespaces", "ls", "-q", check=False).stdout.decode().split()
        return listed or ["default"]

    @property
    def fifo_dir(self) -> str:
        return os.path.join(self.directory, "fifo")

    @property
    def state(self) -> str:
        return os.path.join(self.directory, "state")

    def bundle(self, container_id: str) -> str:
        return os.path.join(self.state, "io.containerd.runtime.v2.task", "default", container_id)


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The busybox image as an OCI layout tarball, built once per session."""
    return write_image_tarball_at(str(tmp_path_factory.mktemp("image") / "busybox.tar"))


def write_image_tarball_at(path: str) -> str:
    write_image_tarball(path)
    return path


@pytest.fixture
def containerd(busybox_image: str) -> Iterator[Containerd]:
    with private_containerd(busybox_image) as daemon:
        yield daemon


@contextlib.contextmanager
def private_containerd(image_tarball: str | None = None, env: dict[str, str] | None = None) -> Iterator[Containerd]:
    """A containerd of its own (``env`` added to its environment), stopped on exit with nothing left behind.

    ``image_tarball`` is imported first, if given. On a clean exit no task may
    be left in any namespace; on every exit no process naming the daemon's
    directory, no mount under it and no shim socket may be left.
    """
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd and ctr are not installed: run .ci/setup")
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
""")
    daemon_env = dict(os.environ)
    daemon_env.update(env or {})
    daemon_env["PATH"] = os.pathsep.join([_shim_bin_dir(directory), daemon_env.get("PATH", "")])
    daemon = Containerd(directory, address, daemon_env, config)
    try:
        daemon.launch()
        if image_tarball is not None:
            daemon.ctr("images", "import", image_tarball)
        yield daemon
        leftovers = [f"{namespace}/{task}" for namespace in daemon.namespaces()
                     for task in daemon.ctr("--namespace", namespace, "task", "ls", "-q").stdout.decode().split()]
        assert not leftovers, f"tasks left behind: {leftovers}"
    finally:
        _stop(daemon)


def _keep_log(process: subprocess.Popen[bytes], path: str, booted: threading.Event) -> None:
    """Copy containerd's log to ``path`` until it exits; set ``booted`` at its "booted" line."""
    assert process.stdout is not None
    with open(path, "wb") as log, process.stdout:
        for line in process.stdout:
            log.write(line)
            if b"containerd successfully booted" in line:
                booted.set()


def _stop(daemon: Containerd) -> None:
    for namespace in daemon.namespaces():
        ns = ("--namespace", namespace)
        for container in daemon.ctr(*ns, "containers", "ls", "-q", check=False).stdout.decode().split():
            daemon.ctr(*ns, "task", "kill", "-s", "KILL", container, check=False)
            daemon.ctr(*ns, "task", "rm", "-f", container, check=False)
            daemon.ctr(*ns, "containers", "rm", container, check=False)
    children = descendants(daemon.process.pid) if daemon.process is not None else []
    daemon.terminate()
    # A `delete` command containerd started just before it stopped may still be finishing: give each
    # process naming our directory a bounded while to end; what outlives it is a leak.
    leftovers = [line for line in _processes_naming(daemon.directory)
                 if not _ends_within(int(line.split(":")[0]), LEFTOVER_GRACE)]
    for pid in children + [int(line.split(":")[0]) for line in leftovers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    mounts = _mounts_under(daemon.directory)
    sockets = os.listdir(os.path.join(daemon.directory, "uvmexec-s")) if os.path.isdir(
        os.path.join(daemon.directory, "uvmexec-s")) else []
    shutil.rmtree(daemon.directory, ignore_errors=True)
    assert not leftovers, f"processes left behind: {leftovers}"
    assert not mounts, f"mounts left behind: {mounts}"
    assert not sockets, f"shim sockets left behind: {sockets}"
