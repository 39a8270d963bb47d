"""The ``backend`` fixture: every conformance test runs once per selected backend."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.conftest import selected_backends
from tests.support.backends import REGISTRY, Backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend_name" in metafunc.fixturenames:
        # A backend that boots a guest carries the ``vm`` mark, so that ``-m "not vm"`` leaves it out.
        metafunc.parametrize("backend_name", [
            pytest.param(name, marks=pytest.mark.vm) if REGISTRY[name][0] else name
            for name in selected_backends(metafunc.config)], scope="session")


@pytest.fixture(scope="session")
def backend_factory(request: pytest.FixtureRequest, backend_name: str) -> Iterator[object]:
    _, factory = REGISTRY[backend_name]
    with contextlib.ExitStack() as stack:
        yield stack.enter_context(factory(request.config))


@pytest.fixture
def backend(request: pytest.FixtureRequest, backend_name: str, backend_factory: object) -> Iterator[Backend]:
    made = Backend(backend_name, backend_factory)  # type: ignore[arg-type]
    not_here = request.node.get_closest_marker("not_in_container")
    if not_here is not None and made.in_container:
        # Reported as skipped with the reason: a rule that does not apply is not a pass.
        pytest.skip(f"does not hold in a container ({backend_name}): {not_here.args[0]}")
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture
def held_fifo(tmp_path) -> Iterator[str]:
    """A FIFO path for stdin whose write end the test holds open (no EOF until close_io)."""
    import os

    path = str(tmp_path / "stdin.fifo")
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        yield path
    finally:
        os.close(writer)
