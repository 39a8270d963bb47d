"""The runtime options containerd hands the ``start`` command on stdin (``ctr run --runtime-config-path FILE``).

A ``runtimeoptions.v1.Options`` in a protobuf ``Any``; its ``config_path`` is
the options file :mod:`.isolation` reads. Its own module, importing nothing
heavy until there are options to parse: the ``start`` command runs it on
containerd's path, and containerd sends nothing at all without
``--runtime-config-path``.
"""

from __future__ import annotations

RUNTIME_OPTIONS_TYPE = "runtimeoptions.v1.Options"


def config_path_of(options: bytes) -> str:
    """The options file's path in what containerd wrote to the start command's stdin ("" for none)."""
    if not options:
        return ""
    from google.protobuf import any_pb2
    from google.protobuf.message import DecodeError

    from common.errors import InvalidArgumentError

    from .proto import runtimeoptions_pb2

    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(options)
        if not wrapper.type_url.endswith(RUNTIME_OPTIONS_TYPE):
            return ""
        parsed = runtimeoptions_pb2.Options()
        parsed.ParseFromString(wrapper.value)
    except DecodeError as error:
        raise InvalidArgumentError(f"runtime options: not a runtimeoptions.v1.Options: {error}") from None
    return parsed.config_path
