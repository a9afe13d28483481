"""Fuzzing the frame parser: whatever arrives, the relay gets a Frame or a FrameError, never a crash.

And whatever frame comes out survives the trip back to the wire: it re-serialises, re-parses to
itself (key layout included) and re-serialises to the same text, also through UTF-8 bytes.
"""

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ratchet.frames import (
    FRAME_TYPES,
    Ack,
    Delivery,
    DeliveryAck,
    Error,
    Frame,
    FrameError,
    Hello,
    HelloAck,
    InviteClaim,
    InvitePublish,
    KeyLayout,
    Msg,
    Ping,
    Pong,
    SessionAck,
    SessionInit,
    as_forwarded,
    parse_frame,
    serialize_frame,
)
from ratchet.jsjson import js_stringify

FUZZ = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def seeds(vectors_dir: Path) -> list[dict[str, Any]]:
    """Valid frames to mutate: every parsed example of the reference, plus our extension frames."""
    data = json.loads((vectors_dir / "frames.json").read_text("utf-8"))
    seeds = [json.loads(case["raw_text"]) for case in data["examples"]]
    uuid = "123e4567-e89b-12d3-a456-426614174000"
    seeds += [
        {"v": 2, "type": "DELIVERY_ACK", "msg_id": uuid, "ts": 1, "ref_msg_id": uuid},
        {"v": 2, "type": "ERROR", "msg_id": uuid, "ts": 1, "code": "X", "message": "m", "ref_msg_id": uuid},
        {"v": 2, "type": "HELLO_ACK", "msg_id": uuid, "ts": 1, "session_token": "t", "acks_deliveries": True},
    ]
    return seeds


def assert_parses_to_frame_or_frame_error(data: str | bytes) -> Frame | None:
    """The property: only FrameError or a valid Frame, and a valid Frame is a fixed point of the round trip."""
    try:
        frame = parse_frame(data)
    except FrameError as error:
        assert error.code in ("BAD_JSON", "BAD_FRAME", "UNKNOWN_TYPE")
        assert 0 < len(str(error)) <= 1024
        return None
    assert frame.TYPE in FRAME_TYPES
    text = serialize_frame(frame)
    again = parse_frame(text)
    assert again == frame
    assert again.key_layout is frame.key_layout
    assert serialize_frame(again) == text
    assert parse_frame(text.encode("utf-8")) == frame
    forwarded = as_forwarded(frame)
    assert parse_frame(serialize_frame(forwarded)) == frame
    return frame


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(FRAME_TYPES)
    | st.sampled_from(["123e4567-e89b-12d3-a456-426614174000", "MSG", "delivered", "", "a", 1, 2, 0, -1, 1.5])
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    assert_parses_to_frame_or_frame_error(data)


@FUZZ
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    assert_parses_to_frame_or_frame_error(text)


@FUZZ
@given(json_values)
def test_random_json_values(value: object) -> None:
    assert_parses_to_frame_or_frame_error(json.dumps(value))


@FUZZ
@given(
    st.sampled_from(FRAME_TYPES),
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "msg_id",
                "ts",
                "from",
                "to",
                "ciphertext",
                "nonce",
                "sig",
                "seq",
                "ratchet_pk",
                "routed",
                "ref_msg_id",
                "status",
                "error",
                "code",
                "message",
                "session_token",
                "challenge",
                "ed25519_pk",
                "x25519_pk",
                "invite_id",
                "blob",
                "expires_at",
                "acks_deliveries",
            ]
        ),
        json_values,
        max_size=12,
    ),
)
def test_random_objects_with_a_known_type(frame_type: str, fields: dict[str, object]) -> None:
    assert_parses_to_frame_or_frame_error(json.dumps({"type": frame_type, **fields}))


def mutate(frame: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    """Delete, replace or add a few keys, at the top level or inside DELIVERY.routed."""
    mutated = dict(frame)
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        target = mutated
        if "routed" in mutated and isinstance(mutated["routed"], dict) and data.draw(st.booleans()):
            target = mutated["routed"] = dict(mutated["routed"])
        action = data.draw(st.sampled_from(["delete", "replace", "add", "retype"]))
        keys = list(target)
        if action == "delete" and keys:
            del target[data.draw(st.sampled_from(keys))]
        elif action == "replace" and keys:
            target[data.draw(st.sampled_from(keys))] = data.draw(json_values)
        elif action == "retype":
            target["type"] = data.draw(st.sampled_from(FRAME_TYPES))
        else:
            target[data.draw(st.text(max_size=8))] = data.draw(json_values)
    return mutated


@FUZZ
@given(st.data())
def test_mutated_valid_frames(seeds: list[dict[str, Any]], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(seeds))
    assert_parses_to_frame_or_frame_error(js_stringify(mutate(seed, data)))


@FUZZ
@given(st.data())
def test_byte_flipped_valid_frames(seeds: list[dict[str, Any]], data: st.DataObject) -> None:
    seed = data.draw(st.sampled_from(seeds))
    raw = bytearray(js_stringify(seed).encode("utf-8"))
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        action = data.draw(st.sampled_from(["flip", "delete", "insert"]))
        if action == "flip":
            raw[position] = data.draw(st.integers(min_value=0, max_value=255))
        elif action == "delete" and len(raw) > 1:
            del raw[position]
        else:
            raw.insert(position, data.draw(st.integers(min_value=0, max_value=255)))
    assert_parses_to_frame_or_frame_error(bytes(raw))


# Valid frames generated from scratch: any Unicode in the strings, lone surrogates included.

uuids = (
    st.uuids(version=4).map(str)
    | st.uuids(version=1).map(str)
    | st.sampled_from(
        [
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "123E4567-E89B-12D3-A456-426614174000",
        ]
    )
)
# Any code point, lone surrogates included (JSON carries them as \\udXXX escapes). A high surrogate
# directly followed by a low one is left out: JavaScript (and so js_stringify) reads that as one
# astral character, and no parsed frame ever holds such a split pair.
_SPLIT_PAIR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
any_char = st.characters(codec=None, exclude_categories=())


def texts(min_size: int = 0, max_size: int = 40) -> st.SearchStrategy[str]:
    return st.text(any_char, min_size=min_size, max_size=max_size).filter(lambda t: _SPLIT_PAIR.search(t) is None)


keys = texts(min_size=1)
positive = st.integers(min_value=1, max_value=2**53 - 1)
envelope: dict[str, Any] = {"v": st.sampled_from([1, 2]), "msg_id": uuids, "ts": positive,
                            "key_layout": st.sampled_from(KeyLayout)}  # fmt: skip
routed_fields: dict[str, Any] = {
    **envelope,
    "from_": keys,
    "to": keys,
    "ciphertext": keys,
    "nonce": keys,
    "sig": keys,
    "seq": st.integers(min_value=0, max_value=2**53 - 1),
    "ratchet_pk": st.none() | keys,
}
routed_frames = st.one_of(*(st.builds(cls, **routed_fields) for cls in (Msg, SessionInit, SessionAck)))
frames = st.one_of(
    st.builds(
        Hello, **envelope, ed25519_pk=keys, x25519_pk=keys, sig=keys, challenge=keys, acks_deliveries=st.booleans()
    ),
    st.builds(HelloAck, **envelope, session_token=keys, acks_deliveries=st.booleans()),
    st.builds(InvitePublish, **envelope, invite_id=uuids, blob=keys, expires_at=positive),
    st.builds(InviteClaim, **envelope, invite_id=uuids, from_=keys, ciphertext=keys, nonce=keys, sig=keys),
    routed_frames,
    st.builds(
        Ack,
        **envelope,
        ref_msg_id=uuids,
        status=st.sampled_from(["delivered", "queued", "error"]),
        error=st.none() | texts(),
    ),
    st.builds(Delivery, **envelope, routed=routed_frames),
    st.builds(Error, **envelope, code=texts(max_size=32), message=texts(), ref_msg_id=st.none() | uuids),
    st.builds(Ping, **envelope),
    st.builds(Pong, **envelope),
    st.builds(DeliveryAck, **envelope, ref_msg_id=uuids),
)


@FUZZ
@given(frames)
def test_generated_frames_round_trip(frame: Frame) -> None:
    text = serialize_frame(frame)
    text.encode("utf-8")  # always sendable: lone surrogates are written as \\udXXX escapes
    assert assert_parses_to_frame_or_frame_error(text) == frame
    assert parse_frame(text).key_layout is frame.key_layout
