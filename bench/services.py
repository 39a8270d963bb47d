"""Local processes the host-side benchmarks talk to, each in its own process as the agent is.

Agents are the project's real ``python -m guest_agent``; the raw baselines are
:mod:`bench.echo` and :mod:`bench.rawpipe`. All are started, waited for (their
``ready`` line) and stopped the same way, and :class:`Services` stops
everything it started. The benchmarks own these launchers: ``bench`` never
imports the test suite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import zmq.auth

from host_proxy import AgentClient
from host_proxy.cli.embedded import read_line

from .measure import private_directory

#: The repository root: ``python -m`` runs the benchmark servers from there.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Keys:
    """A CURVE key set as ``uvmexec keygen`` makes it: the agent's, and one authorized client's."""

    agent_public: str
    agent_secret: str
    client_secret: str
    authorized: str

    @classmethod
    def create(cls, directory: str) -> Keys:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        agent_public, agent_secret = zmq.auth.create_certificates(directory, "agent")
        client_public, client_secret = zmq.auth.create_certificates(directory, "client")
        for secret in (agent_secret, client_secret):  # zmq.auth leaves them to the umask; both sides refuse that
            os.chmod(secret, 0o600)
        authorized = os.path.join(directory, "authorized")
        os.makedirs(authorized, mode=0o700, exist_ok=True)
        shutil.copy(client_public, authorized)
        return cls(agent_public, agent_secret, client_secret, authorized)


class ServerProcess:
    """``python -m MODULE ARGS`` in its own process, ready once it prints a line starting with ``ready``."""

    def __init__(self, module: str, args: list[str], ready: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        line = read_line(self.process.stdout.fileno(), 20.0)
        if not line.startswith(ready.encode()):
            self.stop()
            raise RuntimeError(f"{module} did not start: {line!r}")
        self.ready_line = line.decode().strip()

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


class AgentServer(ServerProcess):
    """``python -m guest_agent`` listening on ``listen``; ``endpoints`` are where it is bound.

    Stopped with SIGTERM, on which the agent kills the processes it still runs.
    """

    def __init__(self, listen: str, extra: list[str]) -> None:
        super().__init__("guest_agent", ["--log-level", "WARNING", "--listen", listen, *extra], "uvm-agent ready ")
        self.endpoints = self.ready_line.split()[2:]


class EchoServer(ServerProcess):
    """``python -m bench.echo`` on one endpoint (``loop``: see :mod:`bench.echo`)."""

    def __init__(self, listen: str, curve_secret: str | None = None, loop: str = "blocking") -> None:
        args = ["--listen", listen, "--loop", loop]
        if curve_secret is not None:
            args += ["--curve-secret", curve_secret]
        super().__init__("bench.echo", args, "echo ready ")
        self.endpoint = self.ready_line.split()[2]


@dataclass
class LocalAgent:
    """A running agent and a client connected to it."""

    process: AgentServer
    client: AgentClient
    endpoint: str

    @property
    def pid(self) -> int:
        return self.process.pid


class Services:
    """Owns every process and directory a host-side family starts; ``close()`` stops them all."""

    def __init__(self, prefix: str) -> None:
        self.directory = private_directory(prefix)
        self._keys: Keys | None = None
        self._stack = contextlib.ExitStack()

    @property
    def keys(self) -> Keys:
        """A CURVE key set (agent and client certificates), made on first use."""
        if self._keys is None:
            self._keys = Keys.create(os.path.join(self.directory, "keys"))
        return self._keys

    def ipc(self, name: str) -> str:
        return f"ipc://{self.directory}/{name}.sock"

    def agent(self, listen: str, *, curve: bool = False, insecure: bool = False) -> LocalAgent:
        """Start an agent on ``listen`` and connect a client to it (CURVE or plaintext on tcp)."""
        extra: list[str] = []
        if curve:
            extra = ["--server-key", self.keys.agent_secret, "--authorized-keys", self.keys.authorized]
        elif insecure:
            extra = ["--insecure"]
        process = AgentServer(listen, extra)
        self._stack.callback(process.stop)
        endpoint = process.endpoints[0]
        if curve:
            client = AgentClient.connect(endpoint, server_key=self.keys.agent_public,
                                         client_key=self.keys.client_secret, timeout=10)
        else:
            client = AgentClient.connect(endpoint, insecure=insecure, timeout=10)
        self._stack.callback(client.close)
        return LocalAgent(process, client, endpoint)

    def echo(self, listen: str, *, curve: bool = False, loop: str = "blocking") -> EchoServer:
        server = EchoServer(listen, self.keys.agent_secret if curve else None, loop)
        self._stack.callback(server.stop)
        return server

    def rawpipe(self, transport: str) -> tuple[ServerProcess, str]:
        """A :mod:`bench.rawpipe` sender and the endpoint to reach it at."""
        endpoint = self.ipc("rawpipe") if transport == "zmq" else self.scratch("rawpipe.unix")
        server = ServerProcess("bench.rawpipe", ["--transport", transport, "--listen", endpoint], "rawpipe ready")
        self._stack.callback(server.stop)
        return server, endpoint

    def defer(self, fn: Callable[[], object]) -> None:
        """Call ``fn`` at ``close()``, before what was started earlier is stopped."""
        self._stack.callback(fn)

    def scratch(self, name: str) -> str:
        """A path in the private directory."""
        return os.path.join(self.directory, name)

    def close(self) -> None:
        self._stack.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
