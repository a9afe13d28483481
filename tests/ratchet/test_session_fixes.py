"""Our deliberate departures from the reference ratchet, and every kind of bad input, one test each.

The vector transcript (test_transcript.py) shows the fixes on the reference's own frames; these
tests pin the rest: bounds the vectors do not reach, the saved-state formats, and clear errors.
"""

import json
import time

import attrs
import pytest

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import InvalidKeyError, RatchetError
from ratchet.kdf import bootstrap_keys
from ratchet.keys import KeyPair, x25519
from ratchet.rand import SYSTEM_RANDOM
from ratchet.session import (
    MAX_SKIP,
    SEQ_LIMIT,
    SKIPPED_KEY_TTL_MS,
    AuthenticationError,
    DecryptError,
    EncryptedMessage,
    MalformedMessageError,
    ReplayError,
    SendChainExhaustedError,
    SeqOutOfRangeError,
    Session,
    SessionStateError,
    SkipLimitError,
    SkippedKeyExpiredError,
    WeakRatchetKeyError,
    decrypt,
    encrypt,
    prune_skipped,
    session_from_json,
    session_from_reference_json,
    session_to_json,
    session_to_reference_json,
)

T0 = 1_768_000_000_000
ALICE = KeyPair.from_secrets(b"\x11" * 32, b"\x12" * 32)
BOB = KeyPair.from_secrets(b"\x21" * 32, b"\x22" * 32)


def _pair() -> tuple[Session, Session]:
    """(alice = inviter, bob = invitee) right after the handshake."""
    key_a, key_b = bootstrap_keys(x25519(ALICE.x25519_sk, BOB.x25519_pk), b"\x33" * 16)
    alice = Session.initial(b64u_encode(BOB.ed25519_pk), key_a, key_b, ALICE, BOB.x25519_pk, True, T0)
    bob = Session.initial(b64u_encode(ALICE.ed25519_pk), key_b, key_a, BOB, ALICE.x25519_pk, False, T0)
    return alice, bob


def _send(session: Session, count: int, label: str, now: int = T0) -> tuple[Session, list[EncryptedMessage]]:
    messages = []
    for i in range(count):
        session, message = encrypt(session, f"{label}{i}".encode(), now, SYSTEM_RANDOM)
        messages.append(message)
    return session, messages


def _recv(session: Session, message: EncryptedMessage, now: int = T0) -> tuple[Session, bytes]:
    return decrypt(session, message.ciphertext, message.nonce, message.seq, message.ratchet_pk, now)


def _rejected(session: Session, message: EncryptedMessage, error: type[DecryptError], now: int = T0) -> DecryptError:
    """The frame is refused with `error`; the caller's session object is untouched (it is immutable)."""
    saved = session_to_json(session)
    with pytest.raises(error) as caught:
        _recv(session, message, now)
    assert session_to_json(session) == saved
    return caught.value


def _rotated_conversation(
    old: int, read: int, new: int
) -> tuple[Session, list[EncryptedMessage], list[EncryptedMessage]]:
    """alice sends `old` messages, bob reads the first `read`, replies, alice reads it and sends `new`.

    Returns bob's session and alice's two bursts; bob has not seen old[read:] nor any of new.
    """
    alice, bob = _pair()
    alice, first = _send(alice, old, "old")
    for message in first[:read]:
        bob, _ = _recv(bob, message)
    bob, (reply,) = _send(bob, 1, "reply")
    alice, _ = _recv(alice, reply)
    alice, second = _send(alice, new, "new")
    return bob, first, second


# ── skip window ─────────────────────────────────────────────────────────────────────────────────


def test_gap_beyond_skip_window_is_refused_without_storing_keys() -> None:
    alice, bob = _pair()
    alice, messages = _send(alice, MAX_SKIP + 3, "m")
    bob, _ = _recv(bob, messages[0])
    _rejected(bob, messages[MAX_SKIP + 2], SkipLimitError)  # would skip 101 messages of the current chain
    bob, plaintext = _recv(bob, messages[MAX_SKIP + 1])  # a gap of exactly MAX_SKIP is fine
    assert plaintext == f"m{MAX_SKIP + 1}".encode()
    assert len(bob.skipped) == MAX_SKIP
    bob, _ = _recv(bob, messages[MAX_SKIP + 2])
    for message in messages[1 : MAX_SKIP + 1]:
        bob, _ = _recv(bob, message)
    assert bob.skipped == ()


@pytest.mark.parametrize("new_chain", [False, True])
def test_a_huge_seq_is_refused_in_bounded_time(new_chain: bool) -> None:
    alice, bob = _pair()
    alice, (first,) = _send(alice, 1, "m")
    if not new_chain:
        bob, _ = _recv(bob, first)
    forged = attrs.evolve(first, seq=SEQ_LIMIT - 1)
    started = time.perf_counter()
    _rejected(bob, forged, SkipLimitError)
    assert time.perf_counter() - started < 0.5  # no walk of 2**32 chain steps


# ── buffered keys ───────────────────────────────────────────────────────────────────────────────


def test_a_forged_frame_does_not_destroy_a_buffered_key() -> None:
    alice, bob = _pair()
    alice, (m0, m1) = _send(alice, 2, "m")
    bob, _ = _recv(bob, m1)
    forged = attrs.evolve(m0, ciphertext=b64u_encode(b"\x00" * 40))
    _rejected(bob, forged, AuthenticationError)
    bob, plaintext = _recv(bob, m0)
    assert plaintext == b"m0"
    _rejected(bob, m0, ReplayError)  # used once, then gone


def test_a_replayed_previous_chain_frame_stores_nothing() -> None:
    bob, first, second = _rotated_conversation(old=4, read=1, new=1)
    bob, _ = _recv(bob, first[3])  # buffers old1, old2
    bob, _ = _recv(bob, second[0])  # new chain
    buffered = bob.skipped
    _rejected(bob, first[3], AuthenticationError)  # the reference overwrote old1/old2 with junk here
    assert bob.skipped == buffered
    for message in first[1:3]:
        bob, _ = _recv(bob, message)
    assert bob.skipped == ()


def test_a_buffered_key_expires_after_its_lifetime() -> None:
    alice, bob = _pair()
    alice, (m0, m1, m2) = _send(alice, 3, "m")
    bob, _ = _recv(bob, m2, T0)
    bob_later, plaintext = _recv(bob, m0, T0 + SKIPPED_KEY_TTL_MS)  # the reference prunes only when older
    assert plaintext == b"m0"
    _rejected(bob, m1, SkippedKeyExpiredError, T0 + SKIPPED_KEY_TTL_MS + 1)
    assert prune_skipped(bob, T0 + SKIPPED_KEY_TTL_MS) is bob
    assert prune_skipped(bob_later, T0 + SKIPPED_KEY_TTL_MS + 1).skipped == ()


def test_the_buffer_keeps_at_most_max_skip_keys_dropping_the_oldest() -> None:
    bob, first, second = _rotated_conversation(old=MAX_SKIP + 1, read=1, new=3)
    bob, _ = _recv(bob, first[MAX_SKIP], T0)  # buffers old1..old99
    assert len(bob.skipped) == MAX_SKIP - 1
    bob, _ = _recv(bob, second[2], T0 + 1)  # buffers new0, new1
    assert len(bob.skipped) == MAX_SKIP
    assert [entry.seq for entry in bob.skipped[:2]] == [2, 3]  # old1, the oldest first stored, is gone
    with pytest.raises(DecryptError):
        _recv(bob, first[1])
    # prune_skipped (the daemon's periodic prune) applies the same cap to a state that exceeds it.
    extra = tuple(attrs.evolve(entry, seq=entry.seq + 1000, added_at=T0 - 1) for entry in bob.skipped[:5])
    assert prune_skipped(attrs.evolve(bob, skipped=extra + bob.skipped), T0 + 1).skipped == bob.skipped


# ── the DH step when previous-chain messages are still in flight ────────────────────────────────


def test_new_chain_opens_although_previous_chain_messages_are_missing() -> None:
    bob, first, second = _rotated_conversation(old=5, read=1, new=3)
    bob, plaintext = _recv(bob, second[2])  # the reference fails here: its chain lags by four messages
    assert plaintext == b"new2"
    assert bob.needs_send_dh_step
    for message in [first[3], second[0], first[1], first[4], second[1], first[2]]:
        bob, plaintext = _recv(bob, message)
    assert bob.skipped == ()
    for message in first + second:
        with pytest.raises(DecryptError):
            _recv(bob, message)


def test_previous_chain_recovery_stays_within_the_skip_window() -> None:
    bob, first, second = _rotated_conversation(old=MAX_SKIP - 1, read=1, new=4)
    # 98 keys of the previous chain plus 3 of the new one would be 101 > MAX_SKIP.
    _rejected(bob, second[3], AuthenticationError)
    bob, _ = _recv(bob, first[1])  # the state was unchanged, so the previous chain still advances
    bob, plaintext = _recv(bob, second[3])  # now 97 + 3 keys: accepted
    assert plaintext == b"new3"
    assert len(bob.skipped) == MAX_SKIP


# ── keys ────────────────────────────────────────────────────────────────────────────────────────

LOW_ORDER_POINTS = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]
# p and p + 1: other spellings of the low-order points 0 and 1, refused before any DH as non-canonical
NON_CANONICAL_LOW_ORDER = [
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_a_low_order_ratchet_pk_is_refused(point: str) -> None:
    alice, bob = _pair()
    alice, (message,) = _send(alice, 1, "m")
    error = _rejected(bob, attrs.evolve(message, ratchet_pk=b64u_encode(bytes.fromhex(point))), WeakRatchetKeyError)
    assert isinstance(error, InvalidKeyError)
    assert "low-order" in str(error)
    _, plaintext = _recv(bob, message)
    assert plaintext == b"m0"


@pytest.mark.parametrize("point", NON_CANONICAL_LOW_ORDER)
def test_a_non_canonical_low_order_ratchet_pk_is_refused(point: str) -> None:
    alice, bob = _pair()
    alice, (message,) = _send(alice, 1, "m")
    error = _rejected(bob, attrs.evolve(message, ratchet_pk=b64u_encode(bytes.fromhex(point))), MalformedMessageError)
    assert "canonical" in str(error)
    assert _recv(bob, message)[1] == b"m0"


def test_the_saved_state_never_holds_the_identity_ed25519_secret() -> None:
    alice, bob = _pair()
    alice, (message,) = _send(alice, 1, "m")
    bob, _ = _recv(bob, message)
    bob, _ = _send(bob, 1, "r")  # bob has rotated: the reference would now hold an unused Ed25519 keypair
    for session, identity in ((_pair()[0], ALICE), (_pair()[1], BOB), (alice, ALICE), (bob, BOB)):
        saved = session_to_json(session)
        for secret in (identity.ed25519_sk, identity.ed25519_sk[:32]):
            assert b64u_encode(secret).encode() not in saved
            assert secret.hex().encode() not in saved
        assert set(json.loads(saved)["send_ephemeral"]) == {"x25519_pk", "x25519_sk"}
    # The reference's text holds whatever Ed25519 half the caller hands it; only vector tests do.
    assert b64u_encode(ALICE.ed25519_sk) in session_to_reference_json(alice, ALICE.ed25519_pk, ALICE.ed25519_sk)


# ── seq ─────────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("seq", [SEQ_LIMIT, SEQ_LIMIT + 5, 2**53 - 1, -1, True, 1.0, "1"])
def test_seq_outside_the_4_byte_counter_is_refused(seq: object) -> None:
    alice, bob = _pair()
    alice, (message,) = _send(alice, 1, "m")
    error = _rejected(bob, attrs.evolve(message, seq=seq), SeqOutOfRangeError)
    assert "seq" in str(error)


def test_a_send_chain_never_wraps() -> None:
    alice, _ = _pair()
    alice, _ = _send(alice, 1, "m")
    exhausted = attrs.evolve(alice, send_seq=SEQ_LIMIT)
    with pytest.raises(SendChainExhaustedError):
        encrypt(exhausted, b"x", T0, SYSTEM_RANDOM)
    rotated, message = encrypt(attrs.evolve(exhausted, needs_send_dh_step=True), b"x", T0, SYSTEM_RANDOM)
    assert message.seq == 0 and rotated.send_seq == 1


# ── malformed frames ────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("nonce", b64u_encode(b"\x00" * 23), "nonce must be 24 bytes"),
        ("nonce", "", "nonce must be 24 bytes"),
        ("ciphertext", b64u_encode(b"\x00" * 15), "ciphertext too short"),
        ("ratchet_pk", b64u_encode(b"\x00" * 31), "ratchet_pk must be 32 bytes"),
        ("ratchet_pk", "", "ratchet_pk must be 32 bytes"),
    ],
)
def test_malformed_frames_are_refused_clearly(field: str, value: str, fragment: str) -> None:
    alice, bob = _pair()
    alice, (message,) = _send(alice, 1, "m")
    error = _rejected(bob, attrs.evolve(message, **{field: value}), MalformedMessageError)
    assert fragment in str(error)


def test_a_frame_without_ratchet_pk_decrypts_on_the_current_chain() -> None:
    _, bob = _pair()
    bob, (message,) = _send(bob, 1, "b")  # the invitee's first chain needs no DH step
    alice, _ = _pair()
    _, plaintext = _recv(alice, attrs.evolve(message, ratchet_pk=None))
    assert plaintext == b"b0"


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"send_chain_key": b"\x00" * 31}, "send chain key"),
        ({"recv_chain_key": b""}, "receive chain key"),
        ({"peer_x25519_pk": b"\x00" * 33}, "peer X25519 public key"),
        ({"peer_pk": "not-a-key"}, "peer Ed25519 public key"),
    ],
)
def test_initial_refuses_bad_keys(change: dict[str, object], fragment: str) -> None:
    arguments: dict[str, object] = {
        "peer_pk": b64u_encode(BOB.ed25519_pk),
        "send_chain_key": b"\x01" * 32,
        "recv_chain_key": b"\x02" * 32,
        "own": ALICE,
        "peer_x25519_pk": BOB.x25519_pk,
        "initiator": True,
        "now_ms": T0,
    }
    with pytest.raises(InvalidKeyError, match=fragment):
        Session.initial(**(arguments | change))  # type: ignore[arg-type]


# ── our saved-state format ──────────────────────────────────────────────────────────────────────


def _busy_session() -> Session:
    bob, _, second = _rotated_conversation(old=4, read=1, new=3)
    bob, _ = _recv(bob, second[2])
    assert bob.skipped and bob.needs_send_dh_step
    return bob


def test_our_format_round_trips_every_field() -> None:
    session = _busy_session()
    saved = session_to_json(session)
    document = json.loads(saved)
    assert (document["format"], document["version"]) == ("agentroom-session", 1)
    assert session_from_json(saved) == session


def _mutated(edit: object) -> bytes:
    document = json.loads(session_to_json(_busy_session()))
    edit(document)  # type: ignore[operator]
    return json.dumps(document).encode()


def _set(path: str, value: object) -> object:
    def edit(document: dict[str, object]) -> None:
        *parents, leaf = path.split(".")
        node: object = document
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]  # type: ignore[index]
        if isinstance(node, list):
            node[int(leaf)] = value
        elif value is _DELETE:
            del node[leaf]  # type: ignore[attr-defined]
        else:
            node[leaf] = value  # type: ignore[index]

    return edit


_DELETE = object()
_OTHER_X25519 = b64u_encode(KeyPair.from_secrets(b"\x44" * 32, b"\x45" * 32).x25519_pk)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"format": "agentroom-session", "version": NaN}', "not valid JSON"),
        (b'{"format": "agentroom-session", "format": "x"}', "not valid JSON"),
        (b'{"version": 1}', "not an agentroom session state"),
        (lambda: _mutated(_set("version", 2)), "unsupported session state version 2"),
        (lambda: _mutated(_set("send_seq", _DELETE)), "required field missing @ state.send_seq"),
        (lambda: _mutated(_set("extra", 1)), "extra fields found (extra)"),
        (lambda: _mutated(_set("send_seq", "1")), "expected int @ state.send_seq"),
        (lambda: _mutated(_set("needs_send_dh_step", 1)), "expected bool @ state.needs_send_dh_step"),
        (lambda: _mutated(_set("skipped", "")), "expected list @ state.skipped"),
        (lambda: _mutated(_set("skipped.0.seq", 1.5)), "expected int @ state.skipped[0].seq"),
        (lambda: _mutated(_set("send_chain_key", "AAAA")), "send_chain_key: expected 32 bytes"),
        (lambda: _mutated(_set("send_chain_key", "A" * 42 + "B")), "send_chain_key: not canonical base64url"),
        (lambda: _mutated(_set("send_ephemeral.x25519_pk", _OTHER_X25519)), "does not belong to the secret key"),
        (lambda: _mutated(_set("recv_seq", -2)), "receive seq -2 out of range"),
        (lambda: _mutated(_set("send_seq", SEQ_LIMIT + 1)), "send seq"),
        (lambda: _mutated(_set("skipped.0.seq", SEQ_LIMIT)), "skipped key seq"),
        (lambda: _mutated(lambda d: d["skipped"].append(dict(d["skipped"][0]))), "stored twice"),
        (
            lambda: _mutated(lambda d: d.update(skipped=[dict(d["skipped"][0], seq=i) for i in range(MAX_SKIP + 1)])),
            "at most 100",
        ),
    ],
)
def test_a_corrupt_saved_state_is_refused_clearly(data: object, fragment: str) -> None:
    raw = data() if callable(data) else data
    with pytest.raises(SessionStateError) as caught:
        session_from_json(raw)  # type: ignore[arg-type]
    assert fragment in str(caught.value)
    assert isinstance(caught.value, RatchetError)


# ── the reference's session-file text ───────────────────────────────────────────────────────────


def _reference_text() -> str:
    return session_to_reference_json(_busy_session(), BOB.ed25519_pk, BOB.ed25519_sk)


def test_the_reference_text_round_trips_and_drops_the_ed25519_half() -> None:
    session = _busy_session()
    text = session_to_reference_json(session, BOB.ed25519_pk, BOB.ed25519_sk)
    assert session_from_reference_json(text) == session
    assert b64u_encode(BOB.ed25519_sk) not in session_to_json(session_from_reference_json(text)).decode()


def test_a_reference_file_with_too_many_skipped_keys_keeps_the_newest() -> None:
    document = json.loads(_reference_text())
    template = document["skippedMessageKeys"][0]
    prefix = template[0].rsplit(":", 1)[0]
    document["skippedMessageKeys"] = [
        [f"{prefix}:{i}", {"key": template[1]["key"], "addedAt": T0 + i}] for i in range(MAX_SKIP + 5)
    ]
    session = session_from_reference_json(json.dumps(document))
    assert [entry.seq for entry in session.skipped] == list(range(5, MAX_SKIP + 5))


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.pop("lastUsedAt"), "required field missing @ state.lastUsedAt"),
        (lambda d: d["sendEphemeral"].pop("ed25519_sk"), "required field missing @ state.sendEphemeral.ed25519_sk"),
        (lambda d: d["skippedMessageKeys"][0].__setitem__(0, "no-seq"), "is not '<ratchet_pk>:<seq>'"),
        (lambda d: d["skippedMessageKeys"][0].__setitem__(0, "abc:1"), "ratchet_pk: expected 32 bytes"),
        (lambda d: d["skippedMessageKeys"][0].__setitem__(0, d["skippedMessageKeys"][0][0] + "x"), "is not"),
        (lambda d: d.__setitem__("recvSeq", "3"), "expected int @ state.recvSeq"),
        (lambda d: d.__setitem__("sendChainKey", "AAAA"), "sendChainKey: expected 32 bytes"),
    ],
)
def test_a_corrupt_reference_file_is_refused_clearly(edit: object, fragment: str) -> None:
    document = json.loads(_reference_text())
    edit(document)  # type: ignore[operator]
    with pytest.raises(SessionStateError) as caught:
        session_from_reference_json(json.dumps(document))
    assert fragment in str(caught.value)


def test_a_respelled_ratchet_pk_is_rejected_and_the_state_unchanged() -> None:
    """X25519 ignores bit 255, so a relay could re-spell an honest ratchet_pk and the frame would still
    open under the reference's rules; we accept only the canonical spelling (libsodium's)."""
    alice, bob = _pair()
    alice, [sealed] = _send(alice, 1, "hello")
    assert sealed.ratchet_pk is not None
    raw = bytearray(b64u_decode(sealed.ratchet_pk))
    raw[31] |= 0x80
    respelled = attrs.evolve(sealed, ratchet_pk=b64u_encode(bytes(raw)))
    assert "canonical" in str(_rejected(bob, respelled, MalformedMessageError))
    assert _recv(bob, sealed)[1] == b"hello0"
