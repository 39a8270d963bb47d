"""Rootfs mounts are mounted in order, named when the kernel refuses one, and only ours come off.

(common/supervisor/mounts.py: real mount(2) calls; the suite runs as root.)
"""

from __future__ import annotations

import os

import pytest

from common import Mount
from common.errors import InvalidArgumentError
from common.supervisor.mounts import mount_all, unmount


def _mounted(path) -> int:
    """How many mounts are stacked on ``path`` right now."""
    with open("/proc/self/mountinfo") as mountinfo:
        return sum(1 for line in mountinfo if line.split()[4] == str(path))


@pytest.fixture
def dirs(tmp_path):
    for name in ("lower", "upper", "work", "target", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "lower" / "from-lower").write_text("lower\n")
    yield tmp_path
    unmount(str(tmp_path / "target"), _mounted(tmp_path / "target"))


def _overlay(dirs) -> Mount:
    return Mount("overlay", "overlay", [f"lowerdir={dirs / 'lower'}", f"upperdir={dirs / 'upper'}",
                                        f"workdir={dirs / 'work'}"])


def test_an_overlay_is_mounted_and_unmounted(dirs):
    target = dirs / "target"
    assert mount_all([_overlay(dirs)], str(target)) == 1
    assert (target / "from-lower").read_text() == "lower\n"
    (target / "written").write_text("x")
    assert (dirs / "upper" / "written").exists()
    unmount(str(target), 1)
    assert _mounted(target) == 0 and os.listdir(target) == []


def test_a_read_only_bind_is_read_only(dirs):
    target = dirs / "target"
    mount_all([Mount("bind", str(dirs / "lower"), ["rbind", "ro"])], str(target))
    assert (target / "from-lower").read_text() == "lower\n"
    with pytest.raises(OSError, match="Read-only file system"):
        (target / "new").write_text("x")
    unmount(str(target), 1)
    assert _mounted(target) == 0


def test_a_refused_mount_is_named_and_leaves_nothing_mounted(dirs):
    target = dirs / "target"
    bad = Mount("overlay", "overlay", [f"lowerdir={dirs / 'no-such-dir'}", f"upperdir={dirs / 'upper'}",
                                       f"workdir={dirs / 'work'}"])
    with pytest.raises(InvalidArgumentError) as raised:
        mount_all([Mount("bind", str(dirs / "lower"), ["bind"]), bad], str(target))
    assert str(raised.value).startswith(f"rootfs[1] (overlay of 'overlay' on '{target}'): ")
    assert _mounted(target) == 0


def test_only_our_mounts_come_off(dirs):
    target = dirs / "target"
    mount_all([Mount("bind", str(dirs / "other"), ["bind"])], str(target))  # someone else's, before ours
    mount_all([_overlay(dirs)], str(target))
    assert _mounted(target) == 2
    unmount(str(target), 1)
    assert _mounted(target) == 1
    assert not (target / "from-lower").exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "", "source": "x"}, "mount.type: must not be empty"),
        ({"type": "bind", "source": "x", "options": "ro"}, "options: must be a list"),
        ({"type": "bind", "source": "x", "options": ["a,b"]}, "options[0]: 'a,b' contains a comma"),
        ({"type": "bind", "source": "x", "options": [""]}, "mount.options[0]: must not be empty"),
    ],
)
def test_a_bad_mount_is_refused_when_made(fields, message):
    with pytest.raises(InvalidArgumentError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Mount(**fields)
