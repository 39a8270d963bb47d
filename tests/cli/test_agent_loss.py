"""Losing the agent while the command runs: Ctrl-C always ends the wait, a server known gone ends it at once.

The agents here are real processes that the tests SIGKILL, as a crash (or a
``vm down``) would; the command they ran lives on as an orphan, which each
test kills at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.support.agent import AgentProcess, tcp_address
from tests.support.procs import children
from tests.support.relay import TcpRelay

from .helpers import ROOT, UVMEXEC, cli_env, discard, gone, read_until, reap
from .terminal import COOKED

SLEEPER = ["sh", "-c", "echo $$; exec sleep 60"]


def _start(tmp_path, *args: str) -> tuple[subprocess.Popen, int]:
    """uvmexec run ARGS -- SLEEPER, and the guest pid of the sleeper once it runs."""
    process = subprocess.Popen(UVMEXEC + ["run", *args, "--", *SLEEPER], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path), cwd=ROOT)
    assert process.stdout is not None
    try:
        return process, int(read_until(process.stdout.fileno(), b"\n").split()[0])
    except BaseException:
        discard(process)
        raise


def _kill_orphan(pid: int | None) -> None:
    if pid is not None and not gone(pid):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(60)
def test_one_ctrl_c_ends_the_wait_when_the_agent_is_lost(tmp_path, ipc_agent):
    process, remote_pid = _start(tmp_path, "--guest", ipc_agent.endpoints[0])
    try:
        ipc_agent.kill()  # SIGKILL: nobody answers for the command any more
        began = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert reap(process, timeout=10) == 130  # not the 30 s the library waits for a lost agent
        assert time.monotonic() - began < 5
        lines = process.stderr.read().decode().splitlines()
        assert "giving up on the command (it may still run there)" in lines[-1], lines
        assert lines[-1].startswith("uvmexec: interrupted")
    finally:
        discard(process)
        _kill_orphan(remote_pid)


@pytest.mark.timeout(60)
def test_the_interrupt_key_ends_the_wait_on_a_raw_terminal(terminal, ipc_agent):
    term = terminal("run", "-it", "--guest", ipc_agent.endpoints[0], "--", "sh", "-c", "echo PID $$ READY; exec sleep 60")
    screen = term.expect(b" READY")
    remote_pid = int(screen.split(b"PID ")[1].split()[0])
    try:
        assert term.lflag() & COOKED == 0
        ipc_agent.kill()
        began = time.monotonic()
        term.type(b"\x03")  # raw: a byte for the guest, which nobody delivers now
        assert term.wait_for_exit() == 130
        assert time.monotonic() - began < 5
        assert b"giving up on the command" in term.screen
        assert term.lflag() & COOKED == COOKED
    finally:
        _kill_orphan(remote_pid)


@pytest.mark.timeout(60)
def test_a_private_agent_that_dies_ends_the_wait_at_once_with_255(tmp_path):
    process, remote_pid = _start(tmp_path)
    try:
        agents = [pid for pid in children(process.pid) if b"guest_agent" in _cmdline(pid)]
        assert len(agents) == 1, agents
        began = time.monotonic()
        os.kill(agents[0], signal.SIGKILL)
        assert reap(process, timeout=10) == 255
        assert time.monotonic() - began < 5
        stderr = process.stderr.read().decode()
        assert stderr.count("\n") == 1, stderr
        assert stderr.startswith("uvmexec: the private agent stopped while the command ran"), stderr
    finally:
        discard(process)
        _kill_orphan(remote_pid)


@pytest.mark.timeout(60)
def test_an_agent_that_comes_back_restarted_ends_the_wait_with_255(tmp_path, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    process, remote_pid = _start(tmp_path, "--guest", endpoint)
    restarted = None
    try:
        ipc_agent.kill()
        os.unlink(endpoint[len("ipc://"):])  # what a SIGKILLed agent leaves behind
        restarted = AgentProcess([endpoint]).start()
        assert reap(process, timeout=20) == 255
        lines = process.stderr.read().decode().splitlines()
        assert lines[-1] == f"uvmexec: agent {endpoint} restarted while the command ran: the command is gone", lines
    finally:
        discard(process)
        if restarted is not None:
            restarted.stop()
        _kill_orphan(remote_pid)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read()
    except OSError:
        return b""


@pytest.mark.timeout(90)
def test_a_lost_link_is_said_once_and_so_is_its_return(tmp_path, curve_agent):
    agent, keys = curve_agent
    relay = TcpRelay(tcp_address(agent))
    process = subprocess.Popen(UVMEXEC + ["run", "-i", "--guest", relay.endpoint, "--keys", keys.directory,
                                          "--server-key", keys.agent_public, "--client-key", keys.client_secret,
                                          "--", "sh", "-c", "echo $$; read x; echo got $x; exec sleep 60"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=cli_env(tmp_path), cwd=ROOT)
    assert process.stdout is not None and process.stderr is not None and process.stdin is not None
    try:
        read_until(process.stdout.fileno(), b"\n")
        err = bytearray()
        relay.go_down()  # the agent lives on, out of reach
        read_until(process.stderr.fileno(), b"(Ctrl-C gives up)\n", seen=err)
        relay.come_back()
        read_until(process.stderr.fileno(), b" is back\n", seen=err)
        assert err.decode().splitlines() == [
            f"uvmexec: lost agent {relay.endpoint}; waiting up to 30s for it to come back (Ctrl-C gives up)",
            f"uvmexec: agent {relay.endpoint} is back"]
        process.stdin.write(b"hi\n")
        process.stdin.flush()
        read_until(process.stdout.fileno(), b"got hi\n")  # nothing was lost in between
        relay.go_down()
        read_until(process.stderr.fileno(), b"(Ctrl-C gives up)\n")  # lost again
        process.send_signal(signal.SIGINT)
        assert reap(process, timeout=10) == 130
        assert process.stderr.read().decode().startswith(
            f"uvmexec: interrupted while agent {relay.endpoint} is lost: giving up on the command")
    finally:
        discard(process)
        relay.close()
