"""Keys are per boot: the image holds no secret, no two VMs share a key, and the cache is private."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from vm_images import ImagePaths, build_image
from vm_images.cache import Progress

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]


def _debugfs(image: Path, request: str) -> str:
    result = subprocess.run(["debugfs", "-R", request, str(image)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


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
