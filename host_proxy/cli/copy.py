"""``uvmexec cp``: files and directories into and out of the guest, as ``docker cp`` copies them.

Promise: ``cp LOCAL :GUEST`` and ``cp :GUEST LOCAL`` (a leading ``:`` names
a path where the agent runs; ``-`` as LOCAL is a tar stream on stdin, unpacked
into the directory GUEST, or on stdout) copy a file or a whole directory,
keeping modes and times; what is copied in belongs to the user that unpacks it
there (root), as docker's. As
docker's: when the destination is an existing directory the source goes
inside it under its own name, otherwise it gets the destination's name (its
parent must exist). It travels as a tar stream through one exec of ``tar``
where the agent runs (the guest image has it), written by and read with
Python's :mod:`tarfile` here; extraction here refuses what would land
outside the destination (``tarfile``'s ``data`` filter). Failures are one
line, exit 125 (the remote tar's own message when it is the one failing).
"""

from __future__ import annotations

import argparse
import io
import os
import posixpath
import secrets
import shutil
import sys
import tarfile
import threading
from typing import BinaryIO, cast

from common import ProcessSpec, Stdio
from common.errors import ExecError

from ..client import AgentClient
from . import connect
from .errors import CliError, Exit, classify, one_line
from .run import quiet_library
from .stdio import FdReader, FdWriter

TIMEOUT = 3600.0


class _Collect:
    """A bounded sink for a remote command's stderr (for the error message)."""

    def __init__(self, limit: int = 4096) -> None:
        self.data = b""
        self.limit = limit

    def write(self, data: bytes | memoryview) -> int:
        self.data = (self.data + bytes(data))[-self.limit:]
        return len(data)

    def flush(self) -> None:
        pass


def _remote(client: AgentClient, task: str, args: list[str], where: str, *, stdin: object = None,
            stdout: object = None) -> tuple[int, str]:
    """Run ``args`` where the agent runs (a hidden exec, deleted after): its exit status and stderr."""
    errors = _Collect()
    made = client.create_exec(task, f"uvmexec-cp-{secrets.token_hex(4)}", ProcessSpec(args=args),
                              Stdio(stdin=cast(BinaryIO, stdin), stdout=cast(BinaryIO, stdout),
                                    stderr=cast(BinaryIO, errors)))
    try:
        made.start()
    except ExecError as error:
        made.delete()
        raise CliError(f"cannot run {args[0]} on {where}: {one_line(str(error))}") from None
    status = made.wait(timeout=TIMEOUT).exit_status
    made.delete()
    return status, one_line(errors.data.decode(errors="replace"))


def _is_remote_directory(client: AgentClient, task: str, path: str, where: str) -> bool:
    status, _ = _remote(client, task, ["test", "-d", path], where)
    return status == 0


def copy_command(args: argparse.Namespace) -> int:
    source, destination = args.source, args.destination
    if source.startswith(":") == destination.startswith(":"):
        raise CliError("cp copies between here and where the agent runs: mark that side with a leading ':' "
                       "(uvmexec cp FILE :/tmp/ or uvmexec cp :/etc/hostname .)")
    quiet_library(args.debug)
    with connect.connect(args, allow_embedded=False, debug=args.debug) as target:
        try:
            if destination.startswith(":"):
                _copy_in(target.client, args.task, source, destination[1:], target.where)
            else:
                _copy_out(target.client, args.task, source[1:], destination, target.where)
        except ExecError as error:
            raise classify(error, target.where) from None
    return Exit.OK


def _copy_in(client: AgentClient, task: str, local: str, remote: str, where: str) -> None:
    if not remote.startswith("/"):
        raise CliError(f":{remote}: give an absolute path where the agent runs")
    if local != "-" and not os.path.lexists(local):
        raise CliError(f"{local}: no such file or directory")
    if local == "-":  # a tar stream: unpacked into the directory given
        directory, name = remote, ""
    elif _is_remote_directory(client, task, remote, where):
        directory, name = remote, os.path.basename(os.path.normpath(local))
    else:
        directory, name = posixpath.dirname(remote.rstrip("/")) or "/", posixpath.basename(remote.rstrip("/"))
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_end, "wb") as pipe:
                if local == "-":
                    shutil.copyfileobj(sys.stdin.buffer, pipe)
                else:
                    with tarfile.open(fileobj=pipe, mode="w|") as archive:
                        archive.add(local, arcname=name)
        except BaseException as error:  # reported after the remote tar finished
            failure.append(error)

    producer = threading.Thread(target=produce, name="uvmexec-cp", daemon=True)
    producer.start()
    reader = FdReader(read_end)
    try:
        # Owned by whoever unpacks it there (root), as docker cp makes them: not by our uid.
        status, errors = _remote(client, task, ["tar", "-x", "--no-same-owner", "-f", "-", "-C", directory],
                                 where, stdin=reader)
    finally:
        reader.close()
        os.close(read_end)  # a producer still writing gets EPIPE
        producer.join()
    if failure and not isinstance(failure[0], BrokenPipeError):
        raise CliError(f"{local}: {failure[0]}")
    if status != 0:
        raise CliError(f"copying into :{remote} on {where} failed: {errors or f'tar exited with {status}'}")


def _copy_out(client: AgentClient, task: str, remote: str, local: str, where: str) -> None:
    if not remote.startswith("/"):
        raise CliError(f":{remote}: give an absolute path where the agent runs")
    remote = remote.rstrip("/") or "/"
    directory, name = posixpath.dirname(remote) or "/", posixpath.basename(remote) or "."
    if local == "-":
        status, errors = _remote(client, task, ["tar", "-c", "-f", "-", "-C", directory, name], where,
                                 stdout=FdWriter(1))
        if status != 0:
            raise CliError(f"copying :{remote} from {where} failed: {errors or f'tar exited with {status}'}")
        return
    if os.path.isdir(local):
        into, rename = local, None
    else:
        into, rename = os.path.dirname(os.path.abspath(local)), os.path.basename(local)
        if not os.path.isdir(into):
            raise CliError(f"{local}: no such directory {into}")
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            with os.fdopen(read_end, "rb") as pipe, tarfile.open(fileobj=pipe, mode="r|") as archive:
                for member in archive:
                    if rename is not None:
                        first, _, rest = member.name.partition("/")
                        member.name = rename + ("/" + rest if rest else "") if first == name else member.name
                    archive.extract(member, into, filter="data")
                pipe.read()  # what tar pads the end with
        except BaseException as error:
            failure.append(error)

    consumer = threading.Thread(target=consume, name="uvmexec-cp", daemon=True)
    consumer.start()
    writer = _PipeWriter(write_end)
    try:
        status, errors = _remote(client, task, ["tar", "-c", "-f", "-", "-C", directory, name], where,
                                 stdout=writer)
    finally:
        writer.close()
        consumer.join()
    if status != 0:
        raise CliError(f"copying :{remote} from {where} failed: {errors or f'tar exited with {status}'}")
    if failure:
        raise CliError(f"extracting :{remote} into {local}: {failure[0]}")


class _PipeWriter(io.RawIOBase):
    """The write end of a pipe whose reader may stop early (then the rest is dropped)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._writer = FdWriter(fd)
        self._fd = fd

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
        return self._writer.write(data)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        super().close()
