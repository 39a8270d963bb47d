"""The exec contract: the Python form of hcsshim's ``shimExec`` interface.

Every backend (``LocalExec`` on the host, ``ProxiedExec`` through the agent)
implements :class:`Exec` and passes the same conformance suite. The rules
below are MUST rules, taken from the interface comments of hcsshim's
``shimExec`` (``cmd/containerd-shim-runhcs-v1/exec.go``); where hcsshim's and
containerd's implementations disagree with each other, the interface text
wins: ``kill`` on a CREATED exec is ``FailedPreconditionError`` (as in
containerd; hcsshim's implementation exits it with 1), and ``force_exit`` on a
RUNNING exec records the status given (hcsshim's implementation records the
real code). :mod:`common.rules` enforces the per-state rules for every
backend; CONTRACT.md in the project root says them for users.

All methods are synchronous and thread-safe. ``on_event`` callbacks given at
creation run on a background thread; they may call :meth:`Exec.status` but
must not block.
"""

from __future__ import annotations

import abc

from .state import ExecState, ExecStatus


class Exec(abc.ABC):
    """One process of a task, through its whole life: CREATED -> RUNNING -> EXITED.

    Common rules: after :meth:`delete` every member except :attr:`id` raises
    ``NotFoundError``. Invalid-state errors use exactly
    ``"exec: '{eid}' in task: '{tid}' is in invalid state: '{state}' for {op}"``.
    """

    @property
    @abc.abstractmethod
    def id(self) -> str:
        """The exec id given at creation. Valid in any state, also after delete."""

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """0 before start; the process id after (the guest pid for a proxied exec), kept after exit."""

    @property
    @abc.abstractmethod
    def state(self) -> ExecState:
        """The current state. Valid in any state."""

    @abc.abstractmethod
    def status(self) -> ExecStatus:
        """A snapshot, valid in any state. Until exit: ``exit_status == 255``, ``exited_at is None``."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the process.

        MUST be CREATED, else ``FailedPreconditionError`` (invalid state … for
        start). If the process cannot be started (no such executable, bad cwd,
        bad user, unusable stdio) raise an ``ExecError`` naming the cause; the
        exec then becomes EXITED with ``exit_status`` 1, ``pid`` stays 0, all
        waiters are released, and no event is published. On success publish
        ``ExecStarted`` once.
        """

    @abc.abstractmethod
    def kill(self, signal: int, all: bool = False) -> None:  # noqa: A002 - shimExec's name
        """Deliver ``signal`` to the process (``all=True``: to its whole process group).

        CREATED: ``FailedPreconditionError`` (invalid state … for kill).
        EXITED: ``NotFoundError`` ("exec: '{eid}' in task: '{tid}' not found").
        Then the signal is checked: valid are 1–64, anything else is
        ``InvalidArgumentError``. A process that dies while the signal is in
        flight is not an error.
        """

    @abc.abstractmethod
    def resize_pty(self, width: int, height: int) -> None:
        """Set the terminal size; the process sees SIGWINCH.

        Not a tty: ``FailedPreconditionError`` ("… is not a tty"). A tty that
        is not RUNNING: ignored, no error.
        """

    @abc.abstractmethod
    def close_io(self, stdin: bool = True) -> None:
        """Close the process's stdin once every byte already taken from the source was delivered.

        Valid in any state, idempotent, never raises for a repeat. With a tty,
        stop feeding the pty and write the terminal's EOF character once.
        """

    @abc.abstractmethod
    def wait(self, timeout: float | None = None) -> ExecStatus:
        """Block until EXITED and all output reached its targets; return the final status.

        Valid in any state (on CREATED it blocks through start and exit). Any
        number of concurrent waiters all get the same status; after exit it
        returns at once. A timeout raises ``DeadlineExceededError`` (also a
        ``TimeoutError``).
        """

    @abc.abstractmethod
    def force_exit(self, status: int) -> None:
        """Terminate the process if running, record ``status`` as its exit status, release waiters.

        Valid in any state; does nothing on an EXITED exec; idempotent. A
        started exec publishes ``ExecExited`` with ``status``; one that never
        started publishes nothing.
        """

    @abc.abstractmethod
    def delete(self) -> ExecStatus:
        """Release the exec (containerd's task-level Delete) and return its final status.

        RUNNING: ``FailedPreconditionError`` (invalid state … for delete).
        CREATED: exits with status 0 (no events) and releases waiters. Afterwards
        every member except ``id`` raises ``NotFoundError`` and no record of
        the exec is kept (on the agent either); the id may be reused.
        """
