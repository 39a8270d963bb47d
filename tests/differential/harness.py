"""Runs one sequence of operations on a LocalExec and a ProxiedExec side by side.

Each operation is applied to both backends, one after the other, with the
same task and exec ids; everything either backend shows is written down as an
*observation* — return values, error classes and messages, statuses (pid and
``exited_at`` only as set or not), the events ``on_event`` received, and the
bytes its stdout and stderr targets hold — and the two lists must be equal
after every step.

Determinism comes from a model of what the processes do (:class:`~.ops.Life`):
programs block on stdin or on a signal, so a process exits only when an
operation makes it; after such an operation both backends are waited on
(``wait(timeout)``) before anything else is observed; and output a running
process produces (a tty's echo, ``cat``'s copy) is waited for in its target
file (inotify) before the next operation, so nothing is ever in flight when a
backend is observed.

A differing observation fails at once. Some rules of the contract both
backends could break alike; those are checked on each backend as it goes
(:attr:`Runner.violations`) and reported after the sequence, unless a
difference was found first.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from common import Exec, ExecExited, ExecStarted, ProcessSpec, Stdio
from common.errors import DeadlineExceededError, ExecError
from common.state import ExecStatus
from tests.support.backends import Backend

from . import ops as o
from .watch import DirectoryWatch, read_bytes

#: How long an exec that the model says ends may take to be reported EXITED.
SETTLE_TIMEOUT = 10.0
#: How long output the model says a running process wrote may take to reach its target.
OUTPUT_TIMEOUT = 5.0
#: How long an event may take to be delivered after the call that caused it returned.
EVENT_TIMEOUT = 5.0
#: How long a state read may take while the agent is stopped before it counts as blocked.
STOPPED_AGENT_ANSWER = 1.0

PREFILL = b"earlier content\n"


def describe_error(error: BaseException) -> tuple[str, str]:
    return (type(error).__name__, str(error))


class EventRecorder:
    """One exec's ``on_event`` deliveries, in order, with a condition to wait on."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._changed = threading.Condition()

    def __call__(self, event: object) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def count(self, kind: type) -> int:
        with self._changed:
            return sum(isinstance(event, kind) for event in self.events)

    def wait_for(self, kind: type, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: any(isinstance(e, kind) for e in self.events), timeout)

    def summary(self) -> list[tuple[Any, ...]]:
        """Types, exec ids and exit statuses; pids and times only as set or not, pids as consistent."""
        with self._changed:
            events = list(self.events)
        pids = {event.pid for event in events}  # type: ignore[attr-defined]
        described: list[tuple[Any, ...]] = []
        for event in events:
            if isinstance(event, ExecStarted):
                described.append(("ExecStarted", event.exec_id, event.pid > 0))
            elif isinstance(event, ExecExited):
                described.append(("ExecExited", event.exec_id, event.pid > 0, event.exit_status,
                                  event.exited_at is not None and event.exited_at.tzinfo is not None))
            else:
                described.append((type(event).__name__,))
        if len(pids) > 1:
            described.append(("events carry different pids",))
        return described


@dataclass
class Incarnation:
    """What one backend holds for one life of a slot."""

    exec: Exec
    events: EventRecorder
    stdout_path: str
    stderr_path: str
    stdin_writer: int | None = None
    files: list[BinaryIO] = field(default_factory=list)

    def release(self) -> None:
        if self.stdin_writer is not None:
            os.close(self.stdin_writer)
            self.stdin_writer = None
        for opened in self.files:
            opened.close()
        self.files.clear()


class Side:
    """One backend in the comparison: its exec factory, its own directory and what it made."""

    def __init__(self, name: str, create: Callable[..., Exec], root: str, *,
                 agent_pid: int | None = None) -> None:
        self.name = name
        self.backend = Backend(name, create)
        self.root = root
        os.makedirs(root, exist_ok=True)
        self.watch = DirectoryWatch(root)
        self.agent_pid = agent_pid
        self.current: dict[int, Incarnation] = {}
        self.stale: dict[int, Exec] = {}
        self.incarnations: list[Incarnation] = []

    # -- helpers ----------------------------------------------------------------------

    def normalize(self, value: Any) -> Any:
        """Make an observation comparable across backends: this side's directory becomes <dir>."""
        if isinstance(value, str):
            return value.replace(self.root, "<dir>")
        if isinstance(value, ExecStatus):
            return {
                "id": value.id,
                "exec_id": value.exec_id,
                "bundle": value.bundle,
                "pid set": value.pid > 0,
                "status": str(value.status),
                "stdin": self.normalize(value.stdin),
                "stdout": self.normalize(value.stdout),
                "stderr": self.normalize(value.stderr),
                "terminal": value.terminal,
                "exit_status": value.exit_status,
                "exited_at set": value.exited_at is not None,
            }
        if isinstance(value, tuple):
            return tuple(self.normalize(item) for item in value)
        if isinstance(value, list):
            return [self.normalize(item) for item in value]
        return value

    def call(self, fn: Callable[[], Any]) -> tuple[Any, ...]:
        """Run one contract call: ("ok", normalized result) or ("raise", class, normalized message)."""
        try:
            result = fn()
        except Exception as error:  # every exception is an observation, ExecError or not
            name, message = describe_error(error)
            return ("raise", name, self.normalize(message))
        return ("ok", self.normalize(result))

    def target(self, slot: int, stale: bool) -> Exec | None:
        if stale:
            return self.stale.get(slot)
        held = self.current.get(slot)
        return held.exec if held is not None else None

    # -- creation ---------------------------------------------------------------------

    def create(self, task_id: str, exec_id: str, op: o.Create, life_number: int) -> tuple[Any, ...]:
        base = os.path.join(self.root, f"s{op.slot}l{life_number}")
        stdout_path, stderr_path = base + ".out", base + ".err"
        files: list[BinaryIO] = []
        writer = None
        stdin: Any = None
        if op.stdin == "fifo":
            stdin = base + ".in"
            os.mkfifo(stdin)
            # Held read-write: the FIFO always has a writer (no EOF until the exec is told) and a
            # reader (bytes written before the exec opens it stay in the pipe).
            writer = os.open(stdin, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        elif op.stdin == "file":
            stdin = base + ".in"
            with open(stdin, "wb") as source:
                source.write(op.stdin_data)
        elif op.stdin == "bytes":
            stdin = io.BytesIO(op.stdin_data)

        def output(kind: str, path: str) -> Any:
            if kind == "none":
                return None
            if op.prefill:
                with open(path, "ab") as earlier:
                    earlier.write(PREFILL)
            if kind == "path":
                return path
            opened = open(path, "ab", buffering=0)  # noqa: SIM115 - closed with the incarnation
            files.append(opened)
            return opened

        stdout = output(op.stdout, stdout_path)
        stderr = output(op.stderr, stderr_path)
        args, env, cwd = op.program.args_env_cwd()
        events = EventRecorder()
        options: dict[str, Any] = {"on_event": events, "bundle": op.bundle}
        if op.drain_timeout != o.DEFAULT:
            options["drain_timeout"] = op.drain_timeout
        try:
            # Built here, inside the comparison: a spec may be refused (a surrogate escape).
            spec = ProcessSpec(args=args, env=env, cwd=cwd, terminal=op.tty, console_size=op.console_size)
            made = self.backend.create(spec, Stdio(stdin=stdin, stdout=stdout, stderr=stderr),
                                       task_id=task_id, exec_id=exec_id, **options)
        except Exception as error:
            if writer is not None:
                os.close(writer)
            for opened in files:
                opened.close()
            name, message = describe_error(error)
            return ("raise", name, self.normalize(message))
        held = Incarnation(made, events, stdout_path, stderr_path, writer, files)
        self.current[op.slot] = held
        self.incarnations.append(held)
        return ("ok", "created")

    # -- observing ----------------------------------------------------------------------

    def outputs(self, slot: int) -> tuple[Any, ...]:
        held = self.current[slot]
        return ("stdout", read_bytes(held.stdout_path), "stderr", read_bytes(held.stderr_path))

    def wait_stdout(self, slot: int, expected: bytes) -> bool:
        held = self.current[slot]
        return self.watch.wait_until(lambda: read_bytes(held.stdout_path) == expected, OUTPUT_TIMEOUT)

    def state_reads(self, made: Exec) -> tuple[Any, ...]:
        return (
            ("pid set", self.call(lambda: made.pid > 0)),
            ("state", self.call(lambda: str(made.state))),
            ("status()", self.call(made.status)),
        )

    def state_reads_with_agent_stopped(self, made: Exec) -> tuple[Any, ...]:
        if self.agent_pid is None:
            return self.state_reads(made)
        answer: list[tuple[Any, ...]] = []
        probe = threading.Thread(target=lambda: answer.append(self.state_reads(made)), daemon=True)
        os.kill(self.agent_pid, signal.SIGSTOP)
        try:
            probe.start()
            probe.join(STOPPED_AGENT_ANSWER)
            in_time = not probe.is_alive()
        finally:
            os.kill(self.agent_pid, signal.SIGCONT)
        probe.join(60)
        assert not probe.is_alive(), "a state read still hangs a minute after the agent was continued"
        if in_time:
            return answer[0]
        return ((f"no answer within {STOPPED_AGENT_ANSWER}s while the agent was stopped; "
                 "after it was continued", answer[0]),)

    def close(self) -> list[str]:
        """Force-exit and delete everything made; release stdio ends. Returns what went wrong."""
        problems: list[str] = []
        try:
            self.backend.cleanup()
        except Exception as error:  # a non-ExecError escaping force_exit/delete
            problems.append(f"{self.name}: cleanup raised {describe_error(error)}")
        for held in self.incarnations:
            held.release()
        self.incarnations.clear()
        self.current.clear()
        self.stale.clear()
        self.watch.close()
        return problems


@dataclass
class Effect:
    """What the model says an operation does, beyond its own result."""

    #: The exec ends: wait for it on both backends, then observe events and output.
    settles: bool = False
    #: After a successful start: wait for ExecStarted before going on.
    started: bool = False
    #: The exec runs on and its stdout target must now hold this (None: nothing to wait for).
    stdout: bytes | None = None
    #: The result the contract requires, where it is not in doubt: "ok" or an error class name.
    expect: str | None = None


class Runner:
    """Applies operations to two sides and compares what they show."""

    def __init__(self, sides: tuple[Side, Side], task_id: str) -> None:
        self.sides = sides
        self.task_id = task_id
        self.lives: dict[int, o.Life] = {}
        self.life_count = 0
        self.transcript: list[str] = []
        #: Rules of the contract broken on a backend (reported after the sequence).
        self.violations: list[str] = []
        #: What the sequence did, for Hypothesis' statistics: "Kill ok", "Start settled", ...
        self.coverage: set[str] = set()

    def has_stale(self, slot: int) -> bool:
        return all(slot in side.stale for side in self.sides)

    # -- comparing ----------------------------------------------------------------------

    def compare(self, what: str, observed: list[Any]) -> None:
        left, right = observed
        self.transcript.append(f"{what}: {left!r}" if left == right else f"{what}: DIFFERS")
        if left != right:
            names = [side.name for side in self.sides]
            history = "\n  ".join(self.transcript[-40:])
            raise AssertionError(
                f"LocalExec and ProxiedExec differ at {what}\n"
                f"  {names[0]}: {left!r}\n  {names[1]}: {right!r}\n"
                f"transcript (last 40 steps):\n  {history}"
            )

    def fail(self, text: str) -> None:
        """Both backends agree, but not with what the contract or the model says must happen."""
        history = "\n  ".join(self.transcript[-40:])
        raise AssertionError(f"{text}\ntranscript (last 40 steps):\n  {history}")

    def each(self, what: str, fn: Callable[[Side], Any]) -> Any:
        observed = [fn(side) for side in self.sides]
        self.compare(what, observed)
        return observed[0]

    def violation(self, text: str) -> None:
        if text not in self.violations:
            self.violations.append(text)

    # -- the sequence -------------------------------------------------------------------

    def step(self, index: int, op: o.Op) -> None:
        label = f"#{index} {op!r}"
        if isinstance(op, o.Create):
            self.do_create(label, op)
            return
        if isinstance(op, o.Write):
            self.do_write(label, op)
            return
        stale = getattr(op, "stale", False)
        if any(side.target(op.slot, stale) is None for side in self.sides):
            return  # nothing in that slot (never created, or no deleted exec to go back to)
        life = None if stale else self.lives.get(op.slot)

        def held(side: Side) -> Exec:
            made = side.target(op.slot, stale)
            assert made is not None
            return made

        if isinstance(op, o.Observe):
            self.each(label, lambda side: side.state_reads(held(side)))
            return
        if isinstance(op, o.ObserveAgentStopped):
            self.each(label, lambda side: side.state_reads_with_agent_stopped(held(side)))
            return
        effect = Effect(expect="NotFoundError") if stale or life is None or life.state == "deleted" else \
            self.predict(op, life)
        call = self.bind(op)
        result = self.each(label, lambda side: side.call(lambda: call(held(side))))
        self.coverage.add(f"{type(op).__name__} {'ok' if result[0] == 'ok' else result[1]}"
                          f"{' (stale)' if stale else ''}{' -> exit' if effect.settles else ''}")
        self.check_expected(label, op, effect, result)
        if isinstance(op, o.Delete) and result[0] == "ok" and not stale:
            for side in self.sides:
                side.stale[op.slot] = side.current[op.slot].exec
        if life is not None and not stale:
            self.follow(label, op.slot, life, effect)

    def bind(self, op: o.Op) -> Callable[[Exec], Any]:
        if isinstance(op, o.Start):
            return lambda made: made.start()
        if isinstance(op, o.Kill):
            return lambda made: made.kill(op.signal, op.all)  # type: ignore[arg-type]
        if isinstance(op, o.Resize):
            return lambda made: made.resize_pty(op.width, op.height)  # type: ignore[arg-type]
        if isinstance(op, o.CloseIO):
            return lambda made: made.close_io(op.stdin)
        if isinstance(op, o.Wait):
            return lambda made: made.wait(op.timeout)
        if isinstance(op, o.ForceExit):
            return lambda made: made.force_exit(op.status)  # type: ignore[arg-type]
        if isinstance(op, o.Delete):
            return lambda made: made.delete()
        raise TypeError(op)

    def check_expected(self, label: str, op: o.Op, effect: Effect, result: tuple[Any, ...]) -> None:
        got = "ok" if result[0] == "ok" else result[1]
        if effect.expect is None or got == effect.expect or (effect.expect == "an error" and got != "ok"):
            return
        if isinstance(op, o.Resize) and effect.expect == "ok":
            # Both backends agree; the contract says a tty that is not RUNNING ignores a resize.
            self.violation(f"{label}: a tty that is not running must ignore resize_pty, got {result!r}")
            return
        self.fail(f"{label}: both backends gave {result!r}; the contract (or the test's model) says "
                  f"{effect.expect}")

    # -- creation and stdin ---------------------------------------------------------------

    def do_create(self, label: str, op: o.Create) -> None:
        exec_id = o.SLOT_EXEC_IDS[op.slot]
        previous = self.lives.get(op.slot)
        live_before = previous is not None and previous.state != "deleted"
        self.life_count += 1
        number = self.life_count
        result = self.each(label, lambda side: side.create(self.task_id, exec_id, op, number))
        if live_before:
            if result[0] == "ok":
                self.fail(f"{label}: both backends created a second exec under live ids")
            return  # AlreadyExistsError, or the spec's own error if it is checked first
        if result[0] == "ok":
            self.lives[op.slot] = o.Life(op, number)  # a deleted predecessor stays in side.stale
            self.each(f"{label} status()", lambda side: side.call(side.current[op.slot].exec.status))

    def do_write(self, label: str, op: o.Write) -> None:
        life = self.lives.get(op.slot)
        if life is None or life.state == "deleted" or life.create.stdin != "fifo":
            return
        if not self.write_is_deterministic(life, op.data):
            return
        line = op.data + b"\n"
        for side in self.sides:
            writer = side.current[op.slot].stdin_writer
            assert writer is not None
            try:
                os.write(writer, line)
            except BlockingIOError:
                pass  # a FIFO nobody reads any more is full: the bytes go nowhere on either side
        self.transcript.append(f"{label}: written")
        if not life.stdin_fed:
            return
        if life.state == "created":
            life.pending_lines.append(line)
            return
        effect = Effect()
        self.feed(life, [line], effect)
        self.follow(label, op.slot, life, effect)

    def write_is_deterministic(self, life: o.Life, data: bytes) -> bool:
        """Whether the outcome of one more line cannot depend on timing (else it is skipped).

        On a tty the line discipline echoes a line when it arrives and the program prints what it
        read later: lines fed together with a program's own output would interleave by chance.
        So a tty ``cat`` gets at most one line before start, ``read2`` at most the two it reads.
        Control characters on a tty are the line discipline's (signals, erase, EOF): not data.
        """
        if not life.tty:
            return True
        if not all(0x20 <= byte < 0x7F for byte in data):
            return False
        if life.state != "created":
            return True
        limit = {"cat": 1, "read2": 2}.get(life.program.kind, 99)
        return len(life.pending_lines) < limit

    # -- the model ------------------------------------------------------------------------

    def predict(self, op: o.Op, life: o.Life) -> Effect:
        """Update the model for ``op`` and say what it requires and causes."""
        state = life.state
        if isinstance(op, o.Start):
            if state != "created":
                return Effect(expect="FailedPreconditionError")
            if life.program.fails_to_start:
                life.state = "exited"
                return Effect(settles=True, expect="an error")  # an ExecError naming the cause
            life.state = "running"
            life.started = True
            effect = Effect(started=True, expect="ok")
            if life.program.exits_at_start:
                effect.settles = True
                life.state = "exited"
                return effect
            self.start_stdin(life, effect)
            return effect
        if isinstance(op, o.Kill):
            if state == "created":
                return Effect(expect="FailedPreconditionError")
            if state == "exited":
                return Effect(expect="NotFoundError")
            if not _valid_signal(op.signal):
                return Effect(expect="InvalidArgumentError")
            effect = Effect(expect="ok")
            signum = op.signal
            assert isinstance(signum, int)
            if signum == o.CONT_SIGNAL and life.stopped:
                life.stopped = False
                self.consume(life, effect)
            elif signum in o.IGNORED_SIGNALS:
                pass
            elif signum == o.STOP_SIGNAL or (signum in o.TTY_DISCARDED_STOP_SIGNALS and not life.tty):
                life.stopped = True
            elif signum in o.TTY_DISCARDED_STOP_SIGNALS:
                pass
            else:
                life.state = "exited"
                effect.settles = True
            return effect
        if isinstance(op, o.Resize):
            if not life.tty:
                return Effect(expect="FailedPreconditionError")
            if state != "running":
                return Effect(expect="ok")
            if not (_valid_dimension(op.width) and _valid_dimension(op.height)):
                return Effect(expect="InvalidArgumentError")
            return Effect(expect="ok")
        if isinstance(op, o.CloseIO):
            effect = Effect(expect="ok")
            if not op.stdin or life.stdin_closed or life.create.stdin == "none":
                return effect
            if state == "created":
                life.stdin_closed = True  # whatever the source holds, the process gets EOF at once
            elif state == "running" and life.create.stdin == "fifo":
                life.stdin_closed = True
                self.feed(life, [None], effect)
            # A file or BytesIO source already ended at start (EOF follows its content).
            return effect
        if isinstance(op, o.Wait):
            return Effect(expect="ok" if state == "exited" else "DeadlineExceededError")
        if isinstance(op, o.ForceExit):
            if state == "exited":
                return Effect()  # "does nothing"; whether a bad status is still refused is left open
            if not _valid_status(op.status):
                return Effect(expect="InvalidArgumentError")
            life.state = "exited"
            return Effect(settles=True, expect="ok")
        if isinstance(op, o.Delete):
            if state == "running":
                return Effect(expect="FailedPreconditionError")
            life.state = "deleted"
            return Effect(expect="ok")
        raise TypeError(op)

    def start_stdin(self, life: o.Life, effect: Effect) -> None:
        """What the process gets on stdin at start."""
        kind = life.create.stdin
        if life.stdin_closed:
            # close_io before start: EOF at once (a tty gets its EOF character), nothing else fed.
            life.pending_lines = []
            self.feed(life, [None], effect)
            return
        if kind in ("file", "bytes"):
            if life.program.reads_stdin:
                life.state = "exited"
                effect.settles = True
            elif life.tty:
                # A tty echoes what is fed even to a program that never reads it.
                life.expected_stdout += life.create.stdin_data.replace(b"\n", b"\r\n")
                effect.stdout = life.expected_stdout
            return
        if kind == "none":
            if not life.tty and life.program.reads_stdin:
                life.state = "exited"  # /dev/null: EOF at once
                effect.settles = True
            return
        # A held FIFO: what was written before start reaches the process now.
        lines: list[bytes | None] = list(life.pending_lines)
        life.pending_lines = []
        self.feed(life, lines, effect)

    def feed(self, life: o.Life, lines: list[bytes | None], effect: Effect) -> None:
        """Lines (None: EOF) reach the running process's stdin."""
        for line in lines:
            if line is not None and life.tty:
                life.expected_stdout += line.replace(b"\n", b"\r\n")  # the line discipline's echo
            life.pending_lines.append(line)  # type: ignore[arg-type]
        self.consume(life, effect)

    def consume(self, life: o.Life, effect: Effect) -> None:
        """The process (unless stopped) reads what its stdin holds; it may end."""
        if life.state == "running" and not life.stopped:
            kind = life.program.kind
            while life.pending_lines and life.state == "running":
                line = life.pending_lines[0]
                if kind == "sleep":
                    break
                life.pending_lines.pop(0)
                if kind == "cat":
                    if line is None:
                        life.state = "exited"
                    else:
                        life.expected_stdout += line.replace(b"\n", b"\r\n") if life.tty else line
                elif kind == "read2":
                    if line is None:
                        life.state = "exited"
                    else:
                        life.lines_read += 1
                        if life.lines_read == 2:
                            life.state = "exited"
            if life.state == "exited":
                effect.settles = True
                return
        if life.state == "running" and life.create.stdout != "none":
            effect.stdout = life.expected_stdout

    # -- after an operation ----------------------------------------------------------------

    def follow(self, label: str, slot: int, life: o.Life, effect: Effect) -> None:
        """Wait for what the operation set off, then observe it on both sides."""
        if effect.started:
            self.each(f"{label} -> ExecStarted delivered",
                      lambda side: side.current[slot].events.wait_for(ExecStarted, EVENT_TIMEOUT))
        if effect.settles:
            self.settle(label, slot, life)
        elif effect.stdout is not None and life.state == "running" and life.create.stdout != "none":
            expected = (PREFILL if life.create.prefill else b"") + effect.stdout
            reached = self.each(f"{label} -> stdout while running",
                                lambda side: side.wait_stdout(slot, expected) or side.outputs(slot))
            if reached is not True:
                self.fail(f"{label}: neither backend's stdout reached {expected!r} (both hold {reached!r}): "
                          "both lose it, or the test's model is wrong")

    def settle(self, label: str, slot: int, life: o.Life) -> None:
        """The model says the exec has ended: wait on both sides and observe everything."""

        def wait(side: Side) -> tuple[Any, ...]:
            held = side.current[slot]
            result = side.call(lambda: held.exec.wait(SETTLE_TIMEOUT))
            exited_seen = held.events.count(ExecExited)
            if result[0] == "ok" and life.started and exited_seen == 0:
                self.violation(f"{side.name}: wait() returned before ExecExited reached on_event")
            return result

        result = self.each(f"{label} -> wait({SETTLE_TIMEOUT})", wait)
        if result[0] == "raise" and result[1] == DeadlineExceededError.__name__:
            self.fail(f"{label}: the exec must have ended, but neither backend reports it within "
                      f"{SETTLE_TIMEOUT}s: both lose it, or the test's model is wrong")
        if life.started:
            self.each(f"{label} -> ExecExited delivered",
                      lambda side: side.current[slot].events.wait_for(ExecExited, EVENT_TIMEOUT))
        self.each(f"{label} -> events", lambda side: side.current[slot].events.summary())
        self.each(f"{label} -> output", lambda side: side.outputs(slot))

    def finish(self) -> None:
        """Observe the last state of every live exec, then the events and outputs of every life."""
        for slot, life in sorted(self.lives.items()):
            if life.state == "deleted":
                continue
            self.each(f"end: slot {slot} status()",
                      lambda side: side.call(side.current[slot].exec.status))  # noqa: B023
            self.each(f"end: slot {slot} events", lambda side: side.current[slot].events.summary())  # noqa: B023
            if life.state == "exited":
                self.each(f"end: slot {slot} output", lambda side: side.outputs(slot))  # noqa: B023


def _valid_signal(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 64


def _valid_status(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def _valid_dimension(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535


@contextlib.contextmanager
def running(sides: tuple[Side, Side], task_id: str) -> Iterator[Runner]:
    """A runner over two sides; everything made is force-exited, deleted and released after."""
    runner = Runner(sides, task_id)
    problems: list[str] = []
    try:
        yield runner
    finally:
        for side in sides:
            problems += side.close()
    if problems:
        raise AssertionError("cleanup: " + "; ".join(problems))


__all__ = ["Runner", "Side", "running", "ExecError"]
