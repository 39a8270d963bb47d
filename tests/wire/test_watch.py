"""``AgentClient.watch``: the connection's changes, told in order, each before what it causes."""

from __future__ import annotations

import os
import queue

import pytest

from common import ProcessSpec
from common.errors import UnavailableError
from host_proxy import AgentClient
from tests.support.agent import AgentProcess
from tests.support.procs import descendants, kill_and_wait
from tests.support.relay import TcpRelay

pytestmark = pytest.mark.timeout(60)


def test_lost_ready_and_gone_are_told_in_order(tcp_agent: AgentProcess, keys, relay: TcpRelay):
    told: queue.Queue[str] = queue.Queue()
    with AgentClient.connect(relay.endpoint, server_key=keys.agent_public, client_key=keys.client_secret,
                             reconnect_timeout=2) as client:
        client.watch(told.put)
        sleeper = client.create_exec("t", "e", ProcessSpec(args=["sleep", "60"]))
        sleeper.start()
        relay.cut()  # a drop the connection recovers from
        assert told.get(timeout=20) == "lost"
        assert told.get(timeout=20) == "ready"
        relay.go_down()  # then one it does not
        assert told.get(timeout=20) == "lost"
        assert told.get(timeout=20) == "gone"
        assert sleeper.wait(timeout=20).exit_status == 255
        assert told.empty()


def test_restarted_comes_before_the_exits_it_causes(workdir: str):
    endpoint = f"ipc://{workdir}/agent.sock"
    agent = AgentProcess([endpoint]).start()
    told: queue.Queue[str] = queue.Queue()
    try:
        with AgentClient.connect(endpoint) as client:
            sleeper = client.create_exec("t", "e", ProcessSpec(args=["sleep", "60"]))
            sleeper.start()
            client.watch(lambda what: told.put(f"{what} {sleeper.state.value}"))
            orphans = descendants(agent.pid)
            agent.kill()  # a crash: no exit record is sent
            kill_and_wait(orphans)
            os.unlink(endpoint[len("ipc://"):])
            agent = AgentProcess([endpoint]).start()
            assert told.get(timeout=20) == "lost running"
            assert told.get(timeout=20) == "restarted running"
            assert told.get(timeout=20) == "ready exited"
            assert sleeper.wait(timeout=20).exit_status == 255
    finally:
        agent.stop()


def test_abandon_ends_the_execs_at_once_with_the_reason_and_delete_still_answers(
        tcp_agent: AgentProcess, keys, relay: TcpRelay):
    """A caller that knows the agent is gone for good (its VM exited) need not wait out
    ``reconnect_timeout``: ``abandon`` ends every exec not yet exited with 255 and the reason."""
    with AgentClient.connect(relay.endpoint, server_key=keys.agent_public, client_key=keys.client_secret,
                             reconnect_timeout=600) as client:
        sleeper = client.create_exec("t", "e", ProcessSpec(args=["sleep", "60"]))
        sleeper.start()
        relay.go_down()
        client.abandon("the VM exited")
        assert sleeper.wait(timeout=10).exit_status == 255
        assert sleeper.lost_reason == client.failure == "the VM exited"
        assert sleeper.delete().exit_status == 255
        with pytest.raises(UnavailableError, match="the VM exited"):
            client.ping()
