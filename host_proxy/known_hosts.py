"""SSH keys and OpenSSH ``known_hosts`` files, read with paramiko's parsers.

paramiko's ``HostKeys.load()`` gives up on a whole file that holds an
``@cert-authority`` or ``@revoked`` line and keeps one key per host and type,
so lines are parsed one by one here and host names (plain, hashed ``|1|``,
wildcards, negations) are matched by this module.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys, InvalidHostKey
from paramiko.pkey import UnknownKeyType

from common.errors import InvalidArgumentError


def load_private_key(path: Path) -> paramiko.PKey:
    """An ed25519, ecdsa or rsa private key (OpenSSH or PEM format, unencrypted)."""
    try:
        return paramiko.PKey.from_path(path)
    except OSError as error:
        raise InvalidArgumentError(f"ssh key {path}: cannot read it: {error.strerror or error}") from None
    except TypeError:  # cryptography: "Password was not given but private key is encrypted"
        raise InvalidArgumentError(f"ssh key {path}: it is encrypted; give an unencrypted key") from None
    except (ValueError, paramiko.SSHException, UnknownKeyType) as error:
        raise InvalidArgumentError(
            f"ssh key {path}: not a usable ed25519, ecdsa or rsa private key ({error})"
        ) from None


@dataclass
class KnownHosts:
    """The entries of an OpenSSH known_hosts file, matched the way ssh matches them."""

    path: Path
    entries: list[HostKeyEntry]
    revoked: list[paramiko.PKey]

    @classmethod
    def load(cls, path: Path) -> KnownHosts:
        # paramiko's HostKeys.load() stops with InvalidHostKey at "@cert-authority"
        # and "@revoked" lines and keeps one key per type and name, so read the
        # lines here and let paramiko parse each one.
        try:
            text = path.read_text(errors="replace")
        except OSError as error:
            raise InvalidArgumentError(
                f"known_hosts {path}: cannot read it: {error.strerror or error}"
            ) from None
        entries, revoked = [], []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            marker = None
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                line = line.lstrip()
            try:
                entry = HostKeyEntry.from_line(line, number)
            except (paramiko.SSHException, InvalidHostKey):
                entry = None  # like ssh: a line we cannot parse matches nothing
            if entry is None:
                continue
            if marker == "@revoked":
                revoked.append(entry.key)
            elif marker is None:
                entries.append(entry)
            # "@cert-authority" lines vouch for host certificates, which we do not accept.
        return cls(path, entries, revoked)

    def keys_for(self, name: str) -> list[paramiko.PKey]:
        return [entry.key for entry in self.entries if names_match(entry.hostnames, name)]

    def is_revoked(self, key: paramiko.PKey) -> bool:
        return any(revoked.asbytes() == key.asbytes() for revoked in self.revoked)


def names_match(patterns: list[str], name: str) -> bool:
    """ssh's known_hosts name matching: exact or hashed names, ``*``/``?`` globs, ``!`` negations."""
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern[1:] if negated else pattern
        if pattern.startswith("|1|"):
            try:
                hit = HostKeys.hash_host(name, pattern) == pattern
            except (ValueError, binascii.Error):  # a mangled hash matches nothing
                hit = False
        elif "*" in pattern or "?" in pattern:
            glob = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower())
            hit = re.fullmatch(glob, name) is not None
        else:
            hit = pattern.lower() == name
        if hit and negated:
            return False
        matched = matched or hit
    return matched


def describe_key(key: paramiko.PKey) -> str:
    return f"{key.get_name()} key {key.fingerprint}"
