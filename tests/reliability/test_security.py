"""Who can make the agent do what: nobody without the right key, and nothing that failed validation.

tests/wire/test_auth.py checks that AgentClient fails cleanly with a wrong or missing key; here a
stranger tries harder (raw sockets that pipeline requests, plaintext ZMTP, garbage, a flood of
handshakes), and an authorized observer checks that nothing happened. SECURITY.md has the model.
"""

from __future__ import annotations

import io
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from common import ProcessSpec, Stdio
from common.errors import UnavailableError
from host_proxy import AgentClient
from tests.reliability.fuzzing import RawSession
from tests.reliability.helpers import (
    assert_clean,
    connect_tcp,
    footprint,
    warm_up,
)
from tests.support.agent import AgentProcess, Keys, free_port, tcp_address
from tests.support.procs import children
from tests.support.sshd import SshServer, generate_key

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def observer(tcp_agent: AgentProcess, keys: Keys) -> Iterator[AgentClient]:
    """An authorized client that watches what the agent holds."""
    with connect_tcp(tcp_agent.endpoints[0], keys) as client:
        warm_up(client)
        yield client


def canary(marker: Path) -> dict:
    return ProcessSpec(args=["sh", "-c", f"echo ran > {marker}"]).to_oci()


def assert_nothing_happened(observer: AgentClient, agent: AgentProcess, marker: Path) -> None:
    assert observer.list_execs() == [], "something was created"
    assert children(agent.pid) == {}, "something was started"
    assert not marker.exists(), "the canary ran"


def test_a_stranger_key_cannot_create_or_start_anything(tcp_agent, keys, observer, workdir, tmp_path):
    """A CURVE client whose key is not authorized pipelines hello, create and start without waiting:
    its handshake fails (HANDSHAKE_FAILED_AUTH), it receives nothing at all, and the authorized
    observer sees no exec, no process, no canary file, no new session."""
    marker = tmp_path / "ran"
    sessions = observer.stats()["sessions"]
    stranger = Keys.create(f"{workdir}/stranger")
    public, secret = zmq.auth.load_certificate(stranger.client_secret)
    server_public, _ = zmq.auth.load_certificate(keys.agent_public)
    context = zmq.Context()
    try:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.CURVE_SERVERKEY, server_public)
        dealer.setsockopt(zmq.CURVE_PUBLICKEY, public)
        dealer.setsockopt(zmq.CURVE_SECRETKEY, secret)
        monitor = dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        dealer.connect(tcp_agent.endpoints[0])
        for request_id, header in enumerate([
            {"op": "hello", "versions": [1], "session": "stranger"},
            {"op": "create", "task": "evil", "exec": "e", "spec": canary(marker), "stdio": {}},
            {"op": "start", "task": "evil", "exec": "e"},
        ], start=1):
            dealer.send(msgpack.packb({"id": request_id, **header}), zmq.NOBLOCK)
        assert monitor.poll(10_000), "no handshake outcome"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        assert dealer.poll(2000) == 0, "the agent answered a stranger"
        dealer.disable_monitor()
        monitor.close()
        dealer.close()
    finally:
        context.destroy(linger=0)
    assert_nothing_happened(observer, tcp_agent, marker)
    assert observer.stats()["sessions"] == sessions


@pytest.mark.parametrize("greeting", [
    # ZMTP 3.1 with the NULL (plaintext) mechanism, a READY, then a hello message.
    b"\xff" + b"\x00" * 8 + b"\x7f\x03\x01" + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
    + b"\x04\x1c\x05READY\x0bSocket-Type\x00\x00\x00\x06DEALER" + b"\x00\x05hello",
    b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n",
    bytes(range(256)) * 4,
], ids=["zmtp-plaintext", "http", "garbage"])
def test_plaintext_and_garbage_to_a_curve_agent_learn_nothing(tcp_agent, observer, greeting, tmp_path):
    """A raw TCP peer gets at most ZMTP's own greeting (which names the mechanism) and then the
    connection ends; no message of the protocol reaches it, and nothing happens on the agent."""
    sock = socket.create_connection(tcp_address(tcp_agent), timeout=10)
    try:
        sock.sendall(greeting)
        received = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            assert len(received) <= 64, f"more than a ZMTP greeting: {received!r}"
    finally:
        sock.close()
    assert received[:1] in (b"", b"\xff"), received
    if len(received) > 32:
        assert received[12:17] == b"CURVE", received
    assert_nothing_happened(observer, tcp_agent, tmp_path / "ran")


def refuse_handshakes(agent: AgentProcess, keys: Keys, stranger: Keys, rounds: int, garbage: int = 0) -> None:
    """``rounds`` × 50 CURVE handshakes with the stranger's key (and ``garbage`` × ``rounds`` raw
    connections sending random bytes); returns once every handshake was refused."""
    public, secret = zmq.auth.load_certificate(stranger.client_secret)
    assert secret is not None
    server_public, _ = zmq.auth.load_certificate(keys.agent_public)
    for _ in range(rounds):
        context = zmq.Context()
        try:
            watched = []
            for _ in range(50):
                dealer = context.socket(zmq.DEALER)
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.setsockopt(zmq.RECONNECT_IVL, -1)  # one attempt each
                dealer.setsockopt(zmq.CURVE_SERVERKEY, server_public)
                dealer.setsockopt(zmq.CURVE_PUBLICKEY, public)
                dealer.setsockopt(zmq.CURVE_SECRETKEY, secret)
                monitor = dealer.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
                dealer.connect(agent.endpoints[0])
                watched.append((dealer, monitor))
            for _ in range(garbage):
                with socket.create_connection(tcp_address(agent), timeout=10) as connection:
                    connection.sendall(os.urandom(128))
            for dealer, monitor in watched:
                assert monitor.poll(20_000), "a refusal never came"
                assert recv_monitor_message(monitor)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                assert dealer.poll(0) == 0
                dealer.disable_monitor()
                monitor.close()
                dealer.close()
        finally:
            context.destroy(linger=0)


def test_a_flood_of_refused_handshakes_costs_the_agent_nothing(tcp_agent, keys, observer, workdir):
    """200 connections with unauthorized keys and 40 of garbage, all refused: afterwards the agent's
    fds, threads and processes are back where they were, and an authorized client is served."""
    baseline = footprint(observer, tcp_agent.pid)
    refuse_handshakes(tcp_agent, keys, Keys.create(f"{workdir}/flood"), rounds=4, garbage=10)
    made = observer.create_exec("flood", "after", ProcessSpec(args=["sh", "-c", "exit 3"]))
    made.start()
    assert made.wait(timeout=30).exit_status == 3
    made.delete()
    # The agent's ZeroMQ thread closes refused connections on its own time (assert_clean waits).
    assert_clean(observer, tcp_agent.pid, baseline)


def test_refused_handshakes_are_logged_at_a_bounded_rate(keys, workdir):
    """Inside a VM the agent's log is the serial console, a file on the host that nobody rotates:
    300 refused handshakes give the first few lines one by one and then one summary line that
    counts the rest (written at the latest when the agent stops), not 300 lines."""
    log_path = Path(workdir) / "agent.log"
    with open(log_path, "wb") as log:
        agent = AgentProcess(["tcp://127.0.0.1:0"], ["--server-key", keys.agent_secret,
                                                     "--authorized-keys", keys.authorized], stderr=log).start()
    started = time.monotonic()
    try:
        refuse_handshakes(agent, keys, Keys.create(f"{workdir}/flood"), rounds=6)
    finally:
        agent.stop()
    minutes = (time.monotonic() - started) / 60
    lines = log_path.read_text().splitlines()
    one_by_one = [line for line in lines if "guest_agent.auth: refused CURVE client from" in line]
    summed = [int(match.group(1)) for line in lines if (match := re.search(r"refused (\d+) more handshakes", line))]
    # The first 10, then one line more per minute, and one summary per minute (and at the end).
    assert 10 <= len(one_by_one) <= 10 + minutes + 1, lines
    assert 1 <= len(summed) <= minutes + 2, lines
    assert len(one_by_one) + sum(summed) == 300, "every refusal is counted"
    assert len(lines) == len(one_by_one) + len(summed), lines


def test_requests_that_fail_validation_never_run(tcp_agent, keys, observer, tmp_path):
    """Creates that are invalid in one field each (unknown OCI keys such as capabilities, a bad
    env entry, a bad user, rlimit, cwd or flag, bad stdio fields) are refused with
    invalid_argument; a start, kill, attach or status for those ids finds nothing; the canary
    command in them never runs."""
    marker = tmp_path / "ran"
    spec = canary(marker)
    bad_specs = [
        {**spec, "capabilities": {"bounding": ["CAP_SYS_ADMIN"]}},
        {**spec, "apparmorProfile": "unconfined"},
        {**spec, "env": ["NOEQUALS"]},
        {**spec, "env": ["=x"]},
        {**spec, "user": {"uid": 0, "gid": 0, "username": "root"}},
        {**spec, "user": {"uid": -1}},
        {**spec, "rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]},
        {**spec, "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 1}]},
        {**spec, "cwd": "relative/dir"},
        {**spec, "args": ["sh", "-c", "x\x00y"]},
        {**spec, "terminal": "yes"},
    ]
    bad_fields = [{"bundle": 7}, {"stdio": {"stdout": "yes"}}, {"paths": ["", "", 5]}, {"drain_timeout": 1e9},
                  {"stdio": {"stderr": True}, "spec": {**spec, "terminal": True}}]
    cases = [{"spec": bad} for bad in bad_specs] + bad_fields
    raw = RawSession(tcp_agent.endpoints[0], "validation", keys=keys)
    try:
        for index, fields in enumerate(cases):
            ids = {"task": "invalid", "exec": f"e{index}"}
            reply = raw.request("create", **{**ids, "spec": spec, "stdio": {}, **fields})
            assert reply.get("error", {}).get("code") == "invalid_argument", (fields, reply)
            for op, extra in (("start", {}), ("kill", {"signal": 9}), ("attach", {}), ("status", {})):
                missing = raw.request(op, **ids, **extra)
                assert missing.get("error", {}).get("code") == "not_found", (op, missing)
    finally:
        raw.close()
    assert_nothing_happened(observer, tcp_agent, marker)


# -- ssh ------------------------------------------------------------------------------------------


@pytest.fixture
def agent_behind_ssh(keys: Keys) -> Iterator[tuple[AgentProcess, SshServer]]:
    agent = AgentProcess([f"tcp://127.0.0.1:{free_port()}"],
                         ["--server-key", keys.agent_secret, "--authorized-keys", keys.authorized]).start()
    try:
        with SshServer() as sshd:
            yield agent, sshd
    finally:
        agent.stop()


def test_an_ssh_endpoint_with_an_unknown_or_changed_host_key_is_refused(agent_behind_ssh, keys, tmp_path):
    """AgentClient.connect("ssh://...") refuses a host whose key is not in known_hosts, or differs
    from the one there (no trust on first use), with UnavailableError naming the verification;
    the agent behind it sees no session. With the right known_hosts the same call works."""
    agent, sshd = agent_behind_ssh
    endpoint = sshd.endpoint(agent.endpoints[0])
    with connect_tcp(agent.endpoints[0], keys) as observer:
        sessions = observer.stats()["sessions"]
        empty = tmp_path / "known_hosts.empty"
        empty.write_text("")
        other_key = generate_key(tmp_path / "other_host")
        changed = tmp_path / "known_hosts.changed"
        changed.write_text(f"{sshd.known_hosts_name} {' '.join(Path(f'{other_key}.pub').read_text().split()[:2])}\n")
        for known_hosts in (empty, changed):
            started = time.monotonic()
            with pytest.raises(UnavailableError, match="host key"):
                AgentClient.connect(endpoint, ssh_key=sshd.key_path, known_hosts=known_hosts, timeout=10,
                                    server_key=keys.agent_public, client_key=keys.client_secret)
            assert time.monotonic() - started < 15
        assert observer.stats()["sessions"] == sessions
        assert known_hosts_unchanged(empty, changed, other_key)
        with AgentClient.connect(endpoint, ssh_key=sshd.key_path, known_hosts=sshd.known_hosts, timeout=10,
                                 server_key=keys.agent_public, client_key=keys.client_secret) as client:
            out = io.BytesIO()
            made = client.create_exec("ssh", "ok", ProcessSpec(args=["echo", "through ssh"]), Stdio(stdout=out))
            made.start()
            assert made.wait(timeout=30).exit_status == 0
            assert out.getvalue() == b"through ssh\n"
            made.delete()


def known_hosts_unchanged(empty: Path, changed: Path, other_key: Path) -> bool:
    """Nothing was added on the way (no trust on first use)."""
    return empty.read_text() == "" and len(changed.read_text().splitlines()) == 1


def test_an_ssh_key_the_guest_does_not_know_is_refused(agent_behind_ssh, keys, tmp_path):
    """A user key not in the guest's authorized_keys gets UnavailableError and no session."""
    agent, sshd = agent_behind_ssh
    stranger = generate_key(tmp_path / "stranger_ed25519")
    with connect_tcp(agent.endpoints[0], keys) as observer:
        sessions = observer.stats()["sessions"]
        with pytest.raises(UnavailableError):
            AgentClient.connect(sshd.endpoint(agent.endpoints[0]), ssh_key=stranger, known_hosts=sshd.known_hosts,
                                timeout=10, server_key=keys.agent_public, client_key=keys.client_secret)
        assert observer.stats()["sessions"] == sessions


# -- what an authorized but hostile (or buggy) client can do to the agent ----------------------------


def test_oversized_bad_values_do_not_make_the_agent_hold_memory(ipc_agent, client):
    """Eight kill requests whose signal is a 4 MiB string of control characters. Each is refused,
    It must grow by no more than a few MiB in all. (BUG-8: the error message embedded repr() of
    the value, 16 MiB, and the session's reply cache kept up to 1024 such replies.)"""
    raw = RawSession(ipc_agent.endpoints[0], "hostile-memory")
    try:
        raw.request("create", task="mem", exec="e", spec={"args": ["sleep", "1000"]}, stdio={})
        raw.request("start", task="mem", exec="e")
        before = client.stats()["rss_kib"]
        huge = "\x01" * (4 * 1024 * 1024 - 256)
        for _ in range(8):
            reply = raw.request("kill", task="mem", exec="e", signal=huge)
            assert reply["error"]["code"] == "invalid_argument"
        grown = client.stats()["rss_kib"] - before
        raw.request("force_exit", task="mem", exec="e", status=0)
        raw.request("delete", task="mem", exec="e")
    finally:
        raw.close()
    assert grown < 32 * 1024, f"the agent holds {grown} KiB more after 8 refused requests"


@pytest.mark.timeout(90)
def test_listing_many_execs_does_not_disconnect_the_client(ipc_agent, tmp_path):
    """300 execs with long (but valid) paths: in one reply, 4.8 MiB. The client's socket refuses
    messages over 4.25 MiB by closing the connection, and ZeroMQ does not reconnect after such a
    protocol error, so list_execs, then every request failed, and every exec of that client ended
    with 255 (BUG-6). The agent must never send a reply the client cannot take: `list` is paged."""
    raw = RawSession(ipc_agent.endpoints[0], "filler")
    path = "/" + "p" * 4095
    try:
        for index in range(300):
            reply = raw.request("create", task="many", exec=f"e{index}", spec={"args": ["true"]}, stdio={},
                                paths=[path, path, path], bundle=path)
            assert "result" in reply
        with AgentClient.connect(ipc_agent.endpoints[0], timeout=5, reconnect_timeout=5) as client:
            sleeper = client.create_exec("many", "sleeper", ProcessSpec(args=["sleep", "1000"]))
            sleeper.start()
            try:
                try:
                    listed = client.list_execs()
                except UnavailableError:
                    listed = None
                client.ping()  # whatever list did, the connection must still work
                assert sleeper.status().exit_status == 255 and sleeper.state.value == "running"
                assert listed is None or len(listed) == 301
            finally:
                with AgentClient.connect(ipc_agent.endpoints[0], timeout=5) as cleaner:
                    cleaner.attach("many", "sleeper").force_exit(9)
    finally:
        raw.close()
