"""The agent through a real OpenSSH server: host keys checked, user keys checked, sshd restarts survived."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from common import ProcessSpec, Stdio
from common.errors import UnavailableError
from host_proxy import AgentClient
from tests.support.agent import AgentProcess, Keys
from tests.support.sshd import SshServer
from tests.wire.test_reconnect import ProgressFile

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def sshd() -> Iterator[SshServer]:
    with SshServer() as server:
        yield server


def _connect(sshd: SshServer, agent: AgentProcess, keys: Keys, **options) -> AgentClient:
    settings = {"ssh_key": sshd.key_path, "known_hosts": sshd.known_hosts, "server_key": keys.agent_public,
                "client_key": keys.client_secret, "timeout": 10, **options}
    return AgentClient.connect(sshd.endpoint(agent=agent.endpoints[0]), **settings)


def test_an_unknown_host_key_is_refused_naming_host_and_fingerprint(sshd, tcp_agent, keys, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(UnavailableError) as raised:
        _connect(sshd, tcp_agent, keys, known_hosts=empty)
    assert sshd.host_fingerprint in str(raised.value)
    assert str(sshd.port) in str(raised.value)


def test_a_changed_host_key_is_refused(sshd, tcp_agent, keys, tmp_path):
    other = SshServer()
    try:
        changed = tmp_path / "known_hosts"
        changed.write_text(f"{sshd.known_hosts_name} {other.host_public_key}\n")
        with pytest.raises(UnavailableError, match=sshd.host_fingerprint.replace("+", r"\+")):
            _connect(sshd, tcp_agent, keys, known_hosts=changed)
    finally:
        other.close()


def test_a_wrong_user_key_is_refused(sshd, tcp_agent, keys):
    stranger = sshd.new_user_key(authorize=False)
    with pytest.raises(UnavailableError, match=sshd.user):
        _connect(sshd, tcp_agent, keys, ssh_key=stranger)


def test_killing_sshd_mid_stream_and_restarting_it_loses_nothing(sshd, tcp_agent, keys, tmp_path):
    count = 2_500_000  # several windows: the stream is still flowing when sshd dies
    expected = "".join(f"{n}\n" for n in range(1, count + 1)).encode()
    marks = sorted(random.Random(4242).sample(range(len(expected) // 10, len(expected) * 8 // 10), 3))
    sink = ProgressFile(str(tmp_path / "out"), marks)
    with _connect(sshd, tcp_agent, keys, reconnect_timeout=60) as client:
        made = client.create_exec("ssh", "seq", ProcessSpec(args=["seq", "1", str(count)]), Stdio(stdout=sink))
        made.start()
        for _, reached in sink.marks:
            assert reached.wait(60)
            sshd.stop()
            sshd.start()
        assert made.wait(timeout=120).exit_status == 0
        assert client._tunnel.reconnects >= 1, "the tunnel re-dialled a restarted sshd"
        made.delete()
    sink.close()
    assert (tmp_path / "out").read_bytes() == expected
