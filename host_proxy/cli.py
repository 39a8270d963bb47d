"""``uvmexec``: the command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("uvmexec: the command line is not yet implemented (see the CLI issue)", file=sys.stderr)
    return 2
