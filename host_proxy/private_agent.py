"""A uvm-agent child of this process on a private ipc socket: ``uvmexec run``'s embedded agent,
and the one :class:`~host_proxy.LocalTask` runs its containers through.

Promise: :class:`AgentChild` starts ``python -m guest_agent`` listening on an
ipc socket in a fresh 0700 directory, returns once the agent printed its ready
line (or fails within a deadline with the agent's own words, as an
``UnavailableError``), and ``stop()`` — idempotent, safe on a half-started
agent — ends it (SIGTERM, a bounded wait, SIGKILL), reaps it and removes the
directory. The agent also dies with the thread that spawned it if this
process is killed outright (``PR_SET_PDEATHSIG``), and it runs in its own
session so a terminal's Ctrl-C reaches only this process.

:func:`private_client` is this process's one private agent for tasks, started
on first use and stopped at exit. Why a child at all: running runc detached
needs a child subreaper that reaps every orphan, and a library must not make
its host process one — it would steal the exit statuses of the caller's own
``subprocess.Popen`` children. The agent is that subreaper, for this process
only, and process and hypervisor isolation then share all the task code.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import TYPE_CHECKING

from common.errors import UnavailableError

if TYPE_CHECKING:
    from .client import AgentClient

log = logging.getLogger(__name__)

READY_PREFIX = b"uvm-agent ready "
PR_SET_PDEATHSIG = 1
MAX_SOCKET_PATH = 100
# The package root (holding common/ and guest_agent/), so the agent starts from any cwd, installed or not.
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when its parent thread dies, however."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class AgentChild:
    """A uvm-agent child on ``ipc://<private dir>/agent.sock``. Use as a context manager."""

    def __init__(self, *, debug: bool = False, ready_timeout: float = 20.0) -> None:
        self.debug = debug
        self.ready_timeout = ready_timeout
        self.directory: str | None = None
        self.endpoint = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._began = 0.0
        self._log_path = ""

    def start(self) -> AgentChild:
        """Spawn it and wait until it is ready."""
        return self.spawn().wait_ready()

    def spawn(self) -> AgentChild:
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
        # stderr with debug; never a pipe nobody reads, which could stall it.
        log_file = None if self.debug else open(self._log_path, "wb")  # noqa: SIM115 - closed below
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=None if log_file is None else log_file, env=env, cwd="/",
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        except OSError as error:
            self.stop()
            raise UnavailableError(f"cannot start the private agent ({sys.executable}): {error.strerror}") from None
        finally:
            if log_file is not None:
                log_file.close()
        log.debug("private agent %d: spawned", self.process.pid)
        return self

    @property
    def spawned(self) -> bool:
        return self.process is not None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self) -> AgentChild:
        """Wait for the ready line; on failure stop it and raise ``UnavailableError`` with its words."""
        assert self.process is not None and self.process.stdout is not None, "spawn() first"
        line = read_line(self.process.stdout.fileno(), self.ready_timeout)
        if not line.startswith(READY_PREFIX):
            detail = self._log_tail(self._log_path) or (line.decode(errors="replace").strip() or "no ready line")
            exited = self.process.poll()
            self.stop()
            state = f"exited with {exited}" if exited is not None else f"not ready within {self.ready_timeout:g}s"
            raise UnavailableError(f"the private agent {state}: {detail}")
        self.endpoint = line.decode().split()[2]
        self.startup_seconds = time.monotonic() - self._began
        log.debug("private agent %d: ready after %.3f s", self.process.pid, self.startup_seconds)
        return self

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
            if process.poll() is None:
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

    def __enter__(self) -> AgentChild:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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


_shared: tuple[AgentChild, AgentClient] | None = None
_early: AgentChild | None = None  # guarded by _shared_lock: spawned by spawn_private_agent(), not yet taken
_shared_lock = threading.Lock()


def spawn_private_agent() -> None:
    """Start this process's private agent now and return at once: :func:`private_client` takes it
    later, waiting for its ready line then. For a process that knows early it will need one — the
    containerd shim's server, whose agent then boots while the server imports its modules.

    Call it from a thread that lives as long as the process (the main thread of a daemon): the
    agent dies with the thread that spawned it. A failure to spawn is left for
    :func:`private_client` to meet and report.
    """
    global _early
    with _shared_lock:
        if _shared is not None or _early is not None:
            return
        try:
            _early = AgentChild().spawn()
        except UnavailableError as error:
            log.debug("private agent: early spawn failed: %s", error)


def _take_early() -> AgentChild | None:
    """The agent :func:`spawn_private_agent` started, if it is still there (under _shared_lock)."""
    global _early
    early, _early = _early, None
    if early is not None and not early.alive:
        early.stop()
        return None
    return early


def private_client() -> AgentClient:
    """A client of this process's private agent, started on first use (again if it died).

    The agent is spawned from the shared loop thread, which lives as long as the process,
    so ``PR_SET_PDEATHSIG`` ends it with the process and not with whichever thread asked
    first; at exit it is stopped cleanly (it deletes what containers remain).
    """
    global _shared
    from .client import AgentClient
    from .loop_thread import shared_loop

    with _shared_lock:
        if _shared is not None and _shared[0].alive:
            return _shared[1]
        if _shared is not None:
            _stop(_shared)
        early = _take_early()
        child = early if early is not None else shared_loop().call(lambda: AgentChild().spawn())
        try:
            child.wait_ready()
            client = AgentClient.connect(child.endpoint)
        except BaseException:
            child.stop()
            raise
        _shared = (child, client)
        return client


def _stop(shared: tuple[AgentChild, AgentClient]) -> None:
    child, client = shared
    client.close()
    child.stop()


def stop_private_agent() -> None:
    """Stop this process's private agent (it kills and deletes its containers first); it starts
    again on next use. Registered to run at exit."""
    global _shared, _early
    with _shared_lock:
        shared, _shared = _shared, None
        early, _early = _early, None
    if shared is not None:
        _stop(shared)
    if early is not None:
        early.stop()


def _forget_after_fork() -> None:
    # The child shares none of the parent's threads or sockets; it starts its own agent if it needs one.
    global _shared, _early, _shared_lock
    _shared = None
    _early = None
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
atexit.register(stop_private_agent)
