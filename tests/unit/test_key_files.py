"""Key files as uvmexec makes them pass the checks uvmexec makes on load (common/trust.py);
``keygen`` follows no symlink and leaves nothing half made.

The refusals themselves, with nobody as the other local user, are in
tests/reliability/test_local_trust.py.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zmq

from guest_agent.auth import load_authorized_keys, load_server_secret
from host_proxy import keys as keygen_module
from host_proxy.client import load_curve_keys
from host_proxy.keys import keygen
from vm_images.keys import generate_keys, guest_bundle


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_keygen_output_has_fixed_modes_and_loads_on_both_sides(tmp_path, umask):
    old = os.umask(umask)
    try:
        made = keygen(tmp_path / "keys")
    finally:
        os.umask(old)
    assert {path.name: _mode(path) for path in [made.directory, *made.files(), made.authorized_keys]} == {
        "keys": 0o700, "agent.key": 0o644, "agent.key_secret": 0o600, "client.key": 0o644,
        "client.key_secret": 0o600, "authorized_keys": 0o700,
    }
    curve = load_curve_keys(made.agent_public, made.client_secret)
    public, _ = load_server_secret(str(made.agent_secret))
    assert public == curve.server_public
    assert load_authorized_keys(str(made.authorized_keys)) == {zmq.utils.z85.decode(curve.client_public)}


def test_keygen_makes_missing_parents_private(tmp_path):
    made = keygen(tmp_path / "a/b/keys")
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a/b") == 0o700
    assert (made.authorized_keys / "client.key").is_file()


def test_a_symlink_planted_after_the_checks_is_never_followed(tmp_path, monkeypatch):
    """Between keygen's checks and its writes, authorized_keys/client.key appears as a link to a
    root-owned file (the old keygen's shutil.copy2 overwrote it). keygen fails, the file is
    untouched, and keygen removes what it made."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    target = tmp_path / "keys"
    real_keypair = zmq.curve_keypair

    def keypair_and_plant() -> tuple[bytes, bytes]:
        if not (target / "authorized_keys").exists():
            (target / "authorized_keys").mkdir()
            (target / "authorized_keys/client.key").symlink_to(victim)
        return real_keypair()

    monkeypatch.setattr(zmq, "curve_keypair", keypair_and_plant)
    with pytest.raises(FileExistsError):
        keygen(target)
    assert victim.read_text() == "precious\n"
    assert os.listdir(target) == ["authorized_keys"]  # only what was planted is left


def test_a_failed_keygen_leaves_nothing_behind(tmp_path, monkeypatch):
    real_create = keygen_module._create
    calls = []

    def failing(directory_fd: int, name: str, data: bytes, mode: int) -> None:
        calls.append(name)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real_create(directory_fd, name, data, mode)

    monkeypatch.setattr(keygen_module, "_create", failing)
    with pytest.raises(OSError, match="No space"):
        keygen(tmp_path / "keys")
    assert not (tmp_path / "keys").exists()
    existing = tmp_path / "mine"
    existing.mkdir(mode=0o700)
    calls.clear()
    with pytest.raises(OSError, match="No space"):
        keygen(existing)
    assert os.listdir(existing) == []  # a directory keygen did not make stays, emptied of its files


def test_vm_image_keys_pass_the_checks_on_both_sides(tmp_path):
    """What vm_images makes for one boot: the host side as generated, the guest side as the
    guest's init unpacks the fw_cfg bundle (a 0700 tmpfs at the key directory)."""
    made = generate_keys(tmp_path / "keys")
    curve = load_curve_keys(made.agent_public, made.client_secret)
    guest_keys = tmp_path / "guest"
    guest_keys.mkdir(mode=0o700)
    with tarfile.open(fileobj=io.BytesIO(guest_bundle(made))) as bundle:
        bundle.extractall(guest_keys, filter="fully_trusted")
    public, _ = load_server_secret(str(guest_keys / "agent.key_secret"))
    assert public == curve.server_public
    assert load_authorized_keys(str(guest_keys / "authorized_keys")) == {zmq.utils.z85.decode(curve.client_public)}
