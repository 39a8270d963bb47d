"""The one process supervisor: spawn, reap, pump stdio, and the exec state machine."""

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
]
