"""Booting a guest and waiting until its agent answers.

``Guest(image).start()`` boots QEMU and returns a ``GuestInfo`` only once
the agent has answered ``hello`` (and, unless ``wait_for_ssh=False``, sshd
has sent its banner); ``stop()`` ends QEMU and removes the run directory.
``boot(image)`` is the same as a context manager. Nothing is left running
after ``stop()`` or the end of the ``with`` block, also when start fails.

Every boot gets fresh keys (``keys.py``): the guest's part goes to QEMU as a
fw_cfg file through an inherited memfd, and only the host's part stays, in
``run_dir/keys`` (0700, files 0600), which goes with the VM.

Acceleration ("auto"): KVM only if ``/dev/kvm`` works and a guest has
really booted to ready on it on this machine (the verdict is cached, see
``accel.py``); TCG otherwise. Failures raise ``GuestBootError`` naming what
happened, with the tails of the serial console and QEMU's own log.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from . import accel as accel_verdicts
from . import settings
from .image import ImagePaths, build_image
from .keys import KeyFiles, drop_guest_secrets, generate_keys, guest_bundle
from .probe import AgentProbe, NotReady, ProbeFailed, agent_hello, ssh_banner
from .qemu import HOSTFWD_FAILURE, QEMU_BINARY, SHARE_DIR, QemuConfig, QemuError, QemuProcess
from .qmp import Qmp, QmpError

_T = TypeVar("_T")

PROBE_ATTEMPT_SECONDS = 2.0
RETRY_PAUSE_SECONDS = 0.2
PORT_ATTEMPTS = 3
#: Mounts taken off a VM's share when it stops, at most (each task not deleted left one or a few).
MAX_SHARE_MOUNTS = 1024
KEY_DIR = "keys"  # in the run directory: this boot's host-side keys
# QEMU run states after which the guest will not come up by itself.
DEAD_RUN_STATES = {"internal-error", "guest-panicked", "shutdown", "io-error"}


class GuestBootError(RuntimeError):
    """The guest did not become ready; the message says why and how far it got."""


@dataclass(frozen=True)
class GuestInfo:
    """How to reach a ready guest. Every path is valid until the VM is stopped."""

    agent_endpoint: str          # tcp://127.0.0.1:PORT, CURVE
    server_key: Path             # the agent's public certificate (this boot's)
    client_key: Path             # the client's secret certificate (this boot's)
    ssh_host: str
    ssh_port: int
    ssh_user: str
    ssh_key: Path                # private key authorised for ssh_user (this boot's)
    known_hosts: Path            # pins this boot's host key for [127.0.0.1]:ssh_port
    qga_socket: Path             # qemu-guest-agent, virtio-serial on a unix socket
    qmp_socket: Path
    serial_log: Path
    run_dir: Path
    boot_id: str                 # the agent's boot id from hello
    boot_seconds: float          # QEMU start -> agent answered hello
    ssh_seconds: float | None    # QEMU start -> SSH banner, None if not waited for
    accel: str                   # "kvm" or "tcg"
    pid: int                     # QEMU's pid
    kernel_release: str
    image_dir: Path
    share_dir: Path              # host side of the guest's share (virtio-9p), 0700
    guest_share_dir: str         # where the guest sees it (settings.GUEST_SHARE_DIR)

    def to_json(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GuestInfo:
        values: dict[str, Any] = {}
        for field in fields(cls):
            value = data[field.name]
            values[field.name] = Path(value) if field.type == "Path" else value
        return cls(**values)


class Guest:
    """One guest VM. Not thread-safe; ``start`` once, ``stop`` any number of times.

    ``ready_timeout`` bounds the wait for readiness under the accelerator
    used; on a machine whose KVM verdict is not known yet, a KVM trial of at
    most ``kvm_trial_timeout`` seconds comes first. ``detached`` daemonizes
    QEMU so that it can outlive this process (see ``detach``).
    """

    def __init__(self, image: ImagePaths | None = None, *, memory_mb: int = 512, cpus: int = 2,
                 accel: str = "auto", ready_timeout: float = 90.0,
                 kvm_trial_timeout: float = 10.0, wait_for_ssh: bool = True,
                 probe: AgentProbe = agent_hello, run_dir: Path | None = None,
                 detached: bool = False) -> None:
        if accel not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
        self._image = image
        self._memory_mb = memory_mb
        self._cpus = cpus
        self._accel = accel
        self._ready_timeout = ready_timeout
        self._kvm_trial_timeout = kvm_trial_timeout
        self._wait_for_ssh = wait_for_ssh
        self._probe = probe
        self._given_run_dir = Path(run_dir) if run_dir else None
        self._detached = detached
        self._run_dir: Path | None = None
        self._process: QemuProcess | None = None
        self._info: GuestInfo | None = None
        self._handed_over = False

    @property
    def info(self) -> GuestInfo:
        if self._info is None:
            raise RuntimeError("the guest is not started")
        return self._info

    def start(self) -> GuestInfo:
        if self._run_dir is not None:
            raise RuntimeError("Guest.start() was already called")
        image = self._image or build_image()
        self._image = image
        if self._given_run_dir:
            self._run_dir = self._given_run_dir
            self._run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._run_dir.chmod(0o700)
        else:
            # Under /tmp: unix socket paths must stay under 108 bytes.
            self._run_dir = Path(tempfile.mkdtemp(prefix="uvmexec-vm-"))
        try:
            self._info = self._boot_with_accel(image)
        except BaseException:
            self.stop()
            raise
        return self._info

    def stop(self, timeout: float = 15.0) -> None:
        """End QEMU (QMP quit, SIGTERM, SIGKILL) and delete the run directory.

        A run directory given to the constructor stays (its logs tell why a
        boot failed), but not the VM's keys.
        """
        if self._process is not None:
            self._process.stop(timeout)
            self._process = None
        if self._run_dir is None or self._handed_over:
            return
        # Before any rmtree: one that entered a task's rootfs still mounted there would delete its files.
        release_share(self._run_dir / SHARE_DIR)
        if self._given_run_dir is None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        else:
            shutil.rmtree(self._run_dir / KEY_DIR, ignore_errors=True)
            shutil.rmtree(self._run_dir / SHARE_DIR, ignore_errors=True)

    def detach(self) -> GuestInfo:
        """Leave the started VM running on its own and release every handle on it.

        Afterwards ``stop()`` does nothing; stop the VM by its pid and QMP
        socket (``daemon.down`` does).
        """
        if not self._detached:
            raise RuntimeError("only a Guest(detached=True) can outlive its owner")
        info = self.info
        if self._process is not None:
            self._process.close()
            self._process = None
        self._handed_over = True  # the run directory, keys included, belongs to the VM now
        return info

    def __enter__(self) -> GuestInfo:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- acceleration --------------------------------------------------------

    def _boot_with_accel(self, image: ImagePaths) -> GuestInfo:
        choice = self._accel if self._accel != "auto" else accel_verdicts.accel_override()
        if choice:
            return self._boot(image, choice, self._ready_timeout)
        if not accel_verdicts.kvm_device_works():
            return self._boot(image, "tcg", self._ready_timeout)
        fingerprint = accel_verdicts.machine_fingerprint(QEMU_BINARY, image.kernel_release)
        verdict = accel_verdicts.load_verdict(fingerprint)
        if verdict:
            return self._boot(image, verdict, self._ready_timeout)
        try:
            info = self._boot(image, "kvm", self._kvm_trial_timeout)
        except GuestBootError as kvm_failure:
            self._discard_attempt()
            info = self._boot(image, "tcg", self._ready_timeout)
            # Recorded only now: had TCG failed too, the image was at fault, not KVM.
            accel_verdicts.save_verdict(fingerprint, "tcg", str(kvm_failure))
            return info
        accel_verdicts.save_verdict(fingerprint, "kvm", "booted to ready")
        return info

    def _discard_attempt(self) -> None:
        if self._process is not None:
            self._process.stop()
            self._process = None
        assert self._run_dir is not None
        for child in self._run_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    # -- one boot --------------------------------------------------------------

    def _boot(self, image: ImagePaths, accel: str, timeout: float) -> GuestInfo:
        assert self._run_dir is not None
        failure = ""
        for _attempt in range(PORT_ATTEMPTS):
            keys = generate_keys(self._run_dir / KEY_DIR)
            (self._run_dir / SHARE_DIR).mkdir(mode=0o700)
            config = QemuConfig(image=image, run_dir=self._run_dir, agent_port=_free_port(),
                                ssh_port=_free_port(), accel=accel,
                                memory_mb=self._memory_mb, cpus=self._cpus)
            started = time.monotonic()
            try:
                self._process = _spawn_with_keys(config, keys, self._detached)
                return self._wait_ready(config, keys, started, timeout)
            except QemuError as error:
                if HOSTFWD_FAILURE not in str(error):
                    raise GuestBootError(f"cannot start QEMU: {error}") from None
                failure = str(error)
            except _PortTaken:
                failure = _tail(config.qemu_log)
            # Another process took a port between our choice and QEMU's bind.
            self._discard_attempt()
        raise GuestBootError(f"QEMU could not bind its port forwards {PORT_ATTEMPTS} times: "
                             f"{failure}")

    def _wait_ready(self, config: QemuConfig, keys: KeyFiles, started: float,
                    timeout: float) -> GuestInfo:
        image = config.image
        endpoint = f"tcp://127.0.0.1:{config.agent_port}"
        watch = _Watch(self._process, config, started, started + timeout)
        try:
            try:
                boot_id = watch.retry(
                    f"waiting for the agent on {endpoint}",
                    lambda limit: self._probe(endpoint, keys.agent_public, keys.client_secret, limit))
            except ProbeFailed as failure:
                raise watch.failure(f"the agent answered hello wrongly: {failure}") from None
            boot_seconds = time.monotonic() - started
            ssh_seconds = None
            if self._wait_for_ssh:
                watch.retry(f"waiting for sshd on 127.0.0.1:{config.ssh_port}",
                            lambda limit: ssh_banner("127.0.0.1", config.ssh_port, limit))
                ssh_seconds = time.monotonic() - started
        finally:
            watch.close()
        known_hosts = config.run_dir / KEY_DIR / "known_hosts"
        host_key = " ".join(keys.ssh_host_public.read_text().split()[:2])
        descriptor = os.open(known_hosts, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with open(descriptor, "w") as stream:
            stream.write(f"[127.0.0.1]:{config.ssh_port} {host_key}\n")
        assert self._process is not None
        return GuestInfo(
            agent_endpoint=endpoint, server_key=keys.agent_public, client_key=keys.client_secret,
            ssh_host="127.0.0.1", ssh_port=config.ssh_port, ssh_user=settings.SSH_USER,
            ssh_key=keys.ssh_user_key, known_hosts=known_hosts, qga_socket=config.qga_socket,
            qmp_socket=config.qmp_socket, serial_log=config.serial_log,
            run_dir=config.run_dir, boot_id=boot_id, boot_seconds=round(boot_seconds, 2),
            ssh_seconds=None if ssh_seconds is None else round(ssh_seconds, 2),
            accel=config.accel, pid=self._process.pid, kernel_release=image.kernel_release,
            image_dir=image.directory, share_dir=config.share_dir,
            guest_share_dir=settings.GUEST_SHARE_DIR,
        )


def release_share(share_dir: Path) -> list[str]:
    """Take every mount off ``share_dir`` and below (a task not deleted leaves its rootfs mounted
    there; detached if busy) and return the mount points taken off. Call it before deleting the
    directory: ``shutil.rmtree`` crosses mount points, into the tasks' roots."""
    from common.supervisor.mounts import unmount  # only a VM that ran tasks needs it

    taken: list[str] = []
    for _ in range(MAX_SHARE_MOUNTS):
        points = _mounts_under(str(share_dir))
        if not points:
            return taken
        deepest = max(points, key=lambda point: point.count("/"))
        unmount(deepest, 1)
        taken.append(deepest)
    raise RuntimeError(f"{share_dir} still has mounts after {MAX_SHARE_MOUNTS} were taken off")


def _mounts_under(path: str) -> list[str]:
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        # mountinfo escapes space, tab, newline and backslash in octal.
        points = [re.sub(r"\\([0-7]{3})", lambda match: chr(int(match[1], 8)), line.split()[4])
                  for line in mountinfo]
    return [point for point in points if point == path or point.startswith(prefix)]


class _PortTaken(Exception):
    pass


class _Watch:
    """Watches QEMU while the probes run: exit, a dead run state, the deadline."""

    def __init__(self, process: QemuProcess | None, config: QemuConfig, started: float,
                 deadline: float):
        assert process is not None
        self._process = process
        self._config = config
        self._started = started
        self._deadline = deadline
        self._qmp: Qmp | None = None
        self._serial_offset = 0
        self.last_error = "no attempt finished yet"

    def remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def retry(self, doing: str, attempt: Callable[[float], _T]) -> _T:
        """Call ``attempt(time_limit)`` until it stops raising NotReady, while watching QEMU."""
        while True:
            self.check(doing)
            try:
                return attempt(min(PROBE_ATTEMPT_SECONDS, self.remaining()))
            except NotReady as not_ready:
                self.last_error = str(not_ready)
                self.pause()

    def check(self, doing: str) -> None:
        if self._process.wait(0):
            log = _tail(self._config.qemu_log)
            if HOSTFWD_FAILURE in log:
                self.close()
                raise _PortTaken()
            raise self.failure(f"QEMU exited with status {self._process.returncode} "
                               f"while {doing}")
        if self._agent_exited():
            raise self.failure(f"the agent exited in the guest while {doing}")
        state = self._run_state()
        if state in DEAD_RUN_STATES:
            raise self.failure(f"the VM stopped in state {state!r} while {doing}")
        if self.remaining() <= 0:
            raise self.failure(f"timed out while {doing}; last answer: {self.last_error}")

    def pause(self) -> None:
        """A short pause between attempts that also ends at once if QEMU exits."""
        self._process.wait(min(RETRY_PAUSE_SECONDS, self.remaining()))

    def _agent_exited(self) -> bool:
        """Whether the guest's PID 1 reported the agent's exit on the console."""
        try:
            with open(self._config.serial_log, "rb") as serial:
                serial.seek(self._serial_offset)
                fresh = serial.read()
        except OSError:
            return False
        # Keep a marker's worth of overlap: it may be cut between two reads.
        keep = len(settings.AGENT_EXIT_MARKER)
        self._serial_offset += max(0, len(fresh) - keep)
        return settings.AGENT_EXIT_MARKER.encode() in fresh

    def _run_state(self) -> str | None:
        try:
            if self._qmp is None:
                self._qmp = Qmp.connect(self._config.qmp_socket, timeout=2.0)
            return str(self._qmp.execute("query-status").get("status"))
        except QmpError:
            # The monitor may not be listening yet; the process check covers death.
            self.close()
            return None

    def failure(self, what: str) -> GuestBootError:
        self.close()
        return GuestBootError(
            f"guest ({self._config.accel}) not ready after "
            f"{time.monotonic() - self._started:.1f}s: {what}\n"
            f"--- serial console ({self._config.serial_log}), last lines:\n"
            f"{_tail(self._config.serial_log)}\n"
            f"--- QEMU log ({self._config.qemu_log}):\n{_tail(self._config.qemu_log)}")

    def close(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None


def _spawn_with_keys(config: QemuConfig, keys: KeyFiles, detached: bool) -> QemuProcess:
    """Start QEMU with the guest's part of ``keys`` as a fw_cfg file read from an inherited memfd.

    QEMU reads it while it sets the machine up, before the guest runs. The
    guest's secret halves are deleted from the host before QEMU starts; the
    files ssh-keygen and pyzmq wrote them to (in the 0700 run directory) are
    their only copies on the host's disk, for milliseconds.
    """
    bundle = os.memfd_create("uvmexec-guest-keys")
    try:
        with open(bundle, "wb", closefd=False) as stream:
            stream.write(guest_bundle(keys))
        drop_guest_secrets(keys)
        return QemuProcess.spawn(replace(config, keys_fd=bundle), detached=detached)
    finally:
        os.close(bundle)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        return int(probe_socket.getsockname()[1])


@contextmanager
def boot(image: ImagePaths | None = None, **options: Any) -> Iterator[GuestInfo]:
    """Boot a guest (building the image first when ``image`` is None) for a ``with`` block.

    ``options`` are those of ``Guest``. The VM is stopped when the block ends.
    """
    guest = Guest(image, **options)
    with guest as info:
        yield info

