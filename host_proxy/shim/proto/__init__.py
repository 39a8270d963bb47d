"""Protobuf messages containerd's shim protocol uses, generated from the ``.proto`` files here.

The ``*_pb2.py``/``*_pb2.pyi`` modules are generated and committed (the guest
and plain installs need no protoc); regenerate after editing a ``.proto``,
from the project root::

    python3 -m grpc_tools.protoc -I. --python_out=. --pyi_out=. host_proxy/shim/proto/*.proto

``tests/shim/test_proto.py`` fails when a ``.proto`` and its module disagree.
"""
