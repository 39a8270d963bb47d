"""``ssh://`` endpoint URLs: ``ssh://[user@]host[:port][?agent=tcp://h:p]``.

The agent address is as seen from the SSH server (the guest's loopback by
default). Malformed URLs raise :class:`~common.errors.InvalidArgumentError`
naming the part at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from common.errors import InvalidArgumentError

DEFAULT_AGENT = "tcp://127.0.0.1:5555"
DEFAULT_SSH_PORT = 22
DEFAULT_USER = "root"


@dataclass(frozen=True)
class SshTarget:
    """Where to SSH to, and where the agent listens as seen from that machine."""

    host: str
    port: int = DEFAULT_SSH_PORT
    user: str = DEFAULT_USER
    agent_host: str = "127.0.0.1"
    agent_port: int = 5555

    def __post_init__(self) -> None:
        if not self.host:
            raise InvalidArgumentError("ssh target: empty host")
        if not self.user:
            raise InvalidArgumentError("ssh target: empty user")
        if not self.agent_host:
            raise InvalidArgumentError("ssh target: empty agent host")
        for name, port in (("port", self.port), ("agent port", self.agent_port)):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise InvalidArgumentError(f"ssh target: {name} {port!r} is not in 1..65535")

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 hosts bracketed."""
        return f"{_bracket(self.host)}:{self.port}"

    @property
    def agent(self) -> str:
        """The agent's ZeroMQ endpoint on the far machine, ``tcp://host:port``."""
        return f"tcp://{_bracket(self.agent_host)}:{self.agent_port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH files this server under in known_hosts: ``host``, or ``[host]:port``."""
        host = self.host.lower()
        return host if self.port == DEFAULT_SSH_PORT else f"[{host}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.address}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_ssh_endpoint(url: str) -> SshTarget:
    """Parse ``ssh://[user@]host[:port][?agent=tcp://host:port]`` (user ``root``, port 22 by default).

    IPv6 hosts are written in brackets (``ssh://root@[::1]:2222``). The agent
    endpoint defaults to ``tcp://127.0.0.1:5555``; only ``tcp://`` agents can be
    reached through SSH. Anything malformed raises ``InvalidArgumentError``
    naming the part at fault.
    """
    if not isinstance(url, str):
        raise InvalidArgumentError(f"ssh endpoint must be a string, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:  # a non-numeric or out-of-range port, or a broken [IPv6] literal
        raise InvalidArgumentError(f"ssh endpoint {url!r}: {error}") from None
    if parts.scheme != "ssh":
        raise InvalidArgumentError(f"ssh endpoint {url!r}: scheme must be ssh://")
    if not parts.hostname:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: no host")
    if parts.password is not None:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: passwords are not supported, use a key")
    if parts.path not in ("", "/"):
        raise InvalidArgumentError(f"ssh endpoint {url!r}: unexpected path {parts.path!r}")
    if parts.fragment:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: unexpected fragment {parts.fragment!r}")
    if "@" in parts.netloc and not parts.username:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: empty user name before '@'")
    agent = _parse_query(url, parts.query)
    agent_host, agent_port = _parse_agent(url, agent)
    return SshTarget(
        host=parts.hostname,
        port=port if port is not None else DEFAULT_SSH_PORT,
        user=unquote(parts.username) if parts.username else DEFAULT_USER,
        agent_host=agent_host,
        agent_port=agent_port,
    )


def _parse_query(url: str, query: str) -> str:
    if not query:
        return DEFAULT_AGENT
    try:
        options = parse_qs(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: malformed query {query!r}") from None
    unknown = sorted(set(options) - {"agent"})
    if unknown:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: unknown option {unknown[0]!r} (only 'agent')")
    if len(options["agent"]) != 1:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: 'agent' given more than once")
    return options["agent"][0]


def _parse_agent(url: str, agent: str) -> tuple[str, int]:
    try:
        parts = urlsplit(agent)
        port = parts.port
    except ValueError as error:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: agent {agent!r}: {error}") from None
    if parts.scheme != "tcp":
        raise InvalidArgumentError(
            f"ssh endpoint {url!r}: agent {agent!r} is not tcp://host:port "
            "(only TCP agents can be reached through SSH)"
        )
    if not parts.hostname or port is None:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: agent {agent!r} needs a host and a port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise InvalidArgumentError(f"ssh endpoint {url!r}: agent {agent!r} must be just tcp://host:port")
    return parts.hostname, port
