"""Starting one process from a :class:`~common.spec.ProcessSpec`.

The common case (no tty, no rlimits, no no_new_privileges, identity already
right, no inherited signal state to undo) goes through ``subprocess.Popen``
with only native options, which lets CPython use ``vfork``: the cheapest way
to start a process from Python. The rest needs code between fork and exec
(TIOCSCTTY, setrlimit before dropping privileges, PR_SET_NO_NEW_PRIVS,
resetting signals), run as a ``preexec_fn`` that reports its own failure
through a pipe so the caller learns the real cause.

Every process starts with default signal dispositions and an empty signal
mask, as runc and containerd start theirs, whatever the process that spawns
it inherited: an agent started as a background job of a shell ignores
SIGINT and SIGQUIT, and ignored signals and the mask survive ``execve``.

Nothing here waits for a child: the :class:`~common.supervisor.reaper.Reaper`
owns every wait.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import stat
import struct
import subprocess
import termios
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import describe
from ..spec import MAX_RLIM, ProcessSpec

if TYPE_CHECKING:
    from .reaper import Watch

# Linux resource numbers; Python's resource module lacks RLIMIT_LOCKS.
_RLIMIT_NUMBERS = {
    "RLIMIT_CPU": 0,
    "RLIMIT_FSIZE": 1,
    "RLIMIT_DATA": 2,
    "RLIMIT_STACK": 3,
    "RLIMIT_CORE": 4,
    "RLIMIT_RSS": 5,
    "RLIMIT_NPROC": 6,
    "RLIMIT_NOFILE": 7,
    "RLIMIT_MEMLOCK": 8,
    "RLIMIT_AS": 9,
    "RLIMIT_LOCKS": 10,
    "RLIMIT_SIGPENDING": 11,
    "RLIMIT_MSGQUEUE": 12,
    "RLIMIT_NICE": 13,
    "RLIMIT_RTPRIO": 14,
    "RLIMIT_RTTIME": 15,
}
_PR_SET_NO_NEW_PRIVS = 38
_SIG_DFL = 0
_NSIG = 65
#: Signals Popen itself resets in the child (restore_signals): Python ignores them at start-up.
_RESET_BY_POPEN = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))
_F_SETPIPE_SZ = 1031
#: Bigger pipes mean fewer wake-ups per byte streamed; the kernel allocates on demand.
PIPE_SIZE = 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl
_setrlimit = _libc.setrlimit
_signal = _libc.signal
_signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
_signal.restype = ctypes.c_void_p


def inherited_signal_state() -> tuple[int, int]:
    """This thread's (blocked, ignored) signal sets, less what Popen resets by itself.

    Read from ``/proc/thread-self/status``: the only place that also shows what
    C code, or the process that started ours, set up.
    """
    with open("/proc/thread-self/status", "rb") as status:
        text = status.read()
    blocked = int(text[text.index(b"SigBlk:") + 7:text.index(b"\n", text.index(b"SigBlk:"))], 16)
    ignored = int(text[text.index(b"SigIgn:") + 7:text.index(b"\n", text.index(b"SigIgn:"))], 16)
    return blocked, ignored & ~_RESET_BY_POPEN


class _RlimitStruct(ctypes.Structure):
    _fields_ = [("rlim_cur", ctypes.c_uint64), ("rlim_max", ctypes.c_uint64)]


class SpawnError(Exception):
    """The process could not be started. ``cause`` is one line naming what was at fault.

    ``is_resource_shortage`` tells a transient shortage (EAGAIN, ENOMEM,
    EMFILE) from a bad spec.
    """

    def __init__(self, cause: str, *, is_resource_shortage: bool = False) -> None:
        super().__init__(cause)
        self.cause = cause
        self.is_resource_shortage = is_resource_shortage


@dataclass
class Spawned:
    """A started process and the parent's ends of its stdio (non-blocking, close-on-exec).

    ``stdin_fd`` is None when stdin is ``/dev/null``; with a tty, ``pty_master``
    carries both directions and ``stdout_fd``/``stderr_fd`` are None. ``popen``
    is None for a process this one did not spawn itself (one runc started).
    ``watch`` is the reaper's watch of a process watched since before it was
    launched (a container's init, made by ``runc create`` before its start):
    the exec takes it over rather than watching the pid a second time.
    """

    pid: int
    popen: subprocess.Popen[bytes] | None
    stdin_fd: int | None
    stdout_fd: int | None
    stderr_fd: int | None
    pty_master: int | None
    watch: Watch | None = None


_SHORTAGE_ERRNOS = {errno.EAGAIN, errno.ENOMEM, errno.EMFILE, errno.ENFILE}


def find_executable(spec: ProcessSpec) -> str:
    """Resolve ``args[0]`` as execve would after a PATH search in the spec's own PATH."""
    program = spec.args[0]
    if "/" in program:
        return program
    for directory in spec.search_path.split(":"):
        candidate = os.path.join(directory or ".", program)
        if not candidate.startswith("/"):
            candidate = os.path.join(spec.cwd, candidate)
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
            return candidate
    raise SpawnError(f"executable file not found in $PATH: {describe(program)}")


def _nonblocking_cloexec_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(read_end, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # capped by /proc/sys/fs/pipe-max-size for unprivileged users; the default works
    return read_end, write_end


def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def _identity_change_needed(spec: ProcessSpec) -> bool:
    user = spec.user
    return (
        user.uid != os.geteuid()
        or user.gid != os.getegid()
        or sorted(set(user.additional_gids)) != sorted(set(os.getgroups()))
    )


class _ChildSetup:
    """What runs between fork and exec when native Popen options do not suffice.

    Order matters and follows runc: rlimits first (raising a hard limit needs
    privilege), then supplementary groups, gid, uid, then no_new_privileges.
    The working directory is entered last, as the target user, so a user who
    may not enter it fails to start (as runc does) instead of running there.
    A failure is written to ``report_fd`` so the parent can say exactly what
    went wrong, then raised so Popen aborts the exec.
    """

    def __init__(self, spec: ProcessSpec, *, set_ctty: bool, change_identity: bool, reset_signals: bool,
                 report_fd: int) -> None:
        self.reset_signals = reset_signals
        self.rlimits = [
            (_RLIMIT_NUMBERS[limit.type], limit.soft, limit.hard, limit.type) for limit in spec.rlimits
        ]
        self.set_ctty = set_ctty
        self.identity = (
            (spec.user.uid, spec.user.gid, list(spec.user.additional_gids)) if change_identity else None
        )
        self.no_new_privileges = spec.no_new_privileges
        self.cwd = spec.cwd
        self.report_fd = report_fd

    def __call__(self) -> None:
        step = "setting up the process"
        try:
            if self.reset_signals:
                step = "resetting signal dispositions and the signal mask"
                # Python's signal.signal works only in the main thread: this is the forking
                # thread's child, so ask libc. 32 and 33 belong to glibc and are refused: fine.
                for number in range(1, _NSIG):
                    _signal(number, _SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())
            if self.set_ctty:
                step = "making the pty the controlling terminal"
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            for number, soft, hard, name in self.rlimits:
                step = f"setting {name} to {soft}:{hard}"
                limit = _RlimitStruct(min(soft, MAX_RLIM), min(hard, MAX_RLIM))
                if _setrlimit(number, ctypes.byref(limit)) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
            if self.identity is not None:
                uid, gid, groups = self.identity
                step = f"switching to user {uid}:{gid}"
                os.setgroups(groups)
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
            if self.no_new_privileges:
                step = "setting no_new_privileges"
                if _prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, os.strerror(code))
            step = f"cwd {describe(self.cwd)}"
            os.chdir(self.cwd)
        except OSError as error:
            os.write(self.report_fd, f"{step}: {error.strerror}".encode()[:512])
            raise


def spawn(spec: ProcessSpec, *, feed_stdin: bool, capture_stdout: bool, capture_stderr: bool) -> Spawned:
    """Start ``spec``; the caller must hand ``pid`` to the reaper before yielding to the loop.

    Pipes (or a pty) connect the process to the caller only for the streams
    asked for; the others are ``/dev/null``. Raises :class:`SpawnError`.
    """
    executable = find_executable(spec)
    env = {}
    for entry in spec.env:
        key, _, value = entry.partition("=")
        env[key] = value

    child_fds: list[int] = []
    parent_fds: list[int] = []
    stdin_fd = stdout_fd = stderr_fd = pty_master = None
    report_read = report_write = -1
    try:
        if spec.terminal:
            pty_master, slave = os.openpty()
            parent_fds.append(pty_master)
            child_fds.append(slave)
            if spec.console_size is not None:
                height, width = spec.console_size
                fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
            _set_nonblocking(pty_master)
            child_stdin = child_stdout = child_stderr = slave
        else:
            child_stdin = child_stdout = child_stderr = subprocess.DEVNULL
            if feed_stdin:
                child_stdin, stdin_fd = os.pipe2(os.O_CLOEXEC)
                child_fds.append(child_stdin)
                parent_fds.append(stdin_fd)
                _set_nonblocking(stdin_fd)
            if capture_stdout:
                stdout_fd, child_stdout = _nonblocking_cloexec_pipe()
                child_fds.append(child_stdout)
                parent_fds.append(stdout_fd)
                _set_nonblocking(stdout_fd)
            if capture_stderr:
                stderr_fd, child_stderr = _nonblocking_cloexec_pipe()
                child_fds.append(child_stderr)
                parent_fds.append(stderr_fd)
                _set_nonblocking(stderr_fd)

        change_identity = _identity_change_needed(spec)
        reset_signals = inherited_signal_state() != (0, 0)
        needs_setup = bool(spec.terminal or spec.rlimits or spec.no_new_privileges or change_identity
                           or reset_signals)
        # The native path (vfork) enters cwd itself; the set-up path does it as the target user.
        options: dict[str, Any] = {"cwd": spec.cwd}
        if needs_setup:
            report_read, report_write = os.pipe2(os.O_CLOEXEC)
            options["preexec_fn"] = _ChildSetup(
                spec, set_ctty=spec.terminal, change_identity=change_identity, reset_signals=reset_signals,
                report_fd=report_write
            )
            options["cwd"] = None
        if spec.terminal:
            options["start_new_session"] = True
        else:
            options["process_group"] = 0
        if spec.user.umask is not None:
            options["umask"] = spec.user.umask
        try:
            popen = subprocess.Popen(
                spec.args,
                executable=executable,
                stdin=child_stdin,
                stdout=child_stdout,
                stderr=child_stderr,
                env=env,
                close_fds=True,
                **options,
            )
        except subprocess.SubprocessError:
            # Only our preexec step raises this; it wrote the real cause first.
            os.close(report_write)
            report_write = -1
            detail = os.read(report_read, 512).decode(errors="replace") or "child set-up failed"
            raise SpawnError(detail) from None
        except OSError as error:
            raise SpawnError(
                _describe_os_error(error, spec, executable, change_identity),
                is_resource_shortage=error.errno in _SHORTAGE_ERRNOS,
            ) from None
    except BaseException:
        for fd in parent_fds:
            os.close(fd)
        raise
    finally:
        for fd in child_fds:
            os.close(fd)
        for fd in (report_read, report_write):
            if fd >= 0:
                os.close(fd)
    return Spawned(
        pid=popen.pid,
        popen=popen,
        stdin_fd=stdin_fd,
        stdout_fd=stdout_fd,
        stderr_fd=stderr_fd,
        pty_master=pty_master,
    )


def _describe_os_error(error: OSError, spec: ProcessSpec, executable: str, change_identity: bool) -> str:
    reason = error.strerror or str(error)
    if error.filename is not None and error.filename == spec.cwd and error.filename != executable:
        return f"cwd {describe(spec.cwd)}: {reason}"
    if error.filename is not None:
        return f"exec {describe(executable)}: {reason}"
    if change_identity and error.errno == errno.EPERM:
        return f"switching to user {spec.user.uid}:{spec.user.gid}: {reason}"
    return f"starting {describe(spec.args[0])}: {reason}"
