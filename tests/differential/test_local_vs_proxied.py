"""LocalExec and ProxiedExec, driven by the same random operations, must be indistinguishable.

Hypothesis draws sequences of operations — create (again after delete, with
the same ids), start, kill with any signal (0, 65, -1 and worse included, with
and without ``all``), resize_pty (odd sizes too), close_io, force_exit (bad
statuses too), wait with small timeouts, delete, lines written to a stdin FIFO
the test holds, and reads of pid/state/status(), once with the agent stopped —
over programs that exit only when the sequence says (``read`` twice then exit
N, ``cat``, ``sleep``), programs that print bytes and exit at once, programs
that cannot start, tty and non-tty. Each sequence runs on a ``LocalExec`` and
on a ``ProxiedExec`` (a real agent over ipc) with the same ids; every result,
error class and message, status (pid and ``exited_at`` as set or not), event
sequence and byte of output must be equal. See ``harness.py`` for how the
sequences are kept deterministic, and ``README.md`` for reading a failure.

CI runs a fixed (derandomized) set of ``UVMEXEC_DIFF_EXAMPLES`` examples
(default 25, about a minute). A longer run, e.g. 2000 examples with a fresh
random seed each time::

    UVMEXEC_DIFF_EXAMPLES=2000 UVMEXEC_DIFF_SEED=random \\
        python3 -m pytest tests/differential -q

``UVMEXEC_DIFF_SEED=<int>`` repeats a given random run.
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import string

import pytest
from hypothesis import HealthCheck, Phase, event, given, seed, settings
from hypothesis import strategies as st

from host_proxy import AgentClient, LocalExec
from tests.support.agent import AgentProcess
from tests.support.procs import descendants, wait_exited

from . import ops as o
from .harness import Side, running

EXAMPLES = int(os.environ.get("UVMEXEC_DIFF_EXAMPLES", "25"))
_SEED = os.environ.get("UVMEXEC_DIFF_SEED", "")
SEED = random.randrange(2**32) if _SEED == "random" else (int(_SEED) if _SEED else None)
#: Generous: a failing run also shrinks, and every shrink step runs real processes.
HARD_TIMEOUT = max(900, EXAMPLES * 6)

_runs = itertools.count()

# -- strategies ------------------------------------------------------------------------------

slots = st.integers(0, len(o.SLOT_EXEC_IDS) - 1)
stale = st.sampled_from([False, False, False, True])
exit_codes = st.integers(0, 255)
#: Printable ASCII: what a tty's line discipline echoes as it is (no control characters).
tty_text = st.text(alphabet=string.ascii_letters + string.digits + " .,:;-_+=/@#%^*()[]{}<>?!'\"", max_size=12)

programs = st.builds(
    o.Program,
    kind=st.sampled_from(["read2", "cat", "sleep", "read2", "cat", "sleep", "print", "big", "missing", "badcwd",
                          "surrogate"]),
    code=exit_codes,
    out=st.binary(max_size=24),
    err=st.binary(max_size=24),
)


@st.composite
def creates(draw: st.DrawFn) -> o.Create:
    slot = draw(slots)
    program = draw(programs)
    tty = draw(st.booleans())
    if tty and (program.exits_at_start or program.fails_to_start):
        stdin = "none"  # fed at start, stdin's echo would race with the program's own output
    else:
        stdin = draw(st.sampled_from(["fifo", "fifo", "none", "file", "bytes"]))
    stdin_data = b""
    if stdin in ("file", "bytes"):
        if tty:
            # Whole lines only (a partial line before the EOF character is not an EOF), and no more
            # than the program reads before it prints (else echo and output interleave by chance).
            most = {"cat": 1, "read2": 2}.get(program.kind, 3)
            lines = draw(st.lists(tty_text, max_size=most))
            stdin_data = b"".join(line.encode() + b"\n" for line in lines)
        else:
            stdin_data = draw(st.binary(max_size=64))
    stderr_kinds = ["none", "none", "none", "none", "path"] if tty else ["path", "path", "fileobj", "none"]
    return o.Create(
        slot=slot,
        program=program,
        tty=tty,
        stdin=stdin,
        stdin_data=stdin_data,
        stdout=draw(st.sampled_from(["path", "path", "fileobj", "none"])),
        stderr=draw(st.sampled_from(stderr_kinds)),
        prefill=draw(st.booleans()),
        console_size=draw(st.sampled_from([None, None, (24, 80), (0, 0), (1, 65535)])) if tty else None,
        drain_timeout=draw(st.sampled_from([o.DEFAULT] * 8 + [0, 0.25, 2.0, "2", -1, True])),
        bundle=draw(st.sampled_from(["", "", "/run/uvmexec-differential/bundle"])),
    )


signals = st.one_of(
    st.integers(1, 64),
    st.sampled_from([9, 15, 2, 1, 19, 18, 20, 17, 28]),
    st.sampled_from([0, 65, -1, 1000, 2**31, 2**64, True, 1.5, "9"]),
)
sizes = st.sampled_from([(80, 24), (0, 0), (1, 1), (65535, 65535), (70000, 5), (5, 70000), (-1, 5), (2**64, 1),
                         (1.5, 2), (True, 5)])
statuses = st.one_of(exit_codes, st.sampled_from([0, 1, 137, 255, -1, 256, 2**64, "1", None, True]))

operations = st.one_of(
    creates(),
    st.builds(o.Start, slots, stale),
    creates(),
    st.builds(o.Write, slots, tty_text.map(str.encode)),
    st.builds(o.Start, slots),
    st.builds(o.Write, slots, st.binary(max_size=12).map(lambda data: data.replace(b"\n", b""))),
    st.builds(o.Kill, slots, signals, st.booleans(), stale),
    st.builds(lambda slot, size, old: o.Resize(slot, size[0], size[1], old), slots, sizes, stale),
    st.builds(o.CloseIO, slots, st.sampled_from([True, True, True, False]), stale),
    st.builds(o.Wait, slots, st.sampled_from([0.0, 0.01, 0.05]), stale),
    st.builds(o.ForceExit, slots, statuses, stale),
    st.builds(o.Delete, slots, stale),
    st.builds(o.Observe, slots, stale),
    st.builds(o.ObserveAgentStopped, slots),
)


def _settings(test):  # type: ignore[no-untyped-def]
    configured = settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED is None,
        database=None,
        # One agent serves every example on purpose; a slow example is the processes, not the data.
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=False,
        # The explain phase reruns a failure hundreds of times to point at lines; the transcript
        # in the failure message says more, in a fraction of the time.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    )(test)
    return seed(SEED)(configured) if SEED is not None else configured


# -- the test --------------------------------------------------------------------------------


@pytest.mark.timeout(HARD_TIMEOUT)
@_settings
@given(sequence=st.builds(lambda first, rest: [first, *rest], creates(), st.lists(operations, max_size=24)))
def test_local_and_proxied_execs_are_indistinguishable(sequence: list[o.Op], client: AgentClient,
                                                       ipc_agent: AgentProcess, tmp_path) -> None:
    run = next(_runs)
    root = str(tmp_path / f"run{run}")
    task_id = f"difftask-{run}"
    sides = (
        Side("local", LocalExec, os.path.join(root, "local")),
        Side("proxied", client.create_exec, os.path.join(root, "proxied"), agent_pid=ipc_agent.pid),
    )
    try:
        with running(sides, task_id) as runner:
            runner.run(sequence)
        for what in sorted(runner.coverage):
            event(what)
        # Deleted (or cleaned-up) execs leave no record on the agent and no process behind.
        left = [status for status in client.list_execs() if status.id == task_id]
        assert not left, f"the agent still holds records of deleted execs: {left}"
        wait_exited(descendants(ipc_agent.pid), timeout=10)
        agent_tree = {ipc_agent.pid, *descendants(ipc_agent.pid)}
        wait_exited([pid for pid in descendants(os.getpid()) if pid not in agent_tree], timeout=10)
        if runner.violations:
            raise AssertionError("both backends agree, but break the contract:\n  " + "\n  ".join(runner.violations))
    finally:
        shutil.rmtree(root, ignore_errors=True)
