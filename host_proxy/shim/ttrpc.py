"""ttRPC, the small RPC protocol containerd speaks to its shims (github.com/containerd/ttrpc).

Wire format (ttrpc 1.1, what containerd 1.6 sends): each message is a frame, a
10-byte big-endian header — uint32 payload length (at most 4 MiB), uint32
stream id (odd for a client's calls: 1, 3, 5, …), uint8 type (1 request, 2
response), uint8 flags — followed by the payload, a protobuf ``ttrpc.Request``
or ``ttrpc.Response``. One call is one request frame and one response frame
on the same stream id; responses may come in any order.

:class:`Server` serves calls on a unix socket, each call on its own thread,
so a ``Wait`` that blocks for the life of a container never holds up the
``State``, ``Kill`` or ``Exec`` containerd sends behind it on the same
connection. A malformed or oversized frame, or a request that does not
parse, drops that connection only; the server keeps serving the others and
accepting new ones. :class:`Client` makes calls (the shim's events to
containerd).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from .proto import status_pb2, ttrpc_pb2

LOG = logging.getLogger(__name__)

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
MAX_MESSAGE_BYTES = 4 << 20
TYPE_REQUEST = 1
TYPE_RESPONSE = 2

# gRPC status codes, as ttRPC carries them in google.rpc.Status.
OK = 0
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
FAILED_PRECONDITION = 9
RESOURCE_EXHAUSTED = 8
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14


class FrameError(Exception):
    """A frame that breaks the wire format: the connection it came on cannot be trusted further."""


class RpcError(Exception):
    """A call's failure as a gRPC status: a handler raises it, :meth:`Client.call` returns it raised."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    payload: bytes


def encode_frame(stream_id: int, message_type: int, payload: bytes, flags: int = 0) -> bytes:
    """One frame on the wire. A payload over 4 MiB is a ``FrameError`` (the peer would drop us)."""
    if len(payload) > MAX_MESSAGE_BYTES:
        raise FrameError(f"message of {len(payload)} bytes is over the limit of {MAX_MESSAGE_BYTES}")
    return HEADER.pack(len(payload), stream_id, message_type, flags) + payload


def decode_header(header: bytes) -> tuple[int, int, int, int]:
    """``(length, stream_id, type, flags)`` of a 10-byte header; an oversized length is a ``FrameError``."""
    length, stream_id, message_type, flags = HEADER.unpack(header)
    if length > MAX_MESSAGE_BYTES:
        raise FrameError(f"frame of {length} bytes is over the limit of {MAX_MESSAGE_BYTES}")
    return length, stream_id, message_type, flags


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or None at a clean EOF before the first; EOF in the middle is a ``FrameError``."""
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            if not chunks:
                return None
            raise FrameError(f"connection closed inside a frame ({len(chunks)} of {size} bytes)")
        chunks += chunk
    return bytes(chunks)


def read_frame(sock: socket.socket) -> Frame | None:
    """The next frame, or None when the peer closed the connection between frames."""
    header = _read_exactly(sock, HEADER_SIZE)
    if header is None:
        return None
    length, stream_id, message_type, flags = decode_header(header)
    payload = _read_exactly(sock, length) if length else b""
    if payload is None:
        raise FrameError("connection closed after a frame header")
    return Frame(stream_id, message_type, flags, payload)


#: Calls in flight on one connection; one more is answered RESOURCE_EXHAUSTED (containerd makes a few).
MAX_CALLS_IN_FLIGHT = 256

#: A method: the request's payload in, the response's payload out; raises ``RpcError`` to fail.
Method = Callable[[bytes], bytes]


class Server:
    """Serves ``services`` (full service name -> method name -> :data:`Method`) on unix sockets.

    :meth:`serve` accepts connections until :meth:`close`. Each connection has
    a reader thread; each call runs on a thread of its own and its response
    is written under the connection's write lock, so calls finish in any
    order. A handler's exception other than ``RpcError`` is answered as
    UNKNOWN with its text, never a crash.
    """

    def __init__(self, services: dict[str, dict[str, Method]]) -> None:
        self._services = services
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()  # guarded by _lock

    def serve(self, listener: socket.socket) -> None:
        """Accept and serve connections on ``listener`` (bound and listening) until :meth:`close`."""
        self._listener = listener
        LOG.debug("ttrpc: serving")
        while not self._closed.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                raise
            with self._lock:
                if self._closed.is_set():
                    connection.close()
                    return
                self._connections.add(connection)
            threading.Thread(target=self._serve_connection, args=(connection,), daemon=True,
                             name="ttrpc-connection").start()

    def close(self) -> None:
        """Stop accepting, and shut every connection down (their calls' answers are dropped)."""
        self._closed.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept()
            except OSError:
                pass
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve_connection(self, connection: socket.socket) -> None:
        write_lock = threading.Lock()
        in_flight = threading.BoundedSemaphore(MAX_CALLS_IN_FLIGHT)
        try:
            while True:
                frame = read_frame(connection)
                if frame is None:
                    return
                if frame.type != TYPE_REQUEST:
                    raise FrameError(f"frame type {frame.type} on stream {frame.stream_id}: a server takes requests")
                if frame.stream_id % 2 == 0:
                    raise FrameError(f"request on even stream id {frame.stream_id}")
                request = ttrpc_pb2.Request()
                try:
                    request.ParseFromString(frame.payload)
                except DecodeError as error:
                    raise FrameError(f"request on stream {frame.stream_id} does not parse: {error}") from None
                if not in_flight.acquire(blocking=False):
                    self._answer(connection, write_lock, frame.stream_id, ttrpc_pb2.Response(
                        status=status_pb2.Status(code=RESOURCE_EXHAUSTED, message=(
                            f"more than {MAX_CALLS_IN_FLIGHT} calls in flight on one connection"))))
                    continue
                threading.Thread(target=self._call, args=(connection, write_lock, frame.stream_id, request,
                                                          in_flight), daemon=True,
                                 name=f"ttrpc-{request.method}").start()
        except FrameError as error:
            LOG.warning("ttrpc: dropping a connection: %s", error)
        except OSError:
            pass  # the peer went away
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def _call(self, connection: socket.socket, write_lock: threading.Lock, stream_id: int,
              request: ttrpc_pb2.Request, in_flight: threading.BoundedSemaphore) -> None:
        # With -debug, every call's arrival and answer are in the log: where a shim's time goes.
        LOG.debug("ttrpc: %s called (stream %d)", request.method, stream_id)
        try:
            self._answer(connection, write_lock, stream_id, self._response(request))
        finally:
            in_flight.release()
            LOG.debug("ttrpc: %s answered (stream %d)", request.method, stream_id)

    def _response(self, request: ttrpc_pb2.Request) -> ttrpc_pb2.Response:
        response = ttrpc_pb2.Response()
        method = self._services.get(request.service, {}).get(request.method)
        try:
            if method is None:
                raise RpcError(UNIMPLEMENTED, f"{request.service}/{request.method} is not implemented")
            response.payload = method(request.payload)
        except RpcError as error:
            response.status.CopyFrom(status_pb2.Status(code=error.code, message=error.message))
        except Exception as error:  # a bug in a handler answers the call, it does not kill the shim
            LOG.exception("ttrpc: %s/%s failed", request.service, request.method)
            response.status.CopyFrom(status_pb2.Status(code=UNKNOWN, message=f"{type(error).__name__}: {error}"))
        return response

    @staticmethod
    def _answer(connection: socket.socket, write_lock: threading.Lock, stream_id: int,
                response: ttrpc_pb2.Response) -> None:
        data = response.SerializeToString()
        if len(data) > MAX_MESSAGE_BYTES:
            data = ttrpc_pb2.Response(status=status_pb2.Status(
                code=INTERNAL, message=f"response of {len(data)} bytes is over the ttrpc limit")).SerializeToString()
        try:
            with write_lock:
                connection.sendall(encode_frame(stream_id, TYPE_RESPONSE, data))
        except OSError:
            pass  # the connection is gone; its reader thread cleans up


class Client:
    """A ttRPC client on one unix socket connection; calls are serialized (one in flight)."""

    def __init__(self, path: str, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise
        self._lock = threading.Lock()
        self._next_stream = 1

    def call(self, service: str, method: str, payload: bytes) -> bytes:
        """The response payload; a status other than OK raises ``RpcError``; a broken wire, ``OSError``."""
        with self._lock:
            stream_id = self._next_stream
            self._next_stream += 2
            request = ttrpc_pb2.Request(service=service, method=method, payload=payload)
            self._sock.sendall(encode_frame(stream_id, TYPE_REQUEST, request.SerializeToString()))
            while True:
                frame = read_frame(self._sock)
                if frame is None:
                    raise ConnectionResetError("ttrpc: connection closed before the response")
                if frame.type == TYPE_RESPONSE and frame.stream_id == stream_id:
                    break
        response = ttrpc_pb2.Response()
        try:
            response.ParseFromString(frame.payload)
        except DecodeError as error:
            raise FrameError(f"response does not parse: {error}") from None
        if response.status.code != OK:
            raise RpcError(response.status.code, response.status.message)
        return response.payload

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
