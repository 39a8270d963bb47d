"""``--help`` says what each command does and which exit codes it has; usage errors point at the right help."""

from __future__ import annotations

import pytest

from .helpers import run_cli


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["ps"], ["status"]])
def test_commands_that_need_a_running_vm_do_not_promise_to_boot_one(tmp_path, command):
    shown = run_cli([*command, "--help"], tmp_path).stdout.decode()
    assert "booted first" not in shown
    assert "none is booted for this" in " ".join(shown.split())


@pytest.mark.timeout(60)
def test_only_run_lists_the_commands_exit_codes(tmp_path):
    run_help = run_cli(["run", "--help"], tmp_path)
    assert run_help.returncode == 0
    assert "127" in run_help.stdout.decode() and "255" in run_help.stdout.decode()
    for command in (["ps"], ["status"], ["keygen"], ["vm", "up"], ["vm", "status"]):
        shown = run_cli([*command, "--help"], tmp_path).stdout.decode()
        codes = shown.split("exit codes:", 1)[1]
        assert "127" not in codes and "255" not in codes, command
        assert "125" in codes
    assert "3    no VM runs" in run_cli(["vm", "status", "--help"], tmp_path).stdout.decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "usage"), [
    (["run", "--no-such-flag", "--", "true"], "usage: uvmexec run "),
    (["ps", "--no-such-flag"], "usage: uvmexec ps "),
    (["vm", "up", "--no-such-flag"], "usage: uvmexec vm up "),
])
def test_an_unknown_option_shows_its_commands_usage(tmp_path, args, usage):
    result = run_cli(args, tmp_path)
    assert result.returncode == 125
    err = result.stderr.decode()
    assert err.startswith(usage), err
    assert "uvmexec: unrecognized arguments: --no-such-flag" in err
    assert f"See '{usage[len('usage: '):].strip()} --help'." in err


@pytest.mark.timeout(60)
def test_version(tmp_path):
    from importlib.metadata import version

    result = run_cli(["--version"], tmp_path)
    assert (result.returncode, result.stdout.decode()) == (0, f"uvmexec {version('uvmexec')}\n")
