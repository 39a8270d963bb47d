"""An exec is created on the agent only when it needs the agent; a finished one is dropped in the background."""

from __future__ import annotations

import pytest

from common import ExecState, ProcessSpec
from common.errors import AlreadyExistsError
from host_proxy import AgentClient

pytestmark = pytest.mark.timeout(60)


def _listed(client: AgentClient) -> set[tuple[str, str]]:
    return {(status.id, status.exec_id) for status in client.list_execs()}


def test_an_exec_that_never_starts_never_reaches_the_agent(ipc_agent):
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as client:
        made = client.create_exec("lazy", "never", ProcessSpec(args=["true"]))
        assert made.state is ExecState.CREATED and made.pid == 0
        made.force_exit(9)
        assert made.wait(timeout=5).exit_status == 9
        assert ("lazy", "never") not in _listed(client)
        assert made.delete().exit_status == 9
        assert client.stats()["execs"] == 0


def test_start_creates_and_starts_in_one_go(ipc_agent):
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as client:
        made = client.create_exec("lazy", "started", ProcessSpec(args=["sleep", "1000"]))
        made.start()
        assert ("lazy", "started") in _listed(client)
        assert made.state is ExecState.RUNNING
        made.kill(9)
        assert made.wait(timeout=30).exit_status == 137
        made.delete()
        assert ("lazy", "started") not in _listed(client), "list_execs waits for the background delete"


def test_ids_held_by_another_client_fail_the_first_call_that_needs_the_agent(ipc_agent):
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as first, \
            AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as second:
        held = first.create_exec("shared", "ids", ProcessSpec(args=["sleep", "1000"]))
        held.start()
        late = second.create_exec("shared", "ids", ProcessSpec(args=["true"]))
        with pytest.raises(AlreadyExistsError, match="already exists"):
            late.start()
        # A refused creation is a failed start: exited with 1, and delete() frees the ids.
        assert late.status().exit_status == 1
        late.delete()
        again = second.create_exec("shared", "ids", ProcessSpec(args=["true"]))
        held.kill(9)
        held.wait(timeout=30)
        held.delete()
        again.start()
        assert again.wait(timeout=30).exit_status == 0
        again.delete()
