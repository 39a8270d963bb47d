"""Per-boot keys: made on the host for one boot of one VM, never put in an image.

``generate_keys(directory)`` creates, on the host, in a new 0700 directory:

- ``zmq/agent.key``, ``zmq/agent.key_secret``, ``zmq/client.key``,
  ``zmq/client.key_secret``: CURVE certificates in pyzmq's ``zmq.auth``
  format. The guest gets ``agent.key_secret`` (its server key) and
  ``client.key`` (the one authorised client); the host keeps ``agent.key``
  to pin the agent and ``client.key_secret`` to authenticate.
- ``ssh/ssh_host_ed25519_key{,.pub}``: the guest sshd's host key; the host
  keeps the public half for its known_hosts line (no trust on first use);
- ``ssh/id_ed25519{,.pub}``: the user key authorised for root in the guest;
  the host keeps the private half.

``guest_bundle(keys)`` is what the guest gets, as a tar archive of paths
relative to ``settings.GUEST_KEY_DIR``; the launcher hands it to QEMU in the
fw_cfg file ``settings.KEYS_FW_CFG_NAME`` and the guest's PID 1 unpacks it
onto a tmpfs there. ``drop_guest_secrets(keys)`` then deletes the guest's
secret halves from the host. Every file is mode 0600, every directory 0700.
"""

from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

from . import settings
from .cache import run


@dataclass(frozen=True)
class KeyFiles:
    agent_public: Path
    agent_secret: Path
    client_public: Path
    client_secret: Path
    ssh_host_key: Path
    ssh_host_public: Path
    ssh_user_key: Path
    ssh_user_public: Path


def generate_keys(directory: Path) -> KeyFiles:
    """Fresh keys in ``directory``, which must not exist yet (its parent must)."""
    directory.mkdir(mode=0o700)
    zmq_dir = directory / "zmq"
    ssh_dir = directory / "ssh"
    zmq_dir.mkdir(mode=0o700)
    ssh_dir.mkdir(mode=0o700)
    agent_public, agent_secret = zmq.auth.create_certificates(str(zmq_dir), "agent")
    client_public, client_secret = zmq.auth.create_certificates(str(zmq_dir), "client")
    for name, comment in (("ssh_host_ed25519_key", "uvmexec-guest-host"),
                          ("id_ed25519", "uvmexec-client")):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
             "-f", str(ssh_dir / name)], step=f"generating the SSH key {name}")
    keys = KeyFiles(
        agent_public=Path(agent_public), agent_secret=Path(agent_secret),
        client_public=Path(client_public), client_secret=Path(client_secret),
        ssh_host_key=ssh_dir / "ssh_host_ed25519_key",
        ssh_host_public=ssh_dir / "ssh_host_ed25519_key.pub",
        ssh_user_key=ssh_dir / "id_ed25519",
        ssh_user_public=ssh_dir / "id_ed25519.pub",
    )
    for path in vars(keys).values():
        os.chmod(path, 0o600)
    return keys


def guest_bundle(keys: KeyFiles) -> bytes:
    """The guest's part of ``keys``: a tar archive to unpack in ``settings.GUEST_KEY_DIR``.

    It holds the agent's secret certificate, the client's public one (the
    agent's ``--authorized-keys`` directory), the sshd host key and the user
    key authorised for ``settings.SSH_USER`` — never the client's or the SSH
    user's secret. Owned by root, files 0600, directories 0700.
    """
    entries: list[tuple[str, bytes | None]] = [
        ("agent.key_secret", keys.agent_secret.read_bytes()),
        ("authorized_keys", None),
        ("authorized_keys/client.key", keys.client_public.read_bytes()),
        ("ssh", None),
        ("ssh/ssh_host_ed25519_key", keys.ssh_host_key.read_bytes()),
        (f"ssh/authorized_keys.{settings.SSH_USER}", keys.ssh_user_public.read_bytes()),
    ]
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.USTAR_FORMAT) as bundle:
        for name, data in entries:
            member = tarfile.TarInfo(name)
            member.uid = member.gid = 0
            member.uname = member.gname = "root"
            if data is None:
                member.type, member.mode = tarfile.DIRTYPE, 0o700
                bundle.addfile(member)
            else:
                member.size, member.mode = len(data), 0o600
                bundle.addfile(member, io.BytesIO(data))
        end = bundle.offset
    # The two zero blocks that end an archive, without tarfile's padding to a
    # 10 KiB record: the guest reads fw_cfg at ~7 us a byte under TCG.
    return archive.getvalue()[:end + 2 * tarfile.BLOCKSIZE]


def drop_guest_secrets(keys: KeyFiles) -> None:
    """Delete the secrets only the guest needs (agent and sshd host keys) from the host."""
    keys.agent_secret.unlink()
    keys.ssh_host_key.unlink()
