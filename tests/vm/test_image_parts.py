"""Fast tests of the image build's parts: no debootstrap, no QEMU."""

from __future__ import annotations

import io
import lzma
import os
import shutil
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from vm_images import image, settings
from vm_images.cache import BuildError, Progress, ensure_step, tree_digest
from vm_images.image import BUILD_SOURCES, LAUNCH_SOURCES, MANIFEST, PACKAGE_DIR, ImagePaths, secure_cache
from vm_images.initrd import CpioWriter
from vm_images.kernel import KernelPackage, extract_vmlinux
from vm_images.keys import generate_keys, guest_bundle
from vm_images.qemu import QemuConfig
from vm_images.stage import GUEST_FILES, render

from .helpers import _CHUNK, secrets_in

WAIT = 10.0  # seconds any cross-thread wait may take before the test fails


def test_every_module_is_either_a_build_input_or_launcher_only() -> None:
    present = {str(path.relative_to(PACKAGE_DIR)) for path in PACKAGE_DIR.glob("*.py")}
    present |= {f"guest/{path.name}" for path in (PACKAGE_DIR / "guest").iterdir()}
    assert not set(BUILD_SOURCES) & set(LAUNCH_SOURCES)
    assert present == set(BUILD_SOURCES) | set(LAUNCH_SOURCES)


def test_keys_are_made_at_boot_and_are_no_input_of_the_image() -> None:
    assert "keys.py" in LAUNCH_SOURCES
    assert not {"server_key", "client_key", "ssh_key", "ssh_host_key"} & set(ImagePaths.__dataclass_fields__)


def test_pid1_runs_the_agent_command_line_the_readme_documents() -> None:
    script = render((GUEST_FILES / "uvm-init.sh").read_text())
    assert ("python3 -m guest_agent --listen tcp://0.0.0.0:5555 --server-key "
            "/etc/uvmexec/agent.key_secret --authorized-keys /etc/uvmexec/authorized_keys"
            ) in script
    assert (script.index("-m guest_agent") < script.index("/usr/sbin/sshd -D")
            < script.index("/usr/sbin/qemu-ga"))
    assert "the agent exited" in script and settings.AGENT_EXIT_MARKER.startswith("uvm-init: ")


@pytest.mark.parametrize("name", ["uvm-init.sh", "loader-init.sh"])
def test_guest_scripts_parse_as_posix_shell(name: str, tmp_path: Path) -> None:
    script = tmp_path / name
    script.write_text(render((GUEST_FILES / name).read_text()))
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cpio_archive_unpacks_with_busybox(tmp_path: Path) -> None:
    archive = io.BytesIO()
    writer = CpioWriter(archive)
    writer.directory("bin")
    writer.file("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)
    writer.symlink("bin/sh", "busybox")
    writer.file("odd", b"x" * 5)  # forces padding of the following header
    writer.close()
    assert len(archive.getvalue()) % 512 == 0
    target = tmp_path / "out"
    target.mkdir()
    subprocess.run(["busybox", "cpio", "-i", "-d"], input=archive.getvalue(), cwd=target,
                   check=True, capture_output=True)
    assert (target / "bin/hello").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert os.stat(target / "bin/hello").st_mode & 0o777 == 0o755
    assert os.readlink(target / "bin/sh") == "busybox"
    assert (target / "odd").read_bytes() == b"xxxxx"


def test_vmlinux_is_the_xz_stream_that_holds_an_elf_image() -> None:
    decoy = lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ)
    kernel = b"\x7fELF" + os.urandom(4096)
    bzimage = b"setup" * 100 + decoy + b"\0" * 13 + lzma.compress(kernel, format=lzma.FORMAT_XZ) \
        + b"trailer"
    assert extract_vmlinux(bzimage) == kernel
    with pytest.raises(BuildError, match="no XZ stream"):
        extract_vmlinux(b"setup" + decoy)


def test_tree_digest_follows_content_and_ignores_bytecode(tmp_path: Path) -> None:
    (tmp_path / "pkg/__pycache__").mkdir(parents=True)
    (tmp_path / "pkg/mod.py").write_text("A = 1\n")
    before = tree_digest(tmp_path)
    (tmp_path / "pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"bytecode")
    (tmp_path / "pkg/.mod.py.swp").write_bytes(b"editor state")
    assert tree_digest(tmp_path) == before
    (tmp_path / "pkg/mod.py").write_text("A = 2\n")
    assert tree_digest(tmp_path) != before


def test_host_mirror_is_read_from_both_sources_formats() -> None:
    deb822 = ("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
              "Components: main\n\nTypes: deb\nURIs: http://security.example/debian-security\n"
              "Suites: bookworm-security\n")
    assert settings._uris_serving_suite(deb822, deb822=True) == ["http://mirror.example/debian"]
    one_line = "# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"
    assert settings._uris_serving_suite(one_line, deb822=False) == ["http://other.example/debian"]


class _Signalling(io.StringIO):
    """A progress stream that sets ``event`` once a line containing ``text`` is written."""

    def __init__(self, text: str, event: threading.Event) -> None:
        super().__init__()
        self._text = text
        self._event = event

    def write(self, data: str) -> int:
        if self._text in data:
            self._event.set()
        return super().write(data)


def test_concurrent_builders_build_a_step_once(tmp_path: Path) -> None:
    builds: list[int] = []
    building = threading.Event()
    second_waits = threading.Event()
    release = threading.Event()

    def build(out: Path) -> None:
        builds.append(1)
        building.set()
        assert release.wait(WAIT)
        (out / "artifact").write_text("done")

    results: dict[str, Path] = {}
    first = threading.Thread(target=lambda: results.update(
        first=ensure_step(tmp_path, "step-x", build, Progress(io.StringIO()))))
    second = threading.Thread(target=lambda: results.update(
        second=ensure_step(tmp_path, "step-x", build,
                           Progress(_Signalling("waiting for", second_waits)))))
    first.start()
    assert building.wait(WAIT)
    second.start()
    assert second_waits.wait(WAIT), "the second builder did not block on the lock"
    release.set()
    first.join(WAIT)
    second.join(WAIT)
    assert len(builds) == 1
    assert results["first"] == results["second"] == tmp_path / "step-x"
    assert (tmp_path / "step-x/artifact").read_text() == "done"
    assert list((tmp_path / "tmp").iterdir()) == []


def test_failed_step_publishes_nothing_and_its_debris_is_cleared(tmp_path: Path) -> None:
    def broken(out: Path) -> None:
        (out / "half").write_text("partial")
        raise BuildError("step failed on purpose")

    with pytest.raises(BuildError, match="on purpose"):
        ensure_step(tmp_path, "step-y", broken, Progress(io.StringIO()))
    assert not (tmp_path / "step-y").exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    # Debris of a builder that died without cleaning up is removed before a rebuild.
    (tmp_path / "tmp/step-y.99999").mkdir()
    ensure_step(tmp_path, "step-y", lambda out: (out / "ok").touch(), Progress(io.StringIO()))
    assert list((tmp_path / "tmp").iterdir()) == []
    shutil.rmtree(tmp_path / "step-y")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_per_boot_keys_are_private_on_the_host(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    directories = {path.parent for path in vars(keys).values()} | {tmp_path / "keys"}
    assert {_mode(path) for path in directories} == {0o700}
    for secret in (keys.agent_secret, keys.client_secret, keys.ssh_host_key, keys.ssh_user_key):
        assert _mode(secret) == 0o600, secret


def test_the_guest_bundle_holds_the_guests_halves_and_nothing_else(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    with tarfile.open(fileobj=io.BytesIO(guest_bundle(keys))) as bundle:
        members = {member.name: member for member in bundle.getmembers()}
        contents = {name: bundle.extractfile(member).read()  # type: ignore[union-attr]
                    for name, member in members.items() if member.isfile()}
    assert contents == {
        "agent.key_secret": keys.agent_secret.read_bytes(),
        "authorized_keys/client.key": keys.client_public.read_bytes(),
        "ssh/ssh_host_ed25519_key": keys.ssh_host_key.read_bytes(),
        f"ssh/authorized_keys.{settings.SSH_USER}": keys.ssh_user_public.read_bytes(),
    }
    assert {name for name, member in members.items() if member.isdir()} == {"authorized_keys", "ssh"}
    for member in members.values():
        assert (member.uid, member.gid, member.mode) == (0, 0, 0o700 if member.isdir() else 0o600)


def test_the_guest_installs_its_keys_before_its_services_and_reads_them_there() -> None:
    key_dir = settings.GUEST_KEY_DIR
    init = render((GUEST_FILES / "uvm-init.sh").read_text())
    sshd = render((GUEST_FILES / "sshd_config").read_text()).splitlines()
    assert f"HostKey {key_dir}/ssh/ssh_host_ed25519_key" in sshd
    assert f"AuthorizedKeysFile {key_dir}/ssh/authorized_keys.%u" in sshd
    fw_cfg = f"/sys/firmware/qemu_fw_cfg/by_name/{settings.KEYS_FW_CFG_NAME}/raw"
    assert (init.index(f"tmpfs {key_dir}") < init.index(fw_cfg) < init.index("-m guest_agent")
            < init.index("/usr/sbin/sshd"))
    assert "qemu_fw_cfg" in settings.KERNEL_MODULES


def test_qemu_hands_the_keys_over_in_fw_cfg_from_a_descriptor(tmp_path: Path) -> None:
    image = ImagePaths(directory=tmp_path, kernel=tmp_path / "vmlinux", initrd=tmp_path / "loader.img",
                       rootfs=tmp_path / "rootfs.ext4", kernel_release="6.1.0-0-amd64")
    argv = QemuConfig(image=image, run_dir=tmp_path, agent_port=1, ssh_port=2, keys_fd=7).argv()
    assert argv[argv.index("-fw_cfg") + 1] == f"name={settings.KEYS_FW_CFG_NAME},file=/proc/self/fd/7"


def test_the_secret_detector_finds_every_generated_secret_and_no_public_key(tmp_path: Path) -> None:
    keys = generate_keys(tmp_path / "keys")
    for secret in (keys.agent_secret, keys.client_secret, keys.ssh_host_key, keys.ssh_user_key):
        assert len(secrets_in(secret)) == 1, secret
    for public in (keys.agent_public, keys.client_public, keys.ssh_host_public, keys.ssh_user_public):
        assert secrets_in(public) == [], public
    # Inside a disk image, also where it straddles two of the detector's reads.
    disk = tmp_path / "disk"
    key = keys.ssh_user_key.read_bytes()
    disk.write_bytes(b"\0" * (_CHUNK - 20) + key + b"\0" * 4096 + keys.agent_secret.read_bytes())
    assert len(secrets_in(disk)) == 2


def test_secure_cache_makes_an_old_cache_private_but_leaves_the_guest_trees_alone(tmp_path: Path) -> None:
    cache = tmp_path / "images"
    image = cache / "0123456789abcdef0123"
    guest_binary = cache / "parts/rootfs-x/root/usr/bin/python3"
    for directory in (image / "keys/zmq", cache / "locks", cache / "tmp/build.1", guest_binary.parent):
        directory.mkdir(parents=True, mode=0o755)
    for name in (MANIFEST, "rootfs.ext4", "vmlinux", "keys/zmq/agent.key"):
        (image / name).write_text("x")
        (image / name).chmod(0o644)
    (cache / "locks/0123456789abcdef0123.lock").write_text("pid 1\n")
    guest_binary.write_text("#!")
    guest_binary.chmod(0o755)
    for path in cache.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    cache.chmod(0o755)

    secure_cache(cache)

    assert _mode(cache) == 0o700
    for path in (cache / "parts", cache / "parts/rootfs-x", cache / "locks", cache / "tmp", image,
                 image / "keys", image / "keys/zmq"):
        assert _mode(path) == 0o700, path
    for path in (image / MANIFEST, image / "rootfs.ext4", image / "vmlinux", image / "keys/zmq/agent.key",
                 cache / "locks/0123456789abcdef0123.lock"):
        assert _mode(path) == 0o600, path
    # The Debian tree inside a step keeps its modes (mkfs copies them into the guest),
    # and so does a build in progress.
    assert _mode(guest_binary) == 0o755
    assert _mode(cache / "parts/rootfs-x/root") == 0o755
    assert _mode(cache / "tmp/build.1") == 0o755


def test_qemu_exports_the_run_directorys_share_over_virtio_9p(tmp_path: Path) -> None:
    image = ImagePaths(directory=tmp_path, kernel=tmp_path / "vmlinux", initrd=tmp_path / "loader.img",
                       rootfs=tmp_path / "rootfs.ext4", kernel_release="6.1.0-0-amd64")
    argv = QemuConfig(image=image, run_dir=tmp_path, agent_port=1, ssh_port=2).argv()
    fsdev = argv[argv.index("-fsdev") + 1].split(",")
    assert fsdev[0] == "local" and f"path={tmp_path / 'share'}" in fsdev and "security_model=passthrough" in fsdev
    assert f"mount_tag={settings.SHARE_MOUNT_TAG}" in argv[argv.index("-fsdev") + 3]
    # PID 1 mounts it where the VM handle says the guest sees it, and cgroup2 for runc.
    init = render((GUEST_FILES / "uvm-init.sh").read_text())
    assert f"{settings.SHARE_MOUNT_TAG} {settings.GUEST_SHARE_DIR}" in init
    assert "mount -t cgroup2 " in init
    assert {"runc"} <= set(settings.PACKAGES) and {"9p", "9pnet_virtio", "overlay"} <= set(settings.KERNEL_MODULES)


def test_stopping_a_vm_takes_a_tasks_mounts_off_its_share_before_removing_it(tmp_path: Path) -> None:
    from vm_images.launch import release_share

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "keep").write_text("the bundle's own file\n")
    share = tmp_path / "run" / "share"
    target = share / "task" / "rootfs"
    target.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(root), str(target)], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(target / "etc")], check=True)
    try:
        assert release_share(share) == [str(target / "etc"), str(target)]
    finally:
        for point in (target / "etc", target):
            subprocess.run(["umount", str(point)], capture_output=True)
    shutil.rmtree(tmp_path / "run")  # what stop() does next: the bundle's root is untouched
    assert (root / "etc" / "keep").read_text() == "the bundle's own file\n"
    assert release_share(share) == []


def test_the_kernel_resolution_is_apts_and_is_asked_again_only_when_apt_changes(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    memo = tmp_path / "kernel-resolution.json"
    asked = image.resolve_kernel_kept(memo)  # the real apt (two apt-cache runs, a second of CPU each)
    assert asked.name.startswith("linux-image-") and asked.version
    calls: list[int] = []

    def ask_apt() -> KernelPackage:  # counts the asks of apt
        calls.append(1)
        return asked

    monkeypatch.setattr(image, "resolve_kernel", ask_apt)
    assert image.resolve_kernel_kept(memo) == asked and calls == []  # apt unchanged: the memo answers
    # apt's lists change (an `apt-get update` that brought a new list): asked again.
    monkeypatch.setattr(image, "APT_STATE_PATHS", (*image.APT_STATE_PATHS, str(tmp_path / "lists")))
    (tmp_path / "lists").mkdir()
    assert image.resolve_kernel_kept(memo) == asked and calls == [1]
    assert image.resolve_kernel_kept(memo) == asked and calls == [1]
    (tmp_path / "lists" / "new_Packages").write_text("")
    assert image.resolve_kernel_kept(memo) == asked and calls == [1, 1]
    memo.write_text("not json")  # a damaged memo is asked again, not trusted
    assert image.resolve_kernel_kept(memo) == asked and calls == [1, 1, 1]
