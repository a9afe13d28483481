"""Every malformed input gets the protocol's ERROR code, is counted, and leaves other sockets and the store alone."""

import json
from pathlib import Path

import pytest
from relay_support import Agent, authenticated, connect, get_json, metrics, new_id, now_ms, pending_rows

from agentroomd.relay.server import RelayHandle
from ratchet.frames import Delivery, serialize_frame

UUID = "123e4567-e89b-12d3-a456-426614174000"


def _msg(**changes: object) -> str:
    alice, bob = Agent(), Agent()
    value = json.loads(serialize_frame(alice.msg(bob.pk)))
    value.update(changes)
    value["msg_id"] = UUID
    return json.dumps(value)


def _frame(kind: str, **fields: object) -> str:
    return json.dumps({"v": 2, "type": kind, "msg_id": UUID, "ts": now_ms(), **fields})


# (name, text or bytes, ERROR code, whether the ERROR names the frame)
CASES: list[tuple[str, str | bytes, str, bool]] = [
    ("not json", "hello?", "BAD_JSON", False),
    ("truncated json", '{"v":2,"type":"PING"', "BAD_JSON", False),
    ("invalid utf-8 bytes", b"\xff\xfe{}", "BAD_JSON", False),
    ("NaN literal", '{"v":2,"type":"PING","msg_id":"' + UUID + '","ts":NaN}', "BAD_JSON", False),
    ("deep nesting", "[" * 5000 + "]" * 5000, "BAD_JSON", False),
    ("array", "[]", "BAD_FRAME", False),
    ("string", '"PING"', "BAD_FRAME", False),
    ("null", "null", "BAD_FRAME", False),
    ("empty object", "{}", "BAD_FRAME", False),
    ("type not a string", json.dumps({"v": 2, "type": 7, "msg_id": UUID, "ts": 1}), "BAD_FRAME", True),
    ("unknown type", _frame("SUBSCRIBE"), "UNKNOWN_TYPE", True),
    ("bad version", json.dumps({"v": 3, "type": "PING", "msg_id": UUID, "ts": 1}), "BAD_FRAME", True),
    ("msg_id not a uuid", json.dumps({"v": 2, "type": "PING", "msg_id": "not-a-uuid", "ts": 1}), "BAD_FRAME", False),
    ("ts zero", json.dumps({"v": 2, "type": "PING", "msg_id": UUID, "ts": 0}), "BAD_FRAME", True),
    ("ts fractional", json.dumps({"v": 2, "type": "PING", "msg_id": UUID, "ts": 1.5}), "BAD_FRAME", True),
    ("seq negative", _msg(seq=-1), "BAD_FRAME", True),
    ("seq as string", _msg(seq="1"), "BAD_FRAME", True),
    (
        "missing ciphertext",
        json.dumps({k: v for k, v in json.loads(_msg()).items() if k != "ciphertext"}),
        "BAD_FRAME",
        True,
    ),
    ("empty ciphertext", _msg(ciphertext=""), "BAD_FRAME", True),
    ("null ratchet_pk", _msg(ratchet_pk=None), "BAD_FRAME", True),
    ("oversized key", _msg(to="A" * 513), "BAD_FRAME", True),
    ("oversized nonce", _msg(nonce="N" * 513), "BAD_FRAME", True),
    ("oversized ciphertext", _msg(ciphertext="C" * 196_609), "BAD_FRAME", True),
    (
        "oversized challenge",
        _frame("HELLO", ed25519_pk="k", x25519_pk="k", sig="s", challenge="c" * 257),
        "BAD_FRAME",
        True,
    ),
    ("client sends ACK", _frame("ACK", ref_msg_id=UUID, status="queued"), "UNKNOWN_TYPE", True),
    ("client sends ERROR", _frame("ERROR", code="X", message="y"), "UNKNOWN_TYPE", True),
    ("client sends HELLO_ACK", _frame("HELLO_ACK", session_token="t"), "UNKNOWN_TYPE", True),
    ("client sends DELIVERY", _frame("DELIVERY", routed=json.loads(_msg())), "UNKNOWN_TYPE", True),
]


@pytest.mark.parametrize(("name", "data", "code", "names_frame"), CASES, ids=[case[0] for case in CASES])
async def test_malformed_frame_gets_its_error(
    relay: RelayHandle, name: str, data: str | bytes, code: str, names_frame: bool
) -> None:
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _), authenticated(relay, bob) as (b, _):
        await a.send(data)
        error = await a.expect_error(code)
        assert error.ref_msg_id == (UUID if names_frame else None)
        assert len(error.message) <= 1024
        if code == "BAD_JSON":
            assert error.message == "invalid JSON"
        assert "CCCCCCCCCC" not in error.message and "AAAAAAAAAA" not in error.message  # input never echoed
        # the offender's socket still works, and so does everyone else's
        frame = alice.msg(bob.pk)
        await a.send(frame)
        await a.expect_ack(frame.msg_id, "delivered")
        assert isinstance(await b.recv(), Delivery)
    body = await metrics(relay)
    assert body["errors_total"] == {code: 1}
    health = await get_json(relay, "/health")
    assert (health["pending"], health["invites"], health["agents"]) == (0, 0, 2)
    assert pending_rows(Path(relay.app.config.db)) == []


async def test_malformed_frames_before_hello_too(relay: RelayHandle) -> None:
    async with connect(relay) as client:
        for data, code in (("nope", "BAD_JSON"), ("{}", "BAD_FRAME"), (_frame("WHAT"), "UNKNOWN_TYPE")):
            await client.send(data)
            await client.expect_error(code)
        await client.send(_frame("ACK", ref_msg_id=UUID, status="queued"))
        await client.expect_error("UNAUTH", UUID)  # valid frame, not authenticated: UNAUTH comes first
        await client.round_trip()
    assert (await metrics(relay))["errors_total"] == {"BAD_JSON": 1, "BAD_FRAME": 1, "UNKNOWN_TYPE": 1, "UNAUTH": 1}


async def test_unknown_delivery_ack_is_harmless(relay: RelayHandle) -> None:
    alice = Agent()
    async with authenticated(relay, alice, acks_deliveries=True) as (a, _):
        await a.send(_frame("DELIVERY_ACK", ref_msg_id=new_id()))
        await a.round_trip()
    assert (await metrics(relay))["errors_total"] == {}
