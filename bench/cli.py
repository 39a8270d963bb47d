"""The command line's own cost: ``uvmexec run -- true`` as a person types it, against what they would use instead.

Two tables, every case a whole process started the way a shell starts it:

- ``cli_embedded``: ``uvmexec run -- true`` on the embedded default (a
  private agent per command) against ``python3 -c pass`` (the floor of any
  Python command line). Target (issue 16): at most 3×.
- ``cli_vm``: ``uvmexec run --vm -- true`` against ``ssh`` through an
  already open ControlMaster to the same guest (booted once, in a private
  state directory). Target: at most 1.0×. ``python3 -c pass`` is shown too.

Each table then says where the time goes: medians of the phases
:mod:`bench.cli_anatomy` measures in a fresh process (imports, the private
agent's start, the handshake, the exec, the teardown), shown for the
analysis (no target).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from .measure import Options, interleave, private_directory
from .report import FamilyResult, Target

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMBEDDED_TARGET = Target("<=", 3.0)
VM_TARGET = Target("<=", 1.0)
PYTHON_PASS = "python3 -c pass"


def _process(argv: list[str], env: dict[str, str]) -> Callable[[], None]:
    def once() -> None:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env, cwd=ROOT, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{argv!r} exited with {done.returncode}: {done.stderr.decode(errors='replace')}")

    return once


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("UVMEXEC_")}
    env["PYTHONPATH"] = ROOT
    env.update(extra)
    return env


def _anatomy(result: FamilyResult, env: dict[str, str], runs: int, *args: str) -> None:
    """Phase figures (medians of ``runs`` fresh processes), for the analysis."""
    phases: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-m", "bench.cli_anatomy", *args], stdin=subprocess.DEVNULL,
                              capture_output=True, env=env, cwd=ROOT, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"bench.cli_anatomy {args}: {done.stderr.decode(errors='replace')}")
        for name, seconds in json.loads(done.stdout).items():
            phases.setdefault(name, []).append(seconds)
    for name, samples in phases.items():
        result.add(f"  phase: {name}", samples, note="in a fresh process (bench.cli_anatomy)")


def _embedded(options: Options) -> FamilyResult:
    result = FamilyResult("cli_embedded", "uvmexec run -- true (private agent) vs python3 -c pass")
    rounds, per_round = options.pick(3, 10), options.pick(3, 5)
    env = _env()
    cases = {
        PYTHON_PASS: _process([sys.executable, "-c", "pass"], env),
        "uvmexec run -- true": _process([sys.executable, "-m", "host_proxy.cli", "run", "--", "true"], env),
    }
    options.progress(f"cli_embedded: {len(cases)} cases, {rounds} rounds x {per_round}")
    samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=1)
    base = result.add(PYTHON_PASS, samples[PYTHON_PASS], is_baseline=True)
    result.add("uvmexec run -- true", samples["uvmexec run -- true"]).compare(base, EMBEDDED_TARGET)
    _anatomy(result, env, options.pick(5, 15))
    result.notes.append("the phases add up to the time from the interpreter's first line to exit; the "
                        "interpreter's own start is the baseline's")
    return result.finish()


def _vm(options: Options) -> FamilyResult:
    result = FamilyResult("cli_vm", "uvmexec run --vm -- true vs ssh through a ControlMaster, same guest")
    if shutil.which("qemu-system-x86_64") is None or shutil.which("ssh") is None:
        result.notes.append("skipped: needs qemu-system-x86_64 and ssh")
        return result.finish()
    import vm_images

    from .peers import ControlMasterPeer

    rounds, per_round = options.pick(3, 10), options.pick(3, 5)
    state = private_directory("uvm-bench-cli-")
    try:
        options.progress("cli_vm: booting the guest")
        info = vm_images.up(state_dir=Path(state))
        result.notes.append(f"guest booted in {info.boot_seconds:.1f} s ({info.accel})")
        openssh = ControlMasterPeer(info.ssh_host, info.ssh_port, info.ssh_user, str(info.ssh_key),
                                    str(info.known_hosts), state)
        try:
            env = _env(UVMEXEC_VM_STATE=state)
            cases = {
                "ssh ControlMaster true": openssh.true,
                "uvmexec run --vm -- true": _process([sys.executable, "-m", "host_proxy.cli", "run", "--vm", "--",
                                                      "true"], env),
                PYTHON_PASS: _process([sys.executable, "-c", "pass"], env),
            }
            options.progress(f"cli_vm: {len(cases)} cases, {rounds} rounds x {per_round}")
            samples = interleave(cases, rounds=rounds, per_round=per_round, warmup=1)
            base = result.add("ssh ControlMaster true", samples["ssh ControlMaster true"], is_baseline=True)
            result.add("uvmexec run --vm -- true", samples["uvmexec run --vm -- true"]).compare(base, VM_TARGET)
            result.add(PYTHON_PASS, samples[PYTHON_PASS]).compare(base)
            _anatomy(result, env, options.pick(5, 15), "--vm")
        finally:
            openssh.close()
    finally:
        vm_images.down(state_dir=Path(state))
        shutil.rmtree(state, ignore_errors=True)
    return result.finish()


def run(options: Options) -> list[FamilyResult]:
    return [_embedded(options), _vm(options)]
