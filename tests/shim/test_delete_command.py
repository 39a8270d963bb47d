"""containerd's ``delete`` command after a dead shim: it imports :mod:`host_proxy.shim.sandbox` (the
utility VM's cleanup, tens of milliseconds of imports) only for a bundle that names a VM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from host_proxy.shim.main import VM_RECORD_NAME
from host_proxy.shim.sandbox import RECORD_NAME

PROJECT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The command as containerd runs it (no shim listens on the socket: it is dead), then what it imported.
SCRIPT = r"""
import sys
from host_proxy.shim.main import main
code = main(["-address", sys.argv[1], "-namespace", "default", "-id", "c1", "-bundle", sys.argv[2], "delete"])
print("\nsandbox imported:", "host_proxy.shim.sandbox" in sys.modules, file=sys.stderr)
sys.exit(code)
"""


def _delete(tmp_path: Path, bundle: Path) -> bool:
    """Run the delete command on ``bundle``; True if it imported sandbox.py."""
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "c.sock"), str(bundle)],
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": PROJECT}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout, "no DeleteResponse on stdout"
    return done.stderr.decode().splitlines()[-1] == "sandbox imported: True"


def _bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"annotations": {}}))
    return bundle


def test_the_record_names_agree() -> None:
    assert VM_RECORD_NAME == RECORD_NAME


def test_a_bundle_without_a_vm_record_does_not_import_the_sandbox(tmp_path: Path) -> None:
    assert not _delete(tmp_path, _bundle(tmp_path))


def test_a_bundle_naming_a_vm_gets_its_run_directory_removed(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    run_dir = tmp_path / "vm"  # what a SIGKILLed shim left: no QEMU names it any more
    run_dir.mkdir()
    (run_dir / "serial.log").write_text("the guest's console\n")
    (bundle / RECORD_NAME).write_text(json.dumps({"run_dir": str(run_dir)}))
    assert _delete(tmp_path, bundle)
    assert not run_dir.exists()
