"""Which agent a ``uvmexec`` command talks to, and the connection to it.

Promise: :func:`connect` turns the connection options README.md documents ("The
command line"; defined in :mod:`host_proxy.cli.args`, each
with an environment fallback) into an open :class:`AgentClient`
(a :class:`Target`) or a :class:`~host_proxy.cli.errors.CliError` (exit 125)
with a one-line message naming the option, file or endpoint at fault and the
fix — key files and the endpoint's syntax are checked before connecting, and
a failed handshake is diagnosed by looking at what the peer speaks (see
:mod:`host_proxy.cli.endpoints`):

- ``--guest ENDPOINT`` (``$UVMEXEC_GUEST``): ``ipc://``, ``tcp://`` (CURVE keys,
  or ``--insecure``), ``ssh://user@host:port`` (``--ssh-key``, ``--known-hosts``);
- ``--vm``: the VM ``uvmexec vm up`` started; ``run`` boots one first if none runs;
- neither: for ``run``, a private agent (the embedded default); for the
  others, a usage error, since a fresh private agent runs nothing.

An unreachable ``ipc://`` or ``tcp://`` agent is reported at once (the socket
is missing or refuses) instead of after the whole connect timeout; an ``ipc://``
path another local user could have swapped is refused (77) before anything
connects to it.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from common.trust import UntrustedPathError, check_ipc_endpoint

from ..client import AgentClient
from .embedded import PrivateAgent
from .endpoints import (
    Named,
    check_certificate,
    check_directory,
    check_endpoint,
    check_file,
    first_bytes,
    is_zmtp,
    option,
    peer_mechanism,
    shown,
    tcp_address,
)
from .errors import CliError, Exit, classify, one_line

log = logging.getLogger("uvmexec")


@dataclass
class Target:
    """An open connection and how to name it in messages."""

    client: AgentClient
    where: str                      # "agent ipc:///...", "the VM's agent tcp://...", "private agent"
    embedded: PrivateAgent | None = None
    #: Readable once the process serving the agent (the VM's QEMU, the private agent) has exited.
    server_gone_fd: int | None = None
    #: What that process is, for messages: "the VM", "the private agent".
    server: str = ""


def _env(value: str | None, name: str) -> str | None:
    return value if value else (os.environ.get(name) or None)


@contextlib.contextmanager
def connect(args: argparse.Namespace, *, allow_embedded: bool, debug: bool = False,
            progress: bool = True, private_agent: PrivateAgent | None = None) -> Iterator[Target]:
    """Open the agent the options name; close it (and stop a private agent) on the way out.

    ``private_agent``, if given, is one already spawned for the embedded default.
    """
    if args.timeout <= 0:
        raise CliError(f"--timeout must be positive, not {args.timeout:g}")
    guest = None if args.vm else _env(args.guest, "UVMEXEC_GUEST")
    if args.vm:
        if allow_embedded:  # run: boot one if none runs
            from .vm import running_or_booted

            info = running_or_booted(progress=progress)
        else:  # ps, status: a VM booted just now runs nothing
            import vm_images

            info = vm_images.status()
            if info is None:
                raise CliError("no VM runs (start one with 'uvmexec vm up')", Exit.FAILED)
        where = f"the VM's agent at {info.agent_endpoint}"
        with _open(info.agent_endpoint, where, args.timeout, server_key=str(info.server_key),
                   client_key=str(info.client_key)) as client, _vm_watch(info.pid, str(info.qmp_socket)) as gone_fd:
            yield Target(client, where, server_gone_fd=gone_fd, server="the VM")
        return
    if guest is None:
        if not allow_embedded:
            raise CliError("which agent? give --guest ENDPOINT or --vm (or set UVMEXEC_GUEST)")
        agent = private_agent or PrivateAgent(debug=debug)
        try:
            agent.wait_ready() if agent.spawned else agent.start()
            log.debug("private agent %s ready in %.3fs", agent.endpoint, agent.startup_seconds)
            where = "the private agent"
            with _open(agent.endpoint, where, args.timeout) as client, _pidfd(agent.pid) as gone_fd:
                yield Target(client, where, agent, server_gone_fd=gone_fd, server="the private agent")
        finally:
            agent.stop()
        return
    endpoint = Named(guest, "--guest" if args.guest else "$UVMEXEC_GUEST")
    where = f"agent {guest}"
    check_endpoint(endpoint)
    options = _credentials(args, endpoint)
    _precheck(guest, min(1.0, args.timeout))
    with _open(guest, where, args.timeout, lambda error: _diagnose(error, endpoint, options),
               **options) as client:
        yield Target(client, where)


@contextlib.contextmanager
def _pidfd(pid: int | None) -> Iterator[int | None]:
    """A pidfd of ``pid`` (readable once it exited), or None if there is none to be had."""
    fd = None
    if pid:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def _vm_watch(pid: int, qmp_socket: str) -> Iterator[int | None]:
    """A pidfd of the VM's QEMU — checked, once open, to be that QEMU still (not a recycled pid):
    a live process whose command line serves the VM's QMP socket, as vm_images checks it."""
    with _pidfd(pid) as fd:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                ours = f"unix:{qmp_socket},".encode() in cmdline.read()
            with open(f"/proc/{pid}/stat") as stat_file:
                ours = ours and stat_file.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            ours = False
        yield fd if ours else None


def _credentials(args: argparse.Namespace, endpoint: Named) -> dict[str, object]:
    """The connection options for ``endpoint``, every key file checked before anything connects."""
    url = endpoint.value
    keys_dir = option(args.keys, "--keys", "UVMEXEC_KEYS")
    server_key = option(args.server_key, "--server-key", "UVMEXEC_SERVER_KEY")
    client_key = option(args.client_key, "--client-key", "UVMEXEC_CLIENT_KEY")
    if args.insecure:
        given = [named.name for named in (keys_dir, server_key, client_key)
                 if named is not None and named.name.startswith("--")]
        if given:
            raise CliError(f"--insecure and {given[0]} contradict each other: plaintext has no keys "
                           "(drop one of them)")
        keys_dir = server_key = client_key = None  # --insecure wins over keys from the environment
    if keys_dir is not None:
        check_directory(keys_dir, f"make one with 'uvmexec keygen {keys_dir.value}'")
        server_key = server_key or Named(os.path.join(keys_dir.value, "agent.key"), keys_dir.name)
        client_key = client_key or Named(os.path.join(keys_dir.value, "client.key_secret"), keys_dir.name)
    options: dict[str, object] = {}
    if server_key or client_key:
        if server_key is None or client_key is None:
            missing = "--client-key" if server_key else "--server-key"
            raise CliError(f"{(server_key or client_key).name} needs {missing} too "  # type: ignore[union-attr]
                           "(or give --keys DIR, a directory made by 'uvmexec keygen')")
        check_certificate(server_key, secret=False,
                          fix="give the agent's public certificate, agent.key from 'uvmexec keygen DIR'")
        check_certificate(client_key, secret=True,
                          fix="give this client's secret certificate, client.key_secret from 'uvmexec keygen DIR'")
        options.update(server_key=server_key.value, client_key=client_key.value)
    if url.startswith("tcp://"):
        if not options and not args.insecure:
            raise CliError(f"{endpoint.name} {url}: tcp needs keys: --keys DIR, or --server-key FILE and "
                           "--client-key FILE (or --insecure for plaintext; the VM's agent: use --vm)")
        options["insecure"] = bool(args.insecure)
    elif url.startswith("ssh://"):
        ssh_key = option(args.ssh_key, "--ssh-key", "UVMEXEC_SSH_KEY")
        known_hosts = option(args.known_hosts, "--known-hosts", "UVMEXEC_KNOWN_HOSTS")
        if ssh_key is None or known_hosts is None:
            raise CliError(f"{endpoint.name} {url}: ssh needs --ssh-key FILE (a private key the server "
                           "accepts) and --known-hosts FILE (pinning its host key)")
        check_file(ssh_key, "a private key", "give a private key the ssh server accepts")
        check_file(known_hosts, "a known_hosts file", "give a known_hosts file that pins the server's host key")
        options.update(ssh_key=ssh_key.value, known_hosts=known_hosts.value)
    return options


def _precheck(endpoint: str, wait: float) -> None:
    """Fail at once for an agent that certainly is not there, rather than after the timeout."""
    if endpoint.startswith("ipc://"):
        try:
            path = check_ipc_endpoint(endpoint)  # as AgentClient.connect does; first, for the exit code
        except UntrustedPathError as error:
            raise CliError(str(error), Exit.FAILED) from None
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise CliError(f"no agent at {endpoint}: {path} does not exist "
                           "(is the agent running? it makes the socket when it starts)") from None
        except OSError as error:
            raise CliError(f"cannot reach the agent at {endpoint}: {error.strerror}") from None
        if not stat.S_ISSOCK(mode):
            raise CliError(f"no agent at {endpoint}: {path} is not a socket (give the path the agent "
                           "listens on)")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as error:
            if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
                raise CliError(f"no agent at {endpoint}: the socket refuses connections "
                               "(the agent is not running; start it again)") from None
            # EACCES and the like: let the real connection report it.
        finally:
            probe.close()
    elif endpoint.startswith("tcp://"):
        host, port = tcp_address(endpoint)
        try:
            probe = socket.create_connection((host, port), timeout=2.0)
        except ConnectionRefusedError:
            raise CliError(f"cannot reach the agent at {endpoint}: connection refused "
                           "(is the agent running and listening on that port?)") from None
        except socket.gaierror as error:
            raise CliError(f"cannot reach the agent at {endpoint}: {error.strerror} "
                           "(check the host name)") from None
        except OSError:
            return  # timeouts and routes: the library's own deadline decides
        with probe:
            said = first_bytes(probe, wait)
        if said == b"":
            raise CliError(f"no agent answers at {endpoint}: the connection was accepted and closed at once "
                           "(a port forward with nothing behind it, e.g. a VM whose agent is down?)")
        if said is not None and not is_zmtp(said):
            raise CliError(f"{endpoint} is not a uvmexec agent: it said {shown(said)} "
                           "(check the port; the VM's agent: use --vm)")


def _diagnose(error: BaseException, endpoint: Named, options: dict[str, object]) -> CliError | None:
    """A precise line for a failed handshake or a silent peer, or None to keep the library's own."""
    from common.errors import AuthenticationError, UnavailableError

    url = endpoint.value
    text = str(error)
    curve = "server_key" in options
    server_key = f"--server-key {options.get('server_key')}"
    vm_hint = " (that is the VM's agent: use --vm)" if _is_the_vms_agent(url) else ""
    if isinstance(error, AuthenticationError) and "refused this client's key" in text:
        client_key = str(options.get("client_key"))
        return CliError(f"the agent at {url} refused --client-key {client_key}: its public half "
                        f"({client_key.removesuffix('_secret')}) is not in the agent's --authorized-keys "
                        "directory (copy it there, or give a client key the agent knows)")
    handshake_failed = isinstance(error, AuthenticationError) and "handshake" in text
    silent = isinstance(error, UnavailableError) and "did not answer" in text
    if not (handshake_failed or silent):
        return None
    mechanism = peer_mechanism(*tcp_address(url)) if url.startswith("tcp://") else None
    if mechanism == "":
        return CliError(f"{url} is not a uvmexec agent: it does not speak ZeroMQ (check the port{vm_hint})")
    if silent:
        return CliError(f"{one_line(text)} (is the agent running? over a slow link, raise --timeout)")
    if mechanism == "CURVE" and not curve:
        return CliError(f"the agent at {url} uses CURVE, not plaintext: drop --insecure and give --keys DIR "
                        f"(or --server-key FILE and --client-key FILE){vm_hint}")
    if mechanism == "CURVE":
        return CliError(f"the agent at {url} is not the one {server_key} belongs to: the CURVE handshake "
                        f"failed (give that agent's own public certificate{vm_hint or ''})")
    if mechanism == "NULL" and curve:
        return CliError(f"the agent at {url} runs without CURVE (plaintext): connect with --insecure and no "
                        "keys, or restart it with --server-key")
    if url.startswith("ssh://") and not curve:
        return CliError(f"the agent behind {url} refused a plaintext connection, so it uses CURVE: give "
                        "--keys DIR (or --server-key FILE and --client-key FILE)")
    if url.startswith("ssh://"):
        return CliError(f"the CURVE handshake with the agent behind {url} failed: {server_key} is not its "
                        "public certificate, or it runs without CURVE (then drop the keys)")
    return None


def _is_the_vms_agent(url: str) -> bool:
    if not url.startswith("tcp://"):
        return False
    try:
        import vm_images

        info = vm_images.status()
    except Exception:  # only a hint: never fail over it
        return False
    return info is not None and info.agent_endpoint == url


@contextlib.contextmanager
def _open(endpoint: str, where: str, timeout: float,
          diagnose: Callable[[BaseException], CliError | None] = lambda error: None,
          **options: object) -> Iterator[AgentClient]:
    try:
        # A command line sends a request or two: a second connection's handshake would cost more.
        client = AgentClient.connect(endpoint, timeout=timeout, direct=False, **options)  # type: ignore[arg-type]
    except Exception as error:
        raise diagnose(error) or classify(error, where, endpoint) from None
    with client:
        yield client
