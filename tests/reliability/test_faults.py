"""Faults, each with nothing lost: links cut at random, agents and clients killed, hostile processes.

tests/wire already proves single faults (a stream cut six times, an exit
during an outage, a SIGKILLed agent with one waiter, a restarted agent, one
exec attached after its client died). These build on them: the same faults
under a mixed concurrent workload, at random moments, with many execs in
every state, and the processes a supervisor meets in the wild.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import msgpack
import pytest
import zmq
import zmq.auth

from common import ExecExited, ExecStarted, ExecState, ProcessSpec, Rlimit, Stdio, User
from common.errors import DeadlineExceededError, UnavailableError
from host_proxy import AgentClient
from tests.conformance.helpers import EventLog
from tests.reliability.fuzzing import RawSession
from tests.reliability.helpers import (
    RELEASE_TIMEOUT,
    FreezableRelay,
    assert_clean,
    connect_tcp,
    drain_events,
    exec_state,
    footprint,
    poll_agent,
    processes_of_uid,
    wait_agent_read_all,
    wait_for_footprint,
    warm_up,
)
from tests.support.agent import ROOT, AgentProcess, Keys, free_port, tcp_address
from tests.support.io import FifoReader
from tests.support.procs import descendants, kill_and_wait, proc_stat, wait_exited, zombies

pytestmark = pytest.mark.timeout(300)

SEED = 20261201


def sh(script: str, *args: str, **fields) -> ProcessSpec:
    return ProcessSpec(args=["sh", "-c", script, "sh", *args], **fields)


# -- links cut at random, under load -------------------------------------------------------------


@dataclass
class Job:
    """One exec of the mixed workload and exactly what it must produce."""

    name: str
    spec: ProcessSpec
    stdin: bytes | None
    stdout: bytes
    stderr: bytes
    status: int
    problems: list[str] = field(default_factory=list)


def make_job(index: int) -> Job:
    """Job ``index`` of the mixed workload (the same for a given index in every run)."""
    generator = random.Random(SEED + index)
    kind = generator.choice(["seq", "cat", "quick"])
    status = generator.randrange(256)
    if kind == "seq":
        lines_out, lines_err = generator.randrange(60_000), generator.randrange(20_000)
        spec = sh('seq 1 "$1"; seq 1 "$2" >&2; exit "$3"', str(lines_out), str(lines_err), str(status))
        return Job(f"seq-{index}", spec, None, _seq(lines_out), _seq(lines_err), status)
    if kind == "cat":
        payload = generator.randbytes(generator.randrange(512 * 1024))
        return Job(f"cat-{index}", ProcessSpec(args=["cat"]), payload, payload, b"", 0)
    return Job(f"quick-{index}", sh('exit "$1"', str(status)), None, b"", b"", status)


def _seq(count: int) -> bytes:
    return "".join(f"{n}\n" for n in range(1, count + 1)).encode()


def run_job(client: AgentClient, job: Job) -> None:
    out, err, events = io.BytesIO(), io.BytesIO(), EventLog()
    stdin = io.BytesIO(job.stdin) if job.stdin is not None else None
    made = client.create_exec("cuts", job.name, job.spec, Stdio(stdin=stdin, stdout=out, stderr=err), on_event=events)
    made.start()
    final = made.wait(timeout=120)
    events.wait_exited(60)
    drain_events()
    if final.exit_status != job.status:
        job.problems.append(f"exit status {final.exit_status}, expected {job.status}")
    if out.getvalue() != job.stdout:
        job.problems.append(f"stdout {len(out.getvalue())} bytes, expected {len(job.stdout)}")
    if err.getvalue() != job.stderr:
        job.problems.append(f"stderr {len(err.getvalue())} bytes, expected {len(job.stderr)}")
    kinds = [type(event) for event in events.events]
    last = events.events[-1] if events.events else None
    if kinds != [ExecStarted, ExecExited] or not isinstance(last, ExecExited) or last.exit_status != job.status:
        job.problems.append(f"events {events.events}")
    made.delete()


MIN_CUTS, MIN_JOBS = 20, 100


@contextlib.contextmanager
def fail_at_once_if_the_agent_dies(agent: AgentProcess, client: AgentClient) -> Iterator[None]:
    """An agent that dies during the cuts (libzmq's abort was BUG-2) fails the test at once.

    A watchdog closes the client as soon as the agent dies, so nothing waits out the reconnect
    deadline for an agent that is gone.
    """
    process = agent.process
    assert process is not None

    def watch() -> None:
        process.wait()
        client.close()

    threading.Thread(target=watch, name="agent-watchdog", daemon=True).start()
    try:
        yield
    finally:
        returncode = process.poll()
        assert returncode is None, f"the agent died during the cuts (exit {returncode})"


def test_random_cuts_under_a_mixed_concurrent_workload_lose_nothing(tcp_agent, relay, keys):
    """Execs on four threads (stdout and stderr floods, stdin echoed back, instant exits) while
    the link is cut at random moments, again as soon as the client is back (at least 20 cuts,
    at least 100 execs): every byte of every stream arrives once, every exit status is right,
    every exec publishes started then exited; once the client is gone the agent holds nothing
    more than before."""
    pacing = random.Random(SEED)
    jobs: list[Job] = []
    lock = threading.Lock()
    enough = threading.Event()
    failures: list[BaseException] = []
    with connect_tcp(tcp_agent.endpoints[0], keys) as observer:
        warm_up(observer)
        baseline = footprint(observer, tcp_agent.pid)
        with connect_tcp(relay.endpoint, keys, reconnect_timeout=30) as client, \
                fail_at_once_if_the_agent_dies(tcp_agent, client):

            def worker() -> None:
                try:
                    while not (enough.is_set() and len(jobs) >= MIN_JOBS):
                        with lock:
                            job = make_job(len(jobs))
                            jobs.append(job)
                        run_job(client, job)
                except BaseException as error:  # reported by the main thread
                    failures.append(error)

            workers = [threading.Thread(target=worker, name=f"worker-{n}") for n in range(4)]
            for thread in workers:
                thread.start()
            cuts = 0
            while any(thread.is_alive() for thread in workers):
                workers[0].join(pacing.uniform(0.0, 0.2))  # the pace of the chaos, not a wait for a state
                back = client.reconnects
                relay.cut()
                cuts += 1
                if cuts >= MIN_CUTS:
                    enough.set()
                # Back before the next cut: each cut lands on an established session (a cut during
                # the hello is test_a_hello_lost_in_a_cut_...). A ping sent while the client is lost
                # is held until it is back, so each loop waits on that.
                while client.reconnects <= back:
                    client.ping()
            assert not failures, failures
            assert client.reconnects >= cuts >= MIN_CUTS, (cuts, client.reconnects)
            broken = {job.name: job.problems for job in jobs if job.problems}
            assert not broken, f"{len(broken)} of {len(jobs)} execs lost something over {cuts} cuts: {broken}"
        # The client is gone: the agent lets go of its connections on its own time (assert_clean waits).
        assert_clean(observer, tcp_agent.pid, baseline)


@pytest.mark.timeout(90)
def test_a_start_whose_reply_is_lost_still_delivers_the_exit(tcp_agent, relay, keys, tmp_path):
    """The link dies after the agent got ``create`` and ``start`` but before their replies came
    back, and the process exits meanwhile. After the reconnect the client resends both (the agent
    answers from its reply cache) — and must still learn the exit: wait() returns 7, ExecStarted
    then ExecExited are published once each. (BUG-3: _resync listed only execs already known to be
    on the agent, so this exec's exit record was never replayed and wait() never returned. An earlier version of this test found exited-before-started, fixed upstream by the
    "started" event.)"""
    marker = FifoReader(str(tmp_path / "ran"))
    events = EventLog()
    try:
        with connect_tcp(tcp_agent.endpoints[0], keys) as observer, \
                connect_tcp(relay.endpoint, keys, reconnect_timeout=60) as client:
            made = client.create_exec("lost", "start", sh(f"echo ran > {marker.path}; exit 7"), on_event=events)
            client.ping()  # every connection the client keeps is up (its handshakes need the agent's answers)
            relay.freeze()  # the agent's answers are lost from here on
            failures: list[BaseException] = []
            starting = threading.Thread(target=_capture(made.start, failures))
            starting.start()
            marker.read_to_eof()
            wait_exited([_pid_of(observer, "lost", "start")])  # the process is gone...
            # ...and a round trip or two later the agent has recorded it
            poll_agent(lambda: exec_state(observer, "lost", "start") == "exited", 30, "the exit on the agent")
            assert relay.swallowed > 0
            relay.cut()
            starting.join(60)
            assert not starting.is_alive() and not failures, failures
            assert made.wait(timeout=20).exit_status == 7
            events.wait_exited()
            made.delete()
    finally:
        marker.close()
    assert [type(event) for event in events.events] == [ExecStarted, ExecExited], events.events


@pytest.fixture
def plain_agent() -> Iterator[AgentProcess]:
    """A plaintext tcp agent: its ZMTP handshake is readable, so a relay can cut right after it."""
    agent = AgentProcess([f"tcp://127.0.0.1:{free_port()}"], ["--insecure"]).start()
    try:
        yield agent
    finally:
        agent.stop()


@pytest.mark.timeout(60)
def test_a_hello_lost_in_a_cut_is_said_again_on_the_next_connection(plain_agent):
    """The link drops, ZeroMQ reconnects, the client says hello again — and that connection dies
    before the answer. On the next connection the client must say hello again and carry on; it
    must not sit deaf until reconnect_timeout and then end every exec with 255 while the agent
    still runs them."""
    relay = FreezableRelay(tcp_address(plain_agent))
    try:
        with AgentClient.connect(relay.endpoint, insecure=True, timeout=5, reconnect_timeout=5) as client:
            made = client.create_exec("hello", "sleeper", ProcessSpec(args=["sleep", "1000"]))
            made.start()
            relay.freeze_after_handshake()
            relay.cut()  # reconnect; the re-hello reaches the agent, its answer is lost...
            assert relay.swallowing.wait(20), "the client never said hello again"
            relay.cut()  # ...and that connection dies too
            client.ping()  # within reconnect_timeout: the client must be back
            assert made.status().status is ExecState.RUNNING
            made.force_exit(9)
            assert made.wait(timeout=20).exit_status == 9
    finally:
        relay.close()


# -- the agent killed, the client killed ---------------------------------------------------------


def test_a_sigkilled_agent_releases_every_waiter_of_every_exec(workdir):
    """20 running and 5 created execs, three waiters each, and 5 execs that already finished. The
    agent dies by SIGKILL: every waiter returns 255 once the reconnect deadline (2 s) passed — not
    before, and none hangs; running execs publish exited(255), created ones publish nothing;
    finished execs keep their own status; new requests fail at once. A new agent on the same
    endpoint serves the same client again."""
    endpoint = f"ipc://{workdir}/killed.sock"
    agent = AgentProcess([endpoint]).start()
    second: AgentProcess | None = None
    leftovers: list[int] = []
    deadline = 2.0
    try:
        with AgentClient.connect(endpoint, timeout=10, reconnect_timeout=deadline) as client:
            finished = []
            for index in range(5):
                made = client.create_exec("killed", f"finished-{index}", sh('exit "$1"', str(40 + index)))
                made.start()
                assert made.wait(timeout=30).exit_status == 40 + index
                finished.append(made)
            logs = {f"running-{index}": EventLog() for index in range(20)}
            logs.update({f"created-{index}": EventLog() for index in range(5)})
            live = {}
            for name, log in logs.items():
                live[name] = client.create_exec("killed", name, ProcessSpec(args=["sleep", "1000"]), on_event=log)
                if name.startswith("running"):
                    live[name].start()
            results: dict[str, list[int]] = {name: [] for name in live}
            waiters = [threading.Thread(target=lambda name=name: results[name].append(live[name].wait(60).exit_status))
                       for name in live for _ in range(3)]
            for waiter in waiters:
                waiter.start()
            leftovers = descendants(agent.pid)
            assert len(leftovers) == 20
            killed_at = time.monotonic()
            agent.kill()
            for waiter in waiters:
                waiter.join(deadline + 30)
            released_after = time.monotonic() - killed_at
            assert not any(waiter.is_alive() for waiter in waiters), "a waiter hangs"
            assert all(statuses == [255, 255, 255] for statuses in results.values()), results
            assert released_after >= deadline * 0.9, f"released after {released_after:.2f}s, before the deadline"
            for name, log in logs.items():
                kinds = [type(event) for event in log.events]
                if name.startswith("running"):
                    log.wait_exited()
                    assert [type(event) for event in log.events] == [ExecStarted, ExecExited]
                    assert log.events[-1].exit_status == 255
                else:
                    assert kinds == [], (name, log.events)
            assert [made.status().exit_status for made in finished] == [40, 41, 42, 43, 44]
            started = time.monotonic()
            after = client.create_exec("killed", "after", ProcessSpec(args=["true"]))
            with pytest.raises(UnavailableError):
                after.start()
            assert time.monotonic() - started < 5, "a request to a gone agent fails at once"
            after.delete()
            # A new agent on the same endpoint: the client comes back to it (a new boot).
            kill_and_wait(leftovers)
            old_boot = client.boot_id
            second = AgentProcess([endpoint]).start()
            fresh = client.create_exec("killed", "fresh", sh("exit 3"))
            client.wait_ready(30)  # requests fail at once until the client has found the new agent
            assert client.boot_id != old_boot
            fresh.start()
            assert fresh.wait(timeout=30).exit_status == 3
            assert client.boot_id != old_boot
    finally:
        agent.stop()
        kill_and_wait(leftovers)
        if second is not None:
            second.stop()


def _pid_of(client: AgentClient, task_id: str, exec_id: str) -> int:
    """The pid of a started exec, as the agent reports it."""
    pids = [status.pid for status in client.list_execs() if (status.id, status.exec_id) == (task_id, exec_id)]
    assert pids and pids[0], f"{task_id}/{exec_id} is not running on the agent"
    return pids[0]


def _capture(call, failures: list[BaseException]):
    """``call`` for a thread: what it raises is kept for the test to report."""
    def run() -> None:
        try:
            call()
        except BaseException as error:
            failures.append(error)
    return run


CLIENT_SCRIPT = textwrap.dedent('''
    import os, sys, time
    sys.path.insert(0, {root!r})
    from common import ProcessSpec, Stdio
    from host_proxy import AgentClient
    endpoint, workdir, gate, cat_in, cat_out = sys.argv[1:6]
    client = AgentClient.connect(endpoint, timeout=10)
    def sh(script, *args):
        return ProcessSpec(args=["sh", "-c", script, "sh", *args])
    for index in range(4):  # 0, 1 write to files; 2, 3 to FIFOs nobody reads (their window fills)
        made = client.create_exec("handover", f"streamer-{{index}}",
            sh('seq 1 200000; read x < "$1"; seq 200001 300000; exit "$2"', gate, str(10 + index)),
            Stdio(stdout=f"{{workdir}}/streamer-{{index}}.old"))
        made.start()
    for index in range(3):
        made = client.create_exec("handover", f"done-{{index}}", sh('echo "done $1"; exit "$2"', str(index), str(20 + index)),
            Stdio(stdout=f"{{workdir}}/done-{{index}}.old"))
        made.start()
        made.wait(30)
    late = client.create_exec("handover", "late", sh('read x < "$1"; echo late; exit 33', gate),
        Stdio(stdout=f"{{workdir}}/late.old"))
    late.start()
    cat = client.create_exec("handover", "cat", ProcessSpec(args=["cat"]), Stdio(stdin=cat_in, stdout=cat_out))
    cat.start()
    print("ready", flush=True)
    time.sleep(1000)  # killed by the test
''')


def assert_joined(old: bytes, new: bytes, expected: bytes, what: str) -> None:
    """``new`` continues ``old`` with nothing lost: it starts at the first chunk the dead client had
    not acknowledged, so it may repeat the tail that client wrote but did not get to acknowledge."""
    overlap = len(old) + len(new) - len(expected)
    assert 0 <= overlap <= len(old), f"{what}: {len(old)} + {len(new)} bytes for {len(expected)} expected"
    assert old[:len(old) - overlap] + new == expected, f"{what}: bytes lost or changed across the handover"
    assert new[:overlap] == old[len(old) - overlap:], f"{what}: the replayed tail differs"


def test_a_new_client_takes_over_every_exec_of_a_killed_one_by_id(ipc_agent, client, workdir, tmp_path):
    """A client process with execs in every state is SIGKILLed: streamers blocked on their window,
    finished execs, one that exits while nobody is attached, a cat fed through stdin; another
    client created one it never started.
    A new client attaches to each by id: statuses are right, waits return the real exit statuses,
    the output the dead client never wrote arrives (at most its unacknowledged tail twice, never
    a byte lost), the created exec can be started, and stdin continues where it stopped."""
    warm_up(client)
    baseline = footprint(client, ipc_agent.pid)
    gate = str(tmp_path / "gate")
    os.mkfifo(gate)
    holder = os.open(gate, os.O_RDWR | os.O_NONBLOCK)
    cat_in = str(tmp_path / "cat.in")
    os.mkfifo(cat_in)
    cat_in_writer = os.open(cat_in, os.O_RDWR | os.O_NONBLOCK)  # the dead client's stdin never ends
    cat_out = FifoReader(str(tmp_path / "cat.old"))
    stalled = {}
    for index in (2, 3):  # FIFOs held open but never read while the first client lives
        path = str(tmp_path / f"streamer-{index}.old")
        os.mkfifo(path)
        stalled[f"streamer-{index}"] = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    dead = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT.format(root=ROOT), ipc_agent.endpoints[0],
                             str(tmp_path), gate, cat_in, cat_out.path], stdout=subprocess.PIPE)
    try:
        assert dead.stdout is not None
        assert dead.stdout.readline() == b"ready\n"
        os.write(cat_in_writer, b"first part\n")
        cat_out.read_until(b"first part\n")
        dead.kill()
        dead.wait(30)
    finally:
        if dead.poll() is None:
            dead.kill()
            dead.wait(30)
        dead.stdout.close()  # type: ignore[union-attr]
        os.close(cat_in_writer)
    stalled_old = {name: _drain(fd) for name, fd in stalled.items()}  # what the dead client got written
    # An exec created (not started) by yet another client, which also goes away.
    other = RawSession(ipc_agent.endpoints[0], "another-client")
    assert "result" in other.request("create", task="handover", exec="created", stdio={"stdout": True},
                                     spec=sh("echo created; exit 44").to_oci())
    other.close()
    try:
        late = _pid_of(client, "handover", "late")
        os.write(holder, b"\n" * 5)  # the streamers and "late" go on, with nobody attached
        wait_exited([late])
        poll_agent(lambda: exec_state(client, "handover", "late") == "exited", 30, "the late exit")
        listed = {status.exec_id: status for status in client.list_execs() if status.id == "handover"}
        assert len(listed) == 10
        new_out = {name: io.BytesIO() for name in listed}
        logs = {name: EventLog() for name in listed}
        attached = {}
        for name in listed:
            stdin = io.BytesIO(b"second part\n") if name == "cat" else None
            attached[name] = client.attach("handover", name, Stdio(stdin=stdin, stdout=new_out[name]),
                                           on_event=logs[name])
        assert attached["created"].state is ExecState.CREATED
        assert attached["late"].wait(timeout=30).exit_status == 33
        for index in range(3):
            # (wait, not status: status says exited only once the replayed output is written here)
            assert attached[f"done-{index}"].wait(timeout=30).exit_status == 20 + index
        attached["created"].start()
        expected = {f"streamer-{index}": (10 + index, _seq(300_000)) for index in range(4)}
        expected.update({f"done-{index}": (20 + index, f"done {index}\n".encode()) for index in range(3)})
        expected.update({"late": (33, b"late\n"), "created": (44, b"created\n")})
        expected["cat"] = (0, b"first part\nsecond part\n")
        for name, (status, output) in expected.items():
            assert attached[name].wait(timeout=60).exit_status == status, name
            old_path = str(tmp_path / f"{name}.old")
            if name == "cat":
                old = cat_out.read_to_eof()
            else:
                old = stalled_old[name] if name in stalled_old else _read(old_path)
            assert_joined(old, new_out[name].getvalue(), output, name)
        logs["created"].wait_exited()
        assert [type(event) for event in logs["created"].events] == [ExecStarted, ExecExited]
        for name in ("late", "streamer-0"):
            logs[name].wait_exited()
            assert [type(event) for event in logs[name].events] == [ExecExited]
        for made in attached.values():
            made.delete()
        assert_clean(client, ipc_agent.pid, baseline)
    finally:
        os.close(holder)
        cat_out.close()
        for fd in stalled.values():
            os.close(fd)


def _drain(fd: int) -> bytes:
    """Everything a non-blocking FIFO end holds now."""
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except BlockingIOError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except FileNotFoundError:
        return b""


# -- processes a supervisor meets in the wild ----------------------------------------------------


def test_a_process_that_ignores_sigterm(ipc_agent, client, tmp_path):
    """SIGTERM (to the process or its group) does not end a process that ignores it, and nothing
    pretends it did: the exec stays RUNNING and wait(timeout) raises DeadlineExceededError rather
    than hanging. SIGKILL ends it with 137; force_exit ends another at once with the given status
    and leaves no process behind."""
    warm_up(client)
    baseline = footprint(client, ipc_agent.pid)
    ready = FifoReader(str(tmp_path / "ready"))
    stubborn = sh(f'trap "" TERM; echo armed > {ready.path}; exec sleep 1000')
    try:
        made = client.create_exec("stubborn", "killed", stubborn)
        made.start()
        ready.read_to_eof()
        for group in (False, True):
            made.kill(signal.SIGTERM, all=group)
            with pytest.raises(DeadlineExceededError):
                made.wait(timeout=0.5)
            assert made.status().status is ExecState.RUNNING
        made.kill(signal.SIGKILL)
        assert made.wait(timeout=30).exit_status == 128 + signal.SIGKILL
        made.delete()

        ready.data.clear()
        forced = client.create_exec("stubborn", "forced", stubborn)
        forced.start()
        ready.read_to_eof()
        pid = forced.pid
        forced.kill(signal.SIGTERM)
        forced.force_exit(42)
        assert forced.wait(timeout=5).exit_status == 42
        wait_exited([pid], timeout=10)
        forced.delete()
        assert_clean(client, ipc_agent.pid, baseline)
    finally:
        ready.close()


def test_a_process_that_closes_stdout_early_keeps_running_and_loses_nothing(ipc_agent, client, tmp_path):
    """A process closes its stdout and goes on: what it wrote before arrives, its stderr keeps
    flowing, it stays RUNNING after its stdout ended, and its real exit status comes at the end."""
    gate = str(tmp_path / "gate")
    os.mkfifo(gate)
    err = FifoReader(str(tmp_path / "err"))
    out = io.BytesIO()
    holder = os.open(gate, os.O_RDWR | os.O_NONBLOCK)
    try:
        made = client.create_exec("early", "close", sh('seq 1 50000; exec 1>&-; echo "stdout closed" >&2; '
                                                       'read x < "$1"; echo bye >&2; exit 4', gate),
                                  Stdio(stdout=out, stderr=err.path))
        made.start()
        err.read_until(b"stdout closed\n")
        assert made.status().status is ExecState.RUNNING
        os.write(holder, b"\n")
        assert made.wait(timeout=30).exit_status == 4
        assert err.read_to_eof() == b"stdout closed\nbye\n"
        assert out.getvalue() == _seq(50_000)
        made.delete()
    finally:
        os.close(holder)
        err.close()


def test_a_stdout_reader_that_goes_away_blocks_neither_the_process_nor_the_agent(client, tmp_path):
    """The host's stdout target is a FIFO whose reader leaves after a few bytes while the process
    keeps writing: the rest is discarded (logged), the process is never stuck on a full pipe, it
    can be killed, and the exec reports its real end."""
    out = FifoReader(str(tmp_path / "out"))
    made = client.create_exec("reader", "gone", ProcessSpec(args=["yes", "output"]), Stdio(stdout=out.path))
    made.start()
    out.read_until(b"output\n" * 10)
    out.close()  # the reader leaves
    other = client.create_exec("reader", "other", sh("exit 6"))
    other.start()
    assert other.wait(timeout=30).exit_status == 6  # the agent serves others meanwhile
    with pytest.raises(DeadlineExceededError):
        made.wait(timeout=0.5)  # still writing (into nothing), not blocked and not ended
    made.kill(signal.SIGKILL)
    assert made.wait(timeout=30).exit_status == 128 + signal.SIGKILL
    made.delete()
    other.delete()


def test_a_grandchild_holding_stdout_forever_costs_one_drain_timeout(ipc_agent, client):
    """The process exits but its background child keeps stdout open forever. wait() returns the
    process's own status after the drain timeout (not never), with every byte written before; the
    agent lets go of the pipe (its fds are back to the baseline while the grandchild lives); the
    grandchild, killed later, is reaped by the agent (no zombie)."""
    warm_up(client)
    baseline = footprint(client, ipc_agent.pid)
    orphans_before = client.stats()["orphans_reaped"]
    out = io.BytesIO()
    made = client.create_exec("holder", "grandchild", sh('sleep 1000 & echo "$!"; seq 1 10000; exit 3'),
                              Stdio(stdout=out), drain_timeout=0.5)
    started = time.monotonic()
    made.start()
    final = made.wait(timeout=30)
    waited = time.monotonic() - started
    grandchild = int(out.getvalue().split(b"\n", 1)[0])
    try:
        assert final.exit_status == 3
        assert out.getvalue().split(b"\n", 1)[1] == _seq(10_000)
        assert 0.5 <= waited < 20, waited
        assert proc_alive(grandchild), "the grandchild still runs"
        made.delete()
        held = wait_for_footprint(client, ipc_agent.pid,
                                  lambda seen: seen.fds <= baseline.fds and seen.execs == 0 and seen.watched == 0)
        assert held.fds <= baseline.fds and held.execs == 0 and held.watched == 0, held
    finally:
        kill_and_wait([grandchild])
    poll_agent(lambda: client.stats()["orphans_reaped"] > orphans_before, RELEASE_TIMEOUT, "the grandchild reaped")
    assert zombies(ipc_agent.pid) == []
    assert client.stats()["orphans_reaped"] == orphans_before + 1
    assert_clean(client, ipc_agent.pid, baseline)


def proc_alive(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def unused_uid() -> int:
    """A uid with no passwd entry and no process: the fork bomb's processes are all its own."""
    known = set()
    with open("/etc/passwd") as passwd:
        for line in passwd:
            fields = line.split(":")
            if len(fields) > 2 and fields[2].isdigit():
                known.add(int(fields[2]))
    uid = 47000 + os.getpid() % 10000
    while uid in known or processes_of_uid(uid):
        uid += 1
    return uid


def test_a_fork_bomb_is_held_by_the_rlimits_in_its_spec(ipc_agent, client, tmp_path):
    """A fork bomb run as an unprivileged uid with RLIMIT_NPROC=64 in its spec (every process
    forks two more, then sleeps): forks fail at the limit, it never has more than 64 processes,
    the agent keeps serving other execs meanwhile, one kill(SIGKILL, all=True) ends the whole
    bomb, and the agent reaps every orphan it leaves (no zombie, no process)."""
    warm_up(client)
    baseline = footprint(client, ipc_agent.pid)
    uid, limit = unused_uid(), 64
    errors = FifoReader(str(tmp_path / "errors"))
    # The top shell forks the bomb once, while the uid has no process yet, then becomes a sleep:
    # it cannot fail to fork at the limit itself, so SIGKILL is what ends it.
    bomb = client.create_exec("bomb", "fork", sh("f() { f | f & sleep 1000; }; f & exec sleep 1000",
                                                 user=User(uid, uid),
                                                 rlimits=[Rlimit("RLIMIT_NPROC", limit, limit)]),
                              Stdio(stderr=errors.path))
    try:
        bomb.start()
        errors.read_until(b"Cannot fork")  # the limit bites
        peak = 0
        for _ in range(20):
            peak = max(peak, len(processes_of_uid(uid)))
            other = client.create_exec("bomb", "other", sh("exit 5"))
            other.start()
            assert other.wait(timeout=30).exit_status == 5
            other.delete()
        assert limit // 4 < peak <= limit, peak
        bomb.kill(signal.SIGKILL, all=True)
        assert bomb.wait(timeout=30).exit_status == 128 + signal.SIGKILL
    finally:
        errors.close()
        for _ in range(100):  # a killed process group cannot fork again: this ends at once
            left = processes_of_uid(uid)
            if not left:
                break
            kill_and_wait(left)
    assert processes_of_uid(uid) == []
    bomb.delete()
    assert_clean(client, ipc_agent.pid, baseline)


def test_stopping_the_agent_leaves_no_process_behind(workdir, tmp_path):
    """SIGTERM to the agent while it runs processes that ignore SIGTERM, and while an exited exec's
    background child still runs: the agent exits 0 by itself, and every process it started is gone."""
    agent = AgentProcess([f"ipc://{workdir}/stop.sock"]).start()
    ready = FifoReader(str(tmp_path / "ready"))
    leftovers: list[int] = []
    try:
        with AgentClient.connect(agent.endpoints[0], timeout=10) as client:
            for index in range(5):
                made = client.create_exec("stop", f"stubborn-{index}",
                                          sh(f'trap "" TERM; echo {index} > {ready.path}; exec sleep 1000'))
                made.start()
                ready.read_to_eof()
                ready.data.clear()
            lingering = client.create_exec("stop", "lingering", sh("sleep 1000 & exit 0"), drain_timeout=0)
            lingering.start()
            assert lingering.wait(timeout=30).exit_status == 0
            leftovers = descendants(agent.pid)
            assert len(leftovers) == 6
        assert agent.process is not None
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(30) == 0
        still = [pid for pid in leftovers if proc_alive(pid)]
        assert still == [], f"left running after the agent stopped: {still}"
    finally:
        ready.close()
        agent.stop()
        kill_and_wait(leftovers)



@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_a_routing_id_taken_over_by_a_new_connection_neither_kills_nor_leaks(transport, request, keys):
    """A client connects again with the same ZeroMQ routing id while the agent still holds its
    previous connection (a TCP connection left half-open by a network change, or a request-only
    socket reopened under a fixed id, as host_proxy did before BUG-2 was fixed). With
    ROUTER_HANDOVER the id went to the new connection and left the old one's libzmq engine without
    a pipe; when that old connection then ended, the engine was stuck: on tcp, where the agent
    sends ZMTP heartbeats, the next heartbeat aborted the whole agent ("Assertion failed:
    !_io_error (src/stream_engine_base.cpp:310)", SIGABRT; libzmq 4.3.5 as bundled with pyzmq 27),
    and every exec with it; on ipc the engine and its fd leaked. The agent must survive, keep
    serving, and hold no fd more."""
    agent: AgentProcess = request.getfixturevalue(f"{transport}_agent")
    relay = FreezableRelay(tcp_address(agent)) if transport == "tcp" else None
    context = zmq.Context()
    try:
        with (connect_tcp(agent.endpoints[0], keys) if transport == "tcp"
              else AgentClient.connect(agent.endpoints[0], timeout=10)) as observer:
            warm_up(observer)
            baseline = footprint(observer, agent.pid)
            for attempt in range(3):
                routing_id = b"\x01taken-over-" + bytes([attempt])
                old = _raw_dealer(context, relay.endpoint if relay else agent.endpoints[0], routing_id, keys, transport)
                assert _hello(old, f"takeover-{attempt}") is not None
                new = _raw_dealer(context, agent.endpoints[0], routing_id, keys, transport)
                _hello(new, f"takeover-{attempt}")  # answered (handover) or not: either way...
                sent = relay.upstream_bytes if relay is not None else 0
                old.send(msgpack.packb({"id": 9, "op": "ping"}))  # ...the old connection still talks
                if relay is not None:
                    assert relay.wait_upstream(sent), "the ping never left the relay"
                    wait_agent_read_all(relay)  # (a reset would discard what the agent has not read)
                    relay.cut()  # the old connection dies (reset)
                old.close(linger=0)
                new.close(linger=0)
            # Two heartbeat intervals (2 s each on tcp) later the agent must still be there.
            with pytest.raises(subprocess.TimeoutExpired):
                agent.process.wait(5)  # type: ignore[union-attr]
            observer.ping()
            now = wait_for_footprint(observer, agent.pid, lambda seen: seen.fds <= baseline.fds)
            assert now.fds <= baseline.fds, f"closed connections not let go: {baseline} -> {now}"
    finally:
        context.destroy(linger=0)
        if relay is not None:
            relay.close()


def _raw_dealer(context: zmq.Context, endpoint: str, routing_id: bytes, keys: Keys, transport: str) -> zmq.Socket:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTING_ID, routing_id)
    if transport == "tcp":
        public, secret = zmq.auth.load_certificate(keys.client_secret)
        socket.setsockopt(zmq.CURVE_SERVERKEY, zmq.auth.load_certificate(keys.agent_public)[0])
        socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.connect(endpoint)
    return socket


def _hello(socket: zmq.Socket, session: str) -> dict | None:
    socket.send(msgpack.packb({"id": 1, "op": "hello", "versions": [1], "session": session}))
    if not socket.poll(3000):
        return None
    return msgpack.unpackb(socket.recv())


@pytest.mark.timeout(90)
def test_an_exit_that_arrives_before_the_start_is_recorded_still_follows_exec_started(tcp_agent, relay, keys,
                                                                                     tmp_path):
    """The agent's "started" event and the replies to create+start are lost in a cut; the process
    then exits while the client is back, so its exit record arrives live — before start() has
    recorded the start. ExecStarted must still be published, before ExecExited. (BUG-4: finish()
    stored the pid from the exit record, on_started() then took the pid as "already published",
    and ExecStarted was never published at all.)"""
    gate = str(tmp_path / "gate")
    os.mkfifo(gate)
    holder = os.open(gate, os.O_RDWR | os.O_NONBLOCK)
    marker = FifoReader(str(tmp_path / "running"))
    events = EventLog()
    try:
        with connect_tcp(relay.endpoint, keys, reconnect_timeout=60) as client:
            made = client.create_exec("order", "late-start", sh(f'echo up > {marker.path}; read x < "$1"; exit 5', gate),
                                      on_event=events)
            client.ping()  # every connection up before the freeze
            relay.freeze()
            failures: list[BaseException] = []
            starting = threading.Thread(target=_capture(made.start, failures))
            starting.start()
            marker.read_to_eof()  # it runs; "started" and the replies are lost
            back = client.reconnects
            relay.cut()
            while client.reconnects <= back:
                client.ping()
            os.write(holder, b"\n")  # now it exits, with the client connected
            assert made.wait(timeout=30).exit_status == 5
            starting.join(60)
            assert not starting.is_alive() and not failures, failures
            drain_events()
            made.delete()
    finally:
        os.close(holder)
        marker.close()
    assert [type(event) for event in events.events] == [ExecStarted, ExecExited], events.events
