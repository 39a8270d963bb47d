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
(default 80, under a minute on two cores when the backends agree) and stops at the
first difference without shrinking it. A longer run, e.g. 2000 examples with
a fresh random seed, shrinking every distinct failure to a minimal sequence::

    UVMEXEC_DIFF_EXAMPLES=2000 UVMEXEC_DIFF_SEED=random UVMEXEC_DIFF_SHRINK=1 \\
        python3 -m pytest tests/differential -q

``UVMEXEC_DIFF_SEED=<int>`` repeats a given random run (the seed is printed
with ``-s``).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import string

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from host_proxy import AgentClient, LocalExec
from tests.support.agent import AgentProcess
from tests.support.procs import descendants, wait_exited

from . import ops as o
from .harness import Runner, Side, running

EXAMPLES = int(os.environ.get("UVMEXEC_DIFF_EXAMPLES", "80"))
#: Shrink failures to a minimal sequence (and report every distinct one). Off in CI: a shrink step
#: runs real processes, and a difference such as a request that gets no answer costs seconds each.
SHRINK = os.environ.get("UVMEXEC_DIFF_SHRINK", "") not in ("", "0")
_SEED = os.environ.get("UVMEXEC_DIFF_SEED", "")
SEED = random.randrange(2**32) if _SEED == "random" else (int(_SEED) if _SEED else None)
if SEED is not None:
    print(f"tests/differential: UVMEXEC_DIFF_SEED={SEED}")
#: Generous: a failing run also shrinks, and every shrink step runs real processes.
HARD_TIMEOUT = max(900, EXAMPLES * (6 if SHRINK else 2))
#: Operations in one sequence at most.
MAX_STEPS = 30

_runs = itertools.count()

# -- strategies ------------------------------------------------------------------------------

slots = st.sampled_from([0, 0, 1])  # slot 0 is created first; slot 1 when a create draws it
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
def creates(draw: st.DrawFn, slot_numbers: st.SearchStrategy[int] = slots) -> o.Create:
    slot = draw(slot_numbers)
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

lines = st.one_of(tty_text.map(str.encode), st.binary(max_size=12).map(lambda data: data.replace(b"\n", b"")))


def next_operation(runner: Runner) -> st.SearchStrategy[o.Op]:
    """The next operation, drawn with weights that suit each slot's state: mostly what moves an
    exec along (start a created one; write to, signal, close or resize a running one; delete an
    exited one; create in a free slot), and now and then anything, ids of deleted execs included."""
    choices: list[st.SearchStrategy[o.Op]] = []
    for slot in range(len(o.SLOT_EXEC_IDS)):
        life = runner.lives.get(slot)
        state = "free" if life is None or life.state == "deleted" else life.state
        start = st.builds(o.Start, st.just(slot))
        write = st.builds(o.Write, st.just(slot), lines)
        kill = st.builds(o.Kill, st.just(slot), signals, st.booleans())
        close_io = st.builds(o.CloseIO, st.just(slot), st.sampled_from([True, True, True, False]))
        resize = st.builds(lambda size, slot=slot: o.Resize(slot, size[0], size[1]), sizes)
        wait = st.builds(o.Wait, st.just(slot), st.sampled_from([0.0, 0.01, 0.05]))
        force_exit = st.builds(o.ForceExit, st.just(slot), statuses)
        delete = st.builds(o.Delete, st.just(slot))
        observe = st.builds(o.Observe, st.just(slot))
        create = creates(st.just(slot))
        if state == "free":
            choices += [create] * 4
        elif state == "created":
            choices += [start] * 4 + [write] * 2 + [close_io, resize, wait, force_exit, delete, kill, observe,
                                                   create]
        elif state == "running":
            choices += [write] * 4 + [kill] * 3 + [close_io] * 2 + [resize, wait, force_exit, observe,
                                                                    st.builds(o.ObserveAgentStopped, st.just(slot)),
                                                                    delete, start, create]
        else:
            choices += [delete] * 3 + [wait, observe, kill, force_exit, resize, close_io, start, create]
        if life is not None and (life.state == "deleted" or runner.has_stale(slot)):
            choices.append(st.builds(lambda op, slot=slot: op(slot, stale=True),
                                     st.sampled_from([o.Start, o.Delete, o.Observe, o.CloseIO])))
            choices.append(st.builds(o.Kill, st.just(slot), signals, st.booleans(), st.just(True)))
            choices.append(st.builds(o.ForceExit, st.just(slot), statuses, st.just(True)))
    return st.one_of(choices)


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
        report_multiple_bugs=SHRINK,
        # The explain phase reruns a failure hundreds of times to point at lines; the transcript
        # in the failure message says more, in a fraction of the time.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target] + ([Phase.shrink] if SHRINK else []),
    )(test)
    return seed(SEED)(configured) if SEED is not None else configured


# -- the test --------------------------------------------------------------------------------


@pytest.mark.timeout(HARD_TIMEOUT)
# On a failure Hypothesis' pytest plugin imports libcst (to suggest a patch), which warns about
# mypy_extensions; as an error that would replace the report of the failure itself.
@pytest.mark.filterwarnings("ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")
@_settings
@given(data=st.data())
def test_local_and_proxied_execs_are_indistinguishable(data: st.DataObject, client: AgentClient,
                                                       ipc_agent: AgentProcess, tmp_path) -> None:
    run = next(_runs)
    root = str(tmp_path / f"run{run}")
    task_id = f"difftask-{run}"
    sides = (
        Side("local", LocalExec, os.path.join(root, "local")),
        Side("proxied", client.create_exec, os.path.join(root, "proxied"), agent_pid=ipc_agent.pid),
    )
    before = set(descendants(os.getpid()))
    try:
        with running(sides, task_id) as runner:
            # Uniform (integers() favours small numbers), and shrinks towards one step.
            steps = data.draw(st.sampled_from(range(1, MAX_STEPS + 1)), label="steps")
            for index in range(steps):
                op = data.draw(creates(st.just(0)) if index == 0 else next_operation(runner), label=f"#{index}")
                runner.step(index, op)
            runner.finish()
        # Deleted (or cleaned-up) execs leave no record on the agent and no process behind.
        left = [status for status in client.list_execs() if status.id == task_id]
        assert not left, f"the agent still holds records of deleted execs: {left}"
        wait_exited(descendants(ipc_agent.pid), timeout=10)
        # Processes of this test run's others (a LocalTask's private agent and its containers)
        # were there before the example and are not its to end.
        not_ours = {ipc_agent.pid, *descendants(ipc_agent.pid)}
        for pid in before:
            not_ours |= {pid, *descendants(pid)}
        wait_exited([pid for pid in descendants(os.getpid()) if pid not in not_ours], timeout=10)
        if runner.violations:
            raise AssertionError("both backends agree, but break the contract:\n  " + "\n  ".join(runner.violations))
    finally:
        shutil.rmtree(root, ignore_errors=True)
