"""Suite-wide options: which conformance backends run."""

from __future__ import annotations

import os

import pytest

from tests.support.backends import REGISTRY


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backend",
        action="append",
        default=[],
        help="conformance backend to run (repeatable); default: every backend, QEMU guests included",
    )


def selected_backends(config: pytest.Config) -> list[str]:
    names = list(config.getoption("--backend"))
    if not names and os.environ.get("UVMEXEC_BACKENDS"):
        names = [name.strip() for name in os.environ["UVMEXEC_BACKENDS"].split(",") if name.strip()]
    if not names:
        names = list(REGISTRY)
    unknown = [name for name in names if name not in REGISTRY]
    if unknown:
        raise pytest.UsageError(f"unknown backend(s) {unknown}; known: {sorted(REGISTRY)}")
    return names
