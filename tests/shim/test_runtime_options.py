"""What the start command reads from containerd's options: the options file, and the runc shim's ShimCgroup.

The real cgroup is joined in containerd's own TestShimInCgroup (test_containerd_suite.py); here the
two cgroup layouts are directories in tmp_path.
"""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2

from common.errors import InvalidArgumentError
from host_proxy.shim.proto import runc_options_pb2, runctypes_pb2, runtimeoptions_pb2
from host_proxy.shim.runtime_options import StartOptions, join_cgroup, parse


def _any(type_url: str, message) -> bytes:
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString()).SerializeToString()


def test_the_options_containerd_sends() -> None:
    assert parse(b"") == StartOptions()
    assert parse(_any("runtimeoptions.v1.Options", runtimeoptions_pb2.Options(config_path="/etc/o.toml"))) == \
        StartOptions(config_path="/etc/o.toml")
    # containerd's typeurl names it without a prefix; other clients may add type.googleapis.com/.
    for type_url in ("containerd.runc.v1.Options", "type.googleapis.com/containerd.runc.v1.Options"):
        runc = runc_options_pb2.Options(shim_cgroup="/containerd/shim", binary_name="runc")
        assert parse(_any(type_url, runc)) == StartOptions(shim_cgroup="/containerd/shim")
    create = runctypes_pb2.CreateOptions(shim_cgroup="/containerd/shim", no_pivot_root=True)
    assert parse(_any("containerd.linux.runc.CreateOptions", create)) == StartOptions(shim_cgroup="/containerd/shim")
    assert parse(_any("example.Other", runtimeoptions_pb2.Options(config_path="x"))) == StartOptions()
    with pytest.raises(InvalidArgumentError, match="runtime options: not a containerd.runc.v1.Options"):
        parse(any_pb2.Any(type_url="containerd.runc.v1.Options", value=b"\xff\xff").SerializeToString())


def test_join_cgroup_v1_writes_every_hierarchy_that_has_the_path(tmp_path) -> None:
    for hierarchy in ("devices", "memory", "cpu,cpuacct"):
        (tmp_path / hierarchy / "containerd" / "shim").mkdir(parents=True)
        (tmp_path / hierarchy / "containerd" / "shim" / "cgroup.procs").write_text("")
    (tmp_path / "pids").mkdir()  # a hierarchy without that cgroup: left alone
    join_cgroup(4321, "/containerd/shim", root=str(tmp_path))
    for hierarchy in ("devices", "memory", "cpu,cpuacct"):
        assert (tmp_path / hierarchy / "containerd" / "shim" / "cgroup.procs").read_text() == "4321"
    assert list((tmp_path / "pids").iterdir()) == []


def test_join_cgroup_v2(tmp_path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids")
    (tmp_path / "containerd" / "shim").mkdir(parents=True)
    (tmp_path / "containerd" / "shim" / "cgroup.procs").write_text("")
    join_cgroup(99, "containerd/shim", root=str(tmp_path))
    assert (tmp_path / "containerd" / "shim" / "cgroup.procs").read_text() == "99"


@pytest.mark.parametrize(("path", "message"), [
    ("/no/such", "shim_cgroup '/no/such': no such cgroup"),
    ("/", "shim_cgroup '/' is not a cgroup path"),
    ("/a/../../etc", "is not a cgroup path"),
])
def test_join_cgroup_refuses_what_is_not_a_cgroup(tmp_path, path, message) -> None:
    (tmp_path / "devices").mkdir()
    with pytest.raises(InvalidArgumentError, match=message):
        join_cgroup(1, path, root=str(tmp_path))
