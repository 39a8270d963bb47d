"""The runc command line, driven as containerd's runc shim drives it (``pkg/process``, go-runc).

One call per operation, each a short-lived ``runc`` process:

- ``runc create --bundle B --pid-file P [--console-socket S] ID`` and
  ``runc exec --detach --pid-file P --process process.json [--console-socket S] ID``
  are *launches* (:meth:`Runc.launch`): runc gets the container process's
  stdio — pipes made here, or, with a terminal, ``/dev/null`` and a console
  socket — and exits once the process exists; its pid is in the pid file.
  That process is a child of runc's, adopted by this process when runc
  exits: only a child subreaper (or PID 1) can watch and reap it.
- ``runc start``, ``runc kill [--all] ID SIGNAL``, ``runc delete --force``,
  ``runc ps --format json``: plain calls (:meth:`Runc.call`).

runc's own errors are read from its JSON log (``--log FILE --log-format
json``), as containerd does: a launch's stderr belongs to the container.

Terminals: runc creates the pty inside the container and sends its master
over the console socket with ``SCM_RIGHTS`` (runc's ``--console-socket``
protocol, runc/docs/terminals.md); :class:`ConsoleSocket` receives it. runc
sizes the pty from the process's ``consoleSize`` itself.

Every call blocks the calling thread until runc exits (tens of ms; see the
task benchmark): the supervisor calls it on its loop thread, so a container
process is watched in the same loop step as runc's exit made it known — the
orphan sweep cannot reap it in between.
"""

from __future__ import annotations

import array
import dataclasses
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

from ..errors import UnavailableError
from ..spec import DEFAULT_PATH, ProcessSpec, User
from .spawn import Spawned, SpawnError, spawn

#: How long one runc call may take before it is killed and the operation fails.
RUNC_TIMEOUT = 60.0


class RuncError(Exception):
    """A runc call failed; ``message`` is runc's own (from its log) or what happened to it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConsoleSocket:
    """A listening unix socket at ``path`` that receives one pty master from runc."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._listener.bind(path)
            self._listener.listen(1)
        except BaseException:
            self.close()
            raise

    def receive(self) -> int:
        """The pty master runc sent (non-blocking, close-on-exec). Call after runc exited: the
        connection and the fd are already queued then."""
        self._listener.setblocking(False)
        try:
            connection, _ = self._listener.accept()
        except BlockingIOError:
            raise RuncError("runc sent no terminal on the console socket") from None
        with connection:
            connection.setblocking(False)
            fds = array.array("i")
            try:
                _, ancillary, _, _ = connection.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize),
                                                        socket.MSG_CMSG_CLOEXEC)
            except BlockingIOError:
                raise RuncError("runc connected to the console socket but sent nothing") from None
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise RuncError(f"runc sent {len(fds)} descriptors on the console socket, not one")
        os.set_blocking(fds[0], False)
        return fds[0]

    def close(self) -> None:
        self._listener.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


#: The state root of runc for this process and its children when none is given: a containerd
#: shim sets it per containerd and namespace (as containerd's runc shim keeps one root per
#: namespace), so two containerds or namespaces never see each other's container ids.
ROOT_ENV = "UVMEXEC_RUNC_ROOT"


class Runc:
    """One runc binary and state root (``root``, else $UVMEXEC_RUNC_ROOT, else runc's default).
    Thread-compatible: each call is its own process."""

    def __init__(self, binary: str = "runc", root: str | None = None, timeout: float = RUNC_TIMEOUT) -> None:
        found = shutil.which(binary, path=os.pathsep.join(filter(None, [os.environ.get("PATH"), DEFAULT_PATH])))
        if found is None:
            raise UnavailableError(f"runc is not installed on this machine (no {binary!r} in PATH)")
        self.binary = found
        self.root = root if root is not None else (os.environ.get(ROOT_ENV) or None)
        self.timeout = timeout
        # runc runs with a clean environment (nothing like NOTIFY_SOCKET or LISTEN_FDS leaks into
        # a container) as this process's own identity.
        self._identity = User(os.geteuid(), os.getegid(), tuple(os.getgroups()))

    def _argv(self, log_path: str, args: Sequence[str]) -> list[str]:
        argv = [self.binary]
        if self.root is not None:
            argv += ["--root", self.root]
        return [*argv, "--log", log_path, "--log-format", "json", *args]

    def call(self, log_path: str, *args: str) -> str:
        """Run ``runc ARGS`` with no stdin; its stdout, or :class:`RuncError` with runc's words."""
        _truncate(log_path)
        try:
            process = subprocess.Popen(self._argv(log_path, args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, env={"PATH": DEFAULT_PATH}, cwd="/",
                                       process_group=0)
        except OSError as error:
            raise RuncError(f"cannot run {self.binary}: {error.strerror}") from None
        with process:
            stdout, stderr, status = _collect(process, self.timeout)
        if status is None:
            raise RuncError(f"runc {args[0]} did not finish within {self.timeout:g}s")
        if status != 0:
            raise RuncError(_last_error(log_path) or stderr.decode(errors="replace").strip()
                            or f"runc {args[0]} exited with status {status}")
        return stdout.decode(errors="replace")

    def launch(self, log_path: str, args: Sequence[str], pid_file: str, *, console: ConsoleSocket | None,
               feed_stdin: bool, capture_stdout: bool, capture_stderr: bool, umask: int | None = None) -> Spawned:
        """Run a launch (``create …`` or ``exec --detach …``; the container id last in ``args``)
        and return the container process with this side's ends of its stdio.

        Without ``console`` runc's stdio are the pipes asked for (``/dev/null`` otherwise),
        which runc hands to the process; with it, the pty master it sent. runc runs with
        ``umask`` (if given), which its process inherits unless the container's config sets
        one: runc 1.1 ignores an exec's own ``user.umask``. Raises
        :class:`~common.supervisor.spawn.SpawnError` with runc's own words; nothing is left
        open then.
        """
        _truncate(log_path)
        extra = ["--pid-file", pid_file]
        if console is not None:
            extra += ["--console-socket", console.path]
        argv = self._argv(log_path, [*args[:-1], *extra, args[-1]])
        identity = self._identity if umask is None else dataclasses.replace(self._identity, umask=umask)
        command = ProcessSpec(args=argv, env=[f"PATH={DEFAULT_PATH}"], user=identity)
        with_tty = console is not None
        runner = spawn(command, feed_stdin=feed_stdin and not with_tty, capture_stdout=capture_stdout and not with_tty,
                       capture_stderr=capture_stderr and not with_tty)
        ends = [fd for fd in (runner.stdin_fd, runner.stdout_fd, runner.stderr_fd) if fd is not None]
        try:
            assert runner.popen is not None
            status = _wait(runner.popen, self.timeout)
            if status is None:
                raise SpawnError(f"runc {args[0]} did not finish within {self.timeout:g}s")
            if status != 0:
                raise SpawnError(_last_error(log_path) or f"runc {args[0]} exited with status {status}")
            pid = _read_pid(pid_file)
            master = console.receive() if console is not None else None
        except RuncError as error:
            for fd in ends:
                os.close(fd)
            raise SpawnError(error.message) from None
        except BaseException:
            for fd in ends:
                os.close(fd)
            raise
        return Spawned(pid=pid, popen=None, stdin_fd=runner.stdin_fd, stdout_fd=runner.stdout_fd,
                       stderr_fd=runner.stderr_fd, pty_master=master)

    def kill(self, log_path: str, container_id: str, signum: int, *, all: bool = False) -> None:  # noqa: A002
        self.call(log_path, "kill", *(["--all"] if all else []), container_id, str(signum))

    def ps(self, log_path: str, container_id: str) -> list[int]:
        """The host pids of the container's processes (its cgroup's, as runc lists them)."""
        listed = json.loads(self.call(log_path, "ps", "--format", "json", container_id) or "null")
        return [pid for pid in listed or [] if isinstance(pid, int) and not isinstance(pid, bool)]


def _wait(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait (on a pidfd, no polling) for runc to exit and reap it: its status, or None if it
    ran over ``timeout`` (it is killed, with its process group, and reaped then)."""
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:  # kernels before 5.3
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            pidfd = -1
    else:
        try:
            if select.select([pidfd], [], [], timeout)[0]:
                return process.wait()
        finally:
            os.close(pidfd)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return None


def _collect(process: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bytes, int | None]:
    """Read runc's stdout and stderr to their ends, then reap it: (stdout, stderr, status or None
    if it ran over ``timeout``, killed)."""
    assert process.stdout is not None and process.stderr is not None
    deadline = time.monotonic() + timeout
    output: dict[int, list[bytes]] = {process.stdout.fileno(): [], process.stderr.fileno(): []}
    open_fds = list(output)
    while open_fds:
        remaining = deadline - time.monotonic()
        readable = select.select(open_fds, [], [], max(0.0, remaining))[0] if remaining > 0 else []
        if not readable:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return b"", b"", None
        for fd in readable:
            chunk = os.read(fd, 65536)
            if chunk:
                output[fd].append(chunk)
            else:
                open_fds.remove(fd)
    status = _wait(process, max(0.0, deadline - time.monotonic()))
    return b"".join(output[process.stdout.fileno()]), b"".join(output[process.stderr.fileno()]), status


def _read_pid(path: str) -> int:
    try:
        with open(path) as pid_file:
            text = pid_file.read().strip()
        os.unlink(path)
    except OSError as error:
        raise RuncError(f"runc wrote no pid file: {error.strerror}") from None
    if not text.isdigit() or int(text) <= 0:
        raise RuncError(f"runc wrote a bad pid file: {text[:40]!r}")
    return int(text)


def _truncate(path: str) -> None:
    """Empty the log before a call, so the last error in it is this call's."""
    with open(path, "wb"):
        pass


def _last_error(log_path: str) -> str:
    """The last error runc logged (``{"level": "error", "msg": …}`` lines), or ""."""
    message = ""
    try:
        with open(log_path, "rb") as log_file:
            lines = log_file.read(1024 * 1024).splitlines()
    except OSError:
        return ""
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal") and isinstance(entry.get("msg"), str):
            message = entry["msg"]
    return message[:1000]
