"""A busybox root filesystem for containers, and OCI bundles made from it: no registry needed.

``busybox_tree()`` builds, once, a small read-only root filesystem from the
host's Debian ``busybox-static``: ``/bin/busybox`` with a link for each of its
applets where busybox itself would install them (``busybox --list-full``),
``/etc/passwd`` and ``/etc/group`` naming root, sys (3:3), www-data (33) and
nobody (65534), and the usual empty directories. It is cached under the image
cache (``$UVMEXEC_IMAGE_CACHE``), keyed by the busybox binary and this
module's layout version, like every step of the guest image.

``make_bundle(directory, process)`` turns it into an OCI bundle the way a
container manager would: ``config.json`` written here (what ``runc spec``
writes, with the given process and hostname, the pid/ipc/uts/mount/network
namespaces and containerd's default capabilities), an empty ``rootfs/``, and
the root filesystem as one overlay mount for the task to mount —
the shared tree read-only below, a per-bundle ``upper/`` above it — so a test
sees every file the container wrote in ``Bundle.upper``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import Mount, ProcessSpec

from . import settings
from .cache import Progress, digest, ensure_step, file_digest
from .image import _host_busybox as host_busybox  # the one check that it is there and static

#: Bump when the tree's layout changes: it is part of the cache key.
LAYOUT_VERSION = 1

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
sys:x:3:3:sys:/dev:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """\
root:x:0:
sys:x:3:
www-data:x:33:
nogroup:x:65534:
"""
#: Directory -> mode. /tmp is world-writable and sticky, /root private, as on Debian.
DIRECTORIES = {
    "bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "etc": 0o755, "dev": 0o755,
    "proc": 0o555, "sys": 0o555, "tmp": 0o1777, "root": 0o700, "home": 0o755, "mnt": 0o755, "run": 0o755,
    "var": 0o755, "var/tmp": 0o1777, "var/www": 0o755,
}

#: containerd's default capability set (``oci.WithDefaults``), for bounding, effective and permitted.
CAPABILITIES = [
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
NAMESPACES = ("pid", "network", "ipc", "uts", "mount")


def busybox_tree(progress: Progress | None = None) -> Path:
    """The read-only busybox root filesystem (built on first use; needs the host's busybox-static)."""
    busybox = host_busybox()
    key = digest("busybox-tree", LAYOUT_VERSION, file_digest(busybox))
    return ensure_step(settings.image_cache_dir() / "parts", f"busybox-tree-{key}",
                       lambda out: _build_tree(out, busybox), progress or Progress())


def _build_tree(out: Path, busybox: Path) -> None:
    for directory, mode in DIRECTORIES.items():
        (out / directory).mkdir(parents=True, exist_ok=True)
        os.chmod(out / directory, mode)
    shutil.copy(busybox, out / "bin" / "busybox")
    os.chmod(out / "bin" / "busybox", 0o755)
    listed = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout
    for applet in listed.split():
        link = out / applet
        if applet == "bin/busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        # Relative, so the tree reads right from the host too.
        link.symlink_to(os.path.relpath(out / "bin" / "busybox", link.parent))
    (out / "etc" / "passwd").write_text(PASSWD)
    (out / "etc" / "group").write_text(GROUP)


@dataclass(frozen=True)
class Bundle:
    """An OCI bundle on disk and the rootfs mounts that complete it (as containerd hands them to a shim)."""

    path: str
    rootfs: list[Mount]
    #: The overlay's upper directory: every file the container writes ends up here.
    upper: Path


def make_bundle(directory: str | os.PathLike[str], process: ProcessSpec, *, hostname: str = "uvmexec",
                namespaces: tuple[str, ...] = NAMESPACES, tree: Path | None = None) -> Bundle:
    """Write a bundle for ``process`` into ``directory`` (created if missing) over the busybox tree."""
    path = Path(directory).absolute()
    for part in ("rootfs", "upper", "work"):
        (path / part).mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(oci_config(process, hostname, namespaces), indent=2) + "\n")
    lower = tree if tree is not None else busybox_tree()
    overlay = Mount("overlay", "overlay",
                    [f"lowerdir={lower}", f"upperdir={path / 'upper'}", f"workdir={path / 'work'}"])
    return Bundle(str(path), [overlay], path / "upper")


def oci_config(process: ProcessSpec, hostname: str, namespaces: tuple[str, ...] = NAMESPACES) -> dict[str, Any]:
    """The OCI runtime config ``runc spec`` would write, with this process, hostname and namespaces."""
    oci_process = process.to_oci()
    oci_process["capabilities"] = {kind: list(CAPABILITIES) for kind in ("bounding", "effective", "permitted")}
    return {
        "ociVersion": "1.0.2-dev",
        "process": oci_process,
        "root": {"path": "rootfs", "readonly": False},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in namespaces],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
