"""``python -m vm_images build|up|down|status``.

- ``build``: build (or find cached) the guest image; prints its directory.
- ``up``: boot the background VM unless one runs; prints how to reach it.
- ``down``: stop the background VM (no-op if none runs); returns once its
  QEMU process is gone.
- ``status``: exit 0 and print the VM's endpoint and pid if it runs, exit 3
  and print "not running" otherwise (the LSB status convention).

Progress goes to stderr, results to stdout (``--json`` for machine use).
Errors print one message and exit 1. The options are those of ``uvmexec vm``
(see ``options.py``); ``python -m vm_images COMMAND --help`` lists them.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import daemon
from .cache import BuildError
from .image import ImagePaths, build_image
from .launch import GuestBootError, GuestInfo
from .options import add_vm_commands, guest_options
from .qemu import QemuError

EXIT_NOT_RUNNING = 3


def print_info(info: GuestInfo, as_json: bool) -> None:
    """How to reach a running guest, for people (or as JSON); also what `uvmexec vm up|status` print."""
    if as_json:
        print(json.dumps({"running": True, **info.to_json()}, indent=2))
        return
    print(f"running: pid {info.pid}, {info.accel}, kernel {info.kernel_release}")
    print(f"agent:   {info.agent_endpoint}  (server key {info.server_key}, "
          f"client key {info.client_key})")
    print(f"ssh:     ssh -i {info.ssh_key} -o UserKnownHostsFile={info.known_hosts} "
          f"-p {info.ssh_port} {info.ssh_user}@{info.ssh_host}")
    print(f"qga:     {info.qga_socket}")
    print(f"serial:  {info.serial_log}")
    print(f"boot:    ready in {info.boot_seconds:.1f}s, boot id {info.boot_id}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vm_images", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{build,up,down,status}", required=True)
    add_vm_commands(commands)
    args = parser.parse_args(argv)

    try:
        if args.command == "build":
            image = build_image(cache_dir=args.cache_dir, project_root=args.project_root)
            if args.json:
                print(json.dumps({"directory": str(image.directory), **image.manifest()},
                                 indent=2))
            else:
                print(image.directory)
        elif args.command == "up":
            chosen = ImagePaths.from_directory(args.image) if args.image else None
            info = daemon.up(chosen, **guest_options(args))
            print_info(info, args.json)
        elif args.command == "down":
            outcome = daemon.down(timeout=args.stop_timeout)
            print("not running" if outcome is None else f"stopped ({outcome})")
        else:
            found = daemon.status()
            if found is None:
                print(json.dumps({"running": False}) if args.json else "not running")
                return EXIT_NOT_RUNNING
            print_info(found, args.json)
    except (BuildError, GuestBootError, QemuError) as error:
        print(f"vm_images {args.command}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vm_images {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
