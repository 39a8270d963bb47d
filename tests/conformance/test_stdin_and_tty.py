"""Stdin sources, close_io, and terminals, on every backend."""

from __future__ import annotations

import io
import os

from common import ProcessSpec, Stdio
from tests.support.io import FifoReader

from .helpers import sh


def test_stdin_from_a_file_object_reaches_eof_by_itself(backend, tmp_path):
    out = tmp_path / "out"
    made = backend.create(ProcessSpec(args=["cat"]), Stdio(stdin=io.BytesIO(b"one\ntwo\n"), stdout=str(out)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes() == b"one\ntwo\n"


def test_stdin_from_a_path(backend, tmp_path):
    source = tmp_path / "in.txt"
    source.write_bytes(b"from a file\n")
    out = tmp_path / "out"
    made = backend.create(ProcessSpec(args=["cat"]), Stdio(stdin=str(source), stdout=str(out)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes() == b"from a file\n"
    assert made.status().stdin == str(source)


def test_stdin_from_a_fifo_ends_when_its_writer_closes(backend, tmp_path):
    fifo = str(tmp_path / "in.fifo")
    os.mkfifo(fifo)
    out = tmp_path / "out"
    made = backend.create(ProcessSpec(args=["cat"]), Stdio(stdin=fifo, stdout=str(out)))
    made.start()
    writer = os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)  # blocks until the exec side opened it
    os.write(writer, b"through a fifo\n")
    os.close(writer)
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes() == b"through a fifo\n"


def test_no_stdin_reads_eof(backend, tmp_path):
    out = tmp_path / "out"
    made = backend.create(sh("cat; echo done"), Stdio(stdout=str(out)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes() == b"done\n"


def test_cat_ends_on_close_io_after_what_it_already_got(backend, tmp_path, held_fifo):
    out = FifoReader(str(tmp_path / "out"))
    made = backend.create(ProcessSpec(args=["cat"]), Stdio(stdin=held_fifo, stdout=out.path))
    made.start()
    with open(held_fifo, "wb", buffering=0) as writer:
        writer.write(b"hello\n")
        out.read_until(b"hello\n")
        made.close_io()
        assert made.wait(timeout=20).exit_status == 0
    assert out.read_to_eof() == b"hello\n"


def test_close_io_with_bytes_in_flight_delivers_a_prefix(backend, tmp_path):
    payload = b"".join(b"%08d\n" % n for n in range(200000))
    out = tmp_path / "out"
    made = backend.create(ProcessSpec(args=["cat"]), Stdio(stdin=io.BytesIO(payload), stdout=str(out)))
    made.start()
    made.close_io()
    assert made.wait(timeout=30).exit_status == 0
    got = out.read_bytes()
    assert payload.startswith(got)


def test_close_io_before_start_gives_immediate_eof(backend, tmp_path, held_fifo):
    out = tmp_path / "out"
    made = backend.create(sh("cat; echo eof"), Stdio(stdin=held_fifo, stdout=str(out)))
    made.close_io()
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes() == b"eof\n"


def test_close_io_before_start_of_a_terminal_sends_eof_at_start(backend, tmp_path, held_fifo):
    """Found by tests/differential: a proxied tty that had close_io before start got no EOF
    character and its read blocked for ever; a local one read EOF at once."""
    out = tmp_path / "out"
    made = backend.create(ProcessSpec(args=["sh", "-c", "read line || echo got-eof"], terminal=True),
                          Stdio(stdin=held_fifo, stdout=str(out)))
    made.close_io()
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert b"got-eof" in out.read_bytes()


def test_a_terminal_is_the_controlling_tty_of_its_own_session(backend, tmp_path):
    out = tmp_path / "out"
    script = 'test -t 0 && test -t 1 && test -t 2 && tty && [ "$(cut -d" " -f6 /proc/$$/stat)" = "$$" ]'
    made = backend.create(ProcessSpec(args=["sh", "-c", script], terminal=True), Stdio(stdout=str(out)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes().startswith(b"/dev/pts/")


def test_stty_size_shows_console_size_and_resize(backend, tmp_path):
    out = FifoReader(str(tmp_path / "out"))
    script = "trap 'stty size; kill $!; exit 0' WINCH; stty size; sleep 1000 & wait"
    spec = ProcessSpec(args=["sh", "-c", script], terminal=True, console_size=(24, 80))
    made = backend.create(spec, Stdio(stdout=out.path))
    made.start()
    out.read_until(b"24 80")
    made.resize_pty(100, 40)
    assert made.wait(timeout=20).exit_status == 0
    assert b"40 100" in out.read_to_eof()


def test_terminal_stdin_and_close_io_sends_eof(backend, tmp_path, held_fifo):
    out = FifoReader(str(tmp_path / "out"))
    spec = ProcessSpec(args=["sh", "-c", "stty -echo; echo ready; cat; echo cat-done"], terminal=True)
    made = backend.create(spec, Stdio(stdin=held_fifo, stdout=out.path))
    made.start()
    out.read_until(b"ready")
    with open(held_fifo, "wb", buffering=0) as writer:
        writer.write(b"typed\n")
        out.read_until(b"typed")
        made.close_io()
        assert made.wait(timeout=20).exit_status == 0
    assert b"cat-done" in out.read_to_eof()


def test_terminal_output_uses_tty_line_endings(backend, tmp_path):
    out = tmp_path / "out"
    made = backend.create(ProcessSpec(args=["printf", "a\\nb\\n"], terminal=True), Stdio(stdout=str(out)))
    made.start()
    assert made.wait(timeout=20).exit_status == 0
    assert out.read_bytes() == b"a\r\nb\r\n"
