"""Figures, their comparisons with baselines, and the table that prints them.

A :class:`Figure` is one case's samples (seconds per iteration, or seconds per
run for a throughput figure, shown as MiB/s, or sizes in bytes for a memory
figure, ``unit="bytes"``, shown in MiB; a size compares as a time does: lower
is better). Each figure may carry
:class:`Comparison`\\ s: its ratio against a baseline figure measured in the
same invocation, and optionally a :class:`Target` for that ratio. Ratios of
times are ``case / baseline`` (lower is better); ratios of rates are
``case rate / baseline rate`` (higher is better).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .measure import format_load, load_average, median, percentile

MIB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """A bound on a ratio: ``ratio OP value``."""

    op: str  # "<=", "<", ">=", ">"
    value: float

    def met(self, ratio: float) -> bool:
        return {
            "<=": ratio <= self.value,
            "<": ratio < self.value,
            ">=": ratio >= self.value,
            ">": ratio > self.value,
        }[self.op]

    def __str__(self) -> str:
        symbol = {"<=": "≤", "<": "<", ">=": "≥", ">": ">"}[self.op]
        return f"{symbol}{self.value:g}×"

    def miss(self, ratio: float) -> str:
        """How far ``ratio`` is from the target, in words."""
        if self.op in ("<=", "<"):
            return f"{(ratio / self.value - 1) * 100:.0f}% over"
        return f"{(1 - ratio / self.value) * 100:.0f}% under"


@dataclass
class Comparison:
    baseline: str
    ratio: float
    target: Target | None = None

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ratio)

    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "met" if self.met else f"MISSED ({self.target.miss(self.ratio)})"


@dataclass
class Figure:
    """One case: its samples, what they are compared with, and a free-form note."""

    case: str
    samples: list[float]
    bytes_per_run: int | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    note: str = ""
    is_baseline: bool = False
    unit: str = "seconds"  # or "bytes" (a memory figure)

    @property
    def is_rate(self) -> bool:
        return self.bytes_per_run is not None

    @property
    def median(self) -> float:
        return median(self.samples)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 0.99)

    @property
    def value(self) -> float:
        """What ratios compare: the median time, or the rate at the median time."""
        if self.bytes_per_run is not None:
            return self.bytes_per_run / self.median
        return self.median

    def ratio_to(self, baseline: Figure) -> float:
        """Time / baseline time, or rate / baseline rate."""
        return self.value / baseline.value

    def compare(self, baseline: Figure, target: Target | None = None) -> Comparison:
        comparison = Comparison(baseline.case, self.ratio_to(baseline), target)
        self.comparisons.append(comparison)
        return comparison

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "case": self.case,
            "n": len(self.samples),
            "median_s": self.median,
            "p99_s": self.p99,
            "min_s": min(self.samples),
            "max_s": max(self.samples),
            "baseline": self.is_baseline,
            "note": self.note,
            "comparisons": [
                {"baseline": c.baseline, "ratio": c.ratio,
                 "target": str(c.target) if c.target else None, "met": c.met}
                for c in self.comparisons
            ],
        }
        if self.unit != "seconds":
            data["unit"] = self.unit  # median_s, p99_s, ... then hold that unit
        if self.bytes_per_run is not None:
            data["bytes_per_run"] = self.bytes_per_run
            data["median_mib_s"] = self.bytes_per_run / self.median / MIB
            data["p99_mib_s"] = self.bytes_per_run / self.p99 / MIB
        return data


def fastest(figures: list[Figure]) -> Figure:
    """The best of several peers: the lowest median time, or the highest rate."""
    if figures[0].is_rate:
        return max(figures, key=lambda figure: figure.value)
    return min(figures, key=lambda figure: figure.value)


@dataclass
class FamilyResult:
    """What one benchmark family measured, with the machine load around it."""

    name: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    load_start: tuple[float, float, float] = field(default_factory=load_average)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    def finish(self) -> FamilyResult:
        """Record the load average and the time taken, now that the family is done."""
        self.load_end = load_average()
        self.seconds = time.monotonic() - self._started
        return self

    def figure(self, case: str) -> Figure:
        return next(figure for figure in self.figures if figure.case == case)

    def add(self, case: str, samples: list[float], **options: Any) -> Figure:
        figure = Figure(case, samples, **options)
        self.figures.append(figure)
        return figure

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "load_start": list(self.load_start),
            "load_end": list(self.load_end),
            "seconds": round(self.seconds, 1),
            "notes": self.notes,
            "errors": self.errors,
            "figures": [figure.summary() for figure in self.figures],
        }


# -- formatting ------------------------------------------------------------------------------


def format_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.3f} s"


def format_values(figure: Figure) -> tuple[str, str]:
    """(median, p99) as shown: times, MiB, or MiB/s (the p99 column is the rate of the p99 run)."""
    if figure.unit == "bytes":
        return f"{figure.median / MIB:.1f} MiB", f"{figure.p99 / MIB:.1f} MiB"
    if figure.bytes_per_run is not None:
        return (f"{figure.bytes_per_run / figure.median / MIB:.0f} MiB/s",
                f"{figure.bytes_per_run / figure.p99 / MIB:.0f} MiB/s")
    return format_time(figure.median), format_time(figure.p99)


_HEADER = ("case", "n", "median", "p99", "vs baseline", "ratio", "target", "verdict")


def _rows(result: FamilyResult) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for figure in result.figures:
        median_text, p99_text = format_values(figure)
        head = (figure.case, str(len(figure.samples)), median_text, p99_text)
        if figure.is_baseline and not figure.comparisons:
            rows.append((*head, "(baseline)", "", "", ""))
        elif not figure.comparisons:
            rows.append((*head, "", "", "", ""))
        for index, comparison in enumerate(figure.comparisons):
            lead = head if index == 0 else ("", "", "", "")
            rows.append((*lead, comparison.baseline, f"{comparison.ratio:.2f}×",
                         str(comparison.target or ""), comparison.verdict()))
    return rows


def format_text(result: FamilyResult) -> str:
    """A family's table as plain text, with its load average before and after."""
    rows = [_HEADER, *_rows(result)]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_HEADER))]
    lines = [f"== {result.title} ==",
             f"   load average {format_load(result.load_start)} -> {format_load(result.load_end)}, "
             f"{result.seconds:.0f} s"]
    for index, row in enumerate(rows):
        cells = [cell.rjust(width) if column in (1, 2, 3, 5) else cell.ljust(width)
                 for column, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append("  " + "  ".join(cells).rstrip())
        if index == 0:
            lines.append("  " + "  ".join("-" * width for width in widths))
    lines.extend(f"   * {note}" for note in result.notes)
    lines.extend(f"   ! ERROR: {error}" for error in result.errors)
    return "\n".join(lines)


def format_markdown(result: FamilyResult) -> str:
    """A family's table in Markdown (for BENCHMARKS.md)."""
    lines = [f"### {result.title}", "",
             f"Load average {format_load(result.load_start)} → {format_load(result.load_end)}; "
             f"{result.seconds:.0f} s.", "",
             "| " + " | ".join(_HEADER) + " |",
             "|" + "|".join("---:" if column in (1, 2, 3, 5) else "---" for column in range(len(_HEADER))) + "|"]
    for row in _rows(result):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    if result.notes or result.errors:
        lines.append("")
    lines.extend(f"- {note}" for note in result.notes)
    lines.extend(f"- **ERROR**: {error}" for error in result.errors)
    return "\n".join(lines)


def targets_summary(results: list[FamilyResult]) -> list[str]:
    """One line per target: met or missed, and by how much."""
    lines = []
    for result in results:
        for figure in result.figures:
            for comparison in figure.comparisons:
                if comparison.target is not None:
                    lines.append(f"{'met   ' if comparison.met else 'MISSED'} {result.name}: {figure.case} "
                                 f"vs {comparison.baseline}: {comparison.ratio:.2f}× (target "
                                 f"{comparison.target}){'' if comparison.met else ', ' + comparison.target.miss(comparison.ratio)}")
    return lines


def write_json(path: str, header: dict[str, Any], results: list[FamilyResult]) -> None:
    with open(path, "w") as out:
        json.dump({**header, "families": [result.summary() for result in results]}, out, indent=2)
        out.write("\n")
