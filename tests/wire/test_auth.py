"""Who may talk to an agent: CURVE keys on tcp, private directories for ipc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from common import ProcessSpec
from common.errors import InvalidArgumentError, UnavailableError
from host_proxy import AgentClient
from tests.support.agent import ROOT, Keys

pytestmark = pytest.mark.timeout(120)


def _run_true(client: AgentClient, name: str) -> int:
    made = client.create_exec("auth", name, ProcessSpec(args=["true"]))
    made.start()
    status = made.wait(timeout=30).exit_status
    made.delete()
    return status


def test_an_unauthorized_client_key_is_refused_quickly(tcp_agent, keys, workdir):
    stranger = Keys.create(f"{workdir}/stranger")
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="refused this client's key"):
        AgentClient.connect(tcp_agent.endpoints[0], server_key=keys.agent_public,
                            client_key=stranger.client_secret, timeout=10)
    assert time.monotonic() - started < 10
    with AgentClient.connect(tcp_agent.endpoints[0], server_key=keys.agent_public,
                             client_key=keys.client_secret, timeout=10) as client:
        assert _run_true(client, "after-stranger") == 0


def test_a_client_pinning_the_wrong_agent_key_fails_within_its_timeout(tcp_agent, keys, workdir):
    impostor = Keys.create(f"{workdir}/impostor")
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        AgentClient.connect(tcp_agent.endpoints[0], server_key=impostor.agent_public,
                            client_key=keys.client_secret, timeout=3)
    assert time.monotonic() - started < 3 + 5


def test_a_plaintext_client_cannot_reach_a_curve_agent(tcp_agent, keys):
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        AgentClient.connect(tcp_agent.endpoints[0], insecure=True, timeout=3)
    assert time.monotonic() - started < 3 + 5
    with AgentClient.connect(tcp_agent.endpoints[0], server_key=keys.agent_public,
                             client_key=keys.client_secret, timeout=10) as client:
        assert _run_true(client, "after-plaintext") == 0


def test_tcp_without_keys_needs_an_explicit_insecure(tcp_agent):
    with pytest.raises(InvalidArgumentError, match="insecure"):
        AgentClient.connect(tcp_agent.endpoints[0], timeout=3)


def test_a_missing_agent_is_unavailable_within_the_timeout(workdir):
    started = time.monotonic()
    with pytest.raises(UnavailableError):
        AgentClient.connect(f"ipc://{workdir}/nobody.sock", timeout=1)
    assert time.monotonic() - started < 1 + 5


def _agent_refuses(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "guest_agent", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    return result.stderr


def test_the_agent_refuses_plaintext_tcp_unless_insecure():
    assert "--insecure" in _agent_refuses("--listen", "tcp://127.0.0.1:0")


def test_the_agent_refuses_an_ipc_socket_in_an_open_directory(workdir):
    open_dir = f"{workdir}/open"
    os.mkdir(open_dir)
    os.chmod(open_dir, 0o755)
    assert "0700" in _agent_refuses("--listen", f"ipc://{open_dir}/agent.sock")


def test_the_agent_refuses_unreadable_keys(workdir):
    message = _agent_refuses("--listen", "tcp://127.0.0.1:0", "--server-key", f"{workdir}/none",
                             "--authorized-keys", workdir)
    assert "none" in message
