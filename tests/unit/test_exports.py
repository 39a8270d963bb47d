"""The public names CONTRACT.md lists ("The types") are importable from where it says."""

from __future__ import annotations


def test_common_exports():
    import common

    for name in ("Exec", "ExecState", "ExecStatus", "ProcessSpec", "Stdio", "User", "Rlimit",
                 "ExecStarted", "ExecExited", "Mount", "ProcessInfo", "Task"):
        assert name in common.__all__ and hasattr(common, name), name


def test_error_exports():
    from common import errors

    for name in ("ExecError", "NotFoundError", "FailedPreconditionError", "InvalidArgumentError",
                 "AlreadyExistsError", "UnavailableError", "DeadlineExceededError", "UnimplementedError",
                 "invalid_state_error", "from_wire"):
        assert hasattr(errors, name), name
    assert issubclass(errors.DeadlineExceededError, TimeoutError)


def test_host_proxy_exports():
    import host_proxy

    for name in ("LocalExec", "LocalTask", "AgentClient", "ProxiedExec", "ProxiedTask"):
        assert name in host_proxy.__all__ and hasattr(host_proxy, name), name
