"""A real agent process for tests: started, waited for, killed and restarted like a service."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import IO

import zmq.auth

from host_proxy.cli.embedded import read_line
from tests.support.procs import descendants, kill_and_wait

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Keys:
    """A CURVE key set as ``uvmexec keygen`` makes it."""

    directory: str
    agent_public: str
    agent_secret: str
    client_public: str
    client_secret: str
    authorized: str

    @classmethod
    def create(cls, directory: str) -> Keys:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        agent_public, agent_secret = zmq.auth.create_certificates(directory, "agent")
        client_public, client_secret = zmq.auth.create_certificates(directory, "client")
        for secret in (agent_secret, client_secret):  # zmq.auth leaves them to the umask; both sides check
            os.chmod(secret, 0o600)
        authorized = os.path.join(directory, "authorized")
        os.makedirs(authorized, mode=0o700, exist_ok=True)
        shutil.copy(client_public, authorized)
        return cls(directory, agent_public, agent_secret, client_public, client_secret, authorized)


class AgentProcess:
    """``python -m guest_agent`` with the given arguments, run as a child of the test.

    ``module`` names another launcher module; ``prefix`` runs the agent through a command such
    as ``prlimit`` (as a guest's init would start it, with the limits that init hands down);
    ``stderr``, a file, takes its log.
    """

    def __init__(self, listen: list[str], extra: list[str] | None = None, *, module: str = "guest_agent",
                 prefix: list[str] | None = None, stderr: IO[bytes] | None = None) -> None:
        self.listen = listen
        self.extra = extra or []
        self.module = module
        self.prefix = prefix or []
        self.stderr = stderr  # where its log goes (default: the test's stderr)
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoints: list[str] = []

    def start(self, timeout: float = 20.0) -> AgentProcess:
        command = [*self.prefix, sys.executable, "-m", self.module, "--log-level", "WARNING"]
        for endpoint in self.listen:
            command += ["--listen", endpoint]
        self.process = subprocess.Popen(command + self.extra, cwd=ROOT, stdout=subprocess.PIPE, stderr=self.stderr)
        assert self.process.stdout is not None
        line = read_line(self.process.stdout.fileno(), timeout)
        if not line.startswith(b"uvm-agent ready "):
            self.stop()
            raise RuntimeError(f"agent did not start: {line!r}")
        self.endpoints = line.decode().split()[2:]
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        self._reap()

    def stop(self) -> None:
        """SIGTERM (SIGKILL if it does not end), then kill whatever it left behind: the agent kills
        its processes on the way out, but one SIGKILLed earlier leaves its children running."""
        if self.process is None:
            return
        leftovers = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reap()
        kill_and_wait(leftovers)

    def _reap(self) -> None:
        if self.process is not None:
            self.process.wait(20)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None


def tcp_address(agent: AgentProcess) -> tuple[str, int]:
    """Host and port of an agent's first (tcp) endpoint."""
    host, port = agent.endpoints[0][len("tcp://"):].rsplit(":", 1)
    return host, int(port)


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def private_directory(prefix: str) -> str:
    """A fresh 0700 directory (ipc sockets must live in one)."""
    return tempfile.mkdtemp(prefix=prefix)
