"""Fixtures for the reliability tests: real agent processes (ipc and CURVE tcp), keys, relays, clients.

Every agent is a fresh ``python -m guest_agent`` child of the test, stopped
(and its leftovers killed) at the end, so a test's figures are its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from host_proxy import AgentClient
from tests.reliability.helpers import FreezableRelay
from tests.support.agent import AgentProcess, tcp_address


@pytest.fixture
def client(ipc_agent: AgentProcess) -> Iterator[AgentClient]:
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as connected:
        yield connected


@pytest.fixture
def relay(tcp_agent: AgentProcess) -> Iterator[FreezableRelay]:
    relay = FreezableRelay(tcp_address(tcp_agent))
    try:
        yield relay
    finally:
        relay.close()

