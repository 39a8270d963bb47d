"""Local users against a root agent and a root client: ipc sockets and key files they could swap.

The tests run as root; ``nobody`` (uid 65534) plays the other local user, through ``setpriv``,
making what it could make in a world-writable sticky directory such as /tmp. Each attack here
worked before the fix (issue 13, items 1 to 3). The rules themselves are in common/trust.py
and tests/unit/test_trust.py; SECURITY.md, "Local users", has the model.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.errors import InvalidArgumentError
from host_proxy import AgentClient
from host_proxy.cli.embedded import read_line
from tests.cli.helpers import run_cli
from tests.support.agent import ROOT

pytestmark = pytest.mark.timeout(120)

NOBODY = 65534


def as_nobody(*command: str) -> None:
    """Run a command as nobody (uid and gid 65534, no supplementary groups)."""
    subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command],
                   check=True, capture_output=True, timeout=30)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A root-owned, sticky, world-writable directory (as /tmp is): every local user can add to it."""
    directory = Path(tempfile.mkdtemp(prefix="uvm-shared-", dir="/tmp"))
    directory.chmod(0o1777)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


def start_agent(*args: str, cwd: str = ROOT) -> tuple[int | None, str]:
    """``uvm-agent ARGS``: ``(exit code, stderr)`` if it refused to start, ``(None, "")`` if it
    started (it is killed again at once)."""
    process = subprocess.Popen([sys.executable, "-m", "guest_agent", "--log-level", "WARNING", *args],
                               cwd=cwd, env={**os.environ, "PYTHONPATH": ROOT}, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    try:
        if read_line(process.stdout.fileno(), 30).startswith(b"uvm-agent ready "):
            return None, ""
        code = process.wait(30)
        return code, process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        process.stdout.close()
        process.stderr.close()


def assert_refused(outcome: tuple[int | None, str], *needles: str) -> None:
    code, stderr = outcome
    assert code == 2, "the agent started"
    assert stderr.count("\n") == 1 and stderr.startswith("uvm-agent: "), stderr
    for needle in needles:
        assert needle in stderr


class Listener:
    """A unix socket that never accepts: afterwards, did anyone connect to it?"""

    def __init__(self, address: str) -> None:
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.bind(address)
        self.socket.listen(16)
        self.socket.setblocking(False)

    def connected(self) -> bool:
        try:
            peer, _ = self.socket.accept()
        except BlockingIOError:
            return False
        peer.close()
        return True

    def close(self) -> None:
        self.socket.close()


# -- item 1: abstract sockets ------------------------------------------------------------------------


def test_the_agent_refuses_an_abstract_socket(workdir):
    """ipc://@NAME has no permissions at all: any local user could connect and be root. (The old
    check looked at the directory of abspath("@NAME"): the agent's private cwd passed it.)"""
    assert_refused(start_agent("--listen", f"ipc://@uvm-test-{uuid.uuid4().hex}", cwd=workdir),
                   "abstract socket", "ipc:///")


def test_the_client_refuses_an_abstract_socket_without_connecting():
    """Anyone may have bound the name: the client refuses before it connects, so an impostor
    there never sees a hello (let alone a create with the caller's environment)."""
    name = f"uvm-test-{uuid.uuid4().hex}"
    impostor = Listener(f"\0{name}")
    try:
        with pytest.raises(InvalidArgumentError, match="abstract socket") as refused:
            AgentClient.connect(f"ipc://@{name}", timeout=1)
        assert "\n" not in str(refused.value)
        assert not impostor.connected()
    finally:
        impostor.close()


# -- item 2: whose directories an ipc socket lives in -------------------------------------------------


def test_the_agent_refuses_a_socket_directory_another_user_made(shared_tmp):
    """nobody made the 0700 directory a root agent was to use: it could rename the agent's
    socket and bind its own in its place."""
    planted = shared_tmp / "uvm"
    as_nobody("mkdir", "-m", "0700", str(planted))
    assert_refused(start_agent("--listen", f"ipc://{planted}/agent.sock"),
                   f"{planted} is owned by uid {NOBODY} (nobody)")
    assert os.listdir(planted) == []


def test_the_agent_refuses_a_directory_under_one_another_user_owns(shared_tmp):
    """The socket's own directory is new and root's, but nobody owns its parent: it can swap it."""
    parent = shared_tmp / "run"
    as_nobody("mkdir", "-m", "0755", str(parent))
    assert_refused(start_agent("--listen", f"ipc://{parent}/uvm/agent.sock"),
                   f"{parent} is owned by uid {NOBODY} (nobody)")
    assert os.listdir(parent) == []


def test_the_agent_refuses_a_symlink_another_user_planted(shared_tmp, workdir):
    """nobody's symlink points at a private root directory, so the agent's old check (which
    followed it) passed; nobody can later replace the link with a directory of its own."""
    target = Path(workdir) / "real"
    target.mkdir(mode=0o700)
    link = shared_tmp / "uvm"
    as_nobody("ln", "-s", str(target), str(link))
    assert_refused(start_agent("--listen", f"ipc://{link}/agent.sock"), f"{link} is a symbolic link")
    assert os.listdir(target) == []


def test_the_agent_still_makes_its_missing_directory_private(workdir):
    """The embedded default's case: a missing socket directory is made 0700, and the agent serves."""
    endpoint = f"ipc://{workdir}/new/agent.sock"
    process = subprocess.Popen([sys.executable, "-m", "guest_agent", "--listen", endpoint], cwd=ROOT,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert process.stdout is not None
    try:
        assert read_line(process.stdout.fileno(), 30).startswith(b"uvm-agent ready ")
        assert stat.S_IMODE(os.stat(f"{workdir}/new").st_mode) == 0o700
        with AgentClient.connect(endpoint, timeout=10) as client:
            client.ping()
    finally:
        process.terminate()
        process.wait(30)
        process.stdout.close()


def test_the_client_refuses_a_socket_in_a_directory_another_user_made(shared_tmp):
    """The root client checked nothing: it connected to whatever socket sat at the path, and
    would have sent a create carrying its environment. Now it refuses before connecting."""
    planted = shared_tmp / "uvm"
    as_nobody("mkdir", "-m", "0700", str(planted))
    impostor = Listener(str(planted / "agent.sock"))
    try:
        with pytest.raises(InvalidArgumentError, match=f"{planted} is owned by uid {NOBODY}") as refused:
            AgentClient.connect(f"ipc://{planted}/agent.sock", timeout=1)
        assert "\n" not in str(refused.value)
        assert not impostor.connected()
    finally:
        impostor.close()


def test_uvmexec_refuses_an_untrusted_ipc_endpoint_in_one_line(shared_tmp, tmp_path):
    planted = shared_tmp / "uvm"
    as_nobody("mkdir", "-m", "0700", str(planted))
    impostor = Listener(str(planted / "agent.sock"))
    try:
        for endpoint, needle in [(f"ipc://{planted}/agent.sock", f"{planted} is owned by uid {NOBODY}"),
                                 (f"ipc://@uvm-test-{uuid.uuid4().hex}", "abstract socket")]:
            result = run_cli(["run", "--guest", endpoint, "--", "true"], tmp_path)
            assert result.returncode == 77, result.stderr
            assert result.stderr.count(b"\n") == 1 and needle.encode() in result.stderr, result.stderr
        assert not impostor.connected()
    finally:
        impostor.close()
