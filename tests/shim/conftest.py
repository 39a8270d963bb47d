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

from host_proxy.shim.main import runc_root
from tests.support.procs import descendants
from vm_images import build_image
from vm_images.oci_image import DEFAULT_REF, write_image_tarball

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIM = "containerd-shim-uvmexec-v1"
RUNTIME = "io.containerd.uvmexec.v1"
PROCESS_ISOLATION = ["--annotation", "io.uvmexec.isolation=process"]
#: For a test that must hold in both isolations: the ``containerd`` fixture's containers get each in turn.
BOTH_ISOLATIONS = pytest.mark.parametrize(
    "containerd", ["process", pytest.param("hypervisor", marks=pytest.mark.vm)], indirect=True)
CTR_TIMEOUT = 240  # a Create in hypervisor isolation boots a VM (TCG here)
LEFTOVER_GRACE = 15.0


def _installed_shim() -> str | None:
    """The installed console script, if it runs this checkout's code."""
    installed = shutil.which(SHIM)
    if installed is None:
        return None
    reply = subprocess.run([installed, "-v"], capture_output=True, text=True, timeout=30, check=False)
    return installed if reply.returncode == 0 and reply.stdout.split()[-1:] == [PROJECT] else None


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


def ends_within(pid: int, timeout: float) -> bool:
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
        return ["run", "--fifo-dir", self.fifo_dir, "--runtime", RUNTIME,
                "--annotation", f"io.uvmexec.isolation={self.isolation}", *extra, self.image, container_id, *command]

    @property
    def fifo_dir(self) -> str:
        return os.path.join(self.directory, "fifo")

    @property
    def state(self) -> str:
        return os.path.join(self.directory, "state")

    def runc_ids(self) -> list[str]:
        """The containers in the runc state root the shim keeps for this containerd's namespace."""
        root = runc_root(self.address, "default")
        if not os.path.isdir(root):
            return []
        listed = subprocess.run(["runc", "--root", root, "list", "-q"], capture_output=True, text=True,
                                check=True, timeout=30)
        return listed.stdout.split()

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
def containerd(request: pytest.FixtureRequest, busybox_image: str) -> Iterator[Containerd]:
    """A private containerd; its ``run_args`` ask for process isolation, or the test's parameter
    (:data:`BOTH_ISOLATIONS`)."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        pytest.fail("containerd and ctr are not installed: run .ci/setup")
    isolation = getattr(request, "param", "process")
    if isolation == "hypervisor":
        build_image()  # cached after the first: the shim boots it
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
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([_shim_bin_dir(directory), env.get("PATH", "")])
    daemon = Containerd(directory, address, env, config, isolation=isolation)
    try:
        daemon.launch()
        daemon.ctr("images", "import", busybox_image)
        yield daemon
        leftovers = daemon.ctr("task", "ls", "-q").stdout.split()
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
    for container in daemon.ctr("containers", "ls", "-q", check=False).stdout.decode().split():
        daemon.ctr("task", "kill", "-s", "KILL", container, check=False)
        daemon.ctr("task", "rm", "-f", container, check=False)
        daemon.ctr("containers", "rm", container, check=False)
    containers = daemon.runc_ids()
    for container in containers:
        subprocess.run(["runc", "--root", runc_root(daemon.address, "default"), "delete", "--force", container],
                       capture_output=True, check=False, timeout=30)
    children = descendants(daemon.process.pid) if daemon.process is not None else []
    daemon.terminate()
    # A `delete` command containerd started just before it stopped may still be finishing: give each
    # process naming our directory a bounded while to end; what outlives it is a leak.
    leftovers = [line for line in _processes_naming(daemon.directory)
                 if not ends_within(int(line.split(":")[0]), LEFTOVER_GRACE)]
    for pid in children + [int(line.split(":")[0]) for line in leftovers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    mounts = _mounts_under(daemon.directory)
    sockets = os.listdir(os.path.join(daemon.directory, "uvmexec-s")) if os.path.isdir(
        os.path.join(daemon.directory, "uvmexec-s")) else []
    vms = os.listdir(os.path.join(daemon.directory, "uvmexec-vm")) if os.path.isdir(
        os.path.join(daemon.directory, "uvmexec-vm")) else []
    shutil.rmtree(daemon.directory, ignore_errors=True)
    assert not containers, f"runc containers left behind: {containers}"
    assert not leftovers, f"processes left behind: {leftovers}"
    assert not mounts, f"mounts left behind: {mounts}"
    assert not sockets, f"shim sockets left behind: {sockets}"
    assert not vms, f"utility VM run directories left behind: {vms}"
