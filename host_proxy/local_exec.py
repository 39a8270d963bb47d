"""``LocalExec``: the exec contract for a process on this host.

A thin synchronous, thread-safe shell over the common supervisor's
:class:`~common.supervisor.ExecCore`, which runs on the shared background
loop. State reads (``pid``, ``state``, ``status()``) use the core's immutable
snapshot and never wait for the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from common import rules
from common.contract import Exec
from common.errors import already_exists_error, not_found_error
from common.spec import ProcessSpec, Stdio
from common.state import ExecEvent, ExecState, ExecStatus
from common.supervisor import DEFAULT_DRAIN_TIMEOUT, ExecCore

from .loop_thread import LoopThread, shared_loop
from .stdio import check_creation, open_stdio

# (task id, exec id) -> live LocalExec; ids are unique within the process until delete().
_live: dict[tuple[str, str], LocalExec] = {}
_live_lock = threading.Lock()


class LocalExec(Exec):
    """A process on this host, behind the exec contract. See :class:`common.Exec` for the rules."""

    def __init__(
        self,
        task_id: str,
        exec_id: str,
        spec: ProcessSpec,
        stdio: Stdio | None = None,
        *,
        bundle: str = "",
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        on_event: Callable[[ExecEvent], None] | None = None,
        loop_thread: LoopThread | None = None,
    ) -> None:
        stdio, drain_timeout = check_creation(task_id, exec_id, spec, stdio, drain_timeout)
        self._task_id = task_id
        self._exec_id = exec_id
        self._key = (task_id, exec_id)
        with _live_lock:
            if self._key in _live:
                raise already_exists_error(task_id, exec_id)
            _live[self._key] = self
        try:
            ends = open_stdio(stdio)
        except BaseException:
            self._forget()
            raise
        self._loop = loop_thread or shared_loop()
        emit = None
        if on_event is not None:
            def emit(event: ExecEvent) -> None:
                self._loop.dispatch(on_event, event)

        self._exited = threading.Event()

        def make_core() -> ExecCore:
            core = ExecCore(
                self._loop.supervisor,
                task_id,
                exec_id,
                spec,
                stdin=ends.stdin,
                stdout=ends.stdout,
                stderr=ends.stderr,
                stdio_paths=ends.paths,
                bundle=bundle,
                drain_timeout=drain_timeout,
                emit=emit,
            )
            if on_event is None:
                core.add_exit_listener(lambda _status: self._exited.set())
            else:
                # Through the dispatch queue, behind the ExecExited callback queued just before.
                core.add_exit_listener(lambda _status: self._loop.dispatch(lambda _: self._exited.set(), None))
            return core

        try:
            self._core = self._loop.call(make_core)
        except BaseException:
            ends.release()
            self._forget()
            raise

    def _forget(self) -> None:
        with _live_lock:
            if _live.get(self._key) is self:
                del _live[self._key]

    def _snapshot(self) -> ExecStatus:
        if self._core.deleted:
            raise not_found_error(self._task_id, self._exec_id)
        return self._core.snapshot

    def __repr__(self) -> str:
        return f"<LocalExec {self._task_id}/{self._exec_id}>"

    @property
    def id(self) -> str:
        return self._exec_id

    @property
    def pid(self) -> int:
        return self._snapshot().pid

    @property
    def state(self) -> ExecState:
        return self._snapshot().status

    def status(self) -> ExecStatus:
        return self._snapshot()

    def start(self) -> None:
        self._loop.call(self._core.start)

    def kill(self, signal: int, all: bool = False) -> None:  # noqa: A002 - shimExec's name
        self._loop.call(self._core.kill, signal, all)

    def resize_pty(self, width: int, height: int) -> None:
        self._loop.call(self._core.resize_pty, width, height)

    def close_io(self, stdin: bool = True) -> None:
        if stdin:
            self._loop.call(self._core.close_io)
        else:
            self._snapshot()

    def wait(self, timeout: float | None = None) -> ExecStatus:
        self._snapshot()
        if not self._exited.wait(rules.check_wait_timeout(timeout)):
            raise rules.wait_timeout_error(self._task_id, self._exec_id, timeout)
        return self._core.snapshot

    def force_exit(self, status: int) -> None:
        self._loop.call(self._core.force_exit, status)

    def delete(self) -> ExecStatus:
        final = self._loop.call(self._core.delete)
        self._forget()
        return final
