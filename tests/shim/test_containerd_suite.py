"""containerd 1.6's own ``integration/client`` tests as a second judge of the shim (both isolations).

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

In hypervisor isolation (``UVMEXEC_ISOLATION=hypervisor``) every container
boots a utility VM, so CI runs :data:`HYPERVISOR_SUBSET` only, with its own
:data:`HYPERVISOR_KNOWN_DIFFERENCES` and the same rule;
``UVMEXEC_SUITE_HYPERVISOR=full`` runs every selected test (opt-in: long).

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
from dataclasses import dataclass, field

import pytest

from tests.support.registry import Registry
from vm_images import build_image
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

#: Hypervisor isolation (containerd's environment holds ``UVMEXEC_ISOLATION=hypervisor``): each test's
#: container gets its own shim and so boots its own utility VM (QEMU under TCG here, 8-20 s a boot, ~550 MiB
#: resident each). CI runs :data:`HYPERVISOR_SUBSET`; ``UVMEXEC_SUITE_HYPERVISOR=full`` runs every selected
#: test (opt-in: half an hour to an hour on two cores).
HYPERVISOR = "hypervisor"
FULL_HYPERVISOR_RUN = os.environ.get("UVMEXEC_SUITE_HYPERVISOR", "") == "full"
#: Go's -test.parallel in hypervisor isolation: two tests (two VMs booting or running) at a time on two cores.
HYPERVISOR_PARALLEL = 2
#: Tests per run of the binary, and its timeout: a hung test costs one such run, the rest of it runs again.
HYPERVISOR_CHUNK = 8
HYPERVISOR_RUN_TIMEOUT = 900
HYPERVISOR_TIMEOUT = 4 * 3600 if FULL_HYPERVISOR_RUN else 3600
#: What CI runs in hypervisor isolation: the run, exec, kill, I/O, wait, delete, pids and metrics paths of
#: the task service, none of them about the host itself (TestContainerKillAll and the ps-ax ones use the host's
#: pid namespace, which is the guest's here). TestContainerPids is timing-bound: run, its verdict listed, not
#: compared.
HYPERVISOR_SUBSET = (
    "TestContainerStart",  # Create answers the created process's pid; exit status through Wait and Delete
    "TestContainerMetrics",  # metrics of a created task, then Kill of a task never started
    "TestContainerOutput",  # run, stdout
    "TestContainerExec",  # exec
    "TestContainerCloseIO",  # stdin, CloseIO
    "TestContainerAttach",  # attach again to a running task's I/O
    "TestContainerPTY",  # a terminal
    "TestContainerKill",  # kill
    "TestDeleteRunningContainer",  # delete (force) of a running task
    "TestProcessForceDelete",  # delete (force) of a running exec
    "TestWaitStoppedProcess",  # wait on an exec that has exited
    "TestContainerExitedAtSet",  # the exit's time
    "TestContainerPids",  # pids
    "TestDeletedContainerMetrics",  # metrics of a deleted task: an error
)
#: Tests that pass with runc and not with our shim in hypervisor isolation (not run with ours), each with
#: its reason, as :data:`KNOWN_DIFFERENCES` for process isolation (all of which hold here too: the shim's
#: Create and Start, Update and the runc shim's options do not depend on the isolation).
HYPERVISOR_KNOWN_DIFFERENCES: dict[str, str] = {
    **KNOWN_DIFFERENCES,
    "TestKillContainerDeletedByRunc": KNOWN_DIFFERENCES["TestKillContainerDeletedByRunc"] + "; and about the "
                                      "host: its `runc delete` runs on the host, the container is in the guest",
    "TestTaskUpdate": KNOWN_DIFFERENCES["TestTaskUpdate"] + "; and about the host: the cgroup it reads and "
                      "checks is the host's, by the task's pid, while the container is in the guest (its pid is "
                      "the guest's)",
    "TestContainerExecLargeOutputWithTTY": "too slow for TCG: 100 execs each printing `seq -s ' ' 1000000` "
                                           "(6.9 MB) through a terminal did not finish within the binary's 14 "
                                           "minutes, three times in a row on a loaded machine (runc: 109 s there). "
                                           "One such exec took 37-41 s there (23-33 s without a terminal), of "
                                           "which the guest's own seq to /dev/null was 11 s: 100 of them take "
                                           "about an hour",
}


@dataclass
class Run:
    runtime: str
    results: dict[str, Result]
    seconds: float
    #: What the daemon's teardown found left behind (tasks, processes, mounts, sockets), "" for nothing.
    leftovers: str = ""
    #: Our shim's isolation (``UVMEXEC_ISOLATION``; runc's run says ``process``).
    isolation: str = "process"
    #: The tests this run was asked for (the known differences of its isolation excepted).
    selected: set[str] = field(default_factory=set)

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


def _run(suite: Suite, runtime: str, request: pytest.FixtureRequest, rerun: Callable[[str], bool], *,
         isolation: str = "process", selected: list[str] | None = None) -> Run:
    """Run the suite (or the ``selected`` tests) with ``runtime``, our shim's containers in ``isolation``;
    a failed test that ``rerun`` names is run again (RERUNS times at most)."""
    started = time.monotonic()
    results: dict[str, Result] | None = None
    leftovers = ""
    summary = request.config.stash.setdefault(SUMMARY, [])
    known = HYPERVISOR_KNOWN_DIFFERENCES if isolation == HYPERVISOR else KNOWN_DIFFERENCES
    tests = [name for name in (suite.tests if selected is None else selected) if runtime == RUNC or name not in known]
    label = runtime if runtime == RUNC else f"{runtime} ({isolation})"

    def run_suite(daemon: Containerd, names: list[str]) -> dict[str, Result]:
        if isolation != HYPERVISOR:
            return containerd_suite.run_suite(suite.binary, daemon, runtime, names)
        found: dict[str, Result] = {}
        for first in range(0, len(names), HYPERVISOR_CHUNK):
            found.update(containerd_suite.run_suite(suite.binary, daemon, runtime,
                                                    names[first:first + HYPERVISOR_CHUNK],
                                                    parallel=HYPERVISOR_PARALLEL, timeout=HYPERVISOR_RUN_TIMEOUT))
        return found

    runc_test_root_was_there = os.path.exists(RUNC_TEST_ROOT)
    if isolation == HYPERVISOR:
        build_image()  # cached after the first: the shims boot it
    try:
        with private_containerd(env={"UVMEXEC_ISOLATION": isolation}) as daemon:
            results = run_suite(daemon, [name for name in tests if name not in SHARED_HOST_FLAKY])
            for name in sorted(name for name, result in results.items() if result.verdict == "FAIL" and rerun(name)):
                for attempt in range(1, RERUNS + 1):
                    why = _first_line(results[name])
                    if _remove_container(daemon, name):  # a failed test may stop before its own Delete
                        summary.append(f"  {label}: {name} left its container (removed)")
                    results[name] = run_suite(daemon, [name])[name]
                    summary.append(f"  {label}: {name} failed ({why}); run again (#{attempt}): "
                                   f"{results[name].verdict}")
                    if results[name].verdict != "FAIL":
                        break
            # Last, one by one: when their `ps ax` check fails they stop before their own Delete, and the
            # container they leave would fail the tests after them (TestContainerList): it is removed here.
            for name in (name for name in SHARED_HOST_FLAKY if name in tests):
                for attempt in range(RERUNS + 1):
                    results[name] = run_suite(daemon, [name])[name]
                    if _remove_container(daemon, name):
                        summary.append(f"  {label}: {name} left its container (removed)")
                    if results[name].verdict != "FAIL" or not rerun(name):
                        break
                    summary.append(f"  {label}: {name} failed ({_first_line(results[name])})"
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
    run = Run(runtime, results, time.monotonic() - started, leftovers, isolation, set(tests))
    parallelism = f", -test.parallel {HYPERVISOR_PARALLEL}" if isolation == HYPERVISOR else ""
    summary.append(f"{label}: {len(run.named('PASS'))} passed, {len(run.named('FAIL'))} failed, "
                   f"{len(run.named('SKIP'))} skipped in {run.seconds:.0f}s{parallelism}")
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


@pytest.fixture(scope="module")
def our_hypervisor_run(suite: Suite, runc_run: Run, request: pytest.FixtureRequest) -> Run:
    if FULL_HYPERVISOR_RUN:
        selected = suite.tests
    else:
        missing = [name for name in HYPERVISOR_SUBSET if name not in suite.tests]
        assert not missing, f"the hypervisor subset names tests the binary does not have (or EXCLUDED): {missing}"
        selected = [name for name in suite.tests if name in HYPERVISOR_SUBSET]  # the binary's order
    return _run(suite, RUNTIME, request, lambda name: name in runc_run.named("PASS") and name not in TIMING_BOUND,
                isolation=HYPERVISOR, selected=selected)


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
    _compare(runc_run, our_run, KNOWN_DIFFERENCES, request)


@pytest.mark.vm
@pytest.mark.timeout(HYPERVISOR_TIMEOUT)
def test_every_test_passing_with_runc_passes_with_our_shim_in_hypervisor_isolation(
        runc_run: Run, our_hypervisor_run: Run, request: pytest.FixtureRequest) -> None:
    _compare(runc_run, our_hypervisor_run, HYPERVISOR_KNOWN_DIFFERENCES, request)


def _compare(runc_run: Run, our_run: Run, known: dict[str, str], request: pytest.FixtureRequest) -> None:
    """Every test of ``our_run`` that passed with runc passed with ours, but for the ``known`` differences."""
    summary = request.config.stash.setdefault(SUMMARY, [])
    label = f"{our_run.runtime} ({our_run.isolation})"
    for name, reason in sorted(known.items()):
        verdict = runc_run.results[name].verdict if name in runc_run.results else "not run"
        summary.append(f"  {label}: known difference, not run with ours ({verdict} with runc): {name}: {reason}")
    for name in sorted(our_run.named("PASS") - runc_run.named("PASS") - set(TIMING_BOUND) - set(SHARED_HOST_FLAKY)):
        summary.append(f"  {label}: passes with ours, not with runc: {name}")
    assert len(runc_run.named("PASS")) >= MIN_RUNC_PASSES, "the runc baseline is broken: see the test above"
    for name, reason in sorted(TIMING_BOUND.items()):
        verdicts = [run.results[name].verdict if name in run.results else "not run" for run in (runc_run, our_run)]
        summary.append(f"  {label}: timing-bound, not compared (runc {verdicts[0]}, ours {verdicts[1]}): "
                       f"{name}: {reason}")
    for name in SHARED_HOST_FLAKY:
        verdicts = [run.results[name].verdict if name in run.results else "not run" for run in (runc_run, our_run)]
        summary.append(f"  {label}: reads the whole machine's ps ax, not compared (runc {verdicts[0]}, ours "
                       f"{verdicts[1]}): {name} (tests/shim/test_containerd.py checks the behaviour on its own)")
    uncompared = set(known) | set(TIMING_BOUND) | set(SHARED_HOST_FLAKY)
    differing = sorted((runc_run.named("PASS") & our_run.selected) - our_run.named("PASS") - uncompared)
    assert not differing and not our_run.leftovers, (
        f"our shim's run left things behind: {our_run.leftovers or 'nothing'}\n\n"
        f"{len(differing)} tests pass with runc and not with our shim:\n\n" + "\n\n".join(
        f"{name} {our_run.results[name].verdict if name in our_run.results else 'not run'}:\n"
        f"{our_run.results[name].tail() if name in our_run.results else ''}" for name in differing))
