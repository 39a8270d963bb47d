"""The ssh:// transport: SshTunnel through a real OpenSSH sshd to real TCP and ZeroMQ servers."""

from __future__ import annotations

import hashlib
import logging
import os
import random
import select
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.errors import InvalidArgumentError, UnavailableError
from host_proxy.ssh_endpoint import SshTarget, parse_ssh_endpoint
from host_proxy.ssh_tunnel import SshTunnel
from tests.support.sshd import SshServer, fingerprint, generate_key

if TYPE_CHECKING:  # fixtures provide the instances; tests/ssh is not a package
    from tests.ssh.conftest import EchoServer, OneShotServer, TcpForwarder

MiB = 1024 * 1024
DEADLINE = 20.0  # generous: a loaded CI machine, not an expected duration


def make_tunnel(server: SshServer, agent_port: int, **options: Any) -> SshTunnel:
    target = parse_ssh_endpoint(server.endpoint(f"tcp://127.0.0.1:{agent_port}"))
    options.setdefault("ssh_key", server.key_path)
    options.setdefault("known_hosts", server.known_hosts)
    return SshTunnel(target, **options)


@pytest.fixture
def tunnel(sshd: SshServer, echo_server: EchoServer) -> Iterator[SshTunnel]:
    with make_tunnel(sshd, echo_server.port) as tunnel:
        yield tunnel


def unix_connect(tunnel: SshTunnel) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(DEADLINE)
    sock.connect(tunnel.endpoint.removeprefix("ipc://"))
    return sock


def send_then_half_close(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(MiB):
        chunks.append(chunk)
    return b"".join(chunks)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# -- endpoint parsing -----------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_parse_defaults() -> None:
    target = parse_ssh_endpoint("ssh://guest.example")
    assert target == SshTarget(host="guest.example", port=22, user="root")
    assert target.agent == "tcp://127.0.0.1:5555"
    assert target.known_hosts_name == "guest.example"
    assert str(target) == "root@guest.example:22"


@pytest.mark.timeout(10)
def test_parse_user_port_and_agent() -> None:
    target = parse_ssh_endpoint("ssh://alice@Guest.Example:2222?agent=tcp://127.0.0.1:6000")
    assert (target.user, target.host, target.port) == ("alice", "guest.example", 2222)
    assert (target.agent_host, target.agent_port) == ("127.0.0.1", 6000)
    assert target.known_hosts_name == "[guest.example]:2222"


@pytest.mark.timeout(10)
def test_parse_ipv6() -> None:
    target = parse_ssh_endpoint("ssh://root@[::1]:2222?agent=tcp://[::1]:6000")
    assert (target.host, target.port, target.agent_host) == ("::1", 2222, "::1")
    assert target.address == "[::1]:2222"
    assert target.known_hosts_name == "[::1]:2222"
    assert target.agent == "tcp://[::1]:6000"
    assert parse_ssh_endpoint("ssh://[fe80::1]").known_hosts_name == "fe80::1"


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("tcp://host:22", "scheme must be ssh://"),
        ("ssh://", "no host"),
        ("ssh://alice:secret@host", "passwords are not supported"),
        ("ssh://@host", "empty user"),
        ("ssh://host:99999", "out of range"),
        ("ssh://host:ssh", "could not be cast"),
        ("ssh://host/some/path", "unexpected path"),
        ("ssh://host#frag", "unexpected fragment"),
        ("ssh://host?agent=ipc:///run/agent.sock", "only TCP agents"),
        ("ssh://host?agent=tcp://127.0.0.1", "needs a host and a port"),
        ("ssh://host?agent=tcp://127.0.0.1:6000/x", "must be just tcp://host:port"),
        ("ssh://host?port=2", "unknown option 'port'"),
        ("ssh://host?agent=tcp://a:1&agent=tcp://b:2", "more than once"),
        ("ssh://host?agent", "malformed query"),
    ],
)
def test_parse_rejects(url: str, complaint: str) -> None:
    with pytest.raises(InvalidArgumentError, match="ssh endpoint") as caught:
        parse_ssh_endpoint(url)
    assert complaint in str(caught.value)


@pytest.mark.timeout(10)
def test_target_validates_ports() -> None:
    with pytest.raises(InvalidArgumentError, match="port 0 is not in 1..65535"):
        SshTarget(host="h", port=0)
    with pytest.raises(InvalidArgumentError, match="agent port 70000"):
        SshTarget(host="h", agent_port=70000)


# -- relaying -------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_ipc_directory_is_private(tunnel: SshTunnel) -> None:
    assert tunnel.endpoint == f"ipc://{tunnel.directory}/agent.sock"
    assert stat.S_IMODE(os.stat(tunnel.directory).st_mode) == 0o700
    assert stat.S_ISSOCK(os.stat(tunnel.endpoint.removeprefix("ipc://")).st_mode)


@pytest.mark.timeout(30)
def test_zmq_dealer_round_trips_through_the_tunnel(
    sshd: SshServer, zmq_socket: Callable[[int], zmq.Socket[Any]]
) -> None:
    router = zmq_socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    with make_tunnel(sshd, port) as tunnel:
        dealer = zmq_socket(zmq.DEALER)
        dealer.connect(tunnel.endpoint)
        big = random.randbytes(3 * MiB)  # several channel windows' worth, both ways
        for index, frames in enumerate(
            [[b"hello"], [b"multi", b"part", b""], [big]] + [[b"%d" % n] for n in range(200)]
        ):
            dealer.send_multipart(frames)
            assert router.poll(int(DEADLINE * 1000)), f"message {index} did not reach the ROUTER"
            identity, *received = router.recv_multipart()
            assert received == frames
            router.send_multipart([identity, b"re:", *frames])
            assert dealer.poll(int(DEADLINE * 1000)), f"reply {index} did not come back"
            assert dealer.recv_multipart() == [b"re:", *frames]


@pytest.mark.timeout(30)
def test_bytes_and_half_close_pass_through(tunnel: SshTunnel) -> None:
    payload = random.randbytes(5 * MiB)
    with unix_connect(tunnel) as client:
        sender = threading.Thread(target=send_then_half_close, args=(client, payload))
        sender.start()
        echoed = recv_until_eof(client)  # EOF comes only after our half-close went through
        sender.join(DEADLINE)
    assert not sender.is_alive()
    assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload).digest()


@pytest.mark.timeout(30)
def test_far_end_half_close_leaves_our_direction_open(
    sshd: SshServer, one_shot_server: Callable[..., OneShotServer]
) -> None:
    def greet_then_listen(conn: socket.socket, release: threading.Event) -> bytes:
        conn.sendall(b"greeting")
        conn.shutdown(socket.SHUT_WR)
        conn.settimeout(DEADLINE)
        return recv_until_eof(conn)

    server = one_shot_server(greet_then_listen)
    with make_tunnel(sshd, server.port) as tunnel, unix_connect(tunnel) as client:
        assert recv_until_eof(client) == b"greeting"
        client.sendall(b"still heard after the far end's EOF")
        client.shutdown(socket.SHUT_WR)
        assert server.result(DEADLINE) == b"still heard after the far end's EOF"
        assert client.recv(1) == b""


@pytest.mark.timeout(60)
def test_many_connections_at_once(tunnel: SshTunnel) -> None:
    payloads = [random.randbytes(MiB + n) for n in range(8)]
    results: list[bytes | BaseException | None] = [None] * len(payloads)

    def echo(index: int) -> None:
        try:
            with unix_connect(tunnel) as client:
                writer = threading.Thread(target=send_then_half_close, args=(client, payloads[index]))
                writer.start()
                results[index] = recv_until_eof(client)
                writer.join(DEADLINE)
        except BaseException as error:
            results[index] = error

    clients = [threading.Thread(target=echo, args=(index,)) for index in range(len(payloads))]
    for client in clients:
        client.start()
    for client in clients:
        client.join(DEADLINE * 2)
    assert results == payloads


@pytest.mark.timeout(90)
@pytest.mark.parametrize("direction", ["to agent", "from agent"])
def test_slow_reader_stalls_the_writer_instead_of_buffering(
    sshd: SshServer, one_shot_server: Callable[..., OneShotServer], direction: str
) -> None:
    """32 MiB against a reader that does not read: the writer stalls early and memory stays flat."""
    payload = random.randbytes(32 * MiB)

    def push(sock: socket.socket, release: threading.Event) -> tuple[int, int]:
        """Send ``payload``; return (bytes accepted before the first 1 s stall, peak RSS growth)."""
        sock.setblocking(False)
        baseline = rss_bytes()
        peak = baseline
        sent, sent_before_stall = 0, None
        deadline = time.monotonic() + DEADLINE * 2
        while sent < len(payload):
            assert time.monotonic() < deadline, f"stuck after {sent} bytes"
            _, writable, _ = select.select([], [sock], [], 1.0)
            if not writable:  # nothing moved for a second: the reader's backpressure reached us
                if sent_before_stall is None:
                    sent_before_stall = sent
                    peak = max(peak, rss_bytes())
                    release.set()
                continue
            sent += sock.send(payload[sent : sent + 256 * 1024])
            if sent % MiB < 256 * 1024:
                peak = max(peak, rss_bytes())
        sock.shutdown(socket.SHUT_WR)
        assert sent_before_stall is not None, "the writer never stalled: something buffered 32 MiB"
        return sent_before_stall, peak - baseline

    def drain(sock: socket.socket, release: threading.Event) -> bytes:
        assert release.wait(DEADLINE * 2), "the writer never stalled"
        sock.settimeout(DEADLINE)
        digest = hashlib.sha256()
        while chunk := sock.recv(64 * 1024):
            digest.update(chunk)
        return digest.digest()

    if direction == "to agent":
        server = one_shot_server(drain)
        with make_tunnel(sshd, server.port) as tunnel, unix_connect(tunnel) as client:
            stalled_at, rss_growth = push(client, server.release)
            received = server.result(DEADLINE * 2)
    else:
        release = threading.Event()
        server = one_shot_server(lambda conn, _: push(conn, release))
        outcome: list[bytes] = []
        with make_tunnel(sshd, server.port) as tunnel, unix_connect(tunnel) as client:
            reader = threading.Thread(target=lambda: outcome.append(drain(client, release)))
            reader.start()
            stalled_at, rss_growth = server.result(DEADLINE * 3)
            reader.join(DEADLINE)
            (received,) = outcome
    assert received == hashlib.sha256(payload).digest()
    # What the pipeline holds when stalled: socket buffers, sshd's 2 MiB window,
    # our 64 KiB, paramiko's 2 MiB receive window. Far below the 32 MiB pushed.
    assert stalled_at < 16 * MiB, f"{stalled_at / MiB:.1f} MiB went in before the writer stalled"
    assert rss_growth < 20 * MiB, f"RSS grew by {rss_growth / MiB:.1f} MiB"


@pytest.mark.timeout(30)
def test_agent_port_refused_closes_just_that_connection(sshd: SshServer, echo_server: EchoServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        closed_port = placeholder.getsockname()[1]
    with make_tunnel(sshd, closed_port) as tunnel:
        for _ in range(2):
            with unix_connect(tunnel) as client:
                assert client.recv(1) == b""  # closed at once, not left hanging
        assert tunnel.reconnects == 0  # the SSH connection itself is fine


# -- host keys and authentication ----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_unknown_host_names_the_offered_fingerprint(sshd: SshServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port + 1} {sshd.host_public_key}\n")  # another port
    with pytest.raises(UnavailableError) as caught:
        make_tunnel(sshd, 1, known_hosts=known_hosts)
    message = str(caught.value)
    assert f"127.0.0.1:{sshd.port}" in message
    assert f"ssh-ed25519 key {sshd.host_fingerprint}" in message  # the fingerprint ssh-keygen -l prints
    assert "host key verification failed" in message


@pytest.mark.timeout(30)
def test_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    impostor = generate_key(tmp_path / "other_host_key")
    pinned = Path(f"{impostor}.pub").read_text().split()[:2]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{sshd.known_hosts_name} {' '.join(pinned)}\n")
    with pytest.raises(UnavailableError, match="HOST KEY CHANGED") as caught:
        make_tunnel(sshd, 1, known_hosts=known_hosts)
    assert sshd.host_fingerprint in str(caught.value)
    assert fingerprint(Path(f"{impostor}.pub")) in str(caught.value)


@pytest.mark.timeout(30)
def test_only_other_key_types_known_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "ecdsa_host_key", "ecdsa")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        f"{sshd.known_hosts_name} {' '.join(Path(f'{other}.pub').read_text().split()[:2])}\n"
    )
    with pytest.raises(UnavailableError, match="lists only ecdsa-sha2-nistp256 keys"):
        make_tunnel(sshd, 1, known_hosts=known_hosts)


@pytest.mark.timeout(30)
def test_revoked_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(sshd.known_hosts.read_text() + f"@revoked * {sshd.host_public_key}\n")
    with pytest.raises(UnavailableError, match="REVOKED"):
        make_tunnel(sshd, 1, known_hosts=known_hosts)


@pytest.mark.timeout(30)
def test_hashed_known_hosts_and_marker_lines_work(
    sshd: SshServer, echo_server: EchoServer, tmp_path: Path
) -> None:
    hashed = tmp_path / "hashed"
    hashed.write_text(sshd.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hashed)], check=True, capture_output=True, timeout=30)
    assert hashed.read_text().startswith("|1|")
    ca = generate_key(tmp_path / "ca")
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(
        # paramiko's own HostKeys.load() gives up at marker lines; ssh skips lines it cannot parse.
        "# a comment, a CA line and a line nobody can parse come first\n"
        f"@cert-authority *.example {' '.join(Path(f'{ca}.pub').read_text().split()[:2])}\n"
        "garbage-line\n" + hashed.read_text()
    )
    with (
        make_tunnel(sshd, echo_server.port, known_hosts=known_hosts) as tunnel,
        unix_connect(tunnel) as client,
    ):
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_user_key_types(sshd: SshServer, echo_server: EchoServer, key_type: str) -> None:
    key = sshd.new_user_key(key_type)
    with make_tunnel(sshd, echo_server.port, ssh_key=key) as tunnel, unix_connect(tunnel) as client:
        client.sendall(key_type.encode())
        assert client.recv(64) == key_type.encode()


@pytest.mark.timeout(30)
def test_rejected_key_names_user_and_host(sshd: SshServer, tmp_path: Path) -> None:
    stranger = sshd.new_user_key("ed25519", authorize=False)
    with pytest.raises(UnavailableError, match="rejected") as caught:
        make_tunnel(sshd, 1, ssh_key=stranger)
    assert f"{sshd.user}@127.0.0.1:{sshd.port}" in str(caught.value)
    assert str(stranger) in str(caught.value)


@pytest.mark.timeout(30)
def test_unknown_user_is_rejected(sshd: SshServer) -> None:
    target = SshTarget(host=sshd.host, port=sshd.port, user="no-such-user-here")
    with pytest.raises(UnavailableError, match=f"no-such-user-here@127.0.0.1:{sshd.port}.*rejected"):
        SshTunnel(target, ssh_key=sshd.key_path, known_hosts=sshd.known_hosts)


@pytest.mark.timeout(30)
def test_unusable_files_are_invalid_arguments(sshd: SshServer, tmp_path: Path) -> None:
    encrypted = tmp_path / "encrypted"
    subprocess.run(
        ["ssh-keygen", "-q", "-N", "pass phrase", "-t", "ed25519", "-f", str(encrypted)], check=True
    )
    not_a_key = tmp_path / "not_a_key"
    not_a_key.write_text("hello\n")
    target = parse_ssh_endpoint(sshd.endpoint())
    for key, complaint in [
        (tmp_path / "missing", "cannot read it"),
        (encrypted, "encrypted"),
        (not_a_key, "not a usable"),
    ]:
        with pytest.raises(InvalidArgumentError, match=complaint) as caught:
            SshTunnel(target, ssh_key=key, known_hosts=sshd.known_hosts)
        assert str(key) in str(caught.value)
    with pytest.raises(InvalidArgumentError, match="known_hosts .*missing.*cannot read it"):
        SshTunnel(target, ssh_key=sshd.key_path, known_hosts=tmp_path / "missing")


# -- unreachable servers --------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_refused_connection(sshd: SshServer) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        closed_port = placeholder.getsockname()[1]
    target = SshTarget(host="127.0.0.1", port=closed_port)
    with pytest.raises(UnavailableError, match=f"root@127.0.0.1:{closed_port}: .*connecting.*refused"):
        SshTunnel(target, ssh_key=sshd.key_path, known_hosts=sshd.known_hosts)


@pytest.mark.timeout(30)
def test_silent_server_times_out(sshd: SshServer, one_shot_server: Callable[..., OneShotServer]) -> None:
    server = one_shot_server(lambda conn, release: release.wait(DEADLINE))
    target = SshTarget(host="127.0.0.1", port=server.port)
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="timed out after 1 s while negotiating SSH"):
        SshTunnel(target, ssh_key=sshd.key_path, known_hosts=sshd.known_hosts, timeout=1.0)
    assert time.monotonic() - started < 5


@pytest.mark.timeout(30)
def test_not_an_ssh_server(sshd: SshServer, one_shot_server: Callable[..., OneShotServer]) -> None:
    server = one_shot_server(lambda conn, release: conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\n"))
    target = SshTarget(host="127.0.0.1", port=server.port)
    with pytest.raises(UnavailableError, match="negotiating SSH"):
        SshTunnel(target, ssh_key=sshd.key_path, known_hosts=sshd.known_hosts, timeout=5.0)


# -- reconnecting ---------------------------------------------------------------------------------


def wait_for_event(monitor: zmq.Socket[Any], wanted: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while (remaining := deadline - time.monotonic()) > 0:
        if monitor.poll(int(remaining * 1000)) and recv_monitor_message(monitor)["event"] == wanted:
            return
    raise AssertionError(f"no ZeroMQ event {wanted} within {DEADLINE} s")


@pytest.mark.timeout(90)
def test_sshd_killed_mid_stream_then_back(
    own_sshd: SshServer, zmq_socket: Callable[[int], zmq.Socket[Any]]
) -> None:
    router = zmq_socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    with make_tunnel(own_sshd, port) as tunnel:
        dealer = zmq_socket(zmq.DEALER)
        dealer.setsockopt(zmq.RECONNECT_IVL, 50)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        dealer.monitor("inproc://dealer-events", zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        monitor = zmq_socket(zmq.PAIR)
        monitor.connect("inproc://dealer-events")
        dealer.connect(tunnel.endpoint)
        wait_for_event(monitor, zmq.EVENT_CONNECTED)

        chunk = random.randbytes(256 * 1024)
        for _ in range(64):  # 16 MiB in flight when sshd dies
            dealer.send(chunk, copy=False)
        assert router.poll(int(DEADLINE * 1000))
        router.recv_multipart()
        own_sshd.stop()  # sshd and its session processes, as when a guest dies
        wait_for_event(monitor, zmq.EVENT_DISCONNECTED)

        # While sshd is down, every ZeroMQ reconnect is accepted and closed at once.
        with unix_connect(tunnel) as probe:
            assert probe.recv(1) == b""
        assert tunnel.reconnects == 0

        own_sshd.restart()
        dealer.send(b"after the restart")
        deadline = time.monotonic() + DEADLINE
        while True:  # chunks queued in the DEALER may arrive first
            assert router.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), (
                "nothing arrived after the restart"
            )
            identity, message = router.recv_multipart()
            if message == b"after the restart":
                break
        router.send_multipart([identity, b"welcome back"])
        deadline = time.monotonic() + DEADLINE
        while True:
            assert dealer.poll(int(max(0.0, deadline - time.monotonic()) * 1000)), (
                "no reply after the restart"
            )
            if dealer.recv() == b"welcome back":
                break
        assert tunnel.reconnects == 1
        dealer.disable_monitor()


@pytest.mark.timeout(60)
def test_an_outage_is_logged_once(
    own_sshd: SshServer, echo_server: EchoServer, caplog: pytest.LogCaptureFixture
) -> None:
    with make_tunnel(own_sshd, echo_server.port) as tunnel:
        own_sshd.stop()
        for _ in range(5):  # ZeroMQ would retry like this, every reconnect interval
            with unix_connect(tunnel) as probe:
                assert probe.recv(1) == b""
        own_sshd.restart()
        with unix_connect(tunnel) as client:
            client.sendall(b"back")
            assert client.recv(4) == b"back"
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "host_proxy.ssh_tunnel" and record.levelno >= logging.WARNING
    ]
    assert len(warnings) == 1, warnings
    assert f"127.0.0.1:{own_sshd.port}" in warnings[0] and "(1 in a row)" in warnings[0]


@pytest.mark.timeout(60)
def test_connection_cut_then_redial(
    own_sshd: SshServer, forwarder: TcpForwarder, echo_server: EchoServer
) -> None:
    known_hosts = own_sshd.directory / "known_hosts_forwarder"
    known_hosts.write_text(f"[127.0.0.1]:{forwarder.port} {own_sshd.host_public_key}\n")
    target = SshTarget(host="127.0.0.1", port=forwarder.port, agent_port=echo_server.port)
    with SshTunnel(target, ssh_key=own_sshd.key_path, known_hosts=known_hosts) as tunnel:
        with unix_connect(tunnel) as client:
            client.sendall(b"before")
            assert client.recv(6) == b"before"
            forwarder.cut()
            assert client.recv(1) == b""  # the relayed connection closes with the SSH connection
        with unix_connect(tunnel) as client:
            client.sendall(b"after")
            assert client.recv(5) == b"after"
        assert tunnel.reconnects == 1


@pytest.mark.timeout(60)
def test_close_abandons_a_stuck_redial(
    own_sshd: SshServer, forwarder: TcpForwarder, echo_server: EchoServer
) -> None:
    known_hosts = own_sshd.directory / "known_hosts_forwarder"
    known_hosts.write_text(f"[127.0.0.1]:{forwarder.port} {own_sshd.host_public_key}\n")
    target = SshTarget(host="127.0.0.1", port=forwarder.port, agent_port=echo_server.port)
    threads_before = set(threading.enumerate())
    tunnel = SshTunnel(target, ssh_key=own_sshd.key_path, known_hosts=known_hosts, timeout=30.0)
    with unix_connect(tunnel) as client:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        forwarder.blackhole = True
        forwarder.cut()
        assert client.recv(1) == b""  # the tunnel saw the SSH connection die
    with unix_connect(tunnel):
        # The relay thread now re-dials a server that never answers, for up
        # to 30 s. close() must not wait for that.
        assert forwarder.blackholed.wait(DEADLINE)
        started = time.monotonic()
        tunnel.close()
        assert time.monotonic() - started < 2.0
    assert set(threading.enumerate()) == threads_before


# -- closing --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_close_leaves_nothing_behind(sshd: SshServer, echo_server: EchoServer) -> None:
    assert echo_server.wait_idle(DEADLINE)  # earlier tests' connections are gone
    threads_before = set(threading.enumerate())
    fds_before = open_fds()
    tunnel = make_tunnel(sshd, echo_server.port)
    clients = [unix_connect(tunnel) for _ in range(3)]
    for client in clients:
        client.sendall(b"x")
        assert client.recv(1) == b"x"
    directory = tunnel.directory
    assert set(threading.enumerate()) != threads_before

    tunnel.close()
    for client in clients:
        assert client.recv(1) == b""  # relayed connections were closed
        client.close()
    tunnel.close()  # idempotent
    assert not os.path.exists(directory)
    assert set(threading.enumerate()) == threads_before
    assert echo_server.wait_idle(DEADLINE)  # its ends of the relayed connections are closed too
    assert open_fds() == fds_before


@pytest.mark.timeout(60)
def test_close_from_another_thread_while_streaming(sshd: SshServer, echo_server: EchoServer) -> None:
    # Other tunnels (another test's, a session-wide client's) may be alive: compare with before.
    threads_before = set(threading.enumerate())
    tunnel = make_tunnel(sshd, echo_server.port)
    client = unix_connect(tunnel)
    stop_writing = threading.Event()

    def write_forever() -> None:
        chunk = random.randbytes(64 * 1024)
        try:
            while not stop_writing.is_set():
                client.sendall(chunk)
        except OSError:
            pass  # the tunnel went away under us: expected

    writer = threading.Thread(target=write_forever)
    writer.start()
    assert client.recv(64 * 1024)  # echoes flow: the stream is live
    closer = threading.Thread(target=tunnel.close)
    closer.start()
    closer.join(DEADLINE)
    assert not closer.is_alive()
    stop_writing.set()
    client.shutdown(socket.SHUT_RDWR)  # wakes the writer if it blocks on a full buffer
    writer.join(DEADLINE)
    client.close()
    assert not writer.is_alive()
    assert set(threading.enumerate()) - threads_before == set()


@pytest.mark.timeout(30)
def test_context_manager_closes(sshd: SshServer, echo_server: EchoServer) -> None:
    with make_tunnel(sshd, echo_server.port) as tunnel:
        path = tunnel.endpoint.removeprefix("ipc://")
        assert os.path.exists(path)
    assert not os.path.exists(path)
    assert "closed" in repr(tunnel)
