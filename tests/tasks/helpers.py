"""What a container leaves on the host, looked up the way an operator would."""

from __future__ import annotations

import json
import os
import subprocess

from tests.support.procs import proc_stat


def runc_ids() -> set[str]:
    """The containers runc knows (its default state root)."""
    listed = subprocess.run(["runc", "list", "--format", "json"], capture_output=True, check=True, timeout=30).stdout
    return {entry["id"] for entry in json.loads(listed or b"null") or []}


def mounts_at_or_under(path: str) -> list[str]:
    """Mount points at ``path`` or below it (from /proc/self/mountinfo)."""
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [point for point in points if point == path or point.startswith(prefix)]


def _cgroup_roots() -> dict[str, str]:
    """hierarchy key ('cpu', 'name=systemd', '' for cgroup2) -> its mount point."""
    roots: dict[str, str] = {}
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            before, _, after = line.partition(" - ")
            fstype, _source, super_options = after.split()[:3]
            point = before.split()[4]
            if fstype == "cgroup2":
                roots.setdefault("", point)
            elif fstype == "cgroup":
                for option in super_options.split(","):
                    if option not in ("rw", "ro") and not option.startswith(("clone_children", "release_agent")):
                        roots.setdefault(option, point)
    return roots


def cgroup_dirs(pid: int) -> list[str]:
    """The cgroup directories ``pid`` is in, one per hierarchy."""
    roots = _cgroup_roots()
    found = []
    with open(f"/proc/{pid}/cgroup") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                if controller in roots:
                    found.append(os.path.join(roots[controller], path.lstrip("/")))
                    break
    return found


def running(pids: list[int]) -> list[int]:
    """The ones of ``pids`` that still run (zombies count as gone)."""
    return [pid for pid in pids if (proc_stat(pid) or ("Z", 0))[0] != "Z"]
