"""The private agent behind ``uvmexec run`` when neither ``--guest`` nor ``--vm`` is given.

:class:`PrivateAgent` is :class:`host_proxy.private_agent.AgentChild` (see
there for its promises) with the command line's error reporting: a failure
to start it is a :class:`~host_proxy.cli.errors.CliError` carrying the
agent's own words (exit 125, uvmexec's own failure). ``stop()`` kills it at
once when ``idle`` says it holds no exec any more and it has no child process:
there is nothing left for its orderly shutdown to clean up.
"""

from __future__ import annotations

import os

from common.errors import UnavailableError

from ..private_agent import READY_PREFIX, AgentChild, read_line
from .errors import CliError, Exit

__all__ = ["READY_PREFIX", "PrivateAgent", "read_line"]


class PrivateAgent(AgentChild):
    """A uvm-agent child on ``ipc://<private dir>/agent.sock``. Use as a context manager."""

    def __init__(self, *, debug: bool = False, ready_timeout: float = 20.0) -> None:
        super().__init__(debug=debug, ready_timeout=ready_timeout)
        #: Set once the agent holds no exec (ours was deleted): stop() need not let it shut down.
        self.idle = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

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
            raise CliError(error.message, Exit.FAILED) from None
        return self

    def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        if process is not None and process.poll() is None and self.idle and not _has_children(process.pid):
            process.kill()  # nothing of ours runs under it: its orderly shutdown is wasted time
            process.wait()
        super().stop(timeout)

    def __enter__(self) -> PrivateAgent:
        return self.start()


def _has_children(pid: int) -> bool:
    """Whether ``pid`` has a child process (something a command left behind, which its shutdown kills)."""
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                if children.read().strip():
                    return True
    except OSError:
        return True  # cannot tell: let it shut down in order
    return False
