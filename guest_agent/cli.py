"""``uvm-agent`` (also ``python -m guest_agent``): the agent daemon's command line.

Runs as an ordinary service or as PID 1 of a small VM; either way it reaps
every orphan. SIGTERM or SIGINT stops it after killing what it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
from collections.abc import Callable

from .auth import KeyFileError
from .server import Agent

log = logging.getLogger("guest_agent")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="uvm-agent", description="The uvmexec guest agent.")
    parser.add_argument("--listen", action="append", required=True, metavar="ENDPOINT",
                        help="ipc:///path or tcp://host:port to listen on (repeatable)")
    parser.add_argument("--server-key", metavar="SECRET_CERT",
                        help="the agent's zmq.auth secret certificate (CURVE on tcp)")
    parser.add_argument("--authorized-keys", metavar="DIR",
                        help="directory of client public certificates (*.key) admitted over CURVE")
    parser.add_argument("--insecure", action="store_true",
                        help="allow plaintext tcp without CURVE (trusted networks only)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def _raise_open_file_limit() -> None:
    """Take the hard limit as our soft limit (as containerd does): each exec costs the agent
    a pidfd and up to three pipes, and init often hands down a soft limit of 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, error)


def on_stop_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """Call ``stop`` on the loop at SIGTERM or SIGINT, however many other signals arrive with it.

    asyncio's own signal handlers learn of a signal from a byte in its wakeup pipe, and a burst of
    SIGCHLD (a thousand execs ending together) fills that pipe: a SIGTERM whose byte no longer
    fits would be lost. Python's own handlers run from a per-signal flag that cannot overflow, so
    the stop signals use those; the pipe (set up for the reaper's SIGCHLD) only wakes the loop,
    and being full is no reason to print a warning.
    """
    signal.set_wakeup_fd(signal.set_wakeup_fd(-1), warn_on_full_buffer=False)

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(stop)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="uvm-agent: %(levelname)s %(name)s: %(message)s")
    _raise_open_file_limit()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        agent = Agent(loop, args.listen, server_key=args.server_key, authorized_keys=args.authorized_keys,
                      insecure=args.insecure)
    except (ValueError, KeyFileError) as error:
        print(f"uvm-agent: {error}", file=sys.stderr)
        return 2
    stopping: asyncio.Future[None] = loop.create_future()

    def stop() -> None:
        if not stopping.done():
            stopping.set_result(None)

    on_stop_signals(loop, stop)
    log.info("listening on %s (boot %s)", ", ".join(agent.endpoints), agent.boot_id)
    # The line tests and launchers wait for: every endpoint is bound.
    print(f"uvm-agent ready {' '.join(agent.endpoints)}", flush=True)
    try:
        loop.run_until_complete(stopping)
        loop.run_until_complete(agent.shutdown())
    finally:
        loop.close()
    return 0
