"""ttRPC framing and the server, against the wire format containerd 1.6 speaks (ttrpc 1.1)."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from host_proxy.shim import ttrpc
from host_proxy.shim.proto import ttrpc_pb2

# containerd calling Task/State on stream 1: the header and Request bytes as ttrpc 1.1 writes them
# (field 1 service, 2 method, 3 payload; protobuf tags 0x0a, 0x12, 0x1a).
STATE_REQUEST = (b"\x0a\x17containerd.task.v2.Task" + b"\x12\x05State" + b"\x1a\x04\x0a\x02c1")
STATE_FRAME = struct.pack(">IIBB", len(STATE_REQUEST), 1, 1, 0) + STATE_REQUEST


def test_a_frame_is_a_ten_byte_big_endian_header_and_the_payload() -> None:
    assert ttrpc.HEADER_SIZE == 10
    assert ttrpc.encode_frame(3, ttrpc.TYPE_RESPONSE, b"xyz") == b"\x00\x00\x00\x03\x00\x00\x00\x03\x02\x00xyz"
    assert ttrpc.decode_header(STATE_FRAME[:10]) == (len(STATE_REQUEST), 1, 1, 0)


def test_a_request_as_containerd_writes_it_parses() -> None:
    request = ttrpc_pb2.Request()
    request.ParseFromString(STATE_REQUEST)
    assert (request.service, request.method, request.payload) == ("containerd.task.v2.Task", "State", b"\x0a\x02c1")
    assert ttrpc_pb2.Request(service="containerd.task.v2.Task", method="State",
                             payload=b"\x0a\x02c1").SerializeToString() == STATE_REQUEST


def test_frames_over_four_mib_are_refused() -> None:
    with pytest.raises(ttrpc.FrameError, match="over the limit"):
        ttrpc.decode_header(struct.pack(">IIBB", ttrpc.MAX_MESSAGE_BYTES + 1, 1, 1, 0))
    with pytest.raises(ttrpc.FrameError):
        ttrpc.encode_frame(1, 1, b"x" * (ttrpc.MAX_MESSAGE_BYTES + 1))
    assert ttrpc.decode_header(struct.pack(">IIBB", ttrpc.MAX_MESSAGE_BYTES, 1, 1, 0))[0] == ttrpc.MAX_MESSAGE_BYTES


class _Service:
    """Echo answers at once; Block answers once released (as Wait does)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.blocked = threading.Event()

    def methods(self) -> dict[str, dict[str, ttrpc.Method]]:
        def echo(payload: bytes) -> bytes:
            return payload

        def block(payload: bytes) -> bytes:
            self.blocked.set()
            assert self.release.wait(30)
            return b"released"

        def fail(payload: bytes) -> bytes:
            raise ttrpc.RpcError(ttrpc.NOT_FOUND, "no such thing")

        return {"test.Service": {"Echo": echo, "Block": block, "Fail": fail}}


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, _Service]]:
    service = _Service()
    server = ttrpc.Server(service.methods())
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    thread = threading.Thread(target=server.serve, args=(listener,))
    thread.start()
    try:
        yield path, service
    finally:
        service.release.set()
        server.close()
        thread.join(10)
        listener.close()
        assert not thread.is_alive()


def _raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def test_calls_on_one_connection_are_served_while_another_blocks(served) -> None:
    path, service = served
    sock = _raw(path)
    try:
        block = ttrpc_pb2.Request(service="test.Service", method="Block").SerializeToString()
        sock.sendall(ttrpc.encode_frame(1, ttrpc.TYPE_REQUEST, block))
        assert service.blocked.wait(10)
        echo = ttrpc_pb2.Request(service="test.Service", method="Echo", payload=b"hello").SerializeToString()
        sock.sendall(ttrpc.encode_frame(3, ttrpc.TYPE_REQUEST, echo))
        first = ttrpc.read_frame(sock)
        assert first is not None and (first.stream_id, first.type) == (3, ttrpc.TYPE_RESPONSE)
        assert ttrpc_pb2.Response.FromString(first.payload).payload == b"hello"
        service.release.set()
        second = ttrpc.read_frame(sock)
        assert second is not None and second.stream_id == 1
        assert ttrpc_pb2.Response.FromString(second.payload).payload == b"released"
    finally:
        sock.close()


def test_errors_are_grpc_statuses(served) -> None:
    path, _ = served
    with ttrpc.Client(path) as client:
        with pytest.raises(ttrpc.RpcError) as failed:
            client.call("test.Service", "Fail", b"")
        assert (failed.value.code, failed.value.message) == (ttrpc.NOT_FOUND, "no such thing")
        with pytest.raises(ttrpc.RpcError) as unknown:
            client.call("test.Service", "Nope", b"")
        assert unknown.value.code == ttrpc.UNIMPLEMENTED


@pytest.mark.parametrize("garbage", [
    struct.pack(">IIBB", ttrpc.MAX_MESSAGE_BYTES + 1, 1, 1, 0),  # oversized
    struct.pack(">IIBB", 3, 1, 1, 0) + b"\xff\xff\xff",  # a payload that is not a Request
    struct.pack(">IIBB", 0, 2, 1, 0),  # a request on an even (server-side) stream id
    struct.pack(">IIBB", 0, 1, 2, 0),  # a response sent to a server
])
def test_a_bad_frame_drops_that_connection_and_the_server_keeps_serving(served, garbage: bytes) -> None:
    path, _ = served
    with ttrpc.Client(path) as bystander:
        sock = _raw(path)
        try:
            sock.sendall(garbage)
            assert sock.recv(1) == b""  # dropped: EOF, no answer
        finally:
            sock.close()
        assert bystander.call("test.Service", "Echo", b"still") == b"still"
    with ttrpc.Client(path) as newcomer:
        assert newcomer.call("test.Service", "Echo", os.urandom(64 * 1024)) != b""


def test_calls_in_flight_on_one_connection_are_bounded(served) -> None:
    path, service = served
    sock = _raw(path)
    try:
        block = ttrpc_pb2.Request(service="test.Service", method="Block").SerializeToString()
        for index in range(ttrpc.MAX_CALLS_IN_FLIGHT + 1):
            sock.sendall(ttrpc.encode_frame(2 * index + 1, ttrpc.TYPE_REQUEST, block))
        refused = ttrpc.read_frame(sock)  # the only answer while the others block
        assert refused is not None and refused.stream_id == 2 * ttrpc.MAX_CALLS_IN_FLIGHT + 1
        assert ttrpc_pb2.Response.FromString(refused.payload).status.code == ttrpc.RESOURCE_EXHAUSTED
        service.release.set()
        answered = {ttrpc.read_frame(sock).stream_id for _ in range(ttrpc.MAX_CALLS_IN_FLIGHT)}  # type: ignore[union-attr]
        assert answered == {2 * index + 1 for index in range(ttrpc.MAX_CALLS_IN_FLIGHT)}
    finally:
        sock.close()
