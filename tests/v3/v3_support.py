"""Shared by the v3 tests and tests/v3/make_vectors.py: seeded randomness, identities, a two-party
line with a relay in the middle, and ways to tamper with frames.

Everything here is deterministic: the same seeds give the same bytes, which is what lets the
known-answer vectors be regenerated and compared byte for byte.
"""

import hashlib
import uuid
from collections.abc import Iterator

import attrs

from ratchet.keys import KeyPair
from ratchet.signatures import sign_routed
from ratchet.v3 import (
    InviteRegistry,
    Session,
    decrypt,
    encrypt,
    finish_handshake,
    invite_url,
    issue_invite,
    parse_invite_url,
    respond,
    start_handshake,
)
from ratchet.v3.errors import V3Error
from ratchet.v3.primitives import frame_digest, kdf_ck
from ratchet.v3.session import Opened, Sealed
from ratchet.v3.state import session_from_json, session_to_json
from ratchet.v3.wire import MESSAGE_HEADER_BYTES, MessageHeader, RoutedFields, b64u, b64u_strict

START_MS = 1_768_000_000_000
RELAY_URL = "wss://relay.example/ws"


class SeededRandom:
    """A `ratchet.rand.RandomSource` whose draws are BLAKE2b(seed, counter): reproducible, never for production."""

    def __init__(self, seed: str) -> None:
        self._key = hashlib.blake2b(seed.encode("utf-8"), digest_size=32).digest()
        self.draws = 0

    def random_bytes(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.draws += 1
            out += hashlib.blake2b(self.draws.to_bytes(8, "big"), key=self._key).digest()
        return out[:n]

    def ed25519_seed(self) -> bytes:
        return self.random_bytes(32)

    def x25519_secret(self) -> bytes:
        return self.random_bytes(32)

    def uuid4(self) -> str:
        return str(uuid.UUID(bytes=self.random_bytes(16), version=4))


def identity(name: str) -> KeyPair:
    """A fixed identity per name (both keys derived from the name)."""
    seed = hashlib.blake2b(b"ed25519 " + name.encode(), digest_size=32).digest()
    x_secret = hashlib.blake2b(b"x25519 " + name.encode(), digest_size=32).digest()
    return KeyPair.from_secrets(seed, x_secret)


ALICE = identity("alice")  # the inviter in most tests
BOB = identity("bob")  # the invitee
MALLORY = identity("mallory")  # a third party, or the relay acting as a client

ALICE_PK = b64u(ALICE.ed25519_pk)
BOB_PK = b64u(BOB.ed25519_pk)
MALLORY_PK = b64u(MALLORY.ed25519_pk)


@attrs.define
class Handshake:
    """Everything one complete handshake produced."""

    url: str
    registry: InviteRegistry
    alice: Session
    bob: Session
    claim_init: RoutedFields
    ack: RoutedFields


def handshake(
    seed: str = "handshake", now_ms: int = START_MS, *, inviter: KeyPair = ALICE, invitee: KeyPair = BOB
) -> Handshake:
    """Alice issues an invite, Bob redeems it, Alice responds, Bob finishes: two fresh sessions."""
    rng = SeededRandom(seed)
    issued = issue_invite(inviter, RELAY_URL, now_ms, rng)
    registry = InviteRegistry().with_issued(issued)
    url = invite_url(inviter, issued)
    started = start_handshake(invitee, parse_invite_url(url, now_ms), now_ms, rng)
    init = started.claim.as_session_init(b64u(inviter.ed25519_pk))
    accepted = respond(registry, inviter, init, now_ms, rng, relay_url=RELAY_URL)
    bob = finish_handshake(started.pending, invitee, accepted.frame, now_ms)
    return Handshake(url, accepted.registry, accepted.session, bob, init, accepted.frame)


class Line:
    """Alice and Bob with their sessions, and the frames in flight each way (the relay's queues)."""

    def __init__(self, seed: str = "line", now_ms: int = START_MS) -> None:
        done = handshake(seed, now_ms)
        self.sessions = {"alice": done.alice, "bob": done.bob}
        self.keys = {"alice": ALICE, "bob": BOB}
        self.rng = SeededRandom(seed + "/messages")
        self.now_ms = now_ms
        self.in_flight: dict[str, list[tuple[RoutedFields, bytes]]] = {"alice": [], "bob": []}

    @staticmethod
    def other(name: str) -> str:
        return "bob" if name == "alice" else "alice"

    def send(self, sender: str, plaintext: bytes) -> RoutedFields:
        sealed: Sealed = encrypt(self.sessions[sender], self.keys[sender], plaintext, self.now_ms, self.rng)
        self.sessions[sender] = sealed.state
        self.in_flight[self.other(sender)].append((sealed.frame, plaintext))
        return sealed.frame

    def deliver(self, recipient: str, index: int = 0) -> Opened:
        frame, plaintext = self.in_flight[recipient].pop(index)
        opened = decrypt(self.sessions[recipient], frame, self.now_ms)
        assert opened.message.plaintext == plaintext
        self.sessions[recipient] = opened.state
        return opened

    def reload(self, name: str) -> None:
        self.sessions[name] = session_from_json(session_to_json(self.sessions[name]))

    def state(self, name: str) -> bytes:
        return session_to_json(self.sessions[name])


def with_ciphertext(frame: RoutedFields, inner: bytes) -> RoutedFields:
    """The frame with another inner frame, all outer fields left as they were (a naive splice)."""
    return attrs.evolve(frame, ciphertext=b64u(inner))


def inner_of(frame: RoutedFields) -> bytes:
    return b64u_strict(frame.ciphertext, "ciphertext")


def flip_bit(data: bytes, bit: int) -> bytes:
    index = (bit // 8) % len(data)
    return data[:index] + bytes([data[index] ^ (1 << (bit % 8))]) + data[index + 1 :]


def tampered_variants(frame: RoutedFields) -> Iterator[tuple[str, RoutedFields]]:
    """One altered copy of the frame per field (and a few per part of the inner frame)."""
    inner = inner_of(frame)
    for position in sorted({0, 1, 2, 17, 18, 49, 50, 53, 54, 57, 58, 81, 82, len(inner) - 1}):
        if position < len(inner):
            yield f"inner byte {position}", with_ciphertext(frame, flip_bit(inner, position * 8))
    yield "nonce", attrs.evolve(frame, nonce=b64u(flip_bit(b64u_strict(frame.nonce, "n"), 3)))
    yield "sig", attrs.evolve(frame, sig=b64u(flip_bit(b64u_strict(frame.sig, "s"), 9)))
    yield "seq", attrs.evolve(frame, seq=frame.seq + 1)
    yield "ratchet_pk", attrs.evolve(frame, ratchet_pk=b64u(bytes(32)))
    yield "from", attrs.evolve(frame, from_pk=MALLORY_PK)
    yield "to", attrs.evolve(frame, to=MALLORY_PK)
    yield "padding", attrs.evolve(frame, ciphertext=frame.ciphertext + "=")
    yield "truncated", with_ciphertext(frame, inner[:-1])
    yield "extended", with_ciphertext(frame, inner + b"\x00")


def resealed(frame: RoutedFields, inner: bytes, signer: KeyPair, *, seq: int | None = None) -> RoutedFields:
    """The frame carrying ``inner`` with every outer field recomputed and signed by ``signer``.

    This is an attacker stronger than any relay: it holds a sender's Ed25519 key (but none of the
    session's secrets), so the outer checks pass and only the inner authentication can refuse it.
    """
    if seq is None:
        try:
            seq = MessageHeader.parse(inner).n
        except V3Error:  # not a well-formed message: keep what the frame said
            seq = frame.seq
    nonce = b64u(frame_digest(inner))
    return attrs.evolve(
        frame,
        from_pk=b64u(signer.ed25519_pk),
        ciphertext=b64u(inner),
        nonce=nonce,
        seq=seq,
        sig=sign_routed(signer, frame.to, seq, nonce),
    )


def forged_header(frame: RoutedFields, signer: KeyPair, **changes: object) -> RoutedFields:
    """A MESSAGE frame with header fields changed (type, session_id, ratchet_pk, pn, n, nonce), resealed."""
    inner = inner_of(frame)
    header = MessageHeader.parse(inner)
    altered = attrs.evolve(header, **changes).pack()  # type: ignore[misc]
    return resealed(frame, altered + inner[MESSAGE_HEADER_BYTES:], signer)


def skip_ahead(session: Session, count: int) -> Session:
    """Our sending chain advanced ``count`` positions as if that many messages had been sent (and lost).

    How an adversarial peer makes the receiver derive and store keys without paying for encryption.
    """
    assert session.sending is not None
    chain_key = session.sending.chain_key
    for _ in range(count):
        chain_key, _ = kdf_ck(chain_key)
    sending = attrs.evolve(session.sending, chain_key=chain_key, n=session.sending.n + count)
    return attrs.evolve(session, sending=sending)


# Curve25519 points of small order as little-endian u-coordinates: canonical, non-canonical (u + p), and
# with the top bit set (X25519 ignores bit 255). Every one must be refused wherever a key is received.
_P = 2**255 - 19
_SMALL_ORDER_U = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    _P - 1,
    _P,
    _P + 1,
]
LOW_ORDER_POINTS = [u.to_bytes(32, "little") for u in _SMALL_ORDER_U] + [
    (u | 1 << 255).to_bytes(32, "little") for u in _SMALL_ORDER_U
]
