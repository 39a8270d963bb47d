"""A private containerd per test, with the busybox image imported and our shim on its PATH.

Each test gets its own containerd (own config, root, state and sockets; the
CRI plugin off), started here and stopped after the test, and then nothing
may be left: no process naming the test's directory, no mount under it, no
shim socket. The helpers live in :mod:`host_proxy.shim.testbed` (the
benchmarks use them too); the report header says which shim containerd runs.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from host_proxy.shim.testbed import (
    PROCESS_ISOLATION,
    RUNTIME,
    SHIM,
    Containerd,
    describe_shim,
    start_containerd,
    stop_containerd,
)
from vm_images.oci_image import DEFAULT_REF, write_image_tarball

__all__ = ["PROCESS_ISOLATION", "RUNTIME", "SHIM", "Containerd"]


def pytest_report_header() -> str:
    return f"shim: {describe_shim()}"


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The busybox image as an OCI layout tarball, built once per session."""
    return write_image_tarball_at(str(tmp_path_factory.mktemp("image") / "busybox.tar"))


def write_image_tarball_at(path: str) -> str:
    write_image_tarball(path)
    return path


@pytest.fixture
def containerd(busybox_image: str) -> Iterator[Containerd]:
    try:
        daemon = start_containerd(busybox_image, DEFAULT_REF)
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield daemon
        leftovers = daemon.ctr("task", "ls", "-q").stdout.split()
        assert not leftovers, f"tasks left behind: {leftovers}"
    finally:
        found = stop_containerd(daemon)
        assert not found.processes, f"processes left behind: {found.processes}"
        assert not found.mounts, f"mounts left behind: {found.mounts}"
        assert not found.sockets, f"shim sockets left behind: {found.sockets}"
