"""``uvmexec run`` on the embedded default, through pipes: exit codes, bytes, stdin, env, signals."""

from __future__ import annotations

import os
import pwd
import select
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess

from .helpers import ROOT, UVMEXEC, cli_env, discard, gone, read_until, reap, run_cli


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 3", 3), ("exit 42", 42),
                                              ("kill -9 $$", 137), ("kill -TERM $$", 143)])
def test_the_exit_code_is_the_commands(tmp_path, script, code):
    result = run_cli(["run", "--", "sh", "-c", script], tmp_path)
    assert result.returncode == code, result.stderr
    assert result.stderr == b""


@pytest.mark.timeout(60)
def test_stdout_and_stderr_stay_apart_and_bytes_stay_intact(tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value, no newline discipline
    (tmp_path / "blob").write_bytes(payload)
    script = f"cat {tmp_path}/blob; printf 'to err\\0\\377' >&2"
    result = run_cli(["run", "--", "sh", "-c", script], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == payload
    assert result.stderr == b"to err\0\377"


@pytest.mark.timeout(60)
def test_output_streams_while_the_command_runs(tmp_path):
    # The command waits for its own stdin after the first line: seeing that line proves streaming.
    process = subprocess.Popen(UVMEXEC + ["run", "-i", "--", "sh", "-c", "echo first; read x; echo second $x"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=cli_env(tmp_path), cwd=ROOT)
    try:
        read_until(process.stdout.fileno(), b"first\n")
        process.stdin.write(b"go\n")
        process.stdin.close()
        assert reap(process) == 0
        assert process.stdout.read() == b"second go\n"
    finally:
        discard(process)


@pytest.mark.timeout(60)
def test_interactive_streams_stdin_and_closes_it_at_eof(tmp_path):
    data = b"".join(b"line %d\n" % n for n in range(20000)) + b"no newline at the end\0"
    result = run_cli(["run", "-i", "--", "cat"], tmp_path, stdin_data=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout == data


@pytest.mark.timeout(60)
def test_a_command_that_exits_without_reading_stdin_ends_uvmexec(tmp_path):
    # Our stdin stays open and silent (as a terminal nobody types at): uvmexec must not wait for it.
    with subprocess.Popen(UVMEXEC + ["run", "-i", "--", "sh", "-c", "exit 2"], stdin=subprocess.PIPE,
                          env=cli_env(tmp_path), cwd=ROOT) as process:
        try:
            assert reap(process) == 2
        finally:
            process.stdin.close()


@pytest.mark.timeout(60)
def test_without_interactive_stdin_is_empty(tmp_path):
    result = run_cli(["run", "--", "sh", "-c", "cat; echo done"], tmp_path, stdin_data=b"not for you\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"done\n"


@pytest.mark.timeout(60)
def test_env_cwd_and_user(tmp_path):
    env = cli_env(tmp_path, FROM_MY_ENV="copied")
    result = run_cli(["run", "--env", "A=1", "--env", "B=two words", "--env", "FROM_MY_ENV",
                      "--env", "NOT_SET_ANYWHERE", "--cwd", "/usr", "--user", "1234:2345", "--",
                      "sh", "-c", "env; pwd; id -u; id -g"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert lines[-3:] == ["/usr", "1234", "2345"]
    environment = dict(line.split("=", 1) for line in lines[:-3] if "=" in line)
    assert environment["A"] == "1"
    assert environment["B"] == "two words"
    assert environment["FROM_MY_ENV"] == "copied"
    assert "NOT_SET_ANYWHERE" not in environment
    assert environment["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "TERM" not in environment  # only with -t


@pytest.mark.timeout(60)
def test_options_after_the_command_belong_to_it(tmp_path):
    result = run_cli(["run", "echo", "-n", "--env", "x"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"--env x"  # -n went to echo, --env too


@pytest.mark.timeout(60)
def test_ctrl_c_is_forwarded_to_the_command(tmp_path):
    process = subprocess.Popen(UVMEXEC + ["run", "--", "sh", "-c", "echo $$; exec sleep 60"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=cli_env(tmp_path), cwd=ROOT)
    try:
        remote_pid = int(read_until(process.stdout.fileno(), b"\n").split()[0])
        process.send_signal(signal.SIGINT)
        assert reap(process) == 130
        assert gone(remote_pid)
        assert process.stderr.read() == b""
    finally:
        discard(process)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("times", [1, 2])  # twice at once is what coreutils' timeout sends
def test_sigterm_is_forwarded_and_the_private_agent_is_cleaned_up(tmp_path, times):
    env = cli_env(tmp_path)
    process = subprocess.Popen(UVMEXEC + ["run", "--", "sh", "-c", "echo $$; exec sleep 60"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        remote_pid = int(read_until(process.stdout.fileno(), b"\n").split()[0])
        assert os.listdir(env["TMPDIR"]), "the private agent's directory should exist while it runs"
        for _ in range(times):
            process.send_signal(signal.SIGTERM)
        assert reap(process) == 143
        assert gone(remote_pid)
        assert os.listdir(env["TMPDIR"]) == []
    finally:
        discard(process)


@pytest.mark.timeout(60)
def test_a_closed_stdout_gives_the_command_sigpipe(tmp_path):
    with subprocess.Popen(UVMEXEC + ["run", "--", "yes"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=cli_env(tmp_path), cwd=ROOT) as process:
        read_until(process.stdout.fileno(), b"y\n")
        process.stdout.close()
        assert reap(process) == 128 + signal.SIGPIPE
        assert b"Traceback" not in process.stderr.read()


@pytest.mark.timeout(60)
def test_the_installed_console_script_runs(tmp_path):
    script = shutil.which("uvmexec")
    assert script is not None, "the uvmexec console script is not on PATH (.ci/setup installs it)"
    result = subprocess.run([script, "run", "--", "echo", "installed"], capture_output=True,
                            stdin=subprocess.DEVNULL, env=cli_env(tmp_path), timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"installed\n", b"")


@pytest.mark.timeout(60)
def test_run_through_a_given_ipc_agent_leaves_no_record(tmp_path, ipc_agent):
    endpoint = ipc_agent.endpoints[0]
    result = run_cli(["run", "--guest", endpoint, "--task", "t1", "--id", "e1", "--", "sh", "-c", "exit 5"],
                     tmp_path)
    assert result.returncode == 5, result.stderr
    listed = run_cli(["ps", "--guest", endpoint], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert b"e1" not in listed.stdout
    # The default user on a given agent is root, as docker exec's.
    assert run_cli(["run", "--guest", endpoint, "--", "id", "-u"], tmp_path).stdout == b"0\n"


@pytest.mark.timeout(60)
def test_uvmexec_guest_in_the_environment_picks_the_agent(tmp_path, ipc_agent):
    env = cli_env(tmp_path, UVMEXEC_GUEST=ipc_agent.endpoints[0])
    result = run_cli(["run", "--", "echo", "via env"], tmp_path, env=env)
    assert (result.returncode, result.stdout) == (0, b"via env\n"), result.stderr
    assert os.listdir(env["TMPDIR"]) == []  # no private agent was started


def _late_writer(tmp_path) -> tuple[list[str], str]:
    """A command that prints its pid and 'early', exits, and leaves behind a process that prints
    'late' once something is written into the FIFO it returns (that process holds stdout open)."""
    fifo = str(tmp_path / "go")
    os.mkfifo(fifo)
    return ["sh", "-c", f"echo $$ early; (read x < {fifo}; echo late) & exit 0"], fifo


def _wait_gone(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        assert select.select([fd], [], [], 20)[0], f"{pid} did not exit"
    finally:
        os.close(fd)


@pytest.mark.timeout(60)
def test_drain_timeout_zero_waits_for_output_written_after_the_exit(tmp_path):
    command, fifo = _late_writer(tmp_path)
    process = subprocess.Popen(UVMEXEC + ["run", "--drain-timeout", "0", "--", *command], stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(tmp_path), cwd=ROOT)
    try:
        first = read_until(process.stdout.fileno(), b" early\n")
        _wait_gone(int(first.split()[0]))  # the command itself has exited (the embedded agent runs it here)
        with open(fifo, "w") as go:  # only now does what it left behind write
            go.write("now\n")
        assert reap(process) == 0
        assert first + process.stdout.read() == first.split()[0] + b" early\nlate\n"
        assert process.stderr.read() == b""
    finally:
        discard(process)


@pytest.mark.timeout(60)
def test_output_cut_off_by_the_drain_timeout_is_said_once(tmp_path):
    command, fifo = _late_writer(tmp_path)
    result = run_cli(["run", "--drain-timeout", "0.5", "--", *command], tmp_path)
    try:
        assert result.returncode == 0
        assert result.stdout.endswith(b" early\n")
        assert result.stderr.decode().count("\n") == 1
        assert result.stderr.startswith(b"uvmexec: output written after the command exited was cut off after "
                                        b"--drain-timeout 0.5s")
    finally:
        try:  # let what it left behind finish, if the private agent did not end it on the way out
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody reads it any more
            pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["-1", "nan", "3601"])
def test_a_bad_drain_timeout_is_a_usage_error(tmp_path, value):
    result = run_cli(["run", "--drain-timeout", value, "--", "true"], tmp_path)
    assert result.returncode == 125
    assert result.stderr.startswith(f"uvmexec: --drain-timeout {value}: give seconds".encode())


def _identity(result) -> tuple[str, str, str, str]:
    """(uid, gid, groups, HOME) as ``id -u; id -g; id -G; echo $HOME`` printed them."""
    assert result.returncode == 0, result.stderr
    uid, gid, groups, home = result.stdout.decode().splitlines()
    return uid, gid, groups, home


IDENTITY = ["--", "sh", "-c", 'id -u; id -g; id -G; echo "$HOME"']


@pytest.mark.timeout(60)
@pytest.mark.parametrize("user", ["nobody", "65534", "nobody:nogroup"])
def test_a_user_is_looked_up_where_the_command_runs(tmp_path, ipc_agent, user):
    # The agent here runs on this host: its passwd and group are the ones the test can read.
    nobody = pwd.getpwnam("nobody")
    result = run_cli(["run", "--guest", ipc_agent.endpoints[0], "--user", user, *IDENTITY], tmp_path)
    assert _identity(result) == (str(nobody.pw_uid), str(nobody.pw_gid), str(nobody.pw_gid), nobody.pw_dir)
    listed = run_cli(["ps", "-aq", "--guest", ipc_agent.endpoints[0]], tmp_path)
    assert listed.stdout == b"", "the lookup left an exec behind"


@pytest.mark.timeout(60)
def test_a_user_gets_the_groups_that_list_it(tmp_path, workdir):
    """The agent sees its own passwd and group files, with a user that two groups list (in a
    mount namespace of its own, so the host's files are left alone)."""
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(Path("/etc/passwd").read_text() + "uvmtest:x:4242:4242::/home/uvmtest:/bin/sh\n")
    group.write_text(Path("/etc/group").read_text() + "uvmtest:x:4242:\nuvmextra:x:4343:uvmtest\nuvmmore:x:4344:a,uvmtest\n")
    script = f'mount --bind {passwd} /etc/passwd && mount --bind {group} /etc/group && exec "$@"'
    agent = AgentProcess([f"ipc://{workdir}/agent.sock"], prefix=["unshare", "-m", "sh", "-c", script, "sh"])
    agent.start()
    try:
        result = run_cli(["run", "--guest", agent.endpoints[0], "--user", "uvmtest", *IDENTITY], tmp_path)
    finally:
        agent.stop()
    uid, gid, groups, home = _identity(result)
    assert (uid, gid, home) == ("4242", "4242", "/home/uvmtest")
    assert set(map(int, groups.split())) == {4242, 4343, 4344}


@pytest.mark.timeout(60)
def test_an_unknown_uid_runs_with_gid_0_and_home_slash_unless_told(tmp_path):
    unused = next(uid for uid in range(40000, 50000) if uid not in {entry.pw_uid for entry in pwd.getpwall()})
    result = run_cli(["run", "--user", str(unused), *IDENTITY], tmp_path)
    assert _identity(result) == (str(unused), "0", "0", "/")
    told = run_cli(["run", "--user", f"{unused}:{unused}", "--env", "HOME=/tmp", *IDENTITY], tmp_path)
    assert _identity(told) == (str(unused), str(unused), str(unused), "/tmp")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("user", "words"), [
    ("nosuchuser", "--user nosuchuser: no user 'nosuchuser' in /etc/passwd on the private agent"),
    ("nobody:nosuchgroup", "--user nobody:nosuchgroup: no group 'nosuchgroup' in /etc/group on the private agent"),
])
def test_a_name_that_is_not_there(tmp_path, user, words):
    result = run_cli(["run", "--user", user, "--", "true"], tmp_path)
    assert result.returncode == 125
    assert result.stderr.decode().startswith(f"uvmexec: {words}")


@pytest.mark.timeout(60)
def test_env_files_then_env_options(tmp_path):
    first = tmp_path / "first.env"
    first.write_text("# a comment\n\nA=from file\nB=b=c\n  C=indented\nFROM_MY_ENV\nNOT_SET_ANYWHERE\nPATH=/bin\n")
    second = tmp_path / "second.env"
    second.write_text("A=second file\n")
    env = cli_env(tmp_path, FROM_MY_ENV="copied")
    result = run_cli(["run", "--env-file", str(first), "--env-file", str(second), "--env", "B=option", "--",
                      "env"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    environment = dict(line.split("=", 1) for line in lines)
    assert len(environment) == len(lines), "a name was set twice"
    assert (environment["A"], environment["B"], environment["C"]) == ("second file", "option", "indented")
    assert environment["FROM_MY_ENV"] == "copied" and "NOT_SET_ANYWHERE" not in environment
    assert environment["PATH"] == "/bin"  # ours replace the defaults


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("content", "words"), [(None, "no such file"),
                                                ("GOOD=1\nBAD NAME=2\n", ":2: 'BAD NAME=2' is not NAME=VALUE")])
def test_a_bad_env_file(tmp_path, content, words):
    path = tmp_path / "x.env"
    if content is not None:
        path.write_text(content)
    result = run_cli(["run", "--env-file", str(path), "--", "true"], tmp_path)
    assert result.returncode == 125
    assert result.stderr.decode().startswith(f"uvmexec: --env-file {path}")
    assert words in result.stderr.decode()


@pytest.mark.timeout(60)
def test_what_a_command_leaves_behind_ends_with_the_private_agent(tmp_path):
    env = cli_env(tmp_path)
    result = run_cli(["run", "--", "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"], tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    left = int(result.stdout)
    try:
        assert gone(left)  # the agent, not SIGKILLed while it had a child, ended it
    finally:
        if not gone(left):
            os.kill(left, signal.SIGKILL)
    assert os.listdir(env["TMPDIR"]) == []
