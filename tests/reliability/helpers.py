"""What the reliability tests look at: an agent's processes and counters, and process trees to clean up.

Everything here waits on something that signals (a pidfd, a reply from the
agent, a socket) where something does. A request to the agent is itself a
wait: the agent answers only after its loop handled what came before. The
exception is what the agent lets go of after it answered and announces to
nobody (fds, reaped orphans, an exit while no client is attached): that is
read again, a short pause apart, until it is right or a deadline passes (see
:func:`wait_for_footprint`).
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from common import ProcessSpec, Stdio
from common.errors import ExecError
from host_proxy import AgentClient
from host_proxy.loop_thread import shared_loop
from tests.support.agent import AgentProcess, Keys
from tests.support.procs import children, zombies
from tests.support.relay import TcpRelay

T = TypeVar("T")

#: How long a "nothing left behind" check gives the agent to let go: a loaded CI machine, not an
#: expected duration (a real leak fails after it).
RELEASE_TIMEOUT = 20.0
#: The pause between two looks at an agent that is letting go of something (see wait_for_footprint).
POLL_INTERVAL = 0.05

# -- processes ---------------------------------------------------------------------------------


def processes_of_uid(uid: int) -> list[int]:
    """Live processes whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


# -- agents ----------------------------------------------------------------------------------


def connect_tcp(endpoint: str, keys: Keys, **options: Any) -> AgentClient:
    """An AgentClient over CURVE tcp with the test key set."""
    options.setdefault("timeout", 10)
    return AgentClient.connect(endpoint, server_key=keys.agent_public, client_key=keys.client_secret, **options)


@dataclass
class Footprint:
    """What an agent holds, as its own counters and /proc tell."""

    fds: int
    threads: int
    rss_kib: int
    execs: int
    running: int
    watched: int
    held_output_bytes: int
    zombies: list[int]
    children: int

    def __str__(self) -> str:
        return (f"fds={self.fds} threads={self.threads} rss={self.rss_kib}KiB execs={self.execs} "
                f"running={self.running} watched={self.watched} held={self.held_output_bytes}B "
                f"zombies={len(self.zombies)} children={self.children}")


def settle(client: AgentClient) -> None:
    """Two round trips: whatever the agent had pending (a SIGCHLD, an exit) has been handled.

    The first reply may be sent in the same loop turn that queued a signal
    handler; the second request is read in a later turn, after it ran.
    """
    client.ping()
    client.ping()


def warm_up(client: AgentClient) -> None:
    """Make the agent allocate what it allocates once: pyzmq starts its zero-copy garbage
    collector (a thread and a context: three threads, seven fds) at the first big output chunk."""
    out = io.BytesIO()
    made = client.create_exec("warm-up", "big-output", ProcessSpec(args=["head", "-c", "1048576", "/dev/zero"]),
                              Stdio(stdin=io.BytesIO(b"x" * 300_000), stdout=out))
    made.start()
    assert made.wait(timeout=60).exit_status == 0
    assert len(out.getvalue()) == 1048576
    made.delete()


def footprint(client: AgentClient, agent_pid: int) -> Footprint:
    settle(client)
    stats = client.stats()
    return Footprint(
        fds=stats["fds"], threads=stats["threads"], rss_kib=stats["rss_kib"], execs=stats["execs"],
        running=stats["running"], watched=stats["watched"], held_output_bytes=stats["held_output_bytes"],
        zombies=zombies(agent_pid), children=len(children(agent_pid)),
    )


def _poll(look: Callable[[], T], done: Callable[[T], bool], timeout: float) -> T:
    """``look()`` until ``done`` holds for what it saw or ``timeout`` passed; the last look."""
    deadline = time.monotonic() + timeout
    while True:
        seen = look()
        if done(seen) or time.monotonic() >= deadline:
            return seen
        time.sleep(POLL_INTERVAL)  # nothing to wait on: see wait_for_footprint


def wait_for_footprint(client: AgentClient, agent_pid: int, done: Callable[[Footprint], bool],
                       timeout: float = RELEASE_TIMEOUT) -> Footprint:
    """The agent's footprint once ``done(footprint)`` holds, or the last one seen at the deadline
    (the caller asserts on it, so a real leak fails with the figures).

    Why poll: the agent lets go of some things after the request that ended them was answered, and
    tells nobody. A force-exited exec's supervise task reaps the process and closes its pidfd and
    pipes some loop turns after ``force_exit`` and ``delete`` returned (part of it on the agent's
    executor threads), while ``execs``, ``running`` and ``watched`` are already 0; libzmq's I/O
    thread closes a gone client's connection when it gets to it; a killed orphan is reaped when
    its SIGCHLD is handled. No reply, event or fd of ours marks that moment — only the counts
    themselves, read from outside (``stats``, /proc). So they are read until right, a short pause
    apart (a tight loop of requests would take the CPU from the agent doing the closing). A single
    look saw one fd too many on a loaded machine.
    """
    return _poll(lambda: footprint(client, agent_pid), done, timeout)


def _leaks(now: Footprint, baseline: Footprint, rss_slack: float | None) -> list[str]:
    """What ``now`` holds beyond ``baseline``."""
    found = []
    if now.zombies:
        found.append("zombies left under the agent")
    if now.children:
        found.append("processes left under the agent")
    if (now.execs, now.running, now.watched, now.held_output_bytes) != (0, 0, 0, 0):
        found.append("exec records or held output left")
    if now.fds > baseline.fds:
        found.append("fds grew")
    if now.threads > baseline.threads:
        found.append("threads grew")
    if rss_slack is not None and now.rss_kib > baseline.rss_kib * (1 + rss_slack):
        found.append("RSS grew")
    return found


def assert_clean(client: AgentClient, agent_pid: int, baseline: Footprint, *, rss_slack: float | None = None,
                 timeout: float = RELEASE_TIMEOUT) -> Footprint:
    """The agent holds nothing more than at ``baseline``: no exec, child, zombie, fd or thread more
    (and RSS within ``rss_slack``), once it has let go of what it was still closing (at most
    ``timeout``; see :func:`wait_for_footprint`)."""
    now = wait_for_footprint(client, agent_pid, lambda seen: not _leaks(seen, baseline, rss_slack), timeout)
    leaks = _leaks(now, baseline, rss_slack)
    assert not leaks, f"{', '.join(leaks)} ({timeout}s after the work ended): {baseline} -> {now}"
    return now


def drain_events(timeout: float = 30.0) -> None:
    """Wait until every ``on_event`` callback queued so far has run: the dispatch thread runs them
    in order, so a marker queued now runs after all of them."""
    done = threading.Event()
    shared_loop().dispatch(lambda _: done.set(), None)
    assert done.wait(timeout), "the event dispatch thread is stuck"


def poll_agent(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Ask the agent until ``condition()`` (which must make a request) holds.

    For a state the agent reaches without telling this client (an exit while no client is
    attached, or while its replies are lost): polled a short pause apart, as wait_for_footprint
    explains.
    """
    if not _poll(condition, bool, timeout):
        raise AssertionError(f"{what} not reached within {timeout}s")


def exec_state(client: AgentClient, task_id: str, exec_id: str) -> str | None:
    """The agent's own view of an exec (``None`` if it does not track it)."""
    try:
        for status in client.list_execs():
            if (status.id, status.exec_id) == (task_id, exec_id):
                return status.status.value
    except ExecError:
        return None
    return None


# -- a relay that can lose one direction -------------------------------------------------------


class FreezableRelay(TcpRelay):
    """A :class:`TcpRelay` that can also lose everything the agent sends, until the next cut.

    ``freeze()`` models the moment a link dies: requests still reach the agent
    but its replies and events are lost. ``freeze_after_handshake()`` does the
    same to the next connection once its ZMTP handshake is through (plaintext
    agents only: it reads the NULL mechanism's greeting and READY command), so
    the first message after a reconnect — the client's hello — goes unanswered.
    Call ``cut()`` afterwards (it also thaws): a stream that lost bytes is no
    longer intact.
    """

    GREETING = 64  # ZMTP 3 greeting: signature, version, mechanism, as-server, filler

    def __init__(self, target: tuple[str, int]) -> None:
        self.frozen = False
        self.swallowed = 0
        self.swallowing = threading.Event()
        self._arm_next = False
        self._handshakes: dict[socket.socket, bytearray] = {}
        self._deaf: set[socket.socket] = set()
        self.upstream_bytes = 0
        self._upstream_moved = threading.Condition()
        super().__init__(target)

    def freeze(self) -> None:
        self.frozen = True

    def freeze_after_handshake(self) -> None:
        self.swallowing.clear()
        self._arm_next = True

    def cut(self) -> None:
        """Reset every connection and thaw (an armed ``freeze_after_handshake`` stays armed)."""
        super().cut()
        self.frozen = False
        self._handshakes.clear()
        self._deaf.clear()

    def _accept(self) -> None:
        before = set(self._pairs)
        super()._accept()
        for sock in set(self._pairs) - before:
            if self._arm_next and _peer_port(sock) == self.target[1]:
                self._arm_next = False
                self._handshakes[sock] = bytearray()

    def wait_upstream(self, beyond: int, timeout: float = 10.0) -> bool:
        """Wait until more than ``beyond`` bytes went from clients to the agent in all."""
        with self._upstream_moved:
            return self._upstream_moved.wait_for(lambda: self.upstream_bytes > beyond, timeout)

    def _moved(self, sock: socket.socket, peer: socket.socket, data: bytes) -> None:
        if _peer_port(peer) == self.target[1]:  # from a client to the agent
            with self._upstream_moved:
                self.upstream_bytes += len(data)
                self._upstream_moved.notify_all()

    def _forward(self, sock: socket.socket) -> None:
        from_agent = sock in self._pairs and _peer_port(sock) == self.target[1]
        if from_agent and (self.frozen or sock in self._deaf or sock in self._handshakes):
            try:
                data = sock.recv(262144)
            except OSError:
                data = b""
            if data:
                self._pass_handshake(sock, data)
                return
        super()._forward(sock)  # (at EOF or an error this reads nothing and closes the pair)

    def _pass_handshake(self, sock: socket.socket, data: bytes) -> None:
        """Forward a connection's greeting and first command (READY); swallow what follows."""
        seen = self._handshakes.get(sock)
        if seen is None:
            self._swallow(data)
            return
        start = len(seen)
        seen += data
        end = _handshake_end(seen, self.GREETING)
        if end is None:
            self._pairs[sock].sendall(data)
            return
        if end > start:
            self._pairs[sock].sendall(bytes(seen[start:end]))
        del self._handshakes[sock]
        self._deaf.add(sock)
        if len(seen) > end:
            self._swallow(bytes(seen[end:]))

    def _swallow(self, data: bytes) -> None:
        self.swallowed += len(data)  # from the agent: lost
        self.swallowing.set()


def wait_agent_read_all(relay: FreezableRelay, timeout: float = 10.0) -> None:
    """Until the agent's kernel holds no unread byte from the relay: whatever the relay forwarded,
    the agent has taken in (a reset could otherwise discard it). Reads /proc/net/tcp."""
    agent_port = relay.target[1]
    ports = {sock.getsockname()[1] for sock in list(relay._pairs) if _peer_port(sock) == agent_port}
    deadline = time.monotonic() + timeout
    while True:
        unread = 0
        with open("/proc/net/tcp") as table:
            for line in table.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].split(":")[1], 16)
                remote_port = int(fields[2].split(":")[1], 16)
                if local_port == agent_port and remote_port in ports:
                    unread += int(fields[4].split(":")[1], 16)
        if unread == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the agent left {unread} bytes unread for {timeout}s")


def _handshake_end(seen: bytearray, greeting: int) -> int | None:
    """Where the first ZMTP command after the greeting ends, once enough bytes are seen."""
    if len(seen) < greeting + 2:
        return None
    flags = seen[greeting]
    if flags & 0x02:  # long frame: 8-byte size
        if len(seen) < greeting + 9:
            return None
        return greeting + 9 + int.from_bytes(seen[greeting + 1:greeting + 9], "big")
    return greeting + 2 + seen[greeting + 1]


def _peer_port(sock: socket.socket) -> int:
    try:
        return sock.getpeername()[1]
    except OSError:
        return -1


def limited_agent(listen: list[str], limits: dict[str, tuple[int, int]]) -> AgentProcess:
    """An agent started under given resource limits (``prlimit``), as a guest's init would start it."""
    return AgentProcess(listen, prefix=["prlimit", *(f"--{name}={soft}:{hard}" for name, (soft, hard) in limits.items())])
