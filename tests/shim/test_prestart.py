"""The shim's server spawns a process-isolated container's private agent before its imports, and the
task takes that agent; a hypervisor container gets none. The start command imports no protobuf."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from common.supervisor.runc import ROOT_ENV
from host_proxy.shim.prestart import RUNC_ROOT_ENV

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = r"""
import json, os, sys
from host_proxy import private_agent
from host_proxy.shim.prestart import prestart
prestart(sys.argv[1], "", sys.argv[1] + "/runc-root")
early = private_agent._early
print(json.dumps({"early": early.process.pid if early else None}), flush=True)
if early is not None:
    private_agent.private_client()
    shared = private_agent._shared[0]
    with open(f"/proc/{shared.process.pid}/environ", "rb") as environ:
        root = [entry for entry in environ.read().split(b"\0") if entry.startswith(b"UVMEXEC_RUNC_ROOT=")]
    print(json.dumps({"taken": shared.process.pid, "directory": shared.directory, "root": root[0].decode()}),
          flush=True)
"""


def _bundle(tmp_path, isolation: str) -> str:
    (tmp_path / "config.json").write_text(json.dumps({"annotations": {"io.uvmexec.isolation": isolation}}))
    return str(tmp_path)


def _run(bundle: str) -> list[dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": PROJECT}
    env.pop("UVMEXEC_ISOLATION", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT, bundle], capture_output=True, text=True, env=env,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_a_process_isolated_bundle_gets_its_agent_early_and_the_task_takes_it(tmp_path) -> None:
    early, taken = _run(_bundle(tmp_path, "process"))
    assert early["early"] is not None and taken["taken"] == early["early"]
    # It was spawned with the server's runc root (what common.supervisor.runc reads).
    assert taken["root"] == f"{ROOT_ENV}={tmp_path}/runc-root"
    # Stopped at exit: its private directory is gone.
    assert not os.path.exists(str(taken["directory"]))


def test_a_hypervisor_bundle_or_a_bad_one_spawns_nothing(tmp_path) -> None:
    assert _run(_bundle(tmp_path, "hypervisor")) == [{"early": None}]
    assert _run(_bundle(tmp_path, "bogus")) == [{"early": None}]


def test_the_runc_root_variable_is_the_supervisors() -> None:
    assert RUNC_ROOT_ENV == ROOT_ENV


def test_the_start_command_imports_no_protobuf() -> None:
    script = ("import sys; from host_proxy.shim import main, runtime_options; "
              "print(sorted(m for m in sys.modules if m.startswith(('google', 'zmq', 'asyncio', 'common'))))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": PROJECT}, check=True)
    assert done.stdout.strip() == "[]"
