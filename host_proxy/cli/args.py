"""Every ``uvmexec`` command line option, and nothing heavier than argparse.

Promise: :func:`build_parser` parses a command line into a namespace whose
``handler`` names the function that runs it (``"module:function"``, a module
of this package imported only then; ``":function"`` is one of the package's
own) — so ``uvmexec run`` can start its private agent before it pays for
importing ZeroMQ and the client, and the two overlap. Usage errors exit
125 with a pointer to ``--help``, as docker's do.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from .errors import EXIT_CODE_TABLE, Exit

DEFAULT_TASK = "uvmexec"
DEFAULT_TIMEOUT = 10.0
DEFAULT_DRAIN_TIMEOUT = 2.0  # as the library's (common.rules, not imported here: it is heavier)
MAX_DRAIN_TIMEOUT = 3600.0   # the agent's limit
RUN_USAGE = ("uvmexec run [-d] [-i] [-t] [--guest ENDPOINT | --vm] [--env K=V]... [--env-file FILE]... "
             "[--cwd DIR] [--user USER[:GROUP]] [--] CMD [ARG...]")


_FAILED = "  125  uvmexec failed; the one-line message says how (usage, agent unreachable, key refused, ...)"
#: Each command's own exit codes, shown under its --help (run's are the command's: EXIT_CODE_TABLE).
COMMAND_EXIT_CODES = {
    "ps": "  0    listed",
    "status": "  0    shown\n  1    the agent tracks no such exec",
    "keygen": "  0    made",
    "logs": "  0    shown (with -f: followed until the exec exited, or Ctrl-C)",
    "kill": "  0    signalled each",
    "rm": "  0    removed each",
    "cp": "  0    copied",
    "vm build": "  0    built (or already built)",
    "vm up": "  0    the VM runs",
    "vm down": "  0    stopped, or none ran",
    "vm status": "  0    a VM runs\n  3    no VM runs",
}


def exit_codes(command: str) -> str:
    return f"exit codes:\n{COMMAND_EXIT_CODES[command]}\n{_FAILED}\n"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors exit 125 and point at the --help of the command at fault."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        #: (command, vm command) -> its parser: an unknown option is reported by the command it follows.
        self.commands: dict[tuple[str | None, ...], argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(Exit.FAILED, f"uvmexec: {message}\nSee '{self.prog} --help'.\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            key = (getattr(parsed, "subcommand", None), getattr(parsed, "vm_command", None))
            owner = self.commands.get(key) or self.commands.get(key[:1]) or self
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


class _Version(argparse.Action):
    """--version: looked up only when asked (importlib.metadata is not light)."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print uvmexec's version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            text = version("uvmexec")
        except PackageNotFoundError:
            text = "unknown (not installed)"
        print(f"uvmexec {text}")
        parser.exit(0)


def build_parser() -> Parser:
    parser = Parser(prog="uvmexec", description="Run processes inside utility VMs as if they were local.",
                    epilog="run's exit code is the command's own, except:\n" + EXIT_CODE_TABLE.split("\n", 1)[1]
                    + "other commands: see 'uvmexec COMMAND --help'.\n",
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version)
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks and the library's debug log ($UVMEXEC_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands.required = True
    _add_run(commands)
    _add_execs(commands)
    _add_manage(commands)
    keygen = commands.add_parser("keygen", help="make CURVE keys for an agent and its client",
                                 description="Make agent.key(_secret), client.key(_secret) and "
                                             "authorized_keys/ in DIR: a new directory, or a private "
                                             "(0700) one of yours. Never overwrites.")
    keygen.add_argument("directory", metavar="DIR")
    keygen.set_defaults(handler=":keygen_command")
    vm_commands = _add_vm(commands)
    for name, sub in commands.choices.items():
        parser.commands[(name,)] = sub
        sub.set_defaults(subcommand=name)  # "command" is also run's CMD
        sub.formatter_class = argparse.RawDescriptionHelpFormatter
        sub.epilog = EXIT_CODE_TABLE if name in ("run", "attach") else (
            exit_codes(name) if name in COMMAND_EXIT_CODES else None)
        # --debug is accepted after the command too ("uvmexec run --debug -- ...").
        sub.add_argument("--debug", dest="debug_here", action="store_true", help=argparse.SUPPRESS)
    for name, vm_sub in vm_commands.items():
        parser.commands[("vm", name)] = vm_sub
        vm_sub.formatter_class = argparse.RawDescriptionHelpFormatter
        vm_sub.epilog = exit_codes(f"vm {name}")
    return parser


def add_connection_options(parser: argparse.ArgumentParser, *, embedded: bool) -> None:
    group = parser.add_argument_group("where it runs" if embedded else "which agent")
    where = group.add_mutually_exclusive_group()
    default = ("default: $UVMEXEC_GUEST, else a private agent on this host (no VM)" if embedded
               else "default: $UVMEXEC_GUEST")
    where.add_argument("--guest", metavar="ENDPOINT",
                       help=f"agent endpoint: ipc:///path, tcp://host:port or ssh://user@host:port ({default})")
    where.add_argument("--vm", action="store_true",
                       help="the VM that 'uvmexec vm up' started (booted first if none runs)" if embedded
                       else "the VM that 'uvmexec vm up' started (none is booted for this)")
    group.add_argument("--keys", metavar="DIR",
                       help="a directory made by 'uvmexec keygen': --server-key DIR/agent.key and "
                            "--client-key DIR/client.key_secret ($UVMEXEC_KEYS)")
    group.add_argument("--server-key", metavar="FILE",
                       help="the agent's public certificate, pinned over tcp ($UVMEXEC_SERVER_KEY)")
    group.add_argument("--client-key", metavar="FILE",
                       help="our secret certificate, presented over tcp ($UVMEXEC_CLIENT_KEY)")
    group.add_argument("--insecure", action="store_true", help="plaintext tcp, without CURVE")
    group.add_argument("--ssh-key", metavar="FILE", help="private key for ssh:// ($UVMEXEC_SSH_KEY)")
    group.add_argument("--known-hosts", metavar="FILE",
                       help="known_hosts pinning the ssh:// host key ($UVMEXEC_KNOWN_HOSTS)")
    group.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"give up on an agent that does not answer (default {DEFAULT_TIMEOUT:g})")


def is_embedded(args: argparse.Namespace) -> bool:
    """``run`` goes through a private agent: neither --guest, --vm nor $UVMEXEC_GUEST names one."""
    return not args.vm and not (args.guest or os.environ.get("UVMEXEC_GUEST"))


def _add_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run", help="run a command with this terminal's stdio attached", usage=RUN_USAGE,
        description="Run CMD in a guest, like 'docker exec'. Its exit code becomes uvmexec's. "
                    "Without --guest or --vm it runs through a private agent on this host.")
    run.add_argument("-d", "--detach", action="store_true",
                     help="start it, print TASK/EXEC and leave it running; the agent keeps its last 4 MiB of "
                          "output per stream ('uvmexec logs', 'attach', 'kill', 'rm'); needs --guest or --vm")
    run.add_argument("-i", "--interactive", action="store_true", help="stream stdin to the command")
    run.add_argument("-t", "--tty", action="store_true", help="give the command a pseudo-terminal")
    run.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                     help="set K in the command's environment; a bare K copies it from ours (repeatable)")
    run.add_argument("--env-file", action="append", default=[], metavar="FILE",
                     help="read K=V (or a bare K) lines from FILE, as --env; '#' lines are comments "
                          "(repeatable; --env wins)")
    run.add_argument("-w", "--cwd", "--workdir", default="/", metavar="DIR",
                     help="working directory in the guest (default /)")
    run.add_argument("-u", "--user", metavar="USER[:GROUP]",
                     help="a name or UID (and group name or GID), looked up in the passwd and group files "
                          "where the command runs, as docker does; default: root in a guest, yourself for "
                          "the private agent")
    run.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT, metavar="SECONDS",
                     help="after the command exits, read output that something it left behind still writes "
                          f"for this long (default {DEFAULT_DRAIN_TIMEOUT:g}; 0: until the streams close, "
                          f"at most {MAX_DRAIN_TIMEOUT:g}s); uvmexec says so when output was cut off")
    run.add_argument("--task", default=DEFAULT_TASK, help=f"task id (default {DEFAULT_TASK})")
    run.add_argument("--id", dest="exec_id", metavar="EXEC", help="exec id (default run-PID-RANDOM)")
    add_connection_options(run, embedded=True)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD [ARG...]")
    run.set_defaults(handler="run:run_command")


def _add_execs(commands: argparse._SubParsersAction) -> None:
    ps = commands.add_parser("ps", help="list the execs an agent runs",
                             description="List the execs an agent runs (all it tracks with -a), whoever "
                                         "created them.")
    ps.add_argument("-a", "--all", action="store_true", help="also the execs that exited (not yet removed)")
    ps.add_argument("-q", "--quiet", action="store_true", help="print only TASK/EXEC, one per line")
    ps.add_argument("--format", choices=("table", "json"), default="table",
                    help="table (default), or json: one JSON object per line")
    ps.add_argument("--json", action="store_true", help="print one JSON list")
    ps.add_argument("--no-trunc", action="store_true", help="do not cut the command short")
    add_connection_options(ps, embedded=False)
    ps.set_defaults(handler="ps:ps_command")
    status = commands.add_parser("status", help="show one exec's status",
                                 description="Show one exec's status: TASK/EXEC, or an exec id "
                                             "that only one task uses.")
    status.add_argument("exec_ref", metavar="TASK/EXEC")
    status.add_argument("--json", action="store_true", help="print JSON")
    add_connection_options(status, embedded=False)
    status.set_defaults(handler="ps:status_command")


def _add_manage(commands: argparse._SubParsersAction) -> None:
    attach = commands.add_parser(
        "attach", help="attach this terminal's stdio to a running exec",
        description="Take over a running exec's stdio (its output not yet delivered comes first), forward "
                    "signals, and exit with its exit code. On a terminal, Ctrl-P Ctrl-Q detaches and "
                    "leaves it running.")
    attach.add_argument("exec_ref", metavar="TASK/EXEC")
    attach.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
    add_connection_options(attach, embedded=False)
    attach.set_defaults(handler="run:attach_command")
    logs = commands.add_parser(
        "logs", help="print the output the agent keeps for an exec",
        description="Print the output the agent holds for an exec, without taking it: the last 4 MiB of "
                    "each stream of one started with 'run -d' (read or not); of others, what was not "
                    "delivered yet. stdout to stdout, stderr to stderr.")
    logs.add_argument("exec_ref", metavar="TASK/EXEC")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="then take its output over and follow it until it exits (Ctrl-C stops)")
    add_connection_options(logs, embedded=False)
    logs.set_defaults(handler="manage:logs_command")
    kill = commands.add_parser("kill", help="send a signal to execs",
                               description="Send a signal to each exec's process (whoever created it).")
    kill.add_argument("exec_refs", metavar="TASK/EXEC", nargs="+")
    kill.add_argument("-s", "--signal", default="KILL", help="a name (TERM, SIGHUP, ...) or number (default KILL)")
    add_connection_options(kill, embedded=False)
    kill.set_defaults(handler="manage:kill_command")
    rm = commands.add_parser("rm", help="remove exited execs",
                             description="Remove exited execs from the agent (their status and output).")
    rm.add_argument("exec_refs", metavar="TASK/EXEC", nargs="+")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running exec first (exit status 137)")
    add_connection_options(rm, embedded=False)
    rm.set_defaults(handler="manage:rm_command")
    cp = commands.add_parser(
        "cp", help="copy files or directories into or out of the guest",
        description="Copy a file or directory between here and where the agent runs; a leading ':' marks "
                    "the path there (uvmexec cp --vm ./conf :/etc/app/, uvmexec cp --vm :/var/log/app.log .). "
                    "Into an existing directory the source goes under its own name, else it takes the "
                    "destination's. '-' is a tar stream on stdin (unpacked into :DIR) or stdout. Needs tar there.")
    cp.add_argument("source", metavar="SRC")
    cp.add_argument("destination", metavar="DEST")
    cp.add_argument("--task", default=DEFAULT_TASK, help=argparse.SUPPRESS)
    add_connection_options(cp, embedded=False)
    cp.set_defaults(handler="copy:copy_command")


def _add_vm(commands: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    from vm_images.options import add_vm_commands  # argparse only: the options 'python -m vm_images' has

    vm = commands.add_parser("vm", help="build, boot, stop or inspect the background VM",
                             description="The background VM that 'uvmexec run --vm' uses "
                                         "(the commands and options of 'python -m vm_images').")
    actions = vm.add_subparsers(dest="vm_command", metavar="{build,up,down,status}", parser_class=Parser)
    actions.required = True
    added = add_vm_commands(actions)
    for parser in (vm, *added.values()):
        parser.set_defaults(handler="vm:vm_command")
    return added
