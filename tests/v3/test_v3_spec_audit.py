"""PROTOCOL.md §13 against `ratchet.v3`: the checks, limits and orders the text names that no other
test pinned (found by removing each check in turn: every test here fails without the check it names).

Each test quotes the section it holds the code to.
"""

import json
import struct

import attrs
import pytest
from v3_support import (
    ALICE,
    ALICE_PK,
    BOB,
    BOB_PK,
    MALLORY,
    RELAY_URL,
    START_MS,
    Line,
    SeededRandom,
    inner_of,
    resealed,
)

from ratchet.invite import EXPIRY_GRACE_MS, InviteMalformedError
from ratchet.keys import x25519
from ratchet.v3 import (
    InviteRegistry,
    close,
    decrypt,
    encrypt,
    finish_handshake,
    invite_url,
    issue_invite,
    parse_invite_url,
    respond,
    start_handshake,
)
from ratchet.v3.errors import (
    FrameTypeError,
    HandshakeRejected,
    MalformedFrameError,
    SessionClosedError,
    SkippedKeyExpiredError,
    StateFormatError,
    UnsupportedVersionError,
    WrongPeerError,
)
from ratchet.v3.handshake import LABEL_INVITEE_SIGNATURE, _prologue
from ratchet.v3.invite import INVITE_PREFIX_V3, LABEL_INVITE_SIGNATURE
from ratchet.v3.noise import SymmetricState
from ratchet.v3.session import MAX_RETIRED_RATCHET_KEYS, MAX_SKIPPED_KEYS, SKIPPED_KEY_TTL_MS, RatchetKeyPair
from ratchet.v3.state import session_from_json, session_to_json
from ratchet.v3.wire import FrameType, InitFrame, RoutedFields, b64u, open_routed, seal_routed

# ── §13.3.1 invites ─────────────────────────────────────────────────────────────────────────────


def _signed_invite(expires_at: int, server_url: bytes) -> str:
    fixed = struct.pack(
        ">BH16sQ32s32sH", 3, 0, bytes(16), expires_at, ALICE.ed25519_pk, ALICE.x25519_pk, len(server_url)
    )
    body = fixed + server_url + bytes(32)
    return INVITE_PREFIX_V3 + b64u(body + ALICE.sign(LABEL_INVITE_SIGNATURE + body))


def test_an_expiry_beyond_2_pow_53_minus_1_is_malformed_even_when_signed() -> None:
    """§13.3.1: expires_at is 1 .. 2^53 − 1 (a u64 field can say more)."""
    assert parse_invite_url(_signed_invite(2**53 - 1, b"wss://x"), START_MS).expires_at == 2**53 - 1
    with pytest.raises(InviteMalformedError, match="expires_at"):
        parse_invite_url(_signed_invite(2**53, b"wss://x"), START_MS)


def test_a_server_url_longer_than_2048_bytes_is_malformed_even_when_the_length_adds_up() -> None:
    """§13.3.1: a total length of exactly 93 + L + 96 *with* 0 < L <= 2048."""
    longest = b"wss://" + b"x" * (2048 - 6)
    assert parse_invite_url(_signed_invite(START_MS + 1, longest), START_MS).server_url == longest.decode()
    with pytest.raises(InviteMalformedError, match="wrong length"):
        parse_invite_url(_signed_invite(START_MS + 1, longest + b"x"), START_MS)


def test_the_invitee_refuses_its_own_invite_before_drawing_anything() -> None:
    """§13.3.1 / §13.6.2 step 1: an invite signed by our own identity is InviteMalformedError."""
    rng = SeededRandom("own-invite")
    invite = parse_invite_url(invite_url(ALICE, issue_invite(ALICE, RELAY_URL, START_MS, rng)), START_MS)
    draws = rng.draws
    with pytest.raises(InviteMalformedError, match="own identity"):
        start_handshake(ALICE, invite, START_MS, rng)
    assert rng.draws == draws


# ── §13.6.3 respond: reasons and their order ────────────────────────────────────────────────────


def _claim(seed: str, *, invite_features: int = 0, offered: int = 0) -> tuple[InviteRegistry, RoutedFields, object]:
    rng = SeededRandom(seed)
    issued = issue_invite(ALICE, RELAY_URL, START_MS, rng, features=invite_features)
    invite = parse_invite_url(invite_url(ALICE, issued), START_MS)
    started = start_handshake(BOB, invite, START_MS, rng, features=offered)
    return InviteRegistry().with_issued(issued), started.claim.as_session_init(ALICE_PK), started.pending


def _reason(registry: InviteRegistry, init: RoutedFields, now_ms: int = START_MS, **kwargs: str) -> str:
    with pytest.raises(HandshakeRejected) as caught:
        respond(registry, ALICE, init, now_ms, SeededRandom("respond"), **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_a_session_init_from_our_own_key_is_own_invite_before_any_other_check() -> None:
    """§13.6.3 step 1: ``from`` is not our own key (``own_invite``), checked first."""
    registry, init, _ = _claim("own-key")
    assert _reason(registry, attrs.evolve(init, from_pk=ALICE_PK)) == "own_invite"


def test_the_registry_checks_come_in_the_order_of_the_text_and_before_message_1_is_read() -> None:
    """§13.6.3 step 3 (unknown, redeemed, expired, wrong relay), all before step 4 (the Noise message)."""
    registry, init, _ = _claim("reason-order")
    invite_id = registry.issued[0].invite_id
    expires_at = registry.issued[0].expires_at
    inner = inner_of(init)
    broken = resealed(init, inner[:-1] + bytes([inner[-1] ^ 1]), BOB)  # message 1 no longer authenticates
    late = expires_at + EXPIRY_GRACE_MS + 1
    redeemed = registry.redeem(invite_id, BOB_PK, START_MS)

    assert _reason(InviteRegistry(), broken) == "unknown_invite"
    assert _reason(redeemed, broken, late) == "already_redeemed"
    assert _reason(registry, broken, late, relay_url="wss://other.example/ws") == "expired"
    assert _reason(registry, broken, relay_url="wss://other.example/ws") == "wrong_relay"
    assert _reason(registry, broken) == "bad_handshake"


def test_an_identity_signature_that_does_not_verify_is_bad_signature() -> None:
    """§13.6.3 step 5: message 1 opens (right keys, right secret, routed signature by Bob) but the
    identity signature inside is not Bob's over ``h``: refused, and the invite stays redeemable."""
    rng = SeededRandom("identity-signature")
    issued = issue_invite(ALICE, RELAY_URL, START_MS, rng)
    invite = parse_invite_url(invite_url(ALICE, issued), START_MS)
    registry = InviteRegistry().with_issued(issued)

    def message_1(signer: object) -> RoutedFields:
        sym = SymmetricState.initialize()
        sym.mix_hash(_prologue(invite.binding, BOB.ed25519_pk))
        sym.mix_hash(invite.inviter_x25519_pk)
        ephemeral = RatchetKeyPair.from_secret(rng.x25519_secret())
        sym.mix_hash(InitFrame(invite.invite_id, b"", b"", b"").header)
        sym.mix_hash(ephemeral.public)
        sym.mix_key(ephemeral.public)
        sym.mix_key(x25519(ephemeral.secret, invite.inviter_x25519_pk))
        encrypted_static = sym.encrypt_and_hash(BOB.x25519_pk)
        sym.mix_key(x25519(BOB.x25519_sk, invite.inviter_x25519_pk))
        sym.mix_key_and_hash(invite.secret)
        signature = signer.sign(LABEL_INVITEE_SIGNATURE + sym.h)  # type: ignore[attr-defined]
        payload = sym.encrypt_and_hash(b"\x00\x00" + signature)
        inner = InitFrame(invite.invite_id, ephemeral.public, encrypted_static, payload).pack()
        return seal_routed(BOB, FrameType.HANDSHAKE_INIT, ALICE_PK, inner, 0)

    assert _reason(registry, message_1(MALLORY)) == "bad_signature"
    assert respond(registry, ALICE, message_1(BOB), START_MS, rng).session.peer_pk == BOB_PK  # the construction


@pytest.mark.parametrize(
    ("invite_features", "invitee_offers", "inviter_offers", "agreed"),
    [(1, 1, 1, 1), (0, 1, 1, 0), (1, 0, 1, 0), (1, 1, 0, 0)],
)
def test_features_are_the_invites_and_both_offers(
    invite_features: int, invitee_offers: int, inviter_offers: int, agreed: int
) -> None:
    """§13.6.5: features = the invite's AND the invitee's offer AND the inviter's offer, on both sides."""
    registry, init, pending = _claim("features", invite_features=invite_features, offered=invitee_offers)
    accepted = respond(registry, ALICE, init, START_MS, SeededRandom("f"), features=inviter_offers)
    bob = finish_handshake(pending, BOB, accepted.frame, START_MS)  # type: ignore[arg-type]
    assert (accepted.session.features, bob.features) == (agreed, agreed)


# ── §13.4 open_routed: the order of the checks ──────────────────────────────────────────────────


def test_the_routed_checks_come_in_the_order_of_the_text() -> None:
    """§13.4: 1 from/to, ... 4 version and type, 5 nonce, 6 seq, 7 signature; first failure wins."""
    line = Line("routed-order")
    frame = line.send("alice", b"x")
    inner = inner_of(frame)
    bad_sig = b64u(bytes(64))
    cases: list[tuple[RoutedFields, type[Exception], str]] = [
        (attrs.evolve(frame, from_pk=BOB_PK, ciphertext="!"), WrongPeerError, "expected peer"),
        (attrs.evolve(frame, ratchet_pk=b64u(bytes(32)), ciphertext="!"), MalformedFrameError, "ratchet_pk"),
        (attrs.evolve(frame, ciphertext=b64u(b"\x02" + inner[1:]), sig=bad_sig), UnsupportedVersionError, "version"),
        (attrs.evolve(frame, type="SESSION_ACK", nonce="x", sig=bad_sig), FrameTypeError, "cannot arrive"),
        (attrs.evolve(frame, nonce=b64u(bytes(32)), seq=9, sig=bad_sig), MalformedFrameError, "nonce"),
        (attrs.evolve(frame, seq=frame.seq + 1, sig=bad_sig), MalformedFrameError, "seq"),
        (attrs.evolve(frame, sig=bad_sig), WrongPeerError, "signature"),
    ]
    for fields, error, words in cases:
        with pytest.raises(error, match=words):
            open_routed(fields, ALICE_PK, BOB_PK)


# ── §13.7.3 receiving, §13.7.2 sending ──────────────────────────────────────────────────────────


def test_after_the_peers_close_only_kept_keys_open_and_a_redelivery_is_session_closed() -> None:
    """§13.7.3 step 3 (after step 2, before step 4): once the peer closed, anything but a kept key is
    SessionClosedError, a redelivery of an accepted frame included (not DuplicateMessageError)."""
    line = Line("closed")
    late = line.send("alice", b"late")
    accepted = line.send("alice", b"accepted")
    line.deliver("bob", 1)  # `late` stays in flight: its key is kept
    sealed = close(line.sessions["alice"], ALICE, START_MS, line.rng)
    bob = decrypt(line.sessions["bob"], sealed.frame, START_MS).state
    assert bob.closed_by_peer
    # a peer that goes on sending after its CLOSE (it ignored its own closed flag)
    reopened = attrs.evolve(sealed.state, closed_by_us=False)
    after = encrypt(reopened, ALICE, b"after the close", START_MS, line.rng).frame
    for frame in (after, accepted, sealed.frame):
        with pytest.raises(SessionClosedError):
            decrypt(bob, frame, START_MS)
    assert decrypt(bob, late, START_MS).message.plaintext == b"late"


def test_a_kept_key_opens_until_exactly_24_h_and_not_a_millisecond_later() -> None:
    """§13.7.3 step 2: refused only when *older than* 24 h (SkippedKeyExpiredError)."""
    line = Line("ttl")
    late = line.send("alice", b"late")
    line.send("alice", b"first")
    line.deliver("bob", 1)
    bob = line.sessions["bob"]
    assert decrypt(bob, late, START_MS + SKIPPED_KEY_TTL_MS).message.plaintext == b"late"
    with pytest.raises(SkippedKeyExpiredError):
        decrypt(bob, late, START_MS + SKIPPED_KEY_TTL_MS + 1)


def test_sending_also_drops_expired_kept_keys() -> None:
    """§13.7.3: *every* new state drops kept keys older than 24 h, the one `encrypt` returns included."""
    line = Line("encrypt-prunes")
    line.send("alice", b"never delivered")
    line.send("alice", b"first")
    line.deliver("bob", 1)
    assert len(line.sessions["bob"].skipped) == 1
    sealed = encrypt(line.sessions["bob"], BOB, b"a day later", START_MS + SKIPPED_KEY_TTL_MS + 1, line.rng)
    assert sealed.state.skipped == ()
    assert b'skipped": []' in session_to_json(sealed.state)


# ── §13.8 saved state ───────────────────────────────────────────────────────────────────────────


def _session_document(seed: str) -> dict[str, object]:
    line = Line(seed)
    line.send("alice", b"x")
    line.deliver("bob")
    document: dict[str, object] = json.loads(session_to_json(line.sessions["bob"]))
    return document


def test_a_saved_session_with_more_than_2000_kept_keys_is_refused() -> None:
    """§13.8: more than 2000 kept keys is a StateFormatError."""
    document = _session_document("too-many-kept")
    entry = {"ratchet_pk": b64u(bytes(32)), "key": b64u(bytes(32)), "added_at": START_MS}
    document["skipped"] = [dict(entry, n=n) for n in range(MAX_SKIPPED_KEYS)]
    assert len(session_from_json(json.dumps(document).encode()).skipped) == MAX_SKIPPED_KEYS
    document["skipped"] = [dict(entry, n=n) for n in range(MAX_SKIPPED_KEYS + 1)]
    with pytest.raises(StateFormatError, match="skipped"):
        session_from_json(json.dumps(document).encode())


def test_a_saved_session_with_more_than_16_retired_ratchet_keys_is_refused() -> None:
    """§13.7 keeps the peer's last 16 earlier ratchet keys; a saved state holding more was not written by us."""
    document = _session_document("too-many-retired")
    document["retired_ratchet_pks"] = [b64u(bytes([n]) * 32) for n in range(MAX_RETIRED_RATCHET_KEYS)]
    assert len(session_from_json(json.dumps(document).encode()).retired_ratchet_pks) == MAX_RETIRED_RATCHET_KEYS
    document["retired_ratchet_pks"] = [b64u(bytes([n]) * 32) for n in range(MAX_RETIRED_RATCHET_KEYS + 1)]
    with pytest.raises(StateFormatError, match="retired"):
        session_from_json(json.dumps(document).encode())
