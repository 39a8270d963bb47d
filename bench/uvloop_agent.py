"""``python -m bench.uvloop_agent AGENT-ARGS``: the agent on uvloop — for measuring only.

The agent does not support uvloop today: its reaper asks for SIGCHLD through
``loop.add_signal_handler``, which uvloop refuses ("it is used by the event
loop to track subprocesses"). This launcher installs uvloop's policy and
routes that one signal through ``signal.signal`` + ``call_soon_threadsafe``
instead, so ``python -m bench.profile uvloop`` can tell what uvloop would buy.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

import uvloop


class _Policy(uvloop.EventLoopPolicy):  # type: ignore[misc]
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        add_signal_handler = loop.add_signal_handler

        def add(signum: int, callback: Callable[..., Any], *args: Any) -> None:
            if signum != signal.SIGCHLD:
                add_signal_handler(signum, callback, *args)
                return
            signal.signal(signum, lambda *_: loop.call_soon_threadsafe(callback, *args))

        loop.add_signal_handler = add  # type: ignore[method-assign]
        return loop


def main() -> int:
    asyncio.set_event_loop_policy(_Policy())
    from guest_agent.cli import main as agent_main

    return agent_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
