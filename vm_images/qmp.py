"""A minimal synchronous QMP client (QEMU's JSON monitor on a unix socket).

``Qmp.connect(path, timeout)`` negotiates capabilities; ``execute(command)``
returns the command's ``return`` value or raises QmpError. Asynchronous
events arriving in between are skipped. Every read and write is bounded by
the socket timeout; nothing here waits forever.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any


class QmpError(Exception):
    """QMP was unreachable, answered with an error, or closed."""


class Qmp:
    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")

    @classmethod
    def connect(cls, path: Path, timeout: float = 5.0) -> Qmp:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as error:
            sock.close()
            raise QmpError(f"cannot connect to QMP at {path}: {error}") from None
        client = cls(sock)
        try:
            greeting = client._read()
            if "QMP" not in greeting:
                raise QmpError(f"QMP at {path} sent no greeting: {greeting!r:.200}")
            client.execute("qmp_capabilities")
        except BaseException:
            client.close()
            raise
        return client

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(message).encode() + b"\n")
        except OSError as error:
            raise QmpError(f"QMP {command}: {error}") from None
        while True:
            reply = self._read()
            if "event" in reply:
                continue
            if "error" in reply:
                failure = reply["error"]
                raise QmpError(f"QMP {command}: {failure.get('class')}: {failure.get('desc')}")
            if "return" in reply:
                return reply["return"]

    def _read(self) -> dict[str, Any]:
        try:
            line = self._reader.readline()
        except OSError as error:
            raise QmpError(f"reading QMP: {error}") from None
        if not line:
            raise QmpError("QMP closed the connection")
        try:
            message = json.loads(line)
        except ValueError:
            raise QmpError(f"QMP sent a line that is not JSON: {line[:200]!r}") from None
        if not isinstance(message, dict):
            raise QmpError(f"QMP sent a non-object: {line[:200]!r}")
        return message

    def close(self) -> None:
        self._reader.close()
        self._sock.close()

    def __enter__(self) -> Qmp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
