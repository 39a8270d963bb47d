"""The seam between a :class:`~host_proxy.ProxiedExec` and what carries its requests.

A proxied exec is two things: the host's record of the process (its state,
output streams and waiters, kept current by the agent's events:
:class:`~host_proxy.remote_exec.RemoteExec`) and the requests that act on it.
:class:`AgentLink` is all the exec sees of the second: send requests, in
order, and get each one's result or the :class:`~common.errors.ExecError` the
agent raised, with its class and message. :class:`~host_proxy.AgentClient`
is the link in production; a unit test may pass a fake of its own.

From a contract method to the process in the guest, one row each (the op
names match the methods; ``create`` travels in front of the first ``start``):

=================  ============  ==============================  ======================
``Exec`` member    wire op       agent handler                   runs
=================  ============  ==============================  ======================
``start()``        create+start  ``op_create`` + ``op_start``    ``ExecCore.start``
``kill()``         kill          ``op_kill``                     ``ExecCore.kill``
``resize_pty()``   resize_pty    ``op_resize_pty``               ``ExecCore.resize_pty``
``close_io()``     close_io      ``op_close_io``                 ``ExecCore.close_io``
``force_exit()``   force_exit    ``op_force_exit``               ``ExecCore.force_exit``
``delete()``       delete        ``op_delete``                   ``ExecCore.delete``
``wait()``         (none)        the ``exited`` event            ``ExecCore._finish``
``status()``, ``pid``, ``state``  (none): the host's record, kept by the events
=================  ============  ==============================  ======================

(The agent's handlers are in ``guest_agent/handlers.py``; the wire is in PROTOCOL.md.)
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .remote_exec import RemoteExec


@dataclass
class Request:
    """One request to the agent.

    ``request_id`` fixes the id (a resent ``create`` keeps its first one, so an agent that
    already did it answers from its reply cache); None takes a fresh one. ``on_result``
    runs on the client's loop with a successful result, before any later message of the
    agent is handled (so, e.g., an attached exec is tracked before its replayed output).
    """

    op: str
    fields: dict[str, Any] = field(default_factory=dict)
    request_id: int | None = None
    on_result: Callable[[Any], None] | None = None


class AgentLink(abc.ABC):
    """What a :class:`~host_proxy.ProxiedExec` needs from the client that made it. Thread-safe."""

    @property
    @abc.abstractmethod
    def endpoint(self) -> str:
        """The agent's endpoint, for messages."""

    @property
    @abc.abstractmethod
    def answer_timeout(self) -> float:
        """How long an answering agent takes at most to answer a request (seconds)."""

    @abc.abstractmethod
    def new_request_id(self) -> int:
        """A request id no other request of this link has used."""

    @abc.abstractmethod
    def send(self, requests: Sequence[Request]) -> list[Any]:
        """Send ``requests`` back to back, in order, and return each one's result or ExecError.

        An ExecError the agent answered keeps its class and message. A request that got no
        answer — the agent is out of reach, or stayed silent past the link's deadlines —
        yields an ``UnavailableError`` made here, with ``answered=False``.
        """

    def request(self, op: str, fields: dict[str, Any]) -> Any:
        """One request: its result, or raise the ExecError it got."""
        result = self.send([Request(op, fields)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    @abc.abstractmethod
    def release(self, record: RemoteExec) -> None:
        """The exec is gone (deleted, or never created): free its ids and everything kept for it."""
