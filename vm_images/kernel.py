"""The guest kernel: Debian's linux-image package, reduced to what the boot needs.

``resolve_kernel()`` asks the host's apt which linux-image-6.1.0-NN-amd64 is
current. ``build_kernel(out, ...)`` fills ``out`` with:

- ``vmlinux``: the uncompressed ELF kernel (the XZ payload of the bzImage).
  QEMU boots it through its PVH entry with ``-kernel``, which skips the
  in-guest decompressor — seconds under TCG;
- ``modules/*.ko`` and ``modules.load``: only the modules the loader initrd
  insmods (``settings.KERNEL_MODULES`` and their dependencies, soft ones
  included), in load order;
- ``release``: the ``uname -r`` of that kernel.

The package is downloaded and unpacked outside any rootfs (putting the kernel
into debootstrap costs minutes and builds an initramfs nobody uses).
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .cache import BuildError, Progress, run

XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"


@dataclass(frozen=True)
class KernelPackage:
    """A kernel package as apt names it, e.g. linux-image-6.1.0-56-amd64 6.1.192-2."""

    name: str
    version: str

    @property
    def release(self) -> str:
        return self.name.removeprefix("linux-image-")


def resolve_kernel() -> KernelPackage:
    """The kernel package the host's apt would install for ``KERNEL_METAPACKAGE``."""
    step = "resolving the guest kernel package"
    meta = settings.KERNEL_METAPACKAGE
    depends = run(["apt-cache", "depends", meta], step=step)
    names = re.findall(r"Depends:\s*(linux-image-\S+)", depends)
    if not names:
        raise BuildError(f"{step}: apt-cache knows no {meta}; run 'apt-get update' first")
    name = names[0]
    policy = run(["apt-cache", "policy", name], step=step)
    match = re.search(r"Candidate:\s*(\S+)", policy)
    if not match or match.group(1) == "(none)":
        raise BuildError(f"{step}: apt has no installable version of {name}")
    return KernelPackage(name, match.group(1))


def build_kernel(out: Path, package: KernelPackage, progress: Progress) -> None:
    """Download ``package`` and fill ``out`` with vmlinux, modules/ and release."""
    download = out / "download"
    download.mkdir()
    # apt drops to the _apt user for downloads; that user cannot write here.
    os.chmod(download, 0o755)
    with progress.step(f"download {package.name} {package.version}"):
        run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
             f"{package.name}={package.version}"], step="downloading the kernel", cwd=download)
    debs = list(download.glob("*.deb"))
    if len(debs) != 1:
        raise BuildError(f"downloading the kernel: expected one .deb in {download}, got {debs}")
    unpacked = out / "unpacked"
    with progress.step("unpack kernel package"):
        run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], step="unpacking the kernel")
    release = package.release
    with progress.step("extract vmlinux"):
        bzimage = unpacked / "boot" / f"vmlinuz-{release}"
        (out / "vmlinux").write_bytes(extract_vmlinux(bzimage.read_bytes()))
    with progress.step("select kernel modules"):
        _copy_modules(unpacked, release, out / "modules")
    (out / "release").write_text(release + "\n")
    shutil.rmtree(download)
    shutil.rmtree(unpacked)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF kernel inside an XZ-compressed bzImage."""
    start = bzimage.find(XZ_MAGIC)
    while start != -1:
        try:
            kernel = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            kernel = b""
        if kernel.startswith(ELF_MAGIC):
            return kernel
        start = bzimage.find(XZ_MAGIC, start + 1)
    raise BuildError("extracting vmlinux: no XZ stream holding an ELF image in the bzImage")


def _copy_modules(unpacked: Path, release: str, target: Path) -> None:
    step = "selecting kernel modules"
    # The .deb ships no modules.dep; modprobe needs one to resolve dependencies.
    run(["depmod", "-b", str(unpacked), release], step=step)
    order: list[Path] = []
    for module in settings.KERNEL_MODULES:
        listing = run(["modprobe", "-d", str(unpacked), "-S", release, "--show-depends",
                       module], step=f"{step} ({module})")
        for line in listing.splitlines():
            words = line.split()
            # "builtin NAME" needs nothing loaded; only "insmod PATH" lines do.
            if len(words) >= 2 and words[0] == "insmod" and Path(words[1]) not in order:
                order.append(Path(words[1]))
    target.mkdir()
    names = []
    for path in order:
        if not path.name.endswith(".ko"):
            raise BuildError(f"{step}: {path.name} is compressed; the loader insmods plain .ko")
        shutil.copyfile(path, target / path.name)
        names.append(path.name)
    (target.parent / "modules.load").write_text("".join(f"{n}\n" for n in names))
