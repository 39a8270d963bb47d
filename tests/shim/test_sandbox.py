"""The shim's utility VM without a VM: what :class:`UtilityVM` asks of the guest it boots and of its client."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest

from host_proxy.client import AgentClient
from host_proxy.shim import sandbox
from vm_images.launch import GuestInfo


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
    assert client.closed and guests[0].stopped and not (tmp_path / "vm").exists()
