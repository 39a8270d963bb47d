"""Execs that outlive their client: ``run -d``, ``attach``, ``logs``, ``kill``, ``rm`` — and the orphans
a killed client leaves (issue 16, bug 5)."""

from __future__ import annotations

import os
import select
import signal
import subprocess

import pytest

from .helpers import ROOT, UVMEXEC, cli_env, discard, read_until, reap, run_cli
from .terminal import COOKED


def _orphan(tmp_path, endpoint: str, exec_id: str, script: str) -> None:
    """``uvmexec run -i --id EXEC -- sh -c SCRIPT`` whose client is SIGKILLed once the script said READY."""
    process = subprocess.Popen(UVMEXEC + ["run", "-i", "--guest", endpoint, "--id", exec_id, "--", "sh", "-c",
                                          f"echo READY; {script}"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=cli_env(tmp_path), cwd=ROOT)
    assert process.stdout is not None
    try:
        read_until(process.stdout.fileno(), b"READY\n")
        process.kill()  # no goodbye: the agent keeps the exec for a client that will never come back
        process.wait()
    finally:
        discard(process)


@pytest.mark.timeout(90)
def test_the_orphan_of_a_killed_client_can_be_killed_and_removed(tmp_path, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    _orphan(tmp_path, endpoint, "orphan", "exec sleep 600")
    assert run_cli(["ps", "-q", "--guest", endpoint], tmp_path).stdout == b"uvmexec/orphan\n"
    refused = run_cli(["rm", "orphan", "--guest", endpoint], tmp_path)
    assert refused.returncode == 125
    assert refused.stderr == (b"uvmexec: cannot remove orphan: it is running: stop it first ('uvmexec kill'), "
                              b"or use rm -f\n")
    killed = run_cli(["kill", "-s", "TERM", "orphan", "--guest", endpoint], tmp_path)
    assert (killed.returncode, killed.stdout, killed.stderr) == (0, b"orphan\n", b"")
    ended = run_cli(["attach", "--no-stdin", "orphan", "--guest", endpoint], tmp_path)  # waits for its exit
    assert ended.returncode == 143, ended.stderr
    listed = run_cli(["ps", "-a", "--guest", endpoint], tmp_path).stdout.decode().splitlines()
    assert listed[1].split()[:5] == ["uvmexec", "orphan", listed[1].split()[2], "exited", "143"]
    removed = run_cli(["rm", "uvmexec/orphan", "--guest", endpoint], tmp_path)
    assert (removed.returncode, removed.stdout) == (0, b"uvmexec/orphan\n"), removed.stderr
    assert run_cli(["ps", "-aq", "--guest", endpoint], tmp_path).stdout == b""


@pytest.mark.timeout(90)
def test_attach_takes_over_an_orphan_with_its_stdin_and_exit_code(tmp_path, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    _orphan(tmp_path, endpoint, "asker", "read x; echo got $x; echo bye >&2; exit 3")
    attached = run_cli(["attach", "asker", "--guest", endpoint], tmp_path, stdin_data=b"hi\n")
    assert (attached.returncode, attached.stderr) == (3, b"bye\n")
    # READY again if the killed client had not yet acknowledged it: what was not delivered is replayed.
    assert attached.stdout in (b"got hi\n", b"READY\ngot hi\n")


@pytest.mark.timeout(90)
def test_rm_force_and_unknown_execs(tmp_path, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    _orphan(tmp_path, endpoint, "stubborn", "trap '' TERM; exec sleep 600")
    forced = run_cli(["rm", "-f", "stubborn", "nothing", "--guest", endpoint], tmp_path)
    assert forced.returncode == 125  # one of the two could not be removed
    assert forced.stdout == b"stubborn\n"
    assert forced.stderr.startswith(b"uvmexec: cannot remove nothing: no exec 'nothing' on agent ipc://")
    assert run_cli(["ps", "-aq", "--guest", endpoint], tmp_path).stdout == b""
    bad = run_cli(["kill", "-s", "NOPE", "x", "--guest", endpoint], tmp_path)
    assert bad.returncode == 125
    assert bad.stderr.startswith(b"uvmexec: --signal 'NOPE': give a signal name")


@pytest.mark.timeout(90)
def test_run_detached_then_logs_and_attach(tmp_path, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    started = run_cli(["run", "-d", "-i", "--guest", endpoint, "--id", "d1", "--", "sh", "-c",
                       "echo one; echo two >&2; read x; echo got $x; exit 3"], tmp_path)
    assert (started.returncode, started.stdout, started.stderr) == (0, b"uvmexec/d1\n", b"")
    follower = subprocess.Popen(UVMEXEC + ["logs", "-f", "d1", "--guest", endpoint], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path), cwd=ROOT)
    try:
        read_until(follower.stdout.fileno(), b"one\n")
        read_until(follower.stderr.fileno(), b"two\n")
        follower.send_signal(signal.SIGTERM)  # stops following; the command runs on
        assert reap(follower) == 0
        assert follower.stderr.read() == b""
    finally:
        discard(follower)
    again = run_cli(["logs", "uvmexec/d1", "--guest", endpoint], tmp_path)  # what -f showed is still there
    assert (again.returncode, again.stdout, again.stderr) == (0, b"one\n", b"two\n")
    attached = run_cli(["attach", "d1", "--guest", endpoint], tmp_path, stdin_data=b"hi\n")
    assert attached.returncode == 3, attached.stderr
    # 'logs' showed it without taking it: attach starts with what no client has taken yet, if any.
    assert attached.stdout in (b"got hi\n", b"one\ngot hi\n")
    status = run_cli(["status", "d1", "--guest", endpoint], tmp_path).stdout
    assert b"exit_status: 3\n" in status
    assert run_cli(["rm", "d1", "--guest", endpoint], tmp_path).returncode == 0


@pytest.mark.timeout(90)
def test_a_detached_command_never_blocks_on_output_nobody_reads(tmp_path, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    fifo = str(tmp_path / "done")
    os.mkfifo(fifo)
    done = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the command says here when it got to the end
    try:
        started = run_cli(["run", "-d", "--guest", endpoint, "--id", "noisy", "--", "sh", "-c",
                           f"head -c 20000000 /dev/zero | tr '\\0' x; echo; echo END; echo done > {fifo}"],
                          tmp_path)
        assert started.returncode == 0, started.stderr
        # 20 MB, five times what the agent keeps: without the ring the command would block at 4 MiB.
        assert select.select([done], [], [], 60)[0], "the detached command blocked on its own output"
    finally:
        os.close(done)
    attached = run_cli(["attach", "--no-stdin", "noisy", "--guest", endpoint], tmp_path)  # it exited: its status
    assert attached.returncode == 0, attached.stderr
    logs = run_cli(["logs", "noisy", "--guest", endpoint], tmp_path)
    assert logs.returncode == 0
    assert logs.stdout.endswith(b"xxx\nEND\n")
    assert 3 * 1024 * 1024 < len(logs.stdout) <= 4 * 1024 * 1024  # the last window, no more
    assert logs.stderr.startswith(b"uvmexec: older output of uvmexec/noisy is no longer held")


@pytest.mark.timeout(60)
def test_detach_needs_an_agent_that_outlives_uvmexec(tmp_path):
    result = run_cli(["run", "-d", "--", "true"], tmp_path)
    assert result.returncode == 125
    assert result.stderr.startswith(b"uvmexec: -d needs an agent that outlives uvmexec: give --guest ENDPOINT or --vm")


@pytest.mark.timeout(90)
def test_ctrl_p_ctrl_q_detaches_and_attach_comes_back(terminal, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    term = terminal("run", "-it", "--guest", endpoint, "--id", "shell", "--", "sh", "-c",
                    "echo READY; read x; echo got $x; exit 4")
    term.expect(b"READY")
    term.type(b"\x10\x11")
    assert term.wait_for_exit() == 0
    assert b"detached from uvmexec/shell" in term.screen
    assert term.lflag() & COOKED == COOKED
    back = terminal("attach", "shell", "--guest", endpoint)
    back.type(b"hello\r")
    back.expect(b"got hello")
    assert back.wait_for_exit() == 4
    assert back.lflag() & COOKED == COOKED
