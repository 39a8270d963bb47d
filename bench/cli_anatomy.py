"""Where the time of one ``uvmexec run -- true`` (or ``--vm``) goes, phase by phase, in a fresh process.

``python -m bench.cli_anatomy [--vm]`` does what ``uvmexec run -- true``
does, in the same order — the light command-line modules, the private agent
spawned before the heavy imports (so the two overlap), ZeroMQ and the client
imported, the agent's ready line awaited, the hello handshake, the exec
(create + start + exit + delete), the teardown — and prints one JSON object:
seconds per phase, measured from the interpreter's start where that is
known (``time.perf_counter`` at the first line of this module, after the
interpreter and ``site`` came up). With ``--vm`` the private agent is
replaced by finding the running VM (``vm_images.status()``) and a CURVE
handshake over tcp.
"""

from __future__ import annotations

import time

_BEGAN = time.perf_counter()

import json  # noqa: E402 - timed from the first line
import sys  # noqa: E402


def main() -> None:
    vm = "--vm" in sys.argv[1:]
    phases: dict[str, float] = {}
    mark = _BEGAN

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    from host_proxy.cli.args import build_parser  # what main() imports before anything else

    build_parser().parse_args(["run", "--vm", "--", "true"] if vm else ["run", "--", "true"])
    lap("import and parse (light modules)")
    agent = None
    if not vm:
        from host_proxy.cli.embedded import PrivateAgent

        agent = PrivateAgent().spawn()
        lap("spawn the private agent")
    from common import ProcessSpec, Stdio
    from host_proxy import AgentClient

    lap("import ZeroMQ, asyncio and the client")
    if vm:
        import vm_images

        info = vm_images.status()
        if info is None:
            raise SystemExit("no VM runs")
        lap("find the VM (vm_images.status)")
        endpoint, keys = info.agent_endpoint, {"server_key": info.server_key, "client_key": info.client_key}
    else:
        assert agent is not None
        agent.wait_ready()
        lap("wait for the private agent's ready line")
        endpoint, keys = agent.endpoint, {}
    # As the command line connects: no request-only sockets (each would cost another handshake).
    client = AgentClient.connect(endpoint, direct=False, **keys)  # type: ignore[arg-type]
    lap("connect (hello handshake)")
    made = client.create_exec("uvmexec", "anatomy", ProcessSpec(args=["true"]), Stdio())
    made.start()
    lap("exec: create + start (one round trip)")
    status = made.wait(timeout=30)
    lap("exec: until its exit is here")
    made.delete()
    lap("exec: delete (one round trip)")
    client.close()
    if agent is not None:
        agent.idle = True  # as uvmexec run marks it once its exec is deleted
        agent.stop()
    lap("close (and stop the private agent)")
    if status.exit_status != 0:
        raise SystemExit(f"true exited with {status.exit_status}")
    print(json.dumps(phases))


if __name__ == "__main__":
    main()
