"""Turning the cached Debian tree into one image's root disk.

``stage_root(rootfs, stage)`` makes ``stage`` a hard-link farm of the cached
tree (instant, no bytes copied). Everything image-specific is then added with
``install_file``, which always unlinks before writing: a file shared with the
cache is replaced, never written through, so the cached tree stays pristine.
``make_ext4(stage, image)`` packs the result with ``mkfs.ext4 -d``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from . import settings
from .cache import BuildError, run, tree_bytes, tree_files

GUEST_FILES = Path(__file__).resolve().parent / "guest"
MIB = 1 << 20


def stage_root(rootfs: Path, stage: Path) -> None:
    run(["cp", "--archive", "--link", str(rootfs), str(stage)], step="staging the root tree")


def install_file(stage: Path, guest_path: str, data: bytes, mode: int = 0o644) -> Path:
    """Write ``data`` at ``guest_path`` inside ``stage``, replacing (not editing) any file there."""
    path = stage / guest_path.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "wb") as stream:
        os.fchmod(stream.fileno(), mode)  # the umask must not decide a guest file's mode
        stream.write(data)
    return path


def agent_command() -> str:
    """The agent's command line as the guest's PID 1 runs it (``uvm-agent``'s options, as README.md lists them)."""
    keys = settings.GUEST_KEY_DIR
    return (f"python3 -m guest_agent --listen tcp://0.0.0.0:{settings.AGENT_PORT}"
            f" --server-key {keys}/agent.key_secret --authorized-keys {keys}/authorized_keys")


def render(template: str) -> str:
    """Fill the ``@NAME@`` placeholders of a script in guest/ from ``settings``."""
    values = {
        "@GUEST_INIT@": settings.GUEST_INIT,
        "@GUEST_BUSYBOX@": settings.GUEST_BUSYBOX,
        "@GUEST_HOSTNAME@": settings.GUEST_HOSTNAME,
        "@GUEST_PROJECT_DIR@": settings.GUEST_PROJECT_DIR,
        "@AGENT_COMMAND@": agent_command(),
        "@GUEST_KEY_DIR@": settings.GUEST_KEY_DIR,
        "@KEYS_FW_CFG_NAME@": settings.KEYS_FW_CFG_NAME,
        "@QGA_PORT_NAME@": settings.QGA_PORT_NAME,
        "@SHARE_MOUNT_TAG@": settings.SHARE_MOUNT_TAG,
        "@GUEST_SHARE_DIR@": settings.GUEST_SHARE_DIR,
        "@SHARE_MSIZE@": str(settings.SHARE_MSIZE),
    }
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    left = re.findall(r"@[A-Z_]+@", template)
    if left:
        raise BuildError(f"rendering a guest script: no value for {left}")
    return template


def customize(stage: Path, project_root: Path, busybox: Path) -> None:
    """Add configuration, PID 1, busybox and the project's packages to the tree.

    No key: each boot gets its own (see keys.py); the tree holds only the
    empty mount point ``settings.GUEST_KEY_DIR`` for them.
    """
    (stage / settings.GUEST_KEY_DIR.lstrip("/")).mkdir(mode=0o700)
    (stage / "root").chmod(0o700)
    install_file(stage, "/etc/ssh/sshd_config",
                 render((GUEST_FILES / "sshd_config").read_text()).encode())
    install_file(stage, settings.GUEST_INIT,
                 render((GUEST_FILES / "uvm-init.sh").read_text()).encode(), 0o755)
    install_file(stage, settings.GUEST_BUSYBOX, busybox.read_bytes(), 0o755)
    install_file(stage, "/etc/hostname", f"{settings.GUEST_HOSTNAME}\n".encode())
    install_file(stage, "/etc/hosts",
                 f"127.0.0.1\tlocalhost\n127.0.1.1\t{settings.GUEST_HOSTNAME}\n".encode())
    # debootstrap copied the host's resolver; slirp's is at 10.0.2.3.
    install_file(stage, "/etc/resolv.conf", b"nameserver 10.0.2.3\n")
    _copy_project(stage, project_root)


def _copy_project(stage: Path, project_root: Path) -> None:
    if not (project_root / "guest_agent" / "__main__.py").is_file():
        raise BuildError(f"{project_root} has no guest_agent/__main__.py; the guest's PID 1 "
                         f"runs `{agent_command()}`")
    for package in settings.PROJECT_PACKAGES:
        source = project_root / package
        if not source.is_dir():
            raise BuildError(f"{project_root} has no {package}/ package to copy into the image")
        for relative in tree_files(source):
            mode = 0o755 if os.access(source / relative, os.X_OK) else 0o644
            install_file(stage, f"{settings.GUEST_PROJECT_DIR}/{package}/{relative}",
                         (source / relative).read_bytes(), mode)
    # Compiled by the guest's own python3 so the agent's start imports bytecode;
    # hash-based pycs stay valid whatever timestamps the disk ends up with.
    run(["chroot", str(stage), "/usr/bin/python3", "-m", "compileall", "-q",
         "--invalidation-mode", "unchecked-hash", settings.GUEST_PROJECT_DIR],
        step="compiling the agent with the guest's python3")


def make_ext4(stage: Path, image: Path, extra_space_mb: int) -> int:
    """Pack ``stage`` into a sparse ext4 ``image`` with ``extra_space_mb`` free; return its size."""
    used = tree_bytes(stage)
    size = int(used * 1.15) + extra_space_mb * MIB
    size = -(-size // (16 * MIB)) * (16 * MIB)
    with open(image, "wb") as stream:
        stream.truncate(size)
    # No journal: the disk runs with snapshot=on, nothing on it must survive a
    # crash, and journal writes cost under emulation. Inode tables are
    # initialised now so the guest kernel starts no lazy-init thread at boot.
    run(["mkfs.ext4", "-q", "-F", "-L", "uvmroot", "-m", "0", "-O", "^has_journal",
         "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d", str(stage), str(image)],
        step="making the ext4 root disk")
    return size


def remove_stage(stage: Path) -> None:
    # Only unlinks: the hard links' other names in the cached tree survive.
    shutil.rmtree(stage)
