"""Helpers for the relay tests: start a real relay, speak HTTP and the v2 protocol to it over real sockets.

Nothing here fakes the relay: `start_relay` runs `serve_relay` (hypercorn + trio + SQLite) on a
loopback port 0 inside the test's nursery, and `Client` is a trio-websocket connection that builds
frames with `ratchet` and signs them with real keys.
"""

from __future__ import annotations

import io
import json
import socket as stdlib_socket
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
import trio_websocket
import wsproto
import wsproto.events as ev

from agentroomd.log import Logger
from agentroomd.relay.config import RelayConfig, relay_config_from
from agentroomd.relay.server import RelayHandle, serve_relay
from ratchet.encoding import b64u_encode
from ratchet.frames import (
    Ack,
    Delivery,
    DeliveryAck,
    Error,
    Frame,
    Hello,
    HelloAck,
    InviteClaim,
    InvitePublish,
    Msg,
    Ping,
    parse_frame,
    serialize_frame,
)
from ratchet.keys import KeyPair
from ratchet.rand import SYSTEM_RANDOM
from ratchet.signatures import sign_hello, sign_routed

WAIT_S = 5.0
TEST_SECRET = "test-secret-" + "x" * 40
F = TypeVar("F", bound=Frame)


def make_config(tmp_path: Path, **overrides: Any) -> RelayConfig:
    """A relay config for tests: port 0, a file database in ``tmp_path``, no rate limits, no pings."""
    values: dict[str, Any] = {
        "port": 0,
        "db": str(tmp_path / "relay.db"),
        "rate_limit_disabled": True,
        "hmac_secret": TEST_SECRET,
        "ping_interval_s": None,
        "shutdown_grace_s": 2,
    }
    values.update(overrides)
    ping = values.pop("ping_interval_s")
    config = relay_config_from(values, {})
    return attrs.evolve(config, ping_interval_s=ping)


class LogCapture(io.StringIO):
    """The relay's NDJSON log lines, kept for assertions."""

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.getvalue().splitlines() if line.strip()]

    def events(self) -> list[str]:
        return [record["event"] for record in self.records()]


async def start_relay(nursery: trio.Nursery, config: RelayConfig, **kwargs: Any) -> RelayHandle:
    """Start a relay in ``nursery``; it stops (gracefully) when the nursery is cancelled."""
    handle: RelayHandle = await nursery.start(partial(serve_relay, config, **kwargs))
    return handle


@asynccontextmanager
async def running_relay(config: RelayConfig, **kwargs: Any) -> AsyncIterator[RelayHandle]:
    """A relay that runs for the block only (for restart tests)."""
    async with trio.open_nursery() as nursery:
        yield await start_relay(nursery, config, **kwargs)
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ HTTP


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_request(
    relay: RelayHandle | int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    upgrade: bool = False,
) -> HttpResponse:
    """One HTTP/1.1 request over a fresh TCP connection (Connection: close, or a WebSocket upgrade request)."""
    port = relay if isinstance(relay, int) else relay.port
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    if upgrade:
        lines += [
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ]
    else:
        lines.append("Connection: close")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with trio.fail_after(WAIT_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
            raw = b""
            while chunk := await stream.receive_some(65_536):
                raw += chunk
                if upgrade and b"\r\n\r\n" in raw:
                    break  # an accepted upgrade would stay open: the status line is all we want
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return HttpResponse(int(status_line.split()[1]), parsed, body)


async def get_json(relay: RelayHandle, path: str, **kwargs: Any) -> Any:
    response = await http_request(relay, path, **kwargs)
    return response.json()


async def metrics(relay: RelayHandle) -> dict[str, Any]:
    result: dict[str, Any] = await get_json(relay, "/metrics")
    return result


async def fetch_challenge(relay: RelayHandle, headers: dict[str, str] | None = None) -> str:
    response = await http_request(relay, "/auth/challenge", headers=headers)
    assert response.status == 200, response
    challenge: str = response.json()["challenge"]
    return challenge


def pending_rows(db: str | Path, to_pk: str | None = None) -> list[tuple[str, str]]:
    """(to_pk, envelope) of the queued rows, read straight from the SQLite file."""
    with sqlite3.connect(db) as conn:
        if to_pk is None:
            rows = conn.execute("SELECT to_pk, envelope FROM pending_messages ORDER BY ord").fetchall()
        else:
            rows = conn.execute(
                "SELECT to_pk, envelope FROM pending_messages WHERE to_pk = ? ORDER BY ord", (to_pk,)
            ).fetchall()
    return [(str(a), str(b)) for a, b in rows]


# ------------------------------------------------------------------ agents and frames


class Agent:
    """An identity with helpers to build signed frames."""

    def __init__(self, keys: KeyPair | None = None) -> None:
        self.keys = keys or KeyPair.generate()
        self.pk = b64u_encode(self.keys.ed25519_pk)
        self.x25519_pk = b64u_encode(self.keys.x25519_pk)
        self._seq = 0

    def hello(self, challenge: str, *, acks_deliveries: bool = False) -> Hello:
        return Hello(
            msg_id=new_id(),
            ts=now_ms(),
            ed25519_pk=self.pk,
            x25519_pk=self.x25519_pk,
            sig=sign_hello(self.keys, challenge),
            challenge=challenge,
            acks_deliveries=acks_deliveries,
        )

    def msg(self, to: str, body: str = "sealed", *, seq: int | None = None, from_: str | None = None) -> Msg:
        """A MSG frame; the ciphertext is opaque to the relay, so any base64url text stands in for it."""
        if seq is None:
            seq, self._seq = self._seq, self._seq + 1
        nonce = b64u_encode(SYSTEM_RANDOM.random_bytes(24))
        return Msg(
            msg_id=new_id(),
            ts=now_ms(),
            from_=from_ or self.pk,
            to=to,
            ciphertext=b64u_encode(body.encode()),
            nonce=nonce,
            sig=sign_routed(self.keys, to, seq, nonce),
            seq=seq,
            ratchet_pk=self.x25519_pk,
        )

    def publish(self, invite_id: str, blob: str, expires_at: int) -> InvitePublish:
        return InvitePublish(msg_id=new_id(), ts=now_ms(), invite_id=invite_id, blob=blob, expires_at=expires_at)

    def claim(self, invite_id: str, inviter_pk: str, *, sign_with: KeyPair | None = None) -> InviteClaim:
        payload = b64u_encode(json.dumps({"x25519_pk": self.x25519_pk, "nonce": "n"}).encode())
        return InviteClaim(
            msg_id=new_id(),
            ts=now_ms(),
            invite_id=invite_id,
            from_=self.pk,
            ciphertext=payload,
            nonce=payload,
            sig=sign_routed(sign_with or self.keys, inviter_pk, 0, payload),
        )


def new_id() -> str:
    return SYSTEM_RANDOM.uuid4()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ping() -> Ping:
    return Ping(msg_id=new_id(), ts=now_ms())


class Client:
    """One WebSocket to the relay, with frame-level send/receive helpers that never wait forever."""

    def __init__(self, ws: trio_websocket.WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, frame: Frame | str | bytes) -> None:
        if isinstance(frame, str | bytes):
            await self.ws.send_message(frame)
        else:
            await self.ws.send_message(serialize_frame(frame))

    async def recv_text(self) -> str:
        with trio.fail_after(WAIT_S):
            message = await self.ws.get_message()
        assert isinstance(message, str)
        return message

    async def recv(self) -> Frame:
        return parse_frame(await self.recv_text())

    async def expect(self, cls: type[F]) -> F:
        frame = await self.recv()
        assert isinstance(frame, cls), f"expected {cls.TYPE}, got {frame!r}"
        return frame

    async def expect_error(self, code: str, ref: str | None = None) -> Error:
        frame = await self.expect(Error)
        assert frame.code == code, frame
        if ref is not None:
            assert frame.ref_msg_id == ref, frame
        return frame

    async def expect_ack(self, ref: str, status: str = "delivered") -> Ack:
        frame = await self.expect(Ack)
        assert (frame.ref_msg_id, frame.status) == (ref, status), frame
        return frame

    async def expect_close(self) -> trio_websocket.CloseReason:
        """Read until the relay closes the socket; the close reason (frames before it are skipped)."""
        with trio.fail_after(WAIT_S):
            while True:
                try:
                    await self.ws.get_message()
                except trio_websocket.ConnectionClosed as closed:
                    reason: trio_websocket.CloseReason = closed.reason
                    return reason

    async def deliveries(self, count: int, *, ack: bool = False) -> list[Delivery]:
        """The next ``count`` DELIVERY frames (acknowledging each when ``ack``)."""
        found = []
        while len(found) < count:
            frame = await self.expect(Delivery)
            found.append(frame)
            if ack:
                await self.send(DeliveryAck(msg_id=new_id(), ts=now_ms(), ref_msg_id=frame.msg_id))
        return found

    async def round_trip(self) -> None:
        """PING/PONG: proves every earlier frame of ours was handled."""
        frame = ping()
        await self.send(frame)
        while True:
            reply = await self.recv()
            if reply.msg_id == frame.msg_id:
                return


@asynccontextmanager
async def connect(
    relay: RelayHandle,
    *,
    headers: list[tuple[str, str]] | None = None,
    path: str = "/ws",
    max_message_size: int = 2**20,
) -> AsyncIterator[Client]:
    url = f"ws://127.0.0.1:{relay.port}{path}"
    async with trio_websocket.open_websocket_url(
        url, extra_headers=headers, max_message_size=max_message_size, connect_timeout=WAIT_S
    ) as ws:
        try:
            yield Client(ws)
        finally:
            # trio-websocket 0.12.2 never closes its TCP stream after a close the *server* started
            # (`aclose` returns early once a close reason is set): close it here, or it leaks.
            await ws._stream.aclose()


@asynccontextmanager
async def authenticated(
    relay: RelayHandle, agent: Agent, *, acks_deliveries: bool = False
) -> AsyncIterator[tuple[Client, HelloAck]]:
    """A connection that has completed challenge + HELLO for ``agent``."""
    challenge = await fetch_challenge(relay)
    async with connect(relay) as client:
        await client.send(agent.hello(challenge, acks_deliveries=acks_deliveries))
        ack = await client.expect(HelloAck)
        yield client, ack


def quiet_log() -> tuple[Logger, LogCapture]:
    capture = LogCapture()
    return Logger("relay", level="debug", stream=capture), capture


class StalledClient:
    """A WebSocket client (raw wsproto over a socket with a tiny receive buffer) that reads only when told.

    trio-websocket keeps reading into its own queue; to make the relay see a slow recipient, this
    one stops reading entirely, so the relay's writes back up into the kernel and then its outbox.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self._texts: list[str] = []
        self._partial = ""
        self.pings_seen = 0

    async def _pump_events(self) -> None:
        data = await self.stream.receive_some(65_536)
        if not data:
            raise EOFError("relay closed the connection")
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, ev.TextMessage):
                self._partial += event.data
                if event.message_finished:
                    self._texts.append(self._partial)
                    self._partial = ""
            elif isinstance(event, ev.Ping):
                self.pings_seen += 1
                await self.stream.send_all(self.ws.send(event.response()))

    async def wait_for_ping(self) -> None:
        """Read (and answer) until the relay has sent a WebSocket protocol ping."""
        with trio.fail_after(WAIT_S):
            while not self.pings_seen:
                await self._pump_events()

    async def send(self, frame: Frame) -> None:
        await self.stream.send_all(self.ws.send(ev.Message(data=serialize_frame(frame))))

    async def recv(self) -> Frame:
        with trio.fail_after(WAIT_S):
            while not self._texts:
                await self._pump_events()
        return parse_frame(self._texts.pop(0))

    async def expect(self, cls: type[F]) -> F:
        frame = await self.recv()
        assert isinstance(frame, cls), f"expected {cls.TYPE}, got {frame!r}"
        return frame


@asynccontextmanager
async def stalled_client(relay: RelayHandle, agent: Agent) -> AsyncIterator[StalledClient]:
    """An authenticated `StalledClient` for ``agent`` (HELLO done, HELLO_ACK read)."""
    challenge = await fetch_challenge(relay)
    sock = trio.socket.socket()
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_RCVBUF, 4096)
    with trio.fail_after(WAIT_S):
        await sock.connect(("127.0.0.1", relay.port))
    stream = trio.SocketStream(sock)
    async with stream:
        client = StalledClient(stream)
        await stream.send_all(client.ws.send(ev.Request(host=f"127.0.0.1:{relay.port}", target="/ws")))
        with trio.fail_after(WAIT_S):
            while client.ws.state.name != "OPEN":
                data = await stream.receive_some(65_536)
                client.ws.receive_data(data)
                for event in client.ws.events():
                    if isinstance(event, ev.Ping):  # hypercorn pings right after accepting: may share the read
                        client.pings_seen += 1
                        await stream.send_all(client.ws.send(event.response()))
                    else:
                        assert isinstance(event, ev.AcceptConnection), event
        await client.send(agent.hello(challenge))
        await client.expect(HelloAck)
        yield client
