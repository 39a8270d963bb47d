"""common/trust.py: which ipc paths and key files uvmexec uses, and the one-line refusals.

Run as root (as the suite is): another user's files are made by chown to nobody (uid 65534).
The attacks end to end, with nobody making its own files, are in
tests/reliability/test_local_trust.py.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.trust import (
    UntrustedPathError,
    check_ipc_endpoint,
    require_secret,
    trusted_directory,
    trusted_file,
    trusted_key_directory,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes files another user owns (needs root)")

NOBODY = 65534


@pytest.fixture
def private() -> Iterator[Path]:
    """A fresh 0700 root directory under /tmp (a root-owned sticky directory)."""
    directory = Path(tempfile.mkdtemp(prefix="uvm-trust-"))
    try:
        yield directory
    finally:
        for root, dirs, files in os.walk(directory, topdown=False):
            for name in files + dirs:
                path = os.path.join(root, name)
                os.rmdir(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
        os.rmdir(directory)


def refused(call, *needles: str) -> str:
    with pytest.raises(UntrustedPathError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


def mkdir(path: Path, mode: int, uid: int = 0) -> Path:
    path.mkdir()
    os.chmod(path, mode)
    os.chown(path, uid, uid)
    return path


def write(path: Path, mode: int = 0o644, uid: int = 0) -> Path:
    path.write_text("public-key = \"x\"\n")
    os.chmod(path, mode)
    os.chown(path, uid, uid)
    return path


# -- ipc endpoints ---------------------------------------------------------------------------------


def test_a_private_directory_under_a_root_sticky_one_is_trusted(private):
    assert os.stat("/tmp").st_mode & 0o1777 == 0o1777  # what the rest of the suite relies on
    assert check_ipc_endpoint(f"ipc://{private}/agent.sock") == f"{private}/agent.sock"
    sticky = mkdir(private / "tmp", 0o1777)
    inner = mkdir(sticky / "mine", 0o700)
    assert check_ipc_endpoint(f"ipc://{inner}/agent.sock") == f"{inner}/agent.sock"


def test_relative_and_dotted_paths_are_resolved_before_the_check(private, monkeypatch):
    mkdir(private / "sub", 0o755)
    monkeypatch.chdir(private)
    assert check_ipc_endpoint("ipc://agent.sock") == f"{private}/agent.sock"
    assert check_ipc_endpoint("ipc://./sub/../agent.sock") == f"{private}/agent.sock"


@pytest.mark.parametrize(("endpoint", "needle"), [
    ("ipc://@uvm-agent", "abstract socket"),
    ("ipc://@", "abstract socket"),
    ("ipc://*", "name the socket"),
    ("ipc:///tmp/", "names a directory"),
    ("tcp://127.0.0.1:1", "not an ipc:// endpoint"),
    ("ipc:///tmp/a\0b", "NUL byte"),
])
def test_endpoints_that_name_no_private_socket(endpoint, needle):
    refused(lambda: check_ipc_endpoint(endpoint), needle)


def test_the_socket_directory_must_be_closed_to_others(private):
    for mode in (0o750, 0o705, 0o710, 0o755):
        os.chmod(private, mode)
        refused(lambda: check_ipc_endpoint(f"ipc://{private}/agent.sock"),
                f"{private} is open to others (mode {mode:04o}, not 0700); chmod 700 {private}")


def test_the_socket_directory_must_be_the_callers(private):
    theirs = mkdir(private / "theirs", 0o700, NOBODY)
    refused(lambda: check_ipc_endpoint(f"ipc://{theirs}/agent.sock"),
            f"{theirs} is owned by uid {NOBODY} (nobody)")


def test_every_directory_above_it_must_be_root_or_the_callers(private):
    theirs = mkdir(private / "theirs", 0o755, NOBODY)
    mine = mkdir(theirs / "mine", 0o700)
    refused(lambda: check_ipc_endpoint(f"ipc://{mine}/agent.sock"), f"{theirs} is owned by uid {NOBODY}",
            "chown")


def test_no_directory_above_it_may_be_writable_by_others(private):
    for mode in (0o777, 0o775, 0o757):
        shared = mkdir(private / f"shared{mode:o}", mode)
        mine = mkdir(shared / "mine", 0o700)
        refused(lambda: check_ipc_endpoint(f"ipc://{mine}/agent.sock"),  # noqa: B023 - called at once
                f"{shared} is writable by others (mode {mode:04o}); chmod go-w {shared}")


def test_a_sticky_directory_is_trusted_only_when_root_owns_it(private):
    theirs = mkdir(private / "sticky", 0o1777, NOBODY)
    mine = mkdir(theirs / "mine", 0o700)
    refused(lambda: check_ipc_endpoint(f"ipc://{mine}/agent.sock"), f"{theirs} is owned by uid {NOBODY}")
    os.chown(theirs, 0, 0)
    check_ipc_endpoint(f"ipc://{mine}/agent.sock")
    # ... and never as the socket's own directory.
    refused(lambda: check_ipc_endpoint(f"ipc://{theirs}/agent.sock"), f"{theirs} is open to others")


def test_no_symbolic_link_anywhere_on_an_ipc_path(private):
    real = mkdir(private / "real", 0o700)
    (private / "link").symlink_to(real)
    refused(lambda: check_ipc_endpoint(f"ipc://{private}/link/agent.sock"),
            f"{private}/link is a symbolic link; give the real path ({real})")
    (real / "agent.sock").symlink_to(private / "elsewhere.sock")
    refused(lambda: check_ipc_endpoint(f"ipc://{real}/agent.sock"), f"{real}/agent.sock is a symbolic link")


def test_a_file_where_a_directory_should_be(private):
    write(private / "file")
    refused(lambda: check_ipc_endpoint(f"ipc://{private}/file/agent.sock"), f"{private}/file is not a directory")


def test_the_agent_makes_missing_directories_private_the_client_does_not(private):
    endpoint = f"ipc://{private}/a/b/agent.sock"
    refused(lambda: check_ipc_endpoint(endpoint), f"{private}/a does not exist")
    assert not (private / "a").exists()
    assert check_ipc_endpoint(endpoint, create=True) == f"{private}/a/b/agent.sock"
    for made in (private / "a", private / "a/b"):
        assert os.stat(made).st_mode & 0o777 == 0o700


def test_a_path_that_is_not_printable_is_quoted_on_one_line(private):
    odd = mkdir(private / "new\nline", 0o755)
    message = refused(lambda: check_ipc_endpoint(f"ipc://{odd}/agent.sock"), "open to others")
    assert repr(str(odd)) in message


# -- key files ---------------------------------------------------------------------------------------


def test_a_key_file_on_a_trusted_path(private):
    key = write(private / "agent.key")
    real, status = trusted_file(key, what="server_key")
    assert real == str(key) and status.st_size > 0
    secret = write(private / "agent.key_secret", 0o600)
    real, status = trusted_file(secret, what="server_key")
    require_secret(real, status, what="server_key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o600 | 0o020])
def test_a_secret_readable_or_writable_by_others_is_refused(private, mode):
    secret = write(private / "client.key_secret", mode)
    refused(lambda: require_secret(str(secret), os.stat(secret), what="client_key"),
            f"client_key: {secret} holds a secret key and is open to others", f"chmod 600 {secret}")


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664])
def test_a_key_file_writable_by_others_is_refused(private, mode):
    key = write(private / "agent.key", mode)
    refused(lambda: trusted_file(key, what="server_key"), f"server_key: {key} is writable by others",
            f"chmod go-w {key}")


def test_a_key_file_another_user_owns_or_that_is_no_file(private):
    key = write(private / "agent.key", 0o644, NOBODY)
    refused(lambda: trusted_file(key, what="k"), f"{key} is owned by uid {NOBODY}")
    refused(lambda: trusted_file(private, what="k"), f"{private} is not a regular file")
    refused(lambda: trusted_file(private / "none", what="k"), f"{private}/none does not exist")


def test_a_key_in_a_directory_others_can_write_is_refused(private):
    shared = mkdir(private / "shared", 0o777)
    key = write(shared / "agent.key")
    refused(lambda: trusted_file(key, what="k"), f"{shared} is writable by others")


def test_symbolic_links_to_key_files_are_followed_and_both_ends_checked(private):
    keys = mkdir(private / "keys", 0o700)
    key = write(keys / "agent.key")
    (private / "current").symlink_to("keys")
    assert trusted_file(private / "current/agent.key", what="k")[0] == str(key)
    (private / "link.key").symlink_to(key)
    assert trusted_file(private / "link.key", what="k")[0] == str(key)
    # The target lies under a directory others can write: refused, naming that directory.
    shared = mkdir(private / "shared", 0o777)
    write(shared / "evil.key")
    (private / "evil.key").symlink_to(shared / "evil.key")
    refused(lambda: trusted_file(private / "evil.key", what="k"), f"{shared} is writable by others")
    # The link lies in a directory others can write (they could repoint it): refused too.
    (shared / "to-good.key").symlink_to(key)
    refused(lambda: trusted_file(shared / "to-good.key", what="k"), f"{shared} is writable by others")


def test_a_symbolic_link_loop_ends(private):
    (private / "a").symlink_to("b")
    (private / "b").symlink_to("a")
    refused(lambda: trusted_file(private / "a", what="k"), "too many symbolic links")


def test_an_authorized_keys_directory_only_root_or_we_can_write(private):
    assert trusted_key_directory(mkdir(private / "ok", 0o755), what="d") == f"{private}/ok"
    for name, mode, uid in [("open", 0o777, 0), ("group", 0o775, 0), ("sticky", 0o1777, 0),
                            ("theirs", 0o755, NOBODY)]:
        directory = mkdir(private / name, mode, uid)
        refused(lambda: trusted_key_directory(directory, what="d"),  # noqa: B023 - called at once
                "writable by others" if uid == 0 else f"owned by uid {NOBODY}")


def test_trusted_directory_allows_a_root_sticky_one_and_creates(private):
    sticky = mkdir(private / "tmp", 0o1777)
    assert trusted_directory(sticky, what="d")[0] == str(sticky)
    real, status = trusted_directory(private / "x/y", what="d", create=True)
    assert real == f"{private}/x/y" and status.st_mode & 0o777 == 0o700


def test_a_secret_writable_by_others_is_told_chmod_600(private):
    secret = write(private / "agent.key_secret", 0o666)
    refused(lambda: trusted_file(secret, what="k", secret=True), f"writable by others (mode 0666); chmod 600 {secret}")


def test_a_relative_path_without_a_working_directory(private, monkeypatch):
    gone = mkdir(private / "gone", 0o700)
    monkeypatch.chdir(gone)
    os.rmdir(gone)
    refused(lambda: check_ipc_endpoint("ipc://agent.sock"), "no working directory")
    refused(lambda: trusted_file("agent.key", what="k"), "no working directory")
