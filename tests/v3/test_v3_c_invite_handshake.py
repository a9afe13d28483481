"""crypto-anchors §6 group C (invite and handshake), against the v3 core."""

import struct
from collections.abc import Callable

import attrs
import pytest
from v3_support import (
    ALICE,
    ALICE_PK,
    BOB,
    BOB_PK,
    LOW_ORDER_POINTS,
    MALLORY,
    MALLORY_PK,
    RELAY_URL,
    START_MS,
    SeededRandom,
    flip_bit,
    forged_header,
    inner_of,
    resealed,
)

from ratchet.handshake import HandshakeError, handle_session_init
from ratchet.invite import (
    EXPIRY_GRACE_MS,
    InviteError,
    InviteExpiredError,
    InviteMalformedError,
    InviteSignatureError,
)
from ratchet.invite import (
    parse_invite_url as parse_v2_invite_url,
)
from ratchet.keys import KeyPair, x25519
from ratchet.v3 import (
    Invite,
    InviteRegistry,
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
    AuthenticationError,
    HandshakeRejected,
    SessionMismatchError,
    UnsupportedVersionError,
    WeakRatchetKeyError,
)
from ratchet.v3.handshake import LABEL_INVITEE_SIGNATURE, _prologue
from ratchet.v3.invite import INVITE_PREFIX_V3, LABEL_INVITE_SIGNATURE
from ratchet.v3.noise import SymmetricState
from ratchet.v3.wire import FrameType, InitFrame, RoutedFields, b64u, b64u_strict, seal_routed

ED25519_L = 2**252 + 27742317777372353535851937790883648493


@attrs.define
class Setup:
    rng: SeededRandom
    registry: InviteRegistry
    invite: Invite
    url: str


def issued(seed: str, now_ms: int = START_MS, inviter: KeyPair = ALICE) -> Setup:
    rng = SeededRandom(seed)
    invite = issue_invite(inviter, RELAY_URL, now_ms, rng)
    url = invite_url(inviter, invite)
    return Setup(rng, InviteRegistry().with_issued(invite), parse_invite_url(url, now_ms), url)


def claim_from(setup: Setup, invitee: KeyPair = BOB, invite: Invite | None = None) -> RoutedFields:
    started = start_handshake(invitee, invite or setup.invite, START_MS, setup.rng)
    return started.claim.as_session_init(ALICE_PK)


def rejected(setup: Setup, init: RoutedFields, now_ms: int = START_MS, **kwargs: str) -> str:
    with pytest.raises(HandshakeRejected) as caught:
        respond(setup.registry, ALICE, init, now_ms, setup.rng, **kwargs)  # type: ignore[arg-type]
    return caught.value.reason


def test_c20_an_invite_is_redeemed_once() -> None:
    setup = issued("c20")
    first = respond(setup.registry, ALICE, claim_from(setup), START_MS, setup.rng)
    assert first.registry.find(setup.invite.invite_id).__class__.__name__ == "RedeemedInvite"
    for claimant in (BOB, MALLORY):  # the same invitee again, or anyone else holding the URL
        with pytest.raises(HandshakeRejected) as caught:
            respond(first.registry, ALICE, claim_from(setup, claimant), START_MS, setup.rng)
        assert caught.value.reason == "already_redeemed"


def test_c20_of_two_claimants_exactly_one_is_accepted_when_processed_in_turn() -> None:
    """The registry is a value: the daemon threads it through one SESSION_INIT at a time (serialised),
    and whichever claim comes second is refused."""
    setup = issued("c20-race")
    claims = [claim_from(setup, BOB), claim_from(setup, MALLORY)]
    registry, outcomes = setup.registry, []
    for init in claims:
        try:
            registry = respond(registry, ALICE, init, START_MS, setup.rng).registry
            outcomes.append("accepted")
        except HandshakeRejected as exc:
            outcomes.append(exc.reason)
    assert outcomes == ["accepted", "already_redeemed"]


def test_c21_expiry_boundaries_with_the_clock_skew_grace() -> None:
    setup = issued("c21")
    deadline = setup.invite.expires_at + EXPIRY_GRACE_MS
    assert parse_invite_url(setup.url, deadline).invite_id == setup.invite.invite_id
    with pytest.raises(InviteExpiredError):
        parse_invite_url(setup.url, deadline + 1)
    with pytest.raises(InviteExpiredError):
        start_handshake(BOB, setup.invite, deadline + 1, setup.rng)
    init = claim_from(setup)
    assert rejected(setup, init, deadline + 1) == "expired"
    respond(setup.registry, ALICE, init, deadline, setup.rng)  # the last accepted instant


def _resigned(url: str, body_change: Callable[[bytearray], None], signer: KeyPair = ALICE) -> str:
    payload = bytearray(b64u_strict(url[len(INVITE_PREFIX_V3) :], "invite"))
    body = payload[:-64]
    body_change(body)
    return INVITE_PREFIX_V3 + b64u(bytes(body) + signer.sign(LABEL_INVITE_SIGNATURE + bytes(body)))


def _altered(url: str, offset: int, value: bytes) -> str:
    payload = bytearray(b64u_strict(url[len(INVITE_PREFIX_V3) :], "invite"))
    payload[offset : offset + len(value)] = value
    return INVITE_PREFIX_V3 + b64u(bytes(payload))


@pytest.mark.parametrize(
    ("offset", "value"),
    [
        (1, b"\x00\x01"),  # features
        (3, b"\xff"),  # invite id
        (19, struct.pack(">Q", START_MS + 10**9)),  # expires_at, later
        (27, MALLORY.ed25519_pk),  # inviter Ed25519 key
        (59, MALLORY.x25519_pk),  # inviter X25519 key
        (93, b"evil.example/ws"),  # inside the server URL
        (-64 - 32, bytes(32)),  # the secret
    ],
    ids=["features", "invite_id", "expires_at", "inviter_ed25519", "inviter_x25519", "server_url", "secret"],
)
def test_c22_an_altered_invite_is_refused(offset: int, value: bytes) -> None:
    setup = issued("c22")
    with pytest.raises(InviteSignatureError):
        parse_invite_url(_altered(setup.url, offset, value), START_MS)


def test_c22_an_invite_signed_by_another_key_is_refused() -> None:
    setup = issued("c22-other-key")
    with pytest.raises(InviteSignatureError):
        parse_invite_url(_resigned(setup.url, lambda body: None, signer=MALLORY), START_MS)


@pytest.mark.parametrize(
    "change",
    [
        {"expires_at": START_MS + 10**9},
        {"server_url": "wss://elsewhere.example/ws"},
        {"features": 1},
        {"inviter_x25519_pk": MALLORY.x25519_pk},
        {"secret": bytes(32)},
    ],
    ids=["expires_at", "server_url", "features", "inviter_x25519", "secret"],
)
def test_c22_even_an_unsigned_alteration_fails_the_handshake_and_burns_nothing(change: dict[str, object]) -> None:
    """Whatever the invitee's copy of the invite says that differs from the inviter's record is in the
    prologue (or is the PSK): the handshake fails, and the invite stays redeemable."""
    setup = issued("c22-prologue")
    altered = attrs.evolve(setup.invite, **change)
    assert rejected(setup, claim_from(setup, invite=altered)) == "bad_handshake"
    assert respond(setup.registry, ALICE, claim_from(setup), START_MS, setup.rng).session.peer_pk == BOB_PK


def test_c23_an_invite_is_bound_to_its_relay_and_its_inviter() -> None:
    setup = issued("c23")
    init = claim_from(setup)
    assert rejected(setup, init, relay_url="wss://another-relay.example/ws") == "wrong_relay"
    # The claim routed to someone else (Mallory): Mallory never issued it...
    mallory_init = attrs.evolve(init, to=MALLORY_PK)
    with pytest.raises(HandshakeRejected) as caught:
        respond(InviteRegistry(), MALLORY, mallory_init, START_MS, setup.rng)
    assert caught.value.reason == "bad_signature"  # the routed signature names Alice as recipient
    # ...and even with Alice's invite record copied (a stolen registry), Mallory lacks Alice's keys.
    resigned = resealed(mallory_init, inner_of(init), BOB)
    with pytest.raises(HandshakeRejected) as caught:
        respond(setup.registry, MALLORY, resigned, START_MS, setup.rng)
    assert caught.value.reason == "bad_handshake"


def test_c23_a_relay_rewriting_from_cannot_bind_the_session_to_another_identity() -> None:
    setup = issued("c23-from")
    init = claim_from(setup)
    # The relay (colluding with Mallory, who re-signs the routed frame) claims the claim came from Mallory.
    rewritten = resealed(init, inner_of(init), MALLORY)
    assert rewritten.from_pk == MALLORY_PK
    assert rejected(setup, rewritten) == "bad_handshake"  # Bob's identity is in the prologue


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=[p.hex()[:8] + p.hex()[-2:] for p in LOW_ORDER_POINTS])
def test_c24_low_order_keys_are_refused_everywhere_in_the_handshake(point: bytes) -> None:
    setup = issued("c24")
    # 1. the inviter's key in a (validly signed) invite
    weak_inviter = KeyPair(ALICE.ed25519_pk, ALICE.ed25519_sk, point, ALICE.x25519_sk)
    weak_invite = issue_invite(weak_inviter, RELAY_URL, START_MS, setup.rng)
    with pytest.raises(InviteMalformedError):
        start_handshake(BOB, parse_invite_url(invite_url(weak_inviter, weak_invite), START_MS), START_MS, setup.rng)
    # 2. the invitee's ephemeral in message 1 (re-signed by Bob, so only the DH can refuse it)
    init = claim_from(setup)
    inner = inner_of(init)
    assert rejected(setup, resealed(init, inner[:18] + point + inner[50:], BOB)) == "weak_key"
    # 3. the invitee's static key, encrypted in message 1
    weak_invitee = KeyPair(BOB.ed25519_pk, BOB.ed25519_sk, point, BOB.x25519_sk)
    assert rejected(setup, claim_from(setup, weak_invitee)) == "weak_key"
    # 4. the inviter's ephemeral in message 2
    started = start_handshake(BOB, setup.invite, START_MS, setup.rng)
    accepted = respond(setup.registry, ALICE, started.claim.as_session_init(ALICE_PK), START_MS, setup.rng)
    ack_inner = inner_of(accepted.frame)
    with pytest.raises(WeakRatchetKeyError):
        finish_handshake(
            started.pending, BOB, resealed(accepted.frame, ack_inner[:2] + point + ack_inner[34:], ALICE), START_MS
        )
    # 5. a ratchet key in a message (Bob has sent, so a new key means a DH step)
    bob = finish_handshake(started.pending, BOB, accepted.frame, START_MS)
    bob = encrypt(bob, BOB, b"hi", START_MS, setup.rng).state
    frame = encrypt(accepted.session, ALICE, b"x", START_MS, setup.rng).frame
    with pytest.raises(WeakRatchetKeyError):
        decrypt(bob, forged_header(frame, ALICE, ratchet_pk=point), START_MS)


def test_c25_malleated_signatures_are_refused() -> None:
    setup = issued("c25")
    payload = b64u_strict(setup.url[len(INVITE_PREFIX_V3) :], "invite")
    r, s = payload[-64:-32], int.from_bytes(payload[-32:], "little")
    malleated = INVITE_PREFIX_V3 + b64u(payload[:-64] + r + (s + ED25519_L).to_bytes(32, "little"))
    with pytest.raises(InviteSignatureError):
        parse_invite_url(malleated, START_MS)
    init = claim_from(setup)
    sig = b64u_strict(init.sig, "sig")
    routed_s = int.from_bytes(sig[32:], "little") + ED25519_L
    assert routed_s < 2**256
    bad = attrs.evolve(init, sig=b64u(sig[:32] + routed_s.to_bytes(32, "little")))
    assert rejected(setup, bad) == "bad_signature"


def test_c26_a_replayed_message_1_never_yields_the_same_session() -> None:
    setup = issued("c26")
    started = start_handshake(BOB, setup.invite, START_MS, setup.rng)
    init = started.claim.as_session_init(ALICE_PK)
    first = respond(setup.registry, ALICE, init, START_MS, setup.rng)
    with pytest.raises(HandshakeRejected) as caught:  # the registry remembers the redemption
        respond(first.registry, ALICE, init, START_MS, setup.rng)
    assert caught.value.reason == "already_redeemed"
    # Even against a rolled-back registry, the inviter's fresh ephemeral makes a different session.
    second = respond(setup.registry, ALICE, init, START_MS, setup.rng)
    assert second.session.session_id != first.session.session_id
    assert second.session.root_key != first.session.root_key
    assert second.session.sending is not None and first.session.sending is not None
    assert second.session.sending.chain_key != first.session.sending.chain_key
    bob = finish_handshake(started.pending, BOB, first.frame, START_MS)
    replayed_session_frame = encrypt(second.session, ALICE, b"from the replayed session", START_MS, setup.rng).frame
    with pytest.raises(SessionMismatchError):
        decrypt(bob, replayed_session_frame, START_MS)


def _init_as_kci_attacker(setup: Setup, stolen_inviter: KeyPair, claimed: KeyPair, signer: KeyPair) -> RoutedFields:
    """Message 1 built by someone who stole the inviter's static keys and holds the URL, claiming to be
    ``claimed`` (whose X25519 *public* key it uses; ``ss`` it computes with the inviter's secret)."""
    rng = SeededRandom("kci")
    invite = setup.invite
    sym = SymmetricState.initialize()
    sym.mix_hash(_prologue(invite.binding, claimed.ed25519_pk))
    sym.mix_hash(invite.inviter_x25519_pk)
    ephemeral = KeyPair.generate(rng)
    header = InitFrame(invite.invite_id, b"", b"", b"").header
    sym.mix_hash(header)
    sym.mix_hash(ephemeral.x25519_pk)
    sym.mix_key(ephemeral.x25519_pk)
    sym.mix_key(x25519(ephemeral.x25519_sk, invite.inviter_x25519_pk))
    encrypted_static = sym.encrypt_and_hash(claimed.x25519_pk)
    sym.mix_key(x25519(stolen_inviter.x25519_sk, claimed.x25519_pk))  # ss, through the stolen key
    sym.mix_key_and_hash(invite.secret)
    signature = signer.sign(LABEL_INVITEE_SIGNATURE + sym.h)
    payload = sym.encrypt_and_hash(b"\x00\x00" + signature)
    inner = InitFrame(invite.invite_id, ephemeral.x25519_pk, encrypted_static, payload).pack()
    fields = seal_routed(signer, FrameType.HANDSHAKE_INIT, ALICE_PK, inner, 0)
    return attrs.evolve(fields, from_pk=b64u(claimed.ed25519_pk)) if signer is not claimed else fields


def test_c27_kci_stolen_inviter_keys_and_url_do_not_let_anyone_pose_as_the_invitee() -> None:
    """Designed outcome: with the inviter's static keys and the invite URL an attacker completes every
    DH of message 1 (``ss`` through the stolen key: Noise's KCI weakness of IK message 1), but Bob's
    identity is proven by signatures only Bob can make: the routed signature over the frame digest and
    the identity signature over the transcript hash. So posing as Bob fails."""
    setup = issued("c27")
    as_bob = _init_as_kci_attacker(setup, ALICE, BOB, MALLORY)
    assert rejected(setup, resealed(as_bob, inner_of(as_bob), MALLORY)) == "bad_handshake"  # as Mallory: wrong prologue
    assert rejected(setup, as_bob) == "bad_signature"
    # The construction itself is right: with Bob's own signing key it is accepted (so the refusal
    # above is the signature's doing, not a broken forgery).
    genuine = _init_as_kci_attacker(setup, ALICE, BOB, BOB)
    assert respond(setup.registry, ALICE, genuine, START_MS, setup.rng).session.peer_pk == BOB_PK


def test_c28_a_relay_stripping_or_altering_the_version_makes_the_handshake_fail() -> None:
    setup = issued("c28")
    init = claim_from(setup)
    inner = inner_of(init)
    for version in (2, 1, 0, 4):
        with pytest.raises(HandshakeRejected) as caught:
            respond(setup.registry, ALICE, resealed(init, bytes([version]) + inner[1:], BOB), START_MS, setup.rng)
        assert caught.value.reason == "malformed"
        assert isinstance(caught.value.__cause__, UnsupportedVersionError)
    started = start_handshake(BOB, setup.invite, START_MS, setup.rng)
    accepted = respond(setup.registry, ALICE, started.claim.as_session_init(ALICE_PK), START_MS, setup.rng)
    ack = inner_of(accepted.frame)
    with pytest.raises(UnsupportedVersionError):
        finish_handshake(started.pending, BOB, resealed(accepted.frame, b"\x02" + ack[1:], ALICE), START_MS)
    # The capabilities travel encrypted: any change to them is a failed tag.
    with pytest.raises(AuthenticationError):
        finish_handshake(started.pending, BOB, resealed(accepted.frame, flip_bit(ack, 8 * 35), ALICE), START_MS)
    assert rejected(setup, resealed(init, flip_bit(inner, 8 * 120), BOB)) == "bad_handshake"


def test_c28_v3_handshake_frames_are_never_taken_for_v2_ones_and_back() -> None:
    setup = issued("c28-cross")
    init = claim_from(setup)
    with pytest.raises(HandshakeError):  # a v2 inviter given a v3 SESSION_INIT
        handle_session_init(ALICE, init.from_pk, init.ciphertext, START_MS, setup.rng)
    v2_payload = b64u(b'{"x25519_pk":"' + b64u(BOB.x25519_pk).encode() + b'","nonce":"AAAAAAAAAAAAAAAAAAAAAA"}')
    v2_init = attrs.evolve(init, ciphertext=v2_payload, nonce=v2_payload)
    assert rejected(setup, v2_init) == "malformed"
    # A v3 URL re-labelled as a v2 one is not a v2 invite.
    with pytest.raises(InviteError):
        parse_v2_invite_url("agentroom://invite/" + setup.url[len(INVITE_PREFIX_V3) :], START_MS)


def test_c29_neither_the_secret_alone_nor_the_keys_alone_complete_the_handshake() -> None:
    setup = issued("c29")
    # The relay (or anyone) knows the invite id and Alice's keys, but not the secret: refused,
    # and the invite is not burnt.
    guessed = attrs.evolve(setup.invite, secret=bytes(32))
    assert rejected(setup, claim_from(setup, MALLORY, guessed)) == "bad_handshake"
    assert rejected(setup, claim_from(setup, BOB, guessed)) == "bad_handshake"  # Bob's keys, no secret
    assert respond(setup.registry, ALICE, claim_from(setup), START_MS, setup.rng).session.peer_pk == BOB_PK
    # The secret without Alice's static key: Mallory cannot answer Bob as Alice.
    started = start_handshake(BOB, setup.invite, START_MS, setup.rng)
    init = started.claim.as_session_init(ALICE_PK)
    stolen_record = issued("c29").registry  # the same record: Mallory knows the secret
    diverted = resealed(attrs.evolve(init, to=MALLORY_PK), inner_of(init), BOB)
    with pytest.raises(HandshakeRejected) as caught:
        respond(stolen_record, MALLORY, diverted, START_MS, setup.rng)
    assert caught.value.reason == "bad_handshake"
    # Nor can she fabricate a response: she never derived the chaining key (es needs Alice's secret).
    fabricated = bytes([3, FrameType.HANDSHAKE_RESPONSE]) + MALLORY.x25519_pk + setup.rng.random_bytes(18)
    template = seal_routed(ALICE, FrameType.HANDSHAKE_RESPONSE, BOB_PK, fabricated, 0)
    with pytest.raises(AuthenticationError):
        finish_handshake(started.pending, BOB, template, START_MS)
