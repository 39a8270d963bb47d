"""A guest booted while the host starves QEMU of CPU (a loaded CI machine) keeps the timer route QEMU wires.

At boot the kernel checks the timer interrupt's IO-APIC route: it busy-waits
some tens of milliseconds and wants more than 4 PIT ticks in them. A TCG guest
whose QEMU is not scheduled for part of that wait gets fewer (QEMU drops the
ticks it missed), so the kernel judged the route broken: "MP-BIOS bug: 8254
timer not connected to IO-APIC", other routes tried, or a panic ("IO-APIC +
timer doesn't work!") that ended QEMU at once. The shim's hypervisor tests
failed so, now and then, under load. The launcher boots with
``no_timer_check``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from vm_images import Guest, ImagePaths, launch
from vm_images.qemu import QemuProcess

pytestmark = [pytest.mark.vm, pytest.mark.timeout(600)]

#: QEMU is stopped this long, then runs ``RUN_SECONDS``, over and over, for ``STARVE_SECONDS``:
#: a fifth of a CPU's time, in slices longer than the kernel's check, through the early boot.
STOP_SECONDS = 0.06
RUN_SECONDS = 0.015
STARVE_SECONDS = 30.0


@contextmanager
def _starved(pid: int) -> Iterator[None]:
    """Stop and continue process ``pid`` by turns (through a pidfd) until the block ends or time is up.

    The waits are the load this injects, not a wait for a condition; the
    process is continued on every way out."""
    pidfd = os.pidfd_open(pid)
    done = threading.Event()

    def starve() -> None:
        stopped_by_time = threading.Timer(STARVE_SECONDS, done.set)
        stopped_by_time.start()
        try:
            while not done.is_set():
                signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
                done.wait(STOP_SECONDS)
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
                done.wait(RUN_SECONDS)
        except ProcessLookupError:
            pass  # it exited (a panic ends QEMU): the boot reports it
        finally:
            stopped_by_time.cancel()
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGCONT)
            except ProcessLookupError:
                pass

    thread = threading.Thread(target=starve, name="starve-qemu")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        os.close(pidfd)


def test_a_guest_starved_while_it_boots_keeps_its_timer_route(vm_image: ImagePaths, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    spawn = launch._spawn_with_keys
    run_dir = tmp_path / "vm"
    guest = Guest(vm_image, wait_for_ssh=False, ready_timeout=300, run_dir=run_dir)
    try:
        with ExitStack() as starving:
            def spawn_starved(*args: Any, **kwargs: Any) -> QemuProcess:
                process = spawn(*args, **kwargs)
                starving.enter_context(_starved(process.pid))
                return process

            monkeypatch.setattr(launch, "_spawn_with_keys", spawn_starved)
            guest.start()  # before no_timer_check, now and then: GuestBootError, with the kernel's panic
    finally:
        guest.stop()
    console = (run_dir / "serial.log").read_text(errors="replace")
    assert "MP-BIOS bug" not in console and "timer doesn't work" not in console, console
