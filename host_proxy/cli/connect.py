"""Which agent a ``uvmexec`` command talks to, and the connection to it.

Promise: :func:`connect` turns the connection options of DESIGN.md ("Command
lines and connection options"; defined in :mod:`host_proxy.cli.args`, each
with an environment fallback) into an open :class:`AgentClient`
(a :class:`Target`) or a :class:`~host_proxy.cli.errors.CliError` with a
one-line message naming the endpoint and a distinct exit code:

- ``--guest ENDPOINT`` (``$UVMEXEC_GUEST``): ``ipc://``, ``tcp://`` (CURVE keys,
  or ``--insecure``), ``ssh://user@host:port`` (``--ssh-key``, ``--known-hosts``);
- ``--vm``: the VM ``uvmexec vm up`` started; ``run`` boots one first if none runs;
- neither: for ``run``, a private agent (the embedded default); for the
  others, a usage error, since a fresh private agent runs nothing.

An unreachable ``ipc://`` or ``tcp://`` agent is reported at once (the socket
is missing or refuses) instead of after the whole connect timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from ..client import AgentClient
from .embedded import PrivateAgent
from .errors import CliError, Exit, classify

log = logging.getLogger("uvmexec")


@dataclass
class Target:
    """An open connection and how to name it in messages."""

    client: AgentClient
    where: str                      # "agent ipc:///...", "the VM's agent tcp://...", "private agent"
    embedded: PrivateAgent | None = None


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
                   client_key=str(info.client_key)) as client:
            yield Target(client, where)
        return
    if guest is None:
        if not allow_embedded:
            raise CliError("which agent? give --guest ENDPOINT or --vm (or set UVMEXEC_GUEST)")
        agent = private_agent or PrivateAgent(debug=debug)
        try:
            agent.wait_ready() if agent.spawned else agent.start()
            log.debug("private agent %s ready in %.3fs", agent.endpoint, agent.startup_seconds)
            where = "the private agent"
            with _open(agent.endpoint, where, args.timeout) as client:
                yield Target(client, where, agent)
        finally:
            agent.stop()
        return
    where = f"agent {guest}"
    options = _credentials(args, guest)
    _precheck(guest)
    with _open(guest, where, args.timeout, **options) as client:
        yield Target(client, where)


def _credentials(args: argparse.Namespace, endpoint: str) -> dict[str, object]:
    keys_dir = _env(args.keys, "UVMEXEC_KEYS")
    server_key = _env(args.server_key, "UVMEXEC_SERVER_KEY")
    client_key = _env(args.client_key, "UVMEXEC_CLIENT_KEY")
    if keys_dir:
        server_key = server_key or os.path.join(keys_dir, "agent.key")
        client_key = client_key or os.path.join(keys_dir, "client.key_secret")
    options: dict[str, object] = {}
    if server_key or client_key:
        if not (server_key and client_key):
            raise CliError("--server-key and --client-key go together (or give --keys DIR)")
        options.update(server_key=server_key, client_key=client_key)
    if endpoint.startswith("tcp://"):
        if not options and not args.insecure:
            raise CliError(f"{endpoint}: tcp needs keys: --keys DIR, or --server-key FILE and "
                           "--client-key FILE (or --insecure for plaintext)")
        options["insecure"] = bool(args.insecure)
    elif endpoint.startswith("ssh://"):
        ssh_key = _env(args.ssh_key, "UVMEXEC_SSH_KEY")
        known_hosts = _env(args.known_hosts, "UVMEXEC_KNOWN_HOSTS")
        if not (ssh_key and known_hosts):
            raise CliError(f"{endpoint}: ssh needs --ssh-key FILE and --known-hosts FILE")
        options.update(ssh_key=ssh_key, known_hosts=known_hosts)
    elif not endpoint.startswith("ipc://"):
        raise CliError(f"unsupported endpoint {endpoint!r}: use ipc:///path, tcp://host:port or "
                       "ssh://user@host:port")
    return options


def _precheck(endpoint: str) -> None:
    """Fail at once for an agent that certainly is not there, rather than after the timeout."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise CliError(f"no agent at {endpoint}: {path} does not exist", Exit.FAILED) from None
        except OSError as error:
            raise CliError(f"cannot reach the agent at {endpoint}: {error.strerror}", Exit.FAILED) from None
        if not stat.S_ISSOCK(mode):
            raise CliError(f"no agent at {endpoint}: {path} is not a socket", Exit.FAILED)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError as error:
            if error.errno in (errno.ECONNREFUSED, errno.ENOENT):
                raise CliError(f"no agent at {endpoint}: the socket refuses connections "
                               "(the agent is not running)", Exit.FAILED) from None
            # EACCES and the like: let the real connection report it.
        finally:
            probe.close()
    elif endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or host == "*":
            return  # the library names what is wrong with it
        try:
            with socket.create_connection((host, int(port)), timeout=2.0):
                pass
        except ConnectionRefusedError:
            raise CliError(f"cannot reach the agent at {endpoint}: connection refused", Exit.FAILED) from None
        except socket.gaierror as error:
            raise CliError(f"cannot reach the agent at {endpoint}: {error.strerror}", Exit.FAILED) from None
        except OSError:
            return  # timeouts and routes: the library's own deadline decides


@contextlib.contextmanager
def _open(endpoint: str, where: str, timeout: float, **options: object) -> Iterator[AgentClient]:
    try:
        client = AgentClient.connect(endpoint, timeout=timeout, **options)  # type: ignore[arg-type]
    except Exception as error:
        raise classify(error, where, endpoint) from None
    with client:
        yield client
