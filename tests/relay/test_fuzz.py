"""Fuzzing the WebSocket handler over a real socket: random and mutated frames never hurt the relay.

Each example starts a relay, authenticates a fuzzing client (or not), throws a sequence of frames at
it (valid frames of every type with fields dropped, retyped or added, random JSON, random text,
random bytes), then checks what a user would notice: the fuzzing socket is either still answering
or was closed with a protocol close code, the relay still reports healthy, two other agents still
exchange a message, and no handler failed (no INTERNAL error, no 1011 close).
"""

import json
from pathlib import Path
from typing import Any

import trio
import trio_websocket
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from relay_support import (
    Agent,
    authenticated,
    connect,
    fetch_challenge,
    get_json,
    make_config,
    metrics,
    new_id,
    start_relay,
)

from ratchet.frames import Delivery, HelloAck, serialize_frame

LEGAL_CLOSE_CODES = {1000, 1008, 1009}
JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def seed_frames(fuzzer: Agent, peer: Agent) -> list[dict[str, Any]]:
    """One valid frame of every client type, addressed so that it would be accepted."""
    challenge = "c" * 32
    texts = [
        serialize_frame(fuzzer.msg(peer.pk)),
        serialize_frame(fuzzer.hello(challenge)),
        serialize_frame(fuzzer.publish("123e4567-e89b-12d3-a456-426614174000", "blob", 2**40)),
        serialize_frame(fuzzer.claim("123e4567-e89b-12d3-a456-426614174000", peer.pk)),
        json.dumps({"v": 2, "type": "PING", "msg_id": "123e4567-e89b-12d3-a456-426614174000", "ts": 1}),
        json.dumps(
            {
                "v": 2,
                "type": "DELIVERY_ACK",
                "msg_id": "123e4567-e89b-12d3-a456-426614174000",
                "ts": 1,
                "ref_msg_id": "123e4567-e89b-12d3-a456-426614174001",
            }
        ),
    ]
    return [json.loads(text) for text in texts]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[dict[str, Any]]) -> str:
    frame = dict(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        action = draw(st.sampled_from(["drop", "retype", "add", "type"]))
        keys = sorted(frame)
        if action == "drop" and keys:
            frame.pop(draw(st.sampled_from(keys)))
        elif action == "retype" and keys:
            frame[draw(st.sampled_from(keys))] = draw(JSON_VALUE)
        elif action == "add":
            frame[draw(st.text(max_size=12))] = draw(JSON_VALUE)
        else:
            frame["type"] = draw(
                st.sampled_from(["MSG", "SESSION_INIT", "ACK", "DELIVERY", "ERROR", "PONG", "HELLO_ACK", "X"])
            )
    return json.dumps(frame, ensure_ascii=draw(st.booleans()))


def payloads(seeds: list[dict[str, Any]]) -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        mutated(seeds),
        JSON_VALUE.map(json.dumps),
        st.text(max_size=200),
        st.binary(max_size=200),
    )


FUZZER, PEER = Agent(), Agent()
SEEDS = seed_frames(FUZZER, PEER)


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(payloads(SEEDS), min_size=1, max_size=12), st.booleans())
async def test_random_frames_never_hurt_the_relay(
    nursery: trio.Nursery, tmp_path: Path, frames: list[str | bytes], authenticate_first: bool
) -> None:
    relay = await start_relay(nursery, make_config(tmp_path / new_id()))  # one database per example
    closed_with: int | None = None
    async with connect(relay) as fuzz:
        if authenticate_first:
            await fuzz.send(FUZZER.hello(await fetch_challenge(relay)))
            await fuzz.expect(HelloAck)
        try:
            for data in frames:
                await fuzz.send(data)
            await fuzz.round_trip()  # still answering: every frame was handled
        except trio_websocket.ConnectionClosed as closed:
            closed_with = closed.reason.code
    if closed_with is not None:
        assert closed_with in LEGAL_CLOSE_CODES

    health = await get_json(relay, "/health")
    assert health["ok"] is True and health["db"] == "ok"
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _), authenticated(relay, bob) as (b, _):
        frame = alice.msg(bob.pk)
        await a.send(frame)
        await a.expect_ack(frame.msg_id, "delivered")
        assert (await b.expect(Delivery)).routed == frame
    body = await metrics(relay)
    assert "INTERNAL" not in body["errors_total"]
    assert body["store_errors_total"] == 0
