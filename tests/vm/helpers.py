"""What several VM tests share: SSH into a guest, and finding key material in files."""

from __future__ import annotations

import re
from pathlib import Path

import paramiko

from vm_images import GuestInfo

# Secret key material as uvmexec makes it: an OpenSSH private key (its base64
# always starts with "openssh-key-v1") and a CURVE secret certificate line
# (40 Z85 characters). Public keys, and the format strings in ssh-keygen or
# pyzmq that merely name these formats, do not match. (Two patterns, not one
# alternation: each starts with a literal, which makes a scan of a whole disk
# seven times faster.)
SECRET_PATTERNS = (
    re.compile(rb"-----BEGIN OPENSSH PRIVATE KEY-----\s*b3BlbnNzaC1rZXktdjE"),
    re.compile(rb'secret-key = "[^"\s]{40}"'),
)
_CHUNK = 16 << 20
_OVERLAP = 256  # longer than any match, so one cut between two chunks cannot hide it


def secrets_in(path: Path) -> list[int]:
    """Offsets of key material in the bytes of ``path`` (a whole disk image works too)."""
    found: set[int] = set()
    with open(path, "rb") as stream:
        base, tail = 0, b""
        while block := stream.read(_CHUNK):
            data = tail + block
            found |= {base + match.start() for pattern in SECRET_PATTERNS
                      for match in pattern.finditer(data)}
            keep = min(_OVERLAP, len(data))
            base += len(data) - keep
            tail = data[-keep:]
    return sorted(found)


def ssh_run(info: GuestInfo, command: str) -> str:
    """Run ``command`` over SSH with the generated key, the host key pinned by known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(info.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    try:
        client.connect(info.ssh_host, port=info.ssh_port, username=info.ssh_user,
                       key_filename=str(info.ssh_key), look_for_keys=False, allow_agent=False,
                       timeout=30, banner_timeout=30, auth_timeout=30)
        _stdin, stdout, stderr = client.exec_command(command, timeout=60)
        output = stdout.read().decode()
        assert stdout.channel.recv_exit_status() == 0, stderr.read().decode()
        return str(output)
    finally:
        client.close()
