"""``containerd.task.v2.Task``, mapped thinly onto the task and exec contract.

Each method decodes its protobuf request, calls a :class:`~common.Task` or
:class:`~common.Exec`, and encodes the answer; the contract's errors become
gRPC status codes (:data:`ERROR_CODES`), which containerd turns back into its
own errdefs errors. No rule about processes lives here: the task and its
execs enforce them, the same for every isolation.

Create and Start are containerd's runc shim's: Create makes the task with
``create_init`` (``runc create``: the init's process exists and Create answers
its pid) and Start is ``runc start``. Before Start, State reports that pid and
Kill signals that process (:meth:`common.Task.kill`).

Events (containerd's runtime v2 shim protocol): /tasks/create after Create,
/tasks/start and /tasks/exec-started from the execs' ``ExecStarted``,
/tasks/exec-added after Exec, /tasks/exit from ``ExecExited`` — which the exec
contract publishes before it releases waiters, and ``Wait`` answers only once
it was forwarded — and /tasks/delete after the Delete of a task. An init
killed before its start publishes nothing under the exec contract (it never
started), yet containerd's runc shim sends /tasks/exit for every process it
reaps: the service sends that one itself, once, before ``Wait`` answers.

``State`` is served from memory (``Exec.status()``), never a round trip.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError, Message

from common.contract import Exec
from common.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    ExecError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    UnimplementedError,
    not_found_error,
    task_not_found_error,
)
from common.spec import ProcessSpec, Stdio
from common.state import ExecEvent, ExecExited, ExecStarted, ExecState, ExecStatus
from common.task import Mount, Task
from host_proxy.local_task import LocalTask

from . import isolation, ttrpc
from .events import Publisher, timestamp
from .proto import cgroups_metrics_pb2, events_pb2, runc_options_pb2, shim_pb2, task_types_pb2

LOG = logging.getLogger(__name__)

SERVICE = "containerd.task.v2.Task"
PROCESS_SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Process"
PROCESS_DETAILS_TYPE = "containerd.runc.v1.ProcessDetails"
METRICS_TYPE = "io.containerd.cgroups.v1.Metrics"
#: cgroups v1 Metrics' MemoryStat fields and the names runc reports them under in memory.raw.
_MEMORY_RAW = {
    "rss": "rss", "rss_huge": "rss_huge", "mapped_file": "mapped_file", "dirty": "dirty",
    "writeback": "writeback", "pg_pg_in": "pgpgin", "pg_pg_out": "pgpgout", "pg_fault": "pgfault",
    "pg_maj_fault": "pgmajfault", "inactive_anon": "inactive_anon", "active_anon": "active_anon",
    "inactive_file": "inactive_file", "active_file": "active_file", "unevictable": "unevictable"}
_MEMORY_ENTRIES = {"usage": "usage", "swap": "swap", "kernel": "kernel", "kernel_tcp": "kernelTCP"}

ERROR_CODES: dict[type[ExecError], int] = {
    NotFoundError: ttrpc.NOT_FOUND,
    AlreadyExistsError: ttrpc.ALREADY_EXISTS,
    FailedPreconditionError: ttrpc.FAILED_PRECONDITION,
    InvalidArgumentError: ttrpc.INVALID_ARGUMENT,
    UnavailableError: ttrpc.UNAVAILABLE,
    DeadlineExceededError: ttrpc.DEADLINE_EXCEEDED,
    UnimplementedError: ttrpc.UNIMPLEMENTED,
}

#: Keys of an Exec's Process JSON that ``ctr``/CRI copy from the container's own process: when equal to
#: the container's, they are what runc exec inherits anyway, so they are dropped rather than refused.
INHERITED_PROCESS_KEYS = ("capabilities", "apparmorProfile", "selinuxLabel", "oomScoreAdj")

_STATUS = {
    ExecState.CREATED: task_types_pb2.CREATED,
    ExecState.RUNNING: task_types_pb2.RUNNING,
    ExecState.EXITED: task_types_pb2.STOPPED,
}

#: Makes a task: (task id, bundle, init's stdio, rootfs mounts, on_event) -> Task, made with
#: ``create_init`` (runc create at Create, as containerd expects).
TaskFactory = Callable[[str, str, Stdio, list[Mount], Callable[[ExecEvent], None]], Task]


def process_task(task_id: str, bundle: str, stdio: Stdio, mounts: list[Mount],
                 on_event: Callable[[ExecEvent], None]) -> Task:
    """Process isolation's factory: a container on this host."""
    return LocalTask(task_id, bundle, stdio, rootfs=mounts, on_event=on_event, create_init=True)


def rpc_error(error: ExecError) -> ttrpc.RpcError:
    for cls in type(error).__mro__:
        if cls in ERROR_CODES:
            return ttrpc.RpcError(ERROR_CODES[cls], error.message)
    return ttrpc.RpcError(ttrpc.UNKNOWN, error.message)


@dataclass
class _TaskRecord:
    task: Task
    container_process: dict[str, Any]
    execs: dict[str, Exec] = field(default_factory=dict)  # guarded by TaskService._lock
    #: The init's ExecStarted came; /tasks/exit of an init that never started went out; Delete began.
    init_started: bool = False
    unstarted_exit_sent: bool = False
    deleting: bool = False

    def init_pid(self, status: ExecStatus) -> int:
        """The init's pid as containerd knows it: before start, the process runc create made."""
        return status.pid or self.task.created_pid


def _stdio(stdin: str, stdout: str, stderr: str, terminal: bool) -> Stdio:
    # With a terminal, the pty carries both outputs: containerd's stderr FIFO stays unused.
    return Stdio(stdin=stdin or None, stdout=stdout or None, stderr=None if terminal else (stderr or None))


class TaskService:
    """The shim's task service. ``factories`` maps an isolation to the tasks it makes."""

    def __init__(self, publisher: Publisher, factories: dict[str, TaskFactory], *, options_path: str = "",
                 on_shutdown: Callable[[], None] = lambda: None) -> None:
        self._publisher = publisher
        self._factories = factories
        self._options_path = options_path
        self._on_shutdown = on_shutdown
        self._lock = threading.Lock()
        self._tasks: dict[str, _TaskRecord] = {}  # guarded by _lock

    def methods(self) -> dict[str, ttrpc.Method]:
        """The ttRPC method table: each decodes its request type and encodes the answer."""
        table: dict[str, tuple[type[Message], Callable[[Any], Message]]] = {
            "State": (shim_pb2.StateRequest, self.state),
            "Create": (shim_pb2.CreateTaskRequest, self.create),
            "Start": (shim_pb2.StartRequest, self.start),
            "Delete": (shim_pb2.DeleteRequest, self.delete),
            "Pids": (shim_pb2.PidsRequest, self.pids),
            "Stats": (shim_pb2.StatsRequest, self.stats),
            "Kill": (shim_pb2.KillRequest, self.kill),
            "Exec": (shim_pb2.ExecProcessRequest, self.exec),
            "ResizePty": (shim_pb2.ResizePtyRequest, self.resize_pty),
            "CloseIO": (shim_pb2.CloseIORequest, self.close_io),
            "Wait": (shim_pb2.WaitRequest, self.wait),
            "Connect": (shim_pb2.ConnectRequest, self.connect),
            "Shutdown": (shim_pb2.ShutdownRequest, self.shutdown),
        }
        methods: dict[str, ttrpc.Method] = {name: self._method(*entry) for name, entry in table.items()}
        for name in ("Pause", "Resume", "Checkpoint", "Update"):
            methods[name] = self._unimplemented(name)
        return methods

    @staticmethod
    def _method(request_type: type[Message], handler: Callable[[Any], Message]) -> ttrpc.Method:
        def method(payload: bytes) -> bytes:
            request = request_type()
            try:
                request.ParseFromString(payload)
            except DecodeError as error:
                raise ttrpc.RpcError(ttrpc.INVALID_ARGUMENT, f"{request_type.__name__}: {error}") from None
            try:
                return handler(request).SerializeToString()
            except ExecError as error:
                raise rpc_error(error) from None
        return method

    @staticmethod
    def _unimplemented(name: str) -> ttrpc.Method:
        def method(payload: bytes) -> bytes:
            raise ttrpc.RpcError(ttrpc.UNIMPLEMENTED, f"{name} is not implemented by containerd-shim-uvmexec-v1")
        return method

    # -- lookups ------------------------------------------------------------------------------

    def _record(self, task_id: str) -> _TaskRecord:
        with self._lock:
            record = self._tasks.get(task_id)
        if record is None:
            raise task_not_found_error(task_id)
        return record

    def _exec(self, task_id: str, exec_id: str) -> Exec:
        record = self._record(task_id)
        if not exec_id:
            return record.task.init
        with self._lock:
            found = record.execs.get(exec_id)
        if found is None:
            raise not_found_error(task_id, exec_id)
        return found

    # -- events -------------------------------------------------------------------------------

    def _on_event(self, task_id: str) -> Callable[[ExecEvent], None]:
        def on_event(event: ExecEvent) -> None:
            init = event.exec_id == task_id
            if isinstance(event, ExecStarted):
                if init:
                    with self._lock:
                        record = self._tasks.get(task_id)
                        if record is not None:
                            record.init_started = True
                    self._publisher.publish("/tasks/start", events_pb2.TaskStart(container_id=task_id, pid=event.pid))
                else:
                    self._publisher.publish("/tasks/exec-started", events_pb2.TaskExecStarted(
                        container_id=task_id, exec_id=event.exec_id, pid=event.pid))
            elif isinstance(event, ExecExited):
                self._publisher.publish("/tasks/exit", events_pb2.TaskExit(
                    container_id=task_id, id=event.exec_id, pid=event.pid, exit_status=event.exit_status,
                    exited_at=timestamp(event.exited_at)))
        return on_event

    def _send_unstarted_exit(self, record: _TaskRecord, final: ExecStatus) -> None:
        """/tasks/exit of an init that exited before its start (killed while created), once."""
        with self._lock:
            if record.init_started or record.unstarted_exit_sent or record.deleting or not record.task.created_pid:
                return
            record.unstarted_exit_sent = True
        self._publisher.publish("/tasks/exit", events_pb2.TaskExit(
            container_id=record.task.id, id=record.task.id, pid=record.task.created_pid,
            exit_status=final.exit_status, exited_at=timestamp(final.exited_at)))

    def _watch_unstarted(self, record: _TaskRecord) -> None:
        """A thread per created task: whoever Waits or not, an init that dies before its start is
        told to containerd (its state and CRI learn of exits from events)."""
        try:
            final = record.task.init.wait()
        except ExecError:  # deleted
            return
        self._send_unstarted_exit(record, final)

    # -- the methods ----------------------------------------------------------------------------

    def create(self, request: shim_pb2.CreateTaskRequest) -> shim_pb2.CreateTaskResponse:
        if request.checkpoint or request.parent_checkpoint:
            raise UnimplementedError("Create from a checkpoint is not implemented by containerd-shim-uvmexec-v1")
        chosen = isolation.choose(request.bundle, self._options_path)
        mounts = [Mount(mount.type, mount.source, list(mount.options)) for mount in request.rootfs]
        with self._lock:
            if request.id in self._tasks:
                raise AlreadyExistsError(f"task with id: '{request.id}' already exists")
        factory = self._factories.get(chosen)
        if factory is None:
            raise UnimplementedError(f"isolation {chosen!r} is not available in this shim")
        task = factory(request.id, request.bundle,
                                       _stdio(request.stdin, request.stdout, request.stderr, request.terminal),
                                       mounts, self._on_event(request.id))
        record = _TaskRecord(task, _container_process(request.bundle))
        with self._lock:
            self._tasks[request.id] = record
        self._publisher.publish("/tasks/create", events_pb2.TaskCreate(
            container_id=request.id, bundle=request.bundle, rootfs=request.rootfs,
            io=events_pb2.TaskIO(stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
                                 terminal=request.terminal), pid=task.created_pid))
        if task.created_pid:
            threading.Thread(target=self._watch_unstarted, args=(record,), name=f"unstarted-{request.id}",
                             daemon=True).start()
        return shim_pb2.CreateTaskResponse(pid=task.created_pid)

    def start(self, request: shim_pb2.StartRequest) -> shim_pb2.StartResponse:
        process = self._exec(request.id, request.exec_id)
        process.start()
        return shim_pb2.StartResponse(pid=process.pid)

    def exec(self, request: shim_pb2.ExecProcessRequest) -> empty_pb2.Empty:
        record = self._record(request.id)
        spec = _process_spec(request, record.container_process)
        stdio = _stdio(request.stdin, request.stdout, request.stderr, spec.terminal)
        created = record.task.create_exec(request.exec_id, spec, stdio, on_event=self._on_event(request.id))
        with self._lock:
            record.execs[request.exec_id] = created
        self._publisher.publish("/tasks/exec-added", events_pb2.TaskExecAdded(
            container_id=request.id, exec_id=request.exec_id))
        return empty_pb2.Empty()

    def state(self, request: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
        status = self._exec(request.id, request.exec_id).status()
        pid = status.pid if request.exec_id else self._record(request.id).init_pid(status)
        response = shim_pb2.StateResponse(
            id=status.id, exec_id=request.exec_id, bundle=status.bundle, pid=pid,
            status=_STATUS[status.status], stdin=status.stdin, stdout=status.stdout, stderr=status.stderr,
            terminal=status.terminal, exit_status=status.exit_status)
        if status.exited_at is not None:
            response.exited_at.CopyFrom(timestamp(status.exited_at))
        return response

    def kill(self, request: shim_pb2.KillRequest) -> empty_pb2.Empty:
        if request.exec_id:
            self._exec(request.id, request.exec_id).kill(request.signal, all=request.all)
        else:  # the task: before its start, the process runc create made
            self._record(request.id).task.kill(request.signal, all=request.all)
        return empty_pb2.Empty()

    def resize_pty(self, request: shim_pb2.ResizePtyRequest) -> empty_pb2.Empty:
        process = self._exec(request.id, request.exec_id)
        if process.status().terminal:  # as the runc shim: resizing a process without a console does nothing
            process.resize_pty(request.width, request.height)
        return empty_pb2.Empty()

    def close_io(self, request: shim_pb2.CloseIORequest) -> empty_pb2.Empty:
        if request.stdin:
            self._exec(request.id, request.exec_id).close_io(stdin=True)
        return empty_pb2.Empty()

    def wait(self, request: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        final = self._exec(request.id, request.exec_id).wait()
        if not request.exec_id:
            self._send_unstarted_exit(self._record(request.id), final)
        self._publisher.flush()  # /tasks/exit was queued before wait() returned: let it reach containerd first
        return shim_pb2.WaitResponse(exit_status=final.exit_status, exited_at=timestamp(final.exited_at))

    def delete(self, request: shim_pb2.DeleteRequest) -> shim_pb2.DeleteResponse:
        record = self._record(request.id)
        final: ExecStatus
        if request.exec_id:
            final = self._exec(request.id, request.exec_id).delete()
            with self._lock:
                record.execs.pop(request.exec_id, None)
        else:
            with self._lock:
                record.deleting = True
            try:
                final = record.task.delete()
            except BaseException:
                with self._lock:
                    record.deleting = False
                raise
            with self._lock:
                if self._tasks.get(request.id) is record:
                    del self._tasks[request.id]
            final = dataclasses.replace(final, pid=record.init_pid(final))
            self._publisher.publish("/tasks/delete", events_pb2.TaskDelete(
                container_id=request.id, pid=final.pid, exit_status=final.exit_status,
                exited_at=timestamp(final.exited_at)))
        return shim_pb2.DeleteResponse(pid=final.pid, exit_status=final.exit_status,
                                       exited_at=timestamp(final.exited_at))

    def pids(self, request: shim_pb2.PidsRequest) -> shim_pb2.PidsResponse:
        answer = shim_pb2.PidsResponse()
        for info in self._record(request.id).task.pids():
            entry = answer.processes.add(pid=info.pid)
            if info.exec_id and info.exec_id != request.id:
                # As the runc shim: an exec's pid carries its exec id (`ctr task ps` shows it under INFO),
                # with the type URL as containerd's typeurl registers it (no type.googleapis.com/ prefix).
                entry.info.type_url = PROCESS_DETAILS_TYPE
                entry.info.value = runc_options_pb2.ProcessDetails(exec_id=info.exec_id).SerializeToString()
        return answer

    def stats(self, request: shim_pb2.StatsRequest) -> shim_pb2.StatsResponse:
        metrics = _metrics(self._record(request.id).task.stats())
        answer = shim_pb2.StatsResponse()
        answer.stats.type_url = METRICS_TYPE  # as containerd's typeurl registers it, no prefix
        answer.stats.value = metrics.SerializeToString()
        return answer

    def connect(self, request: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        with self._lock:
            record = self._tasks.get(request.id)
        task_pid = record.init_pid(record.task.init.status()) if record is not None else 0
        return shim_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=task_pid)

    def shutdown(self, request: shim_pb2.ShutdownRequest) -> empty_pb2.Empty:
        # As the runc shim: a shim that still holds tasks stays, unless told `now`.
        with self._lock:
            busy = bool(self._tasks)
        if request.now or not busy:
            self._on_shutdown()
        return empty_pb2.Empty()


def _container_process(bundle: str) -> dict[str, Any]:
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as config_file:
            process = json.load(config_file).get("process")
    except (OSError, ValueError, AttributeError):
        return {}
    return process if isinstance(process, dict) else {}


def _process_spec(request: shim_pb2.ExecProcessRequest, container_process: dict[str, Any]) -> ProcessSpec:
    """The exec's ProcessSpec from the Process JSON in ``request.spec`` (an InvalidArgumentError naming what is wrong)."""
    if not request.spec.type_url.endswith("/Process") and request.spec.type_url != PROCESS_SPEC_TYPE:
        raise InvalidArgumentError(f"exec spec: type {request.spec.type_url!r} is not an OCI Process")
    try:
        process = json.loads(request.spec.value)
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidArgumentError(f"exec spec: not JSON: {error}") from None
    if isinstance(process, dict):
        for key in INHERITED_PROCESS_KEYS:
            if key in process and process[key] == container_process.get(key):
                del process[key]
        process["terminal"] = request.terminal
    return ProcessSpec.from_oci(process)


def _u64(value: Any) -> int:
    """A counter runc reported, as a uint64 (anything else, or out of range, is 0)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 64 else 0


def _map(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _metrics(stats: dict[str, Any]) -> cgroups_metrics_pb2.Metrics:
    """runc's statistics (``runc events --stats``) as the cgroups v1 Metrics containerd's runc shim answers."""
    metrics = cgroups_metrics_pb2.Metrics()
    pids = _map(stats.get("pids"))
    metrics.pids.current, metrics.pids.limit = _u64(pids.get("current")), _u64(pids.get("limit"))
    cpu = _map(stats.get("cpu"))
    usage, throttling = _map(cpu.get("usage")), _map(cpu.get("throttling"))
    metrics.cpu.usage.total = _u64(usage.get("total"))
    metrics.cpu.usage.kernel = _u64(usage.get("kernel"))
    metrics.cpu.usage.user = _u64(usage.get("user"))
    per_cpu = usage.get("percpu")
    metrics.cpu.usage.per_cpu.extend(_u64(value) for value in (per_cpu if isinstance(per_cpu, list) else []))
    metrics.cpu.throttling.periods = _u64(throttling.get("periods"))
    metrics.cpu.throttling.throttled_periods = _u64(throttling.get("throttled_periods"))
    metrics.cpu.throttling.throttled_time = _u64(throttling.get("throttled_time"))
    memory = _map(stats.get("memory"))
    raw = _map(memory.get("raw"))
    metrics.memory.cache = _u64(memory.get("cache"))
    for field_name, raw_name in _MEMORY_RAW.items():
        setattr(metrics.memory, field_name, _u64(raw.get(raw_name)))
    for field_name, runc_name in _MEMORY_ENTRIES.items():
        entry, reported = getattr(metrics.memory, field_name), _map(memory.get(runc_name))
        entry.limit, entry.usage = _u64(reported.get("limit")), _u64(reported.get("usage"))
        entry.max, entry.failcnt = _u64(reported.get("max")), _u64(reported.get("failcnt"))
    return metrics
