"""Execs through the guest's agent really run in the guest."""

from __future__ import annotations

import os

import pytest

from common import ProcessSpec, Stdio
from host_proxy import AgentClient
from vm_images import GuestInfo, ImagePaths

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]


def test_uname_through_the_exec_is_the_guest_kernel(guest: GuestInfo, vm_image: ImagePaths, tmp_path) -> None:
    out = tmp_path / "uname"
    with AgentClient.connect(guest.agent_endpoint, server_key=guest.server_key, client_key=guest.client_key,
                             timeout=30) as client:
        made = client.create_exec("vm", "uname", ProcessSpec(args=["uname", "-r"]), Stdio(stdout=str(out)))
        made.start()
        assert made.wait(timeout=60).exit_status == 0
        made.delete()
        assert client.boot_id == guest.boot_id
    release = out.read_text().strip()
    assert release == vm_image.kernel_release
    assert release != os.uname().release
