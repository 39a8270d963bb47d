"""Fixtures for the CLI tests: real agents to point ``uvmexec`` at."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess, Keys, private_directory


@pytest.fixture
def ipc_agent() -> Iterator[AgentProcess]:
    """A real agent on an ipc socket in a private directory."""
    directory = private_directory("uvmexec-cli-")
    agent = AgentProcess([f"ipc://{directory}/agent.sock"]).start()
    try:
        yield agent
    finally:
        agent.stop()
        shutil.rmtree(directory, ignore_errors=True)


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

