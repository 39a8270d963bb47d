"""``uvm-agent``: the agent daemon's command line."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("uvm-agent: not yet implemented (see the wire issue)", file=sys.stderr)
    return 2
