"""``uvmexec ps`` and ``uvmexec status``: what an agent is running, like ``docker ps``/``inspect``.

Promise: ``ps`` prints one row per exec the agent tracks (whoever created
it): TASK, EXEC, PID, STATE, EXIT ("-" until it exited), oldest task first;
``--json`` prints a list of status objects instead. ``status TASK/EXEC``
(or just ``EXEC`` when one task has it) prints one exec's full status, or
its JSON object with ``--json``; an exec the agent does not track exits 1.
The JSON object has the fields of ``ExecStatus`` (``exited_at`` in ISO 8601).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from common.state import ExecState, ExecStatus

from . import connect
from .errors import CliError, Exit, classify


def status_json(status: ExecStatus) -> dict[str, Any]:
    data = dataclasses.asdict(status)
    data["status"] = status.status.value
    data["exited_at"] = status.exited_at.isoformat() if status.exited_at else None
    return data


def _list(args: argparse.Namespace) -> tuple[list[ExecStatus], str]:
    with connect.connect(args, allow_embedded=False, debug=args.debug) as target:
        try:
            return target.client.list_execs(), target.where
        except Exception as error:
            raise classify(error, target.where) from None


def ps_command(args: argparse.Namespace) -> int:
    execs, _ = _list(args)
    execs.sort(key=lambda s: (s.id, s.exec_id))
    if args.json:
        print(json.dumps([status_json(s) for s in execs], indent=2))
        return Exit.OK
    rows = [("TASK", "EXEC", "PID", "STATE", "EXIT")]
    for s in execs:
        exit_text = str(s.exit_status) if s.status is ExecState.EXITED else "-"
        rows.append((s.id, s.exec_id, str(s.pid), s.status.value, exit_text))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return Exit.OK


def status_command(args: argparse.Namespace) -> int:
    task, _, exec_id = args.exec_ref.rpartition("/")
    if not exec_id:
        raise CliError(f"{args.exec_ref!r}: give TASK/EXEC or EXEC")
    execs, where = _list(args)
    found = [s for s in execs if s.exec_id == exec_id and (not task or s.id == task)]
    if not found:
        print(f"uvmexec: no exec {args.exec_ref!r} on {where}", file=sys.stderr)
        return Exit.NO_SUCH_EXEC
    if len(found) > 1:
        tasks = ", ".join(sorted(f"{s.id}/{s.exec_id}" for s in found))
        raise CliError(f"{exec_id!r} is in more than one task ({tasks}): give TASK/EXEC")
    status = found[0]
    if args.json:
        print(json.dumps(status_json(status), indent=2))
        return Exit.OK
    labels = {"id": "task", "exec_id": "exec"}  # ExecStatus.id is the task id, as in containerd
    for key, value in status_json(status).items():
        print(f"{labels.get(key, key) + ':':<12} {'' if value is None else value}")
    return Exit.OK
