"""The one background VM of ``python -m vm_images up|down|status``.

State lives in ``settings.vm_state_dir()`` (``~/.cache/uvmexec/vm`` unless
``UVMEXEC_VM_STATE`` says otherwise; kept 0700): ``state.json`` holds the
``GuestInfo`` of the running VM, ``run/`` its sockets, serial log and this
boot's host-side keys (``run/keys``, known_hosts included), and a lock file
serialises ``up`` and ``down`` between processes.

- ``up()`` returns the running VM's info if one runs, otherwise boots one in
  its own session (it outlives the caller) and returns once it is ready.
- ``down()`` stops it (QMP quit, then SIGTERM, then SIGKILL), returns once
  the QEMU process is gone (see ``QemuProcess.stop``) and removes the state;
  it is a no-op when nothing runs.
- ``status()`` is the running VM's info, or None.

A VM is "running" only if its recorded pid is alive and still the QEMU that
serves the recorded QMP socket, so a stale state file after a host reboot or
a crash is recognised and cleaned up, never trusted.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import settings
from .image import ImagePaths
from .launch import Guest, GuestInfo, release_share
from .qemu import SHARE_DIR, QemuProcess

STATE_FILE = "state.json"
RUN_DIR = "run"


def _state_dir(state_dir: Path | None) -> Path:
    directory = Path(state_dir) if state_dir else settings.vm_state_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)  # also one made before state held keys
    return directory


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / "lock", "a") as lock_file:
        # Blocking is safe: the kernel drops the lock if its holder dies.
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _read_state(directory: Path) -> GuestInfo | None:
    try:
        return GuestInfo.from_json(json.loads((directory / STATE_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _running(directory: Path) -> tuple[GuestInfo, QemuProcess] | None:
    info = _read_state(directory)
    if info is None:
        return None
    process = QemuProcess.attach(info.pid, info.qmp_socket)
    return (info, process) if process is not None else None


def _clear(directory: Path) -> None:
    (directory / STATE_FILE).unlink(missing_ok=True)
    release_share(directory / RUN_DIR / SHARE_DIR)  # rmtree would enter a task's rootfs still mounted there
    shutil.rmtree(directory / RUN_DIR, ignore_errors=True)


def up(image: ImagePaths | None = None, *, state_dir: Path | None = None,
       **guest_options: Any) -> GuestInfo:
    """The background VM's info, booting it first if none runs (options as for ``Guest``)."""
    directory = _state_dir(state_dir)
    with _locked(directory):
        running = _running(directory)
        if running is not None:
            running[1].close()
            return running[0]
        _clear(directory)
        guest = Guest(image, run_dir=directory / RUN_DIR, detached=True, **guest_options)
        guest.start()  # on failure it has already stopped QEMU
        info = guest.detach()
        scratch = directory / f".{STATE_FILE}.tmp"
        scratch.write_text(json.dumps(info.to_json(), indent=2) + "\n")
        scratch.replace(directory / STATE_FILE)
        return info


def down(*, state_dir: Path | None = None, timeout: float = 15.0) -> str | None:
    """Stop the background VM; return how it ended ("quit", "SIGTERM", ...) or None if none ran."""
    directory = _state_dir(state_dir)
    with _locked(directory):
        running = _running(directory)
        outcome = running[1].stop(timeout) if running is not None else None
        _clear(directory)
        return outcome


def status(*, state_dir: Path | None = None) -> GuestInfo | None:
    """The background VM's info if it runs, else None."""
    running = _running(_state_dir(state_dir))
    if running is None:
        return None
    running[1].close()
    return running[0]
