"""The operations a differential run is made of, and the programs its execs run.

Every operation is a small frozen dataclass whose ``repr`` is what Hypothesis
prints for a failing (shrunk) sequence, so a failure reads as a script. An
operation names a *slot* (one pair of exec ids, the same on both backends); an
operation that makes no sense in the slot's current state (a write to an exec
without a held stdin, an operation on a slot never created) is skipped by the
runner, never turned into something else, so shrinking stays meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: No keyword given: the backend's default (LocalExec and create_exec take the same default).
DEFAULT = "<default>"

#: The exec ids of each slot; a slot reuses its ids after delete.
SLOT_EXEC_IDS = ("e0", "e1")

# Signals that do not end the programs used here (their default action is to ignore or to stop);
# every other valid signal (1–64) kills them with 128+N, SIGINT included (dash re-raises it).
IGNORED_SIGNALS = frozenset({17, 18, 23, 28})  # SIGCHLD, SIGCONT, SIGURG, SIGWINCH
STOP_SIGNAL = 19  # SIGSTOP stops even a process group the kernel considers orphaned
#: SIGTSTP, SIGTTIN, SIGTTOU: they stop a process group that has a parent in its session (a
#: non-tty exec, a group of its supervisor's session); a tty exec leads its own session, an orphaned
#: group, and the kernel discards them.
TTY_DISCARDED_STOP_SIGNALS = frozenset({20, 21, 22})
CONT_SIGNAL = 18


def octal_escapes(data: bytes) -> str:
    """A printf(1) format that prints exactly ``data``: every byte as a \\ooo escape."""
    return "".join(f"\\{byte:03o}" for byte in data)


@dataclass(frozen=True)
class Program:
    """What an exec runs, chosen so that it exits only when the sequence says so.

    ``read2``: reads two lines (or EOF), prints the terminal size, ``out`` and ``err``, exits
    ``code``. ``cat``: copies stdin to stdout until EOF. ``sleep``: ends only by a signal or
    force_exit. ``print``: prints ``out`` and ``err`` and exits ``code`` at once. ``big``: prints
    about 120 KiB at once (flow control). ``surrogate``: a surrogate-escaped argument and
    environment entry (bytes that are not UTF-8, as Python hands them from os.fsdecode).
    ``missing`` / ``badcwd``: start fails.
    """

    kind: str
    code: int = 0
    out: bytes = b""
    err: bytes = b""

    @property
    def reads_stdin(self) -> bool:
        return self.kind in ("read2", "cat")

    @property
    def exits_at_start(self) -> bool:
        return self.kind in ("print", "big", "surrogate")

    @property
    def fails_to_start(self) -> bool:
        return self.kind in ("missing", "badcwd")

    def args_env_cwd(self) -> tuple[list[str], list[str], str]:
        if self.kind == "read2":
            script = (f"read a && read b; stty size 2>/dev/null; printf '{octal_escapes(self.out)}'; "
                      f"printf '{octal_escapes(self.err)}' >&2; exit {self.code}")
            return ["sh", "-c", script], [], "/"
        if self.kind == "cat":
            return ["cat"], [], "/"
        if self.kind == "sleep":
            return ["sleep", "1000"], [], "/"
        if self.kind == "print":
            script = f"printf '{octal_escapes(self.out)}'; printf '{octal_escapes(self.err)}' >&2; exit {self.code}"
            return ["sh", "-c", script], [], "/"
        if self.kind == "big":
            script = 'i=0; while [ $i -lt 1200 ]; do printf "%0100d\\n" $i; i=$((i+1)); done; exit ' + str(self.code)
            return ["sh", "-c", script], [], "/"
        if self.kind == "surrogate":
            return ["printf", "%s", "a\udcffb"], ["PATH=/usr/bin:/bin", "X=\udcfe"], "/"
        if self.kind == "missing":
            return ["/nonexistent/uvmexec-differential"], [], "/"
        if self.kind == "badcwd":
            return ["sh", "-c", "exit 0"], [], "/nonexistent/uvmexec-differential"
        raise ValueError(self.kind)


@dataclass(frozen=True)
class Create:
    """Create an exec in ``slot`` on both backends (again after a delete: id reuse).

    ``stdin``: ``none``, ``fifo`` (a FIFO the test holds open and writes lines to), ``file``
    (a regular file holding ``stdin_data``) or ``bytes`` (a BytesIO of it). ``stdout`` and
    ``stderr``: ``none``, ``path`` (a regular file, which ``prefill`` gives earlier content so
    appending shows) or ``fileobj`` (an unbuffered binary file object).
    """

    slot: int
    program: Program
    tty: bool = False
    stdin: str = "none"
    stdin_data: bytes = b""
    stdout: str = "path"
    stderr: str = "path"
    prefill: bool = False
    console_size: tuple[int, int] | None = None
    drain_timeout: object = DEFAULT
    bundle: str = ""


@dataclass(frozen=True)
class Start:
    slot: int
    stale: bool = False


@dataclass(frozen=True)
class Kill:
    slot: int
    signal: object
    all: bool = False
    stale: bool = False


@dataclass(frozen=True)
class Resize:
    slot: int
    width: object
    height: object
    stale: bool = False


@dataclass(frozen=True)
class CloseIO:
    slot: int
    stdin: bool = True
    stale: bool = False


@dataclass(frozen=True)
class Wait:
    """``wait(timeout)`` with a small timeout: the exec's state is settled, so the outcome is known."""

    slot: int
    timeout: float = 0.0
    stale: bool = False


@dataclass(frozen=True)
class ForceExit:
    slot: int
    status: object
    stale: bool = False


@dataclass(frozen=True)
class Delete:
    slot: int
    stale: bool = False


@dataclass(frozen=True)
class Write:
    """Write one line (``data`` + newline) into the slot's held stdin FIFO."""

    slot: int
    data: bytes = b"x"


@dataclass(frozen=True)
class Observe:
    """Read ``pid`` (set or not), ``state`` and ``status()``."""

    slot: int
    stale: bool = False


@dataclass(frozen=True)
class ObserveAgentStopped:
    """Read ``pid``, ``state`` and ``status()`` while the agent process is stopped (SIGSTOP).

    The contract makes all three valid in any state and the containerd shim serves State from
    what it knows, never from a round trip that can hang on a lost guest: a LocalExec answers at
    once, and so must a ProxiedExec whose agent does not answer.
    """

    slot: int


Op = Create | Start | Kill | Resize | CloseIO | Wait | ForceExit | Delete | Write | Observe | ObserveAgentStopped


@dataclass
class Life:
    """The model of one exec (one incarnation of a slot), the same on both backends."""

    create: Create
    number: int
    state: str = "created"  # created | running | exited | deleted
    started: bool = False
    stdin_closed: bool = False
    pending_lines: list[bytes] = field(default_factory=list)  # written, not yet read by the process
    lines_read: int = 0
    stopped: bool = False
    #: The bytes the process's stdout target must hold while it runs (tty echo, cat's copy);
    #: the runner waits for them before the next operation, so nothing is in flight.
    expected_stdout: bytes = b""

    @property
    def program(self) -> Program:
        return self.create.program

    @property
    def tty(self) -> bool:
        return self.create.tty

    @property
    def stdin_fed(self) -> bool:
        """Whether bytes the test writes reach the process at all."""
        if self.create.stdin != "fifo" or self.stdin_closed:
            return False
        return self.state in ("created", "running")
