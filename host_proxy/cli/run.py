"""``uvmexec run``: a command in a guest (or the private agent) with this terminal's stdio attached.

Promise, as ``docker exec``:

- stdout and stderr stream to ours while the command runs, byte for byte
  (with ``-t`` the pty carries both, on stdout); the command's exit status is
  returned (128+N when a signal N killed it) and becomes uvmexec's exit code;
- ``-i`` streams our stdin and closes the command's stdin on our EOF; without
  it the command reads ``/dev/null``;
- ``-t`` gives it a pty sized like our terminal; with ``-i`` on a tty our
  terminal goes raw (keys, Ctrl-C included, reach the pty as typed) and is
  restored on every exit path; window-size changes (SIGWINCH) are forwarded
  through ``resize_pty``; after SIGCONT raw mode is re-applied;
- signals to uvmexec are forwarded to the command: SIGINT (Ctrl-C without a
  raw terminal), SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2; the third SIGINT
  within 5 s sends SIGKILL instead;
- Ctrl-C always ends the wait: SIGINT (or, on a raw terminal, the interrupt
  key) while the agent is lost, or when it leaves that forward (or, for the
  key, a ping) unanswered for a second, gives up on the command at once —
  one line, exit 130, nothing more asked of the agent. SIGTERM and SIGHUP do
  the same with 128+N;
- a lost agent is said once ("lost ...; waiting up to 30s"), and its return
  too; when the process serving it is known to be gone (the VM's QEMU, the
  private agent) the wait ends at once: one line, exit 255 — as when the
  agent does not come back in time, or comes back restarted;
- when our stdout's reader goes away (``uvmexec run -- yes | head``) the
  command gets SIGPIPE, as it would in a local pipeline;
- output written after the exit is read for ``--drain-timeout`` seconds (0:
  until the streams close), and one line says so if that cut it off;
- the exec is deleted from the agent once it exited, so no record is left —
  unless Ctrl-P Ctrl-Q on a raw terminal detached from it, or ``-d`` started
  it detached (TASK/EXEC printed; its output kept by the agent, see
  :mod:`host_proxy.cli.manage`).

``attach TASK/EXEC`` is the same main loop on an exec that already runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import logging
import os
import pwd
import secrets
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import BinaryIO, cast

from common import ExecState, ProcessSpec, Stdio, User
from common.errors import ExecError, FailedPreconditionError, InvalidArgumentError, NotFoundError
from common.spec import DEFAULT_PATH

from ..proxied_exec import ProxiedExec
from . import connect, users
from .args import MAX_DRAIN_TIMEOUT, is_embedded
from .errors import CliError, Exit, classify, classify_start
from .signals import (
    EVENT_BACK,
    EVENT_BROKEN_PIPE,
    EVENT_DETACH,
    EVENT_EXITED,
    EVENT_GONE,
    EVENT_INTERRUPT_KEY,
    EVENT_LOST,
    EVENT_RESTARTED,
    EVENT_STARTED,
    SignalRelay,
)
from .stdio import FdReader, FdWriter
from .terminal import RawMode, interrupt_key, terminal_fd, window_size

log = logging.getLogger("uvmexec")

FORWARDED = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2}
INTERRUPTS_TO_KILL = 3
INTERRUPT_WINDOW = 5.0
DELETE_WAIT = 5.0
STUCK_AFTER = 1.0  # an agent that leaves a forwarded signal unanswered this long is not answering
DETACH_KEYS = b"\x10\x11"  # Ctrl-P Ctrl-Q, as docker's
LOSS_GRACE = 0.5  # a lost agent is announced after this long, unless its server is found gone first
_CONNECTION_EVENTS = {"lost": EVENT_LOST, "ready": EVENT_BACK, "gone": EVENT_GONE, "restarted": EVENT_RESTARTED}


def default_identity(embedded: bool) -> tuple[User, str]:
    """Without --user: root in a guest (as docker exec); ourselves for the private agent, which
    runs as us (no identity switch needed)."""
    if not embedded:
        return User(0, 0), "/root"
    try:
        home = pwd.getpwuid(os.geteuid()).pw_dir
    except KeyError:
        home = "/"
    return User(os.geteuid(), os.getegid(), tuple(os.getgroups())), home


def check_user_syntax(text: str) -> None:
    user_text, colon, group_text = text.partition(":")
    if not user_text or (colon and not group_text) or ":" in group_text:
        raise CliError(f"--user {text!r}: give USER, UID, USER:GROUP or UID:GID")


def read_env_files(paths: list[str]) -> list[str]:
    """docker's --env-file: K=V or a bare K per line; blank lines and '#' comments skipped; no quoting."""
    entries = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as file:
                lines = file.read().splitlines()
        except FileNotFoundError:
            raise CliError(f"--env-file {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise CliError(f"--env-file {path}: cannot read it: {getattr(error, 'strerror', None) or error}") from None
        for number, line in enumerate(lines, 1):
            text = line.lstrip()
            if not text or text.startswith("#"):
                continue
            name = text.partition("=")[0]
            if not name or any(c.isspace() for c in name):
                raise CliError(f"--env-file {path}:{number}: {line!r} is not NAME=VALUE or NAME")
            entries.append(text)
    return entries


def build_env(entries: list[str], home: str, tty: bool) -> list[str]:
    """PATH, HOME and (with -t) TERM, then ours: a name given with --env replaces the default."""
    env = {"PATH": DEFAULT_PATH, "HOME": home}
    if tty:
        env["TERM"] = os.environ.get("TERM") or "xterm"
    for entry in entries:
        name, equals, value = entry.partition("=")
        if not name:
            raise CliError(f"--env {entry!r}: the name is empty")
        if equals:
            env[name] = value
        elif name in os.environ:  # docker's "--env K": take K from ours, or nothing if unset
            env[name] = os.environ[name]
    return [f"{name}={value}" for name, value in env.items()]


def run_command(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise CliError("run needs a command: uvmexec run [OPTIONS] [--] CMD [ARG...]")
    if args.tty and args.interactive and not args.detach and not os.isatty(0):
        raise CliError("the input device is not a TTY (drop -t, or run from a terminal)")
    args.drain_seconds = _drain_timeout(args)
    embedded = is_embedded(args)
    if args.detach and embedded:
        raise CliError("-d needs an agent that outlives uvmexec: give --guest ENDPOINT or --vm "
                       "(the private agent ends with uvmexec)")
    args.env = read_env_files(args.env_file) + args.env
    if args.user is not None:
        check_user_syntax(args.user)
    user, home = default_identity(embedded)  # --user is looked up where the command runs, once connected
    local_tty = terminal_fd(0, 1) if args.tty else None
    try:
        spec = ProcessSpec(args=command, env=build_env(args.env, home, args.tty), cwd=args.cwd,
                           terminal=args.tty, console_size=window_size(local_tty), user=user)
    except InvalidArgumentError as error:
        raise CliError(str(error).replace("invalid process spec: ", "")) from None
    exec_id = args.exec_id or f"run-{os.getpid()}-{secrets.token_hex(2)}"
    # main() installs the relay and spawns the private agent before importing us; alone, we do it.
    given: SignalRelay | None = getattr(args, "relay", None)
    own_relay = given is None
    relay = SignalRelay().install() if given is None else given
    try:
        with connect.connect(args, allow_embedded=True, debug=args.debug, progress=sys.stderr.isatty(),
                                 private_agent=getattr(args, "private_agent", None)) as target:
            return _run(target, args, spec, exec_id, relay, local_tty)
    finally:
        if own_relay:
            relay.uninstall()


def quiet_library(debug: bool) -> None:
    """Losing the agent, and what it costs, is said by the command line, once, in its own terms."""
    if not debug:
        for name in ("host_proxy.connection", "host_proxy.remote_exec"):
            logging.getLogger(name).setLevel(logging.ERROR)


def stdin_reader(relay: SignalRelay, raw: bool) -> FdReader:
    """Our stdin for the library; on a raw terminal the interrupt key and Ctrl-P Ctrl-Q are events."""
    if not raw:
        return FdReader(0)
    key = interrupt_key(0)  # raw: Ctrl-C is a byte for the guest's terminal
    return FdReader(0, on_data=None if key is None else
                    lambda data: relay.post(EVENT_INTERRUPT_KEY) if key in data else None,
                    detach_keys=DETACH_KEYS, on_detach=lambda: relay.post(EVENT_DETACH))


def _run(target: connect.Target, args: argparse.Namespace, spec: ProcessSpec, exec_id: str,
         relay: SignalRelay, local_tty: int | None) -> int:
    quiet_library(args.debug)
    if args.user is not None:
        accounts = (users.read_local_accounts() if target.embedded is not None
                    else users.read_accounts(target.client, args.task, target.where))
        resolved = users.resolve(args.user, accounts, target.where)
        spec = dataclasses.replace(spec, user=resolved.user, env=build_env(args.env, resolved.home, args.tty))
    if args.detach:
        return _run_detached(target, args, spec, exec_id)
    target.client.watch(lambda what: relay.post(_CONNECTION_EVENTS[what]))
    reader = stdin_reader(relay, raw=args.tty and os.isatty(0)) if args.interactive else None
    out = FdWriter(1, on_broken=lambda: relay.post(EVENT_BROKEN_PIPE))
    err = None if args.tty else FdWriter(2)
    try:
        # FdReader/FdWriter are the file objects Stdio takes (read1/read, write); typed as BinaryIO there.
        stdio = Stdio(stdin=cast(BinaryIO, reader), stdout=cast(BinaryIO, out), stderr=cast(BinaryIO, err))
        made = target.client.create_exec(args.task, exec_id, spec, stdio, drain_timeout=args.drain_seconds)
    except ExecError as error:
        if reader is not None:
            reader.close()
        raise classify(error, target.where) from None
    raw = RawMode(0) if args.tty and args.interactive else None
    abandoned = started = False
    try:
        if raw is not None:
            raw.enter()
            _raw_logging(True)
        relay.relay()
        started = True
        try:
            status = supervise(made, relay, raw, local_tty, spec.console_size, target, start=True,
                               drain_timeout=args.drain_timeout, ref=f"{args.task}/{exec_id}")
        except _GaveUp:
            abandoned = True  # the agent does not answer, or we detached: the exec is left to it
            raise
        return status
    finally:
        if raw is not None:
            raw.restore()
            _raw_logging(False)
        if abandoned:
            target.client.close()  # before stdin ends: a detached command's stdin stays open
        if reader is not None:
            reader.close()  # a worker thread may be blocked reading our stdin: let it go
        if not abandoned and _delete(made, started) and target.embedded is not None:
            target.embedded.idle = True


def supervise(made: ProxiedExec, relay: SignalRelay, raw: RawMode | None, local_tty: int | None,
              size: tuple[int, int] | None, target: connect.Target, *, start: bool, drain_timeout: float,
              ref: str) -> int:
    """Run the main loop until the exec exits (starting it first if ``start``); its exit status."""
    # wait() blocks through the start and the exit (a failed start is an exit with 1, too).
    watcher = threading.Thread(target=_post_exit, args=(made, relay), name="uvmexec-wait", daemon=True)
    watcher.start()
    supervisor = _Supervisor(made, relay, raw, local_tty, size, target, start=start, ref=ref)
    supervisor.drain_timeout = drain_timeout
    try:
        status = supervisor.run()
    except _GaveUp:
        # Closing the client ends our record of the exec: no news after "giving up".
        logging.getLogger("host_proxy.remote_exec").setLevel(logging.ERROR)
        raise
    watcher.join()
    return status


class _Discard:
    """Output nobody here reads (a detached exec's, until the client is gone)."""

    def write(self, data: bytes | memoryview) -> int:
        return len(data)

    def flush(self) -> None:
        pass


def _run_detached(target: connect.Target, args: argparse.Namespace, spec: ProcessSpec, exec_id: str) -> int:
    """Start the command, print TASK/EXEC and leave it to the agent, which keeps its output."""
    keep_open = os.pipe2(os.O_CLOEXEC) if args.interactive else None
    # With -i its stdin stays open on the agent for 'uvmexec attach': a source that never ends.
    reader = FdReader(keep_open[0]) if keep_open is not None else None
    stdio = Stdio(stdin=cast(BinaryIO, reader), stdout=cast(BinaryIO, _Discard()),
                  stderr=None if args.tty else cast(BinaryIO, _Discard()))
    try:
        try:
            made = target.client.create_exec(args.task, exec_id, spec, stdio, drain_timeout=args.drain_seconds,
                                             detached=True)
            made.start()
        except ExecError as error:
            raise classify_start(error, target.where) from None
        print(f"{args.task}/{exec_id}", flush=True)
        target.client.close()  # no client holds it now: the agent keeps its output as a ring
        return Exit.OK
    finally:
        if reader is not None:
            reader.close()
        for fd in keep_open or ():
            os.close(fd)


def _drain_timeout(args: argparse.Namespace) -> float:
    value = args.drain_timeout
    if not 0 <= value <= MAX_DRAIN_TIMEOUT:  # also NaN
        raise CliError(f"--drain-timeout {value:g}: give seconds from 0 (until the streams close) "
                       f"to {MAX_DRAIN_TIMEOUT:g}")
    return value or MAX_DRAIN_TIMEOUT


def _post_exit(made: ProxiedExec, relay: SignalRelay) -> None:
    try:
        made.wait()
    finally:
        relay.post(EVENT_EXITED)


def _delete(made: ProxiedExec, started: bool) -> bool:
    """Leave no record on the agent; an exec still running (we are failing) is left to it.
    True if it was deleted."""
    try:
        if started:
            if made.state is ExecState.RUNNING:
                return False
            # A failed start: the agent has exited it, and this host is recording that right now.
            made.wait(timeout=DELETE_WAIT)
        made.delete()
    except ExecError as error:
        log.debug("deleting %s: %s", made, error)
        return False
    return True


def _raw_logging(raw: bool) -> None:
    # A raw terminal does not turn "\n" into "\r\n": our own messages must.
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.terminator = "\r\n" if raw else "\n"


class _GaveUp(CliError):
    """The person insisted on stopping and the agent does not answer: leave without it."""


class _Supervisor:
    """The main loop while the command runs: turns events into requests to the agent.

    Requests go out on one worker thread, in order, so that a request stuck on
    an unreachable agent never stops this loop from hearing the next Ctrl-C.
    """

    def __init__(self, made: ProxiedExec, relay: SignalRelay, raw: RawMode | None, local_tty: int | None,
                 initial_size: tuple[int, int] | None, target: connect.Target, *, start: bool = True,
                 ref: str = "") -> None:
        self.made = made
        self.ref = ref
        self.starting = start
        self.relay = relay
        self.raw = raw
        self.local_tty = local_tty
        self.size = initial_size
        self.target = target
        self.where = target.where
        self.interrupts: list[float] = []
        self.requests = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="uvmexec-forward")
        # Requests that must be answered in time, or we give up: (deadline, request, exit code, why).
        self.watchdogs: list[tuple[float, concurrent.futures.Future[None], int, str]] = []
        self.finished = False
        self.lost = False
        self.announce_loss_at: float | None = None
        self.loss_announced = False
        self.ended_by = ""  # why the agent ended the exec with 255 (it stayed away, or restarted)
        self.drain_timeout = 0.0
        self.start: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.exited = False

    def run(self) -> int:
        """Start the command and supervise it until it exits; its exit status."""
        gone_fd = self.target.server_gone_fd
        try:
            if self.starting:
                # Started on the worker, as any request: the loop hears Ctrl-C while the start is out
                # (its reply may be lost with the agent). Requests submitted later go after it.
                self.start = self.requests.submit(self.made.start)
                self.start.add_done_callback(lambda _: self.relay.post(EVENT_STARTED))
            else:
                self.start.set_result(None)  # attached: it started long ago
            if self.local_tty is not None:
                self._resize()  # the window may have changed while the exec was being created
            poller = select.poll()
            poller.register(self.relay.fd, select.POLLIN)
            if gone_fd is not None:
                poller.register(gone_fd, select.POLLIN)
            while True:
                # PEP 475: retried after signal handlers run; the wakeup fd wakes it.
                ready = {fd for fd, _ in poller.poll(self._poll_timeout())}
                for event in self.relay.take():
                    if event == EVENT_EXITED:
                        self.exited = True
                    elif event == EVENT_STARTED:
                        self._check_start()
                    else:
                        self._on_event(event)
                if self.exited and self.start.done():
                    return self._exit_status()
                if gone_fd in ready:
                    if self.made.state is ExecState.EXITED and self.start.done():
                        return self._exit_status()
                    raise _GaveUp(f"{self.target.server} stopped while the command ran ({self.where}): "
                                  "the command is gone with it, its exit status unknown", Exit.LOST)
                self._check_deadlines()
        finally:
            # A request still stuck on a lost agent fails when the client closes, right after this;
            # that failure is no news to anyone.
            self.finished = True
            self.requests.shutdown(wait=False, cancel_futures=True)

    def _check_start(self) -> None:
        error = self.start.exception()
        if isinstance(error, ExecError):
            raise classify_start(error, self.where)
        if error is not None:
            raise error

    def _exit_status(self) -> int:
        self._check_start()
        status = self.made.wait().exit_status
        if self.ended_by and status == 255:
            raise _GaveUp(self.ended_by, Exit.LOST)
        if self.made.output_cut:
            log.warning("output written after the command exited was cut off after --drain-timeout %gs "
                        "(something it left running kept it open; --drain-timeout 0 waits until it closes)",
                        self.drain_timeout)
        return status

    def _poll_timeout(self) -> int | None:
        deadlines = [deadline for deadline, *_ in self.watchdogs]
        if self.announce_loss_at is not None:
            deadlines.append(self.announce_loss_at)
        if not deadlines:
            return None
        return max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)

    def _check_deadlines(self) -> None:
        now = time.monotonic()
        for deadline, request, code, why in list(self.watchdogs):
            if request.done():
                self.watchdogs.remove((deadline, request, code, why))
            elif now >= deadline:
                raise _GaveUp(f"{why}, and {self.where} does not answer: giving up on the command "
                              "(it may still run there)", code)
        if self.announce_loss_at is not None and now >= self.announce_loss_at:
            self.announce_loss_at = None
            if self.lost:
                self.loss_announced = True
                log.warning("lost %s; waiting up to %gs for it to come back (Ctrl-C gives up)",
                            self.where, self.target.client.reconnect_timeout)

    def _on_event(self, event: int) -> None:
        if event == EVENT_BROKEN_PIPE:
            self._submit(self._kill, signal.SIGPIPE)
        elif event == EVENT_LOST:
            self.lost = True
            if not self.loss_announced:
                self.announce_loss_at = time.monotonic() + LOSS_GRACE
        elif event == EVENT_BACK:
            self.lost = False
            self.announce_loss_at = None
            if self.loss_announced:
                self.loss_announced = False
                log.warning("%s is back", self.where)
        elif event == EVENT_GONE:
            self.ended_by = (f"{self.where} did not come back within {self.target.client.reconnect_timeout:g}s: "
                             "giving up on the command (it may still run there)")
        elif event == EVENT_RESTARTED:
            self.ended_by = f"{self.where} restarted while the command ran: the command is gone"
        elif event == EVENT_DETACH:
            raise _GaveUp(f"detached from {self.ref}: it runs on; 'uvmexec attach {self.ref}' comes back "
                          "to it", Exit.OK)
        elif event == EVENT_INTERRUPT_KEY:
            self._ending(self._submit(self._ping), Exit.INTERRUPTED, "interrupted")
        elif event == signal.SIGWINCH:
            self._resize()
        elif event == signal.SIGCONT:
            if self.raw is not None:
                self.raw.reenter()
            self._resize()
        elif event == signal.SIGINT:
            now = time.monotonic()
            self.interrupts = [t for t in self.interrupts if now - t < INTERRUPT_WINDOW] + [now]
            if len(self.interrupts) < INTERRUPTS_TO_KILL:
                request = self._submit(self._kill, signal.SIGINT)
            else:
                if not self.lost:
                    log.warning("interrupted %d times: killing the command (SIGKILL)", len(self.interrupts))
                request = self._submit(self._kill, signal.SIGKILL)
            self._ending(request, Exit.INTERRUPTED, "interrupted")
        elif event in (signal.SIGTERM, signal.SIGHUP):
            self._ending(self._submit(self._kill, event), 128 + event, f"got {signal.Signals(event).name}")
        elif event in FORWARDED:
            self._submit(self._kill, event)

    def _ending(self, request: concurrent.futures.Future[None], code: int, why: str) -> None:
        """A request that asks the command to end (or checks the agent after the interrupt key):
        if the agent is lost, or leaves it unanswered for STUCK_AFTER, stop waiting for it.
        (While the start is still out, the request waits behind it: the start is watched too.)"""
        if self.lost:
            raise _GaveUp(f"{why} while {self.where} is lost: giving up on the command (it may still run there)",
                          code)
        self.watchdogs.append((time.monotonic() + STUCK_AFTER, request, code, why))

    def _submit(self, request: Callable[..., None], *args: object) -> concurrent.futures.Future[None]:
        return self.requests.submit(request, *args)

    def _ping(self) -> None:
        try:
            self.target.client.ping()
        except ExecError as error:
            log.debug("ping: %s", error)

    def _kill(self, signum: int) -> None:
        try:
            self.made.kill(signum)
        except (NotFoundError, FailedPreconditionError):
            pass  # it exited meanwhile: its exit event is on the way
        except ExecError as error:
            if not self.finished:
                log.warning("cannot forward %s: %s", signal.Signals(signum).name, error)

    def _resize(self) -> None:
        size = window_size(self.local_tty)
        if size is None or size == self.size:
            return
        self.size = size
        self._submit(self._send_size, size)

    def _send_size(self, size: tuple[int, int]) -> None:
        rows, cols = size
        try:
            self.made.resize_pty(cols, rows)  # width first
        except (NotFoundError, FailedPreconditionError):
            pass
        except ExecError as error:
            if not self.finished:
                log.warning("cannot resize the terminal: %s", error)


__all__ = ["Exit", "run_command"]


def attach_command(args: argparse.Namespace) -> int:
    """``uvmexec attach TASK/EXEC``: take over a running exec's stdio, like ``run`` from then on."""
    from .ps import find

    relay = SignalRelay().install()
    try:
        with connect.connect(args, allow_embedded=False, debug=args.debug) as target:
            quiet_library(args.debug)
            try:
                info = find(target.client.list_exec_info(), args.exec_ref, target.where)
            except ExecError as error:
                raise classify(error, target.where) from None
            if info is None:
                raise CliError(f"no exec {args.exec_ref!r} on {target.where} (see 'uvmexec ps')")
            task, exec_id = info.status.id, info.status.exec_id
            terminal = info.status.terminal
            local_tty = terminal_fd(0, 1) if terminal else None
            raw_wanted = terminal and not args.no_stdin and os.isatty(0)
            target.client.watch(lambda what: relay.post(_CONNECTION_EVENTS[what]))
            reader = None if args.no_stdin else stdin_reader(relay, raw=raw_wanted)
            out = FdWriter(1, on_broken=lambda: relay.post(EVENT_BROKEN_PIPE))
            err = None if terminal else FdWriter(2)
            stdio = Stdio(stdin=cast(BinaryIO, reader), stdout=cast(BinaryIO, out), stderr=cast(BinaryIO, err))
            try:
                made = target.client.attach(task, exec_id, stdio)
            except ExecError as error:
                if reader is not None:
                    reader.close()
                raise classify(error, target.where) from None
            raw = RawMode(0) if raw_wanted else None
            try:
                if raw is not None:
                    raw.enter()
                    _raw_logging(True)
                relay.relay()
                return supervise(made, relay, raw, local_tty, None, target, start=False,
                                 drain_timeout=0.0, ref=f"{task}/{exec_id}")
            finally:
                if raw is not None:
                    raw.restore()
                    _raw_logging(False)
                target.client.close()  # before stdin ends: a command we leave keeps its stdin open
                if reader is not None:
                    reader.close()
    finally:
        relay.relay()  # a signal during clean-up must not interrupt it
        relay.uninstall()
