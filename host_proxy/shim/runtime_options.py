"""The runtime options containerd hands the ``start`` command on stdin, a protobuf ``Any``.

- ``runtimeoptions.v1.Options`` (``ctr run --runtime-config-path FILE``): its
  ``config_path`` is the options file :mod:`.isolation` reads.
- ``containerd.linux.runc.CreateOptions`` (what containerd's Go client's
  ``WithShimCgroup`` sends a runtime not named ``io.containerd.runc.*``) and
  ``containerd.runc.v1.Options`` (the runc shim's own): their ``shim_cgroup``
  is a cgroup the shim's server joins, as containerd's runc shim puts itself
  there in its ``start`` (``runtime/v2/runc/manager``). Their other fields are
  runc's and do not apply.

Its own module, importing nothing heavy until there are options to parse: the
``start`` command runs it on containerd's path, and containerd sends nothing at
all without options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RUNTIME_OPTIONS_TYPE = "runtimeoptions.v1.Options"
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
CREATE_OPTIONS_TYPE = "containerd.linux.runc.CreateOptions"
CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class StartOptions:
    config_path: str = ""
    shim_cgroup: str = ""


def parse(options: bytes) -> StartOptions:
    """What containerd wrote to the start command's stdin (nothing: the defaults)."""
    if not options:
        return StartOptions()
    from google.protobuf import any_pb2
    from google.protobuf.message import DecodeError

    from common.errors import InvalidArgumentError

    from .proto import runc_options_pb2, runctypes_pb2, runtimeoptions_pb2

    wrapper = any_pb2.Any()
    try:
        wrapper.ParseFromString(options)
        if wrapper.type_url.endswith(RUNTIME_OPTIONS_TYPE):
            config = runtimeoptions_pb2.Options()
            config.ParseFromString(wrapper.value)
            return StartOptions(config_path=config.config_path)
        for type_name, message_type in ((RUNC_OPTIONS_TYPE, runc_options_pb2.Options),
                                        (CREATE_OPTIONS_TYPE, runctypes_pb2.CreateOptions)):
            if wrapper.type_url.endswith(type_name):
                runc = message_type()
                runc.ParseFromString(wrapper.value)
                return StartOptions(shim_cgroup=runc.shim_cgroup)
    except DecodeError as error:
        raise InvalidArgumentError(f"runtime options: not a {wrapper.type_url or 'protobuf Any'}: {error}") from None
    return StartOptions()


def join_cgroup(pid: int, path: str, root: str = CGROUP_ROOT) -> None:
    """Move ``pid`` into the cgroup ``path``: on cgroup v2 its one directory, on v1 that path in every
    hierarchy that has it (as containerd's cgroups ``Load`` with a static path). A cgroup found in no
    hierarchy is ``InvalidArgumentError`` naming it."""
    from common.errors import InvalidArgumentError

    relative = path.strip("/")
    if not relative or ".." in relative.split("/"):
        raise InvalidArgumentError(f"runtime options: shim_cgroup {path!r} is not a cgroup path")
    if os.path.exists(os.path.join(root, "cgroup.controllers")):
        hierarchies = [root]
    else:
        hierarchies = sorted(os.path.join(root, name) for name in os.listdir(root)
                             if os.path.isdir(os.path.join(root, name)) and not os.path.islink(os.path.join(root, name)))
    joined = 0
    for hierarchy in hierarchies:
        procs = os.path.join(hierarchy, relative, "cgroup.procs")
        if os.path.exists(procs):
            with open(procs, "w") as procs_file:
                procs_file.write(str(pid))
            joined += 1
    if not joined:
        raise InvalidArgumentError(f"runtime options: shim_cgroup {path!r}: no such cgroup under {root}")
