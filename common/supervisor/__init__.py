"""The one process supervisor: spawn, reap, pump stdio, the exec state machine, and tasks (runc)."""

from ..rules import DEFAULT_DRAIN_TIMEOUT
from .execcore import ExecCore, Supervisor
from .streams import (
    FileObjectSink,
    FileObjectSource,
    InputSource,
    NullSink,
    OutputSink,
    PathSink,
    PathSource,
)
from .task import TaskCore

__all__ = [
    "DEFAULT_DRAIN_TIMEOUT",
    "ExecCore",
    "FileObjectSink",
    "FileObjectSource",
    "InputSource",
    "NullSink",
    "OutputSink",
    "PathSink",
    "PathSource",
    "Supervisor",
    "TaskCore",
]
