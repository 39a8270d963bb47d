"""Hostile input over the wire, to a real agent process: it never crashes, never hangs, never leaks,
never answers with an internal error, never runs what did not pass validation, and serves a valid
request right after.

tests/wire/test_malformed.py checks hand-picked bad frames and requests one by one; here hypothesis
generates them (seeded, bounded in CI; see fuzzing.py for longer runs), and the named hostile cases
of the issue get a test each.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from common import ProcessSpec
from common.spec import MAX_ARG_COUNT, MAX_ARGV_ENV_BYTES, MAX_STRING_BYTES
from host_proxy import AgentClient
from tests.reliability.fuzzing import (
    KNOWN_CODES,
    RawSession,
    fuzz_seed,
    fuzz_settings,
    request_like,
    values,
)
from tests.reliability.helpers import assert_clean, footprint, warm_up

pytestmark = pytest.mark.timeout(600)

TASK = "fuzz"
CANARIES = [f"canary-{index}" for index in range(8)]


def canary_spec(marker_dir: str, name: str) -> dict[str, Any]:
    """What a canary runs if it is ever started: it leaves a file named after itself."""
    return ProcessSpec(args=["sh", "-c", f'echo ran > "{marker_dir}/$1"', "sh", name]).to_oci()


def check_answers(received: list[dict[str, Any]], sent: dict[str, Any] | None) -> None:
    """Every reply is a result or an error with a protocol code; never an internal error."""
    for message in received:
        error = message.get("error")
        if error is None:
            continue
        assert isinstance(error, dict) and error.get("code") in KNOWN_CODES, (
            f"agent answered {message!r} to {str(sent)[:300]}")


def frames_for(data: st.DataObject, session: RawSession, marker_dir: str) -> tuple[list[bytes], dict | None]:
    kind = data.draw(st.sampled_from(["request", "request", "request", "value", "bytes", "frames"]), label="kind")
    if kind == "bytes":
        return [data.draw(st.binary(max_size=512), label="frame")], None
    if kind == "frames":
        extra = data.draw(st.lists(st.binary(max_size=64), min_size=1, max_size=3), label="extra frames")
        return [msgpack.packb({"op": "stdin", "h": 1, "q": 0}), *extra], None
    if kind == "value":
        value = data.draw(values, label="value")
        try:
            return [msgpack.packb(value, use_bin_type=True)], value if isinstance(value, dict) else None
        except (ValueError, TypeError, OverflowError):  # not representable in msgpack (a lone surrogate)
            return [repr(value).encode()], None
    message = data.draw(request_like(TASK, CANARIES), label="message")
    if "id" not in message or data.draw(st.integers(0, 4), label="fresh id") > 0:
        session.next_id += 1
        message["id"] = session.next_id
    if message.get("op") == "hello" and data.draw(st.booleans(), label="own session"):
        message["session"] = session.session  # rebinding to itself, or to another session, both fine
    try:
        header = msgpack.packb(message, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):  # not representable in msgpack (a lone surrogate)
        return [repr(message).encode()], None
    frames = [header]
    if data.draw(st.integers(0, 9), label="data frame") == 0:
        frames.append(data.draw(st.binary(max_size=256), label="data"))
    return frames, message


def test_generated_frames_and_requests_never_break_the_agent(ipc_agent, client, tmp_path):
    """Hypothesis-generated traffic on one raw session: random bytes, random msgpack values, and
    requests that are valid but for one to three mutated, removed or added fields (nested ones
    too), with or without data frames. After each message the agent answers a ping; every error
    carries a protocol code (never an internal error); nothing is created by a failed create and
    nothing runs that was not validly created and started (canary execs leave a file when they
    run); afterwards the agent holds no more fds, threads, processes or execs, and runs a real
    exec."""
    marker_dir = str(tmp_path / "ran")
    os.mkdir(marker_dir)
    warm_up(client)
    raw = RawSession(ipc_agent.endpoints[0], "fuzzer")
    baseline = footprint(client, ipc_agent.pid)
    started_ok: set[str] = set()
    created_ok: set[str] = set()
    stats = {"examples": 0, "errors": 0, "results": 0}
    try:
        for name in CANARIES:
            reply = raw.request("create", task=TASK, exec=name, spec=canary_spec(marker_dir, name), stdio={})
            assert "result" in reply, reply

        @fuzz_settings(ci_examples=400)
        @seed(fuzz_seed() or 0)
        @given(data=st.data())
        def one_message(data: st.DataObject) -> None:
            frames, message = frames_for(data, raw, marker_dir)
            raw.send(frames)
            received = raw.sync()
            check_answers(received, message)
            stats["examples"] += 1
            for answer in received:
                stats["errors" if "error" in answer else "results"] += 1
            if message is None or "id" not in message:
                return
            reply = next((answer for answer in received if answer.get("id") == message["id"]), None)
            if reply is None or "result" not in reply:
                return
            if message.get("op") == "create":
                created_ok.add(str(message.get("exec")))
                raw.request("delete", task=message["task"], exec=message["exec"])  # never started
            if message.get("op") == "start" and message.get("task") == TASK:
                started_ok.add(str(message.get("exec")))

        one_message()
        assert ipc_agent.process is not None and ipc_agent.process.poll() is None, "the agent died"
        # Clean up: whatever the fuzz left, running or not.
        for status in client.list_execs():
            attached = client.attach(status.id, status.exec_id)
            attached.force_exit(9)
            attached.delete()
        ran = set(os.listdir(marker_dir))
        assert ran <= started_ok, f"ran without a successful start: {ran - started_ok}"
        assert_clean(client, ipc_agent.pid, baseline)
        made = client.create_exec("after", "fuzz", ProcessSpec(args=["sh", "-c", "exit 7"]))
        made.start()
        assert made.wait(timeout=30).exit_status == 7
        made.delete()
    finally:
        raw.close()
    print(f"over-the-wire fuzz: {stats}, canaries run by valid starts: {sorted(started_ok)}")


# -- the named hostile inputs ------------------------------------------------------------------------


@pytest.fixture
def raw(ipc_agent):
    session = RawSession(ipc_agent.endpoints[0], "hostile")
    try:
        yield session
    finally:
        session.close()


def agent_serves(client: AgentClient) -> None:
    made = client.create_exec("after-hostile", "check", ProcessSpec(args=["sh", "-c", "exit 7"]))
    made.start()
    assert made.wait(timeout=30).exit_status == 7
    made.delete()


def test_huge_args_and_env_at_the_limits(raw, client):
    """Arguments and environment at the validation limits (2 MiB in all, 128 KiB strings, 16384
    entries) are accepted or refused by name — never half-run — and one byte over is refused."""
    big = "a" * MAX_STRING_BYTES
    # 16 env strings of 128 KiB less the 4 bytes of "true": exactly the 2 MiB the spec allows.
    full_env = [f"K{index:02}=" + big[: MAX_STRING_BYTES - 4 - (4 if index == 0 else 0)] for index in range(16)]
    assert len("true") + sum(map(len, full_env)) == MAX_ARGV_ENV_BYTES
    cases = {
        "many-args": ({"args": ["true"] + ["x"] * (MAX_ARG_COUNT - 1)}, True),
        "too-many-args": ({"args": ["true"] + ["x"] * MAX_ARG_COUNT}, False),
        "long-arg": ({"args": ["true", big]}, True),
        "arg-too-long": ({"args": ["true", big + "a"]}, False),
        "two-mib": ({"args": ["true"], "env": full_env}, True),
        "over-two-mib": ({"args": ["true", "a"], "env": full_env}, False),
    }
    for name, (spec, valid) in cases.items():
        reply = raw.request("create", task="huge", exec=name, spec=spec, stdio={})
        if not valid:
            assert reply["error"]["code"] == "invalid_argument", (name, reply)
            continue
        assert "result" in reply, (name, str(reply)[:300])
        started = raw.request("start", task="huge", exec=name)
        # execve may refuse a 2 MiB argument block (E2BIG): a clear error, the exec ends with 1.
        if "error" in started:
            assert started["error"]["code"] == "invalid_argument" and "Argument list too long" in \
                started["error"]["message"], started
        raw.request("force_exit", task="huge", exec=name, status=0)
        assert "result" in raw.request("delete", task="huge", exec=name)
    agent_serves(client)


def test_deeply_nested_values_are_refused_not_crashed_on(raw, client):
    """msgpack nested deeper than its decoder allows is an undecodable header; nesting it does
    allow, in any field, is an invalid argument. Never an internal error, and the agent serves on."""
    too_deep = b"\x81\xa2id\x01" + b"\x91" * 100_000 + b"\xc0"
    raw.send([too_deep])
    answer = raw.sync()[0]
    assert answer["ev"] == "error" and answer["error"]["code"] == "invalid_argument"
    for depth in (10, 100, 500):
        nested: Any = 0
        for _ in range(depth):
            nested = [nested]
        for field in ("task", "spec", "signal", "status", "width", "versions", "execs", "q"):
            raw.next_id += 1
            raw.send([msgpack.packb({"id": raw.next_id, "op": "kill" if field == "signal" else "create",
                                     "task": "deep", "exec": "e", field: nested})])
            check_answers(raw.sync(), {"field": field, "depth": depth})
    agent_serves(client)


def test_a_value_nested_as_deep_as_msgpack_allows_is_an_invalid_argument(raw, client):
    """A signal (or status, or width) nested 1000 lists deep decodes (msgpack allows 1024), and
    the agent must answer invalid_argument. (BUG-9: the error message's repr() of the value raised
    RecursionError, which the agent turned into code 'unknown', 'internal agent error'.)"""
    nested: Any = 0
    for _ in range(1000):
        nested = [nested]
    raw.request("create", task="deep", exec="e", spec={"args": ["sleep", "1000"]}, stdio={})
    raw.request("start", task="deep", exec="e")
    try:
        for op, field in (("kill", "signal"), ("force_exit", "status"), ("resize_pty", "width")):
            reply = raw.request(op, task="deep", exec="e", **{field: nested})
            assert reply.get("error", {}).get("code") in ("invalid_argument", "failed_precondition"), (op, reply)
    finally:
        raw.request("force_exit", task="deep", exec="e", status=0)
        raw.request("delete", task="deep", exec="e")
    agent_serves(client)


@pytest.mark.parametrize(("op", "fields", "code"), [
    ("create", {"spec": {"args": ["true"], "user": {"uid": -1}}}, "invalid_argument"),
    ("create", {"spec": {"args": ["true"], "user": {"uid": 2**32 - 1}}}, "invalid_argument"),
    ("create", {"spec": {"args": ["true"], "user": {"uid": 2**64 - 1, "gid": -(2**63)}}}, "invalid_argument"),
    ("create", {"spec": {"args": ["true"], "user": {"uid": "root"}}}, "invalid_argument"),
    ("create", {"spec": {"args": ["true"], "user": {"uid": 0, "additionalGids": [-5]}}}, "invalid_argument"),
    ("create", {"spec": {"args": ["true"], "consoleSize": {"height": -1, "width": 80}}}, "invalid_argument"),
    ("create", {"spec": {"args": ["true"], "rlimits": [{"type": "RLIMIT_NPROC", "soft": -1, "hard": 1}]}},
     "invalid_argument"),
    ("create", {"spec": {"args": ["true"]}, "drain_timeout": -0.001}, "invalid_argument"),
    ("create", {"spec": {"args": ["true"]}, "drain_timeout": float("nan")}, "invalid_argument"),
    ("create", {"spec": {"args": ["true"]}, "stdio": {}, "paths": ["", "", "x" * 5000]}, "invalid_argument"),
    ("close_io", {"q": -2}, "invalid_argument"),
    ("resize_pty", {"width": -1, "height": 10}, "invalid_argument"),
    ("force_exit", {"status": 256}, "invalid_argument"),
    ("kill", {"signal": -9}, "invalid_argument"),
    ("resync", {"execs": [{"h": -1, "acked": [-1, -1]}]}, "invalid_argument"),
    ("resync", {"execs": [{"h": 1, "acked": [-2, 0]}]}, "invalid_argument"),
    ("fork", {}, "unimplemented"),
    ("", {}, "unimplemented"),
    ("hello\x00", {}, "unimplemented"),
])
def test_invalid_ids_sizes_and_ops_are_refused_by_name(raw, client, op, fields, code):
    """Invalid uids, negative sizes, out-of-range statuses and unknown ops: refused with the
    protocol's error code, nothing created, and the agent serves on."""
    raw.request("create", task="named", exec="target", spec={"args": ["sleep", "1000"], "terminal": True},
                stdio={})
    raw.request("start", task="named", exec="target")
    base = {"task": "named", "exec": "target" if op != "create" else "new", "stdio": {}}
    reply = raw.request(op, **{**base, **fields})
    assert reply.get("error", {}).get("code") == code, reply
    assert {status.exec_id for status in client.list_execs()} == {"target"}
    raw.request("force_exit", task="named", exec="target", status=0)
    raw.request("delete", task="named", exec="target")
    agent_serves(client)


def test_replayed_request_ids_are_answered_again_never_redone(ipc_agent, raw, client, tmp_path):
    """A start replayed after it ran gets the same reply and does not run the process again; a
    delete replayed after the id was reused answers the old reply (it does not delete the new exec);
    an id older than the reply cache is refused; the same id in another session is its own request."""
    counter = tmp_path / "runs"
    raw.request("create", task="replay", exec="once", spec={"args": ["sh", "-c", f"echo run >> {counter}"]},
                stdio={})
    raw.next_id += 1
    start = {"id": raw.next_id, "op": "start", "task": "replay", "exec": "once"}
    first = _ask(raw, start)
    assert "result" in first
    raw.wait_event("exited")  # the session's only exec: the agent has recorded its exit
    assert _ask(raw, start) == first  # answered again from the cache...
    assert counter.read_text() == "run\n"  # ...and not run twice
    raw.next_id += 1
    delete = {"id": raw.next_id, "op": "delete", "task": "replay", "exec": "once"}
    assert "result" in _ask(raw, delete)
    raw.request("create", task="replay", exec="once", spec={"args": ["sleep", "1000"]}, stdio={})
    assert _ask(raw, delete)["result"]["exit_status"] == 0  # the old reply...
    assert [status.exec_id for status in client.list_execs()] == ["once"]  # ...not a delete of the new exec
    for _ in range(1100):  # push the start out of the reply cache
        raw.request("ping")
    old = _ask(raw, start)
    assert old["error"]["code"] == "failed_precondition" and "too old" in old["error"]["message"]
    other = RawSession(ipc_agent.endpoints[0], "another")
    try:
        again = _ask(other, {**start, "exec": "never-created"})
        assert again["error"]["code"] == "not_found"  # done in that session, not a replay of this one
    finally:
        other.close()
    raw.request("delete", task="replay", exec="once")
    agent_serves(client)


def _ask(session: RawSession, header: dict[str, Any]) -> dict[str, Any]:
    session.send([msgpack.packb(header)])
    return session.receive_until(header["id"])[-1]
