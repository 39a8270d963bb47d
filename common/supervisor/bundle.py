"""An OCI bundle's ``config.json``, read and checked before runc sees it.

runc reads the bundle itself; this module reads it first so that a bundle
runc would refuse — or that would start a process the exec contract cannot
describe — fails at task creation with one ``InvalidArgumentError`` naming
the file and the field (``bundle '/b': config.json: process.args: must not be
empty``), not with runc's words at start. It checks what the OCI runtime spec
(config.md, config-linux.md) says the fields are, as far as uvmexec relies on
them:

- ``ociVersion`` (a string), ``root.path`` (the root filesystem, relative to
  the bundle or absolute), ``hostname``, ``mounts[]`` (each with an absolute
  ``destination``), ``linux.namespaces[]`` (known types, each once);
- ``process``: the init's spec, through :meth:`~common.ProcessSpec.from_oci`.
  The keys runc enforces itself and a ``ProcessSpec`` does not carry
  (``capabilities``, ``apparmorProfile``, ``selinuxLabel``, ``oomScoreAdj``,
  ``ioPriority``, ``scheduler``) are type-checked and left to runc, which
  applies them: nothing is silently dropped.

Everything else (hooks, annotations, ``linux.resources``, …) is runc's to
judge.

:func:`find_in_root` looks a program up in the root filesystem as the
container will see it, for the exec contract's default search path (runc
itself looks only in the process's own ``PATH``); :func:`missing_init_program`
tells, once the root filesystem is mounted, whether ``runc create`` would
refuse the init's program.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgumentError, describe
from ..spec import DEFAULT_PATH, ProcessSpec

CONFIG_NAME = "config.json"
#: A config.json larger than this is refused before it is parsed.
MAX_CONFIG_BYTES = 16 * 1024 * 1024
NAMESPACE_TYPES = frozenset({"pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"})
#: process keys runc applies itself; their values are type-checked here and left in config.json.
_RUNTIME_PROCESS_KEYS: dict[str, type | tuple[type, ...]] = {
    "capabilities": dict,
    "apparmorProfile": str,
    "selinuxLabel": str,
    "oomScoreAdj": int,
    "ioPriority": dict,
    "scheduler": dict,
}
_CAPABILITY_SETS = frozenset({"bounding", "effective", "inheritable", "permitted", "ambient"})


@dataclass(frozen=True)
class BundleConfig:
    """What uvmexec needs from a bundle's config.json."""

    #: The init's process.
    process: ProcessSpec
    #: The root filesystem, absolute.
    root: str
    #: The container gets a pid namespace of its own: its processes die with its init.
    own_pid_namespace: bool
    #: ``mounts[].destination``: runc mounts them at create, over what the root filesystem holds there.
    mount_destinations: tuple[str, ...] = ()


class _Checker:
    """Reports a bad field as ``bundle '<dir>': config.json: <field>: <problem>``."""

    def __init__(self, bundle: str) -> None:
        self.prefix = f"bundle {bundle!r}: {CONFIG_NAME}"

    def fail(self, field: str, problem: str) -> InvalidArgumentError:
        return InvalidArgumentError(f"{self.prefix}: {field}: {problem}" if field else f"{self.prefix}: {problem}")

    def typed(self, value: object, field: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
        if value is None and not required:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = {dict: "an object", list: "a list", str: "a string", int: "an integer", bool: "a boolean"}
            name = wanted.get(kind, str(kind)) if isinstance(kind, type) else "a value of the right type"
            raise self.fail(field, f"must be {name}, not {describe(value)}")
        return value


def load_bundle(bundle: str) -> BundleConfig:
    """Read and check ``bundle/config.json``; raises ``InvalidArgumentError`` naming the field."""
    check = _Checker(bundle)
    if not os.path.isabs(bundle):
        raise InvalidArgumentError(f"bundle {bundle!r}: must be an absolute path")
    if not os.path.isdir(bundle):
        raise InvalidArgumentError(f"bundle {bundle!r}: is not a directory")
    path = os.path.join(bundle, CONFIG_NAME)
    try:
        with open(path, "rb") as config_file:
            raw = config_file.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise check.fail("", f"cannot read it: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise check.fail("", f"more than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as error:
        raise check.fail("", f"not valid JSON ({str(error)[:200]})") from None
    check.typed(config, "", dict)
    check.typed(config.get("ociVersion"), "ociVersion", str)
    root = check.typed(config.get("root"), "root", dict)
    root_path = check.typed(root.get("path"), "root.path", str)
    if not root_path:
        raise check.fail("root.path", "must not be empty")
    check.typed(root.get("readonly"), "root.readonly", bool, required=False)
    check.typed(config.get("hostname"), "hostname", str, required=False)
    destinations: list[str] = []
    for index, mount in enumerate(check.typed(config.get("mounts"), "mounts", list, required=False) or []):
        check.typed(mount, f"mounts[{index}]", dict)
        destination = check.typed(mount.get("destination"), f"mounts[{index}].destination", str)
        if not destination.startswith("/"):
            raise check.fail(f"mounts[{index}].destination", f"{describe(destination)} is not an absolute path")
        destinations.append(destination)
        for key in ("type", "source"):
            check.typed(mount.get(key), f"mounts[{index}].{key}", str, required=False)
        for position, option in enumerate(check.typed(mount.get("options"), f"mounts[{index}].options", list,
                                                       required=False) or []):
            check.typed(option, f"mounts[{index}].options[{position}]", str)
    linux = check.typed(config.get("linux"), "linux", dict, required=False) or {}
    own_pid_namespace = False
    seen: set[str] = set()
    for index, namespace in enumerate(check.typed(linux.get("namespaces"), "linux.namespaces", list,
                                                  required=False) or []):
        check.typed(namespace, f"linux.namespaces[{index}]", dict)
        kind = check.typed(namespace.get("type"), f"linux.namespaces[{index}].type", str)
        if kind not in NAMESPACE_TYPES:
            raise check.fail(f"linux.namespaces[{index}].type", f"unknown namespace type {describe(kind)}")
        if kind in seen:
            raise check.fail(f"linux.namespaces[{index}].type", f"{kind} is listed twice")
        seen.add(kind)
        joined = check.typed(namespace.get("path"), f"linux.namespaces[{index}].path", str, required=False)
        own_pid_namespace = own_pid_namespace or (kind == "pid" and not joined)
    process = _process(check, config.get("process"))
    return BundleConfig(process, os.path.normpath(os.path.join(bundle, root_path)), own_pid_namespace,
                        tuple(destinations))


def missing_init_program(config: BundleConfig) -> str | None:
    """Why ``runc create`` would refuse the init's program, or None.

    runc's init looks ``process.args[0]`` up (in the process's ``PATH``, or
    from its ``cwd`` for a path) before ``create`` returns, and ``create``
    fails if it is not there: containerd expects its Create to fail then.
    Here: not an executable file in the (mounted) root filesystem, looked up
    as the exec contract does (the spec's ``PATH``, else the default search
    path). None too when a mount of config.json may provide it: runc mounts
    those only at create.
    """
    process = config.process
    program = process.args[0]
    search_path = next((entry[5:] for entry in process.env if entry.startswith("PATH=")), DEFAULT_PATH)
    if "/" in program:
        candidates = [program if program.startswith("/") else process.cwd.rstrip("/") + "/" + program]
    elif find_in_root(config.root, program, search_path) is not None:
        return None
    else:
        candidates = [directory.rstrip("/") + "/" + program for directory in search_path.split(":")
                      if directory.startswith("/")]
    for candidate in candidates:
        normal = os.path.normpath(candidate)
        if any(normal == mount or normal.startswith(mount.rstrip("/") + "/")
               for mount in map(os.path.normpath, config.mount_destinations)):
            return None
        if _executable_in_root(config.root, normal):
            return None
    where = "" if "/" in program else f" in PATH {search_path}"
    return f"{describe(program)}: no executable file of that name in the root filesystem{where}"


def _process(check: _Checker, process: object) -> ProcessSpec:
    check.typed(process, "process", dict)
    assert isinstance(process, dict)
    ours = {}
    for key, value in process.items():
        kind = _RUNTIME_PROCESS_KEYS.get(key)
        if kind is None:
            ours[key] = value
            continue
        check.typed(value, f"process.{key}", kind)
    for kind, names in (check.typed(process.get("capabilities"), "process.capabilities", dict, required=False)
                        or {}).items():
        if kind not in _CAPABILITY_SETS:
            raise check.fail(f"process.capabilities.{str(kind)[:64]}", "is not a capability set")
        for index, name in enumerate(check.typed(names, f"process.capabilities.{kind}", list)):
            check.typed(name, f"process.capabilities.{kind}[{index}]", str)
    try:
        return ProcessSpec.from_oci(ours)
    except InvalidArgumentError as error:
        # "invalid process spec: args: must not be empty" -> "process.args: must not be empty"
        field, _, problem = error.message.removeprefix("invalid process spec: ").partition(": ")
        raise check.fail(f"process.{field}" if problem else "process", problem or field) from None


#: Symbolic links followed in one lookup before it is given up (as the kernel's ELOOP).
MAX_LINKS = 40


def _resolve_in_root(root: str, path: str) -> str | None:
    """Where the container path ``path`` is under ``root`` on this side, following symbolic
    links as they resolve inside the container (an absolute target starts again at ``root``;
    ``..`` stops at it), or None if a component is missing or links loop. Reads only."""
    pending = [part for part in path.split("/") if part not in ("", ".")]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            links += 1
            if links > MAX_LINKS:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = [piece for piece in target.split("/") if piece not in ("", ".")] + pending
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def find_in_root(root: str, program: str, search_path: str = DEFAULT_PATH) -> str | None:
    """The container path of the first executable regular file ``program`` in the
    ``search_path`` directories of the root filesystem ``root``, or None."""
    for directory in search_path.split(":"):
        if not directory.startswith("/"):
            continue
        container_path = directory.rstrip("/") + "/" + program
        if _executable_in_root(root, container_path):
            return container_path
    return None


def _executable_in_root(root: str, container_path: str) -> bool:
    """True if ``container_path`` resolves, inside the root filesystem ``root``, to an executable
    regular file."""
    found = _resolve_in_root(root, container_path)
    if found is None:
        return False
    try:
        mode = os.lstat(found).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) and bool(mode & 0o111)

