"""v3 frames travel through a v2 relay untouched: every one is a valid v2 frame, survives the relay's
parse / re-serialise / forward path (which drops unknown fields), and is still accepted on arrival."""

import pytest
from v3_support import ALICE, ALICE_PK, BOB, RELAY_URL, START_MS, SeededRandom, handshake

from ratchet.frames import (
    Delivery,
    InviteClaim,
    InvitePublish,
    Msg,
    SessionAck,
    SessionInit,
    as_forwarded,
    make_delivery,
    parse_frame,
    routed_from_claim,
    serialize_frame,
)
from ratchet.signatures import verify_routed
from ratchet.v3 import (
    InviteRegistry,
    close,
    decrypt,
    encrypt,
    finish_handshake,
    invite_url,
    issue_invite,
    parse_invite_url,
    publish_fields,
    respond,
    start_handshake,
)
from ratchet.v3.errors import MessageTooLargeError
from ratchet.v3.session import MAX_PLAINTEXT
from ratchet.v3.transport import claim_frame, fields_from_routed, publish_frame, routed_frame
from ratchet.v3.wire import RoutedFields


def through_relay(fields: RoutedFields, rng: SeededRandom) -> RoutedFields:
    """Sender serialises; the relay parses, forwards as zod would, wraps in DELIVERY; the recipient parses."""
    sent = parse_frame(serialize_frame(routed_frame(fields, rng.uuid4(), START_MS)))
    assert isinstance(sent, Msg | SessionInit | SessionAck)
    delivery = make_delivery(rng, START_MS + 5, as_forwarded(sent))
    received = parse_frame(serialize_frame(delivery))
    assert isinstance(received, Delivery)
    return fields_from_routed(received.routed)


def test_a_whole_v3_conversation_passes_through_v2_frames_and_the_relay_path() -> None:
    rng = SeededRandom("transport")
    issued = issue_invite(ALICE, RELAY_URL, START_MS, rng)
    publish = parse_frame(serialize_frame(publish_frame(publish_fields(issued), rng.uuid4(), START_MS)))
    assert isinstance(publish, InvitePublish) and publish.blob and publish.invite_id == issued.invite_id

    started = start_handshake(BOB, parse_invite_url(invite_url(ALICE, issued), START_MS), START_MS, rng)
    claim = parse_frame(serialize_frame(claim_frame(started.claim, rng.uuid4(), START_MS)))
    assert isinstance(claim, InviteClaim)
    # What the relay checks before it turns the claim into SESSION_INIT for the inviter:
    assert verify_routed(claim.from_, ALICE_PK, 0, claim.nonce, claim.sig)
    session_init = parse_frame(serialize_frame(make_delivery(rng, START_MS, routed_from_claim(claim, ALICE_PK))))
    assert isinstance(session_init, Delivery)
    registry = InviteRegistry().with_issued(issued)
    accepted = respond(registry, ALICE, fields_from_routed(session_init.routed), START_MS, rng)
    bob = finish_handshake(started.pending, BOB, through_relay(accepted.frame, rng), START_MS)
    alice = accepted.session

    for text in (b"hello", b"", "ünïcödé ✓".encode(), bytes(range(256))):
        sealed = encrypt(alice, ALICE, text, START_MS, rng)
        alice = sealed.state
        opened = decrypt(bob, through_relay(sealed.frame, rng), START_MS)
        bob = opened.state
        assert opened.message.plaintext == text
        sealed = encrypt(bob, BOB, text[::-1], START_MS, rng)
        bob = sealed.state
        assert decrypt(alice, through_relay(sealed.frame, rng), START_MS).message.plaintext == text[::-1]
    sealed = close(alice, ALICE, START_MS, rng)
    assert decrypt(bob, through_relay(sealed.frame, rng), START_MS).message.kind == "close"


def test_the_largest_message_fits_the_relay_bound_and_one_byte_more_is_refused_clearly() -> None:
    rng = SeededRandom("transport-size")
    done = handshake("transport-size")
    sealed = encrypt(done.alice, ALICE, b"x" * MAX_PLAINTEXT, START_MS, rng)
    assert decrypt(done.bob, through_relay(sealed.frame, rng), START_MS).message.plaintext == b"x" * MAX_PLAINTEXT
    with pytest.raises(MessageTooLargeError, match="147358"):
        encrypt(done.alice, ALICE, b"x" * (MAX_PLAINTEXT + 1), START_MS, rng)
