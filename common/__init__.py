"""What both sides of uvmexec share: the exec contract, the wire codec, the supervisor.

The contract and codec modules do no I/O; :mod:`common.supervisor` is the only
part that touches processes.
"""

from .contract import Exec
from .spec import ProcessSpec, Rlimit, Stdio, User
from .state import ExecExited, ExecStarted, ExecState, ExecStatus
from .task import Mount, ProcessInfo, Task

__all__ = [
    "Exec",
    "ExecExited",
    "ExecStarted",
    "ExecState",
    "ExecStatus",
    "Mount",
    "ProcessInfo",
    "ProcessSpec",
    "Rlimit",
    "Stdio",
    "Task",
    "User",
]
