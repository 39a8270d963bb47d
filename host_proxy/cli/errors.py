"""The exit codes of ``uvmexec`` and the one-line messages behind them.

Promise: every failure that is not the command's own ends ``uvmexec`` with one
line on stderr saying what failed and where, and one of the codes below —
never a Python traceback (unless ``--debug`` asked for it). The codes follow
``docker exec``: uvmexec's own failures are 125 (the message says which:
usage, an unreachable agent, a refused key, a VM that did not boot, ...),
126 and 127 are a command that cannot be started or was not found, and
every other code of ``run`` is the command's own — except 255 (the agent
was lost while the command ran, as ``ssh`` says a lost connection) and 130
(interrupted while the agent did not answer).
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.errors import ExecError


class Exit(enum.IntEnum):
    """uvmexec's own exit codes; any other code of ``run`` is the command's (128+N: killed by signal N)."""

    OK = 0
    NO_SUCH_EXEC = 1        # ``uvmexec status``: the agent tracks no such exec
    NOT_RUNNING = 3         # ``uvmexec vm status``: no VM runs (the LSB status convention)
    FAILED = 125            # uvmexec itself failed: usage, agent unreachable, key refused, VM, internal
    CANNOT_INVOKE = 126     # the command exists but cannot be started (permission, cwd, user)
    NOT_FOUND = 127         # the command was not found in the guest
    INTERRUPTED = 130       # interrupted before the command started, or while the agent did not answer
    LOST = 255              # the agent (or its VM) was lost while the command ran


class CliError(Exception):
    """A failure to report as ``uvmexec: MESSAGE`` and exit with ``code``."""

    def __init__(self, message: str, code: int = Exit.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(code)


_START_PREFIX = re.compile(r"^exec: '.*' in task: '.*' failed to start: ", re.DOTALL)


def classify(error: BaseException, where: str = "", endpoint: str = "") -> CliError:
    """The exit code and one-line message for an error raised while talking to an agent.

    ``where`` names the agent for the reader; it is appended unless the message
    already names ``endpoint``.
    """
    # Imported here: this module is on the light path that runs before the private agent starts.
    from common.errors import ExecError

    if isinstance(error, CliError):
        return error
    suffix = f" ({where})" if where and not (endpoint and endpoint in str(error)) else ""
    text = one_line(str(error))
    if isinstance(error, (ExecError, OSError)):
        return CliError(f"{text}{suffix}", Exit.FAILED)
    return CliError(f"{type(error).__name__}: {text}{suffix}", Exit.FAILED)


def classify_start(error: ExecError, where: str) -> CliError:
    """A failed ``start()``: 127 when the program does not exist, 126 when it cannot be run."""
    from common.errors import InvalidArgumentError

    cause = one_line(_START_PREFIX.sub("", error.message))
    if cause == error.message and not isinstance(error, InvalidArgumentError):
        return classify(error, where)  # not a start failure at all (the agent went away, ...)
    not_found = "executable file not found" in cause or (
        cause.startswith("exec ") and "No such file or directory" in cause
    )
    code = Exit.NOT_FOUND if not_found else Exit.CANNOT_INVOKE
    return CliError(f"{cause} (on {where})", code)


def one_line(text: str) -> str:
    return " ".join(text.split()) or "(no message)"


EXIT_CODE_TABLE = """\
exit codes:
  125           uvmexec itself failed; the message says how (usage, agent unreachable,
                key refused, VM did not boot, internal error)
  126           the command was found but cannot be started (permission, cwd, user)
  127           the command was not found
  255           the agent (or its VM) was lost while the command ran
  130           interrupted before the command started, or while the agent did not answer
  other         the command's own exit code (128+N: it was killed by signal N)
"""
