"""``containerd-shim-uvmexec-v1``: the commands containerd runs (runtime v2 shim protocol).

containerd runs ``containerd-shim-uvmexec-v1 -namespace NS -address A
-publish-binary B -id ID [-debug] start`` with the bundle as cwd (and, with
``ctr run --runtime-config-path``, a ``runtimeoptions.v1.Options`` Any on
stdin). ``start`` binds the socket, spawns the long-lived server (``serve``,
its own session and stdio: a child holding ``start``'s stdout would stall
containerd), writes ``bundle/address``, prints ``unix://SOCKET`` and exits.
The server is listening before the address is printed: it inherits the bound
socket.

After every disconnect containerd runs ``… -id ID -bundle B delete``: the
cleanup after a dead shim — the container's runc state and rootfs mount, the
socket — answering a ``DeleteResponse`` on stdout. Nothing but that protobuf
may reach stdout: containerd reads it (and stderr) as the answer.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

SOCKET_DIR_NAME = "uvmexec-s"
FALLBACK_SOCKET_DIR = "/run/uvmexec-shim"
MAX_SOCKET_PATH = 100
SANDBOX_ANNOTATION = "io.kubernetes.cri.sandbox-id"
LISTEN_FD_ENV = "UVMEXEC_SHIM_LISTEN_FD"
OPTIONS_ENV = "UVMEXEC_SHIM_OPTIONS_PATH"
#: The file a hypervisor-isolated bundle names its utility VM in (``sandbox.RECORD_NAME``): ``delete``
#: imports :mod:`.sandbox` only for a bundle that has one.
VM_RECORD_NAME = "uvmexec-vm.json"
LOG = logging.getLogger("containerd-shim-uvmexec-v1")
_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv: list[str]) -> argparse.Namespace:
    # Go's flag package: single-dash long options, as containerd passes them.
    parser = argparse.ArgumentParser(prog="containerd-shim-uvmexec-v1", prefix_chars="-")
    parser.add_argument("-namespace", default="")
    parser.add_argument("-address", default="")
    parser.add_argument("-publish-binary", dest="publish_binary", default="")
    parser.add_argument("-id", default="")
    parser.add_argument("-bundle", default="")
    parser.add_argument("-socket", default="", help=argparse.SUPPRESS)
    parser.add_argument("-debug", action="store_true")
    parser.add_argument("-v", dest="version", action="store_true")
    parser.add_argument("command", nargs="?", choices=["start", "delete", "serve"])
    return parser.parse_args(argv)


def socket_path(address: str, namespace: str, task_id: str) -> str:
    """Where the shim for ``task_id`` listens: beside containerd's socket, named by a digest (sun_path is short)."""
    name = hashlib.sha256(f"{address}\0{namespace}\0{task_id}".encode()).hexdigest()[:32] + ".sock"
    directory = os.path.join(os.path.dirname(os.path.abspath(address)) if address else FALLBACK_SOCKET_DIR,
                             SOCKET_DIR_NAME)
    if len(os.path.join(directory, name).encode()) > MAX_SOCKET_PATH:
        directory = FALLBACK_SOCKET_DIR
    return os.path.join(directory, name)


def group_of(bundle: str, task_id: str) -> str:
    """The shim group of the container in ``bundle``: its pod (``io.kubernetes.cri.sandbox-id``) or itself.

    As containerd's runc shim does: the containers of one pod share one shim — and,
    in hypervisor isolation, that shim's one utility VM.
    """
    try:
        with open(os.path.join(bundle, "config.json"), "rb") as config_file:
            annotations = json.load(config_file).get("annotations") or {}
        sandbox = annotations.get(SANDBOX_ANNOTATION)
    except (OSError, ValueError, AttributeError):
        return task_id  # Create reports what is wrong with config.json, naming the field
    return sandbox if isinstance(sandbox, str) and sandbox else task_id


def _alive(path: str) -> bool:
    """True if a shim answers on the socket at ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def runc_root(address: str, namespace: str) -> str:
    """runc's state root for process isolation: one per containerd and namespace, as the runc shim
    keeps one per namespace, so two containerds (or namespaces) may each have a container "c1"."""
    parent = os.path.dirname(os.path.abspath(address)) if address else "/run/uvmexec-shim"
    return os.path.join(parent, "uvmexec-runc", namespace or "default")


def start(args: argparse.Namespace) -> int:
    from .runtime_options import join_cgroup, parse

    options = parse(b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read())
    options_path = options.config_path
    bundle = os.getcwd()
    group = group_of(bundle, args.id)
    path = socket_path(args.address, args.namespace, group)
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    if group != args.id and _alive(path):
        return _print_address(bundle, path)  # the pod's shim serves this container too
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a socket left by a SIGKILLed shim of the same group
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    env = dict(os.environ)
    env[LISTEN_FD_ENV] = str(listener.fileno())
    env[OPTIONS_ENV] = options_path
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PROJECT_ROOT, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "host_proxy.shim", "-namespace", args.namespace, "-address", args.address,
               "-id", group, "-bundle", bundle, "-socket", path] + (["-debug"] if args.debug else []) + ["serve"]
    with open(os.path.join(bundle, "shim.log"), "ab") as log:
        server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=bundle, env=env,
                                  pass_fds=[listener.fileno()], start_new_session=True)
    listener.close()
    if options.shim_cgroup:
        from common.errors import ExecError

        try:  # as the runc shim's start: the server goes into the cgroup asked for, or nothing starts
            join_cgroup(server.pid, options.shim_cgroup)
        except (OSError, ExecError) as error:
            server.kill()
            server.wait()
            os.unlink(path)
            print(f"containerd-shim-uvmexec-v1: {getattr(error, 'message', error)}", file=sys.stderr)
            return 1
    return _print_address(bundle, path)


def _print_address(bundle: str, path: str) -> int:
    address = f"unix://{path}"
    with open(os.path.join(bundle, "address"), "w") as address_file:
        address_file.write(address)
    sys.stdout.write(address)
    sys.stdout.flush()
    return 0


def serve(args: argparse.Namespace) -> int:
    from .prestart import prestart  # first: a process-isolated container's private agent boots meanwhile
    prestart(args.bundle, os.environ.get(OPTIONS_ENV, ""), runc_root(args.address, args.namespace))
    from common.errors import ExecError
    from common.supervisor.runc import ROOT_ENV

    from . import isolation
    from .events import Publisher
    from .sandbox import UtilityVM, VMOptions, run_dir_for
    from .service import SERVICE, TaskService, process_task
    from .ttrpc import Server

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    listener = socket.socket(fileno=int(os.environ.pop(LISTEN_FD_ENV)))
    os.environ[ROOT_ENV] = runc_root(args.address, args.namespace)  # the private agent's runc inherits it
    publisher = Publisher(os.environ.get("TTRPC_ADDRESS", ""), args.namespace)
    server = Server({})
    stopping = threading.Event()

    def on_shutdown() -> None:
        # After Shutdown's answer is on its way: the server stops in the main thread below.
        stopping.set()
        threading.Thread(target=server.close, daemon=True).start()

    options_path = os.environ.get(OPTIONS_ENV, "")
    try:
        vm_options = isolation.vm_options(options_path)
    except ExecError as error:
        LOG.error("%s; the utility VM gets the defaults", error.message)  # Create refuses the file, naming it
        vm_options = VMOptions()
    vm = UtilityVM(run_dir_for(args.address, args.namespace, args.id), vm_options)
    service = TaskService(
        publisher,
        {isolation.PROCESS: process_task, isolation.HYPERVISOR: vm.create_task},
        options_path=options_path, on_shutdown=on_shutdown)
    server = Server({SERVICE: service.methods()})
    with open(os.path.join(args.bundle, "shim.pid"), "w") as pid_file:  # as the runc shim: who to kill
        pid_file.write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda signum, frame: on_shutdown())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for ctr, not for us
    try:
        server.serve(listener)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(args.socket)
        vm.close()
        publisher.close()
    return 0


def delete(args: argparse.Namespace) -> int:
    """Clean up after a dead shim: runc's record of the container, the rootfs mount, its VM, the socket.

    containerd also runs this after a clean Shutdown, and after the delete of one container of
    a pod whose shim still serves the others: a shim that answers keeps its VM and socket.
    """
    from .wire import delete_response  # not protobuf: this short-lived command is on containerd's path

    bundle = args.bundle or os.getcwd()
    path = socket_path(args.address, args.namespace, group_of(bundle, args.id))
    if not _alive(path):
        if os.path.exists(os.path.join(bundle, VM_RECORD_NAME)):  # sandbox.py's imports only when a VM was named
            from .sandbox import cleanup_after_dead_shim

            for done in cleanup_after_dead_shim(bundle):
                LOG.info("delete %s: %s", args.id, done)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    if args.id:
        subprocess.run(["runc", "--root", runc_root(args.address, args.namespace), "delete", "--force", args.id], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    rootfs = os.path.join(bundle, "rootfs")
    while os.path.ismount(rootfs):
        if subprocess.run(["umount", "-l", rootfs], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, check=False).returncode != 0:
            break
    response = delete_response(0, 128 + signal.SIGKILL, datetime.datetime.now(datetime.UTC))
    sys.stdout.buffer.write(response)
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        # The last word is the tree the code runs from: tests check that containerd runs this checkout.
        print(f"containerd-shim-uvmexec-v1 (uvmexec 0.1.0) {_PROJECT_ROOT}")
        return 0
    if args.command == "start":
        return start(args)
    if args.command == "delete":
        return delete(args)
    if args.command == "serve":
        return serve(args)
    print("containerd-shim-uvmexec-v1: a containerd runtime shim; containerd runs it", file=sys.stderr)
    return 2
