"""``build_image()``: a bootable guest image, cached by a hash of every input.

Three cached steps, each under its own key (see ``cache.ensure_step``):

- ``parts/rootfs-KEY``: debootstrap + slimming (about a minute). Keyed by
  the package list, debootstrap parameters and ``rootfs.py``.
- ``parts/kernel-KEY``: vmlinux + the loader's modules (seconds). Keyed by
  the kernel package and version apt resolves now, and ``kernel.py``.
- ``KEY`` (the image): the project's ``common/`` and ``guest_agent/``,
  PID 1, the ext4 disk and the loader initrd. Keyed by both keys above, the
  sources of every build module and guest file, the busybox binary, and the
  bytes of every file under ``common/`` and ``guest_agent/``.

The image holds no key and no secret: each boot gets its own keys from the
launcher (see ``keys.py``), so every VM booted from one image has different
ones and reading the image reveals none of them.

So an agent change re-runs only the image step; unchanged inputs cost only
the hashing and two apt-cache queries. Building needs root.

The cache is private to its owner: directories 0700, image files 0600, and
a cache made with wider modes (as before) is narrowed on every call (see
``secure_cache``).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import settings
from .cache import BuildError, Progress, digest, ensure_step, file_digest, tree_digest
from .initrd import build_initrd
from .kernel import KernelPackage, build_kernel, resolve_kernel
from .rootfs import build_rootfs, rootfs_key_parts
from .stage import customize, make_ext4, remove_stage, stage_root

PACKAGE_DIR = Path(__file__).resolve().parent

# Modules whose source shapes the image. Launcher-only modules are left out
# so that editing them does not rebuild; tests/vm checks that every module of
# this package is in exactly one of the two lists.
BUILD_SOURCES: tuple[str, ...] = (
    "settings.py", "cache.py", "kernel.py", "rootfs.py", "initrd.py",
    "stage.py", "image.py",
    "guest/loader-init.sh", "guest/uvm-init.sh", "guest/sshd_config",
)
LAUNCH_SOURCES: tuple[str, ...] = (
    "__init__.py", "__main__.py", "launch.py", "qemu.py", "qmp.py", "probe.py",
    "accel.py", "daemon.py", "options.py", "keys.py",
    "busybox.py",  # container bundles for tests and the shim: nothing of the guest image
    "oci_image.py",  # the busybox image for containerd: nothing of the guest image
)

MANIFEST = "manifest.json"
#: The memo of which kernel package apt resolves to (vm_images.kernel.resolve_kernel).
KERNEL_MEMO = "kernel-resolution.json"


@dataclass(frozen=True)
class ImagePaths:
    """Everything the launcher needs from one built image (all inside ``directory``)."""

    directory: Path
    kernel: Path          # uncompressed vmlinux, booted through PVH
    initrd: Path          # the busybox loader
    rootfs: Path          # ext4 root disk; boot it with snapshot=on
    kernel_release: str   # `uname -r` in the guest

    @classmethod
    def from_directory(cls, directory: Path) -> ImagePaths:
        """The image built in ``directory``; BuildError if it is not a complete image."""
        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise BuildError(f"{directory} is not a built image: {error}") from None
        return cls(
            directory=directory,
            kernel=directory / "vmlinux",
            initrd=directory / "loader.img",
            rootfs=directory / "rootfs.ext4",
            kernel_release=manifest["kernel_release"],
        )

    def manifest(self) -> dict[str, object]:
        return dict(json.loads((self.directory / MANIFEST).read_text()))


def build_image(*, cache_dir: Path | None = None, project_root: Path | None = None,
                mirror: str | None = None, extra_space_mb: int = 256, keep_images: int = 3,
                progress: Progress | None = None) -> ImagePaths:
    """Return the image for the current inputs, building whatever is not cached.

    ``project_root`` holds the ``common/`` and ``guest_agent/`` copied into
    the guest (default: the tree this package lives in). ``extra_space_mb``
    is the free space left on the root disk. After a new image is built,
    only the ``keep_images`` newest stay in the cache. Progress lines go to stderr.
    Raises BuildError naming the failed step.
    """
    cache_dir = Path(cache_dir) if cache_dir else settings.image_cache_dir()
    project_root = Path(project_root) if project_root else settings.project_root()
    progress = progress or Progress()
    mirror = mirror or settings.debian_mirror()
    busybox = _host_busybox()
    secure_cache(cache_dir)
    package = resolve_kernel_kept(cache_dir / KERNEL_MEMO)

    rootfs_key = digest("rootfs", rootfs_key_parts(), file_digest(PACKAGE_DIR / "rootfs.py"))
    kernel_key = digest("kernel", package.name, package.version, settings.KERNEL_MODULES,
                        file_digest(PACKAGE_DIR / "kernel.py"))
    image_key = digest(
        "image", rootfs_key, kernel_key, extra_space_mb, file_digest(busybox),
        {name: file_digest(PACKAGE_DIR / name) for name in BUILD_SOURCES},
        {name: tree_digest(project_root / name) if (project_root / name).is_dir() else None
         for name in settings.PROJECT_PACKAGES},
    )
    final = cache_dir / image_key
    if (final / MANIFEST).is_file():
        progress.note(f"image {image_key} is cached")
        return ImagePaths.from_directory(final)

    if os.geteuid() != 0:
        raise BuildError("building the guest image needs root (debootstrap, chroot, mkfs)")
    parts = cache_dir / "parts"
    rootfs = ensure_step(parts, f"rootfs-{rootfs_key}",
                         lambda out: build_rootfs(out, mirror, progress), progress)
    kernel = ensure_step(parts, f"kernel-{kernel_key}",
                         lambda out: build_kernel(out, package, progress), progress)

    def assemble(out: Path) -> None:
        _assemble(out, rootfs / "root", kernel, package, project_root, busybox,
                  extra_space_mb, image_key, progress)

    ensure_step(cache_dir, image_key, assemble, progress)
    secure_cache(cache_dir)
    progress.note(f"image {image_key} ready in {final}")
    prune_images(cache_dir, keep=keep_images, progress=progress)
    return ImagePaths.from_directory(final)


#: What apt's answer depends on: its package lists, its cache, its configuration, dpkg's status.
APT_STATE_PATHS = ("/var/lib/apt/lists", "/var/cache/apt/pkgcache.bin", "/etc/apt/sources.list",
                   "/etc/apt/sources.list.d", "/etc/apt/preferences", "/etc/apt/preferences.d",
                   "/etc/apt/apt.conf.d", "/var/lib/dpkg/status")


def apt_state() -> list[Any]:
    """A fingerprint of what apt-cache reads: each path's kind, size, inode and mtime (a list
    directory's mtime changes whenever ``apt-get update`` puts a new list in place)."""
    state: list[Any] = [settings.KERNEL_METAPACKAGE, os.environ.get("APT_CONFIG", "")]
    for path in APT_STATE_PATHS:
        try:
            info = os.stat(path)
        except FileNotFoundError:
            state.append([path, None])
            continue
        state.append([path, info.st_mode, info.st_size, info.st_ino, info.st_mtime_ns])
    return state


def resolve_kernel_kept(memo: Path) -> KernelPackage:
    """:func:`~vm_images.kernel.resolve_kernel`, kept in ``memo`` while :func:`apt_state` is unchanged.

    Asking apt takes two ``apt-cache`` runs, over a second of CPU each here: every boot's cache
    check paid it (a containerd shim boots a VM at its first Create) though the answer changes
    only with apt's lists or configuration."""
    state = apt_state()
    try:
        kept = json.loads(memo.read_text())
        if kept["state"] == state:
            return KernelPackage(kept["name"], kept["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    package = resolve_kernel()
    partial = memo.with_name(f".{memo.name}.{os.getpid()}")
    partial.write_text(json.dumps({"state": state, "name": package.name, "version": package.version}))
    os.replace(partial, memo)
    return package


def secure_cache(cache_dir: Path) -> None:
    """Make the cache private to its owner: directories 0700, image files 0600.

    The cache root, ``parts/`` and every directory directly in them become
    0700; images and lock directories are made 0700/0600 throughout. The
    trees inside the cached rootfs and kernel steps are not entered: they
    keep the guest's own modes (mkfs copies them into the image), and their
    0700 step directory closes them already. Neither is ``tmp/``, where
    another process may be building.
    """
    if not cache_dir.is_dir():
        cache_dir.mkdir(parents=True, mode=0o700)
    for directory in (cache_dir, cache_dir / "parts"):
        if not directory.is_dir():
            continue
        _chmod(directory, 0o700)
        for child in directory.iterdir():
            if not child.is_dir():
                continue
            _chmod(child, 0o700)
            if child.name == "locks" or (child / MANIFEST).is_file():
                _make_tree_private(child)


def _make_tree_private(root: Path) -> None:
    for directory, subdirs, files in os.walk(root):
        for name in subdirs:
            _chmod(Path(directory, name), 0o700)
        for name in files:
            _chmod(Path(directory, name), 0o600)


def _chmod(path: Path, mode: int) -> None:
    if path.is_symlink():
        return
    if path.stat().st_mode & 0o7777 != mode:
        path.chmod(mode)


def prune_images(cache_dir: Path, *, keep: int, progress: Progress | None = None) -> list[Path]:
    """Delete all but the ``keep`` newest images in ``cache_dir``; return what was deleted.

    Only whole images go (cached rootfs and kernel steps stay). A running VM
    is unaffected: QEMU holds its files open, and its keys are its own.
    """
    images = sorted((path for path in cache_dir.iterdir() if (path / MANIFEST).is_file()),
                    key=lambda path: (path / MANIFEST).stat().st_mtime, reverse=True)
    removed = images[keep:]
    for path in removed:
        if progress:
            progress.note(f"pruning the old image {path.name}")
        shutil.rmtree(path, ignore_errors=True)
    return removed


def _assemble(out: Path, rootfs: Path, kernel: Path, package: KernelPackage,
              project_root: Path, busybox: Path, extra_space_mb: int, image_key: str,
              progress: Progress) -> None:
    started = time.monotonic()
    stage = out / "stage"
    with progress.step("stage the root tree"):
        stage_root(rootfs, stage)
        customize(stage, project_root, busybox)
    with progress.step("make the ext4 root disk"):
        size = make_ext4(stage, out / "rootfs.ext4", extra_space_mb)
        remove_stage(stage)
    with progress.step("make the loader initrd"):
        load_order = (kernel / "modules.load").read_text().split()
        build_initrd(out / "loader.img", busybox, kernel / "modules", load_order)
    _link_or_copy(kernel / "vmlinux", out / "vmlinux")
    allocated = (out / "rootfs.ext4").stat().st_blocks * 512
    manifest = {
        "key": image_key,
        "kernel_release": (kernel / "release").read_text().strip(),
        "kernel_package": f"{package.name} {package.version}",
        "packages": list(settings.PACKAGES),
        "rootfs_bytes": size,
        "rootfs_allocated_bytes": allocated,
        "initrd_bytes": (out / "loader.img").stat().st_size,
        "assembled_seconds": round(time.monotonic() - started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    progress.note(f"root disk: {size / 2**20:.0f} MiB apparent, "
                  f"{allocated / 2**20:.0f} MiB allocated")


def _host_busybox() -> Path:
    found = shutil.which("busybox", path="/usr/bin:/bin:/usr/sbin:/sbin")
    path = Path(found) if found else settings.HOST_BUSYBOX
    if not path.is_file():
        raise BuildError("busybox is not installed on the host (Debian package busybox-static)")
    # A dynamically linked busybox (Debian's "busybox") cannot run in the initrd.
    if _read_interp(path):
        raise BuildError(f"{path} is dynamically linked; install busybox-static")
    return path


def _read_interp(path: Path) -> bytes:
    """The ELF program interpreter of ``path`` (empty for a static binary)."""
    with open(path, "rb") as stream:
        header = stream.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:
            return b""
        phoff, = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        for index in range(phnum):
            stream.seek(phoff + index * phentsize)
            entry = stream.read(phentsize)
            kind, = struct.unpack_from("<I", entry, 0)
            if kind == 3:  # PT_INTERP
                offset, = struct.unpack_from("<Q", entry, 8)
                size, = struct.unpack_from("<Q", entry, 32)
                stream.seek(offset)
                return stream.read(size)
    return b""


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the 60 MiB kernel is shared with the kernel step
    except OSError:
        shutil.copyfile(source, target)
