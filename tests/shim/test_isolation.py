"""Which isolation a container gets: annotation, then options file, then UVMEXEC_ISOLATION, then the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.errors import InvalidArgumentError
from host_proxy.shim import isolation


def _bundle(tmp_path: Path, annotation: str | None = None) -> str:
    config: dict[str, object] = {"ociVersion": "1.0.2", "process": {"args": ["true"]}}
    if annotation is not None:
        config["annotations"] = {isolation.ANNOTATION: annotation}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def _options(tmp_path: Path, value: str) -> str:
    path = tmp_path / "options.toml"
    path.write_text(f'isolation = "{value}"\n')
    return str(path)


@pytest.mark.parametrize("annotation, options, environment, expected", [
    ("process", "hypervisor", "hypervisor", "process"),
    ("hypervisor", "process", "process", "hypervisor"),
    (None, "process", "hypervisor", "process"),
    (None, "hypervisor", "process", "hypervisor"),
    (None, None, "process", "process"),
    (None, None, "hypervisor", "hypervisor"),
    (None, None, None, isolation.DEFAULT_ISOLATION),
])
def test_the_first_source_that_names_one_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               annotation: str | None, options: str | None,
                                               environment: str | None, expected: str) -> None:
    if environment is None:
        monkeypatch.delenv(isolation.ENVIRONMENT, raising=False)
    else:
        monkeypatch.setenv(isolation.ENVIRONMENT, environment)
    options_path = _options(tmp_path, options) if options is not None else ""
    assert isolation.choose(_bundle(tmp_path, annotation), options_path) == expected


def test_an_unknown_value_in_the_environment_is_refused_naming_the_variable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(isolation.ENVIRONMENT, "vm")
    with pytest.raises(InvalidArgumentError, match=f"environment variable {isolation.ENVIRONMENT}: unknown isolation 'vm'"):
        isolation.choose(_bundle(tmp_path), "")


def test_the_options_file_sizes_the_utility_vm(tmp_path: Path) -> None:
    path = tmp_path / "options.toml"
    path.write_text('isolation = "hypervisor"\nmemory_mb = 1024\ncpus = 1\nboot_timeout = 30.5\n')
    assert isolation.vm_options(str(path)) == isolation.VMOptions(memory_mb=1024, cpus=1, boot_timeout=30.5)
    assert isolation.vm_options("") == isolation.VMOptions()


@pytest.mark.parametrize(("line", "words"), [
    ('memory_mb = "1G"', "memory_mb must be a number in [128, 65536], not '1G'"),
    ("memory_mb = 64", "memory_mb must be a number in [128, 65536], not 64"),
    ("cpus = true", "cpus must be a number in [1, 64], not True"),
    ("boot_timeout = 0", "boot_timeout must be a number in [1, 3600], not 0"),
    ("isolation = 3", "isolation must be str, not 3"),
    ("memory = 512", "unknown option 'memory'"),
])
def test_a_bad_option_is_refused_naming_the_file_and_the_key(tmp_path: Path, line: str, words: str) -> None:
    path = tmp_path / "options.toml"
    path.write_text(line + "\n")
    with pytest.raises(InvalidArgumentError, match="runtime options file") as raised:
        isolation.vm_options(str(path))
    assert words in raised.value.message
