"""Fixtures for wire tests: real agents (ipc, CURVE tcp), a controllable relay, key sets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess, Keys, free_port
from tests.support.relay import TcpRelay


@pytest.fixture
def tcp_agent(keys: Keys) -> Iterator[AgentProcess]:
    agent = AgentProcess([f"tcp://127.0.0.1:{free_port()}"],
                         ["--server-key", keys.agent_secret, "--authorized-keys", keys.authorized]).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def ipc_agent(workdir: str) -> Iterator[AgentProcess]:
    agent = AgentProcess([f"ipc://{workdir}/agent.sock"]).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def relay(tcp_agent: AgentProcess) -> Iterator[TcpRelay]:
    host, port = tcp_agent.endpoints[0][len("tcp://"):].rsplit(":", 1)
    relay = TcpRelay((host, int(port)))
    try:
        yield relay
    finally:
        relay.close()
