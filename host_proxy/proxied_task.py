"""``ProxiedTask``: the task contract for a container that an agent runs with runc.

Made by :meth:`AgentClient.create_task <host_proxy.AgentClient.create_task>`
(the agent has checked the bundle and mounted the rootfs by then). Its init
and its execs are :class:`~host_proxy.ProxiedExec`\\ s like any other — the
host's record of the process plus the link to the agent — so each obeys the
whole exec contract; the task adds containerd's task rules
(:mod:`common.rules`, judged here first from the host's record, and again by
the agent):

=======================  ================  ==========================================
``Task`` member          wire op           agent side
=======================  ================  ==========================================
``create_task(...)``     create_task       ``TaskCore(...)``: config.json, mounts
``init.start()``         start             ``runc create`` + ``runc start``
``create_exec(...)``     create (in_task)  ``TaskCore.create_exec``, then ``runc exec``
``pids()``               pids              ``runc ps``
``stats()``              task_stats        ``runc events --stats``
``init.kill(s, True)``   kill (all)        ``runc kill --all``
``kill(s)`` before start task_kill         ``runc kill`` (``create_init``)
``delete()``             delete (init)     ``TaskCore.delete``: ``runc delete``, unmount
=======================  ================  ==========================================

``init.delete()`` and :meth:`ProxiedTask.delete` are the same: deleting the
init deletes the task, and every exec of it is released on this host too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common import protocol, rules
from common.errors import task_not_found_error
from common.rules import DEFAULT_DRAIN_TIMEOUT
from common.spec import ProcessSpec, Stdio
from common.state import ExecEvent, ExecState, ExecStatus
from common.task import ProcessInfo, Task

from .proxied_exec import ProxiedExec

if TYPE_CHECKING:
    from .client import AgentClient
    from .remote_exec import RemoteExec


class _TaskInit(ProxiedExec):
    """The init of a :class:`ProxiedTask`: deleting it deletes the task."""

    def __init__(self, client: AgentClient, record: RemoteExec, task: ProxiedTask) -> None:
        super().__init__(client, record)
        self._task = task

    def delete(self) -> ExecStatus:
        final = super().delete()
        self._task._end_execs()
        if self._task._on_delete is not None:
            self._task._on_delete()  # the agent has let go of the bundle: the host's part goes
        return final


class ProxiedTask(Task):
    """A container behind an agent. See :class:`common.Task` for the rules."""

    def __init__(self, client: AgentClient, init_record: RemoteExec, *, created_pid: int = 0,
                 on_delete: Callable[[], None] | None = None) -> None:
        self._client = client
        self._created_pid = created_pid
        self._on_delete = on_delete
        self._id = init_record.task_id
        self._bundle = init_record.bundle
        self._init = _TaskInit(client, init_record, self)
        self._execs: list[ProxiedExec] = []
        self._lock = threading.Lock()
        self._deleted = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._id} via {self._client.endpoint}>"

    @property
    def id(self) -> str:
        return self._id

    @property
    def bundle(self) -> str:
        return self._bundle

    @property
    def init(self) -> ProxiedExec:
        return self._init

    @property
    def created_pid(self) -> int:
        return self._created_pid

    def kill(self, signal: int, all: bool = False) -> None:  # noqa: A002 - containerd's name
        self._check_live()
        if not self._created_pid or self._init.state is not ExecState.CREATED:
            self._init.kill(signal, all)
            return
        rules.check_signal(signal)
        self._client.request("task_kill", {"task": self._id, "signal": signal, "all": bool(all)})

    def _check_live(self) -> None:
        if self._deleted:
            raise task_not_found_error(self._id)

    def create_exec(
        self,
        exec_id: str,
        spec: ProcessSpec,
        stdio: Stdio | None = None,
        *,
        on_event: Callable[[ExecEvent], None] | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    ) -> ProxiedExec:
        self._check_live()
        rules.check_task_exec(self._id, exec_id, self._init.state)
        made = self._client.create_exec(self._id, exec_id, spec, stdio, drain_timeout=drain_timeout,
                                        on_event=on_event, in_task=True)
        with self._lock:
            self._execs = [other for other in self._execs if not other.released]
            self._execs.append(made)
        return made

    def pids(self) -> list[ProcessInfo]:
        self._check_live()
        result = self._client.request("pids", {"task": self._id})
        return [protocol.process_info_from_wire(entry)
                for entry in protocol.get_list(result, "pids", protocol.MAX_LIST_ENTRIES)]

    def stats(self) -> dict[str, Any]:
        self._check_live()
        return protocol.get_map(self._client.request("task_stats", {"task": self._id}), "stats")

    def delete(self) -> ExecStatus:
        self._check_live()
        return self._init.delete()

    def _end_execs(self) -> None:
        """The agent deleted the task: release every exec of it here too."""
        self._deleted = True
        with self._lock:
            execs, self._execs = self._execs, []
        for made in execs:
            made.end_with_task()
