"""The backends the conformance suite runs against, by name.

A backend makes execs through one creation call and cleans up after each
test. Later backends register here; no conformance test names a backend.
Which backends run: ``--backend NAME`` (repeatable) or ``UVMEXEC_BACKENDS``
(comma-separated); by default every backend, the QEMU guest included.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

from common import Exec, ProcessSpec, Stdio
from common.errors import ExecError

_ids = itertools.count()


class Backend:
    """Creates execs for one test and force-exits and deletes whatever the test left."""

    def __init__(self, name: str, create: Callable[..., Exec]) -> None:
        self.name = name
        self._create = create
        self._made: list[Exec] = []

    @property
    def in_container(self) -> bool:
        """The execs run inside containers (their task's), not as bare processes."""
        return bool(getattr(self._create, "in_container", False))

    def new_ids(self) -> tuple[str, str]:
        """A task id / exec id pair unique within this backend's life (the task id is the
        backend's own when its execs all run in one container)."""
        number = next(_ids)
        return getattr(self._create, "task_id", None) or f"task-{self.name}-{number}", f"exec-{number}"

    def create(self, spec: ProcessSpec, stdio: Stdio | None = None, *, task_id: str | None = None,
               exec_id: str | None = None, **options: Any) -> Exec:
        """Create an exec (ids made up unless given); it is cleaned up after the test."""
        if task_id is None or exec_id is None:
            fresh_task, fresh_exec = self.new_ids()
            task_id = task_id or fresh_task
            exec_id = exec_id or fresh_exec
        made = self._create(task_id, exec_id, spec, stdio, **options)
        self._made.append(made)
        return made

    def run(self, args: list[str], **options: Any) -> Exec:
        """Create, start and return an exec of ``args`` with stdio discarded."""
        made = self.create(ProcessSpec(args=args), Stdio())
        made.start()
        return made

    def cleanup(self) -> None:
        for made in self._made:
            with contextlib.suppress(ExecError):
                made.force_exit(255)
            with contextlib.suppress(ExecError):
                made.delete()
        self._made.clear()


BackendFactory = Callable[[Any], "contextlib.AbstractContextManager[Callable[..., Exec]]"]

#: name -> (needs_vm, factory). A factory is a context manager (session-scoped)
#: yielding the creation callable: create(task_id, exec_id, spec, stdio, **options).
REGISTRY: dict[str, tuple[bool, Callable[[Any], Any]]] = {}


def register(name: str, *, needs_vm: bool = False) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    def decorate(factory: Callable[[Any], Any]) -> Callable[[Any], Any]:
        REGISTRY[name] = (needs_vm, factory)
        return factory

    return decorate


@register("local")
@contextlib.contextmanager
def _local(config: Any) -> Iterator[Callable[..., Exec]]:
    from host_proxy import LocalExec

    yield LocalExec


@register("agent-ipc")
@contextlib.contextmanager
def _agent_ipc(config: Any) -> Iterator[Callable[..., Exec]]:
    import shutil

    from host_proxy import AgentClient
    from tests.support.agent import AgentProcess, private_directory

    directory = private_directory("uvm-agent-ipc-")
    agent = AgentProcess([f"ipc://{directory}/agent.sock"]).start()
    try:
        with AgentClient.connect(agent.endpoints[0], timeout=10) as client:
            yield client.create_exec
    finally:
        agent.stop()
        shutil.rmtree(directory, ignore_errors=True)


@register("agent-tcp")
@contextlib.contextmanager
def _agent_tcp(config: Any) -> Iterator[Callable[..., Exec]]:
    import shutil

    from host_proxy import AgentClient
    from tests.support.agent import AgentProcess, Keys, private_directory

    directory = private_directory("uvm-agent-tcp-")
    keys = Keys.create(directory)
    agent = AgentProcess(["tcp://127.0.0.1:0"], ["--server-key", keys.agent_secret,
                                                   "--authorized-keys", keys.authorized]).start()
    try:
        with AgentClient.connect(agent.endpoints[0], server_key=keys.agent_public,
                                 client_key=keys.client_secret, timeout=10) as client:
            yield client.create_exec
    finally:
        agent.stop()
        shutil.rmtree(directory, ignore_errors=True)


def shared_guest(config: Any) -> Any:
    """One booted guest for every VM backend of the session (booting costs seconds under TCG)."""
    guest = getattr(config, "_uvmexec_guest", None)
    if guest is None:
        from vm_images import boot, build_image

        stack = contextlib.ExitStack()
        guest = stack.enter_context(boot(build_image()))
        config._uvmexec_guest = guest
        config.add_cleanup(stack.close)
    return guest


class ContainerExecs:
    """Makes each conformance exec inside a container (real runc): by default on this host
    (LocalTask); ``new_task(task_id, bundle)`` makes them elsewhere (a task in the guest).

    Execs of the task id tests get from ``new_ids`` run in one container made for the whole
    session (its init sleeps); any other task id gets a container of its own on first use.
    Every container is deleted at the end.
    """

    in_container = True

    def __init__(self, new_task: Callable[[str, Any], Any] | None = None) -> None:
        import tempfile

        self.task_id = f"conformance-{os.getpid()}-{next(_ids)}"
        self._new_task = new_task or _local_task
        self._directory = tempfile.mkdtemp(prefix="uvm-conformance-runc-")
        self._tasks: dict[str, Any] = {}
        try:
            self._task(self.task_id)
        except BaseException:
            self.close()
            raise

    def _task(self, task_id: str) -> Any:
        from vm_images.busybox import make_bundle

        task = self._tasks.get(task_id)
        if task is None:
            init = ProcessSpec(args=["sleep", "1000000"], env=["PATH=/bin:/usr/bin"])
            bundle = make_bundle(os.path.join(self._directory, str(len(self._tasks))), init)
            task = self._new_task(task_id, bundle)
            self._tasks[task_id] = task
            task.init.start()
        return task

    def __call__(self, task_id: str, exec_id: str, spec: ProcessSpec, stdio: Stdio | None = None,
                 **options: Any) -> Exec:
        return self._task(task_id).create_exec(exec_id, spec, stdio, **options)  # type: ignore[no-any-return]

    def close(self) -> None:
        """Delete every container; a container that cannot be deleted fails loudly, after the
        others were deleted (it would hold its id and its runc state)."""
        import shutil

        failures = []
        for task_id, task in self._tasks.items():
            with contextlib.suppress(ExecError):
                task.init.force_exit(255)
            try:
                task.delete()
            except ExecError as error:
                failures.append(f"{task_id}: {type(error).__name__}: {error}")
        self._tasks.clear()
        shutil.rmtree(self._directory, ignore_errors=True)
        assert not failures, f"containers left behind: {failures}"


def _local_task(task_id: str, bundle: Any) -> Any:
    from host_proxy import LocalTask

    return LocalTask(task_id, bundle.path, rootfs=bundle.rootfs)


@register("local-runc")
@contextlib.contextmanager
def _local_runc(config: Any) -> Iterator[Callable[..., Exec]]:
    execs = ContainerExecs()
    try:
        yield execs
    finally:
        execs.close()


@register("qemu", needs_vm=True)
@contextlib.contextmanager
def _qemu(config: Any) -> Iterator[Callable[..., Exec]]:
    from host_proxy import AgentClient

    guest = shared_guest(config)
    with AgentClient.connect(guest.agent_endpoint, server_key=guest.server_key, client_key=guest.client_key,
                             timeout=30) as client:
        yield client.create_exec


@register("qemu-runc", needs_vm=True)
@contextlib.contextmanager
def _qemu_runc(config: Any) -> Iterator[Callable[..., Exec]]:
    """Each exec inside a container run by runc in the guest, its bundle on the VM's 9p share."""
    from host_proxy import AgentClient, BundleShare

    guest = shared_guest(config)
    share = BundleShare(guest.share_dir, guest.guest_share_dir)
    with AgentClient.connect(guest.agent_endpoint, server_key=guest.server_key, client_key=guest.client_key,
                             timeout=30) as client:
        execs = ContainerExecs(
            lambda task_id, bundle: client.create_task(task_id, bundle.path, rootfs=bundle.rootfs, share=share))
        try:
            yield execs
        finally:
            execs.close()


@register("agent-ssh")
@contextlib.contextmanager
def _agent_ssh(config: Any) -> Iterator[Callable[..., Exec]]:
    import shutil
    import socket

    from host_proxy import AgentClient
    from tests.support.agent import AgentProcess, Keys, private_directory
    from tests.support.sshd import SshServer

    directory = private_directory("uvm-agent-ssh-")
    keys = Keys.create(directory)
    with socket.socket() as probe:  # the agent listens on loopback, as in a guest
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    agent = AgentProcess([f"tcp://127.0.0.1:{port}"], ["--server-key", keys.agent_secret,
                                                        "--authorized-keys", keys.authorized]).start()
    try:
        with SshServer() as sshd, AgentClient.connect(
            sshd.endpoint(agent=f"tcp://127.0.0.1:{port}"), ssh_key=sshd.key_path, known_hosts=sshd.known_hosts,
            server_key=keys.agent_public, client_key=keys.client_secret, timeout=10,
        ) as client:
            yield client.create_exec
    finally:
        agent.stop()
        shutil.rmtree(directory, ignore_errors=True)


@register("qemu-ssh", needs_vm=True)
@contextlib.contextmanager
def _qemu_ssh(config: Any) -> Iterator[Callable[..., Exec]]:
    from host_proxy import AgentClient

    guest = shared_guest(config)
    with AgentClient.connect(
        f"ssh://{guest.ssh_user}@{guest.ssh_host}:{guest.ssh_port}", ssh_key=guest.ssh_key,
        known_hosts=guest.known_hosts, server_key=guest.server_key, client_key=guest.client_key, timeout=30,
    ) as client:
        yield client.create_exec
