"""``uvmexec keygen`` output used by a real agent; ``uvmexec ps`` and ``status`` against a real agent."""

from __future__ import annotations

import json
import os
import stat

import pytest

from common import ProcessSpec
from host_proxy import AgentClient
from tests.support.agent import AgentProcess

from .helpers import run_cli


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.timeout(60)
def test_keygen_makes_keys_a_real_agent_accepts(tmp_path):
    keys = tmp_path / "keys"
    made = run_cli(["keygen", str(keys)], tmp_path)
    assert made.returncode == 0, made.stderr
    assert sorted(os.listdir(keys)) == ["agent.key", "agent.key_secret", "authorized_keys", "client.key",
                                        "client.key_secret"]
    assert os.listdir(keys / "authorized_keys") == ["client.key"]
    assert _mode(keys) == 0o700
    assert _mode(keys / "agent.key_secret") == 0o600
    assert _mode(keys / "client.key_secret") == 0o600
    agent = AgentProcess(["tcp://127.0.0.1:0"], ["--server-key", str(keys / "agent.key_secret"),
                                                 "--authorized-keys", str(keys / "authorized_keys")]).start()
    try:
        result = run_cli(["run", "--guest", agent.endpoints[0], "--keys", str(keys), "--", "echo", "in"], tmp_path)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"in\n", b"")
    finally:
        agent.stop()


@pytest.mark.timeout(60)
def test_keygen_never_overwrites(tmp_path):
    keys = tmp_path / "keys"
    assert run_cli(["keygen", str(keys)], tmp_path).returncode == 0
    before = (keys / "agent.key_secret").read_bytes()
    again = run_cli(["keygen", str(keys)], tmp_path)
    assert again.returncode == 125
    assert b"already exists" in again.stderr and b"Traceback" not in again.stderr
    assert (keys / "agent.key_secret").read_bytes() == before


@pytest.fixture
def busy_agent(ipc_agent):
    """The agent runs t1/sleeper (running) and t1/done (exited 4), made through the library."""
    endpoint = ipc_agent.endpoints[0]
    with AgentClient.connect(endpoint) as client:
        sleeper = client.create_exec("t1", "sleeper", ProcessSpec(args=["sleep", "60"]))
        sleeper.start()
        done = client.create_exec("t1", "done", ProcessSpec(args=["sh", "-c", "exit 4"]))
        done.start()
        done.wait(timeout=20)
        try:
            yield endpoint, sleeper.pid
        finally:
            sleeper.kill(9)
            sleeper.wait(timeout=20)
            sleeper.delete()
            done.delete()


@pytest.mark.timeout(60)
def test_ps_lists_what_the_agent_runs(tmp_path, busy_agent):
    endpoint, pid = busy_agent
    result = run_cli(["ps", "--guest", endpoint], tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.decode().splitlines()]
    assert rows[0] == ["TASK", "EXEC", "PID", "STATE", "EXIT"]
    assert ["t1", "sleeper", str(pid), "running", "-"] in rows[1:]
    assert ["t1", "done"] == rows[1][:2] and rows[1][3:] == ["exited", "4"]
    listed = json.loads(run_cli(["ps", "--guest", endpoint, "--json"], tmp_path).stdout)
    assert {(entry["id"], entry["exec_id"], entry["status"]) for entry in listed} == {
        ("t1", "sleeper", "running"), ("t1", "done", "exited")}


@pytest.mark.timeout(60)
def test_status_of_one_exec(tmp_path, busy_agent):
    endpoint, pid = busy_agent
    result = run_cli(["status", "t1/done", "--guest", endpoint, "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["id"], status["exec_id"], status["status"], status["exit_status"]) == ("t1", "done", "exited", 4)
    assert status["exited_at"].endswith("+00:00")
    plain = run_cli(["status", "sleeper", "--guest", endpoint], tmp_path)  # an exec id one task uses
    assert plain.returncode == 0, plain.stderr
    assert f"pid:         {pid}\n".encode() in plain.stdout
    assert b"status:      running\n" in plain.stdout
    missing = run_cli(["status", "t1/nothing", "--guest", endpoint], tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith(b"uvmexec: no exec 't1/nothing' on agent ipc://")
