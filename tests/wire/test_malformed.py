"""Hostile and broken input through a raw socket: clear errors, and the agent keeps serving."""

from __future__ import annotations

import msgpack
import pytest
import zmq

from common import ProcessSpec
from host_proxy import AgentClient

pytestmark = pytest.mark.timeout(120)


class RawClient:
    """A bare DEALER speaking (or not) the protocol by hand."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.next_id = 100
        self.events: list[dict] = []

    def send(self, *frames: bytes) -> None:
        self.socket.send_multipart(list(frames))

    def request(self, op: str, **fields) -> dict:
        """The reply to one request (events that come first, such as an exit, are set aside)."""
        self.next_id += 1
        self.send(msgpack.packb({"id": self.next_id, "op": op, **fields}))
        while True:
            answer = self.receive()
            if answer.get("id") == self.next_id or answer.get("ev") == "error":
                return answer
            self.events.append(answer)

    def ask(self, header: dict, *extra: bytes) -> dict:
        self.send(msgpack.packb(header), *extra)
        return self.receive()

    def receive(self, timeout_ms: int = 10000) -> dict:
        assert self.socket.poll(timeout_ms), "no answer from the agent"
        return msgpack.unpackb(self.socket.recv_multipart()[0])

    def hello(self) -> dict:
        return self.request("hello", versions=[1], session="raw-" + str(id(self)))

    def close(self) -> None:
        self.socket.close()
        self.context.term()


@pytest.fixture
def raw(ipc_agent):
    client = RawClient(ipc_agent.endpoints[0])
    try:
        yield client
    finally:
        client.close()


def _agent_still_serves(ipc_agent) -> None:
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as client:
        made = client.create_exec("after-abuse", "check", ProcessSpec(args=["sh", "-c", "exit 7"]))
        made.start()
        assert made.wait(timeout=30).exit_status == 7
        made.delete()


@pytest.mark.parametrize(
    "frame",
    [b"\xc1", b"", b"\x92\x01", msgpack.packb([1, 2, 3]), msgpack.packb("text"), b"\x91" * 100000 + b"\xc0",
     msgpack.packb({1: 2}), b"\xd6\xff\x00\x00\x00\x01", b"\xa2\xff\xfe"],
    ids=["reserved-byte", "empty", "truncated", "array", "string", "deep-nesting", "int-key", "ext-type",
         "bad-utf8"],
)
def test_undecodable_headers_get_an_error_event(raw, ipc_agent, frame):
    raw.send(frame)
    answer = raw.receive()
    assert answer["ev"] == "error" and answer["error"]["code"] == "invalid_argument"
    _agent_still_serves(ipc_agent)


def test_too_many_frames_and_oversized_data_frames(raw, ipc_agent):
    raw.send(msgpack.packb({"op": "ping", "id": 1}), b"a", b"b", b"c")
    assert raw.receive()["error"]["code"] == "invalid_argument"
    raw.send(msgpack.packb({"op": "stdin", "h": 1, "q": 0}), b"x" * (300 * 1024))
    assert "over the limit" in raw.receive()["error"]["message"]


def test_a_frame_over_the_message_limit_drops_that_connection_only(raw, ipc_agent):
    raw.send(b"\x00" * (6 * 1024 * 1024))
    assert raw.socket.poll(500) == 0, "nothing is answered to an oversized message"
    _agent_still_serves(ipc_agent)


def test_requests_before_hello_are_refused(raw):
    answer = raw.request("status", task="t", exec="e")
    assert answer["error"]["code"] == "failed_precondition"
    assert "hello" in answer["error"]["message"]


def test_bad_ids_and_unknown_ops(raw):
    raw.hello()
    assert raw.ask({"id": -5, "op": "ping"})["ev"] == "error"
    assert raw.ask({"id": "seven", "op": "ping"})["ev"] == "error"
    assert raw.request("launch_missiles")["error"]["code"] == "unimplemented"
    assert raw.request(None)["error"]["code"] == "unimplemented"  # type: ignore[arg-type]


def test_hello_version_negotiation(raw):
    answer = raw.request("hello", versions=[99, 100], session="x")
    assert answer["error"]["code"] == "unimplemented"
    assert "[1]" in answer["error"]["message"]
    assert raw.request("hello", versions="1", session="x")["error"]["code"] == "invalid_argument"
    assert raw.request("hello", versions=[1], session=7)["error"]["code"] == "invalid_argument"
    assert raw.hello()["result"]["version"] == 1


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"task": "", "exec": "e"}, "task"),
        ({"task": "t" * 300, "exec": "e"}, "task"),
        ({"task": "t", "exec": 5}, "exec"),
        ({"task": "t", "exec": "e", "spec": "sh"}, "spec"),
        ({"task": "t", "exec": "e", "spec": {"args": []}}, "args"),
        ({"task": "t", "exec": "e", "spec": {"args": ["x"] * 20000}}, "args"),
        ({"task": "t", "exec": "e", "spec": {"args": ["true"], "user": {"uid": -1}}}, "user.uid"),
        ({"task": "t", "exec": "e", "spec": {"args": ["true"], "env": ["A" * 200000 + "=1"]}}, "env[0]"),
        ({"task": "t", "exec": "e", "spec": {"args": ["true"]}, "stdio": []}, "stdio"),
        ({"task": "t", "exec": "e", "spec": {"args": ["true"]}, "stdio": {"stdin": "yes"}}, "stdin"),
        ({"task": "t", "exec": "e", "spec": {"args": ["true"]}, "stdio": {}, "drain_timeout": -1}, "drain_timeout"),
        ({"task": "t", "exec": "e", "spec": {"args": ["true"]}, "stdio": {}, "paths": ["a"]}, "paths"),
    ],
)
def test_invalid_create_requests_name_the_field(raw, ipc_agent, fields, named):
    raw.hello()
    answer = raw.request("create", **fields)
    assert answer["error"]["code"] == "invalid_argument", answer
    assert named in answer["error"]["message"]


def test_invalid_operation_arguments(raw):
    raw.hello()
    assert raw.request("create", task="t", exec="e", spec={"args": ["sleep", "1000"]}, stdio={})["result"]["h"]
    assert raw.request("start", task="t", exec="e")["result"]["pid"] > 0
    for fields in ({"signal": "TERM"}, {"signal": 0}, {"signal": 2**64 - 1}, {"signal": 9, "all": "yes"}):
        assert raw.request("kill", task="t", exec="e", **fields)["error"]["code"] == "invalid_argument"
    assert raw.request("resize_pty", task="t", exec="e", width=1, height=1)["error"]["code"] == "failed_precondition"
    assert raw.request("force_exit", task="t", exec="e", status=-3)["error"]["code"] == "invalid_argument"
    assert raw.request("status", task="t", exec="nope")["error"] == {
        "code": "not_found", "message": "exec: 'nope' in task: 't' not found"}
    assert raw.request("force_exit", task="t", exec="e", status=9)["result"] == {}
    assert raw.request("delete", task="t", exec="e")["result"]["exit_status"] == 9


def test_a_replayed_request_id_is_answered_again_not_redone(raw):
    raw.hello()
    create = {"id": 5000, "op": "create", "task": "replay", "exec": "e", "spec": {"args": ["true"]}, "stdio": {}}
    first = raw.ask(create)
    second = raw.ask(create)
    assert first == second and "result" in first, "the same reply, not AlreadyExists"
    fresh = raw.ask({**create, "id": 5001})
    assert fresh["error"]["code"] == "already_exists"
    raw.request("delete", task="replay", exec="e")


def test_bad_notifications_are_dropped_quietly(raw, ipc_agent):
    raw.hello()
    for header in ({"op": "ack", "h": "x", "s": 1, "q": 0}, {"op": "ack", "h": 2**64 - 1},
                   {"op": "stdin", "h": 1, "q": -4}, {"op": "nonsense"}, {"op": "ack", "h": 999, "s": 1, "q": 5}):
        raw.send(msgpack.packb(header))
    assert raw.request("ping")["result"] == {}
    _agent_still_serves(ipc_agent)
