"""Content-addressed build steps: hashing, locking, atomic publication, progress.

A build step's output is a directory named by a hash of every input of that
step. ``ensure_step`` promises:

- an output that exists is complete: it is built in a private temporary
  directory and renamed into place only after the build function returned;
- two concurrent builders of the same step never both build: the second
  blocks on a lock file (an ``flock``, released by the kernel if its holder
  dies, so a crashed builder can never wedge the next one) and then reuses
  the first one's output;
- debris of a crashed build (its temporary directory, including anything a
  tool left mounted in it) is removed before the step is built again;
- what it creates is private: directories 0700, lock files 0600.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

KEY_LENGTH = 20  # hex digits of sha256 used in directory names


class BuildError(RuntimeError):
    """A build step failed; the message names the step and the cause."""


class Progress:
    """Prints one line per step start and end, with elapsed times, to stderr."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._started = time.monotonic()

    def note(self, message: str) -> None:
        total = time.monotonic() - self._started
        print(f"[vm_images {total:6.1f}s] {message}", file=self._stream, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.note(f"{name} ...")
        began = time.monotonic()
        yield
        self.note(f"{name}: done in {time.monotonic() - began:.1f}s")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started


def digest(*parts: Any) -> str:
    """A stable hash of JSON-serialisable parts (the key of a step)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def file_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def tree_files(root: Path) -> list[Path]:
    """Every file under ``root`` but bytecode and dotfiles, sorted, relative to ``root``.

    Bytecode is left out because any host-side import rewrites it; keying on
    it would rebuild the image after every test run. Dotfiles (editor swap
    files, tool caches) are not part of a package either.
    """
    found: list[Path] = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            found.append((Path(directory) / name).relative_to(root))
    return found


def tree_digest(root: Path) -> str:
    """Hash of the relative paths, modes and bytes of ``tree_files(root)``."""
    hasher = hashlib.sha256()
    for relative in tree_files(root):
        path = root / relative
        hasher.update(f"{relative}\0{path.stat().st_mode & 0o777:o}\0".encode())
        hasher.update(file_digest(path).encode())
    return hasher.hexdigest()


def run(argv: list[str], *, step: str, cwd: Path | None = None,
        log: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a build tool; on failure raise BuildError with the step and the output's tail.

    Output goes to ``log`` when given (long-running tools like debootstrap),
    otherwise it is captured and returned.
    """
    tool_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
    tool_env.update(env or {})
    try:
        if log is None:
            captured = subprocess.run(argv, cwd=cwd, env=tool_env, stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, errors="replace")
            returncode, stdout = captured.returncode, captured.stdout
            output = captured.stdout + captured.stderr
        else:
            with open(log, "a") as log_stream:
                returncode = subprocess.run(argv, cwd=cwd, env=tool_env,
                                            stdin=subprocess.DEVNULL, stdout=log_stream,
                                            stderr=subprocess.STDOUT).returncode
            stdout = ""
            output = log.read_text(errors="replace")
    except FileNotFoundError as error:
        raise BuildError(f"{step}: {argv[0]} is not installed on the host ({error})") from None
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise BuildError(f"{step}: {' '.join(argv[:3])} ... exited with status "
                         f"{returncode}:\n{tail}")
    return stdout


@contextmanager
def _locked(lock_path: Path, progress: Progress) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    with open(descriptor, "a+") as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            progress.note(f"waiting for {holder} building {lock_path.stem}")
            # Blocking is safe: the kernel drops the lock when its holder dies.
            fcntl.flock(lock_file, fcntl.LOCK_EX)
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"pid {os.getpid()}\n")
        lock_file.flush()
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def ensure_step(cache_dir: Path, name: str, build: Callable[[Path], None],
                progress: Progress) -> Path:
    """Return ``cache_dir/name``, running ``build(tmpdir)`` first if it does not exist.

    ``build`` fills an empty directory; it is renamed to ``cache_dir/name``
    only when ``build`` returns.
    """
    final = cache_dir / name
    if final.is_dir():
        return final
    with _locked(cache_dir / "locks" / f"{name}.lock", progress):
        if final.is_dir():
            progress.note(f"{name}: built by another process meanwhile")
            return final
        scratch = cache_dir / "tmp"
        scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        for stale in scratch.glob(f"{name}.*"):
            progress.note(f"removing debris of an interrupted build: {stale}")
            remove_tree(stale)
        work = scratch / f"{name}.{os.getpid()}"
        work.mkdir(mode=0o700)
        try:
            build(work)
            final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.rename(work, final)
        except BaseException:
            remove_tree(work)
            raise
    return final


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    mounts = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                mounts.append(point)
    return mounts


def remove_tree(path: Path) -> None:
    """Delete ``path`` recursively, first unmounting anything mounted inside it.

    A debootstrap killed half-way leaves /proc, /sys or bind mounts of host
    device nodes in its target; deleting through them would reach the host.
    """
    if not path.exists() and not path.is_symlink():
        return
    for point in sorted(_mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if _mounts_under(path):
        raise BuildError(f"cannot remove {path}: still mounted: {_mounts_under(path)}")
    shutil.rmtree(path, ignore_errors=False)


def tree_bytes(root: Path) -> int:
    """Bytes the tree's files occupy on disk, each inode once, plus a block per entry."""
    seen: set[int] = set()
    total = 0
    for directory, subdirs, files in os.walk(root):
        total += 4096 * len(subdirs)
        for name in files:
            info = os.lstat(os.path.join(directory, name))
            if info.st_ino not in seen:
                seen.add(info.st_ino)
                total += info.st_blocks * 512
    return total
