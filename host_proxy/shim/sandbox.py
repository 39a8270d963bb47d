"""Hypervisor isolation: the shim's utility VM, and the containers runc runs in it.

One shim serves one pod (containers sharing the annotation
``io.kubernetes.cri.sandbox-id``, see :mod:`.main`) or one container, and
boots at most one VM (:class:`vm_images.Guest`), at the first Create that
asks for hypervisor isolation. The VM's agent is reached with an
:class:`~host_proxy.AgentClient` (tcp + CURVE, this boot's keys); each
container is ``create_task(..., share=...)``: the host mounts the rootfs
containerd hands over under the VM's virtio-9p share and the agent in the
guest runs runc on it (:mod:`host_proxy.shared_bundle`). Every exec is then
a :class:`~host_proxy.ProxiedExec`, which obeys the whole exec contract.

A lost guest: a thread holds QEMU's pidfd; when QEMU exits while the shim
did not stop it, the client is told the agent is gone for good
(:meth:`AgentClient.abandon`): every exec not yet exited ends with 255 (so
containerd gets its /tasks/exit and Wait returns), Delete still answers
from the host's records, and Shutdown tears the rest down.

A killed shim: the VM's run directory is named in each bundle
(:data:`RECORD_NAME`), written before QEMU starts, so containerd's
``delete`` command (:func:`cleanup_after_dead_shim`) finds QEMU by the QMP
socket on its command line, stops it and removes the mounts and files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import DeadlineExceededError, InvalidArgumentError, UnavailableError
from common.spec import Stdio
from common.state import ExecEvent
from common.task import Mount, Task

if TYPE_CHECKING:
    from host_proxy.client import AgentClient
    from vm_images.launch import Guest, GuestInfo

LOG = logging.getLogger(__name__)

RECORD_NAME = "uvmexec-vm.json"
GUEST_INFO_NAME = "guest.json"  # in the run directory: the VM's GuestInfo
VM_DIR_NAME = "uvmexec-vm"
FALLBACK_VM_DIR = "/run/uvmexec-shim/vm"
MAX_RUN_DIR = 60  # the QMP and QGA sockets go in it: sun_path is 108 bytes
DEFAULT_BOOT_TIMEOUT = 120.0
DEFAULT_MEMORY_MB = 512
DEFAULT_CPUS = 2
#: How long the shim waits for the agent in its VM to answer one request (AgentClient's default: 10 s).
#: A ``start`` runs runc create and start in the guest: under TCG on a loaded host (load 15-18 on two
#: cores) it took 10.9 s and 11.7 s, and failed the run at 10 s. The connection's own loss detection
#: (heartbeats, ``reconnect_timeout``) still ends the execs of a guest that is gone.
AGENT_ANSWER_TIMEOUT = 60.0
#: How long the shim waits for a lost connection to its VM's agent to come back before it ends the
#: VM's execs (AgentClient's default: 30 s). A guest starved under TCG may miss libzmq's heartbeats and
#: take several handshakes to reconnect: "unreachable for 30s" failed a Start of containerd's suite at
#: load 10. A guest that is gone is caught at once anyway, by the watcher of QEMU's pidfd.
AGENT_RECONNECT_TIMEOUT = 120.0


@dataclass(frozen=True)
class VMOptions:
    """How the shim's utility VM is booted (the runtime options file may set each)."""

    memory_mb: int = DEFAULT_MEMORY_MB
    cpus: int = DEFAULT_CPUS
    boot_timeout: float = DEFAULT_BOOT_TIMEOUT


def run_dir_for(address: str, namespace: str, group: str) -> str:
    """Where the VM of shim group ``group`` keeps its sockets, logs, keys and share.

    Beside containerd's socket (so a private containerd keeps everything in
    its own directory), named by a digest; under /run when that is too long.
    """
    name = hashlib.sha256(f"{address}\0{namespace}\0{group}".encode()).hexdigest()[:16]
    parent = os.path.join(os.path.dirname(os.path.abspath(address)) if address else "/run", VM_DIR_NAME)
    if len(os.path.join(parent, name)) > MAX_RUN_DIR:
        parent = FALLBACK_VM_DIR
    return os.path.join(parent, name)


class UtilityVM:
    """The shim's VM: booted by the first :meth:`create_task`, stopped by :meth:`close`."""

    def __init__(self, run_dir: str, options: VMOptions = VMOptions(), *,
                 boot: Callable[[Path, VMOptions], Guest] | None = None) -> None:
        self._run_dir = Path(run_dir)
        self._options = options
        self._boot = boot or _boot_guest
        self._lock = threading.Lock()  # held through the boot: concurrent Creates wait for it
        self._guest: Guest | None = None
        self._info: GuestInfo | None = None
        self._client: AgentClient | None = None
        self._failure: str | None = None
        self._closing = False
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        self._watcher: threading.Thread | None = None

    @property
    def info(self) -> GuestInfo | None:
        return self._info

    @property
    def failure(self) -> str | None:
        """Why the VM is gone (it exited without being stopped, or did not boot), or None."""
        return self._failure

    def create_task(self, task_id: str, bundle: str, stdio: Stdio, mounts: list[Mount],
                    on_event: Callable[[ExecEvent], None]) -> Task:
        from host_proxy.shared_bundle import BundleShare

        _write_record(bundle, self._run_dir)
        client, info = self._ready()
        return client.create_task(task_id, bundle, stdio, rootfs=mounts,
                                  share=BundleShare(info.share_dir, info.guest_share_dir), on_event=on_event,
                                  create_init=True)

    def _ready(self) -> tuple[AgentClient, GuestInfo]:
        with self._lock:
            if self._failure is not None:
                raise UnavailableError(self._failure)
            if self._closing:
                raise UnavailableError("the shim is shutting down")
            if self._client is None:
                self._start()
            assert self._client is not None and self._info is not None
            return self._client, self._info

    def _start(self) -> None:
        from host_proxy.client import AgentClient
        from vm_images.launch import GuestBootError

        self._run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        for done in _clear(self._run_dir):  # a shim of this group killed before containerd's delete
            LOG.warning("a stale utility VM: %s", done)
        started = time.monotonic()
        try:
            self._guest = self._boot(self._run_dir, self._options)
            info = self._guest.start()
        except GuestBootError as error:
            self._guest = None
            self._remove_run_dir()
            waited = time.monotonic() - started
            message = f"the utility VM did not boot: {error}"
            if waited >= self._options.boot_timeout:
                raise DeadlineExceededError(
                    f"the utility VM was not ready within {self._options.boot_timeout:g}s: {error}") from None
            raise UnavailableError(message) from None
        LOG.info("utility VM up: QEMU pid %d, %s, boot %.1fs, kernel %s", info.pid, info.accel,
                 info.boot_seconds, info.kernel_release)
        # How to reach this VM's agent (root only: the run directory is 0700), for debugging and the benchmarks.
        descriptor = os.open(self._run_dir / GUEST_INFO_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(descriptor, "w") as info_file:
            json.dump(info.to_json(), info_file)
        try:
            client = AgentClient.connect(info.agent_endpoint, server_key=info.server_key,
                                         client_key=info.client_key, timeout=AGENT_ANSWER_TIMEOUT,
                                         reconnect_timeout=AGENT_RECONNECT_TIMEOUT)
        except BaseException:
            self._stop_guest()
            raise
        self._info, self._client = info, client
        self._watcher = threading.Thread(target=self._watch, args=(info.pid,), name="uvmexec-vm-watch",
                                         daemon=True)
        self._watcher.start()

    def _watch(self, pid: int) -> None:
        """Wait for QEMU to exit or the shim to stop it; an exit of its own ends every exec with 255."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = None
        try:
            if pidfd is not None:
                ready, _, _ = select.select([pidfd, self._stop_read], [], [])
                if pidfd not in ready:
                    return  # close() is stopping it
            assert self._info is not None
            why = (f"the utility VM exited (QEMU pid {pid}); serial console's last lines:\n"
                   f"{_tail(self._info.serial_log)}")
            LOG.error("%s", why)
            self._failure = why
            if self._client is not None:
                self._client.abandon(why)
        finally:
            if pidfd is not None:
                os.close(pidfd)

    def close(self) -> None:
        """Stop the VM (after its containers were deleted, or at once on a forced shutdown)."""
        with self._lock:
            self._closing = True
        os.write(self._stop_write, b"x")
        if self._watcher is not None:
            self._watcher.join()
        if self._client is not None:
            self._client.close()
        self._stop_guest()
        os.close(self._stop_read)
        os.close(self._stop_write)

    def _stop_guest(self) -> None:
        if self._guest is not None:
            self._guest.stop()
            self._guest = None
        self._remove_run_dir()

    def _remove_run_dir(self) -> None:
        # Guest.stop() took the mounts off the share and removed the keys; the logs go with the rest.
        if os.path.isdir(self._run_dir):
            from vm_images.launch import release_share
            from vm_images.qemu import SHARE_DIR

            release_share(self._run_dir / SHARE_DIR)
            shutil.rmtree(self._run_dir, ignore_errors=True)


def _boot_guest(run_dir: Path, options: VMOptions) -> Guest:
    from vm_images.launch import Guest

    return Guest(memory_mb=options.memory_mb, cpus=options.cpus, ready_timeout=options.boot_timeout,
                 wait_for_ssh=False, run_dir=run_dir)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(none)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def _write_record(bundle: str, run_dir: Path) -> None:
    """Name the VM's run directory in the bundle, for containerd's ``delete`` after a dead shim."""
    path = os.path.join(bundle, RECORD_NAME)
    try:
        with open(path, "w") as record:
            json.dump({"run_dir": str(run_dir)}, record)
    except OSError as error:
        raise InvalidArgumentError(f"bundle {bundle!r}: cannot write {RECORD_NAME}: {error.strerror}") from None


def cleanup_after_dead_shim(bundle: str) -> list[str]:
    """Stop the VM named in ``bundle`` (if any is still running) and remove its run directory.

    For containerd's ``delete`` command, once the shim that owned the VM is
    gone. Returns what was done, for the log.
    """
    try:
        with open(os.path.join(bundle, RECORD_NAME)) as record_file:
            run_dir = Path(json.load(record_file)["run_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return _clear(run_dir)


def _clear(run_dir: Path) -> list[str]:
    """Stop the QEMU whose QMP socket is in ``run_dir``, take the mounts off its share, remove it all."""
    from vm_images.launch import release_share
    from vm_images.qemu import SHARE_DIR, QemuProcess

    done: list[str] = []
    qmp_socket = run_dir / "qmp.sock"
    for pid in _pids_naming(f"unix:{qmp_socket},server=on,wait=off"):
        process = QemuProcess.attach(pid, qmp_socket)
        if process is not None:
            # Not waiting for its reaping: the shim that started it is dead, so its new parent (init or a
            # subreaper) reaps it, when it will (init here: every ~2 s), and containerd kills a delete
            # command after 5 s, which left the share's mounts and the run directory behind.
            done.append(f"QEMU pid {pid}: {process.stop(reap_timeout=0)}")
    if run_dir.is_dir():
        done.extend(f"unmounted {point}" for point in release_share(run_dir / SHARE_DIR))
        shutil.rmtree(run_dir, ignore_errors=True)
        done.append(f"removed {run_dir}")
    return done


def _pids_naming(word: str) -> list[int]:
    target = word.encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if target in cmdline.read().split(b"\0"):
                        found.append(int(entry))
    return found
