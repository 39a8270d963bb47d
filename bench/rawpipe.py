"""The raw-transport ceilings for streaming output between two processes: pyzmq, and a plain unix socket.

The sender runs in its own process, as the agent does::

    python -m bench.rawpipe --transport zmq --listen ipc:///dir/pipe.sock [--chunk 131072]
    python -m bench.rawpipe --transport unix --listen /dir/pipe.unix

and prints ``rawpipe ready``. For each request (the size, as text) it runs
``head -c SIZE /dev/zero`` on a pipe of the supervisor's size, reads it
``--chunk`` bytes at a time (the agent's chunk size) and sends every chunk:
over a ZeroMQ PAIR socket whose high-water mark holds the agent's window,
ended by an empty message; or with ``sendall`` on a unix stream socket. No
headers, sequence numbers or acknowledgements: what any design pays at
least to move the bytes through that transport. :class:`RawPipe` is the
receiving end, which writes them into the host file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import socket
import subprocess
from collections.abc import Callable

import zmq

from common import protocol
from common.supervisor.spawn import PIPE_SIZE

#: The agent's own settings, so that the ceiling is measured like for like.
CHUNK = protocol.MAX_CHUNK_BYTES
WINDOW_CHUNKS = max(1, protocol.DEFAULT_WINDOW // CHUNK)
F_SETPIPE_SZ = 1031


def _stream(size: int, chunk: int, send: Callable[[bytes], object]) -> None:
    process = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    assert process.stdout is not None
    fd = process.stdout.fileno()
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)  # as the supervisor's spawn does
    while data := os.read(fd, chunk):
        send(data)
    process.stdout.close()
    process.wait()


def serve_zmq(listen: str, chunk: int) -> None:
    pair: zmq.Socket = zmq.Context.instance().socket(zmq.PAIR)
    pair.setsockopt(zmq.SNDHWM, WINDOW_CHUNKS)
    pair.bind(listen)
    print("rawpipe ready", flush=True)
    while True:
        _stream(int(pair.recv()), chunk, pair.send)
        pair.send(b"")


def serve_unix(listen: str, chunk: int) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(listen)
    listener.listen(1)
    print("rawpipe ready", flush=True)
    connection, _ = listener.accept()
    while request := connection.recv(64):
        _stream(int(request), chunk, connection.sendall)


class RawPipe:
    """The receiving end: ``produce(path)`` asks for ``size`` bytes and appends them to ``path``."""

    def __init__(self, transport: str, endpoint: str, size: int) -> None:
        self.transport = transport
        self.size = size
        if transport == "zmq":
            self.pair: zmq.Socket = zmq.Context.instance().socket(zmq.PAIR)
            self.pair.setsockopt(zmq.RCVHWM, WINDOW_CHUNKS)
            self.pair.setsockopt(zmq.LINGER, 0)
            self.pair.connect(endpoint)
        else:
            self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.unix.connect(endpoint)
            self.buffer = memoryview(bytearray(4 * CHUNK))

    def produce(self, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if self.transport == "zmq":
                self.pair.send(str(self.size).encode())
                while len(frame := self.pair.recv(copy=False).buffer):
                    os.write(fd, frame)
            else:
                self.unix.sendall(str(self.size).encode())
                remaining = self.size
                while remaining:
                    received = self.unix.recv_into(self.buffer, min(len(self.buffer), remaining))
                    if not received:
                        raise RuntimeError("rawpipe: the sender closed the connection")
                    os.write(fd, self.buffer[:received])
                    remaining -= received
        finally:
            os.close(fd)

    def close(self) -> None:
        if self.transport == "zmq":
            self.pair.close(0)
        else:
            self.unix.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--transport", choices=["zmq", "unix"], required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--chunk", type=int, default=CHUNK)
    args = parser.parse_args()
    try:
        (serve_zmq if args.transport == "zmq" else serve_unix)(args.listen, args.chunk)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
