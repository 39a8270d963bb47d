"""Fixtures for wire tests: real agents (ipc, CURVE tcp), a controllable relay, key sets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess, tcp_address
from tests.support.relay import TcpRelay


@pytest.fixture
def relay(tcp_agent: AgentProcess) -> Iterator[TcpRelay]:
    relay = TcpRelay(tcp_address(tcp_agent))
    try:
        yield relay
    finally:
        relay.close()
