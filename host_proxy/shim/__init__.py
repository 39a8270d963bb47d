"""``containerd-shim-uvmexec-v1``: a containerd runtime v2 shim running containers on uvmexec.

Layers, each its own module: :mod:`.ttrpc` (the wire: frames, a concurrent
server, a client), :mod:`.proto` (protobuf messages generated from the
``.proto`` files beside them), :mod:`.service` (``containerd.task.v2.Task``
mapped thinly onto the task and exec contract), :mod:`.events` (publishing to
containerd), :mod:`.isolation` (process or hypervisor, per container) and
:mod:`.main` (the commands containerd runs; :mod:`.runtime_options`,
:mod:`.wire` and :mod:`.prestart` keep its short-lived commands and the
server's start light). :mod:`.testbed` starts a private containerd with this
checkout's shim, for the tests and the benchmarks. Host only: the guest needs none
of it, and nothing outside this package imports protobuf.
"""
