"""The background event loop that host-side execs run on, and the thread events are delivered on.

One loop thread per process serves every ``LocalExec`` and ``AgentClient``; the
public API stays synchronous and thread-safe by handing each call to it.
``on_event`` callbacks run on a separate dispatch thread, never the loop
thread, so a callback may call ``status()`` (which may need the loop) without
deadlocking it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from common.supervisor import Supervisor

log = logging.getLogger(__name__)

T = TypeVar("T")


class LoopThread:
    """An asyncio loop on a daemon thread, with a process supervisor and an event dispatcher."""

    def __init__(self, name: str = "uvmexec-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        self.supervisor: Supervisor = self.call(lambda: Supervisor(self.loop))
        self._events: queue.SimpleQueue[tuple[Callable[[Any], None], Any] | None] = queue.SimpleQueue()
        self._dispatcher = threading.Thread(target=self._dispatch_events, name=f"{name}-events", daemon=True)
        self._dispatcher.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    @property
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run the synchronous ``fn(*args)`` on the loop thread and return its result (or raise)."""
        if self.in_loop_thread:
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def runner() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as error:  # handed to the caller's thread
                future.set_exception(error)

        self.loop.call_soon_threadsafe(runner)
        return future.result()

    def run(self, coroutine: Awaitable[T], timeout: float | None = None) -> T:
        """Run a coroutine on the loop and wait for it; ``TimeoutError`` after ``timeout``."""
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coroutine, self.loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def dispatch(self, callback: Callable[[Any], None], event: Any) -> None:
        """Queue ``callback(event)`` for the dispatch thread (in order); callable from any thread."""
        self._events.put((callback, event))

    def _dispatch_events(self) -> None:
        while True:
            item = self._events.get()
            if item is None:
                return
            callback, event = item
            try:
                callback(event)
            except Exception:
                log.exception("on_event callback %r raised", callback)


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The process-wide loop thread, started on first use."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LoopThread()
        return _shared


def _forget_after_fork() -> None:
    # A forked child has none of the parent's threads; start afresh if it needs one.
    global _shared, _shared_lock
    _shared = None
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
