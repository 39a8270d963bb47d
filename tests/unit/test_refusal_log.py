"""guest_agent.auth.RefusalLog: refused handshakes cost a bounded number of log lines, and every
refusal is still counted. (tests/reliability/test_security.py floods a real agent.)"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest

from guest_agent.auth import RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("test.refusals")
    logger.addHandler(handler)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)


def summed(lines: list[str]) -> int:
    return sum(int(match.group(1)) for line in lines if (match := re.match(r"refused (\d+) more", line)))


def test_a_burst_then_one_summary_line(lines):
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), burst=10, interval=60, clock=clock)
    flush_requests = [refusals.refused(f"refused client {n}") for n in range(1000)]
    assert lines.lines == [f"refused client {n}" for n in range(10)]
    assert flush_requests.count(True) == 1 and flush_requests.index(True) == 10
    clock.now += 60
    refusals.flush()
    assert lines.lines[10] == "refused 990 more handshakes in 60s, not logged one by one; the last: refused client 999"
    refusals.flush()
    assert len(lines.lines) == 11  # nothing more to sum up


def test_the_bucket_refills_at_one_line_per_interval_up_to_the_burst(lines):
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), burst=10, interval=60, clock=clock)
    for n in range(10):
        refusals.refused(f"r{n}")
    clock.now += 59
    assert refusals.refused("early") is True  # counted, not logged
    clock.now += 1
    assert refusals.refused("on time") is False
    assert lines.lines[-1] == "on time"
    clock.now += 3600  # a quiet hour refills the bucket, but only to the burst
    refusals.flush()
    for n in range(20):
        refusals.refused(f"after {n}")
    assert [line for line in lines.lines if line.startswith("after")] == [f"after {n}" for n in range(10)]


def test_a_sustained_flood_costs_two_lines_a_minute_and_loses_no_count(lines):
    """An hour of 100 refusals a second, with the flushes the ZAP handler would schedule."""
    clock = Clock()
    refusals = RefusalLog(logging.getLogger("test.refusals"), burst=10, interval=60, clock=clock)
    flush_at: float | None = None
    total = 0
    for _ in range(3600 * 100):
        clock.now += 0.01
        if flush_at is not None and clock.now >= flush_at:
            refusals.flush()
            flush_at = None
        if refusals.refused("refused client"):
            flush_at = clock.now + refusals.interval
        total += 1
    refusals.flush()
    assert len(lines.lines) <= 10 + 2 * 60 + 1
    one_by_one = [line for line in lines.lines if line == "refused client"]
    assert len(one_by_one) + summed(lines.lines) == total
