"""``uvmexec cp`` in and out of where the agent runs (here an agent on this host: its paths are the test's)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from .helpers import run_cli


@pytest.fixture
def tree(tmp_path):
    """A directory with a file, an executable, a subdirectory and a symlink."""
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "run.sh").write_bytes(b"#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "sub" / "b.bin").write_bytes(bytes(range(256)) * 1000)
    (root / "link").symlink_to("a.txt")
    return root


def _same(left: Path, right: Path) -> None:
    """The same tree: names, bytes, modes and symlinks."""
    for dirpath, dirnames, filenames in os.walk(left):
        relative = Path(dirpath).relative_to(left)
        assert sorted(os.listdir(right / relative)) == sorted(dirnames + filenames)
        for name in filenames:
            a, b = Path(dirpath) / name, right / relative / name
            assert a.is_symlink() == b.is_symlink()
            if a.is_symlink():
                assert os.readlink(a) == os.readlink(b)
            else:
                assert a.read_bytes() == b.read_bytes()
                assert a.stat().st_mode == b.stat().st_mode


@pytest.mark.timeout(60)
def test_a_directory_goes_in_and_comes_back_out(tmp_path, tree, ipc_agent):
    there = tmp_path / "guest"
    there.mkdir()
    endpoint = ["--guest", ipc_agent.endpoints[0]]
    into = run_cli(["cp", *endpoint, str(tree), f":{there}"], tmp_path)  # an existing directory: inside it
    assert (into.returncode, into.stderr) == (0, b"")
    _same(tree, there / "src")
    renamed = run_cli(["cp", *endpoint, str(tree), f":{there}/copy"], tmp_path)  # a new name
    assert renamed.returncode == 0, renamed.stderr
    _same(tree, there / "copy")
    back = tmp_path / "back"
    back.mkdir()
    out = run_cli(["cp", *endpoint, f":{there}/copy", str(back)], tmp_path)
    assert (out.returncode, out.stderr) == (0, b"")
    _same(tree, back / "copy")
    one = run_cli(["cp", *endpoint, f":{there}/copy/a.txt", str(tmp_path / "alpha")], tmp_path)
    assert one.returncode == 0, one.stderr
    assert (tmp_path / "alpha").read_bytes() == b"alpha\n"
    assert run_cli(["ps", "-aq", *endpoint], tmp_path).stdout == b""  # the tar execs are gone


@pytest.mark.timeout(60)
def test_tar_streams_on_stdin_and_stdout(tmp_path, tree, ipc_agent):
    there = tmp_path / "guest"
    there.mkdir()
    endpoint = ["--guest", ipc_agent.endpoints[0]]
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as archive:
        archive.add(tree, arcname="streamed")
    into = run_cli(["cp", *endpoint, "-", f":{there}"], tmp_path, stdin_data=packed.getvalue())
    assert into.returncode == 0, into.stderr
    _same(tree, there / "streamed")
    out = run_cli(["cp", *endpoint, f":{there}/streamed/a.txt", "-"], tmp_path)
    assert out.returncode == 0, out.stderr
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as archive:
        assert archive.extractfile("a.txt").read() == b"alpha\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "words"), [
    (["{tmp}/nothing", ":/tmp"], "{tmp}/nothing: no such file or directory"),
    ([":/no/such/file", "{tmp}"], "copying :/no/such/file from agent"),
    (["{tmp}", "{tmp}"], "mark that side with a leading ':'"),
    (["{tmp}", ":relative"], ":relative: give an absolute path"),
])
def test_copy_errors(tmp_path, ipc_agent, args, words):
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = run_cli(["cp", "--guest", ipc_agent.endpoints[0], *args], tmp_path)
    assert result.returncode == 125
    err = result.stderr.decode()
    assert err.count("\n") == 1 and words.replace("{tmp}", str(tmp_path)) in err, err
