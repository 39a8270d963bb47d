"""Connections that drop and come back lose nothing; agents that vanish release every waiter."""

from __future__ import annotations

import io
import os
import random
import select
import signal
import threading

import pytest

from common import ExecExited, ExecStarted, ProcessSpec, Stdio
from common.errors import DeadlineExceededError, UnavailableError
from host_proxy import AgentClient
from tests.conformance.helpers import EventLog
from tests.support.agent import AgentProcess
from tests.support.io import FifoReader

pytestmark = pytest.mark.timeout(180)


class ProgressFile(io.RawIOBase):
    """A binary file that writes through to ``path`` and signals when byte marks are passed."""

    def __init__(self, path: str, marks: list[int]) -> None:
        super().__init__()
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.total = 0
        self.marks = [(mark, threading.Event()) for mark in marks]

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        written = self._file.write(data)
        self.total += written
        for mark, reached in self.marks:
            if self.total >= mark:
                reached.set()
        return written

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        super().close()
        self._file.close()


def _connect(relay, keys, **options) -> AgentClient:
    return AgentClient.connect(relay.endpoint, server_key=keys.agent_public, client_key=keys.client_secret,
                               timeout=10, **options)


def _wait_for_process_exit(pid: int, timeout: float = 30) -> None:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already exited and reaped
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        assert readable, f"process {pid} still runs after {timeout}s"
    finally:
        os.close(pidfd)


def test_cuts_mid_stream_lose_no_byte_and_no_exit(relay, keys, tmp_path):
    count = 1_500_000
    expected = "".join(f"{n}\n" for n in range(1, count + 1)).encode()
    generator = random.Random(20261128)
    marks = sorted(generator.sample(range(len(expected) // 20, len(expected) * 9 // 10), 6))
    sink = ProgressFile(str(tmp_path / "out"), marks)
    with _connect(relay, keys, reconnect_timeout=60) as client:
        made = client.create_exec("cuts", "seq", ProcessSpec(args=["seq", "1", str(count)]), Stdio(stdout=sink))
        made.start()
        for _, reached in sink.marks:
            assert reached.wait(60)
            relay.cut()
        final = made.wait(timeout=120)
        assert final.exit_status == 0
        made.delete()
    sink.close()
    assert (tmp_path / "out").read_bytes() == expected
    assert relay.accepted >= 2


def test_an_exit_while_disconnected_is_delivered_after(relay, keys, tmp_path):
    gate = str(tmp_path / "gate")
    os.mkfifo(gate)
    out = FifoReader(str(tmp_path / "out"))
    events = EventLog()
    with _connect(relay, keys, reconnect_timeout=60) as client:
        made = client.create_exec("gap", "exit", ProcessSpec(args=["sh", "-c", f"echo before; read x < {gate}; echo after; exit 5"]),
                                  Stdio(stdout=out.path), on_event=events)
        made.start()
        out.read_until(b"before\n")
        pid = made.pid
        relay.go_down()
        with open(gate, "wb") as writer:
            writer.write(b"go\n")
        _wait_for_process_exit(pid)
        relay.come_back()
        final = made.wait(timeout=60)
        assert final.exit_status == 5
        assert out.read_to_eof() == b"before\nafter\n"
        events.wait_exited()
        assert [type(event) for event in events.events] == [ExecStarted, ExecExited]
        made.delete()


def test_requests_during_an_outage_are_answered_after_it(relay, keys, tmp_path):
    with _connect(relay, keys, reconnect_timeout=60) as client:
        made = client.create_exec("outage", "status", ProcessSpec(args=["true"]))
        relay.go_down()
        answers: list[object] = []
        asking = threading.Thread(target=lambda: answers.append(made.status().status.value))
        asking.start()
        relay.come_back()
        asking.join(60)
        assert answers == ["created"], "the request was held through the outage, not failed"
        made.start()
        assert made.wait(timeout=60).exit_status == 0


def test_stdin_across_cuts_arrives_whole_and_once(relay, keys, tmp_path):
    payload = os.urandom(6 * 1024 * 1024)
    sink = ProgressFile(str(tmp_path / "out"), [len(payload) // 4, len(payload) // 2, len(payload) * 3 // 4])
    with _connect(relay, keys, reconnect_timeout=60) as client:
        made = client.create_exec("stdin", "cat", ProcessSpec(args=["cat"]),
                                  Stdio(stdin=io.BytesIO(payload), stdout=sink))
        made.start()
        for _, reached in sink.marks:
            assert reached.wait(60)
            relay.cut()
        assert made.wait(timeout=120).exit_status == 0
    sink.close()
    assert (tmp_path / "out").read_bytes() == payload


def test_a_killed_agent_releases_waiters_with_255_after_the_deadline(ipc_agent, tmp_path):
    events = EventLog()
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10, reconnect_timeout=1.0) as client:
        made = client.create_exec("killed", "sleep", ProcessSpec(args=["sleep", "1000"]), on_event=events)
        made.start()
        pid = made.pid
        results: list[object] = []
        waiter = threading.Thread(target=lambda: results.append(made.wait(timeout=60)))
        waiter.start()
        ipc_agent.kill()
        waiter.join(60)
        try:
            assert results and results[0].exit_status == 255  # type: ignore[attr-defined]
            assert made.status().exit_status == 255
            events.wait_exited()
            assert isinstance(events.events[-1], ExecExited) and events.events[-1].exit_status == 255
            after = client.create_exec("killed", "after", ProcessSpec(args=["true"]))
            with pytest.raises(UnavailableError):
                after.start()
        finally:
            os.killpg(pid, signal.SIGKILL)  # the agent died without killing it, as a crash would


def test_a_restarted_agent_ends_the_old_execs_at_once(workdir, tmp_path):
    endpoint = f"ipc://{workdir}/restart.sock"
    first = AgentProcess([endpoint]).start()
    second = None
    try:
        with AgentClient.connect(endpoint, timeout=10, reconnect_timeout=120) as client:
            old_boot = client.boot_id
            made = client.create_exec("restart", "sleep", ProcessSpec(args=["sleep", "1000"]))
            made.start()
            pid = made.pid
            first.kill()
            os.killpg(pid, signal.SIGKILL)
            second = AgentProcess([endpoint]).start()
            # Long before the 120 s deadline: the new boot id says the old execs are gone.
            assert made.wait(timeout=60).exit_status == 255
            assert client.boot_id != old_boot
            fresh = client.create_exec("restart", "fresh", ProcessSpec(args=["sh", "-c", "exit 3"]))
            fresh.start()
            assert fresh.wait(timeout=30).exit_status == 3
    finally:
        first.stop()
        if second is not None:
            second.stop()



def test_wait_ready_waits_for_the_agent_to_come_back(workdir):
    """wait_ready returns at once while the agent answers, raises DeadlineExceededError while it is
    gone, returns once a new agent answers on the endpoint, and raises UnavailableError once the
    client is closed."""
    endpoint = f"ipc://{workdir}/ready.sock"
    first = AgentProcess([endpoint]).start()
    second = None
    try:
        client = AgentClient.connect(endpoint, timeout=10, reconnect_timeout=1)
        with client:
            client.wait_ready(0)
            old_boot = client.boot_id
            made = client.create_exec("ready", "sleep", ProcessSpec(args=["sleep", "1000"]))
            made.start()
            pid = made.pid
            first.kill()
            os.killpg(pid, signal.SIGKILL)
            assert made.wait(timeout=30).exit_status == 255  # the reconnect deadline passed: gone
            with pytest.raises(DeadlineExceededError):
                client.wait_ready(0.2)
            second = AgentProcess([endpoint]).start()
            client.wait_ready(30)
            assert client.boot_id != old_boot
            client.ping()
        with pytest.raises(UnavailableError):
            client.wait_ready(1)
    finally:
        first.stop()
        if second is not None:
            second.stop()
