"""Fixtures for the differential tests: one real agent (ipc) and one client, shared by every example."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from host_proxy import AgentClient
from tests.support.agent import AgentProcess


@pytest.fixture
def client(ipc_agent: AgentProcess) -> Iterator[AgentClient]:
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as connected:
        yield connected
