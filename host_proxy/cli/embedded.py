"""The private agent behind ``uvmexec run`` when neither ``--guest`` nor ``--vm`` is given.

:class:`PrivateAgent` is :class:`host_proxy.private_agent.AgentChild` (see
there for its promises) with the command line's error reporting: a failure
to start it is a :class:`~host_proxy.cli.errors.CliError` carrying the
agent's own words (exit 69 when it started but never became ready).
"""

from __future__ import annotations

from common.errors import UnavailableError

from ..private_agent import READY_PREFIX, AgentChild, read_line
from .errors import CliError, Exit

__all__ = ["READY_PREFIX", "PrivateAgent", "read_line"]


class PrivateAgent(AgentChild):
    """A uvm-agent child on ``ipc://<private dir>/agent.sock``. Use as a context manager."""

    def start(self) -> PrivateAgent:
        """Spawn it and wait until it is ready."""
        return self.spawn().wait_ready()

    def spawn(self) -> PrivateAgent:
        """Start the agent process and return at once (it gets ready while we do other work)."""
        try:
            super().spawn()
        except UnavailableError as error:
            raise CliError(error.message) from None
        return self

    def wait_ready(self) -> PrivateAgent:
        """Wait for the ready line; on failure stop it and raise ``CliError`` with its own words."""
        try:
            super().wait_ready()
        except UnavailableError as error:
            raise CliError(error.message, Exit.UNAVAILABLE) from None
        return self

    def __enter__(self) -> PrivateAgent:
        return self.start()
