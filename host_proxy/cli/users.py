"""``--user USER[:GROUP]`` resolved as ``docker exec`` resolves it, from where the command runs.

Promise: :func:`resolve` turns the option into the identity and home
directory the command gets, from the passwd and group files of the machine
the process runs on (for a guest they are read through its agent by
:func:`read_accounts`: ``cat /etc/passwd /etc/group`` run as a hidden exec,
deleted afterwards), following runc/libcontainer's ``GetExecUser``:

- USER is a name or a numeric uid. A name must be in passwd. A uid that is
  there takes its entry's group and home; one that is not runs with gid 0
  and ``HOME=/``.
- GROUP (optional) is a name, which must be in group, or a numeric gid; it
  replaces the user's group. Without it, the user also gets every group that
  lists them as a member (supplementary groups).

Errors are :class:`~host_proxy.cli.errors.CliError` lines naming the option.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from common import ProcessSpec, Stdio, User

from .errors import CliError

MAX_ACCOUNT_BYTES = 4 * 1024 * 1024  # more passwd and group than any real machine has
LOOKUP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class Group:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class Accounts:
    """The users and groups of one machine (passwd lines have 7 fields, group lines 4)."""

    users: tuple[Account, ...] = ()
    groups: tuple[Group, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Accounts:
        users, groups = [], []
        for line in text.splitlines():
            if not line or line.startswith(("#", "+", "-")):
                continue
            fields = line.split(":")
            try:
                if len(fields) == 7:
                    users.append(Account(fields[0], int(fields[2]), int(fields[3]), fields[5]))
                elif len(fields) == 4:
                    members = tuple(member for member in fields[3].split(",") if member)
                    groups.append(Group(fields[0], int(fields[2]), members))
            except ValueError:
                continue  # a malformed line is skipped, as libc skips it
        return cls(tuple(users), tuple(groups))


@dataclass(frozen=True)
class Resolved:
    user: User
    home: str


def _number(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def resolve(option: str, accounts: Accounts, where: str) -> Resolved:
    """The identity ``--user option`` names on a machine with ``accounts`` (``where`` names it)."""
    user_text, colon, group_text = option.partition(":")
    if not user_text or (colon and not group_text):
        raise CliError(f"--user {option!r}: give USER, UID, USER:GROUP or UID:GID")
    uid = _number(user_text)
    entry = next((account for account in accounts.users
                  if (account.uid == uid if uid is not None else account.name == user_text)), None)
    if entry is None and uid is None:
        raise CliError(f"--user {option}: no user {user_text!r} in /etc/passwd on {where} "
                       "(give a numeric UID, or a user it has)")
    uid = entry.uid if entry is not None else uid
    gid = entry.gid if entry is not None else 0
    home = entry.home if entry is not None and entry.home else "/"
    supplementary: list[int] = []
    if group_text:
        gid_given = _number(group_text)
        if gid_given is None:
            found = next((group for group in accounts.groups if group.name == group_text), None)
            if found is None:
                raise CliError(f"--user {option}: no group {group_text!r} in /etc/group on {where} "
                               "(give a numeric GID, or a group it has)")
            gid_given = found.gid
        gid = gid_given
    elif entry is not None:
        supplementary = [group.gid for group in accounts.groups if entry.name in group.members]
    assert uid is not None
    try:
        return Resolved(User(uid, gid, tuple(dict.fromkeys(supplementary))), home)
    except ValueError as error:  # out of range
        raise CliError(f"--user {option}: {error}".replace("invalid process spec: ", "")) from None


class _Bounded:
    """A binary sink that keeps the first ``limit`` bytes it is given."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        room = self.limit - self.size
        if room > 0:
            kept = bytes(data[:room])
            self.chunks.append(kept)
            self.size += len(kept)
        return len(data)

    def flush(self) -> None:
        pass

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def read_local_accounts() -> Accounts:
    """This machine's passwd and group (the private agent runs commands here)."""
    text = []
    for path in ("/etc/passwd", "/etc/group"):
        try:
            with open(path, encoding="utf-8", errors="replace") as file:
                text.append(file.read(MAX_ACCOUNT_BYTES))
        except OSError:
            continue
    return Accounts.parse("\n".join(text))


def read_accounts(client: object, task: str, where: str) -> Accounts:
    """The guest's passwd and group, read by a hidden exec through the agent (then deleted)."""
    from common.errors import ExecError

    from ..client import AgentClient
    from .errors import classify

    assert isinstance(client, AgentClient)
    sink = _Bounded(MAX_ACCOUNT_BYTES)
    spec = ProcessSpec(args=["cat", "/etc/passwd", "/etc/group"])  # either may be missing: cat says so
    try:
        lookup = client.create_exec(task, f"uvmexec-users-{secrets.token_hex(4)}", spec,
                                    Stdio(stdout=sink))  # type: ignore[arg-type]
        try:
            lookup.start()
        except ExecError:
            pass  # no cat there: no accounts either
        lookup.wait(timeout=LOOKUP_TIMEOUT)
        lookup.delete()
    except ExecError as error:
        raise classify(error, where) from None
    return Accounts.parse(sink.text())
