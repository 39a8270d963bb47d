"""The process spec takes effect in the process, on every backend."""

from __future__ import annotations

import pytest

from common import ProcessSpec, Rlimit, Stdio, User

from .helpers import sh


def _output_of(backend, tmp_path, spec: ProcessSpec) -> str:
    out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
    made = backend.create(spec, Stdio(stdout=str(out)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    return out.read_text()


def test_env_is_exactly_the_spec_env(backend, tmp_path):
    # HOME is given: runc (as docker) adds one from /etc/passwd to an env without it.
    env = ["FOO=bar baz", "EMPTY=", "PATH=/usr/bin:/bin", "HOME=/nowhere"]
    assert sorted(_output_of(backend, tmp_path, ProcessSpec(args=["env"], env=env)).splitlines()) == sorted(env)


def test_the_default_search_path_applies_without_path(backend, tmp_path):
    assert _output_of(backend, tmp_path, ProcessSpec(args=["echo", "found"])) == "found\n"


def test_cwd(backend, tmp_path):
    assert _output_of(backend, tmp_path, ProcessSpec(args=["pwd"], cwd="/tmp")) == "/tmp\n"


def test_user_and_groups(backend, tmp_path):
    spec = sh("id -u; id -g; id -G", user=User(uid=1000, gid=1001, additional_gids=(1001, 27, 5)))
    uid, gid, groups = _output_of(backend, tmp_path, spec).splitlines()
    assert (uid, gid) == ("1000", "1001")
    assert set(groups.split()) == {"1001", "27", "5"}


def test_umask(backend, tmp_path):
    assert _output_of(backend, tmp_path, sh("umask", user=User(umask=0o027))) == "0027\n"


@pytest.mark.not_in_container(
    "runc 1.1.5 (Debian 12, built with Go 1.19) sets an exec's RLIMIT_NOFILE racily: the Go runtime "
    "of 'runc init' may raise the soft limit to the hard one after runc set it "
    "(opencontainers/runc#4195, fixed in runc 1.1.13)")
def test_rlimits(backend, tmp_path):
    spec = sh("ulimit -Sn; ulimit -Hn; ulimit -Sc", rlimits=[Rlimit("RLIMIT_NOFILE", 123, 456), Rlimit("RLIMIT_CORE", 0, 0)])
    assert _output_of(backend, tmp_path, spec).splitlines() == ["123", "456", "0"]


@pytest.mark.not_in_container(
    "runc 1.1.5 (Debian 12, built with Go 1.19) sets an exec's RLIMIT_NOFILE racily: the Go runtime "
    "of 'runc init' may raise the soft limit to the hard one after runc set it "
    "(opencontainers/runc#4195, fixed in runc 1.1.13)")
def test_rlimits_apply_to_another_user(backend, tmp_path):
    spec = sh("id -u; ulimit -Sn; ulimit -Hn", user=User(uid=1000, gid=1000),
              rlimits=[Rlimit("RLIMIT_NOFILE", 100, 200)])
    assert _output_of(backend, tmp_path, spec).split() == ["1000", "100", "200"]


def test_no_new_privileges(backend, tmp_path):
    with_flag = _output_of(backend, tmp_path, sh("grep NoNewPrivs /proc/self/status", no_new_privileges=True))
    without = _output_of(backend, tmp_path, sh("grep NoNewPrivs /proc/self/status"))
    assert with_flag.split() == ["NoNewPrivs:", "1"]
    assert without.split() == ["NoNewPrivs:", "0"]


def test_each_exec_leads_its_own_process_group(backend, tmp_path):
    out = _output_of(backend, tmp_path, sh('echo $$; cut -d" " -f5 /proc/$$/stat'))
    pid, pgid = out.split()
    assert pid == pgid


def test_fds_of_the_exec_side_do_not_leak_into_the_process(backend, tmp_path):
    out = _output_of(backend, tmp_path, sh("ls /proc/self/fd"))
    # 0, 1, 2 and the fd ls itself opens for the directory.
    assert sorted(int(fd) for fd in out.split()) == [0, 1, 2, 3]
