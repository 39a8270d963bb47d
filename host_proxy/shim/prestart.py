"""What the shim's server starts before it imports the rest: the private agent of a process-isolated container.

The server learns its container's isolation only at ``Create``, but what
decides it is there from the start: the bundle's ``config.json``, the runtime
options file, the environment (:func:`.isolation.choose`). When it is
``process``, :func:`prestart` spawns the private agent at once, so that the
agent's interpreter boots while the server's imports its own modules, rather
than after them inside ``Create``. The ``LocalTask`` that ``Create`` makes then
takes that agent (:func:`host_proxy.private_agent.private_client`). A bundle
that says nothing usable spawns nothing: ``Create`` decides, and reports, as
before.
"""

from __future__ import annotations

from common.errors import ExecError

from . import isolation


def prestart(bundle: str, options_path: str) -> None:
    """Spawn the private agent now if the container in ``bundle`` will run in process isolation.

    Call it from the server's main thread (the agent dies with the thread that spawned it).
    """
    try:
        chosen = isolation.choose(bundle, options_path)
    except ExecError:
        return
    if chosen == isolation.PROCESS:
        from host_proxy.private_agent import spawn_private_agent

        spawn_private_agent()
