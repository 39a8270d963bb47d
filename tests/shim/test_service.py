"""The Task service on a real LocalTask, with a fake containerd events service: what Wait promises."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from common import ProcessSpec
from common.errors import ExecError
from host_proxy.shim import isolation, ttrpc
from host_proxy.shim.events import EVENTS_SERVICE, Publisher
from host_proxy.shim.proto import events_service_pb2, mount_pb2, shim_pb2, task_types_pb2
from host_proxy.shim.service import TaskService, process_task
from host_proxy.shim.testbed import ends_within
from tests.tasks.helpers import mounts_at_or_under, runc_ids
from vm_images.busybox import Bundle, make_bundle


class FakeContainerd:
    """containerd's ttRPC events service: records topics; holds /tasks/exit until released."""

    def __init__(self, path: str) -> None:
        self.topics: list[str] = []
        self.exit_arrived = threading.Event()
        self.release_exit = threading.Event()
        self._server = ttrpc.Server({EVENTS_SERVICE: {"Forward": self._forward}})
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen()
        self._thread = threading.Thread(target=self._server.serve, args=(self._listener,))
        self._thread.start()

    def _forward(self, payload: bytes) -> bytes:
        topic = events_service_pb2.ForwardRequest.FromString(payload).envelope.topic
        if topic == "/tasks/exit":
            self.exit_arrived.set()
            assert self.release_exit.wait(30)
        self.topics.append(topic)
        return b""

    def close(self) -> None:
        self.release_exit.set()
        self._server.close()
        self._thread.join(10)
        self._listener.close()


def _process_bundle(tmp_path, args: list[str], change: Callable[[dict], object] | None = None) -> Bundle:
    """A busybox bundle running ``args`` whose config.json asks for process isolation (then ``change``d)."""
    bundle = make_bundle(tmp_path / "bundle", ProcessSpec(args=args, env=["PATH=/bin"]))
    config_path = os.path.join(bundle.path, "config.json")
    with open(config_path) as config_file:
        config = json.load(config_file)
    config["annotations"] = {isolation.ANNOTATION: isolation.PROCESS}
    if change is not None:
        change(config)
    with open(config_path, "w") as config_file:
        json.dump(config, config_file)
    return bundle


@pytest.fixture
def fake_containerd(tmp_path) -> Iterator[FakeContainerd]:
    fake = FakeContainerd(str(tmp_path / "events.sock"))
    try:
        yield fake
    finally:
        fake.close()


def test_wait_answers_only_after_containerd_took_the_exit_event(tmp_path, fake_containerd: FakeContainerd) -> None:
    bundle = _process_bundle(tmp_path, ["sh", "-c", "exit 3"])
    publisher = Publisher(str(tmp_path / "events.sock"), "default")
    service = TaskService(publisher, {isolation.PROCESS: process_task})
    task_id = f"uvmexec-shim-test-{os.getpid()}"
    rootfs = [mount_pb2.Mount(type=mount.type, source=mount.source, options=list(mount.options))
              for mount in bundle.rootfs]
    try:
        service.create(shim_pb2.CreateTaskRequest(id=task_id, bundle=bundle.path, rootfs=rootfs))
        answers: list[shim_pb2.WaitResponse] = []
        waiter = threading.Thread(target=lambda: answers.append(service.wait(shim_pb2.WaitRequest(id=task_id))))
        waiter.start()
        service.start(shim_pb2.StartRequest(id=task_id))
        assert fake_containerd.exit_arrived.wait(30)
        waiter.join(0.5)  # the exit event is held at containerd: Wait must still be waiting
        assert answers == [] and waiter.is_alive()
        fake_containerd.release_exit.set()
        waiter.join(30)
        assert [answer.exit_status for answer in answers] == [3]
        service.delete(shim_pb2.DeleteRequest(id=task_id))
        publisher.flush()
        assert fake_containerd.topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]
    finally:
        fake_containerd.release_exit.set()
        with contextlib.suppress(ExecError):  # the test failed before its own delete
            service.delete(shim_pb2.DeleteRequest(id=task_id))
        publisher.close()
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []


def test_a_task_killed_before_start_exits_once_as_the_runc_shims(tmp_path, fake_containerd: FakeContainerd) -> None:
    """Create runs runc create (a pid, State says CREATED); Kill ends that process; /tasks/exit goes out
    once, before Wait answers, though the init never started; Delete reports the pid and status."""
    bundle = _process_bundle(tmp_path, ["sleep", "1000"])
    publisher = Publisher(str(tmp_path / "events.sock"), "default")
    service = TaskService(publisher, {isolation.PROCESS: process_task})
    task_id = f"uvmexec-shim-test-{os.getpid()}"
    rootfs = [mount_pb2.Mount(type=mount.type, source=mount.source, options=list(mount.options))
              for mount in bundle.rootfs]
    try:
        pid = service.create(shim_pb2.CreateTaskRequest(id=task_id, bundle=bundle.path, rootfs=rootfs)).pid
        assert pid > 0 and os.path.exists(f"/proc/{pid}")
        state = service.state(shim_pb2.StateRequest(id=task_id))
        assert (state.status, state.pid) == (task_types_pb2.CREATED, pid)
        assert [process.pid for process in service.pids(shim_pb2.PidsRequest(id=task_id)).processes] == [pid]
        answers: list[shim_pb2.WaitResponse] = []
        waiter = threading.Thread(target=lambda: answers.append(service.wait(shim_pb2.WaitRequest(id=task_id))))
        waiter.start()
        service.kill(shim_pb2.KillRequest(id=task_id, signal=9))
        assert fake_containerd.exit_arrived.wait(30)
        waiter.join(0.5)  # the exit event is held at containerd: Wait must still be waiting
        assert answers == [] and waiter.is_alive()
        fake_containerd.release_exit.set()
        waiter.join(30)
        assert [answer.exit_status for answer in answers] == [137]
        state = service.state(shim_pb2.StateRequest(id=task_id))
        assert (state.status, state.pid, state.exit_status) == (task_types_pb2.STOPPED, pid, 137)
        deleted = service.delete(shim_pb2.DeleteRequest(id=task_id))
        assert (deleted.pid, deleted.exit_status) == (pid, 137)
        publisher.flush()
        assert fake_containerd.topics == ["/tasks/create", "/tasks/exit", "/tasks/delete"]
    finally:
        fake_containerd.release_exit.set()
        with contextlib.suppress(ExecError):  # the test failed before its own delete
            service.delete(shim_pb2.DeleteRequest(id=task_id))
        publisher.close()
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []


def test_a_task_deleted_before_start_publishes_no_exit(tmp_path, fake_containerd: FakeContainerd) -> None:
    bundle = _process_bundle(tmp_path, ["sleep", "1000"])
    publisher = Publisher(str(tmp_path / "events.sock"), "default")
    service = TaskService(publisher, {isolation.PROCESS: process_task})
    task_id = f"uvmexec-shim-test-{os.getpid()}"
    rootfs = [mount_pb2.Mount(type=mount.type, source=mount.source, options=list(mount.options))
              for mount in bundle.rootfs]
    try:
        pid = service.create(shim_pb2.CreateTaskRequest(id=task_id, bundle=bundle.path, rootfs=rootfs)).pid
        deleted = service.delete(shim_pb2.DeleteRequest(id=task_id))
        assert (deleted.pid, deleted.exit_status) == (pid, 0)
        assert ends_within(pid, 0)  # runc delete --force killed it
        publisher.flush()
        assert fake_containerd.topics == ["/tasks/create", "/tasks/delete"]
    finally:
        with contextlib.suppress(ExecError):
            service.delete(shim_pb2.DeleteRequest(id=task_id))
        publisher.close()
    assert task_id not in runc_ids()


def _failing_create(service: TaskService, request: shim_pb2.CreateTaskRequest) -> ttrpc.RpcError:
    """Create through the method table containerd's calls go through; the RpcError it answers."""
    with pytest.raises(ttrpc.RpcError) as raised:
        service.methods()["Create"](request.SerializeToString())
    return raised.value


def _process_service(tmp_path) -> TaskService:
    publisher = Publisher(str(tmp_path / "events.sock"), "default")
    return TaskService(publisher, {isolation.PROCESS: process_task})


@pytest.mark.parametrize(("change", "words"), [
    (lambda config: config.update(process={"args": "sh"}), "process.args"),
    (lambda config: config.update(root=7), "root"),
    (lambda config: config["annotations"].update({isolation.ANNOTATION: "vm"}), "unknown isolation 'vm'"),
])
def test_a_config_json_that_is_not_valid_is_invalid_argument_naming_the_field(
        tmp_path, fake_containerd: FakeContainerd, change, words: str) -> None:
    bundle = _process_bundle(tmp_path, ["true"], change)
    task_id = f"uvmexec-shim-bad-{os.getpid()}"
    rootfs = [mount_pb2.Mount(type=mount.type, source=mount.source, options=list(mount.options))
              for mount in bundle.rootfs]
    error = _failing_create(_process_service(tmp_path),
                            shim_pb2.CreateTaskRequest(id=task_id, bundle=bundle.path, rootfs=rootfs))
    assert error.code == ttrpc.INVALID_ARGUMENT and words in error.message, error
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []
    assert fake_containerd.topics == []


def test_a_rootfs_mount_that_fails_is_refused_and_leaves_no_mount(tmp_path, fake_containerd: FakeContainerd) -> None:
    bundle = _process_bundle(tmp_path, ["true"])
    task_id = f"uvmexec-shim-mount-{os.getpid()}"
    good = [mount_pb2.Mount(type=mount.type, source=mount.source, options=list(mount.options))
            for mount in bundle.rootfs]
    bad = mount_pb2.Mount(type="bind", source=str(tmp_path / "no-such-dir"), options=["rbind", "ro"])
    error = _failing_create(_process_service(tmp_path),
                            shim_pb2.CreateTaskRequest(id=task_id, bundle=bundle.path, rootfs=[*good, bad]))
    assert error.code == ttrpc.INVALID_ARGUMENT and "no-such-dir" in error.message, error
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []
