"""Fixtures for task tests: busybox bundles, and tasks that are deleted (and checked) after the test."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from common import ProcessSpec, Task
from common.errors import ExecError
from tests.support.procs import zombies
from vm_images.busybox import Bundle, make_bundle

from .helpers import mounts_at_or_under, runc_ids

_numbers = itertools.count()

#: An init that stays up until killed.
SLEEPER = ProcessSpec(args=["sleep", "100000"], env=["PATH=/bin:/usr/bin"])


@pytest.fixture
def bundle_of(tmp_path) -> Callable[..., Bundle]:
    """``bundle_of(process, **make_bundle_options)``: a fresh busybox bundle in the test's directory."""

    def make(process: ProcessSpec = SLEEPER, **options: Any) -> Bundle:
        return make_bundle(tmp_path / f"bundle-{next(_numbers)}", process, **options)

    return make


@pytest.fixture
def task_id(tmp_path) -> str:
    """A container id unique on this host for the test."""
    return f"uvmexec-test-{os.getpid()}-{next(_numbers)}"


@pytest.fixture
def cleanup() -> Iterator[Callable[[Task], Task]]:
    """``cleanup(task)``: the task is force-exited and deleted after the test, and then nothing
    of it may be left: no runc state, no mount under its bundle, no zombie of its agent."""
    from host_proxy.private_agent import private_client

    made: list[Task] = []
    yield lambda task: made.append(task) or task  # type: ignore[func-returns-value]
    for task in made:
        with contextlib.suppress(ExecError):
            task.init.force_exit(255)
        with contextlib.suppress(ExecError):
            task.delete()
    for task in made:
        assert task.id not in runc_ids()
        assert mounts_at_or_under(task.bundle) == []
    agent_pid = private_client().agent_info["pid"]
    assert zombies(agent_pid) == []
