"""Fixtures for the guest image and the QEMU launcher (real debootstrap, real QEMU).

Tests marked ``vm`` build the image (about a minute the first time, seconds
when cached; needs root) and boot it under QEMU (about 10 s each under TCG).
"""

from __future__ import annotations

import pytest

from vm_images import GuestInfo, ImagePaths, build_image


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vm: builds the guest image and boots it under QEMU (slow)")


@pytest.fixture(scope="session")
def vm_image() -> ImagePaths:
    return build_image()


@pytest.fixture(scope="session")
def guest(request: pytest.FixtureRequest, vm_image: ImagePaths) -> GuestInfo:
    """The session's guest, shared with the qemu conformance backends (one boot for all)."""
    from tests.support.backends import shared_guest

    return shared_guest(request.config)
