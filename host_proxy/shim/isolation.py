"""Which isolation a container gets: ``process`` (runc on the host) or ``hypervisor`` (a utility VM).

Chosen per container, first match wins:

1. the OCI annotation ``io.uvmexec.isolation`` in the bundle's config.json
   (``ctr run --annotation io.uvmexec.isolation=process …``);
2. the runtime options file (``ctr run --runtime-config-path FILE …``): a TOML
   file with ``isolation = "process"`` — containerd hands the shim its path
   in a ``runtimeoptions.v1.Options`` Any on the start command's stdin;
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

from .runtime_options import RUNTIME_OPTIONS_TYPE, config_path_of

__all__ = ["ANNOTATION", "HYPERVISOR", "PROCESS", "RUNTIME_OPTIONS_TYPE", "choose", "config_path_of"]

ANNOTATION = "io.uvmexec.isolation"
PROCESS = "process"
HYPERVISOR = "hypervisor"
ISOLATIONS = (PROCESS, HYPERVISOR)
DEFAULT_ISOLATION = HYPERVISOR
ENVIRONMENT = "UVMEXEC_ISOLATION"
MAX_OPTIONS_FILE_BYTES = 64 * 1024


def _from_file(path: str) -> str | None:
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
    unknown = sorted(set(table) - {"isolation"})
    if unknown:
        raise InvalidArgumentError(f"runtime options file {path!r}: unknown option {describe(unknown[0])}")
    value = table.get("isolation")
    if value is not None and not isinstance(value, str):
        raise InvalidArgumentError(f"runtime options file {path!r}: isolation must be a string")
    return value


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
