"""Guest images for uvmexec and the QEMU launcher that boots them.

Build (needs root; cached by a hash of every input, see ``image.py``)::

    image = build_image()                  # -> ImagePaths

Boot and wait until the agent answers ``hello`` (see ``launch.py``)::

    with boot(image) as guest:             # -> GuestInfo
        AgentClient.connect(guest.agent_endpoint, server_key=guest.server_key,
                            client_key=guest.client_key)

The background VM of ``python -m vm_images up|down|status`` is ``up()``,
``down()`` and ``status()`` (see ``daemon.py``); the options of that command
line, shared with ``uvmexec vm``, are in ``options.py``.

The names below are imported on first use, so that ``vm_images.options``
(argparse only) is cheap to import for ``uvmexec``'s command line.
"""


from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import BuildError, Progress
    from .daemon import down, status, up
    from .image import ImagePaths, build_image
    from .launch import Guest, GuestBootError, GuestInfo, boot
    from .probe import AgentProbe, NotReady, ProbeFailed, agent_hello, ssh_banner
    from .qemu import QemuError

# Each public name and the module it comes from.
_HOMES = {
    "BuildError": "cache", "Progress": "cache",
    "down": "daemon", "status": "daemon", "up": "daemon",
    "ImagePaths": "image", "build_image": "image",
    "Guest": "launch", "GuestBootError": "launch", "GuestInfo": "launch", "boot": "launch",
    "AgentProbe": "probe", "NotReady": "probe", "ProbeFailed": "probe", "agent_hello": "probe",
    "ssh_banner": "probe",
    "QemuError": "qemu",
}

__all__ = [
    "AgentProbe", "BuildError", "Guest", "GuestBootError", "GuestInfo", "ImagePaths",
    "NotReady", "ProbeFailed", "Progress", "QemuError", "agent_hello", "boot", "build_image",
    "down", "ssh_banner", "status", "up",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later look-ups do not come here again
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})
