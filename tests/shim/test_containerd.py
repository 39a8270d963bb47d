"""containerd 1.6 drives the shim through ``ctr``, as a user would (process isolation; both where marked).

Every test runs against its own private containerd (see conftest.py), which
is stopped after it with nothing left behind.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import socket
import struct
import subprocess
import termios
import time

import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message

from host_proxy.shim import ttrpc
from host_proxy.shim.proto import shim_pb2
from host_proxy.shim.service import PROCESS_SPEC_TYPE, SERVICE
from vm_images import build_image

from .conftest import (
    BOTH_ISOLATIONS,
    CTR_TIMEOUT,
    PROCESS_ISOLATION,
    RUNTIME,
    Containerd,
    ends_within,
    processes_naming,
    running_ctr,
)

pytestmark = pytest.mark.timeout(400)


def _read_line(stream: object, timeout: float = 240) -> bytes:
    fd = stream.fileno()  # type: ignore[attr-defined]
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n"):
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not readable:
            raise AssertionError(f"no line within {timeout}s (got {data!r})")
        chunk = os.read(fd, 1)
        if not chunk:
            break
        data += chunk
    return data


@BOTH_ISOLATIONS
def test_run_reports_exit_codes_and_passes_stdout_and_stderr_byte_exact(containerd: Containerd) -> None:
    script = r"printf 'out\000\377\n'; printf 'err\001' >&2; exit 3"
    result = containerd.ctr(*containerd.run_args("c1", "sh", "-c", script, extra=("--rm",)), check=False)
    assert result.returncode == 3, result.stderr
    assert result.stdout == b"out\x00\xff\n"
    assert result.stderr == b"err\x01"
    assert containerd.ctr(*containerd.run_args("c2", "true", extra=("--rm",)), check=False).returncode == 0


@BOTH_ISOLATIONS
@pytest.mark.parametrize("all_processes", [False, True])
def test_kill_ends_the_init_with_128_plus_the_signal(containerd: Containerd, all_processes: bool) -> None:
    with running_ctr(containerd, *containerd.run_args("c1", "sh", "-c", "echo ready; exec sleep 100000",
                                                        extra=("--rm",))) as run:
        assert _read_line(run.stdout) == b"ready\n"
        ps = containerd.ctr("task", "ps", "c1").stdout.decode().split()
        listed = containerd.ctr("task", "ls").stdout.decode().split()
        init_pid = listed[listed.index("c1") + 1]
        assert init_pid in ps
        containerd.ctr("task", "kill", "-s", "KILL", *(["--all"] if all_processes else []), "c1")
        assert run.wait(60) == 128 + signal.SIGKILL


@BOTH_ISOLATIONS
def test_exec_while_the_init_runs(containerd: Containerd) -> None:
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=("-d",)))
    result = containerd.ctr("task", "exec", "--fifo-dir", containerd.fifo_dir, "--exec-id", "e1", "c1",
                            "sh", "-c", "echo in-exec; echo e >&2; exit 7", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (7, b"in-exec\n", b"e\n")
    containerd.ctr("task", "kill", "-s", "KILL", "c1")
    # Delete refuses a running task; `ctr task rm -f` kills and waits for the exit itself.
    containerd.ctr("task", "rm", "-f", "c1")
    containerd.ctr("containers", "rm", "c1")


# ctr sends ResizePty right after Start: the shell reports the size once it is set (SIGWINCH),
# or at once if it already was (busybox's stty fails on a 0x0 terminal).
RESIZE_SCRIPT = (
    "trap 'stty size; tty; exit 4' WINCH; "
    "case \"$(stty size 2>/dev/null)\" in ''|'0 0') ;; *) stty size; tty; exit 4 ;; esac; "
    "sleep 100000 & wait"
)


@BOTH_ISOLATIONS
def test_exec_with_a_terminal_gets_the_size_of_ctrs_terminal(containerd: Containerd) -> None:
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=("-d",)))
    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 77, 0, 0))
        execution = containerd.ctr_popen("task", "exec", "-t", "--fifo-dir", containerd.fifo_dir, "--exec-id", "t1",
                                         "c1", "sh", "-c", RESIZE_SCRIPT,
                                         stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        slave = -1
        output = b""
        deadline = time.monotonic() + CTR_TIMEOUT
        while True:
            readable, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            assert readable, f"no end of output within {CTR_TIMEOUT}s: {output!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every slave end is closed
                break
            if not chunk:
                break
            output += chunk
        assert execution.wait(CTR_TIMEOUT) == 4
        assert b"33 77" in output and b"/dev/pts/" in output, output
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    containerd.ctr("task", "rm", "-f", "c1")
    containerd.ctr("containers", "rm", "c1")


@BOTH_ISOLATIONS
def test_events_are_published_once_and_in_order(containerd: Containerd) -> None:
    events = containerd.ctr_popen("events", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)

    def publish(topic: str) -> None:
        subprocess.run(["containerd", "--address", containerd.address, "publish", "--topic", topic,
                        "--namespace", "default"], input=MARKER, env=containerd.env,
                       check=True, timeout=30)

    def read_until(topic: str) -> list[str]:
        lines: list[str] = []
        while True:
            line = _read_line(events.stdout).decode()
            assert line, "ctr events ended"
            if topic in line:
                return lines
            if "/uvmexec-test/" not in line:  # a second ready marker is not an event of ours
                lines.append(line)

    try:
        # ctr events says nothing when its subscription is live: publish markers until one shows.
        for _attempt in range(30):
            publish("/uvmexec-test/ready")
            if select.select([events.stdout.fileno()], [], [], 1.0)[0]:  # type: ignore[union-attr]
                break
        read_until("/uvmexec-test/ready")
        with running_ctr(containerd, *containerd.run_args("c1", "sh", "-c", "echo ready; exec sleep 100000",
                                                            extra=("--rm",))) as run:
            assert _read_line(run.stdout) == b"ready\n"
            containerd.ctr("task", "exec", "--fifo-dir", containerd.fifo_dir, "--exec-id", "e1", "c1", "true")
            containerd.ctr("task", "kill", "-s", "KILL", "c1")
            assert run.wait(60) == 137
        publish("/uvmexec-test/done")
        lines = read_until("/uvmexec-test/done")
    finally:
        events.kill()
        events.wait()
        events.stdout.close()  # type: ignore[union-attr]
    tasks = [line.split()[5] + (' e1' if '"e1"' in line else '') for line in lines if " /tasks/" in line]
    assert tasks == ["/tasks/create", "/tasks/start", "/tasks/exec-added e1", "/tasks/exec-started e1",
                     "/tasks/exit e1", "/tasks/exit", "/tasks/delete"], lines


# An event ctr events can decode (it skips types it does not know): TaskOOM{container_id: "marker"}.
MARKER = any_pb2.Any(type_url="containerd.events.TaskOOM", value=b"\x0a\x06marker").SerializeToString()


def test_in_the_host_pid_namespace_the_inits_children_die_with_it_before_its_exit_is_reported(
        containerd: Containerd) -> None:
    # containerd's TestContainerKillInitPidHost: without a pid namespace of its own nothing kills the
    # init's other processes, so the shim must (runc kill --all), and at once: this child holds the
    # init's stdout open, which the output drain would wait for. The child's pid comes through a FIFO.
    share = os.path.join(containerd.directory, "share")
    os.mkdir(share)
    os.mkfifo(os.path.join(share, "child"))
    reader = os.open(os.path.join(share, "child"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        containerd.ctr(*containerd.run_args("c1", "sh", "-c", "sleep 100000 & echo $! > /share/child; exec sleep 100001",
                                            extra=("-d", "--with-ns", f"pid:/proc/{os.getpid()}/ns/pid", "--mount",
                                                   f"type=bind,src={share},dst=/share,options=rbind:rw")))
        with os.fdopen(reader, "rb", buffering=0, closefd=False) as stream:
            child = int(_read_line(stream))
    finally:
        os.close(reader)
    containerd.ctr("task", "kill", "-s", "KILL", "c1")
    with open(os.path.join(containerd.bundle("c1"), "address")) as address_file:
        path = address_file.read().removeprefix("unix://")
    with ttrpc.Client(path) as client:
        reply = shim_pb2.WaitResponse.FromString(client.call(SERVICE, "Wait", shim_pb2.WaitRequest(
            id="c1").SerializeToString()))
    alive = not ends_within(child, 0)
    containerd.ctr("task", "rm", "-f", "c1")
    containerd.ctr("containers", "rm", "c1")
    assert reply.exit_status == 128 + signal.SIGKILL
    assert not alive, "the init's child outlived the reported exit"


def test_an_init_program_not_in_the_image_fails_create_not_start(containerd: Containerd) -> None:
    # containerd's TestRegressionIssue6429: runc create fails then, so the runc shim's Create does,
    # and NewTask must too (no task is left to start, no /tasks/exit ever comes).
    result = containerd.ctr(*containerd.run_args("c1", "notfound404", extra=("--rm",)), check=False)
    assert result.returncode != 0
    assert b"failed to create shim task" in result.stderr and b"process.args[0]" in result.stderr, result.stderr
    assert b"c1" not in containerd.ctr("task", "ls", "-q").stdout
    assert containerd.ctr(*containerd.run_args("c2", "/bin/true", extra=("--rm",)), check=False).returncode == 0


def test_a_sigkilled_shim_is_cleaned_up_by_task_rm(containerd: Containerd) -> None:
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=("-d",)))
    bundle = containerd.bundle("c1")
    with open(os.path.join(bundle, "shim.pid")) as pid_file:
        shim_pid = int(pid_file.read())
    listed = containerd.ctr("task", "ls").stdout.decode().split()
    init_pid = int(listed[listed.index("c1") + 1])
    os.kill(shim_pid, signal.SIGKILL)
    assert ends_within(shim_pid, 30)
    assert ends_within(init_pid, 30), "the container outlived its shim"
    containerd.ctr("task", "rm", "-f", "c1", check=False)  # containerd may have cleaned up already
    assert "c1" not in containerd.ctr("task", "ls", "-q").stdout.decode().split()
    containerd.ctr("containers", "rm", "c1")
    # containerd ran the shim's `delete` command when the shim's connection dropped (before the init
    # ended, above), without waiting for it: runc's record goes when that command is done.
    for line in processes_naming(containerd.directory):
        if line.endswith(" delete") or line.endswith(" delete "):
            assert ends_within(int(line.split(":")[0]), 60), f"the delete command did not end: {line}"
    assert "c1" not in containerd.runc_ids()


@pytest.mark.parametrize(("value", "words"), [
    ("vm", "unknown isolation 'vm'"),
])
def test_an_isolation_that_is_not_available_is_refused_by_name(containerd: Containerd, value: str,
                                                               words: str) -> None:
    args = ["run", "--fifo-dir", containerd.fifo_dir, "--runtime", RUNTIME, "--annotation",
            f"io.uvmexec.isolation={value}", containerd.image, "c1", "true"]
    result = containerd.ctr(*args, check=False)
    assert result.returncode != 0
    assert words in result.stderr.decode(), result.stderr
    containerd.ctr("containers", "rm", "c1")
    assert PROCESS_ISOLATION  # the other tests choose process isolation this way


def test_bad_calls_get_grpc_codes_and_bad_frames_leave_containerd_served(containerd: Containerd) -> None:
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=("-d",)))
    bundle = containerd.bundle("c1")
    with open(os.path.join(bundle, "address")) as address_file:
        path = address_file.read().removeprefix("unix://")
    garbage = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        garbage.settimeout(30)
        garbage.connect(path)
        garbage.sendall(struct.pack(">IIBB", ttrpc.MAX_MESSAGE_BYTES + 1, 1, 1, 0))
        assert garbage.recv(1) == b""  # that connection is dropped
    finally:
        garbage.close()

    def code_of(method: str, request: Message) -> int:
        with ttrpc.Client(path) as client:
            try:
                client.call(SERVICE, method, request.SerializeToString())
            except ttrpc.RpcError as error:
                return error.code
        return ttrpc.OK

    assert code_of("State", shim_pb2.StateRequest(id="c1")) == ttrpc.OK
    assert code_of("State", shim_pb2.StateRequest(id="nope")) == ttrpc.NOT_FOUND
    assert code_of("State", shim_pb2.StateRequest(id="c1", exec_id="nope")) == ttrpc.NOT_FOUND
    assert code_of("Create", shim_pb2.CreateTaskRequest(id="c1", bundle=bundle)) == ttrpc.ALREADY_EXISTS
    bad_json = any_pb2.Any(type_url=PROCESS_SPEC_TYPE, value=b"{not json")
    assert code_of("Exec", shim_pb2.ExecProcessRequest(id="c1", exec_id="x", spec=bad_json)) == ttrpc.INVALID_ARGUMENT
    bad_field = any_pb2.Any(type_url=PROCESS_SPEC_TYPE, value=b'{"args": ["true"], "selinuxLabel": "x"}')
    assert code_of("Exec", shim_pb2.ExecProcessRequest(id="c1", exec_id="x", spec=bad_field)) == ttrpc.INVALID_ARGUMENT
    assert code_of("Pause", shim_pb2.PauseRequest(id="c1")) == ttrpc.UNIMPLEMENTED
    # As the runc shim (containerd's TestTaskResize): a resize without a terminal is no error.
    assert code_of("ResizePty", shim_pb2.ResizePtyRequest(id="c1", width=80, height=24)) == ttrpc.OK
    assert code_of("Delete", shim_pb2.DeleteRequest(id="c1")) == ttrpc.FAILED_PRECONDITION  # still running
    # containerd's own connection was never disturbed.
    result = containerd.ctr("task", "exec", "--fifo-dir", containerd.fifo_dir, "--exec-id", "e1", "c1", "echo", "ok")
    assert result.stdout == b"ok\n"
    containerd.ctr("task", "rm", "-f", "c1")
    containerd.ctr("containers", "rm", "c1")


@pytest.mark.parametrize(("options", "expected"), [
    ('isolation = "process"\n', 0),
    # Chosen, as the guest's boot timeout shows (the image is built: the shim would build it otherwise).
    pytest.param('isolation = "hypervisor"\nboot_timeout = 1\n', "the utility VM was not ready within 1s",
                 marks=pytest.mark.vm),
    ('isolaton = "process"\n', "unknown option 'isolaton'"),
])
def test_the_runtime_options_file_chooses_the_isolation(containerd: Containerd, options: str,
                                                        expected: int | str) -> None:
    if "hypervisor" in options:
        build_image()
    path = os.path.join(containerd.directory, "shim.toml")
    with open(path, "w") as options_file:
        options_file.write(options)
    args = ["run", "--rm", "--fifo-dir", containerd.fifo_dir, "--runtime", RUNTIME, "--runtime-config-path", path,
            containerd.image, "c1", "sh", "-c", "exit 0"]
    result = containerd.ctr(*args, check=False)
    if isinstance(expected, int):
        assert result.returncode == expected, result.stderr
        return
    assert result.returncode != 0
    assert expected in result.stderr.decode(), result.stderr
    containerd.ctr("containers", "rm", "c1", check=False)  # a failed run --rm may leave the record


@BOTH_ISOLATIONS
def test_a_restarted_containerd_reconnects_to_the_running_shim(containerd: Containerd) -> None:
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=("-d",)))
    containerd.restart()  # it finds the shim through bundle/address and calls Connect
    assert containerd.ctr("task", "ls", "-q").stdout.split() == [b"c1"]
    result = containerd.ctr("task", "exec", "--fifo-dir", containerd.fifo_dir, "--exec-id", "e1", "c1",
                            "sh", "-c", "echo after-restart; exit 5", check=False)
    assert (result.returncode, result.stdout) == (5, b"after-restart\n")
    containerd.ctr("task", "rm", "-f", "c1")
    containerd.ctr("containers", "rm", "c1")


@BOTH_ISOLATIONS
def test_an_init_binary_missing_from_the_image_fails_the_run_naming_it(containerd: Containerd) -> None:
    result = containerd.ctr(*containerd.run_args("c1", "/no/such/binary", extra=("--rm",)), check=False)
    assert result.returncode != 0
    assert "/no/such/binary" in result.stderr.decode(), result.stderr
    containerd.ctr("task", "rm", "-f", "c1", check=False)  # a failed start leaves the task to ctr
    containerd.ctr("containers", "rm", "c1", check=False)


@BOTH_ISOLATIONS
def test_task_ps_lists_the_init_and_names_each_exec(containerd: Containerd) -> None:
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=("-d",)))
    with running_ctr(containerd, "task", "exec", "--fifo-dir", containerd.fifo_dir, "--exec-id", "e1", "c1",
                     "sh", "-c", "echo started; exec sleep 100000") as execution:
        assert _read_line(execution.stdout) == b"started\n"
        rows = [line.split(None, 1) for line in containerd.ctr("task", "ps", "c1").stdout.decode().splitlines()[1:]]
        infos = [info for _, info in rows]
        assert len(rows) == 2 and "-" in infos and any("ExecID:e1" in info for info in infos), rows
        containerd.ctr("task", "kill", "-s", "KILL", "--all", "c1")
        assert execution.wait(60) == 137
    containerd.ctr("task", "rm", "-f", "c1")
    containerd.ctr("containers", "rm", "c1")


def test_two_namespaces_may_each_run_a_container_of_the_same_id(containerd: Containerd,
                                                                 busybox_image: str) -> None:
    """runc keeps one state root per containerd namespace here, as containerd's runc shim does.
    Before: one root for every shim on the host, and the second "c1" was refused by runc."""
    containerd.ctr("-n", "other", "images", "import", busybox_image)
    containerd.ctr(*containerd.run_args("c1", "sleep", "100000", extra=("-d",)))
    try:
        result = containerd.ctr("-n", "other", *containerd.run_args("c1", "sh", "-c", "exit 6", extra=("--rm",)),
                                check=False)
        assert result.returncode == 6, result.stderr
    finally:
        containerd.ctr("-n", "other", "task", "rm", "-f", "c1", check=False)
        containerd.ctr("-n", "other", "containers", "rm", "c1", check=False)
    assert containerd.runc_ids() == ["c1"]
    containerd.ctr("task", "rm", "-f", "c1")
    containerd.ctr("containers", "rm", "c1")


@BOTH_ISOLATIONS
def test_task_metrics_reports_the_containers_pids_memory_and_cpu(containerd: Containerd) -> None:
    with running_ctr(containerd, *containerd.run_args(
            "c1", "sh", "-c", "sleep 100000 & sleep 100000 & echo ready; wait", extra=("--rm",))) as run:
        assert _read_line(run.stdout) == b"ready\n"  # both sleeps forked
        metrics = containerd.ctr("task", "metrics", "c1").stdout.decode()
        rows = dict(line.split(None, 1) for line in metrics.splitlines() if line.strip() and " " in line.strip())
        assert rows.get("pids.current", "").strip() == "3", metrics  # sh and its two sleeps
        assert int(rows["memory.usage_in_bytes"]) > 0, metrics
        assert int(rows["cpuacct.usage"]) > 0, metrics
        containerd.ctr("task", "kill", "-s", "KILL", "--all", "c1")
        assert run.wait(CTR_TIMEOUT) == 128 + signal.SIGKILL
