"""Which local paths uvmexec trusts: ipc sockets and key files that no other local user can swap.

The rule is OpenSSH's (``safe_path``, used for ``authorized_keys``): a path is
trusted when every directory on it, from ``/`` down, is owned by root or by us
and writable by nobody else. A root-owned sticky directory such as ``/tmp``
may be on the way — others can add entries to it but cannot rename or remove
ours. Only then does what a check saw stay true afterwards: nobody but root
and us can replace a component once it is checked, so using the path after
the check is no race.

- **ipc sockets** (:func:`check_ipc_endpoint`, by the agent before it binds and
  by the client before it connects): no symbolic link anywhere on the path;
  the socket's own directory is ours and closed to group and others (0700).
  Abstract sockets (``ipc://@name``) are refused: they have no permissions
  at all, so any local user can bind or reach one.
- **key files** (:func:`trusted_file`, :func:`trusted_key_directory`): symbolic
  links are followed, and the link's directory and its target's path are
  both checked; a key file is a regular file owned by root or us and
  writable by nobody else; a file holding a secret is not readable by others
  either (:func:`require_secret`).

Every refusal is an :class:`UntrustedPathError` whose message is one line:
what was being checked, the path component at fault, and the fix. Imported by
the agent too, so the standard library only.
"""

from __future__ import annotations

import os
import pwd
import shlex
import stat

IPC_PREFIX = "ipc://"
_MAX_SYMLINKS = 40


class UntrustedPathError(ValueError):
    """A path uvmexec will not use; the message (one line) names the component at fault and the fix."""


def check_ipc_endpoint(endpoint: str, *, create: bool = False) -> str:
    """The socket path of ``ipc://PATH`` once the path is trusted for a socket; else UntrustedPathError.

    ``create`` (the agent, before it binds) makes missing directories, mode 0700.
    """
    what = _show(endpoint)
    if not endpoint.startswith(IPC_PREFIX):
        raise UntrustedPathError(f"{what}: not an ipc:// endpoint")
    path = endpoint[len(IPC_PREFIX):]
    if "\0" in path:
        raise UntrustedPathError(f"{what}: the path holds a NUL byte")
    if path.startswith("@"):
        raise UntrustedPathError(
            f"{what}: an abstract socket (ipc://@NAME) has no permissions, any local user can bind or "
            "reach it; use ipc:///PATH in a directory of mode 0700")
    if path == "*":
        raise UntrustedPathError(f"{what}: name the socket: ipc:///PATH in a directory of mode 0700")
    absolute = absolute_path(path, what)
    directory, name = os.path.split(absolute)
    if name in ("", ".", ".."):
        raise UntrustedPathError(f"{what}: names a directory, not a socket")
    real, status = _walk(directory or "/", what, follow=False, create=create)
    uid = os.geteuid()
    if not stat.S_ISDIR(status.st_mode):
        raise UntrustedPathError(f"{what}: {_show(real)} is not a directory")
    if status.st_uid != uid:
        raise UntrustedPathError(
            f"{what}: {_show(real)} is owned by {who(status.st_uid)}, not by you (uid {uid}); "
            "put the socket in a directory of your own with mode 0700")
    if status.st_mode & 0o077:
        raise UntrustedPathError(
            f"{what}: {_show(real)} is open to others (mode {stat.S_IMODE(status.st_mode):04o}, "
            f"not 0700); chmod 700 {_show(real)}")
    socket_path = os.path.join(real, name)
    try:
        if stat.S_ISLNK(os.lstat(socket_path).st_mode):
            raise UntrustedPathError(f"{what}: {_show(socket_path)} is a symbolic link; "
                                     "remove it or give the socket's real path")
    except FileNotFoundError:
        pass  # the agent is yet to bind it (or is not running): the directory is what matters
    except OSError as error:
        raise UntrustedPathError(f"{what}: cannot inspect {_show(socket_path)}: {error.strerror}") from None
    return socket_path


def trusted_file(path: str | os.PathLike[str], *, what: str, secret: bool = False) -> tuple[str, os.stat_result]:
    """``(real path, status)`` of a key file whose whole path is trusted; else UntrustedPathError.

    The file is regular, owned by root or us and not writable by group or others (``secret``:
    one meant to hold a secret, so the fix named is ``chmod 600``). Whether it may be readable
    by them is the caller's to decide once it knows what the file holds (:func:`require_secret`).
    """
    real, status = _walk(os.fspath(path), what, follow=True, create=False)
    if not stat.S_ISREG(status.st_mode):
        raise UntrustedPathError(f"{what}: {_show(real)} is not a regular file")
    _check_owner(real, status, what)
    if status.st_mode & 0o022:
        raise UntrustedPathError(
            f"{what}: {_show(real)} is writable by others (mode {stat.S_IMODE(status.st_mode):04o}); "
            f"{'chmod 600' if secret else 'chmod go-w'} {_show(real)}")
    return real, status


def require_secret(real: str, status: os.stat_result, *, what: str) -> None:
    """A file that holds a secret key must not be readable (or writable) by group or others."""
    if status.st_mode & 0o077:
        raise UntrustedPathError(
            f"{what}: {_show(real)} holds a secret key and is open to others "
            f"(mode {stat.S_IMODE(status.st_mode):04o}); chmod 600 {_show(real)}")


def trusted_key_directory(path: str | os.PathLike[str], *, what: str) -> str:
    """The real path of a directory of key files whose whole path is trusted, and which is
    writable by nobody but its owner (no sticky exception: anyone could add a key to it)."""
    real, status = _walk(os.fspath(path), what, follow=True, create=False)
    _check_directory(real, status, what, sticky_ok=False)
    return real


def trusted_directory(path: str | os.PathLike[str], *, what: str, create: bool = False) -> tuple[str, os.stat_result]:
    """``(real path, status)`` of a directory whose path (itself included) is trusted, following
    symbolic links as :func:`trusted_file` does; ``create`` makes missing directories, mode 0700.
    The last directory may be a root-owned sticky one, as any other on the path."""
    real, status = _walk(os.fspath(path), what, follow=True, create=create)
    _check_directory(real, status, what, sticky_ok=True)
    return real, status


# -- the walk ------------------------------------------------------------------------------


def _walk(path: str, what: str, *, follow: bool, create: bool) -> tuple[str, os.stat_result]:
    """Resolve ``path`` one component at a time from ``/``, as the kernel would, checking every
    directory it passes through; return the resolved path of the last component and its lstat
    (which the caller checks). ``follow`` False refuses symbolic links instead of resolving them.
    """
    if not path:
        raise UntrustedPathError(f"{what}: an empty path")
    if "\0" in path:
        raise UntrustedPathError(f"{what}: the path holds a NUL byte")
    path = absolute_path(path, what)  # getcwd() is a resolved path, checked like the rest
    pending = _components(path)
    current = "/"
    status = _lstat(current, what)  # always that of `current`
    hops = 0
    while pending:
        # `current` is a directory we pass through: check it before looking inside.
        _check_directory(current, status, what, sticky_ok=True)
        name = pending.pop()
        if name == "..":
            current = os.path.dirname(current)  # a prefix of a resolved path: checked already
            status = _lstat(current, what)
            continue
        candidate = os.path.join(current, name)
        try:
            found = os.lstat(candidate)
        except FileNotFoundError:
            if not create:
                raise UntrustedPathError(f"{what}: {_show(candidate)} does not exist") from None
            found = _make_directory(candidate, what)
        except OSError as error:
            raise UntrustedPathError(f"{what}: cannot inspect {_show(candidate)}: {error.strerror}") from None
        if stat.S_ISLNK(found.st_mode):
            if not follow:
                raise UntrustedPathError(f"{what}: {_show(candidate)} is a symbolic link; "
                                         f"give the real path ({_show(os.path.realpath(candidate))})")
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise UntrustedPathError(f"{what}: too many symbolic links at {_show(candidate)}")
            target = os.readlink(candidate)
            pending.extend(_components(target))
            if target.startswith("/"):
                current = "/"
                status = _lstat(current, what)
            continue
        current, status = candidate, found
    return current, status


def absolute_path(path: str, what: str) -> str:
    """``path`` made absolute against the working directory (which may have been removed)."""
    if os.path.isabs(path):
        return path
    try:
        return os.path.join(os.getcwd(), path)
    except OSError as error:
        raise UntrustedPathError(f"{what}: a relative path, and no working directory: {error.strerror}") from None


def _components(path: str) -> list[str]:
    """The names of ``path`` in reverse order (the next one last), without empty ones and ``.``."""
    return [name for name in reversed(path.split("/")) if name not in ("", ".")]


def _lstat(path: str, what: str) -> os.stat_result:
    try:
        return os.lstat(path)
    except OSError as error:
        raise UntrustedPathError(f"{what}: cannot inspect {_show(path)}: {error.strerror}") from None


def _make_directory(path: str, what: str) -> os.stat_result:
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass  # made meanwhile: what is there now is checked like anything else
    except OSError as error:
        raise UntrustedPathError(f"{what}: cannot create {_show(path)}: {error.strerror}") from None
    return _lstat(path, what)


def _check_directory(path: str, status: os.stat_result, what: str, *, sticky_ok: bool) -> None:
    """A directory on a trusted path: owned by root or us, writable by nobody else — except that a
    root-owned sticky directory (``/tmp``) may be written by others when ``sticky_ok``."""
    if not stat.S_ISDIR(status.st_mode):
        raise UntrustedPathError(f"{what}: {_show(path)} is not a directory")
    _check_owner(path, status, what)
    if status.st_mode & 0o022:
        if sticky_ok and status.st_mode & stat.S_ISVTX and status.st_uid == 0:
            return
        raise UntrustedPathError(
            f"{what}: {_show(path)} is writable by others (mode {stat.S_IMODE(status.st_mode):04o}); "
            f"chmod go-w {_show(path)}")


def _check_owner(path: str, status: os.stat_result, what: str) -> None:
    uid = os.geteuid()
    if status.st_uid not in (0, uid):
        raise UntrustedPathError(
            f"{what}: {_show(path)} is owned by {who(status.st_uid)}, who could replace what it holds; "
            f"only root and you (uid {uid}) may own it: use another path or chown it")


def who(uid: int) -> str:
    """``uid 65534 (nobody)``: a uid as messages name it."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _show(path: str) -> str:
    """A path as one shell word on one line."""
    return shlex.quote(path) if path.isprintable() else repr(path)
