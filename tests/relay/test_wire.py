"""The relay's fast wire texts are byte-identical to `serialize_frame` (which matches the reference)."""

import json
import uuid
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from agentroomd.relay.wire import FastIds, ack_text, delivery_text, parse_client_frame, routed_text
from ratchet.frames import (
    Ack,
    Delivery,
    DeliveryAck,
    FrameError,
    KeyLayout,
    Msg,
    SessionAck,
    SessionInit,
    parse_frame,
    serialize_frame,
)

UUIDS = st.uuids(version=4).map(str)
# Any text the schema allows in a base64 field: mostly base64url, sometimes quotes, controls, non-ASCII, surrogates.
FIELD = st.one_of(
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=64),
    st.text(min_size=1, max_size=24),
    st.text(st.characters(codec="ascii"), min_size=1, max_size=24),
)
SAFE_INT = st.integers(min_value=1, max_value=2**53 - 1)


@st.composite
def routed_frames(draw: st.DrawFn) -> Msg | SessionInit | SessionAck:
    cls = draw(st.sampled_from([Msg, SessionInit, SessionAck]))
    return cls(
        v=draw(st.sampled_from([1, 2])),
        msg_id=draw(UUIDS),
        ts=draw(SAFE_INT),
        from_=draw(FIELD),
        to=draw(FIELD),
        ciphertext=draw(FIELD),
        nonce=draw(FIELD),
        sig=draw(FIELD),
        seq=draw(st.integers(min_value=0, max_value=2**53 - 1)),
        ratchet_pk=draw(st.none() | FIELD),
        key_layout=draw(st.sampled_from(list(KeyLayout))),
    )


@settings(max_examples=300, deadline=None)
@given(routed_frames(), UUIDS, SAFE_INT)
def test_routed_and_delivery_texts_match_serialize_frame(frame: Msg, delivery_id: str, ts: int) -> None:
    envelope = routed_text(frame)
    assert envelope == serialize_frame(frame)
    for layout in KeyLayout:
        assert routed_text(frame, layout) == serialize_frame(attrs.evolve(frame, key_layout=layout))
    assert delivery_text(delivery_id, ts, envelope) == serialize_frame(
        Delivery(msg_id=delivery_id, ts=ts, routed=frame)
    )


@settings(max_examples=100, deadline=None)
@given(UUIDS, SAFE_INT, UUIDS, st.sampled_from(["delivered", "queued", "error"]))
def test_ack_text_matches_serialize_frame(msg_id: str, ts: int, ref: str, status: str) -> None:
    expected = serialize_frame(Ack(msg_id=msg_id, ts=ts, ref_msg_id=ref, status=status))  # type: ignore[arg-type]
    assert ack_text(msg_id, ts, ref, status) == expected


def test_fast_ids_are_random_version_4_uuids() -> None:
    ids = FastIds()
    drawn = [ids.uuid4() for _ in range(1000)]  # more than one 4 KiB pool
    assert len(set(drawn)) == 1000
    for text in drawn:
        value = uuid.UUID(text)
        assert str(value) == text and value.version == 4 and value.variant == uuid.RFC_4122


# ---------------------------------------------------------------------- parse_client_frame == parse_frame


def _outcome(parse: Any, data: str | bytes) -> tuple[object, ...]:
    """Everything a caller can see of a parse: the frame (type, fields, layout) or the error (all of it)."""
    try:
        frame = parse(data)
    except FrameError as exc:
        return ("error", exc.code, str(exc), exc.msg_id, exc.frame_type, exc.issues)
    return ("frame", type(frame), frame, frame.key_layout)


def _assert_same_verdict(data: str | bytes) -> None:
    assert _outcome(parse_client_frame, data) == _outcome(parse_frame, data)


@st.composite
def delivery_acks(draw: st.DrawFn) -> DeliveryAck:
    return DeliveryAck(
        v=draw(st.sampled_from([1, 2])),
        msg_id=draw(UUIDS),
        ts=draw(SAFE_INT),
        ref_msg_id=draw(UUIDS),
        key_layout=draw(st.sampled_from(list(KeyLayout))),
    )


@settings(max_examples=300, deadline=None)
@given(routed_frames() | delivery_acks())
def test_the_fast_parser_reads_valid_frames_as_parse_frame_does(frame: Msg | DeliveryAck) -> None:
    text = serialize_frame(frame)
    _assert_same_verdict(text)
    assert parse_client_frame(text) == frame


JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.sampled_from([0, 1, 2, 3, 2**53 - 1, 2**53, -1, 10**500]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1.0, 2.0, 1e3, 0.5]),
    st.text(max_size=8),
    st.sampled_from(["", "x" * 513, "\u00e9", "\ud800", "not-a-uuid", "123e4567-e89b-12d3-a456-426614174000"]),
)
JSON_VALUE = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
KEYS = ["v", "type", "msg_id", "ts", "from", "to", "ciphertext", "nonce", "sig", "seq", "ratchet_pk", "ref_msg_id"]


@st.composite
def damaged_texts(draw: st.DrawFn) -> str:
    """A valid MSG / SESSION_* / DELIVERY_ACK with keys dropped, added, retyped or given odd values."""
    frame = draw(routed_frames() | delivery_acks())
    value: dict[str, Any] = json.loads(serialize_frame(frame))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["drop", "set", "set", "type", "unknown"]))
        if action == "drop" and value:
            value.pop(draw(st.sampled_from(sorted(value))))
        elif action == "set":
            value[draw(st.sampled_from(KEYS))] = draw(JSON_VALUE)
        elif action == "type":
            value["type"] = draw(st.sampled_from(["MSG", "SESSION_INIT", "SESSION_ACK", "DELIVERY_ACK", "PING", "msg"]))
        else:
            value[draw(st.text(min_size=1, max_size=6))] = draw(JSON_VALUE)
    text = json.dumps(value, ensure_ascii=draw(st.booleans()), separators=(",", ":"))
    trick = draw(st.sampled_from(["none", "none", "duplicate", "nan", "truncate", "control"]))
    if trick == "duplicate" and len(text) > 2:  # a key twice: the first position keeps the last value
        text = text[:-1] + ',"to":' + json.dumps(draw(JSON_SCALAR)) + "}"
    elif trick == "nan":
        text = text[:-1] + ',"x":NaN}'
    elif trick == "truncate":
        text = text[: draw(st.integers(min_value=0, max_value=len(text)))]
    elif trick == "control":
        text = text.replace('"type"', '"ty\tpe"', 1).replace('"nonce":"', '"nonce":"\n', 1)
    return text


@settings(max_examples=1500, deadline=None)
@given(damaged_texts())
def test_the_fast_parser_refuses_and_accepts_exactly_what_parse_frame_does(text: str) -> None:
    _assert_same_verdict(text)
    _assert_same_verdict(text.encode("utf-8", "surrogatepass"))


def test_the_fast_parser_leaves_odd_but_valid_frames_to_parse_frame() -> None:
    frame = Msg(msg_id=str(uuid.uuid4()), ts=5, from_="a", to="b", ciphertext="c", nonce="n", sig="s", seq=0)
    text = serialize_frame(frame)
    for odd in (
        text.replace('"ts":5', '"ts":5.0'),  # an integral float is an integer, as in JavaScript
        text.replace('"ts":5', '"ts":5e0'),
        text.replace('"seq":0', '"seq":0,"extra":[1,{"a":null}]'),  # unknown keys are dropped
        text.replace('"to":"b"', '"to":"\\u00e9"'),  # an escape that makes a non-ASCII value
        text.replace('"v":2', '"v":2,"v":1'),  # duplicate key
        text.replace('"ts":5', '"ts":' + "9" * 450),  # an integer literal beyond a double's digits
    ):
        _assert_same_verdict(odd)
