"""Protobuf by hand for the short-lived ``delete`` command: its one answer without importing protobuf.

containerd runs ``containerd-shim-uvmexec-v1 … delete`` after every shim
disconnect and waits for its ``DeleteResponse`` (``shim.proto``: 1 pid, 2
exit_status, 3 exited_at ``google.protobuf.Timestamp{1 seconds, 2 nanos}``).
Importing protobuf and the generated modules would cost that command most of
its time; these few fields are encoded here as protobuf does (proto3: a zero
scalar is left out). ``tests/shim/test_proto.py`` checks the bytes against
the generated ``shim_pb2``.
"""

from __future__ import annotations

import datetime

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64/int32: two's complement, ten bytes
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _scalar(field_number: int, value: int) -> bytes:
    return _varint(field_number << 3) + _varint(value) if value else b""


def timestamp(moment: datetime.datetime) -> bytes:
    """``google.protobuf.Timestamp`` of an aware datetime, as ``Timestamp.FromDatetime`` encodes it."""
    delta = moment - _EPOCH
    seconds = delta.days * 86400 + delta.seconds
    return _scalar(1, seconds) + _scalar(2, delta.microseconds * 1000)


def delete_response(pid: int, exit_status: int, exited_at: datetime.datetime) -> bytes:
    """``containerd.task.v2.DeleteResponse{pid, exit_status, exited_at}``, serialized."""
    stamp = timestamp(exited_at)
    return _scalar(1, pid) + _scalar(2, exit_status) + b"\x1a" + _varint(len(stamp)) + stamp
