"""The committed protobuf modules match the .proto files, and the field numbers match containerd's wire."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

from google.protobuf import descriptor_pb2

from host_proxy.shim.proto import events_pb2, events_service_pb2, shim_pb2


def _without_json_names(messages) -> None:
    # protoc adds json_name to a descriptor set, not to the descriptors it embeds in a module.
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _without_json_names(message.nested_type)


PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_generated_modules_are_those_of_the_proto_files(tmp_path) -> None:
    # grpcio-tools is a dev dependency (.ci/setup installs it): regenerating is how the modules were made.
    protos = sorted(os.path.relpath(path, PROJECT) for path in glob.glob(f"{PROJECT}/host_proxy/shim/proto/*.proto"))
    out = tmp_path / "set.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--descriptor_set_out={out}", *protos],
                   cwd=PROJECT, check=True)
    generated = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert len(generated.file) == len(protos) == 11
    for file in generated.file:
        _without_json_names(file.message_type)
        module = file.name.replace("/", ".").removesuffix(".proto") + "_pb2"
        serialized = __import__(module, fromlist=["_"]).DESCRIPTOR.serialized_pb
        committed = descriptor_pb2.FileDescriptorProto.FromString(serialized)
        assert committed == file, f"{file.name}: regenerate (see host_proxy/shim/proto/__init__.py)"


def test_messages_encode_as_containerd_encodes_them() -> None:
    # Hand-assembled from containerd's field numbers: TaskExit{1 container_id, 2 id, 3 pid, 4 exit_status}.
    assert events_pb2.TaskExit(container_id="c", id="e", pid=5, exit_status=3).SerializeToString() == (
        b"\x0a\x01c\x12\x01e\x18\x05\x20\x03")
    # ExecProcessRequest.spec is field 7; StateResponse.exec_id is field 11.
    assert shim_pb2.ExecProcessRequest(exec_id="e").SerializeToString() == b"\x12\x01e"
    assert shim_pb2.StateResponse(exec_id="e").SerializeToString() == b"\x5a\x01e"
    # ForwardRequest{1 envelope{3 topic}}.
    forward = events_service_pb2.ForwardRequest(envelope=events_service_pb2.Envelope(topic="/t"))
    assert forward.SerializeToString() == b"\x0a\x04\x1a\x02/t"
    assert events_pb2.TaskExit.DESCRIPTOR.full_name == "containerd.events.TaskExit"


def test_the_hand_encoded_delete_response_is_the_generated_ones() -> None:
    import datetime

    from host_proxy.shim import wire
    from host_proxy.shim.events import timestamp

    moments = [datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC), datetime.datetime(1969, 12, 31, 23, 59, 59, 500000,
                                                                                     tzinfo=datetime.UTC),
               datetime.datetime.now(datetime.UTC), datetime.datetime(2026, 12, 3, 13, 5, 27, 162, tzinfo=datetime.UTC)]
    for moment in moments:
        for pid, exit_status in [(0, 0), (1, 137), (4_194_304, 255), (2**32 - 1, 2**32 - 1)]:
            expected = shim_pb2.DeleteResponse(pid=pid, exit_status=exit_status, exited_at=timestamp(moment))
            assert wire.delete_response(pid, exit_status, moment) == expected.SerializeToString(), (moment, pid)
