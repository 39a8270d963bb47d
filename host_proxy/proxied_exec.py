"""``ProxiedExec``: the exec contract for a process that runs behind an agent.

The agent applies the same :class:`~common.supervisor.ExecCore` rules
``LocalExec`` applies, so errors come back as the same classes with the same
messages. What only the host can know is decided here:

- **Created here first.** ``create_exec`` checks everything the host can
  check and keeps the exec on the host; the agent hears of it only when it
  matters — ``start()`` sends ``create`` and ``start`` back to back (one
  round trip), and an exec deleted or force-exited before it started never
  reaches the agent at all. An error only the agent can find (another client
  holds the same ids, the agent is full) is raised by the first call that
  needs the agent, and by every call after it.
- **Exited when the output is here.** The exec is EXITED on the host once its
  exit record arrived and all its output was written to the host's targets;
  until then ``status()`` shows it RUNNING, exactly as a draining
  ``LocalExec``.
After ``delete()`` every member but ``id`` raises ``NotFoundError``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from common import protocol
from common.contract import Exec
from common.errors import (
    ExecError,
    NotFoundError,
    UnavailableError,
    invalid_state_error,
    not_a_tty_error,
    not_found_error,
)
from common.state import RUNNING_EXIT_STATUS, ExecState, ExecStatus
from common.supervisor.execcore import check_exit_status, check_terminal_size

if TYPE_CHECKING:
    from .client import AgentClient
    from .remote_exec import RemoteExec


class ProxiedExec(Exec):
    """A process in a guest, behind the exec contract. See :class:`common.Exec` for the rules."""

    def __init__(self, client: AgentClient, remote: RemoteExec) -> None:
        self._client = client
        self._remote = remote

    def __repr__(self) -> str:
        return f"<ProxiedExec {self._remote.task_id}/{self._remote.exec_id} via {self._client.endpoint}>"

    def _ids(self) -> dict[str, str]:
        return {"task": self._remote.task_id, "exec": self._remote.exec_id}

    def _check_live(self) -> None:
        if self._remote.deleted:
            raise not_found_error(self._remote.task_id, self._remote.exec_id)
        if self._remote.create_error is not None:
            raise self._remote.create_error

    def _request(self, op: str, **fields: Any) -> Any:
        self._check_live()
        return self._client._request(op, {**self._ids(), **fields})

    def _ensure_on_agent(self, then: tuple[str, dict[str, Any]] | None = None) -> Any:
        """Send the pending ``create`` (pipelined with ``then``, if given); ``then``'s result."""
        remote = self._remote
        with remote.create_lock:
            self._check_live()
            if remote.pending_create is None:
                return None if then is None else self._request(then[0], **then[1])
            ops = [("create", remote.pending_create)]
            if then is not None:
                ops.append((then[0], {**self._ids(), **then[1]}))
            if remote.create_request_id is None:
                remote.create_request_id = self._client._conn.next_request_id()
            remote.create_sent = True
            results = self._client._pipeline(ops, [remote.create_request_id] + [None] * (len(ops) - 1))
            if isinstance(results[0], UnavailableError):
                raise results[0]  # not sent, or no answer: still only here; a later call tries again
            if isinstance(results[0], ExecError):
                self._client._abandon(remote, results[0])
                raise results[0]
            remote.pending_create = None
            remote.on_agent = True
        if then is None:
            return None
        if isinstance(results[1], ExecError):
            raise results[1]
        return results[1]

    @property
    def id(self) -> str:
        return self._remote.exec_id

    @property
    def pid(self) -> int:
        return self.status().pid

    @property
    def state(self) -> ExecState:
        return self.status().status

    def status(self) -> ExecStatus:
        self._check_live()
        remote = self._remote
        if remote.final is not None:
            return remote.final
        if not remote.on_agent:
            return remote.created_status()
        status = protocol.status_from_wire(self._request("status"))
        if status.status is ExecState.EXITED:
            final = remote.final
            if final is not None:
                return final
            # The agent is done, but this host is still writing the last output: not exited yet.
            masked_state = ExecState.RUNNING if status.pid else ExecState.CREATED
            return dataclasses.replace(status, status=masked_state, exit_status=RUNNING_EXIT_STATUS,
                                       exited_at=None)
        return status

    def start(self) -> None:
        self._check_live()
        remote = self._remote
        if not remote.on_agent and remote.final is not None:
            raise invalid_state_error(remote.task_id, remote.exec_id, ExecState.EXITED, "start")
        if remote.on_agent:
            result = self._request("start")
        else:
            result = self._ensure_on_agent(("start", {}))
        # The agent's "started" event (ordered before this exec's output and exit) may not have been
        # handled yet if the reply came on a request-only connection: record the start now (once),
        # so that when start() returns this host knows the exec runs.
        remote.on_started(protocol.get_int(result, "pid", 1, 2**31))

    def kill(self, signal: int, all: bool = False) -> None:  # noqa: A002 - the seed's name
        self._check_live()
        remote = self._remote
        if remote.final is not None:
            raise not_found_error(remote.task_id, remote.exec_id)
        if not remote.on_agent:
            raise invalid_state_error(remote.task_id, remote.exec_id, ExecState.CREATED, "kill")
        self._request("kill", signal=signal, all=all)

    def resize_pty(self, width: int, height: int) -> None:
        self._check_live()
        remote = self._remote
        if not remote.on_agent:
            if not remote.terminal:
                raise not_a_tty_error(remote.task_id, remote.exec_id)
            check_terminal_size(width, height)
            return  # a terminal that does not run yet: ignored, as the contract says
        self._request("resize", width=width, height=height)

    def close_io(self, stdin: bool = True) -> None:
        self._check_live()
        remote = self._remote
        if not stdin or (remote.final is not None and not remote.on_agent):
            return
        self._ensure_on_agent()
        last_sent = -1
        if remote.stdin is not None:
            last_sent = self._client._loop.run(remote.stdin.stop())
        self._request("close_io", q=last_sent)

    def wait(self, timeout: float | None = None) -> ExecStatus:
        self._check_live()
        if not self._remote.finalized.wait(timeout):
            raise self._client._wait_timeout_error(self._remote, timeout)
        assert self._remote.final is not None
        return self._remote.final

    def force_exit(self, status: int) -> None:
        self._check_live()
        remote = self._remote
        if remote.final is not None:
            return
        if not remote.on_agent:
            check_exit_status(status)
            self._client._end_here(remote, status)  # never started: no event, as on the agent
            return
        try:
            self._request("force_exit", status=status)
        except UnavailableError:
            # The agent is out of reach, which is when force_exit matters most: end it here.
            check_exit_status(status)
            self._client._call(remote.force_locally, status, "force_exit while the agent is unreachable")
            return
        # The agent sent the exit record before its reply; wait for this host to finish it.
        remote.finalized.wait(self._client._conn.timeout)

    def delete(self) -> ExecStatus:
        self._check_live()
        remote = self._remote
        if not remote.on_agent:
            if remote.final is None:
                self._client._end_here(remote, 0)
            assert remote.final is not None
            self._client._forget(remote)
            return remote.final
        if remote.pid and remote.final is None:
            # Started and not finished here (the agent may be done, but its output is still on the
            # way or being written): still RUNNING, as a draining LocalExec is.
            raise invalid_state_error(remote.task_id, remote.exec_id, ExecState.RUNNING, "delete")
        if remote.forced_locally and remote.final is not None:
            # Ended here while the agent was away; make the agent agree before forgetting it.
            try:
                self._request("force_exit", status=remote.final.exit_status)
            except ExecError:
                pass
        try:
            result = self._request("delete")
        except (NotFoundError, UnavailableError):
            if remote.final is None:
                raise
            final = remote.final  # the agent lost it or is gone; it already ended here
        else:
            final = remote.final or protocol.status_from_wire(result)
            if remote.final is None:
                # Never started (a failed start): its exit record travels on the event connection
                # and may come after this reply; the reply is as final, so end it here.
                self._client._call(remote.finish, final.exit_status, final.exited_at, False, final.pid)
        self._client._forget(remote)
        return final
