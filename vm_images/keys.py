"""Key material baked into an image at build time.

``generate_keys(directory)`` creates, on the host:

- ``zmq/agent.key``, ``zmq/agent.key_secret``, ``zmq/client.key``,
  ``zmq/client.key_secret``: CURVE certificates in pyzmq's ``zmq.auth``
  format. The guest gets ``agent.key_secret`` (its server key) and
  ``client.key`` (the one authorised client); the host keeps ``agent.key``
  to pin the agent and ``client.key_secret`` to authenticate.
- ``ssh/ssh_host_ed25519_key{,.pub}``: the guest sshd's host key, which the
  launcher writes into a known_hosts file (no trust on first use);
- ``ssh/id_ed25519{,.pub}``: the user key authorised for root in the guest.

Secret files are mode 0600. Every image has its own keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

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
    zmq_dir = directory / "zmq"
    ssh_dir = directory / "ssh"
    zmq_dir.mkdir(parents=True, mode=0o700)
    ssh_dir.mkdir(parents=True, mode=0o700)
    agent_public, agent_secret = zmq.auth.create_certificates(str(zmq_dir), "agent")
    client_public, client_secret = zmq.auth.create_certificates(str(zmq_dir), "client")
    for secret in (agent_secret, client_secret):
        os.chmod(secret, 0o600)
    for name, comment in (("ssh_host_ed25519_key", "uvmexec-guest-host"),
                          ("id_ed25519", "uvmexec-client")):
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
             "-f", str(ssh_dir / name)], step=f"generating the SSH key {name}")
    return KeyFiles(
        agent_public=Path(agent_public), agent_secret=Path(agent_secret),
        client_public=Path(client_public), client_secret=Path(client_secret),
        ssh_host_key=ssh_dir / "ssh_host_ed25519_key",
        ssh_host_public=ssh_dir / "ssh_host_ed25519_key.pub",
        ssh_user_key=ssh_dir / "id_ed25519",
        ssh_user_public=ssh_dir / "id_ed25519.pub",
    )
