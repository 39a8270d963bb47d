"""The shim's utility VM without a VM: what :class:`UtilityVM` asks of the guest it boots and of its client."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from host_proxy.client import AgentClient
from host_proxy.shim import sandbox
from vm_images.launch import GuestInfo
from vm_images.qemu import REAP_TIMEOUT

# A stand-in for the QEMU of a SIGKILLed shim: named by its QMP socket's word as QEMU is, it serves the
# socket and exits when a client connects (as QMP quit ends QEMU).
FAKE_QEMU = r"""
import os, socket, sys
listener = socket.socket(socket.AF_UNIX)
listener.bind(sys.argv[1])
listener.listen(1)
print(os.getpid(), flush=True)
listener.accept()
os._exit(0)
"""


class _FakeGuest:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.stopped = False

    def start(self) -> GuestInfo:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = self.run_dir
        return GuestInfo(
            agent_endpoint="tcp://127.0.0.1:1", server_key=path / "server.key", client_key=path / "client.key",
            ssh_host="127.0.0.1", ssh_port=2, ssh_user="root", ssh_key=path / "ssh", known_hosts=path / "known_hosts",
            qga_socket=path / "qga.sock", qmp_socket=path / "qmp.sock", serial_log=path / "serial.log",
            run_dir=path, boot_id="b", boot_seconds=1.0, ssh_seconds=None, accel="tcg",
            pid=os.getpid(),  # the watcher waits on it: this process outlives the test
            kernel_release="k", image_dir=path, share_dir=path / "share", guest_share_dir="/run/uvmexec/share")

    def stop(self) -> None:
        self.stopped = True


class _FakeClient:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_the_agent_in_a_tcg_guest_gets_longer_than_agentclients_default_to_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``start`` (runc create and start in the guest) took 11-12 s under TCG on a loaded host: with
    AgentClient's default of 10 s, ``ctr run`` failed with "did not answer 'start' within 10s"."""
    default = inspect.signature(AgentClient.connect).parameters["timeout"].default
    reconnect_default = inspect.signature(AgentClient.connect).parameters["reconnect_timeout"].default
    connected: list[dict[str, Any]] = []
    client = _FakeClient()

    def connect(endpoint: str, **options: Any) -> _FakeClient:
        connected.append(options)
        return client

    monkeypatch.setattr(AgentClient, "connect", connect)
    guests: list[_FakeGuest] = []

    def boot(run_dir: Path, options: sandbox.VMOptions) -> Any:
        guests.append(_FakeGuest(run_dir))
        return guests[-1]

    vm = sandbox.UtilityVM(str(tmp_path / "vm"), boot=boot)
    try:
        assert vm._ready()[0] is client
    finally:
        vm.close()
    (options,) = connected
    assert default == 10.0 and options.get("timeout", default) >= 30, options
    assert options["timeout"] == sandbox.AGENT_ANSWER_TIMEOUT
    assert options["reconnect_timeout"] == sandbox.AGENT_RECONNECT_TIMEOUT > reconnect_default
    assert client.closed and guests[0].stopped and not (tmp_path / "vm").exists()


def test_the_delete_after_a_dead_shim_does_not_wait_for_its_qemu_to_be_reaped(tmp_path: Path) -> None:
    """containerd kills the ``delete`` command after 5 s; init reaps orphans when it will (here every ~2 s).
    Waiting for the reaping (up to REAP_TIMEOUT, 5 s) got the command killed before it took the mounts
    off the share and removed the run directory."""
    run_dir = tmp_path / "vm"
    (run_dir / "share").mkdir(parents=True)
    qmp = run_dir / "qmp.sock"
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / sandbox.RECORD_NAME).write_text(json.dumps({"run_dir": str(run_dir)}))
    # Its parent never reaps it: a zombie once it exited, until the parent ends.
    parent = subprocess.Popen(
        ["sh", "-c", '"$0" -c "$1" "$2" "unix:$2,server=on,wait=off" & exec sleep 600',
         sys.executable, FAKE_QEMU, str(qmp)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert parent.stdout is not None
    try:
        fake = os.pidfd_open(int(parent.stdout.readline()))
        try:
            started = time.monotonic()
            done = sandbox.cleanup_after_dead_shim(str(bundle))
            took = time.monotonic() - started
        finally:
            signal.pidfd_send_signal(fake, signal.SIGKILL)  # a zombie or gone by now, unless the test failed
            os.close(fake)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    assert took < REAP_TIMEOUT, (took, done)
    assert not run_dir.exists(), done
