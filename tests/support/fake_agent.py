"""A hostile agent for host-side tests: a bare ROUTER that speaks just enough of the protocol to get
one exec started, then breaks a bound the host must enforce.

Run as ``python -m tests.support.fake_agent --listen ENDPOINT --attack ATTACK [...]``; like the
real agent it prints ``uvm-agent ready ENDPOINT`` once bound, so
:class:`tests.support.agent.AgentProcess` starts and stops it (``module="tests.support.fake_agent"``).
It runs in its own process so that what the client holds is measured apart from what the fake
sends.

Attacks, each carried out on the session's event connection right after it answers ``start``:

- ``none``: behave (answer requests; send nothing more).
- ``overrun``: send ``--bytes`` of stdout chunks (256 KiB each) for the started exec, ignoring
  the credit window and every acknowledgement.
- ``frames``: send one ``out`` message made of a header and ``--frames`` data frames of 4 MiB.
- ``big-chunk``: send one ``out`` message whose data frame is 1 MiB (over the 256 KiB chunk limit).
- ``big-event``: send ``--count`` events of 4 MiB each (a ``started`` event padded with junk).
- ``bad-reply``: answer every ``ping`` (on whichever connection it came) with the reply and
  ``--frames`` more frames of 4 MiB.

``--window`` is the credit window announced in ``hello``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import msgpack
import zmq

MiB = 1024 * 1024
CHUNK = 256 * 1024


class FakeAgent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.setsockopt(zmq.SNDHWM, 0)  # hold whatever the attack sends: the client must refuse it
        self.socket.bind(args.listen)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.events_route: bytes | None = None
        self.handle = 0

    def send(self, route: bytes, header: dict[str, Any], *data: bytes) -> None:
        try:
            self.socket.send_multipart([route, msgpack.packb(header), *data], copy=False)
        except zmq.ZMQError:
            pass  # the client went away: that is what it should do

    def answer(self, route: bytes, header: dict[str, Any]) -> None:
        op, request_id = header.get("op"), header["id"]
        if op == "hello":
            if header.get("events", True):
                self.events_route = route
            result: Any = {"version": 1, "boot_id": "fake", "agent": "fake-agent/0", "pid": os.getpid(),
                           "features": ["resync", "attach", "tty", "stdin"], "window": self.args.window,
                           "max_chunk": CHUNK}
        elif op == "create":
            self.handle = header["h"]
            result = {"h": self.handle}
        elif op == "start":
            result = {"pid": 4242}
        elif op == "resync":
            result = {"execs": [{"h": entry["h"], "known": True, "pid": 4242, "stdin_q": -1, "stdin_acked": -1}
                                for entry in header.get("execs", [])]}
        else:
            result = {}
        extra = [b"r" * (4 * MiB)] * self.args.frames if op == "ping" and self.args.attack == "bad-reply" else []
        self.send(route, {"id": request_id, "result": result}, *extra)
        if op == "start" and self.events_route is not None:
            self.send(self.events_route, {"ev": "started", "h": self.handle, "pid": 4242})
            self.attack(self.events_route)

    def attack(self, route: bytes) -> None:
        attack, handle = self.args.attack, self.handle
        if attack == "overrun":
            chunk = b"x" * CHUNK
            for seq in range(self.args.bytes // CHUNK):
                self.send(route, {"ev": "out", "h": handle, "s": 1, "q": seq}, chunk)
        elif attack == "frames":
            frame = b"f" * (4 * MiB)
            self.send(route, {"ev": "out", "h": handle, "s": 1, "q": 0}, *[frame] * self.args.frames)
        elif attack == "big-chunk":
            self.send(route, {"ev": "out", "h": handle, "s": 1, "q": 0}, b"c" * MiB)
        elif attack == "big-event":
            junk = "j" * (4 * MiB - 1024)
            for _ in range(self.args.count):
                self.send(route, {"ev": "started", "h": handle, "pid": 4242, "junk": junk})

    def serve(self) -> None:
        while True:
            frames = self.socket.recv_multipart()
            try:
                header = msgpack.unpackb(frames[1])
            except (ValueError, msgpack.UnpackException):
                continue
            if isinstance(header, dict) and "id" in header:
                self.answer(frames[0], header)


def main() -> int:
    parser = argparse.ArgumentParser(prog="fake_agent")
    parser.add_argument("--listen", action="append", required=True)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--attack", default="none",
                        choices=["none", "overrun", "frames", "big-chunk", "big-event", "bad-reply"])
    parser.add_argument("--window", type=int, default=4 * MiB)
    parser.add_argument("--bytes", type=int, default=64 * MiB)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--count", type=int, default=64)
    args = parser.parse_args()
    args.listen = args.listen[0]
    agent = FakeAgent(args)
    print(f"uvm-agent ready {agent.endpoint}", flush=True)
    agent.serve()  # until SIGTERM, which ends the process
    return 0


if __name__ == "__main__":
    sys.exit(main())
