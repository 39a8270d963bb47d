"""``uvmexec keygen DIR``: the CURVE key set an agent and its clients need.

Promise: :func:`keygen` makes, in ``DIR`` (created with mode 0700; an existing
directory is tightened to 0700), pyzmq ``zmq.auth`` certificate pairs

- ``agent.key`` / ``agent.key_secret``: the agent's (give the secret to
  ``uvm-agent --server-key``, the public one to clients as ``--server-key``);
- ``client.key`` / ``client.key_secret``: a client's (``--client-key`` takes
  the secret);
- ``authorized_keys/client.key``: a copy of the client's public certificate,
  so ``uvm-agent --authorized-keys DIR/authorized_keys`` admits it at once.

Secret files are mode 0600. It never overwrites: if any of these files
exists it raises ``FileExistsError`` naming it and changes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zmq.auth

AUTHORIZED_DIR = "authorized_keys"


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
    for path in keys.files():
        if os.path.lexists(path):
            raise FileExistsError(f"{path} already exists; not overwriting keys (remove them first)")
    keys.directory.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.chmod(keys.directory, 0o700)
    # Made in a scratch directory beside the target and moved in, so a failure leaves no half set.
    scratch = Path(tempfile.mkdtemp(prefix=".keygen-", dir=keys.directory))
    try:
        old_umask = os.umask(0o077)  # secrets are never readable by others, even for an instant
        try:
            zmq.auth.create_certificates(scratch, "agent")
            zmq.auth.create_certificates(scratch, "client")
        finally:
            os.umask(old_umask)
        for name in ("agent.key", "client.key"):
            os.chmod(scratch / name, 0o644)
        for name in ("agent.key_secret", "client.key_secret"):
            os.chmod(scratch / name, 0o600)
        keys.authorized_keys.mkdir(mode=0o700, exist_ok=True)
        for name in ("agent.key", "agent.key_secret", "client.key", "client.key_secret"):
            os.link(scratch / name, keys.directory / name)  # link fails rather than replace
        shutil.copy2(keys.client_public, keys.authorized_keys / "client.key")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return keys
