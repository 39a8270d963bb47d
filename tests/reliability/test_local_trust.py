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
from tests.support.agent import ROOT, Keys

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
            assert result.returncode == 125, result.stderr
            assert result.stderr.count(b"\n") == 1 and needle.encode() in result.stderr, result.stderr
        assert not impostor.connected()
    finally:
        impostor.close()


# -- item 3: keygen's target, and key files on load ---------------------------------------------------


def keygen(target: Path, tmp_path: Path) -> str:
    """``uvmexec keygen TARGET``, expected to refuse: its one line of stderr."""
    result = run_cli(["keygen", str(target)], tmp_path)
    assert result.returncode == 125, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.count(b"\n") == 1 and b"Traceback" not in result.stderr, result.stderr
    return result.stderr.decode()


def test_keygen_refuses_a_directory_another_user_made(shared_tmp, tmp_path):
    """nobody made the target and an authorized_keys/ in it, both 0777: keygen kept them, and
    nobody's key dropped in there was admitted by the agent."""
    target = shared_tmp / "keys"
    as_nobody("mkdir", "-m", "0777", str(target), str(target / "authorized_keys"))
    assert f"{target} is owned by uid {NOBODY} (nobody)" in keygen(target, tmp_path)
    assert os.listdir(target) == ["authorized_keys"] and os.listdir(target / "authorized_keys") == []
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o777  # not "tightened" for its owner


def test_keygen_refuses_a_directory_that_is_not_private(tmp_path):
    target = tmp_path / "keys"
    target.mkdir(mode=0o755)
    os.chmod(target, 0o755)
    assert f"{target} is open to others (mode 0755); chmod 700 {target}" in keygen(target, tmp_path)
    assert os.listdir(target) == []


def test_keygen_never_follows_a_symlink(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(elsewhere)
    assert f"{link} is a symbolic link" in keygen(link, tmp_path)
    target = tmp_path / "keys"
    target.mkdir(mode=0o700)
    (target / "authorized_keys").symlink_to(elsewhere)  # client.key would have been copied there
    assert f"{target}/authorized_keys already exists" in keygen(target, tmp_path)
    assert os.listdir(elsewhere) == [] and os.listdir(target) == ["authorized_keys"]


def test_keygen_refuses_an_authorized_keys_directory_it_did_not_make(tmp_path):
    target = tmp_path / "keys"
    target.mkdir(mode=0o700)
    (target / "authorized_keys").mkdir(mode=0o700)
    assert f"{target}/authorized_keys already exists" in keygen(target, tmp_path)
    assert os.listdir(target) == ["authorized_keys"]


def test_keygen_takes_an_empty_private_directory_of_yours(tmp_path):
    target = tmp_path / "keys"
    target.mkdir(mode=0o700)
    result = run_cli(["keygen", str(target)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(target)) == ["agent.key", "agent.key_secret", "authorized_keys", "client.key",
                                          "client.key_secret"]


def spoil_agent_keys(keys: Keys, how: str) -> str:
    """Make one of the agent's key files or directories untrustworthy; the text its refusal names."""
    authorized, key = keys.authorized, os.path.join(keys.authorized, "client.key")
    if how == "secret readable by others":
        os.chmod(keys.agent_secret, 0o644)
        return f"--server-key: {keys.agent_secret} holds a secret key and is open to others (mode 0644); " \
               f"chmod 600 {keys.agent_secret}"
    if how == "secret writable by all":
        os.chmod(keys.agent_secret, 0o666)
        return f"chmod 600 {keys.agent_secret}"
    if how == "secret owned by nobody":
        os.chown(keys.agent_secret, NOBODY, NOBODY)
        return f"--server-key: {keys.agent_secret} is owned by uid {NOBODY}"
    if how == "directory of secret writable by all":
        os.chmod(keys.directory, 0o777)
        return f"--server-key: {keys.directory} is writable by others (mode 0777); chmod go-w {keys.directory}"
    if how == "authorized directory writable by all":
        os.chmod(authorized, 0o777)
        return f"--authorized-keys: {authorized} is writable by others (mode 0777); chmod go-w {authorized}"
    if how == "authorized directory owned by nobody":
        os.chown(authorized, NOBODY, NOBODY)
        return f"--authorized-keys: {authorized} is owned by uid {NOBODY}"
    if how == "authorized key writable by all":
        os.chmod(key, 0o666)
        return f"--authorized-keys: {key} is writable by others (mode 0666); chmod go-w {key}"
    assert how == "authorized key owned by nobody"
    os.chown(key, NOBODY, NOBODY)
    return f"--authorized-keys: {key} is owned by uid {NOBODY}"


@pytest.mark.parametrize("how", [
    "secret readable by others", "secret writable by all", "secret owned by nobody",
    "directory of secret writable by all", "authorized directory writable by all",
    "authorized directory owned by nobody", "authorized key writable by all", "authorized key owned by nobody",
])
def test_the_agent_refuses_key_files_others_could_read_or_change(keys, how):
    needle = spoil_agent_keys(keys, how)
    assert_refused(start_agent("--listen", "tcp://127.0.0.1:0", "--server-key", keys.agent_secret,
                               "--authorized-keys", keys.authorized), needle)


def test_the_agent_refuses_a_key_nobody_dropped_into_an_open_directory(shared_tmp):
    """The reported attack: authorized_keys/ is 0777 and nobody adds its own key to it."""
    keys = Keys.create(str(shared_tmp / "keys"))
    os.chmod(keys.directory, 0o755)
    os.chmod(keys.authorized, 0o777)
    stranger = Keys.create(str(shared_tmp / "stranger"))  # nobody's key pair, which it can read
    os.chmod(stranger.directory, 0o755)
    as_nobody("cp", stranger.client_public, f"{keys.authorized}/nobody.key")
    assert_refused(start_agent("--listen", "tcp://127.0.0.1:0", "--server-key", keys.agent_secret,
                               "--authorized-keys", keys.authorized),
                   f"--authorized-keys: {keys.authorized} is writable by others")


@pytest.mark.parametrize(("how", "needle"), [
    ("client secret readable by others", "client_key: {client_secret} holds a secret key and is open to others "
                                         "(mode 0644); chmod 600 {client_secret}"),
    ("client secret owned by nobody", "client_key: {client_secret} is owned by uid 65534"),
    ("server key writable by all", "server_key: {agent_public} is writable by others (mode 0666); "
                                   "chmod go-w {agent_public}"),
    ("server key owned by nobody", "server_key: {agent_public} is owned by uid 65534"),
    ("key directory writable by all", "server_key: {directory} is writable by others (mode 0777)"),
])
def test_the_client_refuses_key_files_others_could_read_or_change(tcp_agent, keys, how, needle):
    """Before connecting: a stolen client secret, or a server key someone else chose, would
    make the CURVE handshake prove nothing."""
    if how == "client secret readable by others":
        os.chmod(keys.client_secret, 0o644)
    elif how == "client secret owned by nobody":
        os.chown(keys.client_secret, NOBODY, NOBODY)
    elif how == "server key writable by all":
        os.chmod(keys.agent_public, 0o666)
    elif how == "server key owned by nobody":
        os.chown(keys.agent_public, NOBODY, NOBODY)
    else:
        os.chmod(keys.directory, 0o777)
    with pytest.raises(InvalidArgumentError) as refused:
        AgentClient.connect(tcp_agent.endpoints[0], server_key=keys.agent_public,
                            client_key=keys.client_secret, timeout=5)
    assert str(refused.value).startswith(needle.format(**vars(keys)))
    assert "\n" not in str(refused.value)


def test_uvmexec_refuses_a_client_secret_others_can_read(tcp_agent, keys, tmp_path):
    os.chmod(keys.client_secret, 0o640)
    result = run_cli(["run", "--guest", tcp_agent.endpoints[0], "--keys", keys.directory, "--", "true"], tmp_path)
    assert result.returncode == 125
    assert result.stderr.count(b"\n") == 1
    assert f"chmod 600 {keys.client_secret}".encode() in result.stderr, result.stderr
