"""The Task service on a real LocalTask, with a fake containerd events service: what Wait promises."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

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


@dataclass
class Served:
    service: TaskService
    publisher: Publisher
    task_id: str
    create: shim_pb2.CreateTaskRequest


@contextlib.contextmanager
def _served(tmp_path, fake_containerd: FakeContainerd, args: list[str]) -> Iterator[Served]:
    """A process-isolated task service and the Create request of a busybox bundle running ``args``;
    afterwards the task is gone (deleted here if the test stopped first): no runc state, no mount."""
    bundle = _process_bundle(tmp_path, args)
    publisher = Publisher(str(tmp_path / "events.sock"), "default")
    task_id = f"uvmexec-shim-test-{os.getpid()}"
    served = Served(TaskService(publisher, {isolation.PROCESS: process_task}), publisher, task_id,
                    shim_pb2.CreateTaskRequest(id=task_id, bundle=bundle.path, rootfs=_rootfs(bundle)))
    try:
        yield served
    finally:
        fake_containerd.release_exit.set()
        with contextlib.suppress(ExecError):  # the test failed before its own delete
            served.service.delete(shim_pb2.DeleteRequest(id=served.task_id))
        publisher.close()
    assert served.task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []


def _rootfs(bundle: Bundle) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=mount.type, source=mount.source, options=list(mount.options))
            for mount in bundle.rootfs]


def _wait_behind_the_exit_event(served: Served, fake_containerd: FakeContainerd, end: Callable[[], object]) -> int:
    """Wait for the init while ``end()`` ends it: Wait answers only once containerd took /tasks/exit."""
    answers: list[shim_pb2.WaitResponse] = []
    waiter = threading.Thread(target=lambda: answers.append(served.service.wait(
        shim_pb2.WaitRequest(id=served.task_id))))
    waiter.start()
    end()
    assert fake_containerd.exit_arrived.wait(30)
    waiter.join(0.5)  # the exit event is held at containerd: Wait must still be waiting
    assert answers == [] and waiter.is_alive()
    fake_containerd.release_exit.set()
    waiter.join(30)
    assert len(answers) == 1
    return answers[0].exit_status


def test_wait_answers_only_after_containerd_took_the_exit_event(tmp_path, fake_containerd: FakeContainerd) -> None:
    with _served(tmp_path, fake_containerd, ["sh", "-c", "exit 3"]) as served:
        served.service.create(served.create)
        assert _wait_behind_the_exit_event(
            served, fake_containerd, lambda: served.service.start(shim_pb2.StartRequest(id=served.task_id))) == 3
        served.service.delete(shim_pb2.DeleteRequest(id=served.task_id))
        served.publisher.flush()
        assert fake_containerd.topics == ["/tasks/create", "/tasks/start", "/tasks/exit", "/tasks/delete"]


def test_a_task_killed_before_start_exits_once_as_the_runc_shims(tmp_path, fake_containerd: FakeContainerd) -> None:
    """Create runs runc create (a pid, State says CREATED); Kill ends that process; /tasks/exit goes out
    once, before Wait answers, though the init never started; Delete reports the pid and status."""
    with _served(tmp_path, fake_containerd, ["sleep", "1000"]) as served:
        service, task_id = served.service, served.task_id
        pid = service.create(served.create).pid
        assert pid > 0 and not ends_within(pid, 0)
        state = service.state(shim_pb2.StateRequest(id=task_id))
        assert (state.status, state.pid) == (task_types_pb2.CREATED, pid)
        assert [process.pid for process in service.pids(shim_pb2.PidsRequest(id=task_id)).processes] == [pid]
        assert _wait_behind_the_exit_event(
            served, fake_containerd, lambda: service.kill(shim_pb2.KillRequest(id=task_id, signal=9))) == 137
        state = service.state(shim_pb2.StateRequest(id=task_id))
        assert (state.status, state.pid, state.exit_status) == (task_types_pb2.STOPPED, pid, 137)
        deleted = service.delete(shim_pb2.DeleteRequest(id=task_id))
        assert (deleted.pid, deleted.exit_status) == (pid, 137)
        served.publisher.flush()
        assert fake_containerd.topics == ["/tasks/create", "/tasks/exit", "/tasks/delete"]


def test_a_task_deleted_before_start_publishes_no_exit(tmp_path, fake_containerd: FakeContainerd) -> None:
    with _served(tmp_path, fake_containerd, ["sleep", "1000"]) as served:
        pid = served.service.create(served.create).pid
        deleted = served.service.delete(shim_pb2.DeleteRequest(id=served.task_id))
        assert (deleted.pid, deleted.exit_status) == (pid, 0)
        assert ends_within(pid, 0)  # runc delete --force killed it
        served.publisher.flush()
        assert fake_containerd.topics == ["/tasks/create", "/tasks/delete"]


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
    rootfs = _rootfs(bundle)
    error = _failing_create(_process_service(tmp_path),
                            shim_pb2.CreateTaskRequest(id=task_id, bundle=bundle.path, rootfs=rootfs))
    assert error.code == ttrpc.INVALID_ARGUMENT and words in error.message, error
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []
    assert fake_containerd.topics == []


def test_a_rootfs_mount_that_fails_is_refused_and_leaves_no_mount(tmp_path, fake_containerd: FakeContainerd) -> None:
    bundle = _process_bundle(tmp_path, ["true"])
    task_id = f"uvmexec-shim-mount-{os.getpid()}"
    good = _rootfs(bundle)
    bad = mount_pb2.Mount(type="bind", source=str(tmp_path / "no-such-dir"), options=["rbind", "ro"])
    error = _failing_create(_process_service(tmp_path),
                            shim_pb2.CreateTaskRequest(id=task_id, bundle=bundle.path, rootfs=[*good, bad]))
    assert error.code == ttrpc.INVALID_ARGUMENT and "no-such-dir" in error.message, error
    assert task_id not in runc_ids()
    assert mounts_at_or_under(bundle.path) == []
