"""``uvmexec run --vm`` end to end: boots the background VM (a private state directory) and runs in it."""

from __future__ import annotations

import json
import re

import pytest

from .helpers import cli_env, run_cli


@pytest.mark.vm
@pytest.mark.timeout(600)
def test_run_vm_boots_a_vm_and_runs_in_it(tmp_path):
    env = cli_env(tmp_path, UVMEXEC_VM_STATE=str(tmp_path / "vm"))
    try:
        result = run_cli(["run", "--vm", "--", "uname", "-r"], tmp_path, env=env, timeout=540)
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(rb"\d+\.\d+\.\d+-\d+-amd64\n", result.stdout), result.stdout
        assert b"VM ready in" in result.stderr  # the progress display, as plain lines off a terminal
        status = run_cli(["vm", "status", "--json"], tmp_path, env=env)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["running"] is True
        listed = run_cli(["ps", "--vm"], tmp_path, env=env)
        assert (listed.returncode, listed.stdout.split()) == (0, [b"TASK", b"EXEC", b"PID", b"STATE", b"EXIT"])
        again = run_cli(["run", "--vm", "--", "sh", "-c", "echo out; echo err >&2; exit 3"], tmp_path, env=env)
        assert (again.returncode, again.stdout, again.stderr) == (3, b"out\n", b"err\n")
    finally:
        down = run_cli(["vm", "down"], tmp_path, env=env, timeout=60)
    assert down.returncode == 0, down.stderr
    assert run_cli(["vm", "status"], tmp_path, env=env).returncode == 3
