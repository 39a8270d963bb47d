"""The other ways to run a process in a guest, driven as their users drive them.

- :class:`QgaPeer` — QEMU's guest agent: JSON over its virtio-serial unix
  socket, ``guest-exec`` then ``guest-exec-status`` polled until ``exited``.
- :class:`ParamikoPeer` — ``exec_command`` on one kept-open paramiko
  ``SSHClient``, key auth, host key checked against known_hosts.
- :class:`ControlMasterPeer` — the OpenSSH ``ssh`` client reusing one
  ControlMaster connection (``-o ControlMaster=auto -o ControlPersist=60``).

Each has ``true()`` (run ``true``, check its exit status 0) and, for the SSH
peers, ``stream(command, path)`` (the command's stdout into a host file).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import time
from typing import Any

import paramiko

#: Seconds between two ``guest-exec-status`` polls (the protocol's only way to learn of an exit).
QGA_POLL_INTERVAL = 0.001


class QgaError(RuntimeError):
    pass


class QgaPeer:
    """A qemu-guest-agent client on its unix socket (QEMU accepts one such client at a time)."""

    def __init__(self, path: str, timeout: float = 30.0, poll_interval: float = QGA_POLL_INTERVAL) -> None:
        self.poll_interval = poll_interval
        self.polls = 0
        self.execs = 0
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.settimeout(timeout)
        self._socket.connect(path)
        self._buffer = b""
        self._ids = itertools.count(int(time.time()) % 1_000_000 * 1000)
        self.sync()

    def _send(self, command: dict[str, Any]) -> None:
        self._socket.sendall(json.dumps(command).encode() + b"\n")

    def _receive(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            data = self._socket.recv(65536)
            if not data:
                raise QgaError("qemu-ga closed the connection")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        line = line.strip(b"\xff \r\t")
        return json.loads(line) if line else self._receive()

    def execute(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        self._send({"execute": name, **({"arguments": arguments} if arguments is not None else {})})
        reply = self._receive()
        if "error" in reply:
            raise QgaError(f"{name}: {reply['error']}")
        return reply.get("return")

    def sync(self) -> None:
        """``guest-sync``: skip whatever an earlier client left unread, until our id comes back."""
        sync_id = next(self._ids)
        self._send({"execute": "guest-sync", "arguments": {"id": sync_id}})
        while self._receive().get("return") != sync_id:
            pass

    def run(self, path: str, args: list[str] | None = None) -> dict[str, Any]:
        """``guest-exec`` and poll ``guest-exec-status`` every ``poll_interval`` until it exited."""
        arguments: dict[str, Any] = {"path": path, "capture-output": True}
        if args:
            arguments["arg"] = args
        pid = self.execute("guest-exec", arguments)["pid"]
        self.execs += 1
        while True:
            status = self.execute("guest-exec-status", {"pid": pid})
            self.polls += 1
            if status.get("exited"):
                return status
            time.sleep(self.poll_interval)

    def true(self) -> None:
        status = self.run("/bin/true")
        if status.get("exitcode") != 0:
            raise QgaError(f"qemu-ga: true ended with {status}")

    def close(self) -> None:
        self._socket.close()


class ParamikoPeer:
    """``exec_command`` on a kept-open paramiko connection."""

    def __init__(self, host: str, port: int, user: str, key: str, known_hosts: str) -> None:
        self.client = paramiko.SSHClient()
        self.client.load_host_keys(known_hosts)
        self.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self.client.connect(host, port=port, username=user, key_filename=key, look_for_keys=False,
                            allow_agent=False, timeout=30)

    def true(self) -> None:
        _, stdout, _ = self.client.exec_command("true")
        code = stdout.channel.recv_exit_status()
        if code != 0:
            raise RuntimeError(f"paramiko: true exited with {code}")

    def stream(self, command: str, path: str) -> None:
        _, stdout, _ = self.client.exec_command(command)
        channel = stdout.channel
        with open(path, "ab") as out:
            while data := channel.recv(1024 * 1024):
                out.write(data)
        code = channel.recv_exit_status()
        if code != 0:
            raise RuntimeError(f"paramiko: {command!r} exited with {code}")

    def close(self) -> None:
        self.client.close()


class ControlMasterPeer:
    """The OpenSSH client, every call multiplexed over one ControlMaster connection."""

    def __init__(self, host: str, port: int, user: str, key: str, known_hosts: str, directory: str) -> None:
        self.control_path = os.path.join(directory, "cm")
        self.destination = f"{user}@{host}"
        self.options = [
            "-F", "/dev/null",
            "-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}", "-o", "ControlPersist=60",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "-i", key, "-p", str(port),
        ]
        # The first call establishes the master, which lives on in the background.
        subprocess.run(["ssh", *self.options, self.destination, "true"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=120)

    def true(self) -> None:
        subprocess.run(["ssh", *self.options, self.destination, "true"], stdin=subprocess.DEVNULL,
                       check=True, timeout=120)

    def stream(self, command: str, path: str) -> None:
        with open(path, "ab") as out:
            subprocess.run(["ssh", *self.options, self.destination, command], stdin=subprocess.DEVNULL,
                           stdout=out, check=True, timeout=600)

    def close(self) -> None:
        """``ssh -O exit``: end the master connection."""
        subprocess.run(["ssh", *self.options, "-O", "exit", self.destination], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
