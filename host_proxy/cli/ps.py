"""``uvmexec ps`` and ``uvmexec status``: what an agent is running, like ``docker ps``/``inspect``.

Promise: ``ps`` prints one row per exec the agent tracks (whoever created
it) that has not exited — all of them with ``-a`` — oldest task first:
TASK, EXEC, PID, STATE, EXIT ("-" until it exited), COMMAND (cut to 30
characters unless ``--no-trunc``) and CREATED ("5 minutes ago"). ``-q``
prints only ``TASK/EXEC``, one per line; ``--format json`` one JSON object per
line; ``--json`` one JSON list. ``status TASK/EXEC`` (or just ``EXEC`` when
one task has it) prints one exec's status as ``label: value`` lines with
plain values ("-" for what does not apply yet), or its JSON object with
``--json``; an exec the agent does not track exits 1. A JSON object has the
fields of ``ExecStatus`` (``exited_at`` in ISO 8601) plus ``command`` (a list)
and ``created`` (ISO 8601, or null from an agent that does not say).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shlex
import sys
from typing import Any

from common.state import ExecState, ExecStatus

from ..client import ExecInfo
from . import connect
from .errors import CliError, Exit, classify

COMMAND_WIDTH = 30


def status_json(status: ExecStatus) -> dict[str, Any]:
    data = dataclasses.asdict(status)
    data["status"] = status.status.value
    data["exited_at"] = status.exited_at.isoformat() if status.exited_at else None
    return data


def info_json(info: ExecInfo) -> dict[str, Any]:
    return {**status_json(info.status), "command": list(info.args),
            "created": info.created_at.isoformat() if info.created_at else None}


def list_execs(args: argparse.Namespace) -> tuple[list[ExecInfo], str]:
    with connect.connect(args, allow_embedded=False, debug=args.debug) as target:
        try:
            return target.client.list_exec_info(), target.where
        except Exception as error:
            raise classify(error, target.where) from None


def command_text(info: ExecInfo, width: int | None = None) -> str:
    text = shlex.join(info.args) if info.args else "-"
    return text if width is None or len(text) <= width else text[:width - 1] + "…"


def ago(moment: datetime.datetime | None, now: datetime.datetime | None = None) -> str:
    """``moment`` as docker says it: "5 seconds ago", "About a minute ago", "3 hours ago"."""
    if moment is None:
        return "-"
    seconds = max(0, int(((now or datetime.datetime.now(datetime.UTC)) - moment).total_seconds()))
    if seconds < 1:
        return "Less than a second ago"
    for size, unit in ((86400 * 365, "year"), (86400 * 30, "month"), (86400 * 7, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute")):
        if seconds >= size:
            count = seconds // size
            if count == 1:
                return f"About {'an' if unit == 'hour' else 'a'} {unit} ago"
            return f"{count} {unit}s ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


def ps_command(args: argparse.Namespace) -> int:
    execs, _ = list_execs(args)
    execs.sort(key=lambda info: (info.status.id, info.status.exec_id))
    if not args.all:
        execs = [info for info in execs if info.status.status is not ExecState.EXITED]
    if args.quiet:
        for info in execs:
            print(f"{info.status.id}/{info.status.exec_id}")
        return Exit.OK
    if args.json:
        print(json.dumps([info_json(info) for info in execs], indent=2))
        return Exit.OK
    if args.format == "json":
        for info in execs:
            print(json.dumps(info_json(info)))
        return Exit.OK
    rows = [("TASK", "EXEC", "PID", "STATE", "EXIT", "COMMAND", "CREATED")]
    now = datetime.datetime.now(datetime.UTC)
    for info in execs:
        s = info.status
        exit_text = str(s.exit_status) if s.status is ExecState.EXITED else "-"
        rows.append((s.id, s.exec_id, str(s.pid), s.status.value, exit_text,
                     command_text(info, None if args.no_trunc else COMMAND_WIDTH), ago(info.created_at, now)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return Exit.OK


def find(execs: list[ExecInfo], ref: str, where: str) -> ExecInfo | None:
    """The exec ``TASK/EXEC`` (or an ``EXEC`` only one task has) names, or None."""
    task, _, exec_id = ref.rpartition("/")
    if not exec_id:
        raise CliError(f"{ref!r}: give TASK/EXEC or EXEC")
    found = [info for info in execs if info.status.exec_id == exec_id and (not task or info.status.id == task)]
    if len(found) > 1:
        tasks = ", ".join(sorted(f"{info.status.id}/{info.status.exec_id}" for info in found))
        raise CliError(f"{exec_id!r} is in more than one task ({tasks}): give TASK/EXEC")
    return found[0] if found else None


def status_command(args: argparse.Namespace) -> int:
    execs, where = list_execs(args)
    info = find(execs, args.exec_ref, where)
    if info is None:
        print(f"uvmexec: no exec {args.exec_ref!r} on {where}", file=sys.stderr)
        return Exit.NO_SUCH_EXEC
    if args.json:
        print(json.dumps(info_json(info), indent=2))
        return Exit.OK
    s = info.status
    exited = s.status is ExecState.EXITED
    lines = [
        ("task", s.id),
        ("exec", s.exec_id),
        ("status", s.status.value),
        ("pid", str(s.pid) if s.pid else "-"),
        ("command", command_text(info)),
        ("created", f"{info.created_at.isoformat()} ({ago(info.created_at)})" if info.created_at else "-"),
        ("terminal", "yes" if s.terminal else "no"),
        ("exit_status", str(s.exit_status) if exited else "-"),
        ("exited_at", s.exited_at.isoformat() if exited and s.exited_at else "-"),
    ]
    lines += [(name, value) for name, value in (("bundle", s.bundle), ("stdin", s.stdin), ("stdout", s.stdout),
                                                 ("stderr", s.stderr)) if value]
    for label, value in lines:
        print(f"{label + ':':<12} {value}")
    return Exit.OK
