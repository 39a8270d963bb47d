"""The host side of uvmexec: execs and containers on this host (``LocalExec``, ``LocalTask``) or
behind an agent (``AgentClient``).

The public names are loaded on first use (PEP 562), so ``import host_proxy``
(and the ``uvmexec`` command starting up) does not pay for ZeroMQ and asyncio
until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["AgentClient", "BundleShare", "LocalExec", "LocalTask", "ProxiedExec", "ProxiedTask"]

_WHERE = {"AgentClient": ".client", "BundleShare": ".shared_bundle", "LocalExec": ".local_exec", "LocalTask": ".local_task",
          "ProxiedExec": ".proxied_exec", "ProxiedTask": ".proxied_task"}

if TYPE_CHECKING:
    from .client import AgentClient
    from .local_exec import LocalExec
    from .local_task import LocalTask
    from .proxied_exec import ProxiedExec
    from .proxied_task import ProxiedTask
    from .shared_bundle import BundleShare


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
