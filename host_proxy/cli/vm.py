"""``uvmexec vm build|up|down|status``, and the VM behind ``uvmexec run --vm``.

Promise: these wrap :mod:`vm_images` (the same functions ``python -m
vm_images`` calls, the same output) and add a progress display on stderr
while an image builds or a VM boots: a live status line with the elapsed time
only when stderr is a terminal (not ``TERM=dumb``), plain lines otherwise (a
log stays readable). The live line is always erased before anything else is
written to stderr — the build's own lines, uvmexec's log messages, the final
"ready" line — so no line is ever written into the middle of it.
Results go to stdout. Failures are one line: an image that cannot be built
exits 125, a VM that does not boot exits 69; ``vm status`` exits 3 when no VM
runs. :func:`running_or_booted` is the running VM's ``GuestInfo``, booting
one (with the display) if none runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any, cast

from .errors import CliError, Exit

_SPINNER = "|/-\\"


class ProgressDisplay:
    """A status line ("booting the VM ... 4.2s") that other lines scroll past; plain lines off a tty."""

    def __init__(self, stream: IO[str] | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = is_live_terminal(self.stream) if live is None else live
        self._lock = threading.RLock()
        self._borrowed: list[logging.StreamHandler[Any]] = []
        self._stop = threading.Event()
        self._status = ""
        self._began = time.monotonic()
        self._ticker: threading.Thread | None = None

    # A file-like face for vm_images.Progress: its lines scroll above the status line.
    def write(self, text: str) -> int:
        with self._lock:
            self._clear()
            self.stream.write(text)
            self._draw()
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.live

    def status(self, text: str) -> None:
        """Show what is happening now (live), or print it as a line (plain)."""
        with self._lock:
            self._status = text
            self._began = time.monotonic()
            if not self.live:
                self.stream.write(f"uvmexec: {text} ...\n")
            else:
                self._clear()
                self._draw()
            self.stream.flush()
        if self.live and self._ticker is None:
            self._borrow_log_handlers()
            self._ticker = threading.Thread(target=self._tick, name="uvmexec-progress", daemon=True)
            self._ticker.start()

    def done(self, text: str) -> None:
        """Replace the status line by a final line."""
        with self._lock:
            self._clear()
            self._status = ""
            self.stream.write(f"uvmexec: {text}\n")
            self.stream.flush()

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            self._clear()
            self._status = ""
            self.stream.flush()
        self._return_log_handlers()

    def _borrow_log_handlers(self) -> None:
        """Log lines (ours, the library's) go through :meth:`write` while the line is live."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.setStream(self)  # type: ignore[arg-type]
                self._borrowed.append(handler)

    def _return_log_handlers(self) -> None:
        for handler in self._borrowed:
            handler.setStream(self.stream)
        self._borrowed.clear()

    def _tick(self) -> None:
        frame = 0
        # An animation, not a wait for a condition: redraw every 0.1 s until closed.
        while not self._stop.wait(0.1):
            with self._lock:
                frame += 1
                self._clear()
                self._draw(frame)
                self.stream.flush()

    def _clear(self) -> None:
        if self.live and self._status:
            self.stream.write("\r\033[K")

    def _draw(self, frame: int = 0) -> None:
        if self.live and self._status:
            elapsed = f" ... {time.monotonic() - self._began:.1f}s"
            # One screen line at most, or "\r" would not get back to its start.
            room = max(10, shutil.get_terminal_size().columns - 1 - len(elapsed) - 2)
            text = self._status if len(self._status) <= room else self._status[:room - 1] + "~"
            self.stream.write(f"{_SPINNER[frame % len(_SPINNER)]} {text}{elapsed}")

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def is_live_terminal(stream: IO[str]) -> bool:
    """A terminal that can redraw a line in place."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") not in ("", "dumb")
    except (OSError, ValueError):
        return False


def _build(display: ProgressDisplay, cache_dir: Path | None = None, project_root: Path | None = None) -> Any:
    import vm_images

    display.status("checking the guest image (a first build takes about a minute)")
    try:
        image = vm_images.build_image(cache_dir=cache_dir, project_root=project_root,
                                      progress=vm_images.Progress(stream=cast(IO[str], display)))
    except vm_images.BuildError as error:
        raise CliError(f"cannot build the guest image: {error}", Exit.FAILED) from None
    except PermissionError as error:
        raise CliError(f"cannot build the guest image: {error} (building needs root)", Exit.FAILED) from None
    display.done(f"image ready: {image.directory}")
    return image


def _boot(display: ProgressDisplay, image: Any, **options: Any) -> Any:
    import vm_images

    display.status("booting the VM and waiting for its agent")
    try:
        info = vm_images.up(image, **options)
    except (vm_images.GuestBootError, vm_images.QemuError) as error:
        raise CliError(f"the VM did not boot: {error}", Exit.FAILED) from None
    display.done(f"VM ready in {info.boot_seconds:.1f}s ({info.accel}), agent at {info.agent_endpoint}")
    return info


def running_or_booted(progress: bool = True, **options: Any) -> Any:
    """The background VM's ``GuestInfo``; boots one (image built first if needed) if none runs."""
    import vm_images

    info = vm_images.status()
    if info is not None:
        return info
    with ProgressDisplay(live=progress and is_live_terminal(sys.stderr)) as display:
        image = options.pop("image", None) or _build(display)
        return _boot(display, image, **options)


def vm_command(args: argparse.Namespace) -> int:
    import vm_images
    from vm_images.__main__ import print_info  # the exact output of 'python -m vm_images'
    from vm_images.options import guest_options

    if args.vm_command == "build":
        with ProgressDisplay() as display:
            image = _build(display, args.cache_dir, args.project_root)
        print(json.dumps({"directory": str(image.directory), **image.manifest()}, indent=2)
              if args.json else image.directory)
    elif args.vm_command == "up":
        options = guest_options(args)
        if args.image:
            options["image"] = vm_images.ImagePaths.from_directory(args.image)
        print_info(running_or_booted(**options), args.json)
    elif args.vm_command == "down":
        with ProgressDisplay() as display:
            display.status("stopping the VM")
            outcome = vm_images.down(timeout=args.stop_timeout)
        print("not running" if outcome is None else f"stopped ({outcome})")
    else:
        found = vm_images.status()
        if found is None:
            print(json.dumps({"running": False}) if args.json else "not running")
            return Exit.NOT_RUNNING
        print_info(found, args.json)
    return Exit.OK
