"""How an :class:`~common.supervisor.ExecCore` starts and signals its process: the launcher hook.

An exec's rules (states, errors, events, output drain) do not depend on how
its process comes to be. A :class:`Launcher` is that one difference:
:class:`Launcher` itself spawns a bare process on this machine
(:func:`~common.supervisor.spawn.spawn`); the launchers of
:mod:`common.supervisor.task` have runc create it inside a container. Every
launcher hands back a :class:`~common.supervisor.spawn.Spawned` whose pid is
the process itself, a child (or, through a child subreaper, an adopted
orphan) of this process that the reaper can watch.

Launchers run on the supervisor's loop thread; ``launch`` is synchronous, so
a process is watched in the same loop step as it is known (no exit is missed,
and the reaper's orphan sweep cannot run in between).
"""

from __future__ import annotations

import os

from ..spec import ProcessSpec
from .spawn import Spawned, spawn


class Launcher:
    """Starts an exec's process and signals its group. The base class is a bare process."""

    def launch(self, spec: ProcessSpec, *, feed_stdin: bool, capture_stdout: bool, capture_stderr: bool) -> Spawned:
        """Start ``spec`` with pipes for the streams asked for (a pty if ``spec.terminal``).

        Raises :class:`~common.supervisor.spawn.SpawnError` naming the cause.
        """
        return spawn(spec, feed_stdin=feed_stdin, capture_stdout=capture_stdout, capture_stderr=capture_stderr)

    def signal_all(self, pid: int, signum: int) -> None:
        """``kill(signum, all=True)``: every process of the exec's process group (it leads one).

        A group already gone is not an error.
        """
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            pass

    def exited(self) -> None:
        """Called as soon as the process exited, before its output is drained: end here what must
        not outlive it and may hold its output open (nothing, for a bare process)."""

    async def after_exit(self) -> None:
        """Called once the process exited and its output was drained, before the exit is
        reported: wait here for whatever must end before it (nothing, for a bare process)."""


#: The launcher of every exec that runs outside a container.
BARE = Launcher()
