"""The supervisor leaves nothing behind: no zombies, no fds, and drains are bounded and logged."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

from common import ProcessSpec, Stdio
from host_proxy import AgentClient, LocalExec
from tests.support.agent import ROOT, AgentProcess
from tests.support.procs import zombies


def _open_fds() -> dict[int, str]:
    """This process's fds and what they are, sockets left out: LocalExec opens none, while the
    suite's session-wide clients (the QEMU guests' connections) may reconnect at any moment."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own fd, closed by now
            continue
        if not target.startswith("socket:"):
            fds[int(name)] = target
    return fds


def _wait_for(condition, timeout: float = 20.0) -> bool:
    """Re-check ``condition`` until it holds or ``timeout`` passes. Only for what announces
    nothing: a killed process's pipes are closed by the supervisor a few loop steps after
    its reaping, and no event says when."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.02)
    return True


def test_many_execs_leave_no_zombies_and_no_fds(tmp_path):
    LocalExec("warm", "up", ProcessSpec(args=["true"])).start()  # start the loop thread first
    (tmp_path / "in").write_bytes(b"input\n")
    before = _open_fds()
    for index in range(100):
        made = LocalExec("hygiene", f"e{index}", ProcessSpec(args=["sh", "-c", "echo out; echo err >&2"]),
                         Stdio(stdout=str(tmp_path / "o"), stderr=str(tmp_path / "e"),
                               stdin=str(tmp_path / "in")))
        made.start()
        assert made.wait(timeout=20).exit_status == 0
        made.delete()
    failed = LocalExec("hygiene", "failed", ProcessSpec(args=["/nonexistent"]), Stdio(stdout=str(tmp_path / "o")))
    try:
        failed.start()
    except Exception:
        pass
    failed.delete()
    assert zombies(os.getpid()) == []
    after = _open_fds()
    assert {fd: target for fd, target in after.items() if before.get(fd) != target} == {}


def test_a_drain_timeout_is_logged_with_the_exec_id(tmp_path, caplog):
    out = tmp_path / "out"
    made = LocalExec("drain-task", "drain-exec", ProcessSpec(args=["sh", "-c", "sleep 1000 & echo $!"]),
                     Stdio(stdout=str(out)), drain_timeout=0.2)
    with caplog.at_level(logging.WARNING):
        made.start()
        assert made.wait(timeout=20).exit_status == 0
    os.kill(int(out.read_text()), 9)
    assert any("drain-task/drain-exec" in record.getMessage() for record in caplog.records)


def test_wait_from_many_threads_while_exits_race(tmp_path):
    made = [LocalExec("race", f"e{i}", ProcessSpec(args=["true"])) for i in range(20)]
    results: list[int] = []
    lock = threading.Lock()

    def run(exec_) -> None:
        exec_.start()
        status = exec_.wait(timeout=20)
        with lock:
            results.append(status.exit_status)

    threads = [threading.Thread(target=run, args=(exec_,)) for exec_ in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == [0] * 20
    for exec_ in made:
        exec_.delete()


_SIGNAL_PROBE = "grep -E '^Sig(Ign|Blk):' /proc/self/status; kill -QUIT $$; echo survived"


def _assert_clean_signals(out_path: str, exit_status: int) -> None:
    with open(out_path) as out:
        probed = out.read()
    assert exit_status == 128 + 3, probed
    assert probed.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16]


def test_a_host_that_ignores_and_blocks_signals_starts_processes_clean(tmp_path):
    """A shim that ignores SIGQUIT and SIGINT and blocks SIGUSR1 (say, run under nohup by a job
    shell) still starts every process with default dispositions and an empty mask."""
    out = tmp_path / "out"
    script = (
        "import signal, sys\n"
        "signal.signal(signal.SIGQUIT, signal.SIG_IGN)\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])\n"
        "from common import ProcessSpec, Stdio\n"
        "from host_proxy import LocalExec\n"
        f"made = LocalExec('t', 'e', ProcessSpec(args=['sh', '-c', {_SIGNAL_PROBE!r}]), Stdio(stdout=sys.argv[1]))\n"
        "made.start()\n"
        "print(made.wait(timeout=20).exit_status)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, timeout=60,
                          cwd=ROOT, check=True)
    _assert_clean_signals(str(out), int(done.stdout))


def test_an_agent_that_inherited_ignored_and_blocked_signals_starts_processes_clean(tmp_path):
    """As the guest's init once started it: SIGQUIT and SIGINT ignored, SIGUSR1 blocked."""
    agent = AgentProcess([f"ipc://{tmp_path}/agent/sock"],
                         prefix=["env", "--ignore-signal=QUIT", "--ignore-signal=INT", "--block-signal=USR1"])
    os.makedirs(tmp_path / "agent", mode=0o700)
    agent.start()
    try:
        with AgentClient.connect(agent.endpoints[0]) as client:
            out = tmp_path / "out"
            made = client.create_exec("t", "e", ProcessSpec(args=["sh", "-c", _SIGNAL_PROBE]), Stdio(stdout=str(out)))
            made.start()
            _assert_clean_signals(str(out), made.wait(timeout=20).exit_status)
            made.delete()
    finally:
        agent.stop()


def test_a_fifo_stdin_abandoned_mid_read_does_not_deafen_the_next_one(tmp_path, ipc_agent):
    """BUG-18, found by tests/differential: a proxied exec's stdin feeder, cancelled while its
    read waited on a FIFO, left the read pending, still polling the fd the source then closed;
    the next FIFO opened on the same fd number (by any exec of this process, LocalExec too) was
    never polled, so its bytes never reached the process."""
    with AgentClient.connect(ipc_agent.endpoints[0]) as client:
        for round_number in range(4):
            first_fifo, second_fifo = tmp_path / f"a{round_number}", tmp_path / f"b{round_number}"
            os.mkfifo(first_fifo)
            os.mkfifo(second_fifo)
            first_writer = os.open(first_fifo, os.O_RDWR | os.O_CLOEXEC)
            second_writer = os.open(second_fifo, os.O_RDWR | os.O_CLOEXEC)
            try:
                first = client.create_exec("fifo", f"first-{round_number}", ProcessSpec(args=["cat"]),
                                           Stdio(stdin=str(first_fifo)))
                first.start()
                first.force_exit(1)
                first.delete()
                second = LocalExec("fifo", f"second-{round_number}", ProcessSpec(args=["sh", "-c", "read x; exit 7"]),
                                   Stdio(stdin=str(second_fifo)))
                second.start()
                os.write(second_writer, b"go\n")
                assert second.wait(timeout=10).exit_status == 7
                second.delete()
            finally:
                os.close(first_writer)
                os.close(second_writer)


def test_a_file_object_the_caller_closes_after_delete_is_left_alone(tmp_path):
    """After force_exit and delete the caller may close its file object: nothing of uvmexec's
    touches it afterwards (a late flush raised ValueError in the loop and skipped the clean-up)."""
    warm = LocalExec("warm", "up-fileobj", ProcessSpec(args=["true"]))  # start the loop thread first
    warm.start()
    warm.wait(timeout=20)
    warm.delete()
    before = _open_fds()
    with open(tmp_path / "out", "wb") as target:
        made = LocalExec("fileobj", "closed", ProcessSpec(args=["sleep", "1000"]), Stdio(stdout=target))
        made.start()
        made.force_exit(9)
        made.delete()
    assert _wait_for(lambda: _open_fds() == before), (before, _open_fds())


def test_a_tty_feeder_never_writes_to_a_closed_pty_master(tmp_path, caplog):
    """BUG-19: after a tty process exited, the supervisor closed the pty master while the stdin
    feeder could still write the terminal's EOF character to it: EBADF at best, and at worst a
    write into whatever reused the fd number. The feeder is now ended before the close."""
    caplog.set_level(logging.WARNING, logger="common.supervisor.streams")
    for index in range(40):
        fifo = tmp_path / f"in{index}"
        os.mkfifo(fifo)
        writer = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
        try:
            os.write(writer, b"typed ahead\n")
            made = LocalExec("tty-feeder", f"e{index}", ProcessSpec(args=["true"], terminal=True),
                             Stdio(stdin=str(fifo)))
            made.start()
            assert made.wait(timeout=20).exit_status == 0
            made.delete()
        finally:
            os.close(writer)
    assert [record.getMessage() for record in caplog.records if "stdin pump" in record.getMessage()] == []
