"""Keys are per boot: the image holds no secret, no two VMs share a key, and the cache is private."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from vm_images import Guest, GuestBootError, GuestInfo, ImagePaths, NotReady, agent_hello, boot, build_image
from vm_images.cache import Progress
from vm_images.keys import KeyFiles
from vm_images.qemu import QemuConfig, QemuProcess
from vm_images.settings import KEYS_FW_CFG_NAME

from .helpers import secrets_in, ssh_run

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]


def _listing(image: Path, directory: str) -> list[str]:
    """The names in ``directory`` of the ext4 ``image``, as debugfs reads them."""
    result = subprocess.run(["debugfs", "-R", f"ls -p {directory}", str(image)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("/"), result.stderr
    # One "/inode/mode/uid/gid/name/size/" line per entry.
    return [line.split("/")[5] for line in result.stdout.splitlines() if line.startswith("/")]


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_image_holds_no_secret(vm_image: ImagePaths) -> None:
    # Every byte of every file of the image, the whole root disk included (free
    # blocks too): no private SSH key and no CURVE secret certificate anywhere.
    for path in sorted(vm_image.directory.rglob("*")):
        if path.is_file():
            assert secrets_in(path) == [], f"key material in {path}"
    assert not (vm_image.directory / "keys").exists()
    # And where the guest looks for its keys, the disk holds nothing.
    assert _listing(vm_image.rootfs, "/etc/uvmexec") == [".", ".."]
    assert "sshd_config" in _listing(vm_image.rootfs, "/etc/ssh")
    assert not [name for name in _listing(vm_image.rootfs, "/etc/ssh") if name.startswith("ssh_host_")]
    assert ".ssh" not in _listing(vm_image.rootfs, "/root")


def test_the_guest_keeps_its_keys_on_a_tmpfs_only_root_reads(guest: GuestInfo) -> None:
    mounts = ssh_run(guest, "cat /proc/mounts").splitlines()
    assert [line.split()[2] for line in mounts if line.split()[1] == "/etc/uvmexec"] == ["tmpfs"]
    listing = ssh_run(guest, "find /etc/uvmexec -exec stat -c '%a %u %n' {} +").splitlines()
    modes = {name: (mode, uid) for mode, uid, name in (line.split() for line in listing)}
    assert {"/etc/uvmexec/agent.key_secret", "/etc/uvmexec/authorized_keys/client.key",
            "/etc/uvmexec/ssh/ssh_host_ed25519_key"} <= set(modes)
    assert all(uid == "0" and mode in ("600", "700") for mode, uid in modes.values()), modes


def test_two_vms_of_one_image_share_no_key(guest: GuestInfo, vm_image: ImagePaths) -> None:
    assert guest.image_dir == vm_image.directory
    with boot(vm_image) as second:
        assert second.image_dir == guest.image_dir
        for name in ("server_key", "client_key", "ssh_key"):
            assert getattr(second, name).read_bytes() != getattr(guest, name).read_bytes(), name
        host_key = second.known_hosts.read_text().split()[1:3]
        assert host_key != guest.known_hosts.read_text().split()[1:3]
        # The guests really hold different keys: ssh_run pins each one's own host
        # key, and neither accepts the other's client keys.
        assert ssh_run(second, "echo hi") == "hi\n"
        assert agent_hello(second.agent_endpoint, second.server_key, second.client_key, 10.0) \
            == second.boot_id
        with pytest.raises(NotReady):
            agent_hello(second.agent_endpoint, second.server_key, guest.client_key, 3.0)
        client = paramiko.SSHClient()
        client.load_host_keys(str(second.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        with pytest.raises(paramiko.AuthenticationException):
            client.connect(second.ssh_host, port=second.ssh_port, username=second.ssh_user,
                           key_filename=str(guest.ssh_key), look_for_keys=False, allow_agent=False,
                           timeout=30, banner_timeout=30, auth_timeout=30)
        client.close()

        # On the host: only the client's halves, in the VM's private run directory.
        assert _mode(second.run_dir) == 0o700
        for path in (second.server_key, second.client_key, second.ssh_key, second.known_hosts):
            assert path.is_relative_to(second.run_dir)
            assert _mode(path) == 0o600, path
            for parent in path.parents:
                if parent == second.run_dir.parent:
                    break
                assert _mode(parent) == 0o700, parent
        holding_secrets = {path for path in second.run_dir.rglob("*")
                           if path.is_file() and secrets_in(path)}
        assert holding_secrets == {second.client_key, second.ssh_key}
    assert not second.run_dir.exists()


def test_the_cache_is_private_and_a_reused_one_is_made_so(vm_image: ImagePaths) -> None:
    cache = vm_image.directory.parent
    # As images were cached before: world-readable files in world-enterable directories.
    for path in (cache, cache / "parts", *(cache / "parts").iterdir(), vm_image.directory):
        if path.is_dir():
            path.chmod(0o755)
    for path in vm_image.directory.iterdir():
        path.chmod(0o644)
    assert build_image(progress=Progress(io.StringIO())) == vm_image
    assert _mode(cache) == 0o700
    for path in (cache / "parts", *(cache / "parts").iterdir(), vm_image.directory):
        if path.is_dir():
            assert _mode(path) == 0o700, path
    for path in vm_image.directory.iterdir():
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_a_boot_without_its_keys_fails_fast_and_says_why(vm_image: ImagePaths,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # The image has no keys to fall back on: without the fw_cfg file, the agent cannot start.
    def spawn_without_keys(config: QemuConfig, keys: KeyFiles, detached: bool) -> QemuProcess:
        return QemuProcess.spawn(config, detached=detached)

    monkeypatch.setattr("vm_images.launch._spawn_with_keys", spawn_without_keys)
    guest = Guest(vm_image, wait_for_ssh=False)
    with pytest.raises(GuestBootError, match="agent exited") as failure:
        guest.start()
    assert f"no keys for this boot in fw_cfg {KEYS_FW_CFG_NAME}" in str(failure.value)


def test_a_failed_boot_in_a_given_run_dir_keeps_its_logs_but_not_its_keys(vm_image: ImagePaths,
                                                                          tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o755)  # as one made before the run directory held keys
    guest = Guest(vm_image, run_dir=run_dir, ready_timeout=1.0, wait_for_ssh=False)
    with pytest.raises(GuestBootError, match="timed out"):
        guest.start()
    assert _mode(run_dir) == 0o700
    assert (run_dir / "serial.log").exists()
    assert not (run_dir / "keys").exists()
