"""``uvmexec vm`` and ``python -m vm_images`` share one set of commands and options (no VM needed)."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from host_proxy.cli.args import build_parser
from vm_images.__main__ import main as vm_images_main
from vm_images.options import add_vm_commands, guest_options

from .helpers import ROOT, cli_env

# Each command with a command line that sets every option it has.
EVERY_OPTION = {
    "build": ["--cache-dir", "/c", "--project-root", "/p", "--json"],
    "up": ["--memory", "768", "--cpus", "1", "--accel", "tcg", "--boot-timeout", "42", "--image", "/i", "--json"],
    "down": ["--stop-timeout", "7"],
    "status": ["--json"],
}
_BOOKKEEPING = {"handler", "vm_command", "command", "subcommand", "debug", "debug_here"}


def _vm_images_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vm_images")
    add_vm_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def _options(namespace: argparse.Namespace) -> dict[str, object]:
    return {key: value for key, value in vars(namespace).items() if key not in _BOOKKEEPING}


@pytest.mark.parametrize("command", sorted(EVERY_OPTION))
def test_both_command_lines_parse_the_same_options_the_same_way(command):
    for argv in ([command], [command, *EVERY_OPTION[command]]):
        ours = build_parser().parse_args(["vm", *argv])
        theirs = _vm_images_parser().parse_args(argv)
        assert ours.vm_command == theirs.command == command
        assert _options(ours) == _options(theirs)


def test_up_options_become_the_guest_options():
    args = build_parser().parse_args(["vm", "up", *EVERY_OPTION["up"]])
    assert guest_options(args) == {"memory_mb": 768, "cpus": 1, "accel": "tcg", "ready_timeout": 42.0}
    defaults = build_parser().parse_args(["vm", "up"])
    assert guest_options(defaults) == {"memory_mb": 512, "cpus": 2, "accel": "auto", "ready_timeout": 90.0}
    assert build_parser().parse_args(["vm", "down"]).stop_timeout == 15.0


@pytest.mark.parametrize(("command", "dest"), [("up", "boot_timeout"), ("down", "stop_timeout")])
def test_the_old_timeout_spelling_is_a_hidden_alias(command, dest, capsys):
    assert getattr(_vm_images_parser().parse_args([command, "--timeout", "3"]), dest) == 3.0
    assert getattr(build_parser().parse_args(["vm", command, "--timeout", "3"]), dest) == 3.0
    with pytest.raises(SystemExit):
        vm_images_main([command, "--help"])
    shown = capsys.readouterr().out
    assert "--timeout" not in shown


@pytest.mark.parametrize("command", sorted(EVERY_OPTION))
def test_every_option_is_documented_in_help(command, capsys):
    parser = _vm_images_parser()
    actions = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = actions.choices[command]
    for action in sub._actions:
        if action.option_strings and action.help is not argparse.SUPPRESS:
            assert action.help, f"{command} {action.option_strings} has no help line"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["vm", command, "--help"])
    shown = capsys.readouterr().out
    for word in EVERY_OPTION[command]:
        if word.startswith("--"):
            assert word in shown


def test_the_shared_options_are_light_to_import(tmp_path):
    # uvmexec builds its whole parser before it spawns a private agent: no ZeroMQ, no launcher there.
    script = ("import sys; from host_proxy.cli.args import build_parser; build_parser(); "
              "print(sorted(m for m in sys.modules if m.startswith(('vm_images', 'zmq'))))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                            env=cli_env(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['vm_images', 'vm_images.options']"


def test_vm_images_still_exports_every_name():
    import vm_images

    for name in vm_images.__all__:
        assert getattr(vm_images, name).__module__.startswith("vm_images.")
    with pytest.raises(AttributeError):
        vm_images.no_such_name  # noqa: B018
