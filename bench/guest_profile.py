"""Profile the agent *inside* the QEMU guest while the host drives it: ``python -m bench.profile guest``.

Under TCG every guest instruction is emulated, so the agent's own Python work
weighs far more in a guest round trip than on the host. This boots the
guest, copies the (statically linked) ``py-spy`` binary into it through a
uvmexec exec's stdin, starts ``py-spy record`` there on the agent's pid
(the agent says its pid in ``hello``), drives the chosen workload from the
host over tcp for the duration, then fetches the collapsed stacks and
summarizes them like :func:`bench.profile.summarize`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable

from common import ProcessSpec, Stdio
from host_proxy import AgentClient

from .lifecycle import describe_phases, lifecycle_case
from .measure import median

GUEST_PY_SPY = "/tmp/py-spy"
GUEST_OUTPUT = "/tmp/agent-profile.txt"


def _run(client: AgentClient, args: list[str], *, stdin: str | None = None, stdout: str | None = None,
         exec_id: str, timeout: float = 300) -> int:
    made = client.create_exec("bench-guest-profile", exec_id, ProcessSpec(args=args),
                              Stdio(stdin=stdin, stdout=stdout))
    made.start()
    status = made.wait(timeout=timeout)
    made.delete()
    return status.exit_status


def profile_guest(workload: str, seconds: float, rate: int, out_dir: str, top: int, native: bool = False) -> None:
    from vm_images import boot, build_image

    from .profile import summarize

    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("bench.profile guest: py-spy is not installed (pip install py-spy)")
    os.makedirs(out_dir, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix="uvm-bench-gprof-")
    try:
        with boot(build_image()) as info, AgentClient.connect(
                info.agent_endpoint, server_key=info.server_key, client_key=info.client_key, timeout=30) as client:
            agent_pid = int(client.agent_info["pid"])
            copied = _run(client, ["sh", "-c", f"cat > {GUEST_PY_SPY} && chmod +x {GUEST_PY_SPY}"],
                          stdin=os.path.realpath(py_spy), exec_id="copy")
            if copied != 0:
                raise SystemExit(f"copying py-spy into the guest failed ({copied})")
            phases: dict[str, list[float]] = {}
            once: Callable[[], object]
            if workload == "status":
                target = client.create_exec("bench-guest-profile", "status", ProcessSpec(args=["true"]), Stdio())
                once = target.status
            else:
                once = lifecycle_case(client.create_exec, "bench-guest-profile-life", phases)
            for _ in range(5):
                once()
            spy = client.create_exec("bench-guest-profile", "py-spy", ProcessSpec(args=[
                GUEST_PY_SPY, "record", "--pid", str(agent_pid), "--format", "raw", "--threads", "--nonblocking",
                "--rate", str(rate), "--duration", str(int(seconds)), "--output", GUEST_OUTPUT,
                *(["--native"] if native else [])]), Stdio())
            spy.start()
            time.sleep(2.0)  # py-spy starts slowly under TCG
            durations = []
            deadline = time.monotonic() + seconds - 2.0
            while time.monotonic() < deadline:
                started = time.perf_counter()
                once()
                durations.append(time.perf_counter() - started)
            spy.wait(timeout=120)
            spy.delete()
            if workload == "status":
                target.delete()
            local = os.path.join(out_dir, f"guest-{workload}-agent.txt")
            if os.path.exists(local):
                os.unlink(local)
            _run(client, ["cat", GUEST_OUTPUT], stdout=local, exec_id="fetch")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"guest {workload}: {len(durations)} iterations while sampling, median {median(durations) * 1e3:.2f} ms")
    if phases:
        print(f"  median per call: {describe_phases(phases)}")
    print(f"\nagent in the guest ({local}):")
    print(summarize(local, rate, seconds, top))
