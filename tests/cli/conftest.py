"""Fixtures for the CLI tests: real agents to point ``uvmexec`` at."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess, Keys


@pytest.fixture
def curve_agent(tmp_path) -> Iterator[tuple[AgentProcess, Keys]]:
    """A real agent on tcp with CURVE, and the key set that admits us."""
    keys = Keys.create(str(tmp_path / "keys"))
    agent = AgentProcess(["tcp://127.0.0.1:0"], ["--server-key", keys.agent_secret,
                                                 "--authorized-keys", keys.authorized]).start()
    try:
        yield agent, keys
    finally:
        agent.stop()

