"""What the guest image is made of, and where built images and VM state live.

Every constant here that shapes the image is an input of the image's cache
key (see ``image.py``): changing one rebuilds exactly the steps it feeds.
Directory helpers honour the environment overrides ``UVMEXEC_IMAGE_CACHE``
(built images) and ``UVMEXEC_VM_STATE`` (the ``up``/``down`` VM and the
per-machine acceleration verdict).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SUITE = "bookworm"
VARIANT = "minbase"

# python3-cffi-backend must be named: python3-zmq depends on a virtual package
# that debootstrap's resolver cannot satisfy on its own.
PACKAGES: tuple[str, ...] = (
    "python3",
    "python3-zmq",
    "python3-cffi-backend",
    "python3-msgpack",
    "openssh-server",
    "qemu-guest-agent",
    # Runs tasks (containers) inside the guest: hypervisor isolation.
    "runc",
)

# The metapackage whose dependency names the current kernel ABI
# (linux-image-6.1.0-NN-amd64).
KERNEL_METAPACKAGE = "linux-image-amd64"

# Loaded by the loader initrd, with their dependencies, in this order.
KERNEL_MODULES: tuple[str, ...] = (
    "virtio_pci",
    "virtio_blk",
    "ext4",
    "virtio_net",
    "virtio_console",
    "virtio_rng",
    # /sys/firmware/qemu_fw_cfg: the guest reads its per-boot keys there.
    "qemu_fw_cfg",
    # The host's share (virtio-9p), where task bundles are placed; overlay for
    # container roots made inside the guest.
    "9p",
    "9pnet_virtio",
    "overlay",
)

# Inside the guest.
AGENT_PORT = 5555
SSH_PORT = 22
SSH_USER = "root"
QGA_PORT_NAME = "org.qemu.guest_agent.0"
GUEST_PROJECT_DIR = "/opt/uvmexec"  # common/ and guest_agent/, on PYTHONPATH
# The per-boot keys: PID 1 mounts a 0700 tmpfs here and unpacks into it the
# archive the launcher handed to QEMU as the fw_cfg file KEYS_FW_CFG_NAME (see
# keys.py). The image holds only the empty mount point.
GUEST_KEY_DIR = "/etc/uvmexec"
KEYS_FW_CFG_NAME = "opt/uvmexec/keys"
GUEST_INIT = "/sbin/uvm-init"
GUEST_BUSYBOX = "/usr/local/sbin/busybox"
GUEST_HOSTNAME = "uvmexec-guest"
# One host directory per VM, exported over virtio-9p with this mount tag and
# mounted by PID 1 at GUEST_SHARE_DIR (see qemu.py and guest/uvm-init.sh).
SHARE_MOUNT_TAG = "uvmexec-share"
GUEST_SHARE_DIR = "/run/uvmexec/share"
# 9p's largest message: bigger ones mean fewer round trips per read/write.
SHARE_MSIZE = 512 * 1024
# What guest/uvm-init.sh prints on the serial console when the agent exits;
# the launcher stops waiting for readiness when it sees it.
AGENT_EXIT_MARKER = "uvm-init: the agent exited"

# The project packages copied into the image; their bytes key the image.
PROJECT_PACKAGES: tuple[str, ...] = ("common", "guest_agent")

DEFAULT_MIRROR = "http://deb.debian.org/debian"
HOST_BUSYBOX = Path("/bin/busybox")


def project_root() -> Path:
    """The source tree this package was imported from (holds common/, guest_agent/)."""
    return Path(__file__).resolve().parent.parent


def image_cache_dir() -> Path:
    """Where built images live: $UVMEXEC_IMAGE_CACHE or ~/.cache/uvmexec/images."""
    override = os.environ.get("UVMEXEC_IMAGE_CACHE")
    if override:
        return Path(override).expanduser()
    return _xdg_cache() / "uvmexec" / "images"


def vm_state_dir() -> Path:
    """Where ``up`` keeps its background VM: $UVMEXEC_VM_STATE or ~/.cache/uvmexec/vm."""
    override = os.environ.get("UVMEXEC_VM_STATE")
    if override:
        return Path(override).expanduser()
    return _xdg_cache() / "uvmexec" / "vm"


def accel_verdict_file() -> Path:
    """Per-machine record of whether KVM really boots the guest (see accel.py).

    Shared by every state and image directory: it describes the machine.
    """
    return _xdg_cache() / "uvmexec" / "accel-verdicts.json"


def _xdg_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base).expanduser() if base else Path.home() / ".cache"


def debian_mirror() -> str:
    """The Debian mirror the host's apt uses for the main archive.

    ``UVMEXEC_DEBIAN_MIRROR`` wins; otherwise the first URI in
    /etc/apt/sources.list{,.d/*} (one-line or deb822 format) that serves the
    ``SUITE`` suite and is not the security archive; otherwise deb.debian.org.
    """
    override = os.environ.get("UVMEXEC_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    sources = [Path("/etc/apt/sources.list")]
    sources_dir = Path("/etc/apt/sources.list.d")
    if sources_dir.is_dir():
        sources += sorted(sources_dir.iterdir())
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        for uri in _uris_serving_suite(text, path.suffix == ".sources"):
            if "security" not in uri:
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _uris_serving_suite(text: str, deb822: bool) -> list[str]:
    found: list[str] = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            types = fields.get("types", "").split()
            if "deb" in types and SUITE in fields.get("suites", "").split():
                found += fields.get("uris", "").split()
        return found
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
            found.append(words[1])
    return found
