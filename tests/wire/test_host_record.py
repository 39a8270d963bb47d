"""A proxied exec answers from what the host knows, and a refused creation is an exit, not a trap.

containerd calls ``State`` whenever it likes, and hcsshim serves ``Pid``, ``State`` and
``Status`` from memory: they must never wait on an agent that may be gone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest

from common import ExecExited, ExecState, ProcessSpec, Stdio
from common.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnavailableError
from host_proxy import AgentClient
from host_proxy.agent_link import Request
from tests.conformance.helpers import EventLog
from tests.support.io import FifoReader

pytestmark = pytest.mark.timeout(120)


def test_status_pid_and_state_answer_with_the_agent_gone(ipc_agent, tmp_path):
    """Before: each was a round trip; with the agent SIGKILLed, status() blocked ~2.7 s and
    then raised UnavailableError. Now they answer from the host's record until the reconnect
    deadline ends the exec with 255."""
    out = FifoReader(str(tmp_path / "out"))
    events = EventLog()
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10, reconnect_timeout=3.0) as client:
        made = client.create_exec("gone", "sleeper", ProcessSpec(args=["sh", "-c", "echo ready; exec sleep 1000"]),
                                  Stdio(stdout=out.path), on_event=events)
        made.start()
        out.read_until(b"ready")
        pid = made.pid
        ipc_agent.kill()
        try:
            for _ in range(50):  # while the agent is away: the record, at once, every time
                status = made.status()
                assert (status.status, status.pid, status.exit_status, status.exited_at) == (
                    ExecState.RUNNING, pid, 255, None)
                assert made.pid == pid and made.state is ExecState.RUNNING
            final = made.wait(timeout=30)  # the reconnect deadline
            assert final.exit_status == 255 and made.status() == final
            events.wait_exited()
            assert isinstance(events.events[-1], ExecExited)
            assert made.delete() == final
            with pytest.raises(NotFoundError):
                made.status()
        finally:
            os.killpg(pid, signal.SIGKILL)  # the agent died without killing it, as a crash would


def test_a_creation_the_agent_refuses_ends_the_exec_with_1(ipc_agent):
    """Before: once another client held the ids, start() raised AlreadyExistsError and so did
    state, wait() and delete() afterwards, so a shim's clean-up after a failed start failed."""
    spec = ProcessSpec(args=["sleep", "1000"])
    with AgentClient.connect(ipc_agent.endpoints[0]) as holder, AgentClient.connect(ipc_agent.endpoints[0]) as other:
        held = holder.create_exec("shared", "ids", spec)
        held.start()
        events = EventLog()
        made = other.create_exec("shared", "ids", spec, on_event=events)
        with pytest.raises(AlreadyExistsError, match="exec: 'ids' in task: 'shared' already exists"):
            made.start()
        status = made.status()
        assert (status.status, status.exit_status, status.pid) == (ExecState.EXITED, 1, 0)
        assert status.exited_at is not None
        assert made.state is ExecState.EXITED and made.pid == 0
        assert made.wait(timeout=5) == status
        with pytest.raises(NotFoundError):
            made.kill(signal.SIGTERM)
        made.close_io()
        made.force_exit(3)  # exited: nothing to do
        assert made.delete() == status
        assert events.events == []
        # The ids are free on this host again; the holder's exec was never touched.
        again = other.create_exec("shared", "ids", spec)
        with pytest.raises(AlreadyExistsError):
            again.start()
        again.delete()
        assert held.state is ExecState.RUNNING
        held.force_exit(9)
        held.delete()


def test_a_failed_start_is_exited_when_start_returns(ipc_agent):
    with AgentClient.connect(ipc_agent.endpoints[0]) as client:
        made = client.create_exec("t", "missing", ProcessSpec(args=["/nonexistent/program"]))
        with pytest.raises(InvalidArgumentError, match="/nonexistent/program"):
            made.start()
        status = made.status()  # no wait: the host ended it when the agent refused the start
        assert (status.status, status.exit_status, status.pid) == (ExecState.EXITED, 1, 0)
        assert made.delete().exit_status == 1
        assert client.list_execs() == []


def test_close_io_before_start_gives_the_process_an_empty_stdin(ipc_agent, tmp_path):
    """The create goes out with start(): close_io before it must still mean EOF at once, with the
    stdin source's writer still open (cat would otherwise wait for ever)."""
    fifo = str(tmp_path / "stdin")
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
    try:
        with AgentClient.connect(ipc_agent.endpoints[0]) as client:
            made = client.create_exec("t", "cat", ProcessSpec(args=["cat"]), Stdio(stdin=fifo))
            made.close_io()
            made.start()
            assert made.wait(timeout=20).exit_status == 0
            made.delete()
    finally:
        os.close(writer)


def test_a_creation_that_gets_no_answer_ends_the_exec_and_is_undone_on_the_agent(ipc_agent):
    """The agent is stopped (SIGSTOP) while start() waits: start() raises UnavailableError and
    the exec is exited with 1 on the host. When the agent wakes and does the create and start it
    had queued, the host ends and deletes that exec there: nothing runs that the host disowned."""
    undone = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "ended and deleted it there" in record.getMessage():
                undone.set()

    watch = Watch()
    logging.getLogger("host_proxy.connection").addHandler(watch)
    try:
        with AgentClient.connect(ipc_agent.endpoints[0], timeout=1.0, reconnect_timeout=60) as client:
            made = client.create_exec("t", "late", ProcessSpec(args=["sleep", "1000"]))
            os.kill(ipc_agent.pid, signal.SIGSTOP)
            try:
                with pytest.raises(UnavailableError, match="did not answer"):
                    made.start()
                status = made.status()
                assert (status.status, status.exit_status) == (ExecState.EXITED, 1)
                assert made.wait(timeout=1).exit_status == 1
                made.delete()
            finally:
                os.kill(ipc_agent.pid, signal.SIGCONT)
            assert undone.wait(30), "the agent's copy was never undone"
            # Ordered after the undoing requests on the client's connection (on_result: the loop's).
            listed = client.send([Request("list", {"after": 0}, on_result=lambda _: None)])[0]
            assert listed["execs"] == []
    finally:
        logging.getLogger("host_proxy.connection").removeHandler(watch)
