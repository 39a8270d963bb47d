"""A new client takes over execs of a dead one; clients and agents that share no version fail clearly."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from common import ExecState, ProcessSpec, Stdio, protocol
from common.errors import NotFoundError, UnimplementedError
from host_proxy import AgentClient
from tests.conformance.helpers import EventLog
from tests.support.agent import ROOT

pytestmark = pytest.mark.timeout(120)


def test_a_new_client_attaches_to_the_execs_of_a_killed_one(ipc_agent, tmp_path):
    gate = tmp_path / "gate"
    import os

    os.mkfifo(gate)
    # A separate client process creates and starts the exec, then dies without a word.
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {ROOT!r})
        from common import ProcessSpec, Stdio
        from host_proxy import AgentClient
        client = AgentClient.connect({ipc_agent.endpoints[0]!r}, timeout=10)
        made = client.create_exec("orphaned", "job", ProcessSpec(args=["sh", "-c",
            "echo early; read x < {gate}; seq 1 100000; exit 42"]), Stdio(stdout=sys.stdout.buffer))
        made.start()
        print("started", flush=True)
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert first.returncode == -9 and b"started" in first.stdout
    out = tmp_path / "out"
    log = EventLog()
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as client:
        listed = {(status.id, status.exec_id): status for status in client.list_execs()}
        assert listed[("orphaned", "job")].status is ExecState.RUNNING
        made = client.attach("orphaned", "job", Stdio(stdout=str(out)), on_event=log)
        assert made.state is ExecState.RUNNING
        with open(gate, "wb") as writer:
            writer.write(b"go\n")
        final = made.wait(timeout=60)
        assert final.exit_status == 42
        text = out.read_text()
        # Output the dead client never took arrives here; nothing after it is lost.
        assert text.endswith("".join(f"{n}\n" for n in range(1, 100001)))
        log.wait_exited()
        assert log.events[-1].exit_status == 42
        made.delete()
        with pytest.raises(NotFoundError):
            client.attach("orphaned", "job")


def test_attaching_to_an_exec_that_already_exited_gives_its_status(ipc_agent):
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as first:
        made = first.create_exec("done", "early", ProcessSpec(args=["sh", "-c", "exit 3"]))
        made.start()
        made.wait(timeout=30)
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as second:
        attached = second.attach("done", "early")
        assert attached.wait(timeout=30).exit_status == 3
        assert attached.delete().exit_status == 3


def test_a_client_and_agent_with_no_common_version_fail_at_connect(ipc_agent, monkeypatch):
    monkeypatch.setattr(protocol, "VERSIONS", (2,))
    with pytest.raises(UnimplementedError, match="no common protocol version"):
        AgentClient.connect(ipc_agent.endpoints[0], timeout=10)
