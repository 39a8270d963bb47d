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

import os

from common.errors import ExecError

from . import isolation

#: ``common.supervisor.runc.ROOT_ENV`` (tests/shim/test_prestart.py holds them equal): importing that
#: package here would delay the spawn by its imports.
RUNC_ROOT_ENV = "UVMEXEC_RUNC_ROOT"


def prestart(bundle: str, options_path: str, runc_root: str) -> None:
    """Spawn the private agent now if the container in ``bundle`` will run in process isolation.

    ``runc_root`` is the runc state root the server gives its agent's runc (through the environment,
    which the agent inherits). Call it from the server's main thread (the agent dies with the thread
    that spawned it).
    """
    os.environ[RUNC_ROOT_ENV] = runc_root
    try:
        chosen = isolation.choose(bundle, options_path)
    except ExecError:
        return
    if chosen == isolation.PROCESS:
        from host_proxy.private_agent import spawn_private_agent

        spawn_private_agent()
