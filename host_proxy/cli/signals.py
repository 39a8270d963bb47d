"""How ``uvmexec run`` hears signals: as events on one pipe, read by its main loop.

Promise: while installed, :class:`SignalRelay` catches the signals listed in
:data:`RELAYED`. Until :meth:`SignalRelay.relay` is called (setting up: the
agent is starting, the exec not yet started) SIGINT raises
``KeyboardInterrupt`` and SIGTERM/SIGHUP/SIGQUIT raise :class:`Terminated`,
so set-up unwinds through its ``finally`` blocks (the private agent is
stopped, the terminal restored) instead of dying in place. Afterwards every
signal only becomes a byte on :attr:`SignalRelay.fd` (``signal.set_wakeup_fd``),
together with the events other threads post (``EVENT_*``: the exit, a lost
connection, a broken stdout, the interrupt key on a raw terminal). ``uninstall()`` puts back every previous handler.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

# Events other threads post (none is a signal number):
EVENT_BROKEN_PIPE = 0   # our stdout's reader went away
EVENT_DETACH = 248      # Ctrl-P Ctrl-Q was read from our raw stdin: leave the command running
EVENT_STARTED = 249     # the start request finished (the process runs, or it failed to start)
EVENT_LOST = 250        # the connection to the agent was lost (the client waits for it to come back)
EVENT_BACK = 251        # ... and it is back
EVENT_GONE = 252        # ... and the client gave up waiting: execs not yet exited end with 255
EVENT_RESTARTED = 253   # the agent came back as a new agent: its execs are gone
EVENT_INTERRUPT_KEY = 254  # the terminal's interrupt key was read from our raw stdin
EVENT_EXITED = 255      # the exec exited

RELAYED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
           signal.SIGWINCH, signal.SIGCONT)
_FATAL_WHILE_SETTING_UP = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class Terminated(BaseException):
    """uvmexec got SIGTERM, SIGHUP or SIGQUIT before the command started (exit 128+N)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


class SignalRelay:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._previous: dict[int, object] = {}
        self._previous_wakeup = -1
        self._relaying = False
        self._installed = False
        self._lock = threading.Lock()  # post() from other threads never writes to a closed (reused) fd

    @property
    def fd(self) -> int:
        return self._read

    def install(self) -> SignalRelay:
        for signum in RELAYED:
            self._previous[signum] = signal.signal(signum, self._handle)
        self._previous_wakeup = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._installed = True
        return self

    def relay(self) -> None:
        """From now on signals are only events on :attr:`fd`."""
        self._relaying = True

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._relaying:
            return  # the wakeup fd already carries it
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        if signum in _FATAL_WHILE_SETTING_UP:
            raise Terminated(signum)

    def post(self, event: int) -> None:
        """Called from any thread: queue a non-signal event for the main loop."""
        with self._lock:
            if self._write < 0:
                return
            try:
                os.write(self._write, bytes([event]))
            except OSError:
                pass  # the pipe is full of events already: the loop is awake anyway

    def take(self) -> bytes:
        """Every event queued so far (non-blocking)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self._read, 4096)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def uninstall(self) -> None:
        if self._installed:
            signal.set_wakeup_fd(self._previous_wakeup)
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)  # type: ignore[arg-type]
            self._installed = False
        with self._lock:
            for fd in (self._read, self._write):
                if fd >= 0:
                    os.close(fd)
            self._read = self._write = -1
