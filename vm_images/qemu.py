"""One QEMU process: its command line, and a handle to wait on, signal and stop it.

``QemuConfig.argv()`` is the whole machine: headless, PVH boot of the
uncompressed vmlinux with the loader initrd, the ext4 root on virtio-blk with
``snapshot=on`` (the image file never changes), virtio-rng, user-mode
networking whose only forwards are the agent and sshd ports bound to
127.0.0.1, a virtio-serial port for qemu-guest-agent on a unix socket, the
serial console in a file, QMP on a unix socket, and this boot's keys as the
fw_cfg file ``settings.KEYS_FW_CFG_NAME``, read from a descriptor QEMU
inherits (``keys_fd``: the bundle is never written to the host's disk).

``QemuProcess`` tracks the process through a pidfd, so waits are blocking
waits with timeouts and a signal can never hit a recycled pid. ``stop()``
asks QMP to quit, then escalates to SIGTERM and SIGKILL, each with its own
deadline, and returns only once the process is gone from the process table:
reaped by us when it is our child; otherwise (a daemonized QEMU belongs to
init or a subreaper) once its parent has reaped it, which the pidfd reports
as POLLHUP on Linux 6.9 and later (on older kernels, once it has exited).
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .image import ImagePaths
from .qmp import Qmp, QmpError

QEMU_BINARY = "qemu-system-x86_64"
KERNEL_APPEND = ("console=ttyS0 quiet panic=-1 uvm.root=/dev/vda "
                 # The guest has no PS/2 devices to wait for.
                 "i8042.noaux i8042.nokbd i8042.nopnp "
                 # PCI interrupt routing from the BIOS table instead of ACPI's
                 # interrupt links: their AML costs ~2 s under TCG, and the
                 # virtio devices use MSI anyway. (acpi=off would be faster
                 # still but leaves one CPU and a jiffies clock.)
                 "pci=noacpi "
                 # No test of the timer interrupt's route at boot: the kernel busy-waits
                 # some tens of ms for more than 4 PIT ticks, and a TCG guest on a loaded
                 # host gets fewer (QEMU's threads not scheduled, missed ticks dropped),
                 # so the IO-APIC route QEMU wires is judged broken: the kernel tries
                 # others ("MP-BIOS bug: 8254 timer not connected to IO-APIC") or
                 # panics ("IO-APIC + timer doesn't work!").
                 "no_timer_check "
                 # No self-tests of the kernel's crypto algorithms at boot: CPU a utility VM
                 # need not spend under TCG, and one boot of about 45 on a loaded host hung
                 # with a soft lockup in a cryptomgr_test thread (never ready in 120 s).
                 "cryptomgr.notests")
UNIX_PATH_MAX = 107
DAEMONIZE_TIMEOUT = 30.0
# How long stop() waits for another process (init, a subreaper) to reap a QEMU that has exited.
REAP_TIMEOUT = 5.0
HOSTFWD_FAILURE = "Could not set up host forwarding rule"
SHARE_DIR = "share"  # in the run directory: exported to the guest over virtio-9p


class QemuError(RuntimeError):
    """QEMU could not be started, or could not be stopped."""


@dataclass(frozen=True)
class QemuConfig:
    image: ImagePaths
    run_dir: Path
    agent_port: int
    ssh_port: int
    accel: str = "tcg"
    memory_mb: int = 512
    cpus: int = 2
    keys_fd: int | None = None  # the guest's key bundle (keys.guest_bundle), inherited by QEMU

    @property
    def qmp_socket(self) -> Path:
        return self.run_dir / "qmp.sock"

    @property
    def qga_socket(self) -> Path:
        return self.run_dir / "qga.sock"

    @property
    def serial_log(self) -> Path:
        return self.run_dir / "serial.log"

    @property
    def qemu_log(self) -> Path:
        return self.run_dir / "qemu.log"

    @property
    def share_dir(self) -> Path:
        """The host directory the guest mounts at ``settings.GUEST_SHARE_DIR`` (virtio-9p)."""
        return self.run_dir / SHARE_DIR

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "qemu.pid"

    def argv(self) -> list[str]:
        for path in (self.qmp_socket, self.qga_socket):
            if len(str(path)) > UNIX_PATH_MAX:
                raise QemuError(f"socket path too long for a unix socket: {path}")
        for path in (self.run_dir, self.image.directory):
            if "," in str(path):
                raise QemuError(f"QEMU option values cannot hold a comma: {path}")
        if self.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host"]
        else:
            accel = ["-accel", "tcg,thread=multi", "-cpu", "max"]
        forwards = (f"hostfwd=tcp:127.0.0.1:{self.agent_port}-:{settings.AGENT_PORT},"
                    f"hostfwd=tcp:127.0.0.1:{self.ssh_port}-:{settings.SSH_PORT}")
        keys = [] if self.keys_fd is None else [
            "-fw_cfg", f"name={settings.KEYS_FW_CFG_NAME},file=/proc/self/fd/{self.keys_fd}"]
        return [
            QEMU_BINARY, "-name", "uvmexec-guest", "-nodefaults", "-no-user-config",
            "-display", "none", "-vga", "none", "-machine", "pc", *accel,
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", KERNEL_APPEND,
            "-drive", f"file={self.image.rootfs},format=raw,if=virtio,snapshot=on",
            "-device", "virtio-rng-pci",
            "-netdev", f"user,id=net0,{forwards}",
            "-device", "virtio-net-pci,netdev=net0,romfile=",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=qga0,path={self.qga_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=qga0,name={settings.QGA_PORT_NAME}",
            # The share: passthrough keeps the guest's owners and modes on the host's
            # files (QEMU runs as root), so the guest's root can write overlay upper dirs.
            "-fsdev", f"local,id=share0,path={self.share_dir},security_model=passthrough,multidevs=remap",
            "-device", f"virtio-9p-pci,fsdev=share0,mount_tag={settings.SHARE_MOUNT_TAG}",
            "-serial", f"file:{self.serial_log}",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
            *keys,
            # A guest panic or poweroff ends QEMU, so a failed boot fails fast.
            "-no-reboot",
        ]


class QemuProcess:
    """A running QEMU, started by us or found again by pid (see ``attach``)."""

    def __init__(self, pid: int, qmp_socket: Path, popen: subprocess.Popen[bytes] | None = None):
        self.pid = pid
        self.qmp_socket = qmp_socket
        self._popen = popen
        self._pidfd: int | None = os.pidfd_open(pid)

    @classmethod
    def spawn(cls, config: QemuConfig, *, detached: bool = False) -> QemuProcess:
        """Start QEMU with its output in ``config.qemu_log``.

        ``detached`` daemonizes it (``-daemonize``): it outlives the caller,
        is nobody's child here, and this returns only after QEMU finished
        setting up (sockets bound, port forwards in place) or failed to.
        """
        argv = config.argv()
        if detached:
            argv += ["-daemonize", "-pidfile", str(config.pidfile)]
        with open(config.qemu_log, "ab") as log:
            try:
                popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         close_fds=True,
                                         pass_fds=() if config.keys_fd is None else (config.keys_fd,))
            except FileNotFoundError:
                raise QemuError(f"{QEMU_BINARY} is not installed "
                                "(Debian package qemu-system-x86)") from None
        if not detached:
            return cls(popen.pid, config.qmp_socket, popen)
        try:
            status = popen.wait(DAEMONIZE_TIMEOUT)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
            raise QemuError(f"QEMU did not finish daemonizing in {DAEMONIZE_TIMEOUT}s") from None
        if status != 0:
            raise QemuError(f"QEMU failed to start (status {status}): "
                            f"{config.qemu_log.read_text(errors='replace').strip()[-2000:]}")
        try:
            pid = int(config.pidfile.read_text().strip())
        except (OSError, ValueError) as error:
            raise QemuError(f"daemonized QEMU left no usable pidfile: {error}") from None
        process = cls.attach(pid, config.qmp_socket)
        if process is None:
            raise QemuError(f"daemonized QEMU (pid {pid}) exited right after starting: "
                            f"{config.qemu_log.read_text(errors='replace').strip()[-2000:]}")
        return process

    @classmethod
    def attach(cls, pid: int, qmp_socket: Path) -> QemuProcess | None:
        """The QEMU with this pid serving this QMP socket, or None if it is gone.

        Checking the command line guards against a pid reused by another process.
        """
        try:
            # The pidfd first: from here on the pid cannot be recycled under us.
            process = cls(pid, qmp_socket)
        except OSError:
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            state, cmdline = "X", []
        if state in ("Z", "X") or f"unix:{qmp_socket},server=on,wait=off".encode() not in cmdline:
            process.close()
            return None
        return process

    def wait(self, timeout: float | None) -> bool:
        """Block until the process exited or ``timeout`` passed; True if it exited."""
        if self._pidfd is None:
            return True
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        exited = bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))
        if exited and self._popen is not None:
            self._popen.wait()  # reap our child; it has already exited
        return exited

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode if self._popen is not None else None

    def signal(self, signum: int) -> None:
        if self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signum)
        except ProcessLookupError:
            pass

    def wait_reaped(self, timeout: float) -> bool:
        """Block until the exited process is gone from the process table, or ``timeout`` passed.

        True once it is reaped: by ``wait`` when it is our child, else by its
        own parent. Where the kernel cannot tell (before Linux 6.9), True once
        it has exited.
        """
        if not self.wait(timeout):
            return False
        if self._popen is not None or self._pidfd is None or not PIDFD_REPORTS_REAPING:
            return True
        poller = select.poll()
        # No events asked for: poll still reports POLLHUP, which a pidfd shows once its process is reaped.
        poller.register(self._pidfd, 0)
        return bool(poller.poll(max(0, int(timeout * 1000))))

    def stop(self, timeout: float = 10.0, reap_timeout: float = REAP_TIMEOUT) -> str:
        """End QEMU: QMP quit, then SIGTERM, then SIGKILL; return which one worked.

        Each stage gets its share of ``timeout``; then up to ``reap_timeout``
        more for the process to be reaped (see the module's docstring; 0: do
        not wait, an exited QEMU holds nothing but its process table entry).
        Raises QemuError only if even SIGKILL did not end the process.
        """
        try:
            outcome = self._end(timeout)
            if not self.wait_reaped(reap_timeout):
                outcome += (f"; pid {self.pid} is left a zombie: its parent has not reaped it "
                            f"in {reap_timeout:g}s")
            return outcome
        finally:
            self.close()

    def _end(self, timeout: float) -> str:
        if self.wait(0):
            return "already exited"
        share = timeout / 3
        try:
            with Qmp.connect(self.qmp_socket, timeout=share) as qmp:
                qmp.execute("quit")
        except QmpError:
            pass  # QEMU may close the monitor before it answers quit
        if self.wait(share):
            return "quit"
        for signum, name in ((signal.SIGTERM, "SIGTERM"), (signal.SIGKILL, "SIGKILL")):
            self.signal(signum)
            if self.wait(share):
                return name
        raise QemuError(f"QEMU pid {self.pid} survived SIGKILL for {share:.0f}s")

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


def _pidfd_reports_reaping(release: str) -> bool:
    """Whether this kernel's pidfds poll POLLHUP once their process is reaped (Linux 6.9 and later)."""
    version = re.match(r"(\d+)\.(\d+)", release)
    return version is not None and (int(version[1]), int(version[2])) >= (6, 9)


PIDFD_REPORTS_REAPING = _pidfd_reports_reaping(os.uname().release)
