"""Choosing between KVM and TCG — by evidence, not by the presence of /dev/kvm.

On some hosts ``/dev/kvm`` opens and answers the API version ioctl, yet a
stock Debian kernel cannot run on it (PVM: the bzImage hangs in its
decompressor, the vmlinux dies with a KVM emulation failure). So KVM counts
as usable only after a guest really booted to ready on it. The launcher
makes that trial once and records the verdict here, keyed by everything
that could change it (host kernel, CPU, QEMU version, guest kernel), so
later boots pay nothing for the question.

``UVMEXEC_ACCEL=kvm|tcg`` overrides both the trial and the verdict.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
from pathlib import Path

from . import settings

KVM_GET_API_VERSION = 0xAE00
KVM_API_VERSION = 12


def kvm_device_works() -> bool:
    """Whether /dev/kvm opens read-write and speaks the stable KVM API (necessary, not sufficient)."""
    try:
        descriptor = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(descriptor, KVM_GET_API_VERSION) == KVM_API_VERSION
    except OSError:
        return False
    finally:
        os.close(descriptor)


def machine_fingerprint(qemu_binary: str, guest_kernel_release: str) -> str:
    """What a KVM verdict depends on: host kernel, CPU, QEMU build, guest kernel."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("model name", "flags")):
                    cpu += line
                if line.strip() == "":
                    break  # the first processor describes them all
    except OSError:
        pass
    try:
        qemu_version = subprocess.run([qemu_binary, "--version"], capture_output=True,
                                      text=True, timeout=10).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        qemu_version = "unknown"
    parts = [os.uname().release, os.uname().version, cpu, qemu_version, guest_kernel_release]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:20]


def accel_override() -> str | None:
    value = os.environ.get("UVMEXEC_ACCEL", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in ("kvm", "tcg"):
        raise ValueError(f"UVMEXEC_ACCEL must be kvm, tcg or auto, not {value!r}")
    return value


def load_verdict(fingerprint: str, path: Path | None = None) -> str | None:
    """The recorded accelerator ("kvm" or "tcg") for this machine, or None if never tried."""
    path = path or settings.accel_verdict_file()
    try:
        verdicts = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    entry = verdicts.get(fingerprint) if isinstance(verdicts, dict) else None
    accel = entry.get("accel") if isinstance(entry, dict) else None
    return accel if accel in ("kvm", "tcg") else None


def save_verdict(fingerprint: str, accel: str, reason: str, path: Path | None = None) -> None:
    path = path or settings.accel_verdict_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        verdicts = json.loads(path.read_text())
        if not isinstance(verdicts, dict):
            verdicts = {}
    except (OSError, ValueError):
        verdicts = {}
    verdicts[fingerprint] = {"accel": accel, "reason": reason[:500]}
    scratch = path.with_name(f".{path.name}.{os.getpid()}")
    scratch.write_text(json.dumps(verdicts, indent=2) + "\n")
    os.replace(scratch, path)  # readers see the old file or the new one, never half
