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
    rows = [line.split("  ") for line in result.stdout.decode().splitlines()]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert rows[0] == ["TASK", "EXEC", "PID", "STATE", "EXIT", "COMMAND", "CREATED"]
    assert rows[1:] == [["t1", "sleeper", str(pid), "running", "-", "sleep 60", rows[1][-1]]]  # running only
    assert rows[1][-1].endswith("ago"), rows[1]
    everything = run_cli(["ps", "-a", "--guest", endpoint], tmp_path).stdout.decode().splitlines()
    assert [line.split()[:5] for line in everything[1:]] == [["t1", "done", everything[1].split()[2], "exited", "4"],
                                                              ["t1", "sleeper", str(pid), "running", "-"]]
    assert "sh -c 'exit 4'" in everything[1]
    listed = json.loads(run_cli(["ps", "-a", "--guest", endpoint, "--json"], tmp_path).stdout)
    assert {(entry["id"], entry["exec_id"], entry["status"]) for entry in listed} == {
        ("t1", "sleeper", "running"), ("t1", "done", "exited")}
    assert {tuple(entry["command"]) for entry in listed} == {("sleep", "60"), ("sh", "-c", "exit 4")}


@pytest.mark.timeout(60)
def test_ps_quiet_and_json_lines(tmp_path, busy_agent):
    endpoint, _ = busy_agent
    quiet = run_cli(["ps", "-q", "--guest", endpoint], tmp_path)
    assert (quiet.returncode, quiet.stdout) == (0, b"t1/sleeper\n")
    assert run_cli(["ps", "-aq", "--guest", endpoint], tmp_path).stdout == b"t1/done\nt1/sleeper\n"
    lines = run_cli(["ps", "-a", "--format", "json", "--guest", endpoint], tmp_path).stdout.decode().splitlines()
    objects = [json.loads(line) for line in lines]
    assert [(entry["exec_id"], entry["status"]) for entry in objects] == [("done", "exited"), ("sleeper", "running")]
    assert all(entry["created"].endswith("+00:00") for entry in objects)


@pytest.mark.timeout(60)
def test_ps_cuts_a_long_command_unless_told(tmp_path, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    with AgentClient.connect(endpoint) as client:
        long = client.create_exec("t1", "long", ProcessSpec(args=["sh", "-c", "exec sleep 60", *["word"] * 100]))
        long.start()
        try:
            cut = run_cli(["ps", "--guest", endpoint], tmp_path).stdout.decode().splitlines()[1]
            assert "sh -c 'exec sleep 60' word wo…" in cut
            whole = run_cli(["ps", "--no-trunc", "--guest", endpoint], tmp_path).stdout.decode()
            assert "sh -c 'exec sleep 60' " + " ".join(["word"] * 47) + " w...  " in whole  # the agent keeps 256
        finally:
            long.kill(9)
            long.wait(timeout=20)
            long.delete()


@pytest.mark.timeout(60)
def test_status_of_one_exec(tmp_path, busy_agent):
    endpoint, pid = busy_agent
    result = run_cli(["status", "t1/done", "--guest", endpoint, "--json"], tmp_path)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert (status["id"], status["exec_id"], status["status"], status["exit_status"]) == ("t1", "done", "exited", 4)
    assert status["exited_at"].endswith("+00:00")
    assert status["command"] == ["sh", "-c", "exit 4"]
    plain = run_cli(["status", "sleeper", "--guest", endpoint], tmp_path)  # an exec id one task uses
    assert plain.returncode == 0, plain.stderr
    lines = dict(line.split(":", 1) for line in plain.stdout.decode().splitlines())
    shown = {key: value.strip() for key, value in lines.items()}
    assert shown["pid"] == str(pid)
    assert shown["status"] == "running"
    assert shown["command"] == "sleep 60"
    assert shown["terminal"] == "no"  # not Python's False
    assert shown["exit_status"] == "-" and shown["exited_at"] == "-"  # not 255 while it runs
    assert "stdin" not in shown and "bundle" not in shown  # nothing to say
    done = run_cli(["status", "t1/done", "--guest", endpoint], tmp_path).stdout.decode()
    assert "exit_status: 4\n" in done
    missing = run_cli(["status", "t1/nothing", "--guest", endpoint], tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.startswith(b"uvmexec: no exec 't1/nothing' on agent ipc://")
