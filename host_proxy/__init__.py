"""The host side of uvmexec: execs on this host (``LocalExec``) or in a guest (``AgentClient``)."""

from .local_exec import LocalExec

__all__ = ["LocalExec"]
