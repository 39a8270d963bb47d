"""Boot the real guest image under QEMU and check what the launcher promises."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vm_images import Guest, GuestBootError, GuestInfo, ImagePaths, agent_hello, build_image, settings
from vm_images.cache import Progress, file_digest

from .helpers import ssh_run

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (a zombie left to a non-reaping init counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_agent_answers_hello_with_the_boot_id_of_readiness(guest: GuestInfo) -> None:
    assert guest.agent_endpoint.startswith("tcp://127.0.0.1:")
    assert agent_hello(guest.agent_endpoint, guest.server_key, guest.client_key, 10.0) \
        == guest.boot_id
    assert 0 < guest.boot_seconds <= (guest.ssh_seconds or guest.boot_seconds) + 0.01


def test_guest_runs_the_image_kernel(guest: GuestInfo, vm_image: ImagePaths) -> None:
    assert ssh_run(guest, "uname -r").strip() == vm_image.kernel_release
    console = guest.serial_log.read_text(errors="replace")
    assert f"uvm-init: services started on {vm_image.kernel_release}" in console


def test_agent_runs_on_the_guests_own_python(guest: GuestInfo) -> None:
    versions = ssh_run(guest, "python3 -c 'import sys, zmq, msgpack; "
                           "print(sys.version.split()[0], zmq.__version__, msgpack.version)'")
    assert versions.split()[:2] == ["3.11.2", "24.0.1"]
    command_lines = ssh_run(guest, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo")
    assert "-m guest_agent --listen tcp://0.0.0.0:5555" in command_lines


def test_qemu_guest_agent_answers_on_its_socket(guest: GuestInfo) -> None:
    with socket.socket(socket.AF_UNIX) as qga:
        qga.settimeout(30)
        qga.connect(str(guest.qga_socket))
        qga.sendall(json.dumps({"execute": "guest-sync", "arguments": {"id": 4242}}).encode())
        reply = b""
        while b"\n" not in reply:
            chunk = qga.recv(4096)
            assert chunk, "qemu-ga closed the socket"
            reply += chunk
    assert json.loads(reply.split(b"\n")[0]) == {"return": 4242}


def test_booting_leaves_the_image_unchanged(guest: GuestInfo, vm_image: ImagePaths) -> None:
    before = vm_image.rootfs.stat().st_mtime_ns
    ssh_run(guest, "echo scribble > /root/scribble && sync")
    assert vm_image.rootfs.stat().st_mtime_ns == before


def test_stop_ends_and_reaps_qemu_and_removes_the_run_dir(vm_image: ImagePaths) -> None:
    guest = Guest(vm_image, wait_for_ssh=False)
    info = guest.start()
    assert not _process_gone(info.pid)
    guest.stop()
    assert not Path(f"/proc/{info.pid}").exists()  # our child: reaped, not a zombie
    assert not info.run_dir.exists()


def test_up_status_down_leave_no_qemu_behind(vm_image: ImagePaths, tmp_path: Path) -> None:
    env = {**os.environ, "UVMEXEC_VM_STATE": str(tmp_path / "state")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vm_images", *args], cwd=PROJECT_ROOT,
                              env=env, capture_output=True, text=True, timeout=300)

    started = cli("up", "--image", str(vm_image.directory), "--json")
    assert started.returncode == 0, started.stderr
    info = json.loads(started.stdout)
    try:
        assert info["running"] and not _process_gone(info["pid"])
        assert Path(info["client_key"]).is_relative_to(tmp_path / "state")
        assert agent_hello(info["agent_endpoint"], Path(info["server_key"]),
                           Path(info["client_key"]), 10.0) == info["boot_id"]
        again = cli("up", "--image", str(vm_image.directory), "--json")
        assert json.loads(again.stdout)["pid"] == info["pid"], "a second up booted another VM"
        status = cli("status")
        assert status.returncode == 0 and f"pid {info['pid']}" in status.stdout
    finally:
        stopped = cli("down")
    assert stopped.returncode == 0 and "stopped (quit)" in stopped.stdout, stopped.stdout
    assert _process_gone(info["pid"])
    assert not [name for name in ("client_key", "ssh_key", "known_hosts") if Path(info[name]).exists()]
    assert cli("status").returncode == 3
    assert cli("down").stdout.strip() == "not running"


def test_an_agent_that_exits_fails_the_boot_fast(vm_image: ImagePaths, tmp_path: Path) -> None:
    # An image whose agent dies at once: readiness must fail on the console's
    # report, not wait out the deadline.
    project = tmp_path / "project"
    for package in settings.PROJECT_PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, project / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    (project / "guest_agent" / "__main__.py").write_text(
        "import sys\nprint('deliberately broken agent', file=sys.stderr)\nsys.exit(7)\n")
    # A private cache for the throw-away image that shares the cached rootfs and kernel.
    cache = tmp_path / "images"
    cache.mkdir()
    (cache / "parts").symlink_to(vm_image.directory.parent / "parts")
    image = build_image(cache_dir=cache, project_root=project)
    with pytest.raises(GuestBootError, match="agent exited") as failure:
        Guest(image, ready_timeout=90).start()
    assert "deliberately broken agent" in str(failure.value)
    assert "status 7" in str(failure.value)


def test_image_rebuild_with_unchanged_inputs_is_cached(vm_image: ImagePaths) -> None:
    # Built twice in a row rather than against the session's image: the
    # project's sources may have been edited since the session started.
    first = build_image(progress=Progress(io.StringIO()))
    digest = file_digest(first.rootfs)
    log = io.StringIO()
    assert build_image(progress=Progress(log)) == first
    assert "is cached" in log.getvalue()
    assert file_digest(first.rootfs) == digest
