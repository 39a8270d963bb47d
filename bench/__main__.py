"""``python -m bench [--quick|--full] [--only NAME ...] [--json FILE] [--markdown FILE]``.

Runs the benchmark families in order and prints, for each, a table of
medians and p99s with every figure's ratio against a baseline measured in the
same run, the load average before and after, and a closing list of targets
met or missed. ``--quick`` (the default) is CI-sized and only reports;
``--full`` is the run whose numbers BENCHMARKS.md shows. Neither asserts a
target: the exit status is 1 only if a benchmark could not run or saw a wrong
result (an exit status, a byte count).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .measure import Options, format_load, load_average, machine_info, source_state
from .report import FamilyResult, format_markdown, format_text, targets_summary, write_json

ROOT = str(Path(__file__).resolve().parent.parent)

#: name -> module; each module has ``run(options) -> FamilyResult``.
FAMILIES = {
    "ping": "bench.ping",
    "lifecycle": "bench.lifecycle",
    "throughput": "bench.throughput",
    "fanout": "bench.fanout",
    "lost_agent": "bench.lost_agent",
    "tasks": "bench.tasks",
    "shim": "bench.shim",
    "guest": "bench.guest",
    "guest-tasks": "bench.guest_tasks",
    "cli": "bench.cli",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[1])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="full", action="store_false", help="CI-sized run (default)")
    mode.add_argument("--full", dest="full", action="store_true", help="the run to report")
    parser.set_defaults(full=False)
    parser.add_argument("--only", action="append", choices=list(FAMILIES), metavar="NAME",
                        help=f"run only these families (repeatable): {', '.join(FAMILIES)}")
    parser.add_argument("--skip", action="append", choices=list(FAMILIES), metavar="NAME", default=[],
                        help="leave these families out (e.g. --skip guest on a machine without QEMU)")
    parser.add_argument("--json", metavar="FILE", help="write every figure and comparison as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    parser.add_argument("--scratch", metavar="DIR", help="where output files are written (default: $TMPDIR)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def _run_family(name: str, options: Options) -> list[FamilyResult]:
    """Run one family (some return several tables); a crash becomes an error entry, not an exit."""
    failed = FamilyResult(name, f"{name} (failed)")
    try:
        outcome = importlib.import_module(FAMILIES[name]).run(options)
    except Exception:
        failed.errors.append(traceback.format_exc().rstrip())
        return [failed.finish()]
    return outcome if isinstance(outcome, list) else [outcome]


def markdown_document(header: dict[str, Any], results: list[FamilyResult], summary: list[str]) -> str:
    """The whole run as Markdown: machine, source, load, every table, the targets."""
    machine = header["machine"]
    lines = [
        f"Run: `python -m bench --{header['mode']}`, {header['started_at']}, source {header['source']}.",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['memory_gib']} GiB; {machine['os']}, "
        f"kernel {machine['kernel']}; Python {machine['python']}, pyzmq {machine['pyzmq']} "
        f"(libzmq {machine['libzmq']}), msgpack {machine['msgpack']}.",
        "",
        f"Load average at start {format_load(header['load_start'])}, at end {format_load(header['load_end'])} "
        "(1, 5 and 15 minutes).",
        "",
    ]
    lines += [format_markdown(result) + "\n" for result in results]
    if summary:
        lines += ["Targets:", "", *(f"- {line}" for line in summary), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="bench: %(levelname)s %(name)s: %(message)s")

    def progress(message: str) -> None:
        if not args.quiet:
            print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    options = Options(full=args.full, scratch=args.scratch, progress=progress)
    selected = [name for name in (args.only or FAMILIES) if name not in args.skip]
    machine = machine_info()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    load_start = load_average()
    print(f"uvmexec benchmarks, {'full' if args.full else 'quick'} mode, {started_at}")
    print(f"machine: {machine['cpu']}, {machine['cpus']} cpus, {machine['memory_gib']} GiB; {machine['os']}, "
          f"kernel {machine['kernel']}; Python {machine['python']}, pyzmq {machine['pyzmq']} "
          f"(libzmq {machine['libzmq']}), msgpack {machine['msgpack']}")
    source = source_state(ROOT)
    print(f"source: {source}")
    print(f"load average at start: {format_load(load_start)}\n", flush=True)
    results = []
    for name in selected:
        progress(f"{name}: starting")
        for result in _run_family(name, options):
            results.append(result)
            print(format_text(result) + "\n", flush=True)
    load_end = load_average()
    print(f"load average at end: {format_load(load_end)}")
    summary = targets_summary(results)
    if summary:
        print("targets" + (" (quick mode: indicative only)" if not args.full else "") + ":")
        print("\n".join(f"  {line}" for line in summary))
    header = {"mode": "full" if args.full else "quick", "started_at": started_at, "source": source, "machine": machine,
              "load_start": list(load_start), "load_end": list(load_end)}
    if args.json:
        write_json(args.json, header, results)
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(markdown_document(header, results, summary))
    return 1 if any(result.errors for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
