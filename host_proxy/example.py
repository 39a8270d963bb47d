"""A first run of the exec contract on this host: ``python3 -m host_proxy.example [CMD ...]``.

Runs the command (default ``uname -a``) through ``LocalExec`` with its stdout
and stderr attached to this terminal and exits with its exit status.
"""

from __future__ import annotations

import os
import sys

from common import ProcessSpec, Stdio

from .local_exec import LocalExec


def main(argv: list[str]) -> int:
    args = argv or ["uname", "-a"]
    spec = ProcessSpec(args=args, env=[f"PATH={os.environ.get('PATH', '')}"], cwd=os.getcwd())
    made = LocalExec("example", f"example-{os.getpid()}", spec, Stdio(stdout=sys.stdout.buffer, stderr=sys.stderr.buffer))
    try:
        made.start()
        return made.wait().exit_status
    except Exception as error:  # one line a person can act on
        print(f"example: {error}", file=sys.stderr)
        return 127
    finally:
        if made.state.value != "running":
            made.delete()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
