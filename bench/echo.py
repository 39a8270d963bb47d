"""The raw ping baseline's server: a pyzmq ROUTER that decodes each msgpack message and sends it back.

Run in its own process, as the agent is::

    python -m bench.echo --listen ipc:///dir/echo.sock
    python -m bench.echo --listen tcp://127.0.0.1:0 --curve-secret agent.key_secret
    python -m bench.echo --listen ipc:///dir/echo.sock --loop asyncio   # or lean

It prints ``echo ready ENDPOINT`` once bound. With ``--curve-secret`` the
socket is a CURVE server (every client key is admitted: no ZAP handler, which
only matters at the handshake, never per message).

The default (``--loop blocking``) is the least work any msgpack server does
per request: one blocking receive, one decode, one encode, one send — no
event loop, no validation. ``--loop asyncio`` serves through the agent's own
event-loop plumbing (:class:`common.zmqloop.LoopSocket` on an asyncio loop)
with the same decode and encode: what the agent's architecture costs before
any protocol logic.
``--loop lean`` is the leanest asyncio server (see :func:`serve_lean`): what
that plumbing could cost.
"""

from __future__ import annotations

import argparse
import asyncio

import msgpack
import zmq
import zmq.auth


def _bind(listen: str, curve_secret: str | None) -> zmq.Socket:
    socket: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    if curve_secret is not None:
        public, secret = zmq.auth.load_certificate(curve_secret)
        if secret is None:
            raise SystemExit(f"{curve_secret}: not a secret certificate")
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.bind(listen)
    print(f"echo ready {socket.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    return socket


def serve_blocking(socket: zmq.Socket) -> None:
    packb, unpackb = msgpack.packb, msgpack.unpackb
    while True:
        routing_id, header = socket.recv_multipart()
        socket.send_multipart([routing_id, packb(unpackb(header))])


def serve_loop(socket: zmq.Socket) -> None:
    """The same echo through :class:`common.zmqloop.LoopSocket`, as the agent receives and sends."""
    from common.zmqloop import LoopSocket

    loop = asyncio.new_event_loop()
    packb, unpackb = msgpack.packb, msgpack.unpackb
    listener: LoopSocket

    def on_message(frames: list[zmq.Frame]) -> None:
        listener.send([frames[0].bytes, packb(unpackb(frames[1].buffer))])

    listener = LoopSocket(loop, socket, on_message)
    loop.run_forever()


def serve_lean(socket: zmq.Socket) -> None:
    """An asyncio echo that drains the socket in one callback per wake-up, as lean as asyncio allows.

    Unlike :class:`common.zmqloop.LoopSocket` it does not schedule another
    check after each send (the drain loop looks at ``ZMQ_EVENTS`` again
    anyway) and tests plain ``int`` flags instead of pyzmq's enum flags.
    """
    loop = asyncio.new_event_loop()
    packb, unpackb = msgpack.packb, msgpack.unpackb
    events_option, pollin, noblock = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)

    def drain() -> None:
        while int(socket.getsockopt(events_option)) & pollin:
            routing_id, header = socket.recv_multipart(noblock)
            socket.send_multipart([routing_id, packb(unpackb(header))], noblock)

    loop.add_reader(int(socket.getsockopt(zmq.FD)), drain)
    loop.call_soon(drain)
    loop.run_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--curve-secret")
    parser.add_argument("--loop", choices=["blocking", "asyncio", "lean"], default="blocking")
    args = parser.parse_args()
    socket = _bind(args.listen, args.curve_secret)
    try:
        if args.loop == "blocking":
            serve_blocking(socket)
        elif args.loop == "lean":
            serve_lean(socket)
        else:
            serve_loop(socket)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
