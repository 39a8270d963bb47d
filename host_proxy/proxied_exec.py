"""``ProxiedExec``: the exec contract for a process that runs behind an agent.

A proxied exec is the host's record of the process
(:class:`~host_proxy.remote_exec.RemoteExec`) plus an
:class:`~host_proxy.agent_link.AgentLink` to send requests on; it sees
nothing else of the client. The per-state rules come from
:mod:`common.rules`, the same code the agent's ``ExecCore`` runs, so a call
the host can judge alone gets the same error without a round trip, and one
it cannot gets the agent's error with its class and message.

- **Answers from memory.** ``pid``, ``state`` and ``status()`` read the
  record, kept current by the agent's events: they never wait on the agent,
  and they keep answering when it is gone (until the reconnect deadline ends
  the exec with 255).
- **Created here first.** ``create_exec`` checks everything the host can
  check; the agent hears of the exec when ``start()`` sends ``create`` and
  ``start`` back to back (one round trip). An exec deleted or force-exited
  before it started never reaches the agent at all.
- **A failed start is an exit.** When the agent refuses the create (another
  client holds the ids, it is full) or cannot be reached, or the process
  cannot be started, ``start()`` raises and the exec is EXITED with status 1
  (no events), as for a failed start anywhere; ``delete()`` then frees it.
- **Exited when the output is here.** The exec is EXITED on the host once its
  exit record arrived and all its output was written to the host's targets;
  until then it is RUNNING, exactly as a draining ``LocalExec``.

After ``delete()`` every member but ``id`` raises ``NotFoundError``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from common import protocol, rules
from common.contract import Exec
from common.errors import ExecError, FailedPreconditionError, NotFoundError, UnavailableError
from common.state import ExecState, ExecStatus

from .agent_link import Request

if TYPE_CHECKING:
    from .agent_link import AgentLink
    from .remote_exec import RemoteExec


class ProxiedExec(Exec):
    """A process in a guest, behind the exec contract. See :class:`common.Exec` for the rules."""

    def __init__(self, link: AgentLink, record: RemoteExec) -> None:
        self._link = link
        self._record = record
        self._start_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ProxiedExec {self._record.label} via {self._link.endpoint}>"

    def _ids(self) -> dict[str, str]:
        return {"task": self._record.task_id, "exec": self._record.exec_id}

    def _live(self) -> RemoteExec:
        record = self._record
        rules.check_live(record.task_id, record.exec_id, record.deleted)
        return record

    def _request(self, op: str, **fields: Any) -> Any:
        return self._link.request(op, {**self._ids(), **fields})

    @property
    def id(self) -> str:
        return self._record.exec_id

    @property
    def pid(self) -> int:
        return self._live().pid

    @property
    def state(self) -> ExecState:
        return self._live().state

    def status(self) -> ExecStatus:
        return self._live().status()

    @property
    def lost_reason(self) -> str | None:
        """Why the host ended this exec (with 255) without the agent's exit record — the agent
        stayed unreachable, restarted, forgot it, broke a bound, or the client was closed — or None."""
        return self._live().forced_reason

    @property
    def output_cut(self) -> bool:
        """Once exited: True if the agent stopped reading the output at the drain deadline
        (something the process left behind kept it open), so some of it may be missing."""
        header = self._live().exit_header
        return bool(header is not None and header.get("cut"))

    def start(self) -> None:
        with self._start_lock:  # one start at a time: the second sees the first's outcome
            record = self._live()
            rules.check_start(record.task_id, record.exec_id, record.state)
            requests = [Request("start", self._ids())]
            creating = record.pending_create is not None
            if creating:
                if record.stdin_closed_before_start:
                    requests.insert(0, Request("close_io", {**self._ids(), "q": -1}))
                if record.create_request_id is None:
                    record.create_request_id = self._link.new_request_id()
                record.create_sent = True
                requests.insert(0, Request("create", record.pending_create,  # type: ignore[arg-type]
                                           request_id=record.create_request_id))
            results = self._link.send(requests)
            if creating:
                if isinstance(results[0], ExecError):
                    record.refuse(results[0])  # refused or unanswered: exited with 1, no events
                    raise results[0]
                record.pending_create = None
                record.on_agent = True
            result = results[-1]
            if isinstance(result, ExecError):
                if result.from_peer and not isinstance(result, (FailedPreconditionError, NotFoundError)):
                    # The agent could not start the process; its exit record (status 1) is on the
                    # event connection and may come after this reply: the record ends here now.
                    record.end_unstarted(1)
                raise result
        # The agent's "started" event (ordered before this exec's output and exit) may not have been
        # handled yet if the reply came on a request-only connection: record the start now (once),
        # so that when start() returns this host knows the exec runs.
        record.on_started(protocol.get_int(result, "pid", 1, 2**31))

    def kill(self, signal: int, all: bool = False) -> None:  # noqa: A002 - shimExec's name
        record = self._live()
        rules.check_kill(record.task_id, record.exec_id, record.state, signal)
        self._request("kill", signal=signal, all=all)

    def resize_pty(self, width: int, height: int) -> None:
        record = self._live()
        if rules.check_resize(record.task_id, record.exec_id, record.state, record.terminal, width, height):
            self._request("resize_pty", width=width, height=height)

    def close_io(self, stdin: bool = True) -> None:
        record = self._live()
        if not stdin:
            return
        if not record.on_agent:
            with self._start_lock:
                if not record.on_agent:
                    # Not started yet: start() tells the agent before the start. Or never started
                    # and ended (its stdin source was closed then): nothing to do.
                    if record.pending_create is not None:
                        record.close_stdin_before_start()
                    return
        self._request("close_io", q=record.stop_stdin())

    def wait(self, timeout: float | None = None) -> ExecStatus:
        record = self._live()
        if not record.finalized.wait(rules.check_wait_timeout(timeout)):
            raise rules.wait_timeout_error(record.task_id, record.exec_id, timeout)
        assert record.final is not None
        return record.final

    def force_exit(self, status: int) -> None:
        record = self._live()
        if not rules.check_force_exit(record.state, status):
            return
        if not record.on_agent:
            record.end_unstarted(status)  # never started: no event, as on the agent
            return
        try:
            self._request("force_exit", status=status)
        except UnavailableError as error:
            if error.from_peer:
                raise
            # The agent is out of reach, which is when force_exit matters most: end it here.
            record.end_here(status, "force_exit while the agent is unreachable")
            return
        # The agent sent the exit record before its reply; wait for this host to finish it.
        record.finalized.wait(self._link.answer_timeout)

    def delete(self) -> ExecStatus:
        record = self._live()
        rules.check_delete(record.task_id, record.exec_id, record.state)
        if not record.on_agent:
            if record.final is None:
                record.end_unstarted(0)
            assert record.final is not None
            self._link.release(record)
            return record.final
        if record.forced_locally and record.final is not None:
            # Ended here while the agent was away; make the agent agree before forgetting it.
            try:
                self._request("force_exit", status=record.final.exit_status)
            except ExecError:
                pass
        try:
            result = self._request("delete")
        except (NotFoundError, UnavailableError):
            if record.final is None:
                raise
            final = record.final  # the agent lost it or is gone; it already ended here
        else:
            final = record.final or protocol.status_from_wire(result)
            if record.final is None:
                # Its start got no answer, so the host never learned how it ended: the agent's
                # final status is the last word (no events: the host never saw it start).
                record.end_unstarted(final.exit_status, final.exited_at, final.pid)
        self._link.release(record)
        return final

    @property
    def released(self) -> bool:
        """True once deleted (every member but ``id`` raises ``NotFoundError`` then)."""
        return self._record.deleted

    def end_with_task(self) -> None:
        """The agent deleted this exec's task, and this exec with it: finish it here and release it.

        Its exit record was sent before the agent's reply; it is waited for (at most the link's
        answer time) so waiters get the real status. One never started ends with 0 and no events,
        as a delete in CREATED does. Afterwards every member but ``id`` raises ``NotFoundError``.
        """
        record = self._record
        if record.deleted:
            return
        if record.on_agent and record.final is None:
            record.finalized.wait(self._link.answer_timeout)
        if record.final is None:
            if record.on_agent:
                record.end_here(128 + 9, "its task was deleted before its exit arrived")
            else:
                record.end_unstarted(0)
        self._link.release(record)

