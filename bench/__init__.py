"""Side-by-side benchmarks: uvmexec against the baselines a user would otherwise pick.

Every figure is printed with its ratio against a baseline measured in the same
invocation, interleaved with it (``python -m bench --help``). Families, one
module each:

- :mod:`bench.ping` — ``status()`` round trip vs a raw pyzmq+msgpack ping;
- :mod:`bench.lifecycle` — create/start/wait/delete of ``true`` vs ``subprocess.run``;
- :mod:`bench.throughput` — stdout streamed into a host file vs ``LocalExec``;
- :mod:`bench.fanout` — many concurrent ``sleep`` execs on one connection;
- :mod:`bench.shim` — ``ctr task exec``, ``ctr run --rm`` and memory through our containerd shim vs
  containerd's runc v2 shim;
- :mod:`bench.guest` — the same guest reached by uvmexec, SSH and qemu-ga.

:mod:`bench.report` formats the table; :mod:`bench.measure` holds the timing,
statistics and memory helpers; :mod:`bench.profile` runs the hot paths under
py-spy.
"""
