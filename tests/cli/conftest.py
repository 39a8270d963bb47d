"""Fixtures for the CLI tests: real agents to point ``uvmexec`` at."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess, Keys

from .terminal import terminals


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



@pytest.fixture
def terminal(tmp_path) -> Iterator:
    """Run ``uvmexec`` in real terminals (see :mod:`tests.cli.terminal`): ``terminal(*args)``."""
    with terminals(tmp_path) as start:
        yield start
