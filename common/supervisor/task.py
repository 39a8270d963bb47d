"""One task (a container from an OCI bundle) on the side that runs it: runc, the rootfs, its execs.

A :class:`TaskCore` is created from a bundle directory and the rootfs mounts
containerd hands a shim: it checks ``config.json`` (:mod:`.bundle`), mounts
the rootfs onto ``bundle/rootfs`` (:mod:`.mounts`) and makes the init, an
:class:`~common.supervisor.ExecCore` whose id is the task id. Its execs are
ExecCores too; only their :class:`~common.supervisor.launcher.Launcher`
differs from a bare exec's, so every rule of the exec contract — states,
errors, events, exit statuses, output drain, stdin EOF, resize on the pty
master runc sent — holds for them unchanged.

How each piece maps onto containerd's runc shim (``pkg/process/init.go``,
``exec.go``, ``runtime/v2/runc``):

- ``init.start()``: ``runc create`` with the init's stdio, then ``runc start``
  (the exec contract has one start, and a failed create is a failed start:
  exit 1, no events). With ``create_init=True`` the task does as containerd's
  Create and Start: ``runc create`` when the task is made — the init's process
  then exists, waiting in ``runc init`` (:attr:`TaskCore.created_pid`), and
  :meth:`TaskCore.kill` signals it — and ``init.start()`` is ``runc start``.
  The init itself stays CREATED, with the exec contract's rules, until then;
  if the created process dies first (killed), the init exits with its exit
  status and, never started, publishes nothing.
- an exec's ``start()``: ``runc exec --detach --process`` with a process.json
  written from its spec. A spec without ``PATH`` gets the exec contract's
  default search path: ``args[0]`` is looked up in the root filesystem and
  given to runc as the full path (the process's ``argv[0]`` is then that path).
- ``init.kill(signal, all=True)``: ``runc kill --all`` (every process of the
  container's cgroup); an exec's ``kill(all=True)``: its process group (runc
  makes every process a session leader).
- The init's exit: the kernel kills what is left in the container's pid
  namespace (without one, ``runc kill --all KILL`` right away, before the
  init's output is drained, as containerd does when the namespace is
  shared), and the init's exit is reported once every exec of the task has
  exited (with 128+9).
- :meth:`TaskCore.pids`: ``runc ps --format json``; :meth:`TaskCore.delete`:
  ``runc delete --force``, then the rootfs mounts come off.

The rules of :class:`common.task.Task` are enforced here, from
:mod:`common.rules`. The supervisor must reap orphans (a child subreaper or
PID 1): runc leaves every container process to its nearest subreaper. Loop
thread only; the runc calls block it for tens of milliseconds each.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import shutil
import signal
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from .. import rules
from ..errors import (
    ExecError,
    FailedPreconditionError,
    InvalidArgumentError,
    UnavailableError,
    already_exists_error,
    describe,
)
from ..rules import DEFAULT_DRAIN_TIMEOUT
from ..spec import ProcessSpec
from ..state import ExecEvent, ExecState, ExecStatus
from ..task import Mount, ProcessInfo
from .bundle import find_in_root, load_bundle, missing_init_program
from .execcore import ExecCore, Supervisor
from .launcher import Launcher
from .mounts import mount_all, unmount
from .reaper import Watch
from .runc import ConsoleSocket, Runc, RuncError
from .spawn import Spawned, SpawnError
from .streams import InputSource, OutputSink

log = logging.getLogger(__name__)

#: runc's rule for a container id (libcontainer's validateID).
_CONTAINER_ID = re.compile(r"[A-Za-z0-9_+.-]+")
#: Exit status of a process killed with its container (SIGKILL).
KILLED = 128 + signal.SIGKILL


def check_container_id(task_id: str) -> None:
    if not _CONTAINER_ID.fullmatch(task_id) or task_id in (".", ".."):
        raise InvalidArgumentError(
            f"task id {describe(task_id)}: a container id is made of letters, digits and '_+.-' only"
        )


class TaskCore:
    """A container made from ``bundle`` and run by runc; its init is :attr:`init`.

    Creation checks the bundle, mounts ``rootfs``, checks that the init's
    program is there (as ``runc create`` would) and registers the task in
    ``supervisor.tasks``; on failure nothing is left mounted or registered.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        task_id: str,
        bundle: str,
        *,
        rootfs: Sequence[Mount] = (),
        stdin: InputSource | None = None,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        stdio_paths: tuple[str, str, str] = ("", "", ""),
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        emit: Callable[[ExecEvent], None] | None = None,
        runc: Runc | None = None,
        create_init: bool = False,
    ) -> None:
        if not supervisor.reaper.reaps_orphans:
            raise FailedPreconditionError("tasks need a supervisor that reaps orphans (a child subreaper)")
        check_container_id(task_id)
        if task_id in supervisor.tasks:
            raise already_exists_error(task_id, task_id)
        self.supervisor = supervisor
        self.id = task_id
        self.bundle = bundle
        self.config = load_bundle(bundle)
        rootfs_dir = os.path.join(bundle, "rootfs")
        if rootfs and self.config.root != rootfs_dir:
            raise InvalidArgumentError(
                f"bundle {bundle!r}: config.json: root.path: must be 'rootfs' when rootfs mounts are given"
            )
        self.runc = runc or Runc()
        self._rootfs_dir = rootfs_dir
        self._mounted = 0
        self._files = tempfile.mkdtemp(prefix="uvmexec-task-")
        self._log = os.path.join(self._files, "runc-log.json")
        self._numbers = itertools.count()
        #: runc knows the container (create succeeded) until it was deleted.
        self._created = False
        #: With ``create_init``: the process ``runc create`` made, until the init starts or it exits.
        self._early: Spawned | None = None
        #: The init's exec took the early process's watch over (it started).
        self._early_started = False
        #: The pid of the init's process as ``runc create`` made it (``create_init``), else 0.
        self.created_pid = 0
        self._execs: dict[str, ExecCore] = {}
        try:
            if rootfs:
                self._mounted = mount_all(rootfs, rootfs_dir)
            if not os.path.isdir(self.config.root):
                raise InvalidArgumentError(f"bundle {bundle!r}: root filesystem "
                                           f"{self.config.root!r} is not a directory")
            missing = missing_init_program(self.config)
            if missing is not None:  # runc create would fail: so does creation (containerd's Create)
                raise InvalidArgumentError(f"bundle {bundle!r}: config.json: process.args[0]: {missing}")
            self.init = ExecCore(
                supervisor, task_id, task_id, self.config.process, stdin=stdin, stdout=stdout, stderr=stderr,
                stdio_paths=stdio_paths, bundle=bundle, drain_timeout=drain_timeout, emit=emit,
                launcher=_InitLauncher(self),
            )
            if create_init:
                self._create_container(stdin is not None, stdout is not None, stderr is not None)
        except BaseException:
            self._release_files()
            raise
        supervisor.tasks[task_id] = self

    # -- execs -----------------------------------------------------------------

    def live_execs(self) -> list[ExecCore]:
        """The task's execs not yet deleted (the init not included)."""
        return [core for core in self._execs.values() if not core.deleted]

    def owns(self, core: ExecCore) -> bool:
        return core is self.init or self._execs.get(core.exec_id) is core

    def create_exec(
        self,
        exec_id: str,
        spec: ProcessSpec,
        *,
        stdin: InputSource | None = None,
        stdout: OutputSink | None = None,
        stderr: OutputSink | None = None,
        stdio_paths: tuple[str, str, str] = ("", "", ""),
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        emit: Callable[[ExecEvent], None] | None = None,
    ) -> ExecCore:
        """An exec (CREATED) that runs ``spec`` in the container when started (containerd's rules)."""
        rules.check_task_exec(self.id, exec_id, self.init.state)
        existing = self._execs.get(exec_id)
        if existing is not None and not existing.deleted:
            raise already_exists_error(self.id, exec_id)
        core = ExecCore(
            self.supervisor, self.id, exec_id, spec, stdin=stdin, stdout=stdout, stderr=stderr,
            stdio_paths=stdio_paths, drain_timeout=drain_timeout, emit=emit, launcher=_ExecLauncher(self),
        )
        self._execs[exec_id] = core
        return core

    def pids(self) -> list[ProcessInfo]:
        """The container's processes (``runc ps``): host pids, with the exec each one is."""
        if self.init.state is not ExecState.RUNNING and self._early is None:
            return []
        try:
            pids = self.runc.ps(self._log, self.id)
        except (RuncError, ValueError) as error:
            raise ExecError(f"task: '{self.id}': runc ps: {getattr(error, 'message', error)}") from None
        known = {core.snapshot.pid: core.exec_id for core in (self.init, *self.live_execs())
                 if core.state is ExecState.RUNNING}
        if self._early is not None:
            known[self._early.pid] = self.id
        return [ProcessInfo(pid, known.get(pid, "")) for pid in pids]

    def stats(self) -> dict[str, Any]:
        """The container's resource usage now (``runc events --stats``); its init must be running
        (or, with ``create_init``, created)."""
        if self.init.state is not ExecState.RUNNING and self._early is None:
            raise FailedPreconditionError(f"task: '{self.id}': no statistics: its init is {self.init.state.value}")
        try:
            return self.runc.stats(self._log, self.id)
        except (RuncError, ValueError) as error:
            raise ExecError(f"task: '{self.id}': runc events --stats: {getattr(error, 'message', error)}") from None

    def kill(self, signum: int, all: bool = False) -> None:  # noqa: A002 - containerd's name
        """containerd's Kill of the task's init. Before the init started, the process ``runc
        create`` made (``create_init``) gets the signal (``runc kill``; with ``all``, every process
        of the container): if it dies, the init exits with its status. Otherwise ``init.kill``,
        with the exec contract's rules."""
        if self.init.state is ExecState.CREATED and self._early is not None:
            rules.check_signal(signum)
            try:
                self.runc.kill(self._log, self.id, signum, all=all)
            except RuncError as error:
                if "not running" not in error.message:  # else it died while the signal was on its way
                    raise ExecError(f"task: '{self.id}': runc kill: {error.message}") from None
            return
        self.init.kill(signum, all)

    # -- the end -----------------------------------------------------------------

    def delete(self) -> ExecStatus:
        """containerd's Delete of the init: the container, its execs and its mounts go; the
        init's final status is returned. A RUNNING init is ``FailedPreconditionError``."""
        rules.check_task_delete(self.id, self.init.state)
        for core in self.live_execs():
            if core.state is ExecState.RUNNING:
                # Only after a force_exit of the init can one still be draining: it was killed.
                core.force_exit(KILLED)
        if self._created:
            # A force-exited init may still be a zombie the loop has not reaped: runc would take
            # it for a live init ("container init still running"). The execs go first: a pid
            # namespace's init dies only once every other process in it was reaped, and the execs
            # are this agent's children (runc leaves them to the subreaper).
            for core in (*self.live_execs(), self.init):
                core.reap_if_killed()
            try:
                self.runc.call(self._log, "delete", "--force", self.id)
            except RuncError as error:
                raise ExecError(f"task: '{self.id}': runc delete: {error.message}") from None
            self._created = False
        self._drop_early()
        for core in self.live_execs():
            core.delete()
        final = self.init.delete()
        self._release_files()
        self.supervisor.tasks.pop(self.id, None)
        return final

    def tear_down(self) -> None:
        """The supervisor is closing: remove the container, mounts and files whatever the state
        (processes were killed already). Never raises; failures are logged."""
        for core in (self.init, *self.live_execs()):
            if core.state is not ExecState.EXITED:
                core.force_exit(KILLED)
        if self._created:
            try:
                self.runc.call(self._log, "delete", "--force", self.id)
            except RuncError as error:
                log.error("task %s: runc delete: %s", self.id, error.message)
            self._created = False
        self._drop_early()
        self._release_files()
        self.supervisor.tasks.pop(self.id, None)

    def _release_files(self) -> None:
        unmount(self._rootfs_dir, self._mounted)
        self._mounted = 0
        shutil.rmtree(self._files, ignore_errors=True)

    # -- what the launchers do ------------------------------------------------------

    def _file(self, suffix: str) -> str:
        return os.path.join(self._files, f"{next(self._numbers)}{suffix}")

    def _launch(self, args: list[str], spec: ProcessSpec, feed_stdin: bool, capture_stdout: bool,
                capture_stderr: bool) -> Spawned:
        console = ConsoleSocket(self._file(".sock")) if spec.terminal else None
        try:
            return self.runc.launch(self._log, [*args, self.id], self._file(".pid"), console=console,
                                    feed_stdin=feed_stdin, capture_stdout=capture_stdout,
                                    capture_stderr=capture_stderr, umask=spec.user.umask)
        finally:
            if console is not None:
                console.close()

    def _create_container(self, feed_stdin: bool, capture_stdout: bool, capture_stderr: bool) -> None:
        """``runc create`` now (``create_init``): the init's process waits in ``runc init`` for its
        start, watched from here on. A failure is the task's creation failing."""
        try:
            spawned = self._launch(["create", "--bundle", self.bundle], self.config.process, feed_stdin,
                                   capture_stdout, capture_stderr)
        except SpawnError as error:
            error_class = UnavailableError if error.is_resource_shortage else InvalidArgumentError
            raise error_class(f"task: '{self.id}': runc create: {error.cause}") from None
        self._created = True
        # Watched in the same loop step as runc create returned: the orphan sweep cannot take it.
        watch = spawned.watch = self.supervisor.reaper.watch(spawned.pid)
        self._early = spawned
        self.created_pid = spawned.pid
        self.supervisor.loop.create_task(self._early_exit(spawned, watch))

    async def _early_exit(self, spawned: Spawned, watch: Watch) -> None:
        """The created process exited. Started by then, the init's exec took it over; else it died
        before its start (killed, or ``runc delete``): the init exits with its status."""
        status = await watch.exited
        if self._early_started:
            return
        watch.close()
        if self._early is spawned:
            self._drop_early()
            if self.init.state is ExecState.CREATED and not self.init.deleted:
                self.init.force_exit(status)

    def _drop_early(self) -> None:
        """Close this side's ends of the created process's stdio (it will not start)."""
        early, self._early = self._early, None
        if early is not None:
            _close_ends(early)

    def start_init(self, spec: ProcessSpec, feed_stdin: bool, capture_stdout: bool,
                   capture_stderr: bool) -> Spawned:
        early, self._early = self._early, None
        if early is not None:
            spawned = early  # runc create ran when the task was made (create_init)
        else:
            spawned = self._launch(["create", "--bundle", self.bundle], spec, feed_stdin, capture_stdout,
                                   capture_stderr)
            self._created = True
        try:
            self.runc.call(self._log, "start", self.id)
        except RuncError as error:
            _close_ends(spawned)
            try:  # kills the created init; the orphan sweep reaps it
                self.runc.call(self._log, "delete", "--force", self.id)
                self._created = False
            except RuncError as delete_error:
                log.error("task %s: runc delete after a failed start: %s", self.id, delete_error.message)
            raise SpawnError(f"runc start: {error.message}") from None
        self._early_started = early is not None
        return spawned

    def start_exec(self, spec: ProcessSpec, feed_stdin: bool, capture_stdout: bool,
                   capture_stderr: bool) -> Spawned:
        if self.init.state is not ExecState.RUNNING:
            raise SpawnError(f"the init of task '{self.id}' is {self.init.state.value}, not running")
        process = spec.to_oci()
        if "/" not in spec.args[0] and not any(entry.startswith("PATH=") for entry in spec.env):
            # The exec contract's default search path; runc would look only in the process's PATH.
            found = find_in_root(self.config.root, spec.args[0])
            if found is not None:
                process["args"][0] = found
        process_file = self._file(".json")
        with open(process_file, "w") as process_json:
            json.dump(process, process_json)
        try:
            return self._launch(["exec", "--detach", "--process", process_file], spec, feed_stdin,
                                capture_stdout, capture_stderr)
        finally:
            os.unlink(process_file)

    def signal_all(self, signum: int) -> None:
        try:
            self.runc.kill(self._log, self.id, signum, all=True)
        except RuncError as error:
            if self.init.state is ExecState.RUNNING and "not running" not in error.message:
                raise ExecError(f"task: '{self.id}': runc kill --all: {error.message}") from None
            # The container stopped while the signal was on its way: not an error.

    def init_process_exited(self) -> None:
        """The init's process exited (its output may still be draining): without a pid namespace of
        its own, kill every process left in the container now — the execs and the init's own
        children, which may hold its output open — as containerd's runc shim does before it
        reports the exit. With one, the kernel killed them already (they were reaped before the
        init's exit could be)."""
        if not self.config.own_pid_namespace:
            try:
                self.runc.kill(self._log, self.id, signal.SIGKILL, all=True)
            except RuncError as error:
                log.warning("task %s: killing its processes after the init exited: %s", self.id, error.message)

    async def init_exited(self) -> None:
        """The init exited and its output was drained: wait until every exec of the container has
        exited (:meth:`init_process_exited` ended them)."""
        running = [core for core in self.live_execs() if core.state is ExecState.RUNNING]
        if running:
            await asyncio.gather(*(_exited(core) for core in running))


def _close_ends(spawned: Spawned) -> None:
    for fd in (spawned.stdin_fd, spawned.stdout_fd, spawned.stderr_fd, spawned.pty_master):
        if fd is not None:
            os.close(fd)


def _exited(core: ExecCore) -> asyncio.Future[ExecStatus]:
    """A future that is done once ``core`` has exited (its exit listeners ran)."""
    done: asyncio.Future[ExecStatus] = asyncio.get_running_loop().create_future()

    def on_exit(status: ExecStatus) -> None:
        if not done.done():
            done.set_result(status)

    core.add_exit_listener(on_exit)
    return done


class _InitLauncher(Launcher):
    """The init: ``runc create`` + ``runc start``; ``all`` is the whole container."""

    def __init__(self, task: TaskCore) -> None:
        self.task = task

    def launch(self, spec: ProcessSpec, *, feed_stdin: bool, capture_stdout: bool, capture_stderr: bool) -> Spawned:
        return self.task.start_init(spec, feed_stdin, capture_stdout, capture_stderr)

    def signal_all(self, pid: int, signum: int) -> None:
        self.task.signal_all(signum)

    def exited(self) -> None:
        self.task.init_process_exited()

    async def after_exit(self) -> None:
        await self.task.init_exited()


class _ExecLauncher(Launcher):
    """An exec: ``runc exec --detach``; ``all`` is its process group (the base class's)."""

    def __init__(self, task: TaskCore) -> None:
        self.task = task

    def launch(self, spec: ProcessSpec, *, feed_stdin: bool, capture_stdout: bool, capture_stderr: bool) -> Spawned:
        return self.task.start_exec(spec, feed_stdin, capture_stdout, capture_stderr)

