"""Errors a person can act on: one line on stderr naming what and where, a distinct exit code, no traceback."""

from __future__ import annotations

import select
import socket
import subprocess

import pytest

from tests.support.agent import AgentProcess, Keys
from tests.support.sshd import SshServer

from .helpers import ROOT, UVMEXEC, cli_env, discard, reap, run_cli


def _one_line(result) -> str:
    text = result.stderr.decode()
    assert "Traceback" not in text
    assert text.count("\n") == 1 and text.startswith("uvmexec: "), text
    return text


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("args", "code", "words"), [
    (["nosuchcommand"], 127, "executable file not found in $PATH: 'nosuchcommand'"),
    (["/no/such/program"], 127, "No such file or directory"),
    (["/etc/passwd"], 126, "Permission denied"),
    (["--cwd", "/no/such/dir", "--", "true"], 126, "cwd '/no/such/dir'"),
])
def test_a_command_that_cannot_run(tmp_path, args, code, words):
    result = run_cli(["run", *args], tmp_path)
    assert result.returncode == code
    line = _one_line(result)
    assert words in line and "(on the private agent)" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args", [
    ["run"],
    ["run", "--no-such-option", "--", "true"],
    ["run", "--user", "root:", "--", "true"],
    ["run", "--user", ":0", "--", "true"],
    ["run", "--cwd", "relative", "--", "true"],
    ["run", "--guest", "udp://x:1", "--", "true"],
    ["run", "--guest", "tcp://127.0.0.1:9", "--", "true"],  # no keys, no --insecure
    ["ps"],  # a fresh private agent runs nothing: ps needs an agent
    ["no-such-command"],
])
def test_bad_usage_exits_125(tmp_path, args):
    result = run_cli(args, tmp_path)
    assert result.returncode == 125, result.stderr
    assert b"Traceback" not in result.stderr
    assert b"uvmexec: " in result.stderr


@pytest.mark.timeout(60)
def test_an_agent_socket_that_does_not_exist(tmp_path):
    result = run_cli(["run", "--guest", f"ipc://{tmp_path}/nobody.sock", "--", "true"], tmp_path)
    assert result.returncode == 125
    assert f"ipc://{tmp_path}/nobody.sock" in _one_line(result)


@pytest.mark.timeout(60)
def test_an_agent_socket_nobody_listens_on(tmp_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()  # the file stays, as after an agent crash
    result = run_cli(["run", "--guest", f"ipc://{tmp_path}/stale.sock", "--", "true"], tmp_path)
    assert result.returncode == 125
    assert "not running" in _one_line(result)


@pytest.mark.timeout(60)
def test_a_tcp_agent_that_refuses(tmp_path):
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]  # bound, not listening: connections are refused
        result = run_cli(["run", "--guest", f"tcp://127.0.0.1:{port}", "--insecure", "--", "true"], tmp_path)
    assert result.returncode == 125
    assert f"tcp://127.0.0.1:{port}" in _one_line(result)


@pytest.mark.timeout(60)
def test_a_silent_agent_times_out(tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts TCP (as a user-mode NAT does) but never speaks
        endpoint = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        result = run_cli(["run", "--guest", endpoint, "--insecure", "--timeout", "1", "--", "true"], tmp_path)
    assert result.returncode == 125
    assert endpoint in _one_line(result)


@pytest.mark.timeout(60)
def test_the_right_keys_work(tmp_path, curve_agent):
    agent, keys = curve_agent
    result = run_cli(["run", "--guest", agent.endpoints[0], "--server-key", keys.agent_public,
                      "--client-key", keys.client_secret, "--", "echo", "admitted"], tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"admitted\n", b"")


@pytest.mark.timeout(60)
def test_a_client_key_the_agent_does_not_know(tmp_path, curve_agent):
    agent, keys = curve_agent
    stranger = Keys.create(str(tmp_path / "stranger"))
    result = run_cli(["run", "--guest", agent.endpoints[0], "--server-key", keys.agent_public,
                      "--client-key", stranger.client_secret, "--", "true"], tmp_path)
    assert result.returncode == 125
    line = _one_line(result)
    assert f"refused --client-key {stranger.client_secret}" in line
    assert "--authorized-keys" in line  # where its public half must go


@pytest.mark.timeout(60)
def test_a_wrong_server_key(tmp_path, curve_agent):
    agent, keys = curve_agent
    impostor = Keys.create(str(tmp_path / "impostor"))
    result = run_cli(["run", "--guest", agent.endpoints[0], "--server-key", impostor.agent_public,
                      "--client-key", keys.client_secret, "--", "true"], tmp_path)
    assert result.returncode == 125
    line = _one_line(result)
    assert agent.endpoints[0] in line
    assert f"is not the one --server-key {impostor.agent_public} belongs to" in line


@pytest.mark.timeout(60)
def test_an_unusable_key_file(tmp_path, curve_agent):
    agent, keys = curve_agent
    result = run_cli(["run", "--guest", agent.endpoints[0], "--server-key", keys.agent_public,
                      "--client-key", keys.client_public, "--", "true"], tmp_path)  # public, not secret
    assert result.returncode == 125
    line = _one_line(result)
    assert f"--client-key {keys.client_public}: holds no secret key" in line
    assert "client.key_secret" in line  # the fix


def _dead_port() -> int:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        return placeholder.getsockname()[1]  # closed again: connections to it are refused


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("options", "words"), [
    (["--keys", "/nope"], "--keys /nope: no such directory (make one with 'uvmexec keygen /nope')"),
    (["--keys", "{tmp}"], "--keys {tmp}/agent.key: no such file (give the agent's public certificate"),
    (["--server-key", "/nope", "--client-key", "/etc/hostname"], "--server-key /nope: no such file"),
    (["--server-key", "/etc/passwd", "--client-key", "/etc/passwd"],
     "--server-key /etc/passwd: not a ZeroMQ certificate"),
    (["--server-key", "/etc", "--client-key", "/etc/passwd"], "--server-key /etc: is a directory"),
    (["--server-key", "/etc/passwd"], "--server-key needs --client-key too"),
])
def test_key_files_are_checked_before_connecting(tmp_path, options, words):
    # The endpoint refuses connections: if uvmexec connected first it would say so instead.
    options = [option.replace("{tmp}", str(tmp_path)) for option in options]
    result = run_cli(["run", "--guest", f"tcp://127.0.0.1:{_dead_port()}", *options, "--", "true"], tmp_path)
    assert result.returncode == 125
    assert words.replace("{tmp}", str(tmp_path)) in _one_line(result)


@pytest.mark.timeout(60)
def test_a_key_directory_from_the_environment_is_named_so(tmp_path):
    env = cli_env(tmp_path, UVMEXEC_GUEST=f"tcp://127.0.0.1:{_dead_port()}", UVMEXEC_KEYS="/nope")
    result = run_cli(["run", "--", "true"], tmp_path, env=env)
    assert result.returncode == 125
    assert "$UVMEXEC_KEYS /nope: no such directory" in _one_line(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("endpoint", "words"), [
    ("tcp://127.0.0.1", "--guest tcp://127.0.0.1: no port; give tcp://HOST:PORT"),
    ("tcp://127.0.0.1:99999", "--guest tcp://127.0.0.1:99999: port '99999' is not in 1..65535"),
    ("tcp://:5555", "is not a host to connect to"),
    ("tcp://127.0.0.1:ssh", "port 'ssh' is not in 1..65535"),
    ("127.0.0.1:5555", "not an endpoint; give ipc:///path, tcp://HOST:PORT or ssh://"),
    ("ipc://", "no socket path"),
    ("ssh://root@host:0", "--guest ssh://root@host:0: ssh target: port 0 is not in 1..65535"),
])
def test_bad_endpoint_syntax_is_a_usage_error(tmp_path, endpoint, words):
    result = run_cli(["run", "--guest", endpoint, "--insecure", "--", "true"], tmp_path)
    assert result.returncode == 125
    line = _one_line(result)
    assert words in line
    assert "unreachable" not in line and "cannot reach" not in line


@pytest.mark.timeout(60)
def test_insecure_against_a_curve_agent(tmp_path, curve_agent):
    agent, _ = curve_agent
    result = run_cli(["run", "--guest", agent.endpoints[0], "--insecure", "--", "true"], tmp_path)
    assert result.returncode == 125
    line = _one_line(result)
    assert f"the agent at {agent.endpoints[0]} uses CURVE, not plaintext: drop --insecure and give --keys" in line


@pytest.mark.timeout(60)
def test_keys_against_a_plaintext_agent(tmp_path):
    keys = Keys.create(str(tmp_path / "keys"))
    agent = AgentProcess(["tcp://127.0.0.1:0"], ["--insecure"]).start()
    try:
        result = run_cli(["run", "--guest", agent.endpoints[0], "--server-key", keys.agent_public,
                          "--client-key", keys.client_secret, "--", "true"], tmp_path)
    finally:
        agent.stop()
    assert result.returncode == 125
    assert f"the agent at {agent.endpoints[0]} runs without CURVE (plaintext): connect with --insecure" \
        in _one_line(result)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("greeting", "words"), [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "is not a uvmexec agent: it said 'SSH-2.0-OpenSSH_9.2' (check the port"),
    (None, "no agent answers at {endpoint}: the connection was accepted and closed at once"),
])
def test_a_port_that_is_not_an_agent(tmp_path, greeting, words):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        endpoint = f"tcp://127.0.0.1:{server.getsockname()[1]}"
        process = subprocess.Popen(UVMEXEC + ["run", "--guest", endpoint, "--insecure", "--", "true"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=cli_env(tmp_path), cwd=ROOT)
        try:
            readable, _, _ = select.select([server], [], [], 20)
            assert readable, "uvmexec never connected"
            peer, _ = server.accept()
            with peer:
                if greeting is not None:
                    peer.sendall(greeting)
                    assert reap(process) == 125  # it hangs up on us
                else:
                    peer.close()
                    assert reap(process) == 125
            stderr = process.stderr.read().decode()
        finally:
            discard(process)
    assert stderr.count("\n") == 1, stderr
    assert words.format(endpoint=endpoint) in stderr


@pytest.mark.timeout(60)
def test_key_options_from_the_environment(tmp_path, curve_agent):
    agent, keys = curve_agent
    env = cli_env(tmp_path, UVMEXEC_GUEST=agent.endpoints[0], UVMEXEC_SERVER_KEY=keys.agent_public,
                  UVMEXEC_CLIENT_KEY=keys.client_secret)
    result = run_cli(["run", "--", "echo", "from env"], tmp_path, env=env)
    assert (result.returncode, result.stdout) == (0, b"from env\n"), result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("debug", [False, True])
def test_an_internal_error_is_one_line_unless_debugging(monkeypatch, capsys, tmp_path, debug):
    from host_proxy import cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "keygen_command", broken)
    monkeypatch.setattr(cli, "_setup_logging", lambda debug: None)  # leave pytest's logging alone
    monkeypatch.delenv("UVMEXEC_DEBUG", raising=False)
    assert cli.main(["keygen", str(tmp_path / "k")] + (["--debug"] if debug else [])) == 125
    err = capsys.readouterr().err
    assert err.endswith("uvmexec: internal error: RuntimeError: a bug"
                        + ("" if debug else " (run with --debug for the traceback)") + "\n")
    assert ("Traceback" in err) is debug


@pytest.fixture
def sshd():
    with SshServer() as server:
        yield server


@pytest.mark.timeout(90)
def test_run_over_ssh_and_its_key_errors(tmp_path, curve_agent, sshd):
    agent, keys = curve_agent
    endpoint = sshd.endpoint(agent=agent.endpoints[0])
    common = ["--guest", endpoint, "--server-key", keys.agent_public, "--client-key", keys.client_secret,
              "--known-hosts", str(sshd.known_hosts)]
    result = run_cli(["run", *common, "--ssh-key", str(sshd.key_path), "--", "echo", "tunnelled"], tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"tunnelled\n", b"")
    stranger = sshd.new_user_key(authorize=False)
    refused = run_cli(["run", *common, "--ssh-key", str(stranger), "--", "true"], tmp_path)
    assert refused.returncode == 125
    assert "rejected key" in _one_line(refused)
    no_keys = run_cli(["run", "--guest", endpoint, "--known-hosts", str(sshd.known_hosts), "--ssh-key",
                       str(sshd.key_path), "--", "true"], tmp_path)
    assert no_keys.returncode == 125
    assert f"the agent behind {endpoint} refused a plaintext connection, so it uses CURVE: give --keys DIR" \
        in _one_line(no_keys)
    no_file = run_cli(["run", *common, "--ssh-key", str(tmp_path / "nokey"), "--", "true"], tmp_path)
    assert no_file.returncode == 125
    assert f"--ssh-key {tmp_path / 'nokey'}: no such file" in _one_line(no_file)
