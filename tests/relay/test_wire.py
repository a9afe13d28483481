"""The relay's fast wire texts are byte-identical to `serialize_frame` (which matches the reference)."""

import uuid

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from agentroomd.relay.wire import FastIds, ack_text, delivery_text, routed_text
from ratchet.frames import Ack, Delivery, KeyLayout, Msg, SessionAck, SessionInit, serialize_frame

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
