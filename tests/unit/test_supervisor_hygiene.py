"""The supervisor leaves nothing behind: no zombies, no fds, and drains are bounded and logged."""

from __future__ import annotations

import logging
import os
import threading

from common import ProcessSpec, Stdio
from host_proxy import LocalExec
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
