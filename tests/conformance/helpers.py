"""Small builders shared by the conformance tests."""

from __future__ import annotations

import threading
from typing import Any

from common import ProcessSpec
from common.state import ExecEvent


def sh(script: str, **spec_fields: Any) -> ProcessSpec:
    return ProcessSpec(args=["sh", "-c", script], **spec_fields)


class EventLog:
    """Collects ``on_event`` deliveries; ``wait_exited`` blocks until an ExecExited arrives."""

    def __init__(self) -> None:
        self.events: list[ExecEvent] = []
        self._exited = threading.Event()

    def __call__(self, event: ExecEvent) -> None:
        self.events.append(event)
        if type(event).__name__ == "ExecExited":
            self._exited.set()

    def wait_exited(self, timeout: float = 20.0) -> None:
        assert self._exited.wait(timeout), f"no ExecExited within {timeout}s; got {self.events}"
