"""The wire codec and the request validators, fed anything: only InvalidArgumentError comes out.

These run in-process (thousands of examples a second), seeded and bounded in
CI; ``UVMEXEC_FUZZ_EXAMPLES``/``UVMEXEC_FUZZ_SEED`` scale them up (soak.py).
atheris_harness.py drives the same targets with coverage-guided bytes.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, seed
from hypothesis import strategies as st

from common import ProcessSpec, protocol
from common.errors import ERROR_CLASSES, ExecError, InvalidArgumentError, from_wire
from common.rules import check_drain_timeout, check_exit_status, check_signal
from common.rules import check_terminal_size as check_terminal_dims
from tests.reliability.fuzzing import fuzz_seed, fuzz_settings, mutated, valid_spec, valid_status, values

pytestmark = pytest.mark.timeout(300)

#: The latest exited_at a Python datetime can hold (year 9999), in µs since the epoch.
_max_wire = protocol.datetime_to_wire(datetime.datetime.max.replace(tzinfo=datetime.UTC))
assert _max_wire is not None
MAX_WIRE_DATETIME: int = _max_wire


def only_invalid_argument(target: Callable[[Any], Any], value: Any) -> None:
    try:
        target(value)
    except InvalidArgumentError as error:
        assert isinstance(error.message, str) and error.message
    # Anything else propagates and fails the property.


@fuzz_settings(ci_examples=2000)
@seed(fuzz_seed() or 1)
@given(frame=st.binary(max_size=4096) | st.builds(lambda value: msgpack.packb(value, use_bin_type=True),
                                                   values.filter(lambda v: _packs(v))))
def test_unpack_takes_any_bytes(frame: bytes) -> None:
    """Any frame decodes to a map or raises InvalidArgumentError: no other exception, no hang."""
    try:
        header = protocol.unpack(frame)
    except InvalidArgumentError:
        return
    assert isinstance(header, dict)


def _packs(value: Any) -> bool:
    try:
        msgpack.packb(value, use_bin_type=True)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def create_request() -> dict[str, Any]:
    return {"task": "t", "exec": "e", "spec": valid_spec(), "bundle": "/b",
            "stdio": {"stdin": True, "stdout": True, "stderr": False}, "paths": ["/i", "/o", ""],
            "drain_timeout": 2.5}


@fuzz_settings(ci_examples=500)
@seed(fuzz_seed() or 2)
@given(message=mutated(st.just(create_request())) | values)
def test_create_validation_raises_only_invalid_argument(message: Any) -> None:
    """CreateArgs (and through it ProcessSpec.from_oci, User, Rlimit) on mutated create requests
    and on arbitrary values."""
    if not isinstance(message, dict):
        with pytest.raises(InvalidArgumentError):
            protocol.CreateArgs({"task": "t", "exec": "e", "spec": message, "stdio": {}})
        return
    only_invalid_argument(protocol.CreateArgs, message)


@fuzz_settings(ci_examples=500)
@seed(fuzz_seed() or 3)
@given(process=mutated(st.just(valid_spec())) | values)
def test_process_spec_from_oci_raises_only_invalid_argument(process: Any) -> None:
    """Whatever it accepts round-trips through to_oci()."""
    try:
        spec = ProcessSpec.from_oci(process)
    except InvalidArgumentError:
        return
    assert ProcessSpec.from_oci(spec.to_oci()) == spec


@fuzz_settings(ci_examples=500)
@seed(fuzz_seed() or 4)
@given(status=mutated(st.just(valid_status())) | values)
def test_status_from_wire_raises_only_invalid_argument(status: Any) -> None:
    """The host decodes the agent's status maps with it: a hostile agent must not get anything
    but InvalidArgumentError out of it."""
    try:
        protocol.status_from_wire(status)
    except InvalidArgumentError:
        return


def test_an_exit_time_past_year_9999_is_an_invalid_argument() -> None:
    """A datetime ends at year 9999 (about 2.5e17 µs): a later time must be refused by name, not
    raise OverflowError (on the host the exit record's "at" goes through the same function in
    RemoteExec._finalize, whose task would die and never release the exec's waiters; BUG-10)."""
    with pytest.raises(InvalidArgumentError):
        protocol.datetime_from_wire(MAX_WIRE_DATETIME + 1)
    with pytest.raises(InvalidArgumentError):
        protocol.status_from_wire({**valid_status(), "exited_at": 2**62})


FIELD_GETTERS: list[Callable[[dict[str, Any]], Any]] = [
    lambda m: protocol.get_int(m, "f", -1, 10),
    lambda m: protocol.get_int(m, "f", 0, protocol.MAX_SEQ, default=5),
    lambda m: protocol.get_str(m, "f", 16),
    lambda m: protocol.get_str(m, "f", 16, allow_empty=True, default=""),
    lambda m: protocol.get_bool(m, "f"),
    lambda m: protocol.get_number(m, "f", 0.0, 3600.0, 2.0),
    lambda m: protocol.get_map(m, "f"),
    lambda m: protocol.get_list(m, "f", 3),
    lambda m: protocol.get_seqs(m, "f"),
    protocol.get_exec_ids,
    lambda m: protocol.choose_version(m.get("f")),
    lambda m: protocol.datetime_from_wire(m.get("f")),
    lambda m: check_signal(m.get("f")),
    lambda m: check_exit_status(m.get("f")),
    lambda m: check_terminal_dims(m.get("f"), m.get("width")),
    lambda m: check_drain_timeout(m.get("f")),
]


@fuzz_settings(ci_examples=500)
@seed(fuzz_seed() or 5)
@given(getter=st.sampled_from(FIELD_GETTERS),
       message=st.dictionaries(st.sampled_from(["f", "task", "exec", "width", "height", "x"]), values, max_size=4))
def test_field_getters_raise_only_invalid_argument(getter: Callable[[dict[str, Any]], Any],
                                                   message: dict[str, Any]) -> None:
    """The get_* helpers, version choice and the supervisor's signal/status/size checks."""
    only_invalid_argument(getter, message)


@fuzz_settings(ci_examples=300)
@seed(fuzz_seed() or 6)
@given(code=values, message=values)
def test_errors_from_the_wire_are_always_exec_errors(code: Any, message: Any) -> None:
    """Whatever code and message an agent sends, the host raises an ExecError subclass."""
    error = from_wire(code, message)
    assert isinstance(error, ExecError)
    if isinstance(code, str) and code in ERROR_CLASSES:
        assert type(error) is ERROR_CLASSES[code]


@pytest.mark.parametrize("check", [
    lambda value: check_signal(value),
    lambda value: check_exit_status(value),
    lambda value: check_terminal_dims(value, 1),
    lambda value: protocol.CreateArgs({"task": "t", "exec": "e", "stdio": {},
                                       "spec": {"args": ["true"], "rlimits": [{"type": value, "soft": 1, "hard": 1}]}}),
], ids=["signal", "exit-status", "terminal-size", "rlimit-type"])
def test_error_messages_are_bounded_whatever_the_input(check: Callable[[Any], Any]) -> None:
    """An error names the field and shows a bounded excerpt of the bad value. (BUG-8: check_signal,
    check_exit_status, check_terminal_size and Rlimit put repr() of the whole value in the message:
    a 4 MiB string of control characters became a 16 MiB reply, kept in the session's reply cache,
    so a client could make the agent hold gigabytes; see test_security.py.)"""
    with pytest.raises(InvalidArgumentError) as raised:
        check("\x01" * 100_000)
    assert len(raised.value.message) <= 1024, f"a {len(raised.value.message)}-character error message"
