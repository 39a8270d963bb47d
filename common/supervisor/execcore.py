"""One exec's life on the side that runs it: the rules of the contract, enforced once.

``LocalExec`` wraps an :class:`ExecCore` in-process; the agent wraps one per
exec behind the wire. Both therefore raise the same errors in the same
states, and the conformance suite checks only that the wire is faithful.

Loop-thread only, except :attr:`ExecCore.snapshot` and :attr:`ExecCore.deleted`,
which other threads may read: they are replaced, never mutated, at each change.
"""

from __future__ import annotations

import asyncio
import datetime
import fcntl
import logging
import os
import signal as signal_module
import struct
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import rules
from ..errors import InvalidArgumentError, UnavailableError, invalid_state_error
from ..rules import DEFAULT_DRAIN_TIMEOUT
from ..spec import ProcessSpec
from ..state import (
    ALLOWED_TRANSITIONS,
    RUNNING_EXIT_STATUS,
    ExecEvent,
    ExecExited,
    ExecStarted,
    ExecState,
    ExecStatus,
    utc_now,
)
from .launcher import BARE, Launcher
from .reaper import Reaper, Watch
from .spawn import Spawned, SpawnError
from .streams import DrainSignal, InputSource, NullSink, OutputSink, pump_input, pump_output

if TYPE_CHECKING:
    from .task import TaskCore

log = logging.getLogger(__name__)

class Supervisor:
    """The process supervisor of one event loop: its reaper, the execs it runs and the tasks
    (containers) it holds.

    Tasks need ``reap_orphans=True``: a container's processes are adopted orphans (runc
    exits after starting them), so only a child subreaper can reap them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, reap_orphans: bool = False) -> None:
        self.loop = loop
        self.reaper = Reaper(loop, reap_orphans=reap_orphans)
        self.running: set[ExecCore] = set()
        #: task id -> its TaskCore, from creation until deleted.
        self.tasks: dict[str, TaskCore] = {}

    def close(self) -> None:
        """Kill what still runs (its process group), tear down every task (its runtime state
        and mounts) and stop watching; loop thread only."""
        for core in list(self.running):
            core.force_exit(RUNNING_EXIT_STATUS)
        for task in list(self.tasks.values()):
            task.tear_down()
        self.reaper.close()


class ExecCore:
    """The state machine of one exec and the process it runs.

    ``launcher`` starts and signals the process: a bare one by default, a container's (runc)
    for the init and execs of a :class:`~common.supervisor.task.TaskCore`. The rules are the
    same for all.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        task_id: str,
        exec_id: str,
        spec: ProcessSpec,
        *,
        stdin: InputSource | None = None,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        stdio_paths: tuple[str, str, str] = ("", "", ""),
        bundle: str = "",
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        emit: Callable[[ExecEvent], None] | None = None,
        launcher: Launcher = BARE,
    ) -> None:
        if spec.terminal and stderr is not None:
            raise InvalidArgumentError(
                f"exec: '{exec_id}' in task: '{task_id}': a terminal exec cannot have a stderr target"
            )
        self.supervisor = supervisor
        self.loop = supervisor.loop
        self.task_id = task_id
        self.exec_id = exec_id
        self.spec = spec
        self.bundle = bundle
        self.drain_timeout = drain_timeout
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._stdio_paths = stdio_paths
        self._emit = emit
        self._launcher = launcher
        self._state = ExecState.CREATED
        self._pid = 0
        self._exit_status = RUNNING_EXIT_STATUS
        self._exited_at: datetime.datetime | None = None
        self._watch: Watch | None = None
        self._pty_master: int | None = None
        self._stdin_stop = asyncio.Event()
        self._drain = DrainSignal()
        self._pumps: list[asyncio.Task[bool]] = []
        self._stdin_feeder: asyncio.Task[None] | None = None
        self._exit_listeners: list[Callable[[ExecStatus], None]] = []
        self.deleted = False
        #: True once force_exit ended a running process (its output was not drained).
        self.forced = False
        #: True once the drain deadline cut an output stream short (something kept it open).
        self.output_cut = False
        self.snapshot = self._make_snapshot()

    # -- state ---------------------------------------------------------------

    @property
    def state(self) -> ExecState:
        return self._state

    def _make_snapshot(self) -> ExecStatus:
        return ExecStatus(
            id=self.task_id,
            exec_id=self.exec_id,
            bundle=self.bundle,
            pid=self._pid,
            status=self._state,
            stdin=self._stdio_paths[0],
            stdout=self._stdio_paths[1],
            stderr=self._stdio_paths[2],
            terminal=self.spec.terminal,
            exit_status=self._exit_status,
            exited_at=self._exited_at,
        )

    def _transition(self, new_state: ExecState, op: str) -> None:
        if new_state not in ALLOWED_TRANSITIONS[self._state]:
            raise invalid_state_error(self.task_id, self.exec_id, self._state, op)
        self._state = new_state
        self.snapshot = self._make_snapshot()

    def _check_live(self) -> None:
        rules.check_live(self.task_id, self.exec_id, self.deleted)

    def _finish(self, exit_status: int, exited_at: datetime.datetime, *, op: str) -> None:
        """Become EXITED with this status, publish the exit if started, then release every waiter.

        The exit is published before the waiters hear of it, as hcsshim publishes TaskExit
        before Wait returns: a shim never answers a Wait with an exit its events have not told.
        """
        was_started = self._state is ExecState.RUNNING
        self._exit_status = exit_status
        self._exited_at = exited_at
        self._transition(ExecState.EXITED, op)
        self.supervisor.running.discard(self)
        final = self.snapshot
        if was_started and self._emit is not None:
            self._emit(ExecExited(self.exec_id, self._pid, exit_status, exited_at))
        listeners, self._exit_listeners = self._exit_listeners, []
        for listener in listeners:
            listener(final)

    def add_exit_listener(self, listener: Callable[[ExecStatus], None]) -> None:
        """Call ``listener(final_status)`` on the loop thread at exit (at once if already exited)."""
        if self._state is ExecState.EXITED:
            listener(self.snapshot)
        else:
            self._exit_listeners.append(listener)

    # -- operations ----------------------------------------------------------

    def status(self) -> ExecStatus:
        self._check_live()
        return self.snapshot

    def start(self) -> None:
        self._check_live()
        rules.check_start(self.task_id, self.exec_id, self._state)
        terminal = self.spec.terminal
        try:
            spawned = self._launcher.launch(
                self.spec,
                feed_stdin=self._stdin is not None and not self._stdin_stop.is_set(),
                capture_stdout=self._stdout is not None,
                capture_stderr=self._stderr is not None,
            )
        except SpawnError as error:
            self._release_stdio()
            self._finish(1, utc_now(), op="start")
            error_class = UnavailableError if error.is_resource_shortage else InvalidArgumentError
            raise error_class(
                f"exec: '{self.exec_id}' in task: '{self.task_id}' failed to start: {error.cause}"
            ) from None
        # Watch before anything can yield to the loop: an instant exit is never missed.
        self._watch = spawned.watch or self.supervisor.reaper.watch(spawned.pid, spawned.popen)
        self._pid = spawned.pid
        self._pty_master = spawned.pty_master
        self._transition(ExecState.RUNNING, "start")
        self.supervisor.running.add(self)
        if self._emit is not None:
            self._emit(ExecStarted(self.exec_id, self._pid))
        self._start_pumps(spawned, terminal)
        self.loop.create_task(self._supervise(spawned, self._watch))

    def _start_pumps(self, spawned: Spawned, terminal: bool) -> None:
        label = f"exec {self.task_id}/{self.exec_id}"
        if spawned.pty_master is not None:
            pty_sink = self._stdout if self._stdout is not None else NullSink()
            self._pumps.append(self.loop.create_task(pump_output(spawned.pty_master, pty_sink, self._drain, label)))
            if self._stdin is not None:
                eof_char = termios.tcgetattr(spawned.pty_master)[6][termios.VEOF]
                self._stdin_feeder = self.loop.create_task(self._feed_stdin(self._stdin, spawned.pty_master, eof_char))
            return
        for fd, sink in ((spawned.stdout_fd, self._stdout), (spawned.stderr_fd, self._stderr)):
            if fd is not None and sink is not None:
                self._pumps.append(self.loop.create_task(pump_output(fd, sink, self._drain, label)))
        if self._stdin is not None:
            if spawned.stdin_fd is not None:
                self._stdin_feeder = self.loop.create_task(self._feed_stdin(self._stdin, spawned.stdin_fd, None))
            else:  # close_io came before start: the process got /dev/null
                self._stdin.close()

    async def _feed_stdin(self, source: InputSource, fd: int, eof_char: bytes | None) -> None:
        """Feed stdin; a pipe is closed at the end, a pty gets its EOF character instead."""
        try:
            await pump_input(source, fd, self._stdin_stop, eof_bytes=eof_char)
        finally:
            if eof_char is None:
                os.close(fd)
            source.close()

    async def _supervise(self, spawned: Spawned, watch: Watch) -> None:
        """Wait for the exit, drain output within the drain timeout, then finish."""
        exit_status = await watch.exited
        exited_at = utc_now()
        self._launcher.exited()
        self._stdin_stop.set()
        timer = self.loop.call_later(self.drain_timeout, self._drain.set)
        try:
            results = await asyncio.gather(*self._pumps, return_exceptions=True)
        finally:
            timer.cancel()
        for result in results:
            if result is False:
                self.output_cut = True
                log.warning(
                    "exec %s/%s: output still open %.1fs after exit (a background process holds it); "
                    "stopped reading it",
                    self.task_id, self.exec_id, self.drain_timeout,
                )
            elif isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("exec %s/%s: output pump failed: %r", self.task_id, self.exec_id, result)
        for sink in (self._stdout, self._stderr):
            if sink is not None and not self.forced:  # force_exit aborted them already
                try:
                    await sink.close()
                except (OSError, ValueError) as error:  # ValueError: a caller's file object it closed
                    log.warning("exec %s/%s: closing output: %s", self.task_id, self.exec_id, error)
        feeder = self._stdin_feeder
        if feeder is not None and not feeder.done():
            # The process is gone: its stdin no longer matters, and with a tty the feeder writes to
            # the pty master, which must not be closed (and its number reused) under it.
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        for fd in (spawned.stdout_fd, spawned.stderr_fd, spawned.pty_master):
            if fd is not None:
                os.close(fd)
        self._pty_master = None
        watch.close()
        await self._launcher.after_exit()
        if self._state is ExecState.RUNNING:
            self._finish(exit_status, exited_at, op="exit")

    def kill(self, signum: int, all: bool = False) -> None:  # noqa: A002 - shimExec's name
        self._check_live()
        rules.check_kill(self.task_id, self.exec_id, self._state, signum)
        assert self._watch is not None
        if all:
            self._launcher.signal_all(self._pid, signum)
        else:
            self._watch.signal(signum)

    def resize_pty(self, width: int, height: int) -> None:
        self._check_live()
        if not rules.check_resize(self.task_id, self.exec_id, self._state, self.spec.terminal, width, height):
            return
        if self._pty_master is None:
            return  # exited, output still draining: as good as not running
        fcntl.ioctl(self._pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def close_io(self) -> None:
        self._check_live()
        if self._stdin is not None and self._stdin.end():
            return
        self._stdin_stop.set()

    def force_exit(self, status: int) -> None:
        self._check_live()
        if not rules.check_force_exit(self._state, status):
            return
        if self._state is ExecState.CREATED:
            self._release_stdio()
            self._finish(status, utc_now(), op="force_exit")
            return
        assert self._watch is not None
        self.forced = True
        try:
            os.killpg(self._pid, signal_module.SIGKILL)
        except ProcessLookupError:
            pass
        self._watch.signal(signal_module.SIGKILL)
        # Stop delivering: the caller gave up on this process. The supervise
        # task still reaps it and releases its fds.
        self._stdin_stop.set()
        self._drain.set()
        for pump in self._pumps:
            pump.cancel()
        for sink in (self._stdout, self._stderr):
            if sink is not None:
                sink.abort()
        self._finish(status, utc_now(), op="force_exit")

    def reap_if_killed(self, timeout: float = 5.0) -> None:
        """After force_exit: make sure the killed process is reaped before this returns (see
        :meth:`Reaper.reap_killed`); nothing to do for one never started or already reaped."""
        if self.forced and self._watch is not None and self._pid:
            self.supervisor.reaper.reap_killed(self._pid, timeout)

    def delete(self) -> ExecStatus:
        self._check_live()
        rules.check_delete(self.task_id, self.exec_id, self._state)
        if self._state is ExecState.CREATED:
            self._release_stdio()
            self._finish(0, utc_now(), op="delete")
        self.deleted = True
        return self.snapshot

    def _release_stdio(self) -> None:
        """Release stdio ends never handed to a process (failed or no start)."""
        if self._stdin is not None:
            self._stdin.close()
        for sink in (self._stdout, self._stderr):
            if sink is not None:
                sink.abort()
