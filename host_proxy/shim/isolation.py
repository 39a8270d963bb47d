"""Which isolation a container gets: ``process`` (runc on the host) or ``hypervisor`` (a utility VM).

Chosen per container, first match wins:

1. the OCI annotation ``io.uvmexec.isolation`` in the bundle's config.json
   (``ctr run --annotation io.uvmexec.isolation=process …``);
2. the runtime options file (``ctr run --runtime-config-path FILE …``): a TOML
   file with ``isolation = "process"`` — containerd hands the shim its path
   in a ``runtimeoptions.v1.Options`` Any on the start command's stdin. The
   same file may size the utility VM of hypervisor isolation: ``memory_mb``
   (default 512), ``cpus`` (2) and ``boot_timeout`` in seconds (120);
3. the environment variable ``UVMEXEC_ISOLATION`` of the shim, which it
   inherits from containerd (set it in containerd's environment to change the
   default for every container that names none — how containerd's own
   integration tests, which pass no options, are run in either isolation);
4. the default, :data:`DEFAULT_ISOLATION`.

Any other value is ``InvalidArgumentError`` naming where it came from.
"""

from __future__ import annotations

import json
import os
import tomllib

from common.errors import InvalidArgumentError, describe

from .runtime_options import RUNTIME_OPTIONS_TYPE as RUNTIME_OPTIONS_TYPE
from .sandbox import VMOptions

ANNOTATION = "io.uvmexec.isolation"
PROCESS = "process"
HYPERVISOR = "hypervisor"
ISOLATIONS = (PROCESS, HYPERVISOR)
DEFAULT_ISOLATION = HYPERVISOR
ENVIRONMENT = "UVMEXEC_ISOLATION"
#: The runtime options file's keys: the isolation, and how a utility VM is booted.
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "isolation": (str,), "memory_mb": (int,), "cpus": (int,), "boot_timeout": (int, float)}
OPTION_RANGES: dict[str, tuple[float, float]] = {
    "memory_mb": (128, 65536), "cpus": (1, 64), "boot_timeout": (1, 3600)}
MAX_OPTIONS_FILE_BYTES = 64 * 1024


def _read_options(path: str) -> dict[str, object]:
    try:
        with open(path, "rb") as options_file:
            data = options_file.read(MAX_OPTIONS_FILE_BYTES + 1)
    except OSError as error:
        raise InvalidArgumentError(f"runtime options file {path!r}: {error.strerror}") from None
    if len(data) > MAX_OPTIONS_FILE_BYTES:
        raise InvalidArgumentError(f"runtime options file {path!r}: over {MAX_OPTIONS_FILE_BYTES} bytes")
    try:
        table = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InvalidArgumentError(f"runtime options file {path!r}: not TOML: {error}") from None
    unknown = sorted(set(table) - set(OPTION_TYPES))
    if unknown:
        raise InvalidArgumentError(f"runtime options file {path!r}: unknown option {describe(unknown[0])} "
                                   f"(known: {', '.join(OPTION_TYPES)})")
    for key, value in table.items():
        low, high = OPTION_RANGES.get(key, (None, None))
        if not isinstance(value, OPTION_TYPES[key]) or isinstance(value, bool) or (
                low is not None and high is not None and not low <= value <= high):  # type: ignore[operator]
            wanted = OPTION_TYPES[key][0].__name__ if low is None else f"a number in [{low}, {high}]"
            raise InvalidArgumentError(f"runtime options file {path!r}: {key} must be {wanted}, "
                                       f"not {describe(value)}")
    return table


def _from_file(path: str) -> str | None:
    value = _read_options(path).get("isolation")
    assert value is None or isinstance(value, str)
    return value


def vm_options(options_path: str) -> VMOptions:
    """The utility VM's options from the runtime options file ("" for none: the defaults)."""
    table = _read_options(options_path) if options_path else {}
    defaults = VMOptions()
    return VMOptions(memory_mb=int(table.get("memory_mb", defaults.memory_mb)),  # type: ignore[call-overload]
                     cpus=int(table.get("cpus", defaults.cpus)),  # type: ignore[call-overload]
                     boot_timeout=float(table.get("boot_timeout", defaults.boot_timeout)))  # type: ignore[arg-type]


def _from_annotation(bundle: str) -> str | None:
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as config_file:
            config = json.load(config_file)
    except (OSError, ValueError):
        return None  # the task's own check of config.json reports it, naming the field
    annotations = config.get("annotations") if isinstance(config, dict) else None
    value = annotations.get(ANNOTATION) if isinstance(annotations, dict) else None
    if value is not None and not isinstance(value, str):
        raise InvalidArgumentError(f"annotation {ANNOTATION}: must be a string, not {describe(value)}")
    return value


def choose(bundle: str, options_path: str) -> str:
    """The isolation for the container in ``bundle``; ``options_path`` is the runtime options file ("" for none)."""
    value, source = _from_annotation(bundle), f"annotation {ANNOTATION}"
    if value is None and options_path:
        value, source = _from_file(options_path), f"runtime options file {options_path!r}"
    if value is None and os.environ.get(ENVIRONMENT):
        value, source = os.environ[ENVIRONMENT], f"environment variable {ENVIRONMENT}"
    if value is None:
        value, source = DEFAULT_ISOLATION, "the default isolation"
    if value not in ISOLATIONS:
        raise InvalidArgumentError(f"{source}: unknown isolation {describe(value)} (known: {', '.join(ISOLATIONS)})")
    return value
