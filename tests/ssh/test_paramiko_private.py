"""The guard on the one piece of paramiko's private code the ssh:// transport relies on.

paramiko offers no fd or callback for "a channel's send window grew", so
``host_proxy.ssh_tunnel._watch_send_windows`` wraps the handler of
``MSG_CHANNEL_WINDOW_ADJUST`` in the transport's private
``_channel_handler_table`` (copied per transport). Without it the tunnel's
relay thread is not woken when it may send again. These tests fail loudly, and
say why, when a paramiko release changes what that wrapping assumes: that the
table exists as a dict keyed by message type, that its window-adjust entry is
called as ``handler(channel, message)``, and that the transport's reader looks
the handler up on the instance, so the wrapped one runs for real traffic.
pyproject.toml pins paramiko to the versions these tests passed on.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator

import paramiko
import pytest
from paramiko.common import MSG_CHANNEL_WINDOW_ADJUST

from host_proxy.ssh_tunnel import _watch_send_windows
from tests.support.sshd import SshServer

MiB = 1024 * 1024
DEADLINE = 20.0  # generous: a loaded CI machine, not an expected duration
CHANGED = "paramiko changed what host_proxy.ssh_tunnel._watch_send_windows patches: "


def test_the_channel_handler_table_has_the_shape_the_patch_wraps() -> None:
    table = getattr(paramiko.Transport, "_channel_handler_table", None)
    assert isinstance(table, dict), CHANGED + f"Transport._channel_handler_table is {table!r}, not a dict"
    assert MSG_CHANNEL_WINDOW_ADJUST in table, CHANGED + "no MSG_CHANNEL_WINDOW_ADJUST entry in it"
    handler = table[MSG_CHANNEL_WINDOW_ADJUST]
    assert handler is paramiko.Channel._window_adjust, CHANGED + f"its window-adjust entry is {handler!r}"
    parameters = list(inspect.signature(handler).parameters)
    assert parameters == ["self", "m"], CHANGED + f"the handler takes {parameters}, not (channel, message)"


@pytest.fixture
def transport(sshd: SshServer) -> Iterator[paramiko.Transport]:
    """A client transport to the real sshd, not yet started (the tunnel patches before the handshake)."""
    made = paramiko.Transport((sshd.host, sshd.port))
    try:
        yield made
    finally:
        made.close()
        made.join(DEADLINE)


def test_the_wrapped_window_adjust_handler_runs_and_still_grows_the_window(
    transport: paramiko.Transport, sshd: SshServer, echo_server
) -> None:
    """Push several send windows' worth through a channel: the send can only finish if the original
    handler still grows the window, and it can only be reached through the wrapper."""
    calls = 0

    def on_window_adjust() -> None:
        nonlocal calls
        calls += 1

    _watch_send_windows(transport, on_window_adjust)
    transport.start_client(timeout=DEADLINE)
    transport.auth_publickey(sshd.user, paramiko.Ed25519Key.from_private_key_file(str(sshd.key_path)))
    channel = transport.open_channel("direct-tcpip", ("127.0.0.1", echo_server.port), ("127.0.0.1", 0),
                                     timeout=DEADLINE)
    channel.settimeout(DEADLINE)
    initial_window = channel.out_window_size
    payload = b"w" * (3 * initial_window)  # can only all go if the window grows, more than once
    echoed = bytearray()

    def read_echo() -> None:
        while len(echoed) < len(payload):
            chunk = channel.recv(MiB)
            if not chunk:
                return
            echoed.extend(chunk)

    reader = threading.Thread(target=read_echo, name="echo-reader")
    reader.start()
    try:
        channel.sendall(payload)  # raises socket.timeout if the window never grows again
    finally:
        reader.join(DEADLINE)
    assert not reader.is_alive() and bytes(echoed) == payload
    # 3 windows' worth took at least two adjusts, handled one after the other on paramiko's thread:
    # the first one's wrapper had returned before the second was read.
    assert calls >= 1, CHANGED + "the window grew, but not through the wrapped handler"
    # The wrapping is this transport's own: the class's table, shared by every transport, is untouched.
    assert paramiko.Transport._channel_handler_table[MSG_CHANNEL_WINDOW_ADJUST] is paramiko.Channel._window_adjust
    channel.close()
