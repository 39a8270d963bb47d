"""The contract's pure parts: errors, state, and spec validation."""

from __future__ import annotations

import pytest

from common import ExecState, ProcessSpec, Rlimit, Stdio, User
from common.errors import (
    ERROR_CLASSES,
    DeadlineExceededError,
    ExecError,
    InvalidArgumentError,
    NotFoundError,
    from_wire,
    invalid_state_error,
)


def test_invalid_state_error_is_hcsshims_message():
    error = invalid_state_error("t1", "e1", ExecState.RUNNING, "start")
    assert str(error) == "exec: 'e1' in task: 't1' is in invalid state: 'running' for start"


@pytest.mark.parametrize("cls", [cls for _, cls in sorted(ERROR_CLASSES.items())])
def test_every_error_class_round_trips_through_its_wire_code(cls):
    wire = cls("some message").to_wire()
    back = from_wire(wire["code"], wire["message"])
    assert type(back) is cls and str(back) == "some message"


def test_unknown_wire_codes_fall_back_to_exec_error():
    error = from_wire("quantum_flux", "odd")
    assert type(error) is ExecError
    assert "odd" in str(error) and "quantum_flux" in str(error)
    assert type(from_wire(42, b"bytes")) is ExecError


def test_deadline_exceeded_is_a_timeout_error():
    assert issubclass(DeadlineExceededError, TimeoutError)
    assert issubclass(NotFoundError, ExecError)


def test_oci_process_round_trip():
    process = {
        "terminal": True,
        "consoleSize": {"height": 40, "width": 120},
        "user": {"uid": 1000, "gid": 1000, "additionalGids": [5, 6], "umask": 18},
        "args": ["sh", "-c", "echo hi"],
        "env": ["PATH=/usr/bin", "TERM=xterm"],
        "cwd": "/srv",
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": True,
    }
    spec = ProcessSpec.from_oci(process)
    assert spec.args == ["sh", "-c", "echo hi"]
    assert spec.console_size == (40, 120)
    assert spec.user == User(1000, 1000, (5, 6), 18)
    assert spec.rlimits == [Rlimit("RLIMIT_NOFILE", 1024, 1024)]
    assert ProcessSpec.from_oci(spec.to_oci()) == spec


@pytest.mark.parametrize(
    ("process", "field"),
    [
        ({"args": []}, "args"),
        ({}, "args"),
        ({"args": "sh"}, "args"),
        ({"args": ["sh", 3]}, "args[1]"),
        ({"args": ["a\x00b"]}, "args[0]"),
        ({"args": ["sh"], "env": ["NOEQUALS"]}, "env[0]"),
        ({"args": ["sh"], "env": ["=value"]}, "env[0]"),
        ({"args": ["sh"], "cwd": "relative"}, "cwd"),
        ({"args": ["sh"], "terminal": "yes"}, "terminal"),
        ({"args": ["sh"], "user": {"uid": -1}}, "user.uid"),
        ({"args": ["sh"], "user": {"uid": 2**32}}, "user.uid"),
        ({"args": ["sh"], "user": {"uid": True}}, "user.uid"),
        ({"args": ["sh"], "user": {"username": "x"}}, "user.username"),
        ({"args": ["sh"], "consoleSize": {"height": -1, "width": 1}}, "consoleSize.height"),
        ({"args": ["sh"], "rlimits": [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}]}, "RLIMIT_BOGUS"),
        ({"args": ["sh"], "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 2, "hard": 1}]}, "soft limit"),
        ({"args": ["sh"], "capabilities": {"bounding": []}}, "capabilities"),
        ({"args": ["x" * (200 * 1024)]}, "args[0]"),
        ("not a dict", "process"),
    ],
)
def test_bad_oci_processes_name_the_field(process, field):
    with pytest.raises(InvalidArgumentError) as raised:
        ProcessSpec.from_oci(process)
    assert field in str(raised.value)


def test_search_path_prefers_the_spec_path():
    assert ProcessSpec(args=["x"], env=["PATH=/a:/b"]).search_path == "/a:/b"
    assert ProcessSpec(args=["x"]).search_path.startswith("/usr/local/sbin")


def test_stdio_validation():
    import io

    with pytest.raises(InvalidArgumentError, match="binary"):
        Stdio(stdout=io.StringIO())
    with pytest.raises(InvalidArgumentError, match="stdin"):
        Stdio(stdin=object())
    assert Stdio(stdout="/tmp/x").path_of("stdout") == "/tmp/x"


@pytest.mark.parametrize("field", ["args", "env", "cwd"])
def test_strings_that_are_not_utf8_are_refused_when_the_spec_is_built(field):
    """One rule on every backend: a surrogate escape (undecodable bytes) has no faithful form in
    the OCI spec's UTF-8 strings, so it is refused with the field named, not half-carried."""
    fields = {"args": ["printf", "%s", "a\udcffb"], "env": ["PATH=/bin"], "cwd": "/"}
    fields[field] = {"args": ["printf", "%s", "a\udcffb"], "env": ["X=\udc80"], "cwd": "/tmp/\udcff"}[field]
    with pytest.raises(InvalidArgumentError, match="is not valid UTF-8 text"):
        ProcessSpec(**fields)


def test_stdio_paths_and_ids_that_are_not_utf8_are_refused():
    from host_proxy.stdio import check_exec_ids

    with pytest.raises(InvalidArgumentError, match=r"stdio.stdout: is not valid UTF-8"):
        Stdio(stdout="/tmp/\udcffout")
    with pytest.raises(InvalidArgumentError, match=r"exec id: is not valid UTF-8"):
        check_exec_ids("t", "e\udcff")
