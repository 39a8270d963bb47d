"""The host side of uvmexec: execs on this host (``LocalExec``) or behind an agent (``AgentClient``)."""

from .client import AgentClient
from .local_exec import LocalExec
from .proxied_exec import ProxiedExec

__all__ = ["AgentClient", "LocalExec", "ProxiedExec"]
