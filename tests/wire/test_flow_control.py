"""Output through the agent is flow-controlled: memory stays bounded whatever the size."""

from __future__ import annotations

import hashlib
import io

import pytest

from common import ProcessSpec, Stdio
from host_proxy import AgentClient

pytestmark = pytest.mark.timeout(300)

SIZE = 256 * 1024 * 1024


def _peak_rss_kib(pid: str | int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def _reset_peak(pid: str | int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class HashingSink(io.RawIOBase):
    """A consumer slower than ``head -c`` can produce: it hashes everything it takes."""

    def __init__(self) -> None:
        super().__init__()
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        for _ in range(3):
            hashlib.sha256(data).digest()
        self.digest.update(data)
        self.size += len(data)
        return len(data)


def test_a_slow_reader_bounds_memory_on_both_sides(ipc_agent):
    expected = hashlib.sha256()
    block = b"\0" * (1024 * 1024)
    for _ in range(SIZE // len(block)):
        expected.update(block)
    sink = HashingSink()
    with AgentClient.connect(ipc_agent.endpoints[0], timeout=10) as client:
        window = client.agent_info["window"]
        _reset_peak(ipc_agent.pid)
        _reset_peak("self")
        agent_before = _peak_rss_kib(ipc_agent.pid)
        client_before = _peak_rss_kib("self")
        made = client.create_exec("flow", "zero", ProcessSpec(args=["head", "-c", str(SIZE), "/dev/zero"]),
                                  Stdio(stdout=sink))
        made.start()
        assert made.wait(timeout=240).exit_status == 0
        agent_growth = (_peak_rss_kib(ipc_agent.pid) - agent_before) * 1024
        client_growth = (_peak_rss_kib("self") - client_before) * 1024
        made.delete()
    assert sink.size == SIZE and sink.digest.hexdigest() == expected.hexdigest()
    # A window per stream, a chunk in the pump, socket buffers: a few MB, never the stream.
    assert agent_growth < 8 * window + 16 * 1024 * 1024, agent_growth
    assert client_growth < 8 * window + 16 * 1024 * 1024, client_growth

