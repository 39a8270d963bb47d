"""The wire codec: message shapes, limits, and validation. No I/O.

Every message is a ZeroMQ multipart message whose first frame is a msgpack
map (the header) and whose optional second frame is raw bytes (stdin or
output data, sent without copying). PROTOCOL.md in the project root is the
reference; this module is its executable form, shared by host and agent.

Decoding never trusts the peer: sizes are capped in the msgpack decoder
itself, every field is type- and range-checked, and any violation raises
:class:`~common.errors.InvalidArgumentError` naming the field.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence, Sized
from typing import Any

import msgpack

from .errors import ExecError, InvalidArgumentError, describe, from_wire
from .rules import MAX_DRAIN_TIMEOUT
from .spec import MAX_ID_BYTES, MAX_PATH_BYTES, ProcessSpec, check_int, check_text
from .state import ExecState, ExecStatus
from .task import MAX_MOUNT_OPTIONS, MAX_MOUNT_TYPE_BYTES, MAX_ROOTFS_MOUNTS, Mount, ProcessInfo

#: Protocol versions this code speaks, newest last.
VERSIONS = (1,)

#: Largest header frame accepted (a full spec with 2 MiB of args/env fits).
MAX_HEADER_BYTES = 4 * 1024 * 1024
#: Largest data frame (stdin or output chunk).
MAX_CHUNK_BYTES = 256 * 1024
#: The largest frame of any message (a header): ZMQ_MAXMSGSIZE on both sides' sockets, so a peer
#: sending a bigger frame is disconnected by libzmq before it allocates it.
MAX_FRAME_BYTES = MAX_HEADER_BYTES
#: Frames in one message: a header and at most one data frame.
MAX_FRAMES = 2
#: The most one message may carry. libzmq bounds frames, not messages, and hands a multipart
#: message over only once all of it arrived: both sides check this as soon as they receive it.
MAX_MESSAGE_BYTES = MAX_HEADER_BYTES + MAX_CHUNK_BYTES
#: The largest event header an agent may send (events carry a handle, numbers and a short message).
MAX_EVENT_BYTES = 64 * 1024
#: Bytes of one stream that may be sent and not yet acknowledged.
DEFAULT_WINDOW = 4 * 1024 * 1024
#: The largest window an agent may announce in ``hello``: a host refuses an agent asking for more.
MAX_WINDOW = DEFAULT_WINDOW
MAX_REQUEST_ID = 2**63 - 1
MAX_SEQ = 2**63 - 1
MAX_HANDLE = 2**63 - 1
MAX_LIST_ENTRIES = 100_000

STDOUT, STDERR = 1, 2
STREAMS = (STDOUT, STDERR)

_UNPACK_LIMITS = {
    "raw": False,
    "strict_map_key": True,
    "use_list": True,
    "max_str_len": MAX_HEADER_BYTES,
    "max_bin_len": MAX_HEADER_BYTES,
    "max_array_len": MAX_LIST_ENTRIES,
    "max_map_len": 4096,
    "max_ext_len": 0,
}


def message_problem(frames: Sequence[Sized]) -> str | None:
    """What makes a received message (its frames, without a ROUTER's routing id) larger than the
    protocol allows, or None: more than a header and one data frame, a data frame over
    :data:`MAX_CHUNK_BYTES`, more than :data:`MAX_MESSAGE_BYTES` in all."""
    if not 1 <= len(frames) <= MAX_FRAMES:
        total = sum(len(frame) for frame in frames)
        return f"a message of {len(frames)} frames ({total} bytes; the limit is {MAX_FRAMES} frames)"
    if len(frames) == 2 and len(frames[1]) > MAX_CHUNK_BYTES:
        return f"a data frame of {len(frames[1])} bytes (the limit is {MAX_CHUNK_BYTES})"
    if len(frames[0]) > MAX_HEADER_BYTES:
        return f"a header of {len(frames[0])} bytes (the limit is {MAX_HEADER_BYTES})"
    return None


def _bad(field: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid message: {field}: {problem}")


def pack(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def unpack(frame: bytes | memoryview) -> dict[str, Any]:
    """Decode a header frame; anything but a size-limited msgpack map raises InvalidArgumentError."""
    if len(frame) > MAX_HEADER_BYTES:
        raise _bad("header", f"{len(frame)} bytes, more than the limit of {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(frame, **_UNPACK_LIMITS)
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise _bad("header", f"not valid msgpack ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(header, dict):
        raise _bad("header", f"must be a map, not {type(header).__name__}")
    return header


# -- requests and replies ----------------------------------------------------------

#: What the host says it is in ``hello``.
CLIENT_NAME = "uvmexec-host/0.1.0"


def request_frame(request_id: int, op: str, fields: dict[str, Any]) -> bytes:
    """The header frame of a request: ``{"id", "op", **fields}``."""
    return pack({"id": request_id, "op": op, **fields})


def hello_fields(session: bytes, *, events: bool = True) -> dict[str, Any]:
    """A host's ``hello``: the versions it speaks and its session; ``events=False`` for a
    request-only connection of the same session (events stay on the session's main one)."""
    fields: dict[str, Any] = {"versions": list(VERSIONS), "session": session.hex(), "client": CLIENT_NAME}
    if not events:
        fields["events"] = False
    return fields


def wants_new_hello(reply: dict[str, Any]) -> bool:
    """The agent does not know this connection's session (it restarted): say hello again."""
    return reply.get("error") is not None and bool(reply.get("retry"))


def reply_result(reply: dict[str, Any]) -> Any:
    """The result a reply carries, or raise the :class:`~common.errors.ExecError` it reports,
    with the class and message the agent raised (an unknown shape becomes a plain ExecError)."""
    error = reply.get("error")
    if error is None:
        return reply.get("result")
    if not isinstance(error, dict):
        raise ExecError(f"malformed error reply from the agent: {describe(error)}")
    raise from_wire(error.get("code"), error.get("message"))


# -- field checkers ------------------------------------------------------------


def get_int(message: dict[str, Any], field: str, low: int, high: int, default: int | None = None) -> int:
    if field not in message:
        if default is not None:
            return default
        raise _bad(field, "is required")
    try:
        return check_int(message[field], field, low, high)
    except InvalidArgumentError as error:
        raise _bad(field, str(error).split(": ", 2)[-1]) from None


def get_str(message: dict[str, Any], field: str, max_bytes: int, *, allow_empty: bool = False,
            default: str | None = None) -> str:
    if field not in message:
        if default is not None:
            return default
        raise _bad(field, "is required")
    try:
        return check_text(message[field], field, max_bytes=max_bytes, allow_empty=allow_empty)
    except InvalidArgumentError as error:
        raise _bad(field, str(error).split(": ", 2)[-1]) from None


def get_bool(message: dict[str, Any], field: str, default: bool | None = None) -> bool:
    if field not in message:
        if default is not None:
            return default
        raise _bad(field, "is required")
    value = message[field]
    if not isinstance(value, bool):
        raise _bad(field, f"must be a boolean, not {type(value).__name__}")
    return value


def get_number(message: dict[str, Any], field: str, low: float, high: float, default: float) -> float:
    if field not in message:
        return default
    value = message[field]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise _bad(field, f"must be a number in [{low}, {high}]")
    return float(value)


def get_map(message: dict[str, Any], field: str) -> dict[str, Any]:
    value = message.get(field)
    if not isinstance(value, dict):
        raise _bad(field, "is required and must be a map")
    return value


def get_list(message: dict[str, Any], field: str, max_count: int) -> list[Any]:
    value = message.get(field)
    if not isinstance(value, list):
        raise _bad(field, "is required and must be a list")
    if len(value) > max_count:
        raise _bad(field, f"has {len(value)} entries, more than the limit of {max_count}")
    return value


def get_exec_ids(message: dict[str, Any]) -> tuple[str, str]:
    return (
        get_str(message, "task", MAX_ID_BYTES),
        get_str(message, "exec", MAX_ID_BYTES),
    )


def get_seqs(message: dict[str, Any], field: str) -> tuple[int, int]:
    """A pair of per-stream sequence numbers (-1: nothing yet)."""
    value = get_list(message, field, 2)
    if len(value) != 2:
        raise _bad(field, "must hold two sequence numbers")
    return (check_int(value[0], field, -1, MAX_SEQ), check_int(value[1], field, -1, MAX_SEQ))


# -- requests --------------------------------------------------------------------


class _StdioArgs:
    """The fields of a request that makes an exec: which streams the client attaches, the paths
    it reports, the drain timeout."""

    __slots__ = ("stdin", "stdout", "stderr", "paths", "drain_timeout", "detached")

    def _read_stdio(self, message: dict[str, Any]) -> None:
        stdio = get_map(message, "stdio")
        self.stdin = get_bool(stdio, "stdin", False)
        self.stdout = get_bool(stdio, "stdout", False)
        self.stderr = get_bool(stdio, "stderr", False)
        paths = get_list(message, "paths", 3) if "paths" in message else ["", "", ""]
        if len(paths) != 3:
            raise _bad("paths", "must hold three paths (stdin, stdout, stderr)")
        self.paths = tuple(check_text(path, "paths", max_bytes=MAX_PATH_BYTES) for path in paths)
        self.drain_timeout = get_number(message, "drain_timeout", 0.0, MAX_DRAIN_TIMEOUT, 2.0)
        # Detached: while no session owns the exec its output is a ring, never a reason to block.
        self.detached = get_bool(message, "detached", False)


class CreateArgs(_StdioArgs):
    """A decoded ``create`` request."""

    __slots__ = ("task_id", "exec_id", "handle", "spec", "bundle")

    def __init__(self, message: dict[str, Any]) -> None:
        self.task_id, self.exec_id = get_exec_ids(message)
        # The client may choose the handle, so it can route this exec's events before the reply.
        self.handle = get_int(message, "h", 1, MAX_HANDLE) if "h" in message else None
        self.spec = ProcessSpec.from_oci(get_map(message, "spec"))
        self.bundle = get_str(message, "bundle", MAX_PATH_BYTES, allow_empty=True, default="")
        self._read_stdio(message)
        if self.spec.terminal and self.stderr:
            raise InvalidArgumentError(
                f"exec: '{self.exec_id}' in task: '{self.task_id}': a terminal exec cannot have a stderr target"
            )


# -- status ------------------------------------------------------------------------


def datetime_to_wire(moment: datetime.datetime | None) -> int | None:
    """Microseconds since the Unix epoch (exact for Python datetimes), or None."""
    if moment is None:
        return None
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
#: 9999-12-31T23:59:59.999999Z, the last moment a Python datetime holds.
_MAX_MICROS = 253402300799999999


def datetime_from_wire(value: object, field: str = "exited_at") -> datetime.datetime | None:
    if value is None:
        return None
    return _EPOCH + datetime.timedelta(microseconds=get_int({field: value}, field, 0, _MAX_MICROS))


def status_to_wire(status: ExecStatus) -> dict[str, Any]:
    return {
        "task": status.id,
        "exec": status.exec_id,
        "bundle": status.bundle,
        "pid": status.pid,
        "state": status.status.value,
        "stdin": status.stdin,
        "stdout": status.stdout,
        "stderr": status.stderr,
        "terminal": status.terminal,
        "exit_status": status.exit_status,
        "exited_at": datetime_to_wire(status.exited_at),
    }


def status_from_wire(message: object) -> ExecStatus:
    if not isinstance(message, dict):
        raise _bad("status", "must be a map")
    state = get_str(message, "state", 16)
    try:
        exec_state = ExecState(state)
    except ValueError:
        raise _bad("state", f"unknown state {describe(state)}") from None
    return ExecStatus(
        id=get_str(message, "task", MAX_ID_BYTES),
        exec_id=get_str(message, "exec", MAX_ID_BYTES),
        bundle=get_str(message, "bundle", MAX_PATH_BYTES, allow_empty=True),
        pid=get_int(message, "pid", 0, 2**31),
        status=exec_state,
        stdin=get_str(message, "stdin", MAX_PATH_BYTES, allow_empty=True),
        stdout=get_str(message, "stdout", MAX_PATH_BYTES, allow_empty=True),
        stderr=get_str(message, "stderr", MAX_PATH_BYTES, allow_empty=True),
        terminal=get_bool(message, "terminal"),
        exit_status=get_int(message, "exit_status", 0, 255),
        exited_at=datetime_from_wire(message.get("exited_at")),
    )


def choose_version(offered: object) -> int | None:
    """The newest version both sides speak, or None."""
    if not isinstance(offered, list):
        raise _bad("versions", "must be a list of integers")
    common = [v for v in offered if isinstance(v, int) and not isinstance(v, bool) and v in VERSIONS]
    return max(common) if common else None



# -- tasks -------------------------------------------------------------------------


def mount_to_wire(mount: Mount) -> dict[str, Any]:
    return {"type": mount.type, "source": mount.source, "options": list(mount.options)}


def get_mounts(message: dict[str, Any], field: str) -> list[Mount]:
    """A list of ``{type, source, options}`` maps (absent: none)."""
    if field not in message:
        return []
    mounts = []
    for index, entry in enumerate(get_list(message, field, MAX_ROOTFS_MOUNTS)):
        if not isinstance(entry, dict):
            raise _bad(f"{field}[{index}]", "must be a map")
        try:
            mounts.append(Mount(get_str(entry, "type", MAX_MOUNT_TYPE_BYTES),
                                get_str(entry, "source", MAX_PATH_BYTES, allow_empty=True, default=""),
                                get_list(entry, "options", MAX_MOUNT_OPTIONS) if "options" in entry else []))
        except InvalidArgumentError as error:
            raise _bad(f"{field}[{index}]", error.message) from None
    return mounts


class CreateTaskArgs(_StdioArgs):
    """A decoded ``create_task`` request: the task (its init's stdio is as ``create``'s)."""

    __slots__ = ("task_id", "handle", "bundle", "rootfs", "create_init")

    def __init__(self, message: dict[str, Any]) -> None:
        self.task_id = get_str(message, "task", MAX_ID_BYTES)
        self.handle = get_int(message, "h", 1, MAX_HANDLE) if "h" in message else None
        self.bundle = get_str(message, "bundle", MAX_PATH_BYTES)
        self.rootfs = get_mounts(message, "rootfs")
        self.create_init = get_bool(message, "create_init", False)
        self._read_stdio(message)


def process_info_to_wire(info: ProcessInfo) -> dict[str, Any]:
    return {"pid": info.pid, "exec": info.exec_id}


def process_info_from_wire(entry: object) -> ProcessInfo:
    if not isinstance(entry, dict):
        raise _bad("pids", "each entry must be a map")
    return ProcessInfo(get_int(entry, "pid", 1, 2**31), get_str(entry, "exec", MAX_ID_BYTES, allow_empty=True))
