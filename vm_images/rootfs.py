"""The guest's Debian root tree: debootstrap, then everything the guest never uses removed.

``build_rootfs(out, mirror, progress)`` leaves ``out/root``: a bookworm
minbase tree with ``settings.PACKAGES``, without docs, man pages, locales,
apt lists and caches, perl, gconv modules, the parts of the Python standard
library that only serve development (test suites, idlelib, tkinter,
ensurepip, lib2to3, pydoc_data) and without SSH host keys (each image gets
its own). Debian already byte-compiled the standard library at install time;
those caches stay, so imports in the guest do not compile.

This step is the slow one (about a minute) and depends only on the package
list and this module, so it is cached under its own key and an agent change
never repeats it. Needs root (debootstrap, chroot).
"""

from __future__ import annotations

from pathlib import Path

from . import settings
from .cache import BuildError, Progress, remove_tree, run, tree_bytes

# Relative to the root; globs allowed. Removing a path that is gone is fine.
REMOVED_PATHS: tuple[str, ...] = (
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/lib/locale/*",
    "usr/share/lintian",
    "usr/share/bug",
    "usr/share/bash-completion",
    "usr/share/common-licenses",
    "var/cache/apt/*",
    "var/lib/apt/lists/*",
    "var/cache/debconf/*-old",
    "var/log/*",
    # glibc's iconv modules: Python brings its own codecs, nothing else here uses iconv.
    "usr/lib/x86_64-linux-gnu/gconv",
    # perl serves only dpkg maintainer scripts, and the guest never runs dpkg.
    "usr/bin/perl*",
    "usr/lib/x86_64-linux-gnu/perl-base",
    "usr/share/perl5",
    "usr/lib/python3.11/test",
    "usr/lib/python3.11/idlelib",
    "usr/lib/python3.11/tkinter",
    "usr/lib/python3.11/turtledemo",
    "usr/lib/python3.11/ensurepip",
    "usr/lib/python3.11/lib2to3",
    "usr/lib/python3.11/pydoc_data",
    "etc/ssh/ssh_host_*",
    "etc/machine-id",
    "var/lib/dbus/machine-id",
)


def rootfs_key_parts() -> dict[str, object]:
    """Every input of this step besides this module's source (hashed by the caller)."""
    return {
        "suite": settings.SUITE,
        "variant": settings.VARIANT,
        "packages": sorted(settings.PACKAGES),
        "removed": REMOVED_PATHS,
    }


def build_rootfs(out: Path, mirror: str, progress: Progress) -> None:
    """debootstrap into ``out/root`` and slim it; the log stays in ``out/debootstrap.log``."""
    root = out / "root"
    log = out / "debootstrap.log"
    with progress.step(f"debootstrap {settings.SUITE} from {mirror} (about a minute)"):
        run(["debootstrap", f"--variant={settings.VARIANT}",
             f"--include={','.join(settings.PACKAGES)}",
             settings.SUITE, str(root), mirror],
            step="debootstrap", log=log, env={"DEBIAN_FRONTEND": "noninteractive"})
    with progress.step("slim the root tree"):
        before = tree_bytes(root)
        for pattern in REMOVED_PATHS:
            for path in root.glob(pattern):
                if path.is_dir() and not path.is_symlink():
                    remove_tree(path)
                else:
                    path.unlink()
        after = tree_bytes(root)
    progress.note(f"root tree: {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB")
    if not (root / "usr/bin/python3").exists():
        raise BuildError(f"debootstrap produced no python3 in {root}")

