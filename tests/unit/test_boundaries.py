"""The package boundaries: guest_agent and host_proxy never import each other, the guest side never
imports paramiko or protobuf (``google``: the containerd shim's, host only), and the benchmarks never import the test suite (``python -m bench`` runs from a
checkout, but the tests are free to change under it)."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("guest_agent", {"host_proxy", "paramiko", "google"}),
        ("common", {"host_proxy", "guest_agent", "paramiko", "google"}),
        ("host_proxy", {"guest_agent"}),
        ("bench", {"tests"}),
    ],
)
def test_no_forbidden_imports_in_source(package, forbidden):
    offenders = {path: names & forbidden for path, names in _imported_modules(package).items() if names & forbidden}
    assert offenders == {}


def test_guest_agent_imports_without_host_proxy_or_paramiko():
    # A fresh interpreter where host_proxy and paramiko cannot be imported at all.
    script = f"""
import importlib, pkgutil, sys
sys.path.insert(0, {str(ROOT)!r})
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("host_proxy", "paramiko", "google"):
            raise ImportError("forbidden in the guest: " + name)
sys.meta_path.insert(0, Refuse())
import guest_agent
for module in pkgutil.walk_packages(guest_agent.__path__, "guest_agent."):
    if module.name != "guest_agent.__main__":
        importlib.import_module(module.name)
import common, common.supervisor
print("ok", sorted(m for m in sys.modules if m.startswith("guest_agent")))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
