"""Suite-wide options (which conformance backends run) and the fixtures every part shares."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess, Keys, private_directory
from tests.support.backends import REGISTRY


@pytest.fixture
def workdir() -> Iterator[str]:
    """A fresh 0700 directory for one test's sockets and keys, removed after it."""
    directory = private_directory("uvm-test-")
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def keys(workdir: str) -> Keys:
    """A CURVE key set (agent and client) for one test."""
    return Keys.create(f"{workdir}/keys")


@pytest.fixture
def ipc_agent(workdir: str) -> Iterator[AgentProcess]:
    """A real agent on an ipc socket in the test's private directory."""
    agent = AgentProcess([f"ipc://{workdir}/agent.sock"]).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.fixture
def tcp_agent(keys: Keys) -> Iterator[AgentProcess]:
    """A real agent on loopback tcp with CURVE, admitting the ``keys`` client."""
    agent = AgentProcess(["tcp://127.0.0.1:0"],
                         ["--server-key", keys.agent_secret, "--authorized-keys", keys.authorized]).start()
    try:
        yield agent
    finally:
        agent.stop()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        default=[],
        help="conformance backend to run (repeatable); default: every backend, QEMU guests included",
    )


def selected_backends(config: pytest.Config) -> list[str]:
    names = list(config.getoption("--backend"))
    if not names and os.environ.get("UVMEXEC_BACKENDS"):
        names = [name.strip() for name in os.environ["UVMEXEC_BACKENDS"].split(",") if name.strip()]
    if not names:
        names = list(REGISTRY)
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise pytest.UsageError(f"unknown backend(s) {unknown}; known: {sorted(REGISTRY)}")
    return names
