"""A bundle's config.json is checked before runc sees it; programs are found in its root filesystem.

(common/supervisor/bundle.py: no runc, no processes.)
"""

from __future__ import annotations

import json
import os

import pytest

from common import ProcessSpec
from common.errors import InvalidArgumentError
from common.supervisor.bundle import BundleConfig, find_in_root, load_bundle, missing_init_program
from vm_images.busybox import make_bundle


@pytest.fixture
def bundle(tmp_path):
    made = make_bundle(tmp_path / "b", ProcessSpec(args=["sh"], env=["PATH=/bin"], terminal=True))
    return made.path


def _edit(bundle: str, change) -> None:
    path = os.path.join(bundle, "config.json")
    with open(path) as config_file:
        config = json.load(config_file)
    change(config)
    with open(path, "w") as config_file:
        json.dump(config, config_file)


def test_a_good_bundle(bundle):
    config = load_bundle(bundle)
    assert config.process == ProcessSpec(args=["sh"], env=["PATH=/bin"], terminal=True)
    assert config.root == os.path.join(bundle, "rootfs")
    assert config.own_pid_namespace


def test_a_joined_or_missing_pid_namespace_is_not_its_own(bundle):
    _edit(bundle, lambda config: config["linux"]["namespaces"].__setitem__(0, {"type": "pid", "path": "/proc/1/ns/pid"}))
    assert not load_bundle(bundle).own_pid_namespace
    _edit(bundle, lambda config: config["linux"]["namespaces"].pop(0))
    assert not load_bundle(bundle).own_pid_namespace


def _set(path: list[str], value):
    def change(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return change


def _delete(path: list[str]):
    def change(config):
        target = config
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_delete(["process"]), "config.json: process: must be an object"),
        (_set(["process", "args"], []), "config.json: process.args: must not be empty"),
        (_set(["process", "args"], "sh"), "config.json: process.args: must be a list"),
        (_set(["process", "cwd"], "relative"), "config.json: process.cwd: 'relative' is not an absolute path"),
        (_set(["process", "user"], {"uid": -1}), "config.json: process.user.uid: -1 is out of range"),
        (_set(["process", "seccompProfile"], "x"), "config.json: process.seccompProfile: is not supported"),
        (_set(["process", "capabilities"], ["CAP_KILL"]), "config.json: process.capabilities: must be an object"),
        (_set(["process", "capabilities"], {"bounding": [1]}), "process.capabilities.bounding[0]: must be a string"),
        (_set(["process", "capabilities"], {"everything": []}), "process.capabilities.everything: is not a capability set"),
        (_delete(["ociVersion"]), "config.json: ociVersion: must be a string"),
        (_delete(["root"]), "config.json: root: must be an object"),
        (_set(["root", "path"], ""), "config.json: root.path: must not be empty"),
        (_set(["hostname"], 7), "config.json: hostname: must be a string"),
        (_set(["mounts"], [{"destination": "proc"}]), "config.json: mounts[0].destination: 'proc' is not an absolute path"),
        (_set(["mounts"], [{"destination": "/x", "options": ["ro", 1]}]), "config.json: mounts[0].options[1]: must be a string"),
        (_set(["linux", "namespaces"], [{"type": "pid"}, {"type": "pid"}]), "linux.namespaces[1].type: pid is listed twice"),
        (_set(["linux", "namespaces"], [{"type": "everything"}]), "linux.namespaces[0].type: unknown namespace type"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_bad_field_is_named_with_the_file(bundle, change, message):
    _edit(bundle, change)
    with pytest.raises(InvalidArgumentError) as raised:
        load_bundle(bundle)
    assert str(raised.value).startswith(f"bundle '{bundle}': config.json: ")
    assert message in str(raised.value)


def test_no_config_json_or_no_json_at_all(bundle):
    path = os.path.join(bundle, "config.json")
    with open(path, "w") as config_file:
        config_file.write('{"ociVersion": ')
    with pytest.raises(InvalidArgumentError, match=r"config.json: not valid JSON"):
        load_bundle(bundle)
    os.unlink(path)
    with pytest.raises(InvalidArgumentError, match=r"config.json: cannot read it: No such file or directory"):
        load_bundle(bundle)


def test_a_bundle_that_is_not_an_absolute_directory(tmp_path):
    with pytest.raises(InvalidArgumentError, match="must be an absolute path"):
        load_bundle("relative/bundle")
    with pytest.raises(InvalidArgumentError, match="is not a directory"):
        load_bundle(str(tmp_path / "missing"))


def test_find_in_root_follows_links_as_the_container_would(tmp_path):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "opt" / "tools").mkdir(parents=True)
    program = root / "opt" / "tools" / "real"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (root / "bin" / "absolute").symlink_to("/opt/tools/real")   # absolute: inside the root, not the host's
    (root / "bin" / "relative").symlink_to("../opt/tools/real")
    (root / "bin" / "escape").symlink_to("../../../../../../opt/tools/real")  # '..' stops at the root
    (root / "bin" / "loop").symlink_to("loop")
    (root / "bin" / "plain").write_text("not executable")
    for name in ("absolute", "relative", "escape"):
        assert find_in_root(str(root), name, "/usr/bin:/bin") == f"/bin/{name}"
    for name in ("loop", "plain", "missing"):
        assert find_in_root(str(root), name, "/usr/bin:/bin") is None


def test_an_init_program_runc_create_would_not_find_is_named(tmp_path):
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "bin" / "data").write_text("not executable")

    def missing(args, env=(), mounts=(), cwd="/"):
        spec = ProcessSpec(args=args, env=list(env), cwd=cwd)
        return missing_init_program(BundleConfig(spec, str(root), True, tuple(mounts)))

    assert missing(["tool"]) is None  # the default search path
    assert missing(["tool"], env=["PATH=/bin"]) is None
    assert missing(["/bin/tool"]) is None
    assert missing(["./tool"], cwd="/bin") is None
    assert missing(["tool"], env=["PATH=/usr/bin"]) == "'tool': no executable file of that name in the root " \
                                                        "filesystem in PATH /usr/bin"
    assert missing(["/bin/data"]) is not None
    assert missing(["notfound404"]) is not None
    # A mount of config.json may bring it: runc mounts those only at create.
    assert missing(["/mnt/tools/run"], mounts=["/mnt"]) is None
    assert missing(["run"], env=["PATH=/mnt/tools"], mounts=["/mnt/tools"]) is None
