"""A real OpenSSH ``sshd`` on a loopback port, for tests that need an SSH server.

``SshServer`` runs ``/usr/sbin/sshd -D -e`` as the current user with a freshly
generated ed25519 host key and user key, all in a private temporary directory,
and writes a ``known_hosts`` file that pins the host key for ``[127.0.0.1]:PORT``.

Lifecycle: ``SshServer()`` only prepares keys and the config (no process);
``start()`` runs sshd and returns once it listens; ``stop()`` kills sshd *and
every session process it forked* (so existing SSH connections are cut, as when a
guest dies) and waits for them; ``restart()`` starts it again on the same port
with the same keys; ``close()`` stops it and removes the directory. Used as a
context manager it starts on entry and closes on exit. Not thread-safe: drive
one instance from one thread.

Needs the Debian packages ``openssh-server`` (sshd) and ``openssh-client``
(ssh-keygen). sshd refuses to start without its privilege-separation directory
``/run/sshd``; ``start()`` creates it when missing (which needs root, as the
tests run here).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

from tests.support.agent import free_port
from tests.support.procs import descendants, kill_and_wait

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it insists on an absolute path
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
_LISTENING = "Server listening on"
_READABLE_LOG_LEVELS = ("INFO", "VERBOSE", "DEBUG", "DEBUG1", "DEBUG2", "DEBUG3")


def generate_key(path: Path, key_type: str = "ed25519", *, bits: int | None = None) -> Path:
    """Create an unencrypted OpenSSH key pair at ``path`` (and ``path.pub``) with ssh-keygen."""
    command = [SSH_KEYGEN, "-q", "-N", "", "-t", key_type, "-C", f"uvmexec-test-{key_type}", "-f", str(path)]
    if bits is not None:
        command[3:3] = ["-b", str(bits)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return path


def fingerprint(public_key_path: Path) -> str:
    """OpenSSH's own SHA256 fingerprint of a public key file (``SHA256:...``)."""
    out = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(public_key_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()[1]


class SshServer:
    """A real sshd on ``127.0.0.1:port`` with fresh keys; see the module docstring for the lifecycle.

    Attributes: ``host``, ``port`` (0 until the first start), ``user`` (the
    current user), ``key_path`` (the user's private key, authorized),
    ``known_hosts`` (pins the host key for ``[127.0.0.1]:port``),
    ``host_key_path`` (the host's private key; ``.pub`` beside it), ``log_path``
    (sshd's stderr), ``pid`` (None while stopped).
    """

    host = "127.0.0.1"

    def __init__(self, *, log_level: str = "VERBOSE") -> None:
        if log_level.upper() not in _READABLE_LOG_LEVELS:
            # Readiness is sshd's "Server listening" line, which it logs at INFO.
            raise ValueError(
                f"sshd LogLevel {log_level!r} hides readiness; use one of {_READABLE_LOG_LEVELS}"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="uvmexec-sshd-"))
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.port = 0
        self.authorized_keys = self.directory / "authorized_keys"
        self.known_hosts = self.directory / "known_hosts"
        self.log_path = self.directory / "sshd.log"
        self._log_level = log_level
        self._process: subprocess.Popen[bytes] | None = None
        self._log_pump: threading.Thread | None = None
        try:
            self.host_key_path = generate_key(self.directory / "host_ed25519")
            self.authorized_keys.touch()
            self.key_path = self.new_user_key("ed25519", name="user_ed25519")
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise

    # -- keys ------------------------------------------------------------------------------

    def new_user_key(
        self, key_type: str = "ed25519", *, name: str | None = None, authorize: bool = True
    ) -> Path:
        """Generate another user key pair in the directory; ``authorize`` appends it to authorized_keys.

        sshd reads authorized_keys at every login, so this works while it runs.
        """
        path = generate_key(self.directory / (name or f"user_{key_type}_{os.urandom(3).hex()}"), key_type)
        if authorize:
            with self.authorized_keys.open("a") as authorized:
                authorized.write(path.with_name(path.name + ".pub").read_text())
        return path

    @property
    def known_hosts_name(self) -> str:
        return f"[{self.host}]:{self.port}"

    @property
    def host_public_key(self) -> str:
        """The host key as ``"ssh-ed25519 AAAA..."`` (no comment)."""
        key_type, blob = Path(f"{self.host_key_path}.pub").read_text().split()[:2]
        return f"{key_type} {blob}"

    @property
    def host_fingerprint(self) -> str:
        """The host key's SHA256 fingerprint as OpenSSH prints it."""
        return fingerprint(Path(f"{self.host_key_path}.pub"))

    def endpoint(self, agent: str | None = None) -> str:
        """``ssh://user@127.0.0.1:port`` (with ``?agent=...`` when given)."""
        url = f"ssh://{self.user}@{self.host}:{self.port}"
        return f"{url}?agent={agent}" if agent else url

    # -- process ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> SshServer:
        """Run sshd; return once it listens (``RuntimeError`` with its log if it dies or stalls)."""
        if self._process is not None:
            raise RuntimeError("sshd is already running")
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        # The first start picks a free port; losing the race for it to another
        # process makes sshd exit with "Bind ... failed", so pick again.
        attempts = 1 if self.port else 5
        for attempt in range(attempts):
            port = self.port or free_port()
            try:
                self._spawn(port)
            except RuntimeError:
                if attempt == attempts - 1 or "Address already in use" not in self.log_tail():
                    raise
                continue
            self.port = port
            break
        self.known_hosts.write_text(f"{self.known_hosts_name} {self.host_public_key}\n")
        return self

    def _spawn(self, port: int) -> None:
        config = self.directory / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {self.host}:{port}",
                    f"HostKey {self.host_key_path}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    f"PidFile {self.directory / 'sshd.pid'}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "UseDNS no",
                    "StrictModes no",  # the temporary directory is not laid out like ~/.ssh
                    "AllowTcpForwarding yes",
                    "X11Forwarding no",
                    "PrintMotd no",
                    f"LogLevel {self._log_level}",
                    "",
                ]
            )
        )
        ready = threading.Event()
        process = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        pump = threading.Thread(
            target=self._pump_log, args=(process, ready), name=f"sshd-log-{process.pid}", daemon=True
        )
        pump.start()
        # The pump sets ``ready`` on sshd's "Server listening" line, or at EOF when sshd died.
        if not ready.wait(START_TIMEOUT) or process.poll() is not None:
            self._reap(process, pump)
            raise RuntimeError(f"sshd did not start listening on {self.host}:{port}:\n{self.log_tail()}")
        self._process, self._log_pump = process, pump

    def _pump_log(self, process: subprocess.Popen[bytes], ready: threading.Event) -> None:
        # sshd and its session children share this pipe, so it must be drained for
        # as long as any of them lives; EOF means they are all gone.
        assert process.stderr is not None
        with process.stderr, self.log_path.open("ab") as log:
            for line in process.stderr:
                log.write(line)
                log.flush()
                if line.startswith(_LISTENING.encode()):
                    ready.set()
        ready.set()

    def stop(self) -> None:
        """Kill sshd and every process it forked (cutting live SSH connections), and wait for them."""
        process, pump = self._process, self._log_pump
        self._process = self._log_pump = None
        if process is not None and pump is not None:
            self._reap(process, pump)

    def _reap(self, process: subprocess.Popen[bytes], pump: threading.Thread) -> None:
        deadline = time.monotonic() + STOP_TIMEOUT
        # Session processes run in their own sessions, so a process-group kill
        # would miss them; kill them first, while sshd still lives to reap them.
        kill_and_wait(descendants(process.pid), max(0.0, deadline - time.monotonic()))
        process.kill()
        process.wait(max(0.0, deadline - time.monotonic()))
        pump.join(max(0.0, deadline - time.monotonic()))
        if pump.is_alive():
            raise RuntimeError(f"sshd's stderr stayed open after it was killed (pid {process.pid})")

    def restart(self) -> SshServer:
        """Stop sshd if it runs and start it again on the same port, with the same keys."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop sshd and remove the directory. Idempotent."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no sshd log)"

    def __enter__(self) -> SshServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid else "stopped"
        return f"<SshServer {self.user}@{self.host}:{self.port} {state}>"
