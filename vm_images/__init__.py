"""Guest images for uvmexec and the QEMU launcher that boots them.

Build (needs root; cached by a hash of every input, see ``image.py``)::

    image = build_image()                  # -> ImagePaths

Boot and wait until the agent answers ``hello`` (see ``launch.py``)::

    with boot(image) as guest:             # -> GuestInfo
        AgentClient.connect(guest.agent_endpoint, server_key=guest.server_key,
                            client_key=guest.client_key)

The background VM of ``python -m vm_images up|down|status`` is ``up()``,
``down()`` and ``status()`` (see ``daemon.py``).
"""

from .cache import BuildError, Progress
from .daemon import down, status, up
from .image import ImagePaths, build_image
from .launch import Guest, GuestBootError, GuestInfo, boot
from .probe import AgentProbe, NotReady, ProbeFailed, agent_hello, ssh_banner
from .qemu import QemuError

__all__ = [
    "AgentProbe", "BuildError", "Guest", "GuestBootError", "GuestInfo", "ImagePaths",
    "NotReady", "ProbeFailed", "Progress", "QemuError", "agent_hello", "boot", "build_image",
    "down", "ssh_banner", "status", "up",
]
