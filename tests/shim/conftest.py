"""A private containerd per test, with the busybox image imported and our shim on its PATH.

Each test gets its own containerd (own config, root, state and sockets; the
CRI plugin off), started here and stopped after the test, and then nothing
may be left: no runc container, no process naming the test's directory, no
mount under it, no shim socket, no utility VM run directory. The helpers
live in :mod:`host_proxy.shim.testbed` (the benchmarks use them too); the
report header says which shim containerd runs.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest

from host_proxy.shim.testbed import (
    CTR_TIMEOUT,
    PROCESS_ISOLATION,
    RUNTIME,
    SHIM,
    Containerd,
    describe_shim,
    ends_within,
    processes_naming,
    start_containerd,
    stop_containerd,
)
from vm_images import build_image
from vm_images.oci_image import DEFAULT_REF, write_image_tarball

__all__ = ["BOTH_ISOLATIONS", "CTR_TIMEOUT", "SUMMARY", "private_containerd", "running_ctr", "PROCESS_ISOLATION", "RUNTIME", "SHIM", "Containerd", "ends_within",
           "processes_naming"]

#: For a test that must hold in both isolations: the ``containerd`` fixture's containers get each in turn.
BOTH_ISOLATIONS = pytest.mark.parametrize(
    "containerd", ["process", pytest.param("hypervisor", marks=pytest.mark.vm)], indirect=True)


#: Lines for the report's "containerd suite" section (test_containerd_suite.py: counts, misses, times).
SUMMARY = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    lines = config.stash.get(SUMMARY, [])
    if lines:
        terminalreporter.section("containerd suite")
        for line in lines:
            terminalreporter.write_line(line)


@contextlib.contextmanager
def running_ctr(containerd: Containerd, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    """``ctr ARGS`` running, its stdout and stderr piped; ended (killed if still running) and reaped on exit."""
    process = containerd.ctr_popen(*args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()  # type: ignore[union-attr]
        process.stderr.close()  # type: ignore[union-attr]


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
def containerd(request: pytest.FixtureRequest, busybox_image: str) -> Iterator[Containerd]:
    """A private containerd; its ``run_args`` ask for process isolation, or the test's parameter
    (:data:`BOTH_ISOLATIONS`)."""
    isolation = getattr(request, "param", "process")
    if isolation == "hypervisor":
        build_image()  # cached after the first: the shim boots it
    with private_containerd(busybox_image, isolation=isolation) as daemon:
        yield daemon


@contextlib.contextmanager
def private_containerd(image_tarball: str | None = None, env: dict[str, str] | None = None, *,
                       isolation: str = "process") -> Iterator[Containerd]:
    """A containerd of its own (``env`` added to its environment), stopped on exit with nothing left behind.

    ``image_tarball`` is imported first, if given. On a clean exit no task may
    be left in any namespace; on every exit no runc container, no process
    naming the daemon's directory, no mount under it, no shim socket and no
    utility VM run directory may be left.
    """
    daemon_env = dict(os.environ)
    daemon_env.update(env or {})
    try:
        daemon = start_containerd(image_tarball, DEFAULT_REF, env=daemon_env, isolation=isolation)
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield daemon
        leftovers = [f"{namespace}/{task}" for namespace in daemon.namespaces()
                     for task in daemon.ctr("--namespace", namespace, "task", "ls", "-q").stdout.decode().split()]
        assert not leftovers, f"tasks left behind: {leftovers}"
    finally:
        found = stop_containerd(daemon)
        assert not found.runc_containers, f"runc containers left behind: {found.runc_containers}"
        assert not found.processes, f"processes left behind: {found.processes}"
        assert not found.mounts, f"mounts left behind: {found.mounts}"
        assert not found.sockets, f"shim sockets left behind: {found.sockets}"
        assert not found.vm_run_dirs, f"utility VM run directories left behind: {found.vm_run_dirs}"
