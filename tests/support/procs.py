"""The process table, read from /proc, and killing what a test left behind.

Waits are on pidfds (readable once a process has exited), never on a clock.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterable

from host_proxy.shim.testbed import descendants as descendants  # the process tree walk, written once


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, ppid)`` of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            # The command name may hold spaces and parentheses: split after its last ")".
            fields = stat_file.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def all_processes() -> dict[int, tuple[str, int]]:
    """Every process: pid -> (state, ppid)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    return table


def children(pid: int) -> dict[int, str]:
    """The direct children of ``pid``: child pid -> state (``Z`` for a zombie)."""
    return {child: state for child, (state, ppid) in all_processes().items() if ppid == pid}


def zombies(pid: int) -> list[int]:
    return sorted(child for child, state in children(pid).items() if state == "Z")


def wait_exited(pids: Iterable[int], timeout: float = 30.0) -> None:
    """Wait (on pidfds) until every process in ``pids`` has exited."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # exited and reaped already
        try:
            remaining = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([pidfd], [], [], remaining)
            assert readable, f"process {pid} still runs after {timeout}s"
        finally:
            os.close(pidfd)


def kill_and_wait(pids: Iterable[int], timeout: float = 30.0) -> None:
    """SIGKILL every process in ``pids`` (through a pidfd: never a reused pid) and wait until
    each has exited; whoever is their parent reaps them."""
    deadline = time.monotonic() + timeout
    pidfds: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue
            pidfds[pid] = pidfd
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass  # exited meanwhile
        for pid, pidfd in pidfds.items():
            readable, _, _ = select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
            assert readable, f"process {pid} still runs {timeout}s after SIGKILL"
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)
