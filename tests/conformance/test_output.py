"""Output reaches its targets complete, unchanged and before wait() returns, on every backend."""

from __future__ import annotations

import io
import os
import signal
import threading

from common import ProcessSpec, Stdio
from tests.support.io import FifoReader

from .helpers import sh


def test_three_hundred_thousand_lines_are_complete_when_wait_returns(backend, tmp_path):
    out = tmp_path / "out.log"
    made = backend.create(ProcessSpec(args=["seq", "1", "300000"]), Stdio(stdout=str(out)))
    made.start()
    assert made.wait(timeout=60).exit_status == 0
    expected = "".join(f"{n}\n" for n in range(1, 300001)).encode()
    assert out.read_bytes() == expected


def test_all_256_byte_values_pass_unchanged(backend, tmp_path):
    every_byte = bytes(range(256))
    printf_format = "".join(f"\\{value:03o}" for value in range(256))
    out = tmp_path / "out.bin"
    made = backend.create(ProcessSpec(args=["printf", printf_format]), Stdio(stdout=str(out)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes() == every_byte


def test_all_byte_values_round_trip_through_stdin(backend, tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB
    out = tmp_path / "out.bin"
    made = backend.create(ProcessSpec(args=["cat"]), Stdio(stdin=io.BytesIO(payload), stdout=str(out)))
    made.start()
    assert made.wait(timeout=60).exit_status == 0
    assert out.read_bytes() == payload


def test_stdout_and_stderr_are_split_exactly(backend, tmp_path):
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    made = backend.create(sh("echo out1; echo err1 >&2; echo out2; printf err2 >&2"),
                          Stdio(stdout=str(out), stderr=str(err)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes() == b"out1\nout2\n"
    assert err.read_bytes() == b"err1\nerr2"


def test_path_targets_are_appended_never_truncated(backend, tmp_path):
    out = tmp_path / "out.log"
    out.write_bytes(b"before\n")
    made = backend.create(sh("echo after"), Stdio(stdout=out))
    made.start()
    made.wait(timeout=20)
    assert out.read_bytes() == b"before\nafter\n"


def test_file_object_targets(backend):
    out, err = io.BytesIO(), io.BytesIO()
    made = backend.create(sh("echo to-out; echo to-err >&2"), Stdio(stdout=out, stderr=err))
    made.start()
    made.wait(timeout=20)
    assert (out.getvalue(), err.getvalue()) == (b"to-out\n", b"to-err\n")
    assert made.status().stdout == ""


def test_no_targets_discard_output(backend):
    made = backend.create(sh("echo discarded; echo discarded >&2; exit 2"))
    made.start()
    assert made.wait(timeout=20).exit_status == 2


def test_output_arrives_while_the_process_runs(backend, tmp_path, held_fifo):
    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(sh("echo first; read x"), Stdio(stdout=out.path, stdin=held_fifo))
    made.start()
    assert out.read_until(b"first\n") == b"first\n"
    made.close_io()
    assert made.wait(timeout=20).exit_status == 1


def test_a_twenty_kilobyte_argument(backend, tmp_path):
    argument = "".join(chr(ord("a") + n % 26) for n in range(20 * 1024))
    out = tmp_path / "out"
    made = backend.create(ProcessSpec(args=["printf", "%s", argument]), Stdio(stdout=str(out)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_text() == argument


def test_a_background_grandchild_does_not_block_wait(backend, tmp_path):
    out = tmp_path / "out"
    made = backend.create(sh("sleep 1000 & echo $!"), Stdio(stdout=str(out)), drain_timeout=0.3)
    made.start()
    final = made.wait(timeout=20)
    assert final.exit_status == 0
    grandchild = out.read_text().strip()
    assert grandchild.isdigit()
    backend.run(["kill", "-9", grandchild]).wait(timeout=20)


def test_a_fifo_target_nobody_reads_holds_wait_until_read(backend, tmp_path):
    path = str(tmp_path / "slow.fifo")
    os.mkfifo(path)
    made = backend.create(sh("echo held"), Stdio(stdout=path))
    made.start()
    from common.errors import DeadlineExceededError

    try:
        made.wait(timeout=0.5)
        raise AssertionError("wait() returned before the FIFO target took the output")
    except DeadlineExceededError:
        pass
    reader = FifoReader.__new__(FifoReader)
    reader.path, reader.data = path, bytearray()
    reader.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    assert reader.read_to_eof() == b"held\n"
    assert made.wait(timeout=20).exit_status == 0
    reader.close()


def test_concurrent_execs_keep_their_output_apart(backend, tmp_path):
    made = []
    for index in range(8):
        target = tmp_path / f"out{index}"
        exec_ = backend.create(ProcessSpec(args=["seq", str(index * 10000), str(index * 10000 + 9999)]),
                               Stdio(stdout=str(target)))
        made.append((index, exec_, target))
    threads = [threading.Thread(target=exec_.start) for _, exec_, _ in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for index, exec_, target in made:
        assert exec_.wait(timeout=60).exit_status == 0
        expected = "".join(f"{n}\n" for n in range(index * 10000, index * 10000 + 10000))
        assert target.read_text() == expected


def test_output_written_just_before_a_kill_is_kept(backend, tmp_path):
    out = FifoReader(str(tmp_path / "out"))
    log = tmp_path / "log"
    made = backend.create(sh("seq 1 50000; echo ready >&2; exec sleep 1000"),
                          Stdio(stdout=str(log), stderr=out.path))
    made.start()
    out.read_until(b"ready")
    made.kill(signal.SIGKILL)
    assert made.wait(timeout=20).exit_status == 137
    assert log.read_text() == "".join(f"{n}\n" for n in range(1, 50001))
