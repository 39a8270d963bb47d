"""The one place that waits for children.

Each spawned process is watched through a pidfd on the event loop: no thread
per child, no SIGCHLD needed, and a pidfd also lets :meth:`Watch.signal`
reach exactly this process even after its pid was reused. A host library
(``LocalExec``) must never reap children it did not spawn, so it only waits
by pid. The agent, as PID 1 or a child subreaper, also inherits orphans: with
``reap_orphans=True`` a SIGCHLD handler peeks at exited children
(``WNOWAIT``) and reaps those nobody watches, so no zombie accumulates.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import signal
import subprocess
import threading
import time

from ..state import exit_status_from_wait

log = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36


class Watch:
    """One watched child: its exit status future and a race-free way to signal it."""

    def __init__(self, pid: int, pidfd: int | None, exited: asyncio.Future[int], popen: subprocess.Popen[bytes] | None) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.exited = exited
        self._popen = popen

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process itself; a process already gone is not an error."""
        try:
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signum)
            elif not self.exited.done():
                os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        """Release the pidfd (after exit; the reaper no longer reads it)."""
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


class Reaper:
    """Owns every ``waitpid`` of the processes spawned on one event loop. Loop thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, reap_orphans: bool = False) -> None:
        self._loop = loop
        self._watches: dict[int, Watch] = {}
        self._reap_orphans = reap_orphans
        self.orphans_reaped = 0
        if reap_orphans:
            if os.getpid() != 1:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
                    log.warning("cannot become a child subreaper: %s", os.strerror(ctypes.get_errno()))
            loop.add_signal_handler(signal.SIGCHLD, self._on_sigchld)
            # Children that exited before the handler was installed.
            loop.call_soon(self._on_sigchld)

    @property
    def reaps_orphans(self) -> bool:
        """True when this process adopts orphans and reaps them (PID 1 or a child subreaper)."""
        return self._reap_orphans

    @property
    def watched(self) -> int:
        return len(self._watches)

    def watch(self, pid: int, popen: subprocess.Popen[bytes] | None = None) -> Watch:
        """Start watching ``pid``; call in the same loop step as the spawn, so no exit is missed."""
        exited: asyncio.Future[int] = self._loop.create_future()
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # kernels before 5.3
            pidfd = None
        watch = Watch(pid, pidfd, exited, popen)
        self._watches[pid] = watch
        if pidfd is not None:
            self._loop.add_reader(pidfd, self._reap, pid)
        elif not self._reap_orphans:
            threading.Thread(target=self._wait_in_thread, args=(pid,), name=f"reaper-{pid}", daemon=True).start()
        return watch

    def reap_killed(self, pid: int, timeout: float) -> None:
        """Reap a watched process that was just SIGKILLed, now, on the loop thread: wait for it
        to die (on its pidfd, at most ``timeout``) and deliver its exit. For callers that need it
        gone before they go on (``runc delete`` takes a zombie for a live init), which cannot wait
        for the loop's next turn. A process not watched, or still alive at the deadline, is left
        to the normal path."""
        watch = self._watches.get(pid)
        if watch is None or watch.pidfd is None:
            return
        readable, _, _ = select.select([watch.pidfd], [], [], timeout)
        if readable:
            self._reap(pid)

    def _wait_in_thread(self, pid: int) -> None:
        try:
            _, wait_status = os.waitpid(pid, 0)
        except ChildProcessError:
            wait_status = 255 << 8
        self._loop.call_soon_threadsafe(self._deliver, pid, wait_status)

    def _reap(self, pid: int) -> None:
        try:
            reaped, wait_status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            log.error("pid %d was reaped by someone else; reporting exit status 255", pid)
            reaped, wait_status = pid, 255 << 8
        if reaped == 0:
            return  # pidfd readiness without an exit yet: wait for the next one
        self._deliver(pid, wait_status)

    def _deliver(self, pid: int, wait_status: int) -> None:
        watch = self._watches.pop(pid, None)
        if watch is None:
            return
        if watch.pidfd is not None:
            self._loop.remove_reader(watch.pidfd)
        exit_status = exit_status_from_wait(wait_status)
        if watch._popen is not None:
            # Popen must never wait on this pid itself (its __del__ would otherwise try).
            watch._popen.returncode = exit_status
        if not watch.exited.done():
            watch.exited.set_result(exit_status)

    def _on_sigchld(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None or info.si_pid == 0:
                return
            if info.si_pid in self._watches:
                self._reap(info.si_pid)
                continue
            try:
                os.waitpid(info.si_pid, 0)
                self.orphans_reaped += 1
            except ChildProcessError:
                pass

    async def wait_all(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until every watched child was reaped."""
        pending = [watch.exited for watch in self._watches.values()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def kill_everything(self, timeout: float) -> None:
        """SIGKILL every descendant of this process and reap the children (blocking, at most
        ``timeout``): the agent's last act, so nothing it started outlives it. Descendants, not
        process groups: a group id of a long-gone exec may belong to someone else by now."""
        deadline = time.monotonic() + timeout
        for _ in range(3):  # a killed parent's children are orphaned to us: look again
            descendants = _descendants_of(os.getpid())
            if not descendants:
                return
            for pid in descendants:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in _children_of(os.getpid()):
                _reap_within(pid, deadline)

    def close(self) -> None:
        """Stop watching (the loop is shutting down); pending futures stay unresolved."""
        for watch in self._watches.values():
            if watch.pidfd is not None:
                self._loop.remove_reader(watch.pidfd)
        self._watches.clear()
        if self._reap_orphans:
            self._loop.remove_signal_handler(signal.SIGCHLD)


def _parents() -> dict[int, int]:
    """pid -> ppid of every process."""
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat_file:
                parents[int(entry)] = int(stat_file.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def _children_of(parent: int) -> list[int]:
    return [pid for pid, ppid in _parents().items() if ppid == parent]


def _descendants_of(root: int) -> list[int]:
    parents = _parents()
    found: list[int] = []
    frontier = [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == current]
        found.extend(children)
        frontier.extend(children)
    return found


def _reap_within(pid: int, deadline: float) -> None:
    """Wait for a killed child to exit (on its pidfd, not by sleeping) and reap it."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        pidfd = None
    try:
        if pidfd is not None:
            select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    finally:
        if pidfd is not None:
            os.close(pidfd)
