"""The loader initrd: busybox, a handful of kernel modules, and a script that switches root.

``build_initrd(path, busybox, modules_dir, load_order)`` writes an
uncompressed newc cpio archive (the kernel unpacks it without a
decompressor, which matters under TCG) holding:

- ``/bin/busybox`` (static) and the applet links the loader script uses;
- ``/lib/modules/*.ko`` and ``/lib/modules/modules.load`` (load order);
- ``/init``: ``guest/loader-init.sh``, which insmods the modules, mounts the
  ext4 root from virtio-blk and ``switch_root``s into ``settings.GUEST_INIT``.

The archive is a few MiB; the whole root stays on the ext4 disk.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import BinaryIO

from .stage import GUEST_FILES, render

APPLETS = ("sh", "mount", "umount", "insmod", "switch_root", "mkdir", "cat", "echo",
           "poweroff", "sleep")


class CpioWriter:
    """Writes a newc ("070701") cpio archive, the format the kernel's initramfs reader takes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._inode = 1
        self._written = 0

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"", nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0, b"", inode=0, nlink=1)
        self._pad(512)  # conventional block size; the kernel does not need it

    def _entry(self, name: str, mode: int, data: bytes, *, inode: int | None = None,
               nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        # ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor
        # namesize check
        fields = [inode if inode is not None else self._inode, mode, 0, 0, nlink, 0,
                  len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0]
        if inode is None:
            self._inode += 1
        self._write(b"070701" + b"".join(b"%08X" % value for value in fields))
        self._write(encoded)
        self._pad(4)
        self._write(data)
        self._pad(4)

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._written += len(data)

    def _pad(self, alignment: int) -> None:
        self._write(b"\0" * (-self._written % alignment))


def build_initrd(path: Path, busybox: Path, modules_dir: Path, load_order: list[str]) -> None:
    """Write the loader archive to ``path`` (see the module docstring)."""
    with open(path, "wb") as stream:
        archive = CpioWriter(stream)
        for directory in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules"):
            archive.directory(directory)
        # The kernel opens /dev/console for /init before anything is mounted.
        archive.char_device("dev/console", 5, 1)
        archive.file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in APPLETS:
            archive.symlink(f"bin/{applet}", "busybox")
        for name in load_order:
            archive.file(f"lib/modules/{name}", (modules_dir / name).read_bytes())
        archive.file("lib/modules/modules.load", "".join(f"{n}\n" for n in load_order).encode())
        init = render((GUEST_FILES / "loader-init.sh").read_text())
        archive.file("init", init.encode(), 0o755)
        archive.close()
