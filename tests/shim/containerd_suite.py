"""containerd's own ``integration/client`` Go tests: building the test binary, running it, reading its verdicts.

The tests are not in Debian's ``golang-github-containerd-containerd-dev``:
``.ci/setup`` fetches the installed containerd's source (``apt-get source``)
into :func:`source_dir`. :func:`build_test_binary` builds it once per (source
version, Go version, seed image) in GOPATH mode against Debian's Go packages,
cached under ``~/.cache/uvmexec/containerd-suite/``. The seed image — which
``TestMain`` always pulls from a registry — is a package variable, set at
link time with ``-ldflags -X``: so the registry's address is part of the
cache key, and the tests serve it on a fixed loopback port when they can.

:func:`run_suite` runs the binary against a containerd (``-no-daemon``) with
``TEST_RUNTIME`` naming the runtime, and parses the ``-test.v`` output into a
:class:`Result` per top-level test. A run that dies (a panic, the binary's
own timeout) fails the tests that were running then, and the ones that had
not run yet are run again. With ``UVMEXEC_SUITE_LOG=FILE`` in the environment,
each run's whole output is appended to FILE.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field

from .conftest import Containerd

IMPORT_PATH = "github.com/containerd/containerd"
PACKAGE = f"{IMPORT_PATH}/integration/client"
#: The Go tests' seed image variable (``integration/client/client_unix_test.go``).
TEST_IMAGE_VARIABLE = f"{PACKAGE}.testImage"
#: The containerd namespace the Go tests use (``integration/client``'s testNamespace).
TEST_NAMESPACE = "testing"
BUILD_TIMEOUT = 1800
#: Per run of the binary (its own ``-test.timeout`` is a little shorter, so it reports which test hung).
RUN_TIMEOUT = 900
TAIL_LINES = 40
#: A file each run of the binary appends its whole ``-test.v`` output to, if set (the report keeps only tails).
OUTPUT_LOG_VARIABLE = "UVMEXEC_SUITE_LOG"

_MARK = re.compile(r"^=== (RUN|PAUSE|CONT|NAME)\s+(\S+)")
_RESULT = re.compile(r"^--- (PASS|FAIL|SKIP): (\S+) \(")


def cache_root() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "uvmexec")


def containerd_version() -> str:
    return subprocess.run(["dpkg-query", "-W", "-f=${Version}", "containerd"], capture_output=True, text=True,
                          check=True).stdout.strip()


def source_dir(version: str) -> str | None:
    """The unpacked source of containerd ``version`` that ``.ci/setup`` fetched, or None."""
    fetched = os.path.join(cache_root(), "containerd-src", version)
    if not os.path.isfile(os.path.join(fetched, ".fetched")):
        return None
    for entry in sorted(os.listdir(fetched)):
        candidate = os.path.join(fetched, entry)
        if os.path.isdir(os.path.join(candidate, "integration", "client")):
            return candidate
    return None


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session building the same: wait for it, then reuse
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_test_binary(source: str, version: str, image: str) -> tuple[str, bool]:
    """The ``client.test`` binary for this source and seed ``image``: (path, whether it was built now)."""
    go_version = subprocess.run(["go", "version"], capture_output=True, text=True, check=True).stdout.strip()
    key = hashlib.sha256(f"{version}\0{go_version}\0{image}".encode()).hexdigest()[:16]
    cache = os.path.join(cache_root(), "containerd-suite", version)
    os.makedirs(cache, mode=0o700, exist_ok=True)
    binary = os.path.join(cache, f"client-{key}.test")
    with _locked(os.path.join(cache, ".lock")):
        if os.path.exists(binary):
            return binary, False
        gopath = os.path.join(cache, "gopath")
        tree = os.path.join(gopath, "src", IMPORT_PATH)
        if not os.path.exists(os.path.join(gopath, ".copied")):
            shutil.rmtree(gopath, ignore_errors=True)
            # GOPATH mode against Debian's /usr/share/gocode: without the source's own vendor/ (and quilt's .pc/).
            shutil.copytree(source, tree, symlinks=True,
                            ignore=lambda directory, names: [n for n in names if directory == source
                                                             and n in ("vendor", ".pc")])
            open(os.path.join(gopath, ".copied"), "w").close()
        env = dict(os.environ, GO111MODULE="off", GOPATH=f"{gopath}:/usr/share/gocode", GOFLAGS="")
        partial = binary + ".partial"
        built = subprocess.run(["go", "test", "-c", "-o", partial, "-ldflags", f"-X {TEST_IMAGE_VARIABLE}={image}",
                                "./integration/client"], cwd=tree, env=env, capture_output=True, text=True,
                               timeout=BUILD_TIMEOUT, check=False)
        if built.returncode != 0:
            raise AssertionError(f"building containerd's integration tests failed:\n{built.stdout}{built.stderr}")
        os.rename(partial, binary)
    return binary, True


def list_tests(binary: str) -> list[str]:
    """Every top-level test the binary has (``-test.list``; ``-test.short`` keeps TestMain from dialing containerd)."""
    listed = subprocess.run([binary, "-test.short", "-test.list", ".*"], capture_output=True, text=True, timeout=60,
                            check=True)
    tests = [line for line in listed.stdout.split() if line.startswith("Test")]
    assert tests, f"{binary} -test.list named no test: {listed.stdout}{listed.stderr}"
    return tests


@dataclass
class Result:
    verdict: str  # PASS, FAIL or SKIP
    lines: list[str] = field(default_factory=list)

    def tail(self, count: int = TAIL_LINES) -> str:
        return "\n".join(self.lines[-count:])


def parse(output: str) -> tuple[dict[str, Result], dict[str, list[str]], set[str]]:
    """``-test.v`` output -> (verdicts of the tests that finished, every test's lines, the ones running at the end)."""
    verdicts: dict[str, Result] = {}
    lines: dict[str, list[str]] = {}
    running: set[str] = set()
    current = ""
    for line in output.splitlines():
        mark, result = _MARK.match(line), _RESULT.match(line)
        if mark is not None:
            current = mark[2].split("/", 1)[0]
            if mark[1] == "PAUSE" and current == mark[2]:
                running.discard(current)
            elif "/" not in mark[2]:
                running.add(current)
        lines.setdefault(current, []).append(line)
        if result is not None:
            running.discard(result[2])
            verdicts[result[2]] = Result(result[1], lines[result[2]] if result[2] in lines else [line])
    return verdicts, lines, running


def run_suite(binary: str, daemon: Containerd, runtime: str, tests: list[str], *, parallel: int | None = None,
              timeout: float = RUN_TIMEOUT) -> dict[str, Result]:
    """Run ``tests`` against ``daemon`` with ``runtime``: a Result for each one.

    ``parallel``: Go's ``-test.parallel`` (default: the binary's, GOMAXPROCS); ``timeout``: per run of the
    binary (its own ``-test.timeout`` is a minute shorter)."""
    scratch = os.path.join(daemon.directory, "suite")
    os.makedirs(os.path.join(scratch, "tmp"), exist_ok=True)
    env = dict(daemon.env, TEST_RUNTIME=runtime, TMPDIR=os.path.join(scratch, "tmp"))
    results: dict[str, Result] = {}
    remaining = list(tests)
    while remaining:
        command = [binary, "-test.root", "-test.v", "-test.timeout", f"{timeout - 60:.0f}s", "-no-daemon", "-no-criu",
                   "-address", daemon.address, "-test.run", "^(" + "|".join(remaining) + ")$"]
        if parallel is not None:
            command[1:1] = ["-test.parallel", str(parallel)]
        process = subprocess.Popen(command, cwd=scratch, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            output, _ = process.communicate()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # anything the tests started and left (daemons of their own)
        text = output.decode(errors="replace")
        if os.environ.get(OUTPUT_LOG_VARIABLE):
            with open(os.environ[OUTPUT_LOG_VARIABLE], "a") as log:
                log.write(f"$ TEST_RUNTIME={runtime} {' '.join(command)}\n{text}\n(exit status {process.returncode})\n")
        verdicts, lines, running = parse(text)
        results.update({name: verdict for name, verdict in verdicts.items() if name in remaining})
        missing = [name for name in remaining if name not in verdicts]
        if not missing:
            break
        # The binary died before every test reported: blame the ones running then; run the rest again.
        blamed = [name for name in missing if name in running] or missing
        note = f"(no verdict: the test binary exited {process.returncode} while it ran)"
        for name in blamed:
            results[name] = Result("FAIL", lines.get(name, text.splitlines()[-TAIL_LINES:]) + [note])
        remaining = [name for name in missing if name not in blamed]
    return results
