"""``LocalTask``: process isolation — a container on this host, run by runc.

Its containers run through this process's private agent
(:func:`host_proxy.private_agent.private_client`, started on first use): runc
leaves a container's processes to the nearest child subreaper, and that must
be the agent, not the caller's process. A ``LocalTask`` is therefore exactly
a :class:`~host_proxy.ProxiedTask` on a local agent — the same task code as
hypervisor isolation, where the agent runs in the guest — and its init and
execs are ``ProxiedExec``\\ s that obey the whole exec contract. Pids are host
pids. Task ids are runc container ids: unique on this host.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from common.rules import DEFAULT_DRAIN_TIMEOUT
from common.spec import ProcessSpec, Stdio
from common.state import ExecEvent, ExecStatus
from common.task import Mount, ProcessInfo, Task

from .private_agent import private_client
from .proxied_exec import ProxiedExec
from .proxied_task import ProxiedTask


class LocalTask(Task):
    """A container from the OCI bundle at ``bundle``, on this host. See :class:`common.Task`.

    The bundle's config.json is checked and ``rootfs`` is mounted onto
    ``bundle/rootfs`` here (errors are raised now); ``init.start()`` starts the
    container. ``stdio``, ``on_event`` and ``drain_timeout`` are the init's; ``create_init``
    runs ``runc create`` now, as containerd's Create (see :class:`common.Task`).
    """

    def __init__(
        self,
        task_id: str,
        bundle: str | os.PathLike[str],
        stdio: Stdio | None = None,
        *,
        rootfs: Sequence[Mount] | None = None,
        on_event: Callable[[ExecEvent], None] | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        create_init: bool = False,
    ) -> None:
        path = os.fspath(bundle)
        self._task: ProxiedTask = private_client().create_task(
            task_id, os.path.abspath(path) if isinstance(path, str) else path, stdio, rootfs=rootfs,
            on_event=on_event, drain_timeout=drain_timeout, create_init=create_init)

    def __repr__(self) -> str:
        return f"<LocalTask {self._task.id}>"

    @property
    def id(self) -> str:
        return self._task.id

    @property
    def bundle(self) -> str:
        return self._task.bundle

    @property
    def init(self) -> ProxiedExec:
        return self._task.init

    @property
    def created_pid(self) -> int:
        return self._task.created_pid

    def kill(self, signal: int, all: bool = False) -> None:  # noqa: A002 - containerd's name
        self._task.kill(signal, all)

    def create_exec(
        self,
        exec_id: str,
        spec: ProcessSpec,
        stdio: Stdio | None = None,
        *,
        on_event: Callable[[ExecEvent], None] | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> ProxiedExec:
        return self._task.create_exec(exec_id, spec, stdio, on_event=on_event, drain_timeout=drain_timeout)

    def pids(self) -> list[ProcessInfo]:
        return self._task.pids()

    def stats(self) -> dict[str, Any]:
        return self._task.stats()

    def delete(self) -> ExecStatus:
        return self._task.delete()
