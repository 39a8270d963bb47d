"""The exit codes of ``uvmexec`` and the one-line messages behind them.

Promise: every failure that is not the command's own ends ``uvmexec`` with one
line on stderr saying what failed and where, and one of the codes below —
never a Python traceback (unless ``--debug`` asked for it). The codes follow
``docker exec`` where it has one (125, 126, 127) and ``sysexits.h``
otherwise, so a script can tell "the agent is down" from "my key is wrong"
from "the command failed".
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.errors import ExecError


class Exit(enum.IntEnum):
    """uvmexec's own exit codes; any other code is the command's (128+N: killed by signal N)."""

    OK = 0
    NO_SUCH_EXEC = 1        # ``uvmexec status``: the agent tracks no such exec
    NOT_RUNNING = 3         # ``uvmexec vm status``: no VM runs (the LSB status convention)
    UNAVAILABLE = 69        # EX_UNAVAILABLE: the agent (or the VM serving it) is unreachable, gone or did not boot
    PROTOCOL = 76           # EX_PROTOCOL: the agent speaks no protocol version we do
    KEY_REFUSED = 77        # EX_NOPERM: a key refused by the peer, a key file unusable, an ipc path untrusted
    FAILED = 125            # uvmexec itself failed: bad usage, bad option, image build, internal error
    CANNOT_INVOKE = 126     # the command exists but cannot be started (permission, cwd, user)
    NOT_FOUND = 127         # the command was not found in the guest
    INTERRUPTED = 130       # uvmexec was interrupted before the command started


class CliError(Exception):
    """A failure to report as ``uvmexec: MESSAGE`` and exit with ``code``."""

    def __init__(self, message: str, code: int = Exit.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(code)


# An unusable key file is an InvalidArgumentError naming the option or file it came from
# (host_proxy.client and host_proxy.known_hosts write these prefixes).
_KEY_FILE_PATTERNS = re.compile(r"^(server_key:|client_key:|ssh key |known_hosts )", re.IGNORECASE)
_START_PREFIX = re.compile(r"^exec: '.*' in task: '.*' failed to start: ", re.DOTALL)


def classify(error: BaseException, where: str = "", endpoint: str = "") -> CliError:
    """The exit code and one-line message for an error raised while talking to an agent.

    ``where`` names the agent for the reader; it is appended unless the message
    already names ``endpoint``.
    """
    # Imported here: this module is on the light path that runs before the private agent starts.
    from common.errors import (
        AuthenticationError,
        ExecError,
        InvalidArgumentError,
        NotFoundError,
        UnavailableError,
        UnimplementedError,
    )

    suffix = f" ({where})" if where and not (endpoint and endpoint in str(error)) else ""
    text = _one_line(str(error))
    if isinstance(error, CliError):
        return error
    if isinstance(error, UnimplementedError):
        return CliError(f"{text}{suffix}", Exit.PROTOCOL)
    if isinstance(error, AuthenticationError):
        return CliError(f"{text}{suffix}", Exit.KEY_REFUSED)
    if isinstance(error, UnavailableError):
        return CliError(f"{text}{suffix}", Exit.UNAVAILABLE)
    if isinstance(error, InvalidArgumentError) and _KEY_FILE_PATTERNS.search(text):
        return CliError(f"{text}{suffix}", Exit.KEY_REFUSED)
    if isinstance(error, NotFoundError):
        return CliError(f"{text}{suffix}", Exit.NO_SUCH_EXEC)
    if isinstance(error, ExecError):
        return CliError(f"{text}{suffix}", Exit.FAILED)
    if isinstance(error, PermissionError):
        return CliError(f"{text}{suffix}", Exit.FAILED)
    if isinstance(error, OSError):
        return CliError(f"{text}{suffix}", Exit.FAILED)
    return CliError(f"{type(error).__name__}: {text}{suffix}", Exit.FAILED)


def classify_start(error: ExecError, where: str) -> CliError:
    """A failed ``start()``: 127 when the program does not exist, 126 when it cannot be run."""
    from common.errors import InvalidArgumentError

    cause = _one_line(_START_PREFIX.sub("", error.message))
    if cause == error.message and not isinstance(error, InvalidArgumentError):
        return classify(error, where)  # not a start failure at all (the agent went away, ...)
    not_found = "executable file not found" in cause or (
        cause.startswith("exec ") and "No such file or directory" in cause
    )
    code = Exit.NOT_FOUND if not_found else Exit.CANNOT_INVOKE
    return CliError(f"{cause} (on {where})", code)


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


EXIT_CODE_TABLE = """\
exit codes:
  0-124, 128+N  run: the command's own exit code (128+N: it was killed by signal N)
  255           run: the agent was lost for good while the command ran
  1             status: the agent tracks no such exec
  3             vm status: no VM runs
  69            the agent cannot be reached, went away, or the VM did not boot
  76            the agent speaks no protocol version this uvmexec speaks
  77            a key was refused (CURVE, SSH), a key file cannot be used, or an ipc path is untrusted
  125           uvmexec itself failed (bad usage, bad option, image build, internal error)
  126           run: the command was found but cannot be started (permission, cwd, user)
  127           run: the command was not found
  130           uvmexec was interrupted before the command started
"""
