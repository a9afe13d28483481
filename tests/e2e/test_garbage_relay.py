"""A "relay" that answers garbage: the client says what is wrong, keeps retrying, and never crashes.

The garbage relay is a small ASGI app on hypercorn (the stack our relay uses); it stands for a
misconfigured URL or a hostile server, not for our relay, whose behaviour is tested for real elsewhere.
"""

import json
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from test_client_sessions import start_agent

from agentroomd.client.manager import ClientError

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class GarbageRelay:
    """Serves a configurable challenge body, and on /ws a configurable script of text frames."""

    def __init__(self, challenge_body: bytes, frames: list[str]) -> None:
        self.challenge_body = challenge_body
        self.frames = frames
        self.pongs = trio.Event()
        self.hellos = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": self.challenge_body})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            frame = json.loads(message.get("text") or "{}")
            if frame.get("type") == "HELLO":
                self.hellos += 1
                for text in self.frames:
                    await send({"type": "websocket.send", "text": text})
            elif frame.get("type") == "PONG":
                self.pongs.set()


async def serve_garbage(nursery: trio.Nursery, app: GarbageRelay) -> str:
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    binds = await nursery.start(partial(serve, app, config))  # type: ignore[arg-type]
    return "ws://" + binds[0].split("://", 1)[1] + "/ws"


async def test_a_malformed_challenge_is_reported_and_retried(tmp_path: Path, nursery: trio.Nursery) -> None:
    app = GarbageRelay(b'{"challenge": 12345}', [])
    url = await serve_garbage(nursery, app)
    agent = await start_agent(nursery, tmp_path / "a", "a")
    with pytest.raises(ClientError) as info:
        await agent.manager.wait_connected(url, 1.0)
    assert info.value.kind == "relay_unreachable"
    assert "malformed challenge" in str(info.value)
    assert app.hellos == 0


async def test_garbage_frames_are_skipped_and_the_connection_keeps_working(tmp_path: Path,
                                                                         nursery: trio.Nursery) -> None:
    ping = {"v": 2, "type": "PING", "msg_id": "123e4567-e89b-42d3-a456-426614174000", "ts": 1}
    hello_ack = {"v": 2, "type": "HELLO_ACK", "msg_id": "123e4567-e89b-42d3-a456-426614174001", "ts": 1,
                 "session_token": "t"}
    bad_delivery = {"v": 2, "type": "DELIVERY", "msg_id": "123e4567-e89b-42d3-a456-426614174002", "ts": 1,
                    "routed": {"type": "MSG", "from": "x"}}
    lone_surrogate = '{"v":2,"type":"PING","msg_id":"\\ud800","ts":1}'
    frames = ["not json at all", "[1,2,3]", '{"type":"NOPE"}', lone_surrogate, json.dumps(hello_ack),
              json.dumps(bad_delivery), "{" * 5000, json.dumps(ping)]
    app = GarbageRelay(b'{"challenge": "abcdefghijklmnopqrstuvwxyz012345"}', frames)
    url = await serve_garbage(nursery, app)
    agent = await start_agent(nursery, tmp_path / "a", "a")
    conn = await agent.manager.wait_connected(url, 5.0)
    with trio.fail_after(5):
        await app.pongs.wait()  # the client skipped every bad frame and still answered the PING
    assert conn.is_connected
