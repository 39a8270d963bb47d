"""The closed set of errors every uvmexec backend raises.

One exception class per wire code (as gRPC status codes, which containerd and
hcsshim map their errors to). The agent sends ``(code, message)``; the host
turns it back into the same class with the same message through
:func:`from_wire`, so a ``ProxiedExec`` raises exactly what a ``LocalExec``
raises. Unknown codes fall back to :class:`ExecError` so a newer agent never
crashes an older client.
"""

from __future__ import annotations

import reprlib

_SHORT = reprlib.Repr()
_SHORT.maxlevel = 2
_SHORT.maxstring = 60
_SHORT.maxlong = 40
_SHORT.maxother = 60
for _attribute in ("maxlist", "maxtuple", "maxdict", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_SHORT, _attribute, 4)


def describe(value: object) -> str:
    """A short, bounded picture of a value a peer sent, for error messages.

    Error messages travel back and may be cached, so they never grow with
    the input, and a value nested as deep as msgpack allows cannot make
    ``repr`` recurse.
    """
    try:
        text = _SHORT.repr(value)
    except Exception:  # a hostile object's own repr: say only what it is
        return f"<{type(value).__name__}>"
    return text if len(text) <= 100 else text[:97] + "..."


class ExecError(Exception):
    """Base of every error the exec contract raises. ``code`` is its wire code.

    ``from_peer`` is True when the agent raised the error and it came back over
    the wire (:func:`from_wire`); False when this side raised it — for an
    ``UnavailableError``, that the request got no answer at all.
    """

    code = "unknown"
    from_peer = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class NotFoundError(ExecError):
    """The exec does not exist (never created, already exited for kill, or deleted)."""

    code = "not_found"


class FailedPreconditionError(ExecError):
    """The operation is not allowed in the exec's current state."""

    code = "failed_precondition"


class InvalidArgumentError(ExecError, ValueError):
    """A request, spec or argument is malformed; the message names the field."""

    code = "invalid_argument"


class AlreadyExistsError(ExecError):
    """An exec with this (task id, exec id) is already live on this client."""

    code = "already_exists"


class UnavailableError(ExecError, ConnectionError):
    """The agent cannot be reached, refused us, or went away."""

    code = "unavailable"


class AuthenticationError(UnavailableError):
    """The peer refused our key, or its own key is not the one we trust (CURVE or SSH).

    Raised on the host at connect time; on the wire it would travel as
    ``unavailable``, so it adds no wire code.
    """


class DeadlineExceededError(ExecError, TimeoutError):
    """A deadline passed before the operation completed (also a ``TimeoutError``)."""

    code = "deadline_exceeded"


class UnimplementedError(ExecError, NotImplementedError):
    """The peer does not implement the operation or protocol version asked for."""

    code = "unimplemented"


ERROR_CLASSES: dict[str, type[ExecError]] = {
    cls.code: cls
    for cls in (
        ExecError,
        NotFoundError,
        FailedPreconditionError,
        InvalidArgumentError,
        AlreadyExistsError,
        UnavailableError,
        DeadlineExceededError,
        UnimplementedError,
    )
}


def from_wire(code: object, message: object) -> ExecError:
    """Rebuild the exception an agent reported; unknown codes become :class:`ExecError`."""
    text = message if isinstance(message, str) else repr(message)
    cls = ERROR_CLASSES.get(code, ExecError) if isinstance(code, str) else ExecError
    if cls is ExecError and code != ExecError.code:
        text = f"{text} (agent error code {describe(code)})"
    error = cls(text)
    error.from_peer = True
    return error


def invalid_state_error(tid: str, eid: str, state: object, op: str) -> FailedPreconditionError:
    """hcsshim's invalid-state error (``newExecInvalidStateError``), word for word."""
    state_text = getattr(state, "value", state)
    return FailedPreconditionError(
        f"exec: '{eid}' in task: '{tid}' is in invalid state: '{state_text}' for {op}"
    )


def not_found_error(tid: str, eid: str) -> NotFoundError:
    return NotFoundError(f"exec: '{eid}' in task: '{tid}' not found")


def already_exists_error(tid: str, eid: str) -> AlreadyExistsError:
    return AlreadyExistsError(f"exec: '{eid}' in task: '{tid}' already exists")


def task_not_found_error(tid: str) -> NotFoundError:
    """hcsshim's message for a task id nobody created (or deleted)."""
    return NotFoundError(f"task with id: '{tid}' not found")


def not_a_tty_error(tid: str, eid: str) -> FailedPreconditionError:
    return FailedPreconditionError(f"exec: '{eid}' in task: '{tid}' is not a tty")
