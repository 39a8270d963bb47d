"""containerd 1.6's own ``integration/client`` tests as a second judge of the shim (process isolation).

The same selection of containerd's Go tests runs twice, each time against a
private containerd that pulls the busybox seed image from our loopback
registry (``tests/support/registry.py``): first with the stock runc shim
(``TEST_RUNTIME=io.containerd.runc.v2``), then with ours
(``io.containerd.uvmexec.v1``; containerd's environment holds
``UVMEXEC_ISOLATION=process``, the shim's default isolation, since the Go
tests pass no runtime options). Every test that passes with runc must pass
with ours, except the :data:`KNOWN_DIFFERENCES` (not run with ours), each
with its reason, and the :data:`TIMING_BOUND` ones (listed with both
verdicts). The tests that do not pass with runc either are listed in
the report's summary (``containerd suite`` section), with the per-run counts,
the reruns (see :data:`RERUNS`) and the wall times.

Not selected (:data:`EXCLUDED`): the tests that restart the daemon (they
need the binary to run its own containerd, which ``-no-daemon`` does not)
and one that hangs. The test binary is built once and cached (see
``containerd_suite.py``); ``.ci/setup`` fetches the source it is built from.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.support.registry import Registry
from vm_images.oci_image import image_layout

from . import containerd_suite
from .conftest import RUNTIME, SUMMARY, Containerd, private_containerd
from .containerd_suite import Result

pytestmark = pytest.mark.timeout(3600)

RUNC = "io.containerd.runc.v2"
#: The registry's fixed loopback address: the seed image's name is linked into the test binary, so a
#: stable address keeps the cached binary valid. If it is taken, a free port is used (and a binary built for it).
REGISTRY_HOST = "127.0.0.1"
REGISTRY_PORT = 47413
IMAGE_PATH = "uvmexec/busybox:1.32"
#: Fewer passes than this with runc means the harness is broken (no image, no daemon), not the shim.
MIN_RUNC_PASSES = 50

EXCLUDED = {
    "TestDaemonRestart": "restarts the daemon: under -no-daemon it panics on a nil daemon handle",
    "TestDaemonRestartWithRunningShim": "restarts the daemon (as above)",
    "TestDaemonReconnectsToShimIOPipesOnRestart": "restarts the daemon (as above)",
    "TestShimDoesNotLeakPipes": "restarts the daemon (as above)",
    "TestShimOOMScore": "reads the daemon's own OOM score: needs the daemon it starts itself (as above)",
    "TestRestartMonitor": "restarts the daemon (as above)",
    "TestBindLowPortNonOpt": "hangs: busybox nc as PID 1 ignores SIGTERM, the test's kill never ends it",
}

#: Tests that pass with runc and not with our shim, for a reason we know and accept for now: not run
#: with our shim (some leave their task behind when they fail), listed in the report with the reason.
KNOWN_DIFFERENCES: dict[str, str] = {
    "TestKillContainerDeletedByRunc": "the runc shim's option Root (containerd.runc.v1.Options) is not honored: our "
                                      "containers live under our agent's runc root, so the test's own `runc "
                                      "--root /tmp/runc-test/testing delete` finds nothing",
    "TestTaskUpdate": "Update is not implemented by our shim (no `runc update` of the resources)",
}

#: Tests whose verdict hangs on timing, and that failed here with runc too or never touch the runtime:
#: run with both, their verdicts listed in the report, not compared.
TIMING_BOUND = {
    "TestContainerPids": "expects `sh -c 'while true; do sleep 1; done'` to have forked its sleep when Pids "
                         "comes right after Start; failed with runc here too under load (1 process, not 2)",
    "TestContentClient": "the content store's own suite, no runtime involved; its 'ref locked for 300ms' check "
                         "fails on a loaded machine",
}

#: A test that fails where it should pass is run again, up to RERUNS times, each rerun listed in the
#: report: one that fails every time counts as failed. With our shim, that is every test that passed
#: with runc (several are timing-bound: TestContentClient's "ref locked" under load, TestContainerPids);
#: with runc, the ones below, which read the whole machine's `ps ax` for "sleep 1" after their
#: container's init was killed, and so fail on a machine shared with other work (`sleep 150` of
#: someone else's test) whatever the runtime: seen failing three times in a row with either runtime,
#: so they are listed with both verdicts and not compared (our own test of what they check:
#: test_in_the_host_pid_namespace_the_inits_children_die_with_it_before_its_exit_is_reported).
#: Seen once in seven full runs with our shim on a loaded machine, not understood yet (an open issue):
#: TestContainerExecLargeOutputWithTTY's 1,000,000-line TTY exec output ended early at iteration 73
#: (perhaps the pty's last bytes arriving after the drain deadline); its rerun is in the report.
SHARED_HOST_FLAKY = ("TestContainerKillInitPidHost", "TestContainerKillInitKillsChildWhenNotHostPid")
RERUNS = 2
#: The runc root TestKillContainerDeletedByRunc gives the runc shim (a fixed path in the Go test).
RUNC_TEST_ROOT = "/tmp/runc-test"


@dataclass
class Run:
    runtime: str
    results: dict[str, Result]
    seconds: float
    #: What the daemon's teardown found left behind (tasks, processes, mounts, sockets), "" for nothing.
    leftovers: str = ""

    def named(self, verdict: str) -> set[str]:
        return {name for name, result in self.results.items() if result.verdict == verdict}


@dataclass
class Suite:
    binary: str
    tests: list[str]
    build_seconds: float
    built: bool


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    try:
        server = Registry([], REGISTRY_HOST, REGISTRY_PORT)
    except OSError as error:
        if error.errno != errno.EADDRINUSE:
            raise
        server = Registry([], REGISTRY_HOST, 0)
    with server:
        server.add(image_layout(f"{server.address}/{IMAGE_PATH}"))  # the image's name holds the address
        yield server


@pytest.fixture(scope="module")
def suite(registry: Registry, request: pytest.FixtureRequest) -> Suite:
    version = containerd_suite.containerd_version()
    source = containerd_suite.source_dir(version)
    if source is None:
        pytest.fail(f"containerd {version}'s source is not in {containerd_suite.cache_root()}: run .ci/setup")
    started = time.monotonic()
    binary, built = containerd_suite.build_test_binary(source, version, f"{registry.address}/{IMAGE_PATH}")
    tests = [name for name in containerd_suite.list_tests(binary) if name not in EXCLUDED]
    found = Suite(binary, tests, time.monotonic() - started, built)
    summary = request.config.stash.setdefault(SUMMARY, [])
    summary.append(f"test binary {'built' if built else 'cached'} in {found.build_seconds:.0f}s: {binary}")
    summary.append(f"{len(tests)} tests selected; not selected: " + "; ".join(
        f"{name} ({reason})" for name, reason in EXCLUDED.items()))
    return found


def _run(suite: Suite, runtime: str, request: pytest.FixtureRequest, rerun: Callable[[str], bool]) -> Run:
    """Run the suite with ``runtime``; a failed test that ``rerun`` names is run again (RERUNS times at most)."""
    started = time.monotonic()
    results: dict[str, Result] | None = None
    leftovers = ""
    summary = request.config.stash.setdefault(SUMMARY, [])
    tests = [name for name in suite.tests if runtime == RUNC or name not in KNOWN_DIFFERENCES]
    runc_test_root_was_there = os.path.exists(RUNC_TEST_ROOT)
    try:
        with private_containerd(env={"UVMEXEC_ISOLATION": "process"}) as daemon:
            results = containerd_suite.run_suite(suite.binary, daemon, runtime,
                                                 [name for name in tests if name not in SHARED_HOST_FLAKY])
            for name in sorted(name for name, result in results.items() if result.verdict == "FAIL" and rerun(name)):
                for attempt in range(1, RERUNS + 1):
                    why = _first_line(results[name])
                    if _remove_container(daemon, name):  # a failed test may stop before its own Delete
                        summary.append(f"  {runtime}: {name} left its container (removed)")
                    results[name] = containerd_suite.run_suite(suite.binary, daemon, runtime, [name])[name]
                    summary.append(f"  {runtime}: {name} failed ({why}); run again (#{attempt}): "
                                   f"{results[name].verdict}")
                    if results[name].verdict != "FAIL":
                        break
            # Last, one by one: when their `ps ax` check fails they stop before their own Delete, and the
            # container they leave would fail the tests after them (TestContainerList): it is removed here.
            for name in SHARED_HOST_FLAKY:
                for attempt in range(RERUNS + 1):
                    results[name] = containerd_suite.run_suite(suite.binary, daemon, runtime, [name])[name]
                    if _remove_container(daemon, name):
                        summary.append(f"  {runtime}: {name} left its container (removed)")
                    if results[name].verdict != "FAIL" or not rerun(name):
                        break
                    summary.append(f"  {runtime}: {name} failed ({_first_line(results[name])})"
                                   + (f"; run again (#{attempt + 1})" if attempt < RERUNS else ""))
    except AssertionError as error:
        if results is None:
            raise
        leftovers = str(error)  # the verdicts still count; the test on this run fails, saying what was left
    if not runc_test_root_was_there:
        # TestKillContainerDeletedByRunc's runc root: runc leaves its (empty) namespace directory there.
        for directory, _, files in os.walk(RUNC_TEST_ROOT, topdown=False):
            if not files:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
    run = Run(runtime, results, time.monotonic() - started, leftovers)
    summary.append(f"{runtime}: {len(run.named('PASS'))} passed, {len(run.named('FAIL'))} failed, "
                   f"{len(run.named('SKIP'))} skipped in {run.seconds:.0f}s")
    return run


def _remove_container(daemon: Containerd, name: str) -> bool:
    """Remove the container ``name`` of the Go tests' namespace, and its task, if it is there."""
    ns = ("--namespace", containerd_suite.TEST_NAMESPACE)
    if name not in daemon.ctr(*ns, "containers", "ls", "-q").stdout.decode().split():
        return False
    daemon.ctr(*ns, "task", "kill", "-s", "KILL", name, check=False)
    daemon.ctr(*ns, "task", "rm", "-f", name, check=False)
    daemon.ctr(*ns, "containers", "rm", name)
    return True


@pytest.fixture(scope="module")
def runc_run(suite: Suite, request: pytest.FixtureRequest) -> Run:
    return _run(suite, RUNC, request, lambda name: name in SHARED_HOST_FLAKY)


@pytest.fixture(scope="module")
def our_run(suite: Suite, runc_run: Run, request: pytest.FixtureRequest) -> Run:
    return _run(suite, RUNTIME, request, lambda name: name in runc_run.named("PASS") and name not in TIMING_BOUND)


_TEST_MESSAGE = re.compile(r"^\s+\w+_test\.go:\d+: ")


def _first_line(result: Result) -> str:
    """The line that says why: the test's first own message (t.Fatal, t.Skip, …), else its last line."""
    for line in result.lines:
        if _TEST_MESSAGE.match(line):
            return line.strip()[:300]
    return result.lines[-1].strip()[:300] if result.lines else ""


def test_runc_passes_most_of_the_suite_and_its_misses_are_listed(runc_run: Run,
                                                                 request: pytest.FixtureRequest) -> None:
    summary = request.config.stash.setdefault(SUMMARY, [])
    for name, result in sorted(runc_run.results.items()):
        if result.verdict != "PASS":
            summary.append(f"  not passing with runc either: {name} {result.verdict}: {_first_line(result)}")
    assert not runc_run.leftovers, f"the runc run left things behind: {runc_run.leftovers}"
    assert len(runc_run.named("PASS")) >= MIN_RUNC_PASSES, (
        f"only {len(runc_run.named('PASS'))} tests passed with runc: the harness is broken\n" + "\n\n".join(
            f"{name} {result.verdict}:\n{result.tail()}" for name, result in sorted(runc_run.results.items())
            if result.verdict != "PASS"))


def test_every_test_passing_with_runc_passes_with_our_shim(runc_run: Run, our_run: Run,
                                                           request: pytest.FixtureRequest) -> None:
    summary = request.config.stash.setdefault(SUMMARY, [])
    for name, reason in sorted(KNOWN_DIFFERENCES.items()):
        verdict = runc_run.results[name].verdict if name in runc_run.results else "not run"
        summary.append(f"  known difference, not run with ours ({verdict} with runc): {name}: {reason}")
    for name in sorted(our_run.named("PASS") - runc_run.named("PASS") - set(TIMING_BOUND) - set(SHARED_HOST_FLAKY)):
        summary.append(f"  passes with ours, not with runc: {name}")
    assert len(runc_run.named("PASS")) >= MIN_RUNC_PASSES, "the runc baseline is broken: see the test above"
    for name, reason in sorted(TIMING_BOUND.items()):
        verdicts = [run.results[name].verdict if name in run.results else "not run" for run in (runc_run, our_run)]
        summary.append(f"  timing-bound, not compared (runc {verdicts[0]}, ours {verdicts[1]}): {name}: {reason}")
    for name in SHARED_HOST_FLAKY:
        verdicts = [run.results[name].verdict if name in run.results else "not run" for run in (runc_run, our_run)]
        summary.append(f"  reads the whole machine's ps ax, not compared (runc {verdicts[0]}, ours {verdicts[1]}): "
                       f"{name} (tests/shim/test_containerd.py checks the behaviour on its own)")
    uncompared = set(KNOWN_DIFFERENCES) | set(TIMING_BOUND) | set(SHARED_HOST_FLAKY)
    differing = sorted(runc_run.named("PASS") - our_run.named("PASS") - uncompared)
    assert not differing and not our_run.leftovers, (
        f"our shim's run left things behind: {our_run.leftovers or 'nothing'}\n\n"
        f"{len(differing)} tests pass with runc and not with our shim:\n\n" + "\n\n".join(
        f"{name} {our_run.results[name].verdict if name in our_run.results else 'not run'}:\n"
        f"{our_run.results[name].tail() if name in our_run.results else ''}" for name in differing))
