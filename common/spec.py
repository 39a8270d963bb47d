"""What to run and where its stdio goes: the OCI ``process`` object and ``Stdio``.

Every field is validated when a :class:`ProcessSpec` is built, by the same code
on both sides of the wire, so a bad spec fails with the same
:class:`~common.errors.InvalidArgumentError` (naming the field) whether it was
given to ``LocalExec`` or decoded by the agent. This module does no I/O.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Union

from .errors import InvalidArgumentError, describe

# Limits chosen to admit anything Linux's execve admits for one argument or
# environment string (MAX_ARG_STRLEN = 128 KiB), while keeping a single request
# well inside the wire's frame limit.
MAX_ARG_COUNT = 16384
MAX_ENV_COUNT = 16384
MAX_STRING_BYTES = 128 * 1024
MAX_ARGV_ENV_BYTES = 2 * 1024 * 1024
MAX_PATH_BYTES = 4096
MAX_ID_BYTES = 256
MAX_ADDITIONAL_GIDS = 65536
MAX_RLIMITS = 64
MAX_UINT32_ID = 2**32 - 2  # (uid_t)-1 means "unchanged" to the kernel
MAX_RLIM = 2**64 - 1  # RLIM_INFINITY
MAX_TERMINAL_DIM = 65535

RLIMIT_TYPES = frozenset(
    {
        "RLIMIT_AS",
        "RLIMIT_CORE",
        "RLIMIT_CPU",
        "RLIMIT_DATA",
        "RLIMIT_FSIZE",
        "RLIMIT_LOCKS",
        "RLIMIT_MEMLOCK",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_NOFILE",
        "RLIMIT_NPROC",
        "RLIMIT_RSS",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
        "RLIMIT_SIGPENDING",
        "RLIMIT_STACK",
    }
)

#: The search path used when the spec's env has no PATH (as runc and docker do).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# OCI process keys uvmexec understands; any other key is refused by name rather
# than silently dropped, since most of them (capabilities, apparmor, selinux)
# would weaken isolation the caller asked for if ignored.
_OCI_KEYS = frozenset(
    {"args", "env", "cwd", "terminal", "consoleSize", "user", "rlimits", "noNewPrivileges"}
)
_OCI_USER_KEYS = frozenset({"uid", "gid", "additionalGids", "umask"})


def _fail(field_name: str, problem: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"invalid process spec: {field_name}: {problem}")


def check_text(value: object, field_name: str, *, max_bytes: int, allow_empty: bool = True) -> str:
    """Return ``value`` if it is a str without NUL of at most ``max_bytes`` UTF-8 bytes."""
    if not isinstance(value, str):
        raise _fail(field_name, f"must be a string, not {type(value).__name__}")
    if not allow_empty and not value:
        raise _fail(field_name, "must not be empty")
    if "\x00" in value:
        raise _fail(field_name, "must not contain a NUL byte")
    if value.isascii():  # the common case, and O(1): one byte per character
        size = len(value)
    else:
        # One rule for every string (args, env, cwd, ids, paths), on every backend: valid
        # Unicode only. The OCI spec and containerd carry these as UTF-8 JSON strings, so a
        # surrogate escape (undecodable bytes smuggled in by os.fsdecode) has no faithful form
        # on the wire; it is refused here, when the spec is built, rather than half-carried.
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as error:
            raise _fail(
                field_name,
                f"is not valid UTF-8 text ({describe(value[error.start])} at index {error.start}: "
                "a surrogate escape of undecodable bytes)",
            ) from None
    if size > max_bytes:
        raise _fail(field_name, f"is {size} bytes, more than the limit of {max_bytes}")
    return value


def check_int(value: object, field_name: str, low: int, high: int) -> int:
    """Return ``value`` if it is an int (not a bool) within ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(field_name, f"must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise _fail(field_name, f"{value} is out of range [{low}, {high}]")
    return value


def _check_bool(value: object, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(field_name, f"must be a boolean, not {type(value).__name__}")
    return value


def _check_list(value: object, field_name: str, max_count: int) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _fail(field_name, f"must be a list, not {type(value).__name__}")
    if len(value) > max_count:
        raise _fail(field_name, f"has {len(value)} entries, more than the limit of {max_count}")
    return list(value)


@dataclass(frozen=True)
class User:
    """The identity the process runs as (OCI ``process.user``)."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None

    def __post_init__(self) -> None:
        check_int(self.uid, "user.uid", 0, MAX_UINT32_ID)
        check_int(self.gid, "user.gid", 0, MAX_UINT32_ID)
        gids = _check_list(self.additional_gids, "user.additionalGids", MAX_ADDITIONAL_GIDS)
        for index, gid in enumerate(gids):
            check_int(gid, f"user.additionalGids[{index}]", 0, MAX_UINT32_ID)
        object.__setattr__(self, "additional_gids", tuple(gids))
        if self.umask is not None:
            check_int(self.umask, "user.umask", 0, 0o777)


@dataclass(frozen=True)
class Rlimit:
    """One resource limit (OCI ``process.rlimits[]``), e.g. ``Rlimit("RLIMIT_NOFILE", 1024, 4096)``."""

    type: str
    soft: int
    hard: int

    def __post_init__(self) -> None:
        if not isinstance(self.type, str) or self.type not in RLIMIT_TYPES:
            raise _fail("rlimits.type", f"unknown resource limit {describe(self.type)}")
        check_int(self.soft, f"rlimits[{self.type}].soft", 0, MAX_RLIM)
        check_int(self.hard, f"rlimits[{self.type}].hard", 0, MAX_RLIM)
        if self.soft > self.hard:
            raise _fail(f"rlimits[{self.type}]", f"soft limit {self.soft} exceeds hard limit {self.hard}")


@dataclass(frozen=True)
class ProcessSpec:
    """The OCI runtime-spec ``process`` object. Invalid values raise ``InvalidArgumentError``.

    ``args[0]`` without a slash is looked up in the spec's own ``PATH`` (from
    ``env``), else in :data:`DEFAULT_PATH`.
    """

    args: list[str]
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    terminal: bool = False
    console_size: tuple[int, int] | None = None
    user: User = field(default_factory=User)
    rlimits: list[Rlimit] = field(default_factory=list)
    no_new_privileges: bool = False

    def __post_init__(self) -> None:
        args = _check_list(self.args, "args", MAX_ARG_COUNT)
        if not args:
            raise _fail("args", "must not be empty")
        total = 0
        for index, arg in enumerate(args):
            total += len(check_text(arg, f"args[{index}]", max_bytes=MAX_STRING_BYTES))
        check_text(args[0], "args[0]", max_bytes=MAX_STRING_BYTES, allow_empty=False)
        env = _check_list(self.env, "env", MAX_ENV_COUNT)
        for index, entry in enumerate(env):
            total += len(check_text(entry, f"env[{index}]", max_bytes=MAX_STRING_BYTES))
            if "=" not in entry or entry.startswith("="):
                raise _fail(f"env[{index}]", f"{describe(entry)} is not of the form KEY=VALUE")
        if total > MAX_ARGV_ENV_BYTES:
            raise _fail("args+env", f"{total} bytes in all, more than the limit of {MAX_ARGV_ENV_BYTES}")
        check_text(self.cwd, "cwd", max_bytes=MAX_PATH_BYTES, allow_empty=False)
        if not self.cwd.startswith("/"):
            raise _fail("cwd", f"{describe(self.cwd)} is not an absolute path")
        _check_bool(self.terminal, "terminal")
        if self.console_size is not None:
            size = _check_list(self.console_size, "consoleSize", 2)
            if len(size) != 2:
                raise _fail("consoleSize", "must be (height, width)")
            height = check_int(size[0], "consoleSize.height", 0, MAX_TERMINAL_DIM)
            width = check_int(size[1], "consoleSize.width", 0, MAX_TERMINAL_DIM)
            object.__setattr__(self, "console_size", (height, width))
        if not isinstance(self.user, User):
            raise _fail("user", f"must be a User, not {type(self.user).__name__}")
        rlimits = _check_list(self.rlimits, "rlimits", MAX_RLIMITS)
        seen: set[str] = set()
        for index, limit in enumerate(rlimits):
            if not isinstance(limit, Rlimit):
                raise _fail(f"rlimits[{index}]", f"must be an Rlimit, not {type(limit).__name__}")
            if limit.type in seen:
                raise _fail(f"rlimits[{index}]", f"duplicate entry for {limit.type}")
            seen.add(limit.type)
        _check_bool(self.no_new_privileges, "noNewPrivileges")
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "env", env)
        object.__setattr__(self, "rlimits", rlimits)

    @property
    def search_path(self) -> str:
        """The PATH used to find ``args[0]``: the spec's own, else :data:`DEFAULT_PATH`."""
        for entry in reversed(self.env):
            if entry.startswith("PATH="):
                return entry[5:]
        return DEFAULT_PATH

    @classmethod
    def from_oci(cls, process: object) -> ProcessSpec:
        """Build a spec from the OCI JSON ``process`` object (camelCase keys).

        Unknown keys are refused by name: uvmexec would rather fail than
        silently drop a setting such as ``capabilities``.
        """
        if not isinstance(process, dict):
            raise _fail("process", f"must be an object, not {type(process).__name__}")
        for key in process:
            if key not in _OCI_KEYS:
                raise _fail(str(key)[:64], "is not supported by uvmexec")
        if "args" not in process:
            raise _fail("args", "is required")
        user = User()
        if process.get("user") is not None:
            raw_user = process["user"]
            if not isinstance(raw_user, dict):
                raise _fail("user", f"must be an object, not {type(raw_user).__name__}")
            for key in raw_user:
                if key not in _OCI_USER_KEYS:
                    raise _fail(f"user.{str(key)[:64]}", "is not supported by uvmexec")
            user = User(
                uid=raw_user.get("uid", 0),
                gid=raw_user.get("gid", 0),
                additional_gids=raw_user.get("additionalGids") or (),
                umask=raw_user.get("umask"),
            )
        console_size = None
        if process.get("consoleSize") is not None:
            raw_size = process["consoleSize"]
            if not isinstance(raw_size, dict) or set(raw_size) - {"height", "width"}:
                raise _fail("consoleSize", "must be an object with height and width")
            console_size = (raw_size.get("height", 0), raw_size.get("width", 0))
        rlimits = []
        for index, raw_limit in enumerate(_check_list(process.get("rlimits") or [], "rlimits", MAX_RLIMITS)):
            if not isinstance(raw_limit, dict) or set(raw_limit) != {"type", "soft", "hard"}:
                raise _fail(f"rlimits[{index}]", "must be an object with type, soft and hard")
            rlimits.append(Rlimit(raw_limit["type"], raw_limit["soft"], raw_limit["hard"]))
        return cls(
            args=process["args"],
            env=process.get("env") or [],
            cwd=process.get("cwd", "/"),
            terminal=process.get("terminal", False),
            console_size=console_size,
            user=user,
            rlimits=rlimits,
            no_new_privileges=process.get("noNewPrivileges", False),
        )

    def to_oci(self) -> dict[str, Any]:
        """The OCI JSON form; ``ProcessSpec.from_oci(spec.to_oci()) == spec``."""
        process: dict[str, Any] = {
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
            "terminal": self.terminal,
            "user": {
                "uid": self.user.uid,
                "gid": self.user.gid,
                "additionalGids": list(self.user.additional_gids),
            },
            "noNewPrivileges": self.no_new_privileges,
        }
        if self.user.umask is not None:
            process["user"]["umask"] = self.user.umask
        if self.console_size is not None:
            process["consoleSize"] = {"height": self.console_size[0], "width": self.console_size[1]}
        if self.rlimits:
            process["rlimits"] = [{"type": r.type, "soft": r.soft, "hard": r.hard} for r in self.rlimits]
        return process


StdioTarget = Union[None, str, "os.PathLike[str]", BinaryIO]


@dataclass(frozen=True)
class Stdio:
    """Where an exec's stdio comes from and goes to, on the side that created it.

    Each stream is None (stdin: ``/dev/null``; outputs: discarded), a path (a
    regular file opened for append and created if missing, or a FIFO), or a
    binary file object.
    """

    stdin: StdioTarget = None
    stdout: StdioTarget = None
    stderr: StdioTarget = None

    def __post_init__(self) -> None:
        for name in ("stdin", "stdout", "stderr"):
            target = getattr(self, name)
            if target is None:
                continue
            if isinstance(target, (str, os.PathLike)):
                path = os.fspath(target)
                if not isinstance(path, str):
                    raise InvalidArgumentError(f"invalid stdio: {name}: bytes paths are not supported")
                check_text(path, f"stdio.{name}", max_bytes=MAX_PATH_BYTES, allow_empty=False)
                continue
            if isinstance(target, io.TextIOBase):
                raise InvalidArgumentError(f"invalid stdio: {name}: file object must be binary, not text")
            method = "read" if name == "stdin" else "write"
            if not callable(getattr(target, method, None)):
                raise InvalidArgumentError(
                    f"invalid stdio: {name}: must be None, a path or a binary file object with {method}()"
                )

    def path_of(self, name: str) -> str:
        """The host path of stream ``name`` as ``ExecStatus`` reports it (``""`` if none)."""
        target = getattr(self, name)
        if isinstance(target, (str, os.PathLike)):
            return os.fspath(target)  # type: ignore[return-value]
        return ""
