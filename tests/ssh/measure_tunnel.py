"""Side-by-side figures for the SSH tunnel (not a test): ``python -m tests.ssh.measure_tunnel``.

In one run, against a real sshd on loopback: the median round trip of a small
ZeroMQ message DEALER -> ROUTER -> DEALER directly over tcp:// and through the
tunnel, and one-way throughput of a 64 MiB byte stream through the tunnel
(with plain loopback TCP beside it).
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Any

import zmq

from host_proxy.ssh_endpoint import parse_ssh_endpoint
from host_proxy.ssh_tunnel import SshTunnel
from tests.support.sshd import SshServer

MiB = 1024 * 1024
ROUND_TRIPS = 1000
WARMUP = 100
TRANSFER = 64 * MiB


def echo_router(router: zmq.Socket[Any], stop: threading.Event) -> None:
    while not stop.is_set():
        if router.poll(100):
            router.send_multipart(router.recv_multipart())


def round_trips(context: zmq.Context[Any], endpoint: str) -> list[float]:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        samples = []
        for index in range(WARMUP + ROUND_TRIPS):
            started = time.perf_counter()
            dealer.send(b"ping")
            if not dealer.poll(10_000):
                raise TimeoutError(f"no echo from {endpoint}")
            dealer.recv()
            if index >= WARMUP:
                samples.append(time.perf_counter() - started)
        return samples
    finally:
        dealer.close()


def sink(listener: socket.socket, result: list[int]) -> None:
    conn, _ = listener.accept()
    with conn:
        total = 0
        while chunk := conn.recv(MiB):
            total += len(chunk)
        result.append(total)


def throughput(connect: Any, listener: socket.socket) -> float:
    """MB/s (10**6 bytes) of TRANSFER bytes written through ``connect()`` to a sink on ``listener``."""
    received: list[int] = []
    reader = threading.Thread(target=sink, args=(listener, received))
    reader.start()
    block = bytes(MiB)
    with connect() as sock:
        started = time.perf_counter()
        for _ in range(TRANSFER // MiB):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        reader.join()
        elapsed = time.perf_counter() - started
    assert received == [TRANSFER], received
    return TRANSFER / elapsed / 1e6


def main() -> None:
    context: zmq.Context[Any] = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()
    echo = threading.Thread(target=echo_router, args=(router, stop))
    echo.start()
    try:
        with SshServer(log_level="INFO") as sshd:
            target = parse_ssh_endpoint(sshd.endpoint(f"tcp://127.0.0.1:{port}"))
            with SshTunnel(target, ssh_key=sshd.key_path, known_hosts=sshd.known_hosts) as tunnel:
                transport = tunnel._transport
                cipher = f"{transport.remote_cipher} / {transport.remote_mac}" if transport else "?"
                direct = round_trips(context, f"tcp://127.0.0.1:{port}")
                tunneled = round_trips(context, tunnel.endpoint)
                print(f"sshd {sshd.port}, cipher {cipher}")
                for name, samples in (("direct tcp://", direct), ("through tunnel", tunneled)):
                    print(
                        f"round trip {name:15} median {statistics.median(samples) * 1e6:7.0f} us"
                        f"  p90 {sorted(samples)[int(len(samples) * 0.9)] * 1e6:7.0f} us  (n={len(samples)})"
                    )
                print(f"ratio tunnel/direct {statistics.median(tunneled) / statistics.median(direct):.1f}x")

            with socket.create_server(("127.0.0.1", 0)) as listener:
                sink_port = listener.getsockname()[1]
                tunnel_target = parse_ssh_endpoint(sshd.endpoint(f"tcp://127.0.0.1:{sink_port}"))
                with SshTunnel(tunnel_target, ssh_key=sshd.key_path, known_hosts=sshd.known_hosts) as tunnel:
                    path = tunnel.endpoint.removeprefix("ipc://")

                    def via_tunnel() -> socket.socket:
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        sock.connect(path)
                        return sock

                    tunneled_rate = throughput(via_tunnel, listener)
                direct_rate = throughput(lambda: socket.create_connection(("127.0.0.1", sink_port)), listener)
            print(
                f"64 MiB one way: through tunnel {tunneled_rate:6.0f} MB/s, plain loopback TCP {direct_rate:6.0f} MB/s"
            )
    finally:
        stop.set()
        echo.join()
        router.close()
        context.term()


if __name__ == "__main__":
    main()
