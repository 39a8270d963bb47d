"""``AgentClient``: a connection to a uvmexec agent, and the execs made through it.

Thread-safe and synchronous: every call is handed to the shared background
loop (see :mod:`host_proxy.loop_thread`), which owns the ZeroMQ socket.
Endpoints: ``ipc:///path`` (a socket in a private directory, checked before connecting:
see :mod:`common.trust`), ``tcp://host:port``
(CURVE: the agent's public key is pinned, ours is presented; plaintext only
with ``insecure=True``), and ``ssh://user@host:port`` (an SSH tunnel made with
paramiko; see :mod:`host_proxy.ssh_tunnel`).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq.auth

from common import protocol
from common.errors import (
    DeadlineExceededError,
    ExecError,
    InvalidArgumentError,
    UnavailableError,
    already_exists_error,
)
from common.spec import ProcessSpec, Stdio
from common.state import ExecEvent, ExecStatus
from common.supervisor import DEFAULT_DRAIN_TIMEOUT
from common.task import Mount
from common.trust import UntrustedPathError, check_ipc_endpoint, require_secret, trusted_file

from .agent_link import AgentLink, Request
from .connection import Connection, CurveKeys
from .direct import FallBack
from .loop_thread import LoopThread, shared_loop
from .proxied_exec import ProxiedExec
from .proxied_task import ProxiedTask
from .remote_exec import RemoteExec
from .shared_bundle import BundleShare, SharedBundle
from .stdio import StdioEnds, check_creation, check_exec_ids, check_task_creation, open_stdio


def check_ipc(endpoint: str) -> None:
    """Refuse an ipc endpoint another local user could have bound (see :mod:`common.trust`)."""
    try:
        check_ipc_endpoint(endpoint)
    except UntrustedPathError as error:
        raise InvalidArgumentError(str(error)) from None


def load_curve_keys(server_key: str | os.PathLike[str], client_key: str | os.PathLike[str]) -> CurveKeys:
    """The agent's public certificate and our secret certificate (pyzmq ``zmq.auth`` files), each
    on a path only root or we can change, the secret readable by nobody else (see :mod:`common.trust`)."""
    server_public, _ = _read_certificate(server_key, "server_key", secret=False)
    client_public, client_secret = _read_certificate(client_key, "client_key", secret=True)
    return CurveKeys(server_public, client_public, client_secret)


def _read_certificate(path: str | os.PathLike[str], what: str, *, secret: bool) -> tuple[bytes, bytes]:
    """``(public, secret)`` from a certificate file (``secret`` is b"" unless asked for);
    InvalidArgumentError starting with ``what:`` if the file cannot be used."""
    try:
        real, status = trusted_file(path, what=what, secret=secret)
        public, secret_key = zmq.auth.load_certificate(real)
    except UntrustedPathError as error:
        raise InvalidArgumentError(str(error)) from None
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(f"{what}: cannot read {os.fspath(path)!r}: {error}") from None
    if not secret:
        return public, b""
    if secret_key is None:
        raise InvalidArgumentError(f"{what}: {os.fspath(path)!r} holds no secret key (give *.key_secret)")
    try:
        require_secret(real, status, what=what)
    except UntrustedPathError as error:
        raise InvalidArgumentError(str(error)) from None
    return public, secret_key


@dataclass(frozen=True)
class ExecInfo:
    """An exec as ``list`` shows it: its status, command line (cut if long) and creation time."""

    status: ExecStatus
    args: tuple[str, ...]
    created_at: datetime.datetime | None


@dataclass(frozen=True)
class OutputPage:
    """Output the agent holds for one stream: chunks ``first`` to ``last`` (-1 when none), joined.

    ``first`` beyond the ``after`` asked for + 1 means older output is no longer held;
    ``dropped`` counts the bytes a detached exec's ring overwrote unread."""

    data: bytes
    first: int
    last: int
    more: bool
    dropped: int


class AgentClient(AgentLink):
    """One connection to an agent; makes and attaches :class:`ProxiedExec`\\ s. Use as a context manager.

    It is also each of its execs' :class:`~host_proxy.agent_link.AgentLink`: the one request
    path (:meth:`send`) that every request of the client takes.
    """

    def __init__(self, connection: Connection, loop_thread: LoopThread, tunnel: Any = None) -> None:
        self._conn = connection
        self._loop = loop_thread
        self._tunnel = tunnel
        self._closed = False
        # (task id, exec id) -> its exec, or None while being created: ids are unique per client.
        self._live: dict[tuple[str, str], RemoteExec | None] = {}
        self._live_lock = threading.Lock()

    @classmethod
    def connect(
        cls,
        endpoint: str,
        *,
        server_key: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        ssh_key: str | os.PathLike[str] | None = None,
        known_hosts: str | os.PathLike[str] | None = None,
        timeout: float = 10.0,
        reconnect_timeout: float = 30.0,
        direct: bool = True,
    ) -> AgentClient:
        """Connect and say hello. A refused, unreachable or unauthenticated agent raises
        ``UnavailableError`` within ``timeout``; one that shares no protocol version
        raises ``UnimplementedError``.

        ``direct=False`` sends every request through the one connection, never opening the
        request-only sockets of :mod:`host_proxy.direct`: each of those costs a handshake
        (a CURVE one over tcp), which a client that sends a request or two never wins back."""
        if not isinstance(endpoint, str):
            raise InvalidArgumentError(f"endpoint must be a string, not {type(endpoint).__name__}")
        curve = None
        if server_key is not None or client_key is not None:
            if server_key is None or client_key is None:
                raise InvalidArgumentError("server_key and client_key go together")
            curve = load_curve_keys(server_key, client_key)
        tunnel = None
        zmq_endpoint = endpoint
        if endpoint.startswith("ssh://"):
            from .ssh_endpoint import parse_ssh_endpoint
            from .ssh_tunnel import SshTunnel

            if ssh_key is None or known_hosts is None:
                raise InvalidArgumentError("ssh:// endpoints need ssh_key and known_hosts")
            tunnel = SshTunnel(parse_ssh_endpoint(endpoint), ssh_key=ssh_key, known_hosts=known_hosts,
                               timeout=timeout)
            zmq_endpoint = tunnel.endpoint
        elif endpoint.startswith("tcp://"):
            if curve is None and not insecure:
                raise InvalidArgumentError(
                    f"{endpoint}: tcp needs server_key and client_key (CURVE), or insecure=True"
                )
        elif endpoint.startswith("ipc://"):
            check_ipc(endpoint)  # before connecting: whoever could swap the socket gets nothing
        else:
            raise InvalidArgumentError(f"unsupported endpoint {endpoint!r}: use ipc://, tcp:// or ssh://")
        loop_thread = shared_loop()
        connection = Connection(loop_thread, zmq_endpoint, display=endpoint, curve=curve, timeout=timeout,
                                reconnect_timeout=reconnect_timeout)
        if not direct:
            connection.direct.close()  # no socket made yet: every request falls back to the loop
        opened: concurrent.futures.Future[dict[str, Any]] = concurrent.futures.Future()
        loop_thread.loop.call_soon_threadsafe(connection.open, opened)
        try:
            opened.result(timeout + 5)
        except BaseException:
            loop_thread.loop.call_soon_threadsafe(connection.close)
            if tunnel is not None:
                tunnel.close()
            raise
        return cls(connection, loop_thread, tunnel)

    # -- public API ---------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return self._conn.display

    # -- the link: the one request path ----------------------------------------------

    @property
    def answer_timeout(self) -> float:
        return self._conn.timeout

    @property
    def reconnect_timeout(self) -> float:
        """How long a lost agent is waited for before the execs not yet exited end with 255."""
        return self._conn.reconnect_timeout

    def new_request_id(self) -> int:
        return self._conn.next_request_id()

    def send(self, requests: Sequence[Request]) -> list[Any]:
        """See :meth:`AgentLink.send`. Requests go on the caller's own thread through a direct
        socket when one is free (see :mod:`host_proxy.direct`), else — or if that cannot answer —
        through the loop's connection under the same ids: an agent that already did one answers
        it from its reply cache. Requests with ``on_result`` always go through the loop."""
        conn = self._conn
        request_ids = [request.request_id if request.request_id is not None else conn.next_request_id()
                       for request in requests]
        if not any(request.on_result is not None for request in requests):
            try:
                return conn.direct.request_many(
                    [(request_id, (request.op, request.fields))
                     for request_id, request in zip(request_ids, requests, strict=True)])
            except FallBack:
                pass
        futures: list[concurrent.futures.Future[Any]] = [concurrent.futures.Future() for _ in requests]

        def send_all() -> None:
            for request_id, request, future in zip(request_ids, requests, futures, strict=True):
                conn.request(request.op, request.fields, future, False, request.on_result, request_id)

        self._loop.loop.call_soon_threadsafe(send_all)
        # The connection fails every request on its own deadlines; this only guards a stuck loop.
        stuck_after = conn.timeout + conn.reconnect_timeout + 30
        results: list[Any] = []
        for request, future in zip(requests, futures, strict=True):
            try:
                results.append(future.result(stuck_after))
            except ExecError as error:
                results.append(error)
            except concurrent.futures.TimeoutError:
                results.append(UnavailableError(f"no answer to {request.op!r} from the agent at {conn.display}"))
        return results

    def release(self, record: RemoteExec) -> None:
        """After delete (or a refused create): the ids are free again, and the loop drops what it
        held for the exec — unless the agent may still hold it after a create that got no answer:
        then it stays routed until the agent is asked to end it."""
        record.deleted = True
        with self._live_lock:
            if self._live.get((record.task_id, record.exec_id)) is record:
                del self._live[(record.task_id, record.exec_id)]
        if not record.abandoned:
            self._loop.loop.call_soon_threadsafe(self._conn.forget, record)

    @property
    def boot_id(self) -> str:
        """The agent's boot id: it changes when the agent restarts."""
        return self._conn.boot_id or ""

    @property
    def agent_info(self) -> dict[str, Any]:
        """What the agent said in ``hello`` (version, features, window, pid)."""
        return dict(self._conn.agent_info)

    @property
    def failure(self) -> str | None:
        """Why this client stopped talking to its agent for good, or None. It does so when the
        agent breaks a bound every agent is held to (a message over the size limits, output past
        the credit window, a window over the limit): its execs then ended with 255, and every
        request fails with this reason (SECURITY.md, "The host side")."""
        return self._conn.failure

    @property
    def reconnects(self) -> int:
        """How many times the connection came back after a loss (or found the agent restarted)."""
        return self._conn.reconnects

    def watch(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(what)`` when the connection changes: ``"lost"`` (the agent stopped
        answering; the client waits up to ``reconnect_timeout`` for it), ``"ready"`` (it is back,
        resynced), ``"restarted"`` (it came back as a new agent: its execs ended with 255) or
        ``"gone"`` (it stayed away too long: every exec not yet exited ends with 255). Each
        ``"gone"``/``"restarted"`` comes before the exits it causes. The callback runs on the
        client's loop thread and must not block."""
        self._loop.call(self._conn.watchers.append, callback)

    def wait_ready(self, timeout: float) -> None:
        """Return once the agent answers on this connection: at once while it does; after a loss,
        when it is back (resynced, or found restarted with its execs ended).

        Raises DeadlineExceededError after ``timeout`` seconds, UnavailableError if the client
        is closed meanwhile.
        """
        conn = self._conn
        with conn.settled:
            if not conn.settled.wait_for(lambda: conn.state in ("ready", "closed"), timeout):
                raise DeadlineExceededError(f"the agent at {conn.display} did not come back within {timeout:g}s")
        if conn.state == "closed":
            raise UnavailableError(f"the client for {conn.display} is closed")

    def create_exec(
        self,
        task_id: str,
        exec_id: str,
        spec: ProcessSpec,
        stdio: Stdio | None = None,
        *,
        bundle: str = "",
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        on_event: Callable[[ExecEvent], None] | None = None,
        in_task: bool = False,
        detached: bool = False,
    ) -> ProxiedExec:
        """Create an exec on the agent (state CREATED); its stdio targets are on this host.

        It is a process of the agent's machine itself (hcsshim's ``ExecInHost``), or with
        ``in_task=True`` one inside the container of task ``task_id`` (made by
        :meth:`create_task`; :meth:`ProxiedTask.create_exec` is the way to ask for one).

        ``detached``: the exec is meant to outlive this client. Once no client holds it (this
        one closed), the agent keeps its last output as a ring of one window per stream,
        dropping the oldest rather than ever blocking the process, for :meth:`read_output`
        and :meth:`attach`."""
        stdio, drain_timeout = check_creation(task_id, exec_id, spec, stdio, drain_timeout)
        ends = self._reserve(task_id, exec_id, stdio)
        remote = RemoteExec(
            self._conn, self._new_handle(), task_id, exec_id, bundle=bundle, terminal=spec.terminal,
            paths=ends.paths, stdin=ends.stdin, stdout=ends.stdout, stderr=ends.stderr, on_event=on_event,
        )
        # Sent with the first call that needs the agent (start() pipelines it): one round trip less.
        remote.pending_create = {
            "task": task_id,
            "exec": exec_id,
            "h": remote.handle,
            "spec": spec.to_oci(),
            "bundle": bundle,
            "stdio": {"stdin": ends.stdin is not None, "stdout": ends.stdout is not None,
                      "stderr": ends.stderr is not None},
            "paths": list(ends.paths),
            "drain_timeout": drain_timeout,
        }
        if in_task:
            remote.pending_create["in_task"] = True
        if detached:
            remote.pending_create["detached"] = True
        # Tracked under its own handle before anything about it can arrive (a dict store is atomic).
        self._conn.execs[remote.handle] = remote
        with self._live_lock:
            self._live[(task_id, exec_id)] = remote
        return ProxiedExec(self, remote)

    def create_task(
        self,
        task_id: str,
        bundle: str | os.PathLike[str],
        stdio: Stdio | None = None,
        *,
        rootfs: Sequence[Mount] | None = None,
        share: BundleShare | None = None,
        on_event: Callable[[ExecEvent], None] | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        create_init: bool = False,
    ) -> ProxiedTask:
        """Create a container on the agent from the OCI bundle at ``bundle``, run by runc there;
        ``stdio``, ``on_event`` and ``drain_timeout`` are its init's. ``task.init.start()`` starts it.
        With ``create_init`` the agent runs ``runc create`` now, as containerd's Create does (see
        :class:`common.Task`: ``created_pid``, ``kill``).

        Without ``share``, ``bundle`` is a path on the agent's machine: the agent checks its
        config.json and mounts ``rootfs`` onto ``bundle/rootfs`` now (errors are raised here).
        With ``share`` (a guest's virtio-9p share, :class:`~host_proxy.BundleShare`), ``bundle``
        is a path on this host: this host checks it, mounts ``rootfs`` under the share and the
        agent runs runc on the guest's path of it (:mod:`host_proxy.shared_bundle`); all of it
        is unmounted and removed at ``delete()``."""
        bundle_path, mounts, stdio, drain_timeout = check_task_creation(task_id, bundle, rootfs, stdio,
                                                                        drain_timeout)
        placed: SharedBundle | None = None
        if share is not None:
            if not isinstance(share, BundleShare):
                raise InvalidArgumentError(f"share must be a BundleShare, not {type(share).__name__}")
            with self._live_lock:
                if (task_id, task_id) in self._live:
                    raise already_exists_error(task_id, task_id)
            placed = SharedBundle(share, task_id, os.path.abspath(bundle_path), mounts)
        try:
            return self._create_task(task_id, bundle_path, mounts, stdio, drain_timeout, on_event, placed,
                                     bool(create_init))
        except BaseException:
            if placed is not None:
                placed.remove()
            raise

    def _create_task(self, task_id: str, bundle_path: str, mounts: list[Mount], stdio: Stdio,
                     drain_timeout: float, on_event: Callable[[ExecEvent], None] | None,
                     placed: SharedBundle | None, create_init: bool) -> ProxiedTask:
        ends = self._reserve(task_id, task_id, stdio)
        handle = self._new_handle()
        fields = {
            "task": task_id,
            "h": handle,
            "bundle": placed.guest_path if placed is not None else bundle_path,
            "rootfs": [] if placed is not None else [protocol.mount_to_wire(mount) for mount in mounts],
            "stdio": {"stdin": ends.stdin is not None, "stdout": ends.stdout is not None,
                      "stderr": ends.stderr is not None},
            "paths": list(ends.paths),
            "drain_timeout": drain_timeout,
        }
        if create_init:
            fields["create_init"] = True
        try:
            result = self.request("create_task", fields)
            terminal = protocol.get_bool(result, "terminal")
            created_pid = protocol.get_int(result, "pid", 0, 2**31, default=0)
        except BaseException:
            ends.release()
            self._release(task_id, task_id)
            raise
        remote = RemoteExec(
            self._conn, handle, task_id, task_id, bundle=bundle_path, terminal=terminal, paths=ends.paths,
            stdin=ends.stdin, stdout=ends.stdout, stderr=ends.stderr, on_event=on_event,
        )
        remote.on_agent = True
        self._conn.execs[handle] = remote
        with self._live_lock:
            self._live[(task_id, task_id)] = remote
        return ProxiedTask(self, remote, created_pid=created_pid,
                           on_delete=placed.remove if placed is not None else None)

    def attach(
        self,
        task_id: str,
        exec_id: str,
        stdio: Stdio | None = None,
        on_event: Callable[[ExecEvent], None] | None = None,
        *,
        skip_through: tuple[int, int] = (-1, -1),
    ) -> ProxiedExec:
        """Take over an exec another (possibly dead) client created on this agent.

        Its status and waiters work, and output not yet delivered flows to the
        new ``stdio`` targets. ``on_event`` gets the exit (the start already happened).
        ``skip_through``: per stream (stdout, stderr), the last chunk already shown
        (by :meth:`read_output`): it and those before it are not written again.
        """
        check_exec_ids(task_id, exec_id)
        stdio = stdio if stdio is not None else Stdio()
        ends = self._reserve(task_id, exec_id, stdio)
        attached: list[RemoteExec] = []

        def track(result: Any) -> None:
            # On the loop, before the replayed output and exit that follow this reply.
            status = protocol.status_from_wire(result.get("status"))
            handle = protocol.get_int(result, "h", 0, protocol.MAX_HANDLE)
            firsts = protocol.get_seqs(result, "first")
            stdin_next = protocol.get_int(result, "stdin_q", -1, protocol.MAX_SEQ) + 1
            remote_has = result.get("stdio") if isinstance(result.get("stdio"), dict) else {}
            if not remote_has.get("stdin") and ends.stdin is not None:
                ends.stdin.close()
                ends.stdin = None
            remote = RemoteExec(
                self._conn, handle, task_id, exec_id, bundle=status.bundle, terminal=status.terminal,
                paths=(status.stdin, status.stdout, status.stderr), stdin=ends.stdin, stdout=ends.stdout,
                stderr=ends.stderr, on_event=on_event,
                first_seqs=(max(firsts[0], skip_through[0] + 1, 0), max(firsts[1], skip_through[1] + 1, 0)),
                stdin_next=stdin_next,
            )
            remote.pid = status.pid
            remote.start_published = bool(status.pid)  # started under its creator: not ours to publish
            remote.on_agent = True
            self._track_attached(remote, status.status.value == "running")
            attached.append(remote)

        try:
            result = self.send([Request("attach", {"task": task_id, "exec": exec_id}, on_result=track)])[0]
            if isinstance(result, BaseException):
                raise result
        except BaseException:
            ends.release()
            self._release(task_id, exec_id)
            raise
        remote = attached[0]
        with self._live_lock:
            self._live[(task_id, exec_id)] = remote
        return ProxiedExec(self, remote)

    def list_execs(self) -> list[ExecStatus]:
        """Every exec the agent tracks (whoever created it; execs of this client that never
        started exist only here until they start)."""
        return [info.status for info in self.list_exec_info()]

    def list_exec_info(self) -> list[ExecInfo]:
        """As :meth:`list_execs`, with each exec's command line and creation time (from an agent
        that tells them; else empty and None)."""
        listed: list[ExecInfo] = []
        after = 0
        while True:  # page by page: one reply never nears a message size limit
            result = self.request("list", {"after": after})
            for entry in protocol.get_list(result, "execs", 10**6):
                args = entry.get("args") if isinstance(entry, dict) else None
                listed.append(ExecInfo(
                    protocol.status_from_wire(entry),
                    tuple(arg for arg in args if isinstance(arg, str)) if isinstance(args, list) else (),
                    protocol.datetime_from_wire(entry.get("created"), "created"),
                ))
            cursor = result.get("next")
            if cursor is None:
                return listed
            after = protocol.get_int(result, "next", after + 1, protocol.MAX_HANDLE)

    def read_output(self, task_id: str, exec_id: str, stream: int, after: int = -1) -> OutputPage:
        """One page of the output the agent holds for an exec's stream (1: stdout, 2: stderr),
        numbered after ``after``, without taking it: a detached exec's last window of output
        (read or not), else what no client has acknowledged yet. Page on with ``after=page.last``
        while ``page.more``."""
        check_exec_ids(task_id, exec_id)
        result = self.request("logs", {"task": task_id, "exec": exec_id, "stream": stream, "after": after})
        chunks = protocol.get_list(result, "data", 10**6)
        return OutputPage(
            b"".join(chunk for chunk in chunks if isinstance(chunk, bytes)),
            protocol.get_int(result, "first", -1, protocol.MAX_SEQ),
            protocol.get_int(result, "last", -1, protocol.MAX_SEQ),
            protocol.get_bool(result, "more", False),
            protocol.get_int(result, "dropped", 0, 2**63, default=0),
        )

    def stats(self) -> dict[str, int]:
        """The agent's own counters: execs, sessions, fds, threads, RSS, output held for slow readers."""
        return dict(self.request("stats", {}))

    def ping(self) -> None:
        """One round trip to the agent."""
        self.request("ping", {})

    def abandon(self, why: str) -> None:
        """The agent is known to be gone for good (say, its VM exited): stop waiting for it.

        Execs of this client not yet exited end here with 255 and ``why`` (their waiters and
        ``on_event`` are told at once, not after ``reconnect_timeout``); every request fails
        with ``why``, which :attr:`failure` reports from then on. Records stay readable and
        ``delete()`` still releases them."""
        if self._closed:
            return
        conn = self._conn

        def give_up() -> None:
            if conn.state != "closed":
                conn.failure = why
                conn.close()
        self._loop.call(give_up)

    def close(self) -> None:
        """Close the connection. Execs of this client not yet exited are exited here with 255
        (their processes keep running on the agent; another client can attach to them)."""
        if self._closed:
            return
        self._closed = True
        self._loop.call(self._conn.close)
        if self._tunnel is not None:
            self._tunnel.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- loop-thread helpers ------------------------------------------------------

    def _reserve(self, task_id: str, exec_id: str, stdio: Stdio) -> StdioEnds:
        """Claim the ids on this client and open the stdio targets (the claim is undone on failure)."""
        with self._live_lock:
            if (task_id, exec_id) in self._live:
                raise already_exists_error(task_id, exec_id)
            self._live[(task_id, exec_id)] = None
        try:
            return open_stdio(stdio)
        except BaseException:
            self._release(task_id, exec_id)
            raise

    def _release(self, task_id: str, exec_id: str) -> None:
        with self._live_lock:
            self._live.pop((task_id, exec_id), None)

    def _track_attached(self, remote: RemoteExec, running: bool) -> None:
        self._conn.execs[remote.handle] = remote
        if running and remote.stdin is not None:
            remote.stdin.start()

    def _new_handle(self) -> int:
        """A random handle for a new exec: the agent takes it, so events can be routed before replies."""
        while True:
            handle = secrets.randbits(62) or 1
            if handle not in self._conn.execs:
                return handle
