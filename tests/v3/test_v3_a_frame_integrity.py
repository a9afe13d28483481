"""crypto-anchors §6 group A (frame integrity), against the v3 core.

Two attackers appear below. The relay can change any byte it forwards; every change is caught by the
outer checks (the nonce is the frame's digest and the signature covers it). A stronger attacker that
also holds the sender's Ed25519 key can re-sign what it changed (`resealed`); then the inner AEAD,
whose associated data is the whole header plus the session and both identities, must refuse it.
"Unchanged state" holds by construction (states are immutable), so each test also shows that the
next legitimate frame is still accepted by the session it held before the attack.
"""

import attrs
import pytest
from v3_support import (
    ALICE,
    BOB,
    MALLORY,
    RELAY_URL,
    Line,
    SeededRandom,
    flip_bit,
    forged_header,
    handshake,
    inner_of,
    resealed,
    tampered_variants,
    with_ciphertext,
)

import ratchet.session as v2_session
from ratchet.frames import MAX_CIPHERTEXT
from ratchet.v3 import (
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
    DecryptError,
    FrameTypeError,
    HandshakeRejected,
    MalformedFrameError,
    SessionMismatchError,
    UnexpectedRatchetKeyError,
    UnsupportedVersionError,
    V3Error,
    WrongPeerError,
)
from ratchet.v3.state import session_to_json
from ratchet.v3.wire import MESSAGE_HEADER_BYTES, FrameType, RoutedFields, b64u, b64u_strict


def _line_with_frame() -> tuple[Line, RoutedFields]:
    """Alice -> Bob once delivered, and a second frame in flight to Bob (the one attacked)."""
    line = Line("group-a")
    line.send("alice", b"first")
    line.deliver("bob")
    frame = line.send("alice", b"the frame under attack")
    return line, frame


def _still_works(line: Line) -> None:
    """The session Bob holds accepts the genuine frame still in flight, then a fresh one."""
    line.deliver("bob")
    line.send("alice", b"and the conversation goes on")
    line.deliver("bob")


def test_a01_flipping_any_bit_of_box_tag_or_nonce_is_rejected() -> None:
    line, frame = _line_with_frame()
    before = session_to_json(line.sessions["bob"])
    inner = inner_of(frame)
    nonce_start = MESSAGE_HEADER_BYTES - 24
    for bit in range(nonce_start * 8, len(inner) * 8):  # nonce, ciphertext and tag, every bit
        altered = flip_bit(inner, bit)
        with pytest.raises(MalformedFrameError):  # the relay: the digest no longer matches
            decrypt(line.sessions["bob"], with_ciphertext(frame, altered), line.now_ms)
        with pytest.raises(AuthenticationError):  # even re-signed by Alice's identity key: the AEAD
            decrypt(line.sessions["bob"], resealed(frame, altered, ALICE), line.now_ms)
    assert session_to_json(line.sessions["bob"]) == before
    _still_works(line)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"n": 5}, AuthenticationError),
        ({"pn": 1}, AuthenticationError),
        ({"nonce": bytes(24)}, AuthenticationError),
        ({"type": FrameType.CLOSE}, AuthenticationError),
        ({"session_id": bytes(16)}, SessionMismatchError),
        ({"ratchet_pk": ALICE.x25519_pk}, UnexpectedRatchetKeyError),  # Bob has not sent: no DH possible
    ],
    ids=["n", "pn", "nonce", "type", "session_id", "ratchet_pk"],
)
def test_a02_changed_header_fields_are_rejected(change: dict[str, object], error: type[Exception]) -> None:
    line, frame = _line_with_frame()
    with pytest.raises(error):
        decrypt(line.sessions["bob"], forged_header(frame, ALICE, **change), line.now_ms)
    _still_works(line)


def test_a02_a_changed_ratchet_key_fails_after_the_dh_step_and_changes_nothing() -> None:
    line, frame = _line_with_frame()
    line.send("bob", b"Bob now holds a sending ratchet key, so a new peer key means a DH step")
    before = line.state("bob")
    with pytest.raises(AuthenticationError):
        decrypt(line.sessions["bob"], forged_header(frame, ALICE, ratchet_pk=ALICE.x25519_pk), line.now_ms)
    assert line.state("bob") == before
    _still_works(line)


def test_a02_changed_version_or_direction_is_rejected() -> None:
    line, frame = _line_with_frame()
    inner = inner_of(frame)
    for version in (0, 2, 4, 255):
        with pytest.raises(UnsupportedVersionError):
            decrypt(line.sessions["bob"], resealed(frame, bytes([version]) + inner[1:], ALICE), line.now_ms)
    # Direction: the same frame presented as Bob -> Alice, re-signed with Bob's key.
    reversed_frame = resealed(attrs.evolve(frame, to=b64u(ALICE.ed25519_pk)), inner, BOB)
    with pytest.raises(DecryptError):
        decrypt(line.sessions["alice"], reversed_frame, line.now_ms)
    _still_works(line)


@pytest.mark.parametrize(
    "ciphertext",
    [
        "",
        "A",
        "!!!!",
        "AAAA",  # 3 bytes of zeros
        b64u(b"\x03"),
        b64u(b"\x03\x03"),
        b64u(bytes([3, 3]) + bytes(MESSAGE_HEADER_BYTES)),  # a header with no box
        b64u(b'{"x25519_pk":"AAAA","nonce":"BBBB"}'),  # a v2 SESSION_INIT payload
        b64u(bytes(range(256)) * 4),
        "A" * (MAX_CIPHERTEXT + 4),
    ],
    ids=[
        "empty",
        "one-char",
        "not-base64",
        "zeros",
        "version-only",
        "no-body",
        "header-only",
        "v2-json",
        "garbage",
        "oversize",
    ],
)
def test_a03_truncated_empty_oversize_wrong_version_or_garbage_frames_fail_cleanly(ciphertext: str) -> None:
    line, frame = _line_with_frame()
    for bad in (attrs.evolve(frame, ciphertext=ciphertext), resealed_text(frame, ciphertext)):
        with pytest.raises(V3Error) as caught:
            decrypt(line.sessions["bob"], bad, line.now_ms)
        message = str(caught.value)
        assert len(message) < 200
        assert not ciphertext or ciphertext[:16] not in message  # errors never quote the input
    _still_works(line)


def resealed_text(frame: RoutedFields, ciphertext: str) -> RoutedFields:
    """The garbage re-signed by Alice when it decodes, so that the inner parser is what refuses it."""
    try:
        return resealed(frame, inner_of(attrs.evolve(frame, ciphertext=ciphertext)), ALICE)
    except MalformedFrameError:
        return attrs.evolve(frame, ciphertext=ciphertext)


def test_a03_every_truncation_of_a_frame_fails_cleanly() -> None:
    line, frame = _line_with_frame()
    inner = inner_of(frame)
    for length in range(len(inner)):
        with pytest.raises(V3Error):
            decrypt(line.sessions["bob"], resealed(frame, inner[:length], ALICE), line.now_ms)
    _still_works(line)


def test_a04_reflection_of_our_own_frame_is_rejected() -> None:
    line, frame = _line_with_frame()
    # The relay sends Alice's frame back to Alice as it is...
    with pytest.raises(WrongPeerError):
        decrypt(line.sessions["alice"], frame, line.now_ms)
    # ...or with from/to swapped and re-signed with Bob's key (a relay that stole Bob's identity key).
    swapped = resealed(attrs.evolve(frame, to=b64u(ALICE.ed25519_pk)), inner_of(frame), BOB)
    with pytest.raises(DecryptError):
        decrypt(line.sessions["alice"], swapped, line.now_ms)
    _still_works(line)


def test_a05_a_frame_from_another_session_is_rejected() -> None:
    line, _ = _line_with_frame()
    other = Line("group-a-other-session")  # Alice and Bob again, through another invite
    other_frame = other.send("alice", b"meant for the other session")
    with pytest.raises(SessionMismatchError):
        decrypt(line.sessions["bob"], other_frame, line.now_ms)
    # Rewriting the session id (and re-signing) does not help: the keys and the AD differ.
    spliced = forged_header(other_frame, ALICE, session_id=line.sessions["bob"].session_id)
    with pytest.raises(AuthenticationError):
        decrypt(line.sessions["bob"], spliced, line.now_ms)
    _still_works(line)


def test_a05_a_frame_from_a_session_with_another_peer_is_rejected() -> None:
    line, _ = _line_with_frame()
    mallory_to_bob = handshake("group-a-mallory", inviter=MALLORY, invitee=BOB)
    sealed = encrypt(mallory_to_bob.alice, MALLORY, b"hello Bob", line.now_ms, SeededRandom("m"))
    with pytest.raises(WrongPeerError):  # Bob's session with Alice refuses Mallory's frame
        decrypt(line.sessions["bob"], sealed.frame, line.now_ms)
    posing = attrs.evolve(sealed.frame, from_pk=b64u(ALICE.ed25519_pk))  # claims to be from Alice
    with pytest.raises(WrongPeerError):
        decrypt(line.sessions["bob"], posing, line.now_ms)
    _still_works(line)


def test_a06_handshake_frames_are_not_accepted_as_messages_and_back() -> None:
    done = handshake("group-a-types")
    line = Line("group-a-types")
    bob, alice = line.sessions["bob"], line.sessions["alice"]
    # SESSION_ACK / SESSION_INIT payloads delivered as MSG (outer type rewritten).
    with pytest.raises(FrameTypeError):
        decrypt(bob, attrs.evolve(done.ack, type="MSG"), line.now_ms)
    with pytest.raises(FrameTypeError):
        decrypt(alice, attrs.evolve(done.claim_init, type="MSG"), line.now_ms)
    # The same, re-signed so that only the inner type byte decides.
    with pytest.raises(FrameTypeError):
        decrypt(bob, resealed(attrs.evolve(done.ack, type="MSG"), inner_of(done.ack), ALICE), line.now_ms)
    # A message delivered as SESSION_ACK or SESSION_INIT.
    frame = line.send("alice", b"a message")
    with pytest.raises(FrameTypeError):
        decrypt(bob, attrs.evolve(frame, type="SESSION_ACK"), line.now_ms)
    with pytest.raises(HandshakeRejected) as caught:
        respond(InviteRegistry(), BOB, attrs.evolve(frame, type="SESSION_INIT"), line.now_ms, line.rng)
    assert caught.value.reason == "malformed"


def test_a06_a_message_is_not_accepted_as_the_handshake_response() -> None:
    rng = SeededRandom("group-a-ack")
    issued = issue_invite(ALICE, RELAY_URL, 1, rng)
    started = start_handshake(BOB, parse_invite_url(invite_url(ALICE, issued), 1), 1, rng)
    init = started.claim.as_session_init(b64u(ALICE.ed25519_pk))
    accepted = respond(InviteRegistry().with_issued(issued), ALICE, init, 1, rng)
    message = encrypt(accepted.session, ALICE, b"hi", 1, rng).frame
    with pytest.raises(FrameTypeError):
        finish_handshake(started.pending, BOB, attrs.evolve(message, type="SESSION_ACK"), 1)
    assert finish_handshake(started.pending, BOB, accepted.frame, 1).session_id == accepted.session.session_id


def test_a06_v2_and_v3_frames_never_cross() -> None:
    """A v2 frame (secretbox + ratchet_pk) in a v3 session, and a v3 frame in a v2 session, both fail."""
    line, v3_frame = _line_with_frame()
    v2_like = attrs.evolve(v3_frame, ratchet_pk=b64u(ALICE.x25519_pk), seq=0)
    with pytest.raises(MalformedFrameError):
        decrypt(line.sessions["bob"], v2_like, line.now_ms)
    v2 = v2_session.Session.initial(
        peer_pk=b64u(ALICE.ed25519_pk),
        send_chain_key=bytes(32),
        recv_chain_key=bytes(32),
        own=BOB,
        peer_x25519_pk=ALICE.x25519_pk,
        initiator=False,
        now_ms=line.now_ms,
    )
    with pytest.raises(v2_session.DecryptError):
        v2_session.decrypt(v2, v3_frame.ciphertext, v3_frame.nonce, v3_frame.seq, None, line.now_ms)
    _still_works(line)


def test_a07_a_caller_that_verified_the_signature_skips_only_that_check() -> None:
    """The daemon verifies every delivery's routed signature before a session sees it and says so
    (``signature_verified``), so the costliest check runs once. Everything else is still checked:
    a tampered frame is refused exactly as before, and the flag cannot make a malformed signature pass.
    """
    line, frame = _line_with_frame()
    bob = line.sessions["bob"]
    forged_sig = attrs.evolve(frame, sig=b64u(flip_bit(b64u_strict(frame.sig, "sig"), 9)))
    with pytest.raises(WrongPeerError):
        decrypt(bob, forged_sig, line.now_ms)
    for name, variant in tampered_variants(frame):
        if name == "sig":
            continue  # the one check the caller did itself
        with pytest.raises(V3Error):
            decrypt(bob, variant, line.now_ms, signature_verified=True)
    with pytest.raises(MalformedFrameError):
        decrypt(bob, attrs.evolve(frame, sig=frame.sig[:-4]), line.now_ms, signature_verified=True)
    opened = decrypt(bob, frame, line.now_ms, signature_verified=True)
    assert opened.message.plaintext == b"the frame under attack"
