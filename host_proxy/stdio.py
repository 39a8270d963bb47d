"""Turning a caller's :class:`~common.Stdio` into the supervisor's stdio ends, on the host."""

from __future__ import annotations

import os
from dataclasses import dataclass

from common.errors import InvalidArgumentError
from common.rules import check_drain_timeout
from common.spec import MAX_ID_BYTES, MAX_PATH_BYTES, Stdio, check_text
from common.supervisor import FileObjectSink, FileObjectSource, InputSource, OutputSink, PathSink, PathSource
from common.task import Mount


@dataclass
class StdioEnds:
    stdin: InputSource | None
    stdout: OutputSink | None
    stderr: OutputSink | None
    paths: tuple[str, str, str]

    def release(self) -> None:
        if self.stdin is not None:
            self.stdin.close()
        for sink in (self.stdout, self.stderr):
            if sink is not None:
                sink.abort()


def check_exec_ids(task_id: object, exec_id: object) -> None:
    check_text(task_id, "task id", max_bytes=MAX_ID_BYTES, allow_empty=False)
    check_text(exec_id, "exec id", max_bytes=MAX_ID_BYTES, allow_empty=False)


def check_creation(
    task_id: object, exec_id: object, spec: object, stdio: object, drain_timeout: object
) -> tuple[Stdio, float]:
    """The creation rules every backend applies before anything is opened or sent.

    Returns the stdio (``Stdio()`` for None) and the drain timeout as a float.
    """
    from common.spec import ProcessSpec

    check_exec_ids(task_id, exec_id)
    if not isinstance(spec, ProcessSpec):
        raise InvalidArgumentError(f"spec must be a ProcessSpec, not {type(spec).__name__}")
    stdio = _check_stdio(stdio)
    if spec.terminal and stdio.stderr is not None:
        raise InvalidArgumentError(
            f"exec: '{exec_id}' in task: '{task_id}': a terminal exec cannot have a stderr target"
        )
    return stdio, check_drain_timeout(drain_timeout)


def check_task_creation(
    task_id: object, bundle: object, rootfs: object, stdio: object, drain_timeout: object
) -> tuple[str, list[Mount], Stdio, float]:
    """The creation rules of a task, checked before anything is opened or sent: the bundle path
    as a str, the rootfs mounts as a list, the init's stdio (``Stdio()`` for None) and drain
    timeout. What the spec says (a terminal) is for the agent to check: it reads config.json."""
    check_exec_ids(task_id, task_id)
    if not isinstance(bundle, (str, os.PathLike)):
        raise InvalidArgumentError(f"bundle must be a path, not {type(bundle).__name__}")
    bundle_path = os.fspath(bundle)
    check_text(bundle_path, "bundle", max_bytes=MAX_PATH_BYTES, allow_empty=False)
    if rootfs is not None and not isinstance(rootfs, (list, tuple)):
        raise InvalidArgumentError(f"rootfs must be a list of Mounts, not {type(rootfs).__name__}")
    mounts: list[Mount] = []
    for mount in rootfs or ():
        if not isinstance(mount, Mount):
            raise InvalidArgumentError(f"rootfs: each entry must be a Mount, not {type(mount).__name__}")
        mounts.append(mount)
    return bundle_path, mounts, _check_stdio(stdio), check_drain_timeout(drain_timeout)


def _check_stdio(stdio: object) -> Stdio:
    if stdio is None:
        return Stdio()
    if not isinstance(stdio, Stdio):
        raise InvalidArgumentError(f"stdio must be a Stdio, not {type(stdio).__name__}")
    return stdio


def open_stdio(stdio: Stdio) -> StdioEnds:
    """Open path targets now (regular files; FIFOs are opened when first used).

    A path that cannot be opened raises ``InvalidArgumentError`` naming it;
    nothing opened so far is left open.
    """
    ends = StdioEnds(None, None, None, (stdio.path_of("stdin"), stdio.path_of("stdout"), stdio.path_of("stderr")))
    try:
        if stdio.stdin is not None:
            ends.stdin = _open_source(stdio.stdin)
        if stdio.stdout is not None:
            ends.stdout = _open_sink("stdout", stdio.stdout)
        if stdio.stderr is not None:
            ends.stderr = _open_sink("stderr", stdio.stderr)
    except BaseException:
        ends.release()
        raise
    return ends


def _open_source(target: object) -> InputSource:
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        try:
            return PathSource(path)  # type: ignore[arg-type]
        except OSError as error:
            raise InvalidArgumentError(f"stdin: cannot open {path!r}: {error.strerror}") from None
    return FileObjectSource(target)  # type: ignore[arg-type]


def _open_sink(name: str, target: object) -> OutputSink:
    if isinstance(target, (str, os.PathLike)):
        path = os.fspath(target)
        try:
            return PathSink(path)  # type: ignore[arg-type]
        except OSError as error:
            raise InvalidArgumentError(f"{name}: cannot open {path!r}: {error.strerror}") from None
    return FileObjectSink(target)  # type: ignore[arg-type]
