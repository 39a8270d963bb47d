"""The busybox image and the bundles made from it (vm_images/busybox.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess

from common import ProcessSpec
from vm_images.busybox import CAPABILITIES, busybox_tree, make_bundle


def test_the_tree_holds_a_static_busybox_and_its_applets():
    tree = busybox_tree()
    busybox = tree / "bin" / "busybox"
    assert stat.S_ISREG(os.lstat(busybox).st_mode)
    # Static: it runs with no loader, which is all the container has.
    assert b"/ld-linux" not in busybox.read_bytes()[:4096]
    for applet in ("bin/sh", "bin/ps", "usr/bin/seq", "bin/hostname", "usr/bin/env", "bin/sleep"):
        link = tree / applet
        assert link.is_symlink() and link.resolve() == busybox.resolve(), applet
    assert subprocess.run([str(tree / "bin" / "sh"), "-c", "echo $((6 * 7))"], capture_output=True,
                          check=True).stdout == b"42\n"


def test_the_tree_names_the_usual_users_and_directories():
    tree = busybox_tree()
    users = {line.split(":")[0]: line.split(":")[2:4] for line in (tree / "etc" / "passwd").read_text().splitlines()}
    assert users == {"root": ["0", "0"], "sys": ["3", "3"], "www-data": ["33", "33"], "nobody": ["65534", "65534"]}
    groups = {line.split(":")[0]: line.split(":")[2] for line in (tree / "etc" / "group").read_text().splitlines()}
    assert groups == {"root": "0", "sys": "3", "www-data": "33", "nogroup": "65534"}
    assert stat.S_IMODE(os.stat(tree / "tmp").st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(tree / "root").st_mode) == 0o700
    for directory in ("proc", "sys", "dev", "etc", "var", "run", "home"):
        assert (tree / directory).is_dir(), directory


def test_a_bundle_has_the_config_an_empty_rootfs_and_an_overlay_over_the_tree(tmp_path):
    spec = ProcessSpec(args=["sh", "-c", "exit 3"], env=["PATH=/bin"], cwd="/tmp")
    bundle = make_bundle(tmp_path / "b", spec, hostname="box")
    assert bundle.path == str(tmp_path / "b")
    assert os.listdir(tmp_path / "b" / "rootfs") == []
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert ProcessSpec.from_oci({key: value for key, value in config["process"].items()
                                 if key != "capabilities"}) == spec
    assert config["process"]["capabilities"]["bounding"] == CAPABILITIES
    assert config["hostname"] == "box"
    assert config["root"] == {"path": "rootfs", "readonly": False}
    assert [namespace["type"] for namespace in config["linux"]["namespaces"]] == [
        "pid", "network", "ipc", "uts", "mount"]
    [overlay] = bundle.rootfs
    assert (overlay.type, overlay.source) == ("overlay", "overlay")
    assert overlay.options == (f"lowerdir={busybox_tree()}", f"upperdir={tmp_path / 'b' / 'upper'}",
                               f"workdir={tmp_path / 'b' / 'work'}")
    assert bundle.upper == tmp_path / "b" / "upper" and bundle.upper.is_dir()
