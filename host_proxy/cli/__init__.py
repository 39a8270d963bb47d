"""``uvmexec``: the command line — ``docker exec`` for utility VMs.

::

    uvmexec run [-d] [-i] [-t] [--guest ENDPOINT | --vm] [--env K=V]... [--env-file FILE]... [--cwd DIR]
                [--user USER[:GROUP]] [--drain-timeout SECONDS] -- CMD [ARG...]
    uvmexec attach | logs [-f] | kill [-s SIGNAL] | rm [-f] TASK/EXEC
    uvmexec cp SRC :DEST | :SRC DEST
    uvmexec ps [-a] [-q] [--format table|json] [--guest ENDPOINT | --vm]
    uvmexec status TASK/EXEC [--guest ENDPOINT | --vm] [--json]
    uvmexec keygen DIR
    uvmexec vm build | up | down | status

Promise: :func:`main` returns the exit code (the command's own for ``run``;
see :mod:`host_proxy.cli.errors` for uvmexec's). No Python traceback reaches
the user: every failure is one line ``uvmexec: ...`` on stderr; an internal
error says so and suggests ``--debug`` (or ``UVMEXEC_DEBUG=1``), which shows
the traceback and the library's debug log.

This module and what it imports first stay light: for ``uvmexec run`` on the
embedded default the private agent is spawned before the command's module
(and with it ZeroMQ, asyncio and the client) is imported, so the agent's
start-up and ours overlap.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable

from .args import build_parser, is_embedded
from .errors import CliError, Exit
from .signals import SignalRelay, Terminated


def keygen_command(args: argparse.Namespace) -> int:
    from common.trust import UntrustedPathError

    from ..keys import keygen

    try:
        keys = keygen(args.directory)
    except (FileExistsError, UntrustedPathError) as error:
        raise CliError(str(error)) from None
    except OSError as error:
        raise CliError(f"keygen {args.directory}: {error.strerror or error}") from None
    print(f"agent:  {keys.agent_secret} (secret)  {keys.agent_public} (public)")
    print(f"client: {keys.client_secret} (secret)  {keys.client_public} (public)")
    print(f"authorized client keys: {keys.authorized_keys}/")
    print(f"start an agent: uvm-agent --listen tcp://0.0.0.0:5555 --server-key {keys.agent_secret} "
          f"--authorized-keys {keys.authorized_keys}")
    print(f"run through it: uvmexec run --guest tcp://HOST:5555 --keys {keys.directory} -- CMD")
    return Exit.OK


def _handler(name: str) -> Callable[[argparse.Namespace], int]:
    module_name, _, function = name.partition(":")
    if not module_name:  # ":function" is one of this module's own
        return globals()[function]
    return getattr(importlib.import_module(f"{__package__}.{module_name}"), function)


def _setup_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("uvmexec: %(message)s" if not debug
                                           else "uvmexec: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    if not debug:
        logging.getLogger("paramiko").setLevel(logging.CRITICAL)  # its own tracebacks are noise here


def main(argv: list[str] | None = None) -> int:
    debug = os.environ.get("UVMEXEC_DEBUG", "") not in ("", "0")
    relay: SignalRelay | None = None
    agent = None
    try:
        args = build_parser().parse_args(argv)
        debug = debug or bool(args.debug or getattr(args, "debug_here", False))
        args.debug = debug
        _setup_logging(debug)
        if args.handler == "run:run_command":
            # Signals first, so that from here on SIGTERM/SIGHUP unwind through the finally below.
            relay = args.relay = SignalRelay().install()
            if is_embedded(args) and args.command not in ([], ["--"]) and not args.detach:
                from .embedded import PrivateAgent

                agent = args.private_agent = PrivateAgent(debug=debug).spawn()
        return int(_handler(args.handler)(args))
    except CliError as error:
        _say(error.message)
        return error.code
    except KeyboardInterrupt:
        _say("interrupted")
        return Exit.INTERRUPTED
    except Terminated as error:
        return 128 + error.signum
    except BrokenPipeError:
        # Our reader went away (uvmexec ps | head): nothing more to say, and no noise at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else Exit.FAILED)
    except Exception as error:  # a bug of ours: one line, and the way to see more
        if debug:
            traceback.print_exc()
        _say(f"internal error: {type(error).__name__}: {error}"
             + ("" if debug else " (run with --debug for the traceback)"))
        return Exit.FAILED
    finally:
        if relay is not None:
            relay.relay()  # a signal during clean-up must not interrupt it
        if agent is not None:
            agent.stop()
        if relay is not None:
            relay.uninstall()


def _say(message: str) -> None:
    try:
        print(f"uvmexec: {message}", file=sys.stderr, flush=True)
    except OSError:
        pass
