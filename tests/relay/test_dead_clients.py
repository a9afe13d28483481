"""A client that dies without a goodbye must not leave its socket open on the relay.

Production relays run with WebSocket keepalive pings on. hypercorn 0.18 keeps a connection's TCP
socket (in CLOSE-WAIT) until its ping task next wakes, up to `ping_interval_s` after the peer died,
so under a reconnect storm file descriptors pile up. The relay must close the socket as soon as the
connection's application code is done, whatever the ping interval.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import sys
from pathlib import Path

import trio
from relay_support import WAIT_S, Agent, authenticated, make_config, start_relay

from agentroomd.relay.server import RelayHandle

LONG_PING_S = 30.0  # far longer than the test may take: closing must not wait for the next ping

# A child that opens a WebSocket to the relay, says so on stdout, then waits to be killed.
CHILD = """
import socket, sys
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.sendall(b"GET /ws HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n"
             b"Sec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n")
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += sock.recv(4096)
assert head.startswith(b"HTTP/1.1 101"), head
print("open", flush=True)
sys.stdin.read()
"""


def open_sockets() -> int:
    """Sockets in this process's descriptor table (the relay's and the test's own; pipes do not count)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except FileNotFoundError:  # closed while we looked
            continue
    return count


async def sockets_back_to(baseline: int) -> None:
    """Poll this process's descriptor table until it is back to ``baseline`` (no event exists for that)."""
    with trio.fail_after(WAIT_S):
        while open_sockets() > baseline:  # noqa: ASYNC110 (the kernel's table has no event to await)
            await trio.sleep(0.01)


async def settled_sockets(relay: RelayHandle) -> int:
    """The descriptor count once the relay is idle (a warm-up connection came and went)."""
    async with authenticated(relay, Agent()) as (client, _):
        await client.round_trip()
    await trio.testing.wait_all_tasks_blocked()
    return open_sockets()


async def test_a_sigkilled_client_frees_its_socket_at_once(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, ping_interval_s=LONG_PING_S))
    baseline = await settled_sockets(relay)
    for _ in range(5):  # a small reconnect storm: every killed client's socket must go
        child = await trio.lowlevel.open_process([sys.executable, "-c", CHILD, str(relay.port)], stdout=-1)
        assert child.stdout is not None
        async with child.stdout:
            with trio.fail_after(WAIT_S):
                assert (await child.stdout.receive_some(16)).startswith(b"open")
            assert open_sockets() == baseline + 1  # the relay's side of the child's socket
            child.send_signal(signal.SIGKILL)
            with trio.fail_after(WAIT_S):
                await child.wait()
        await sockets_back_to(baseline)


async def test_an_aborted_authenticated_client_frees_its_socket_at_once(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, ping_interval_s=LONG_PING_S))
    baseline = await settled_sockets(relay)
    async with authenticated(relay, Agent()) as (client, _):
        await client.round_trip()
        # An abortive close (RST), as when the client's host drops the connection.
        sock = client.ws._stream.socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    await sockets_back_to(baseline)
    with trio.fail_after(WAIT_S):  # and the relay still serves
        async with authenticated(relay, Agent()) as (again, _):
            await again.round_trip()
