"""The agent's stop signals survive a burst of other signals.

asyncio learns of a signal from a byte in its wakeup pipe; when a thousand execs end together, the
SIGCHLD bytes fill that pipe and a SIGTERM whose byte does not fit is never seen. The agent's stop
handlers must not depend on that byte.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from guest_agent.cli import on_stop_signals


def _fill(fd: int) -> int:
    """Write signal-number bytes into the wakeup pipe until it takes no more, as a SIGCHLD burst does."""
    written = 0
    try:
        while True:
            written += os.write(fd, bytes([signal.SIGCHLD]) * 4096)
    except BlockingIOError:
        pass
    try:
        while True:  # the last bytes a stream socket takes one at a time
            written += os.write(fd, bytes([signal.SIGCHLD]))
    except BlockingIOError:
        return written


@pytest.mark.timeout(30)
def test_sigterm_stops_the_agent_loop_even_when_the_wakeup_pipe_is_full() -> None:
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    loop = asyncio.new_event_loop()
    try:
        # What the agent's reaper does: an asyncio SIGCHLD handler, which owns the wakeup pipe.
        reaped: list[int] = []
        loop.add_signal_handler(signal.SIGCHLD, lambda: reaped.append(1))
        stopped: asyncio.Future[None] = loop.create_future()

        def stop() -> None:
            if not stopped.done():
                stopped.set_result(None)

        on_stop_signals(loop, stop)
        wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
        assert wakeup != -1
        assert _fill(wakeup) > 0
        os.kill(os.getpid(), signal.SIGTERM)  # its byte cannot be written: the pipe is full
        loop.run_until_complete(asyncio.wait_for(stopped, 10))
        assert reaped, "the SIGCHLD bytes already in the pipe still reach their handler"
    finally:
        loop.remove_signal_handler(signal.SIGCHLD)
        loop.close()
        for signum, handler in saved.items():
            signal.signal(signum, handler)
