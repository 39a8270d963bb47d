"""Mounting a task's root filesystem from :class:`~common.Mount`\\ s, and unmounting it.

The mounts arrive as containerd hands them to a shim (``CreateTaskRequest.rootfs``:
an ``overlay`` with ``lowerdir``/``upperdir``/``workdir``, or a ``bind``), and
are mounted in order onto the bundle's ``rootfs/`` as containerd's
``mount.Mount.Mount`` does: option words that are mount flags (``ro``,
``rbind``, ``nosuid``, …) become ``mount(2)`` flags, the rest is the file
system's data. A read-only bind is a bind and then a read-only remount, as
the kernel requires. mount(2) is called directly (ctypes), so an error names
the mount and the kernel's own reason.

Unmounting takes off exactly what was mounted here, newest first — never a
mount someone else stacked on the same directory before.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections.abc import Sequence

from ..errors import InvalidArgumentError
from ..task import Mount

log = logging.getLogger(__name__)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

#: option word -> (flags it clears, flags it sets), as mount(8) and containerd read them.
_FLAGS: dict[str, tuple[int, int]] = {
    "defaults": (0, 0),
    "ro": (0, MS_RDONLY), "rw": (MS_RDONLY, 0),
    "nosuid": (0, MS_NOSUID), "suid": (MS_NOSUID, 0),
    "nodev": (0, MS_NODEV), "dev": (MS_NODEV, 0),
    "noexec": (0, MS_NOEXEC), "exec": (MS_NOEXEC, 0),
    "sync": (0, MS_SYNCHRONOUS), "async": (MS_SYNCHRONOUS, 0),
    "dirsync": (0, MS_DIRSYNC),
    "mand": (0, MS_MANDLOCK), "nomand": (MS_MANDLOCK, 0),
    "noatime": (0, MS_NOATIME), "atime": (MS_NOATIME, 0),
    "nodiratime": (0, MS_NODIRATIME), "diratime": (MS_NODIRATIME, 0),
    "relatime": (0, MS_RELATIME), "norelatime": (MS_RELATIME, 0),
    "strictatime": (0, MS_STRICTATIME), "nostrictatime": (MS_STRICTATIME, 0),
    "bind": (0, MS_BIND), "rbind": (0, MS_BIND | MS_REC),
}
#: Propagation words: applied by a mount call of their own after the mount.
_PROPAGATION = {
    "private": MS_PRIVATE, "rprivate": MS_PRIVATE | MS_REC,
    "slave": MS_SLAVE, "rslave": MS_SLAVE | MS_REC,
    "shared": MS_SHARED, "rshared": MS_SHARED | MS_REC,
}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
_libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if _libc.mount(None if source is None else os.fsencode(source), os.fsencode(target),
                   None if fstype is None else fstype.encode(), flags,
                   None if data is None else data.encode()) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _parse(mount: Mount) -> tuple[int, int, str]:
    """(flags, propagation flags, data) of a mount's options."""
    flags = propagation = 0
    data: list[str] = []
    for option in mount.options:
        if option in _FLAGS:
            clear, add = _FLAGS[option]
            flags = (flags & ~clear) | add
        elif option in _PROPAGATION:
            propagation |= _PROPAGATION[option]
        else:
            data.append(option)
    if mount.type == "bind":
        flags |= MS_BIND
    return flags, propagation, ",".join(data)


def mount_one(mount: Mount, target: str) -> None:
    """Mount ``mount`` onto ``target``; ``OSError`` if the kernel refuses (nothing is left mounted)."""
    flags, propagation, data = _parse(mount)
    if flags & MS_BIND:
        _mount(mount.source, target, None, flags & (MS_BIND | MS_REC), None)
        try:
            extra = flags & ~(MS_BIND | MS_REC)
            if extra:  # the kernel ignores other flags on a bind: apply them by a remount
                _mount(None, target, None, MS_REMOUNT | MS_BIND | extra, None)
            if propagation:
                _mount(None, target, None, propagation, None)
        except OSError:
            _umount(target, MNT_DETACH)
            raise
        return
    _mount(mount.source, target, mount.type, flags, data or None)
    if propagation:
        try:
            _mount(None, target, None, propagation, None)
        except OSError:
            _umount(target, MNT_DETACH)
            raise


def mount_all(mounts: Sequence[Mount], target: str, *, label: str = "rootfs") -> int:
    """Mount each of ``mounts`` onto ``target`` in order; return how many (for :func:`unmount`).

    A mount the kernel refuses raises ``InvalidArgumentError`` naming it
    (``rootfs[1] (overlay on '/b/rootfs'): Invalid argument``) after the ones
    before it were unmounted again.
    """
    done = 0
    for index, mount in enumerate(mounts):
        try:
            mount_one(mount, target)
        except OSError as error:
            unmount(target, done)
            raise InvalidArgumentError(
                f"{label}[{index}] ({mount.type} of {mount.source!r} on {target!r}): "
                f"{error.strerror}"
            ) from None
        done += 1
    return done


def _umount(target: str, flags: int) -> None:
    if _libc.umount2(os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def unmount(target: str, count: int) -> None:
    """Take ``count`` mounts off ``target``, newest first. A busy one is detached (lazily
    unmounted, as nothing here may keep a container's root mounted) and logged; one already
    gone ends the work. Never raises."""
    for _ in range(count):
        try:
            _umount(target, 0)
        except OSError as error:
            if error.errno == errno.EINVAL:  # not mounted (any more)
                return
            if error.errno == errno.EBUSY:
                log.warning("unmounting %s: busy; detaching it", target)
                try:
                    _umount(target, MNT_DETACH)
                    continue
                except OSError as detach_error:
                    error = detach_error
            log.error("unmounting %s: %s", target, error.strerror)
            return
