"""A hostile agent (a guest whose root replaced the agent) cannot make the host hold what it likes.

Each test starts a fake agent (``tests/support/fake_agent.py``, its own process) that gets one exec
started and then breaks a bound: chunks beyond the credit window, a message of many frames, a data
frame over 256 KiB, oversized events, a window over the limit. The client must stop talking to it
for good, end its execs with 255 and say why — and its memory (this process's peak RSS) must grow
by no more than SECURITY.md states. Where libzmq holds data before the host can look at it (a
multipart message is delivered whole), the test shows how much, so that the bound stays honest.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from common import ProcessSpec, Stdio
from common.errors import DeadlineExceededError, UnavailableError
from host_proxy import AgentClient, ProxiedExec
from tests.support.agent import AgentProcess

pytestmark = pytest.mark.timeout(120)

MiB = 1024 * 1024
WINDOW = 4 * MiB


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field}")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class Attack:
    """A fake agent carrying out one attack, and a client connected to it."""

    def __init__(self, workdir: str, *args: str) -> None:
        self.agent = AgentProcess([f"ipc://{workdir}/fake.sock"], list(args), module="tests.support.fake_agent")

    def __enter__(self) -> Attack:
        self.agent.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.agent.stop()

    def run(self, fifo: str, wait: float = 20) -> tuple[int | None, int, AgentClient, ProxiedExec]:
        """Start an exec whose stdout nobody reads (the host's writer waits, as for a stalled
        consumer) and let the agent attack for up to ``wait`` seconds: ``(exit status or None,
        peak RSS growth in KiB, client, exec)``. An exec the host ended says why: what the client says."""
        client = AgentClient.connect(self.agent.endpoints[0], timeout=10, reconnect_timeout=10)
        try:
            _reset_peak()
            before = _rss_kib("VmHWM")
            made = client.create_exec("hostile", "exec", ProcessSpec(args=["true"]), Stdio(stdout=fifo))
            made.start()
            status: int | None = None
            if wait:
                try:
                    status = made.wait(timeout=wait).exit_status
                except DeadlineExceededError:
                    pass
            growth = _rss_kib("VmHWM") - before
            if status is not None:
                assert made.lost_reason is not None and made.lost_reason == client.failure
            return status, growth, client, made
        except BaseException:
            client.close()
            raise


@pytest.fixture
def fifo(tmp_path) -> Iterator[str]:
    path = str(tmp_path / "stdout")
    os.mkfifo(path)
    yield path


def test_an_agent_that_overruns_the_credit_window_is_dropped(workdir, fifo):
    """The fake pushes 256 MiB of stdout while nobody reads it and no acknowledgement goes back.
    Before: the host queued all of it (peak RSS +260 MiB) and the exec kept running. Now the host
    drops the agent once one window and a chunk are unacknowledged: the exec ends with 255, the
    client says why, and this process grew by a few windows at most."""
    with Attack(workdir, "--attack", "overrun", "--bytes", str(256 * MiB)) as attack:
        status, growth_kib, client, _ = attack.run(fifo)
        with client:
            print(f"overrun: exit {status}, client peak RSS +{growth_kib / 1024:.1f} MiB")
            assert status == 255, f"the exec still runs (client grew by {growth_kib / 1024:.1f} MiB)"
            assert "window" in (client.failure or ""), client.failure
            with pytest.raises(UnavailableError, match="window"):
                client.ping()
        assert growth_kib < (4 * WINDOW + 32 * MiB) // 1024, f"the client grew by {growth_kib / 1024:.1f} MiB"


def test_a_data_frame_over_the_chunk_limit_drops_the_agent(workdir, fifo):
    """Before: a 1 MiB data frame (four times max_chunk) was queued and written like any chunk."""
    with Attack(workdir, "--attack", "big-chunk") as attack:
        status, _, client, _ = attack.run(fifo)
        with client:
            assert status == 255
            assert "data frame" in (client.failure or ""), client.failure


def test_oversized_events_drop_the_agent(workdir, fifo):
    """64 events of 4 MiB each (a ``started`` padded with junk). Before: each was decoded and
    ignored, and libzmq queued what the loop had not read yet (up to 100,000 messages). Now the
    first event over the event size limit drops the agent."""
    with Attack(workdir, "--attack", "big-event", "--count", "64") as attack:
        status, growth_kib, client, _ = attack.run(fifo)
        with client:
            print(f"big events: exit {status}, client peak RSS +{growth_kib / 1024:.1f} MiB")
            assert status == 255
            assert "event" in (client.failure or ""), client.failure
        assert growth_kib < 160 * 1024, f"the client grew by {growth_kib / 1024:.1f} MiB"


def test_libzmq_holds_a_whole_multipart_message_and_the_host_then_drops_the_agent(workdir, fifo):
    """One ``out`` message of 16 data frames of 4 MiB. ZMQ_MAXMSGSIZE bounds each frame, not the
    message, and libzmq hands a message over only once all its frames are in: the host cannot see
    it before it holds all 64 MiB (the assertion on the growth documents this limit of libzmq —
    SECURITY.md, "What libzmq holds"). What the host can do is refuse the agent as soon as the
    message arrives. Before: the message was dropped as a malformed event and the agent kept
    its connection, free to send the next."""
    frames = 16
    with Attack(workdir, "--attack", "frames", "--frames", str(frames)) as attack:
        status, growth_kib, client, _ = attack.run(fifo)
        with client:
            print(f"{frames} x 4 MiB frames: exit {status}, client peak RSS +{growth_kib / 1024:.1f} MiB")
            assert status == 255
            assert "frames" in (client.failure or ""), client.failure
        assert growth_kib > frames * 4 * 1024 // 2, "libzmq no longer holds a whole message: update SECURITY.md"


def test_a_reply_of_many_frames_drops_the_agent_on_the_request_path_too(workdir, fifo):
    """Requests answered on the caller's thread (direct sockets) read replies with the same checks.
    Before: the direct socket read the reply's first frame and left the other three (12 MiB) for
    the next request to trip over; the agent stayed trusted."""
    with Attack(workdir, "--attack", "bad-reply", "--frames", "3") as attack:
        _, _, client, made = attack.run(fifo, wait=0)
        with client:
            assert made.state.value == "running"  # nothing wrong yet
            with pytest.raises(UnavailableError, match="frames"):
                client.ping()
            assert "frames" in (client.failure or ""), client.failure
            assert made.wait(timeout=10).exit_status == 255 and made.lost_reason == client.failure


def test_an_agent_announcing_a_window_over_the_limit_is_refused(workdir):
    """A window of 64 MiB would let the agent have 64 MiB per stream in flight. Before: accepted."""
    with Attack(workdir, "--window", str(64 * MiB)) as attack:
        with pytest.raises(UnavailableError, match="window"):
            AgentClient.connect(attack.agent.endpoints[0], timeout=10).close()


def test_a_well_behaved_fake_agent_is_not_dropped(workdir):
    """The fake itself is a fair peer when it does not attack: the client keeps talking to it."""
    with Attack(workdir) as attack:
        with AgentClient.connect(attack.agent.endpoints[0], timeout=10) as client:
            made = client.create_exec("fair", "exec", ProcessSpec(args=["true"]))
            made.start()
            client.ping()
            assert client.failure is None
            assert made.state.value == "running"
