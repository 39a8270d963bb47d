"""Hypothesis strategies for hostile input, and a raw ZeroMQ session that speaks the protocol by hand.

The fuzz tests are bounded and seeded in CI (``derandomize``). For a longer
run set ``UVMEXEC_FUZZ_EXAMPLES`` (examples per property) and
``UVMEXEC_FUZZ_SEED`` (a different seed per run); ``soak.py`` does both.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import zmq
import zmq.auth
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.support.agent import Keys

#: Error codes the protocol defines; "unknown" is what an exception escaping validation becomes.
KNOWN_CODES = {"not_found", "failed_precondition", "invalid_argument", "already_exists", "unavailable",
               "deadline_exceeded", "unimplemented"}

REQUEST_OPS = ["ping", "create", "start", "kill", "resize_pty", "close_io", "status", "force_exit", "delete", "list",
               "stats", "attach", "resync", "hello", "create_task", "pids", "task_stats", "task_kill"]
NOTIFICATION_OPS = ["ack", "stdin", "bye"]
FIELDS = ["id", "op", "task", "exec", "spec", "bundle", "stdio", "paths", "drain_timeout", "signal", "all", "width",
          "height", "q", "status", "execs", "h", "s", "acked", "versions", "session", "client", "rootfs", "in_task",
          "create_init"]


def fuzz_settings(ci_examples: int, **overrides: Any) -> settings:
    """Seeded and bounded in CI; longer and reseeded when UVMEXEC_FUZZ_EXAMPLES/SEED say so."""
    examples = int(os.environ.get("UVMEXEC_FUZZ_EXAMPLES", "0")) or ci_examples
    seeded = "UVMEXEC_FUZZ_SEED" not in os.environ
    options: dict[str, Any] = {
        "max_examples": examples,
        "derandomize": seeded,
        "deadline": None,
        "database": None,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        "print_blob": True,
    }
    options.update(overrides)
    return settings(**options)


def fuzz_seed() -> int | None:
    value = os.environ.get("UVMEXEC_FUZZ_SEED")
    return int(value) if value else None


# -- values --------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 65535, 65536, 255, 256]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(["", "\x00", "t", "e", "../..", "/", "\udcff", "RLIMIT_NOFILE", "exited", "running"]),
    st.binary(max_size=40),
)

#: Any msgpack-able value, nested a few levels.
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.dictionaries(st.text(max_size=12) | st.sampled_from(FIELDS), inner, max_size=6),
    ),
    max_leaves=12,
)


def _packable(value: Any) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


# -- valid messages to start from ------------------------------------------------------------------


def valid_spec(args: list[str] | None = None) -> dict[str, Any]:
    return {
        "args": args or ["true"],
        "env": ["PATH=/usr/bin:/bin", "A=1"],
        "cwd": "/",
        "terminal": False,
        "user": {"uid": 0, "gid": 0, "additionalGids": [1]},
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}],
        "noNewPrivileges": False,
    }


def valid_status() -> dict[str, Any]:
    return {"task": "t", "exec": "e", "bundle": "", "pid": 10, "state": "exited", "stdin": "", "stdout": "/o",
            "stderr": "", "terminal": False, "exit_status": 3, "exited_at": 1_700_000_000_000_000}


def templates(task: str, exec_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Valid requests and notifications about the execs in ``exec_ids`` (ids are set by the caller)."""
    exec_id = st.sampled_from(exec_ids)
    ids = st.builds(lambda e: {"task": task, "exec": e}, exec_id)
    return st.one_of(
        st.just({"op": "ping"}),
        st.just({"op": "list"}),
        st.just({"op": "stats"}),
        st.builds(lambda e: {"op": "create", "task": task, "exec": f"new-{e}", "spec": valid_spec(),
                             "bundle": "/b", "stdio": {"stdin": False, "stdout": True, "stderr": True},
                             "paths": ["", "/o", "/e"], "drain_timeout": 1.0}, exec_id),
        ids.map(lambda m: {"op": "start", **m}),
        ids.map(lambda m: {"op": "kill", "signal": 15, "all": False, **m}),
        ids.map(lambda m: {"op": "resize_pty", "width": 80, "height": 24, **m}),
        ids.map(lambda m: {"op": "close_io", "q": -1, **m}),
        ids.map(lambda m: {"op": "status", **m}),
        ids.map(lambda m: {"op": "force_exit", "status": 3, **m}),
        ids.map(lambda m: {"op": "attach", **m}),
        st.just({"op": "resync", "execs": [{"h": 1, "acked": [-1, -1]}]}),
        st.just({"op": "ack", "h": 1, "s": 1, "q": 0}),
        st.just({"op": "stdin", "h": 1, "q": 0}),
    )


def _paths(message: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into nested dicts and lists of ``message``."""
    found = []
    if isinstance(message, dict):
        for key, value in message.items():
            found.append(prefix + (key,))
            found.extend(_paths(value, prefix + (key,)))
    elif isinstance(message, list):
        for index, value in enumerate(message):
            found.append(prefix + (index,))
            found.extend(_paths(value, prefix + (index,)))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid message with one to three fields replaced, removed or added (nested ones too)."""
    message = msgpack.unpackb(msgpack.packb(draw(base)), strict_map_key=False)  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(message)
        action = draw(st.sampled_from(["replace", "replace", "remove", "add"]))
        if action == "add" or not paths:
            message[draw(st.sampled_from(FIELDS) | st.text(max_size=8))] = draw(values)
            continue
        path = draw(st.sampled_from(paths))
        parent = message
        for key in path[:-1]:
            parent = parent[key]
        if action == "remove":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(values)
    return message


def request_like(task: str, exec_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Maps that look like requests: a known (or junk) op and known field names with any values."""
    return st.one_of(
        templates(task, exec_ids),  # valid ones too: the canaries must run when validly started
        mutated(templates(task, exec_ids)),
        mutated(templates(task, exec_ids)),
        st.fixed_dictionaries(
            {"op": st.sampled_from(REQUEST_OPS + NOTIFICATION_OPS) | scalars},
            optional={name: values for name in FIELDS if name not in ("id", "op")},
        ),
    )


# -- a protocol session by hand --------------------------------------------------------------------


class RawSession:
    """A DEALER that says hello and then sends whatever it is given.

    ``sync()`` sends a ping and collects everything up to its reply: ZeroMQ
    keeps the order of one connection, so every answer to what came before
    has arrived by then.
    """

    def __init__(self, endpoint: str, session: str, *, keys: Keys | None = None) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTING_ID, b"\x01" + os.urandom(15))
        if keys is not None:  # CURVE, as an authorized client
            public, secret = zmq.auth.load_certificate(keys.client_secret)
            assert secret is not None
            self.socket.setsockopt(zmq.CURVE_SERVERKEY, zmq.auth.load_certificate(keys.agent_public)[0])
            self.socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
            self.socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.socket.connect(endpoint)
        self.session = session
        self.next_id = 1_000_000_000_000
        self.hello()

    def send(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        self.next_id += 1
        request_id = self.next_id
        self.send([msgpack.packb({"id": request_id, "op": op, **fields})])
        for message in self.receive_until(request_id):
            if message.get("id") == request_id:
                return message
        raise AssertionError("unreachable")

    def hello(self) -> dict[str, Any]:
        reply = self.request("hello", versions=[1], session=self.session)
        assert "result" in reply, reply
        return reply

    def receive_until(self, request_id: int, timeout_ms: int = 20000) -> list[dict[str, Any]]:
        """Every message up to (and with) the reply to ``request_id``."""
        received = []
        while True:
            assert self.socket.poll(timeout_ms), f"no answer from the agent within {timeout_ms} ms"
            frames = self.socket.recv_multipart()
            message = msgpack.unpackb(frames[0], strict_map_key=False)  # no size limit: we check what comes
            received.append(message)
            if message.get("id") == request_id:
                return received

    def wait_event(self, event: str, timeout_ms: int = 20000) -> dict[str, Any]:
        """The next event named ``event`` (``exited``, ``started``, …), read as it arrives."""
        while True:
            assert self.socket.poll(timeout_ms), f"no {event!r} event from the agent within {timeout_ms} ms"
            message = msgpack.unpackb(self.socket.recv_multipart()[0], strict_map_key=False)
            if message.get("ev") == event:
                return message

    def sync(self) -> list[dict[str, Any]]:
        """Everything the agent sent since the last sync, ending with the ping's reply."""
        self.next_id += 1
        request_id = self.next_id
        self.send([msgpack.packb({"id": request_id, "op": "ping"})])
        received = self.receive_until(request_id)
        if received[-1].get("retry"):  # the fuzz said "bye": this connection has no session now
            self.hello()
        return received

    def close(self) -> None:
        self.socket.close()
        self.context.term()
