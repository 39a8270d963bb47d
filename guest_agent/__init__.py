"""The uvmexec agent: runs inside the guest, drives the common supervisor behind the wire.

It imports :mod:`common` only — never ``host_proxy``, never paramiko — and
runs on Debian bookworm's own python3 with python3-zmq and python3-msgpack.
"""
