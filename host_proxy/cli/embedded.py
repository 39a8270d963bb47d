"""The private agent behind ``uvmexec run`` when neither ``--guest`` nor ``--vm`` is given.

Promise: :class:`PrivateAgent` starts ``python -m guest_agent`` listening on an
ipc socket in a fresh 0700 directory, returns once the agent printed its
ready line (or fails within a deadline with the agent's own words), and
``stop()`` — called on every exit path — ends it (SIGTERM, a bounded wait,
SIGKILL; at once SIGKILL when ``idle`` says it holds no exec any more and
it has no child process, so there is nothing for it to clean up), reaps it
and removes the directory. The agent also dies with
``uvmexec`` if ``uvmexec`` is killed outright (``PR_SET_PDEATHSIG``), and it
runs in its own session so the terminal's Ctrl-C reaches only ``uvmexec``,
which decides what the command gets.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .errors import CliError, Exit

READY_PREFIX = b"uvm-agent ready "
PR_SET_PDEATHSIG = 1
MAX_SOCKET_PATH = 100
# The package root (holding common/ and guest_agent/), so the agent starts from any cwd, installed or not.
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when uvmexec dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class PrivateAgent:
    """A uvm-agent child on ``ipc://<private dir>/agent.sock``. Use as a context manager."""

    def __init__(self, *, debug: bool = False, ready_timeout: float = 20.0) -> None:
        self.debug = debug
        self.ready_timeout = ready_timeout
        self.directory: str | None = None
        self.endpoint = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        #: Set once the agent holds no exec (ours was deleted): stop() need not let it shut down.
        self.idle = False
        self._began = 0.0
        self._log_path = ""

    def start(self) -> PrivateAgent:
        """Spawn it and wait until it is ready."""
        return self.spawn().wait_ready()

    def spawn(self) -> PrivateAgent:
        """Start the agent process and return at once (it gets ready while we do other work)."""
        self._began = time.monotonic()
        self.directory = tempfile.mkdtemp(prefix="uvmexec-")  # mode 0700, as the agent insists
        socket_path = os.path.join(self.directory, "agent.sock")
        if len(socket_path.encode()) > MAX_SOCKET_PATH:  # a long $TMPDIR: sun_path holds 107 bytes
            os.rmdir(self.directory)
            self.directory = tempfile.mkdtemp(prefix="uvmexec-", dir="/tmp")
            socket_path = os.path.join(self.directory, "agent.sock")
        self._log_path = os.path.join(self.directory, "agent.log")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT_ROOT, env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "guest_agent", "--listen", f"ipc://{socket_path}",
                   "--log-level", "DEBUG" if self.debug else "WARNING"]
        # Its log goes to a file in the private directory (shown if it fails to start), or to our
        # stderr with --debug; never a pipe nobody reads, which could stall it.
        log_file = None if self.debug else open(self._log_path, "wb")  # noqa: SIM115 - closed below
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=None if log_file is None else log_file, env=env, cwd="/",
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        except OSError as error:
            self.stop()
            raise CliError(f"cannot start the private agent ({sys.executable}): {error.strerror}") from None
        finally:
            if log_file is not None:
                log_file.close()
        return self

    @property
    def spawned(self) -> bool:
        return self.process is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def wait_ready(self) -> PrivateAgent:
        """Wait for the ready line; on failure stop it and raise ``CliError`` with its own words."""
        assert self.process is not None, "spawn() first"
        line = self._read_ready_line()
        if not line.startswith(READY_PREFIX):
            detail = self._log_tail(self._log_path) or (line.decode(errors="replace").strip() or "no ready line")
            exited = self.process.poll()
            self.stop()
            state = f"exited with {exited}" if exited is not None else f"not ready within {self.ready_timeout:g}s"
            raise CliError(f"the private agent {state}: {detail}", Exit.FAILED)
        self.endpoint = line.decode().split()[2]
        self.startup_seconds = time.monotonic() - self._began
        return self

    def _read_ready_line(self) -> bytes:
        assert self.process is not None and self.process.stdout is not None
        return read_line(self.process.stdout.fileno(), self.ready_timeout)

    @staticmethod
    def _log_tail(path: str) -> str:
        try:
            with open(path, "rb") as log:
                lines = log.read().decode(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def stop(self, timeout: float = 5.0) -> None:
        """End the agent and remove its directory. Idempotent; safe on a half-started agent."""
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None and self.idle and not _has_children(process.pid):
                process.kill()  # nothing of ours runs under it: its orderly shutdown is wasted time
                process.wait()
            elif process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if process.stdout is not None:
                process.stdout.close()
        directory, self.directory = self.directory, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def __enter__(self) -> PrivateAgent:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _has_children(pid: int) -> bool:
    """Whether ``pid`` has a child process (something a command left behind, which its shutdown kills)."""
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as children:
                if children.read().strip():
                    return True
    except OSError:
        return True  # cannot tell: let it shut down in order
    return False


def read_line(fd: int, timeout: float) -> bytes:
    """Read from ``fd`` until a newline, EOF or ``timeout`` seconds (waiting on the fd, never sleeping)."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data
