"""The task contract: a container made from an OCI bundle, its init and the execs inside it.

hcsshim's shim serves containers, not bare processes ("for process isolated
containers the process will be on the same machine as this shim; for
hypervisor isolated … the process will be … proxied to the remote UtilityVM").
A :class:`Task` is that container: its *init* is an :class:`~common.Exec`
whose id is the task id (the OCI ``process`` of the bundle's ``config.json``),
and :meth:`Task.create_exec` runs more processes inside it (``runc exec``:
they join its namespaces, root and cgroup). Every ``Exec`` of a task — init
and execs — obeys the whole exec contract.

The task rules are containerd's (``pkg/process/init_state.go``, the runc
shim's ``service.go``) with hcsshim's messages (``task_hcs.go``); they are
written once in :mod:`common.rules`. This module does no I/O.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .contract import Exec
from .errors import InvalidArgumentError, UnimplementedError, describe
from .rules import DEFAULT_DRAIN_TIMEOUT
from .spec import MAX_PATH_BYTES, ProcessSpec, Stdio, check_text
from .state import ExecEvent, ExecStatus

#: Options of one mount, and their size: what containerd hands a shim for an image of many layers fits.
MAX_MOUNT_OPTIONS = 128
MAX_MOUNT_OPTION_BYTES = 64 * 1024
MAX_MOUNT_TYPE_BYTES = 64
#: Mounts stacked onto one task's rootfs.
MAX_ROOTFS_MOUNTS = 64


@dataclass(frozen=True)
class Mount:
    """One mount of a task's root filesystem, as containerd hands it to a shim (``CreateTaskRequest.rootfs``).

    ``Mount("overlay", "overlay", ["lowerdir=/l", "upperdir=/u", "workdir=/w"])``
    or ``Mount("bind", "/some/dir", ["rbind", "ro"])``. Each is mounted onto
    ``bundle/rootfs`` in order when the task is created and unmounted at
    ``delete()``. ``options`` are mount(8) options: the flag words (``ro``,
    ``rbind``, ``nosuid``, …) become mount flags, the rest is the file
    system's data. Invalid values raise ``InvalidArgumentError`` naming the
    field.
    """

    type: str
    source: str
    options: Sequence[str] = field(default=())

    def __post_init__(self) -> None:
        check_text(self.type, "mount.type", max_bytes=MAX_MOUNT_TYPE_BYTES, allow_empty=False)
        check_text(self.source, "mount.source", max_bytes=MAX_PATH_BYTES)
        options = self.options
        if not isinstance(options, (list, tuple)):
            raise InvalidArgumentError(f"invalid mount: options: must be a list of strings, not {describe(options)}")
        if len(options) > MAX_MOUNT_OPTIONS:
            raise InvalidArgumentError(
                f"invalid mount: options: {len(options)} entries, more than the limit of {MAX_MOUNT_OPTIONS}")
        for index, option in enumerate(options):
            check_text(option, f"mount.options[{index}]", max_bytes=MAX_MOUNT_OPTION_BYTES, allow_empty=False)
            if "," in option:
                # mount(2) takes the options as one comma-separated string: a comma would split one.
                raise InvalidArgumentError(f"invalid mount: options[{index}]: {describe(option)} contains a comma")
        object.__setattr__(self, "options", tuple(options))


@dataclass(frozen=True)
class ProcessInfo:
    """One process of a task, as the task's side sees it (containerd's ``task.ProcessInfo``).

    ``pid`` is the host pid for process isolation, the guest pid for
    hypervisor isolation. ``exec_id`` is the id of the exec it is (the task id
    for the init, as hcsshim reports it), ``""`` for any other process of the
    container (a child an exec started).
    """

    pid: int
    exec_id: str


class Task(abc.ABC):
    """A container made from an OCI bundle. Thread-safe; every method is synchronous.

    Rules (containerd's, with hcsshim's messages):

    - :meth:`create_exec` while the init is not RUNNING is
      ``FailedPreconditionError``; an exec id equal to the task id, or live in
      this task already, is ``AlreadyExistsError``.
    - When the init exits, every exec still running in the container is
      killed and exits with 128+9 (the container's pid namespace is gone); the
      init's exit is reported after theirs.
    - ``init.kill(signal, all=True)`` signals every process of the container.
    - :meth:`delete` with a RUNNING init is ``FailedPreconditionError``.

    Made with ``create_init=True``, a task splits its start as containerd's
    Create and Start do (``runc create``, then ``runc start``): its init's
    process exists from the task's creation, waiting to be started. Its pid is
    :attr:`created_pid`, and :meth:`kill` signals it (with ``all``, every
    process of the container); :meth:`pids` and :meth:`stats` answer for it.
    The init itself stays CREATED, under the exec contract (``pid`` 0, no
    events), until ``init.start()``, which is ``runc start``. If the process
    dies before that, the init exits with its exit status (128+N for signal
    N) and, never started, publishes nothing; :meth:`delete` kills it and the
    init's status is 0, as for any CREATED exec.
    """

    @property
    @abc.abstractmethod
    def id(self) -> str:
        """The task id (the container id). Valid in any state."""

    @property
    @abc.abstractmethod
    def bundle(self) -> str:
        """The bundle directory as given at creation. Valid in any state."""

    @property
    @abc.abstractmethod
    def init(self) -> Exec:
        """The container's own process: an Exec whose id is the task id.

        ``init.start()`` creates and starts the container (``runc create`` +
        ``runc start``); ``init.delete()`` is :meth:`delete`.
        """

    @property
    def created_pid(self) -> int:
        """The pid of the init's process as ``runc create`` made it (``create_init=True``), kept for
        the task's life; 0 for a task made without it."""
        return 0

    def kill(self, signal: int, all: bool = False) -> None:  # noqa: A002 - containerd's name
        """containerd's Kill of the task: before the init started, the process ``runc create``
        made (``create_init``) gets ``signal``; otherwise ``init.kill(signal, all)``."""
        self.init.kill(signal, all)

    @abc.abstractmethod
    def create_exec(
        self,
        exec_id: str,
        spec: ProcessSpec,
        stdio: Stdio | None = None,
        *,
        on_event: Callable[[ExecEvent], None] | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> Exec:
        """An exec (state CREATED) that runs ``spec`` inside the container when started."""

    @abc.abstractmethod
    def pids(self) -> list[ProcessInfo]:
        """Every process of the container now, as the task's side sees them (empty once it ended)."""

    def stats(self) -> dict[str, Any]:
        """The container's resource usage now: what ``runc events --stats`` reports under ``data``
        (``cpu``, ``memory``, ``pids``, ... as runc's libcontainer names them). A task that cannot
        tell raises ``UnimplementedError``; one whose init is not running, ``FailedPreconditionError``."""
        raise UnimplementedError(f"task: '{self.id}': statistics are not available for {type(self).__name__}")

    @abc.abstractmethod
    def delete(self) -> ExecStatus:
        """Release the container and return the init's final status.

        RUNNING init: ``FailedPreconditionError``. Otherwise every exec of the
        task is deleted with it (one still draining is ended with 128+9), the
        container's runtime state is removed (``runc delete``), the rootfs
        mounts are unmounted, and afterwards every member of the task's
        execs but ``id`` raises ``NotFoundError``; the id may be reused.
        """
