"""Driving ``uvmexec`` as a person would: as a subprocess, with pipes or a real terminal.

Every wait has a deadline and blocks on an fd or a process, never on a sleep.
Every process started here is waited for.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UVMEXEC = [sys.executable, "-m", "host_proxy.cli"]


# Settings that would point uvmexec at another agent than the test's (image and VM settings stay).
_CONNECTION_ENV = ("UVMEXEC_GUEST", "UVMEXEC_KEYS", "UVMEXEC_SERVER_KEY", "UVMEXEC_CLIENT_KEY",
                   "UVMEXEC_SSH_KEY", "UVMEXEC_KNOWN_HOSTS", "UVMEXEC_DEBUG")


def cli_env(tmp_path, **extra: str) -> dict[str, str]:
    """Our environment, minus anything that would point uvmexec elsewhere; TMPDIR is the test's own."""
    env = {key: value for key, value in os.environ.items() if key not in _CONNECTION_ENV}
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp)
    env["PYTHONPATH"] = ROOT
    env.update(extra)
    return env


def run_cli(args: list[str], tmp_path, *, stdin_data: bytes | None = None, timeout: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """``uvmexec ARGS`` to completion; stdin is ``stdin_data`` through a pipe, else /dev/null."""
    return subprocess.run(UVMEXEC + args, input=stdin_data, capture_output=True,
                          stdin=None if stdin_data is not None else subprocess.DEVNULL,
                          env=env or cli_env(tmp_path), cwd=ROOT, timeout=timeout)


def read_until(fd: int, needle: bytes, timeout: float = 20.0, seen: bytearray | None = None) -> bytes:
    """Read ``fd`` until ``needle`` shows up; everything read so far is returned (and kept in ``seen``)."""
    data = seen if seen is not None else bytearray()
    deadline = time.monotonic() + timeout
    while needle not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{needle!r} not seen within {timeout}s; got {bytes(data)!r}")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: a pty whose other side is closed
            chunk = b""
        if not chunk:
            raise AssertionError(f"EOF before {needle!r}; got {bytes(data)!r}")
        data += chunk
    return bytes(data)


def reap(process: subprocess.Popen, timeout: float = 20.0) -> int:
    """Wait for ``process``; kill it if it outlives ``timeout`` (then the test fails)."""
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{process.args!r} did not exit within {timeout}s") from None


def discard(process: subprocess.Popen) -> None:
    """A test's last word on a process it started: close its pipes, kill it if it still runs."""
    for pipe in (process.stdin, process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()
    if process.poll() is None:
        process.kill()
        process.wait()


def gone(pid: int) -> bool:
    """The process no longer exists (or is a zombie that no longer runs)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
