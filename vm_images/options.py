"""The background VM's commands and options, once for ``python -m vm_images`` and ``uvmexec vm``.

Promise: :func:`add_vm_commands` adds ``build``, ``up``, ``down`` and
``status`` to an argparse sub-command set, each option with one name and a
``--help`` line, so the two command lines cannot drift apart again;
:func:`guest_options` turns the parsed ``up`` options into the keyword
arguments of :func:`vm_images.up` (those of ``Guest``).

``--timeout``, the old ``python -m vm_images`` spelling of ``--boot-timeout``
(``up``) and ``--stop-timeout`` (``down``), is still accepted but not shown.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_MEMORY_MB = 512
DEFAULT_CPUS = 2
DEFAULT_BOOT_TIMEOUT = 90.0
DEFAULT_STOP_TIMEOUT = 15.0
ACCELERATORS = ("auto", "kvm", "tcg")


def add_vm_commands(actions: argparse._SubParsersAction) -> dict[str, argparse.ArgumentParser]:
    """Add build, up, down and status to ``actions``; return the new parsers by name."""
    build = actions.add_parser("build", help="build or reuse the cached guest image (needs root to build)",
                               description="Build the guest image, or find it cached; print its directory.")
    build.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="the image cache (default: $UVMEXEC_IMAGE_CACHE or ~/.cache/uvmexec/images)")
    build.add_argument("--project-root", type=Path, metavar="DIR",
                       help="the tree holding common/ and guest_agent/ (default: this checkout)")
    build.add_argument("--json", action="store_true", help="print the image manifest as JSON")

    up = actions.add_parser("up", help="boot the background VM unless one runs",
                            description="Boot the background VM unless one runs (building the image "
                                        "first if needed), and print how to reach it.")
    up.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MB, metavar="MIB",
                    help=f"guest memory in MiB (default {DEFAULT_MEMORY_MB})")
    up.add_argument("--cpus", type=int, default=DEFAULT_CPUS, metavar="N",
                    help=f"guest vCPUs (default {DEFAULT_CPUS})")
    up.add_argument("--accel", choices=ACCELERATORS, default="auto",
                    help="accelerator (default auto: KVM where a guest has booted on it here, "
                         "else TCG; $UVMEXEC_ACCEL overrides auto)")
    up.add_argument("--boot-timeout", type=float, default=DEFAULT_BOOT_TIMEOUT, metavar="SECONDS",
                    help=f"give up on a guest whose agent has not answered by then "
                         f"(default {DEFAULT_BOOT_TIMEOUT:g})")
    _hidden_alias(up, "--timeout", "boot_timeout")
    up.add_argument("--image", type=Path, metavar="DIR",
                    help="boot this built image directory instead of building the current one")
    up.add_argument("--json", action="store_true", help="print the VM's details as JSON")

    down = actions.add_parser("down", help="stop the background VM",
                              description="Stop the background VM (QMP quit, then SIGTERM, then SIGKILL) and "
                                          "return once its QEMU process is gone. A no-op if none runs.")
    down.add_argument("--stop-timeout", type=float, default=DEFAULT_STOP_TIMEOUT, metavar="SECONDS",
                      help=f"how long QEMU gets to end, shared by quit, SIGTERM and SIGKILL "
                           f"(default {DEFAULT_STOP_TIMEOUT:g})")
    _hidden_alias(down, "--timeout", "stop_timeout")

    status = actions.add_parser("status", help="is the background VM running? (exit 3 if not)",
                                description="Print the running VM's details (exit 0), or 'not running' "
                                            "(exit 3, the LSB status convention).")
    status.add_argument("--json", action="store_true", help="print the VM's details as JSON")
    return {"build": build, "up": up, "down": down, "status": status}


def guest_options(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed ``up`` options as keyword arguments of :func:`vm_images.up` (without the image)."""
    return {"memory_mb": args.memory, "cpus": args.cpus, "accel": args.accel,
            "ready_timeout": args.boot_timeout}


def _hidden_alias(parser: argparse.ArgumentParser, spelling: str, dest: str) -> None:
    # SUPPRESS as the default: only a given --timeout sets dest, over the real option's default.
    parser.add_argument(spelling, dest=dest, type=float, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
