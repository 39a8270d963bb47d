"""``uvmexec keygen DIR``: the CURVE key set an agent and its clients need.

Promise: :func:`keygen` makes, in ``DIR``, pyzmq ``zmq.auth`` certificate pairs

- ``agent.key`` / ``agent.key_secret``: the agent's (give the secret to
  ``uvm-agent --server-key``, the public one to clients as ``--server-key``);
- ``client.key`` / ``client.key_secret``: a client's (``--client-key`` takes
  the secret);
- ``authorized_keys/client.key``: a copy of the client's public certificate,
  so ``uvm-agent --authorized-keys DIR/authorized_keys`` admits it at once.

``DIR`` is created with mode 0700 (missing parents too); an existing ``DIR``
must be the caller's and private (no group or other access) or it is refused,
never tightened, and its parents must be a trusted path (:mod:`common.trust`).
``authorized_keys/`` is always made here. Secret files are 0600, public ones
0644, whatever the umask. Nothing is followed through a symbolic link: every
file is created relative to an open directory with ``O_EXCL | O_NOFOLLOW``.
It never overwrites: if any of these names exists it raises
``FileExistsError`` naming it and changes nothing; a refused target raises
:class:`~common.trust.UntrustedPathError`. A failure part way removes what it made.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq

from common.trust import UntrustedPathError, absolute_path, trusted_directory, who

AUTHORIZED_DIR = "authorized_keys"
_KEY_FILES = ("agent.key", "agent.key_secret", "client.key", "client.key_secret")
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class KeySet:
    """Where :func:`keygen` put each file."""

    directory: Path
    agent_public: Path
    agent_secret: Path
    client_public: Path
    client_secret: Path
    authorized_keys: Path

    @classmethod
    def in_directory(cls, directory: str | os.PathLike[str]) -> KeySet:
        root = Path(directory)
        return cls(root, root / "agent.key", root / "agent.key_secret", root / "client.key",
                   root / "client.key_secret", root / AUTHORIZED_DIR)

    def files(self) -> list[Path]:
        return [self.agent_public, self.agent_secret, self.client_public, self.client_secret,
                self.authorized_keys / "client.key"]


def keygen(directory: str | os.PathLike[str]) -> KeySet:
    """Create the key set in ``directory``; see the module docstring."""
    keys = KeySet.in_directory(directory)
    what = f"keygen {os.fspath(directory)}"
    parent, name = os.path.split(absolute_path(os.fspath(directory), what).rstrip("/"))
    if name in ("", ".", ".."):
        raise UntrustedPathError(f"{what}: name the directory to make")
    parent_real, parent_status = trusted_directory(parent or "/", what=what, create=True)
    parent_fd = os.open(parent_real, _OPEN_DIRECTORY)
    try:
        if not os.path.samestat(os.fstat(parent_fd), parent_status):
            raise UntrustedPathError(f"{what}: {parent_real} changed while it was checked; try again")
        made_directory = _private_directory(parent_fd, name, os.path.join(parent_real, name), what)
        try:
            _fill(parent_fd, name, keys)
        except BaseException:
            if made_directory:
                with contextlib.suppress(OSError):  # not empty: someone else's entries, left alone
                    os.rmdir(name, dir_fd=parent_fd)
            raise
    finally:
        os.close(parent_fd)
    return keys


def _private_directory(parent_fd: int, name: str, shown: str, what: str) -> bool:
    """Make ``name`` (mode 0700) in ``parent_fd``, or accept one there that is ours and private.
    True if it was made here."""
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        os.chmod(name, 0o700, dir_fd=parent_fd, follow_symlinks=False)  # whatever the umask
        return True
    except FileExistsError:
        pass
    status = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if stat.S_ISLNK(status.st_mode):
        raise UntrustedPathError(f"{what}: {shown} is a symbolic link; give the real directory")
    if not stat.S_ISDIR(status.st_mode):
        raise UntrustedPathError(f"{what}: {shown} exists and is not a directory")
    if status.st_uid != os.geteuid():
        raise UntrustedPathError(f"{what}: {shown} is owned by {who(status.st_uid)}, not by you "
                                 f"(uid {os.geteuid()}): keygen uses only a directory of yours; give a new path")
    if status.st_mode & 0o077:
        raise UntrustedPathError(f"{what}: {shown} is open to others (mode {stat.S_IMODE(status.st_mode):04o}); "
                                 f"chmod 700 {shown}, or give a new path")
    return False


def _fill(parent_fd: int, name: str, keys: KeySet) -> None:
    """Write the key set into the directory ``name`` of ``parent_fd``, by file descriptors only."""
    directory_fd = os.open(name, _OPEN_DIRECTORY, dir_fd=parent_fd)
    try:
        status = os.fstat(directory_fd)  # what we hold open: ours and private, checked again
        if status.st_uid != os.geteuid() or status.st_mode & 0o077:
            raise UntrustedPathError(f"keygen {keys.directory}: it changed while it was checked; try again")
        for entry in (*_KEY_FILES, AUTHORIZED_DIR):
            try:
                os.stat(entry, dir_fd=directory_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            hint = "keygen makes it itself" if entry == AUTHORIZED_DIR else "not overwriting keys"
            raise FileExistsError(f"{keys.directory / entry} already exists; {hint} (remove it first)")
        _write(directory_fd, keys)
    finally:
        os.close(directory_fd)


def _write(directory_fd: int, keys: KeySet) -> None:
    """The key files and authorized_keys/, each created new (O_EXCL); all removed again on failure."""
    made: list[str] = []
    try:
        agent_public, agent_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        certificates = {
            "agent.key": _certificate(agent_public, None), "agent.key_secret": _certificate(agent_public, agent_secret),
            "client.key": _certificate(client_public, None),
            "client.key_secret": _certificate(client_public, client_secret),
        }
        for entry, text in certificates.items():
            _create(directory_fd, entry, text, 0o600 if entry.endswith("_secret") else 0o644)
            made.append(entry)
        os.mkdir(AUTHORIZED_DIR, 0o700, dir_fd=directory_fd)
        made.append(AUTHORIZED_DIR)
        os.chmod(AUTHORIZED_DIR, 0o700, dir_fd=directory_fd, follow_symlinks=False)
        authorized_fd = os.open(AUTHORIZED_DIR, _OPEN_DIRECTORY, dir_fd=directory_fd)
        try:
            _create(authorized_fd, "client.key", certificates["client.key"], 0o644)
        finally:
            os.close(authorized_fd)
    except FileExistsError as error:  # it appeared after the check: someone else's, left alone
        _remove(directory_fd, made)
        raise FileExistsError(f"{error.filename} appeared in {keys.directory} while keygen ran; "
                              "not overwriting it (remove it first)") from None
    except BaseException:
        _remove(directory_fd, made)
        raise


def _create(directory_fd: int, name: str, data: bytes, mode: int) -> None:
    """A new file (never an existing one, never through a symlink) holding ``data`` with ``mode``."""
    fd = os.open(name, _CREATE_FILE, mode, dir_fd=directory_fd)
    try:
        with os.fdopen(fd, "wb") as stream:
            os.fchmod(fd, mode)  # the umask must not decide it
            stream.write(data)
    except BaseException:
        os.unlink(name, dir_fd=directory_fd)
        raise


def _remove(directory_fd: int, names: list[str]) -> None:
    for entry in reversed(names):
        try:
            if entry == AUTHORIZED_DIR:
                os.rmdir(entry, dir_fd=directory_fd)
            else:
                os.unlink(entry, dir_fd=directory_fd)
        except OSError:
            pass


def _certificate(public: bytes, secret: bytes | None) -> bytes:
    """A certificate in pyzmq's ``zmq.auth`` format (``zmq.auth.load_certificate`` reads it)."""
    kind = "**Secret**" if secret is not None else "Public"
    lines = [
        f"#   ****  Generated on {datetime.datetime.now():%Y-%m-%d %H:%M:%S} by uvmexec keygen  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
        "#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions." if secret is not None
        else "#   Exchange securely, or verify its contents after exchange.",
        "",
        "metadata",
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()
