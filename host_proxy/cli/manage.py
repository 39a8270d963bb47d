"""``uvmexec kill``, ``rm`` and ``logs``: an exec that outlived its client, managed by name.

Promise: each takes ``TASK/EXEC`` (or an ``EXEC`` only one task has), as
``ps`` lists them, and never takes the exec over from whoever holds it:

- ``kill [-s SIGNAL] REF...`` sends a signal (default KILL; a name such as
  TERM or SIGTERM, or a number) to each exec's process, and prints the ref;
- ``rm [-f] REF...`` removes exited execs (``-f`` kills a running one first,
  recording 137), and prints the ref;
- ``logs [-f] REF`` prints the output the agent holds for the exec — a
  detached exec's (``run -d``) last 4 MiB of each stream, read or not; for
  others what has not been delivered yet — stdout to stdout, stderr to
  stderr, and says once on stderr when older output is gone. ``-f`` then
  takes the exec's output over and follows it until the exec exits.

A failure on one ref is one line and exit 125 (the others are still done).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import BinaryIO, cast

from common import Stdio
from common.errors import ExecError
from common.state import ExecState

from ..client import AgentClient, ExecInfo
from . import connect
from .errors import CliError, Exit, classify
from .ps import find
from .stdio import FdWriter

FORCED_STATUS = 128 + signal.SIGKILL


def parse_signal(text: str) -> int:
    if text.isdigit():
        number = int(text)
        if 0 < number <= 64:
            return number
    else:
        name = text.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        found = getattr(signal.Signals, name, None)
        if found is not None:
            return int(found)
    raise CliError(f"--signal {text!r}: give a signal name (TERM, SIGKILL, ...) or a number from 1 to 64")


def _each(args: argparse.Namespace, act: str, do: Callable[[AgentClient, ExecInfo], None]) -> int:
    """``do(client, info)`` for every ref; one line per failure; 125 if any failed."""
    failed = False
    with connect.connect(args, allow_embedded=False, debug=args.debug) as target:
        try:
            execs = target.client.list_exec_info()
        except ExecError as error:
            raise classify(error, target.where) from None
        for ref in args.exec_refs:
            try:
                info = find(execs, ref, target.where)
                if info is None:
                    raise CliError(f"no exec {ref!r} on {target.where} (see 'uvmexec ps -a')")
                do(target.client, info)
            except CliError as error:
                print(f"uvmexec: cannot {act} {ref}: {error.message}", file=sys.stderr, flush=True)
                failed = True
            except ExecError as error:
                print(f"uvmexec: cannot {act} {ref}: {classify(error).message}", file=sys.stderr, flush=True)
                failed = True
            else:
                print(ref, flush=True)
    return Exit.FAILED if failed else Exit.OK


def _ids(info: ExecInfo) -> dict[str, str]:
    return {"task": info.status.id, "exec": info.status.exec_id}


def kill_command(args: argparse.Namespace) -> int:
    signum = parse_signal(args.signal)

    def kill(client: AgentClient, info: ExecInfo) -> None:
        if info.status.status is not ExecState.RUNNING:
            raise CliError(f"it is {info.status.status.value}, not running")
        client.request("kill", {**_ids(info), "signal": signum, "all": False})

    return _each(args, "kill", kill)


def rm_command(args: argparse.Namespace) -> int:
    def remove(client: AgentClient, info: ExecInfo) -> None:
        if info.status.status is ExecState.RUNNING:
            if not args.force:
                raise CliError("it is running: stop it first ('uvmexec kill'), or use rm -f")
            client.request("force_exit", {**_ids(info), "status": FORCED_STATUS})
        client.request("delete", _ids(info))

    return _each(args, "remove", remove)


def logs_command(args: argparse.Namespace) -> int:
    from .run import quiet_library

    quiet_library(args.debug)  # closing the client after -f is no news
    # Ctrl-C, SIGTERM and SIGHUP end the following (and so the client says goodbye), not the command.
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _logs(args)
    except KeyboardInterrupt:
        return Exit.OK
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _logs(args: argparse.Namespace) -> int:
    with connect.connect(args, allow_embedded=False, debug=args.debug) as target:
        client = target.client
        try:
            info = find(client.list_exec_info(), args.exec_ref, target.where)
            if info is None:
                raise CliError(f"no exec {args.exec_ref!r} on {target.where} (see 'uvmexec ps -a')")
            task, exec_id = info.status.id, info.status.exec_id
            shown: list[int] = []
            gone = False
            for stream, fd in ((1, 1), (2, 2)):
                after = -1
                while True:
                    page = client.read_output(task, exec_id, stream, after)
                    gone = gone or page.dropped > 0 or (after == -1 and page.first > 0)
                    FdWriter(fd).write(page.data)
                    after = max(after, page.last)
                    if not page.more:
                        break
                shown.append(after)
            if gone:
                print(f"uvmexec: older output of {task}/{exec_id} is no longer held (the agent keeps a detached "
                      "exec's last 4 MiB of each stream, and only undelivered output of others)",
                      file=sys.stderr, flush=True)
            if not args.follow or info.status.status is ExecState.EXITED:
                return Exit.OK
            stdio = Stdio(stdout=cast(BinaryIO, FdWriter(1)),
                          stderr=None if info.status.terminal else cast(BinaryIO, FdWriter(2)))
            following = client.attach(task, exec_id, stdio, skip_through=(shown[0], shown[1]))
        except ExecError as error:
            raise classify(error, target.where) from None
        following.wait()
        return Exit.OK


def _stop(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


__all__ = ["kill_command", "logs_command", "rm_command"]
