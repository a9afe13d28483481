"""The agentroom v2 Double Ratchet, byte-compatible with the reference, as immutable states.

Wire behaviour is the reference's (``packages/sdk/src/session.ts``): a symmetric chain step per
message (keyed-BLAKE2b message key, then the chain update), a DH step per conversational turn mixed
straight into the current chain key (there is no root key), XSalsa20-Poly1305 with a random 24-byte
nonce, out-of-order delivery through a buffer of skipped message keys (at most ``MAX_SKIP`` per
message, deleted after ``SKIPPED_KEY_TTL_MS``), and a per-chain replay counter.

Every operation takes a `Session` and returns a new one; a failed decrypt raises and the caller keeps
the session it had, so "a rejected frame changes nothing" holds by construction. Where the reference
has a bug that compatibility does not force, we fix it (PROTOCOL.md lists these):

* a gap larger than ``MAX_SKIP`` is rejected up front (`SkipLimitError`), without deriving or storing
  any key for it;
* a buffered skipped key is deleted only when it opened its message, so a forged frame cannot
  destroy it, and a replayed old-chain frame can never overwrite buffered keys;
* when the first message of a new chain does not open because messages of the previous chain were
  lost, the receiver advances the previous chain (keeping those keys as skipped keys under the
  previous ``ratchet_pk``) until it opens, within the skip window: see `_decrypt_new_chain`;
* the identity's Ed25519 secret never enters our saved state: the ratchet ephemeral is X25519 only
  (the reference keeps a full keypair, whose Ed25519 half it never uses);
* a low-order ``ratchet_pk`` is refused with `WeakRatchetKeyError`;
* ``seq`` must be below 2**32 (the reference silently reduces it modulo 2**32).
"""

import hashlib
import json
from collections.abc import Iterable
from typing import Any, Final, TypeVar

import attrs
import cattrs
import nacl.bindings as sodium
import nacl.exceptions

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import InvalidKeyError, RatchetError
from ratchet.kdf import LABEL_CHAIN, chain_update
from ratchet.keys import KeyPair, x25519, x25519_public
from ratchet.rand import RandomSource
from ratchet.statefile import load_json, strict_converter

__all__ = [
    "MAX_SKIP",
    "SEQ_LIMIT",
    "SKIPPED_KEY_TTL_MS",
    "AuthenticationError",
    "DecryptError",
    "EncryptedMessage",
    "MalformedMessageError",
    "RatchetKeyPair",
    "ReplayError",
    "SendChainExhaustedError",
    "SeqOutOfRangeError",
    "Session",
    "SessionStateError",
    "SkipLimitError",
    "SkippedKey",
    "SkippedKeyExpiredError",
    "WeakRatchetKeyError",
    "decrypt",
    "encrypt",
    "prune_skipped",
    "session_from_json",
    "session_from_reference_json",
    "session_to_json",
    "session_to_reference_json",
]

MAX_SKIP: Final = 100
"""Most message keys one frame may make us derive ahead (and the size cap of the skipped buffer)."""
SKIPPED_KEY_TTL_MS: Final = 5 * 60_000
"""A skipped key older than this (strictly) is deleted, as the reference prunes it."""
SEQ_LIMIT: Final = 2**32
"""seq travels as a JSON number but enters the message key as 4 bytes: larger values would wrap."""
X25519_FIELD_PRIME: Final = 2**255 - 19
"""Canonical X25519 public keys are below it; libsodium never emits another spelling of a point."""

KEY_BYTES: Final = 32
NONCE_BYTES: Final = 24
MAC_BYTES: Final = 16

STATE_FORMAT: Final = "agentroom-session"
STATE_VERSION: Final = 1


# ── errors ──────────────────────────────────────────────────────────────────────────────────────


class DecryptError(RatchetError):
    """A received message was not accepted; the session the caller holds is still the valid one."""


class MalformedMessageError(DecryptError):
    """The nonce, ciphertext or ratchet_pk does not have the shape the protocol requires."""


class SeqOutOfRangeError(MalformedMessageError):
    """seq is negative, not an integer, or at least 2**32 (where the reference's counter wraps)."""


class WeakRatchetKeyError(DecryptError, InvalidKeyError):
    """The sender's ratchet_pk is a low-order X25519 point: no secret could be agreed with it."""


class ReplayError(DecryptError):
    """seq is not newer than the last message accepted on its chain, and no skipped key is buffered for it."""


class SkipLimitError(DecryptError):
    """Accepting the message would mean deriving more than MAX_SKIP message keys ahead."""


class SkippedKeyExpiredError(DecryptError):
    """The buffered key for this late message is older than SKIPPED_KEY_TTL_MS."""


class AuthenticationError(DecryptError):
    """No key we may use opens the box: the frame was tampered with, replayed from an old chain, or forged."""


class SendChainExhaustedError(RatchetError):
    """The send chain reached 2**32 messages; the peer could not tell the next seq from seq 0."""


class SessionStateError(RatchetError):
    """A saved session is corrupt, truncated, or not in a format and version we read."""


# ── state ───────────────────────────────────────────────────────────────────────────────────────


@attrs.frozen(repr=False)
class RatchetKeyPair:
    """Our current sending ratchet key (X25519 only; the reference's unused Ed25519 half is not kept)."""

    public: bytes
    secret: bytes
    public_b64u: str = attrs.field(init=False, eq=False)  # what every frame carries as ratchet_pk

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "public_b64u", b64u_encode(self.public))

    def __repr__(self) -> str:
        return f"RatchetKeyPair(public={self.public.hex()[:16]}...)"

    @classmethod
    def from_secret(cls, secret: bytes) -> "RatchetKeyPair":
        return cls(x25519_public(secret), secret)


@attrs.frozen(repr=False)
class SkippedKey:
    """The message key of a message not yet received: ``"<prefix>:<seq>"`` in the reference's map."""

    prefix: str  # the sender's ratchet_pk (base64url) for the chain the key belongs to
    seq: int
    key: bytes
    added_at: int

    def __repr__(self) -> str:
        return f"SkippedKey({self.prefix[:8]}...:{self.seq}, added_at={self.added_at})"

    @property
    def key_id(self) -> str:
        return f"{self.prefix}:{self.seq}"


@attrs.frozen(repr=False)
class Session:
    """One side of a ratchet session; the reference's ``RatchetState`` with the same fields.

    ``recv_seq`` is -1 before the first message of the current receive chain. ``skipped`` keeps the
    reference map's insertion order, which is also the order its session file lists them in.
    """

    peer_pk: str
    send_chain_key: bytes
    recv_chain_key: bytes
    send_ephemeral: RatchetKeyPair
    recv_ephemeral_pk: bytes
    send_seq: int
    recv_seq: int
    needs_send_dh_step: bool
    skipped: tuple[SkippedKey, ...]
    last_used_at: int

    def __repr__(self) -> str:  # chain keys never reach a log through repr
        return (
            f"Session(peer_pk={self.peer_pk[:8]}..., send_seq={self.send_seq}, recv_seq={self.recv_seq}, "
            f"needs_send_dh_step={self.needs_send_dh_step}, skipped={len(self.skipped)})"
        )

    @classmethod
    def initial(
        cls,
        peer_pk: str,
        send_chain_key: bytes,
        recv_chain_key: bytes,
        own: KeyPair,
        peer_x25519_pk: bytes,
        initiator: bool,
        now_ms: int,
    ) -> "Session":
        """The state right after the handshake, as the reference's ``SessionStore.init`` builds it.

        Both sides start with their identity X25519 key as sending ratchet key and the peer's
        identity X25519 key as receiving one; only the inviter (``initiator``) owes the first DH step,
        so the ratchet alternates strictly from the first message on.
        """
        _require_b64u_key(peer_pk, KEY_BYTES, "peer Ed25519 public key", InvalidKeyError)
        for value, what in (
            (send_chain_key, "send chain key"),
            (recv_chain_key, "receive chain key"),
            (peer_x25519_pk, "peer X25519 public key"),
        ):
            if len(value) != KEY_BYTES:
                raise InvalidKeyError(f"{what} must be {KEY_BYTES} bytes, got {len(value)}")
        return cls(
            peer_pk=peer_pk,
            send_chain_key=send_chain_key,
            recv_chain_key=recv_chain_key,
            send_ephemeral=RatchetKeyPair(own.x25519_pk, own.x25519_sk),
            recv_ephemeral_pk=peer_x25519_pk,
            send_seq=0,
            recv_seq=-1,
            needs_send_dh_step=initiator,
            skipped=(),
            last_used_at=now_ms,
        )


@attrs.frozen
class EncryptedMessage:
    """The fields of a MSG frame that the ratchet produces, base64url as on the wire."""

    ciphertext: str
    nonce: str
    seq: int
    ratchet_pk: str | None


# ── encrypt ─────────────────────────────────────────────────────────────────────────────────────


def encrypt(session: Session, plaintext: bytes, now_ms: int, rng: RandomSource) -> tuple[Session, EncryptedMessage]:
    """Seal one message on the send chain; performs the send DH step first when one is owed.

    Draws randomness in the reference's order, so replayed draws reproduce its frames: for a DH step
    an Ed25519 seed (the reference builds a whole keypair and never uses its Ed25519 half; we draw
    the seed and drop it) and the X25519 secret, then the 24-byte nonce.
    """
    send_chain_key = session.send_chain_key
    send_ephemeral = session.send_ephemeral
    seq = session.send_seq
    if session.needs_send_dh_step:
        rng.ed25519_seed()
        send_ephemeral = RatchetKeyPair.from_secret(rng.x25519_secret())
        send_chain_key = chain_update(send_chain_key, x25519(send_ephemeral.secret, session.recv_ephemeral_pk))
        seq = 0
    elif seq >= SEQ_LIMIT:
        raise SendChainExhaustedError(f"send chain exhausted after {SEQ_LIMIT} messages; the peer must ratchet first")
    mk = _message_key(send_chain_key, seq)
    nonce = rng.random_bytes(NONCE_BYTES)
    box = sodium.crypto_secretbox(plaintext, nonce, mk)
    new_session = Session(  # positional (in field order): keywords cost a third more on every message
        session.peer_pk,
        _next_chain_key(send_chain_key, mk),  # send_chain_key
        session.recv_chain_key,
        send_ephemeral,
        session.recv_ephemeral_pk,
        seq + 1,  # send_seq
        session.recv_seq,
        False,  # needs_send_dh_step
        session.skipped,
        now_ms,  # last_used_at
    )
    return new_session, EncryptedMessage(b64u_encode(box), b64u_encode(nonce), seq, send_ephemeral.public_b64u)


# ── decrypt ─────────────────────────────────────────────────────────────────────────────────────


def decrypt(
    session: Session, ciphertext: str, nonce: str, seq: int, ratchet_pk: str | None, now_ms: int
) -> tuple[Session, bytes]:
    """Open one received message; returns the advanced session and the plaintext.

    Raises a `DecryptError` subclass when the message is not accepted; the session passed in is then
    still the correct one to keep. Order: the skipped-key buffer, then the current receive chain, or
    a new receive chain (DH step) when ``ratchet_pk`` differs from the peer's current one.
    """
    if type(seq) is not int or not 0 <= seq < SEQ_LIMIT:
        raise SeqOutOfRangeError(f"seq must be an integer in 0..{SEQ_LIMIT - 1}, got {seq!r}")
    box = b64u_decode(ciphertext)
    if len(box) < MAC_BYTES:
        raise MalformedMessageError(f"ciphertext too short: {len(box)} bytes, a box has at least {MAC_BYTES}")
    nonce_bytes = b64u_decode(nonce)
    if len(nonce_bytes) != NONCE_BYTES:
        raise MalformedMessageError(f"nonce must be {NONCE_BYTES} bytes, got {len(nonce_bytes)}")
    peer_ratchet_pk = None
    if ratchet_pk is not None:
        peer_ratchet_pk = b64u_decode(ratchet_pk)
        if len(peer_ratchet_pk) != KEY_BYTES:
            raise MalformedMessageError(f"ratchet_pk must be {KEY_BYTES} bytes, got {len(peer_ratchet_pk)}")
        if int.from_bytes(peer_ratchet_pk, "little") >= X25519_FIELD_PRIME:
            # X25519 ignores bit 255 and reduces mod p, so 2**255 - 19 + x names the same point as x: a relay
            # could re-spell an honest key and still have the frame open. libsodium never emits such keys.
            raise MalformedMessageError("ratchet_pk is not a canonical X25519 public key")

    if session.skipped:
        # Keys are filed under the canonical text of the key, so a re-encoded ratchet_pk still finds
        # them; the reference looks frames without ratchet_pk up under ":<seq>", where nothing is stored.
        prefix = "" if peer_ratchet_pk is None else b64u_encode(peer_ratchet_pk)
        for index, entry in enumerate(session.skipped):
            if entry.seq == seq and entry.prefix == prefix:
                return _decrypt_skipped(session, index, box, nonce_bytes, now_ms)

    if peer_ratchet_pk is None or peer_ratchet_pk == session.recv_ephemeral_pk:
        return _decrypt_current_chain(session, box, nonce_bytes, seq, now_ms)
    return _decrypt_new_chain(session, box, nonce_bytes, seq, peer_ratchet_pk, now_ms)


def _open(box: bytes, nonce: bytes, key: bytes) -> bytes | None:
    try:
        plaintext: bytes = sodium.crypto_secretbox_open(box, nonce, key)
    except nacl.exceptions.CryptoError:
        return None
    return plaintext


def _decrypt_skipped(session: Session, index: int, box: bytes, nonce: bytes, now_ms: int) -> tuple[Session, bytes]:
    """A late message whose key we buffered: the key is used once, and only deleted when it opened."""
    entry = session.skipped[index]
    if now_ms - entry.added_at > SKIPPED_KEY_TTL_MS:
        raise SkippedKeyExpiredError(f"the key for late message {entry.seq} expired (kept {SKIPPED_KEY_TTL_MS} ms)")
    plaintext = _open(box, nonce, entry.key)
    if plaintext is None:  # the reference deletes the key first: one forged frame destroyed the real message
        raise AuthenticationError("message failed authentication with its buffered key; the key is kept")
    # As in the reference, only the buffer changes: lastUsedAt tracks the chains, not the buffer.
    # (Built directly rather than with attrs.evolve, which costs several times more per message.)
    remaining = session.skipped[:index] + session.skipped[index + 1 :]
    new_session = Session(
        session.peer_pk,
        session.send_chain_key,
        session.recv_chain_key,
        session.send_ephemeral,
        session.recv_ephemeral_pk,
        session.send_seq,
        session.recv_seq,
        session.needs_send_dh_step,
        remaining,  # skipped
        session.last_used_at,
    )
    return new_session, plaintext


# The symmetric step on every message: kdf.message_key and kdf.chain_update computed the same way,
# minus their argument checks (seq is already known to be below 2**32, keys are 32 bytes), because
# this runs for every message and every skipped key. The transcript vectors pin both to the reference.
_CHAIN_EXPAND: Final = LABEL_CHAIN.encode("ascii") + b"\x01"
_blake2b = hashlib.blake2b


def _message_key(chain_key: bytes, seq: int) -> bytes:
    return _blake2b(seq.to_bytes(4, "big"), digest_size=KEY_BYTES, key=chain_key).digest()


def _next_chain_key(chain_key: bytes, message_key: bytes) -> bytes:
    prk = _blake2b(message_key, digest_size=KEY_BYTES, key=chain_key).digest()
    return _blake2b(_CHAIN_EXPAND, digest_size=KEY_BYTES, key=prk).digest()


def _advance(chain_key: bytes, first_seq: int, stop_seq: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Step a chain from position ``first_seq`` to ``stop_seq``, returning the keys passed over."""
    keys = []
    for skipped_seq in range(first_seq, stop_seq):
        mk = _message_key(chain_key, skipped_seq)
        keys.append((skipped_seq, mk))
        chain_key = _next_chain_key(chain_key, mk)
    return chain_key, keys


def _decrypt_current_chain(session: Session, box: bytes, nonce: bytes, seq: int, now_ms: int) -> tuple[Session, bytes]:
    if seq <= session.recv_seq:
        raise ReplayError(f"replay detected: seq {seq} <= last seen {session.recv_seq}")
    first = session.recv_seq + 1
    if seq - first > MAX_SKIP:
        raise SkipLimitError(f"seq {seq} would skip {seq - first} messages (at most {MAX_SKIP})")
    passed: list[tuple[int, bytes]] = []
    if seq == first:  # the common case: no skipped keys to build
        chain_key = session.recv_chain_key
    else:
        chain_key, passed = _advance(session.recv_chain_key, first, seq)
    mk = _message_key(chain_key, seq)
    plaintext = _open(box, nonce, mk)
    if plaintext is None:
        raise AuthenticationError(f"message {seq} failed authentication on the current chain")
    skipped = session.skipped
    if passed:
        skipped = _store_skipped(skipped, [(b64u_encode(session.recv_ephemeral_pk), passed)], now_ms)
    new_session = Session(  # positional, in field order, as in encrypt
        session.peer_pk,
        session.send_chain_key,
        _next_chain_key(chain_key, mk),  # recv_chain_key
        session.send_ephemeral,
        session.recv_ephemeral_pk,
        session.send_seq,
        seq,  # recv_seq
        session.needs_send_dh_step,
        skipped,
        now_ms,  # last_used_at
    )
    return new_session, plaintext


def _decrypt_new_chain(
    session: Session, box: bytes, nonce: bytes, seq: int, peer_ratchet_pk: bytes, now_ms: int
) -> tuple[Session, bytes]:
    """The first message we see under a new peer ratchet key: the receive DH step.

    The sender built its new chain as chain_update(its send chain key, DH) where its send chain key
    had passed every message it sent on the previous chain. The reference receiver mixes the DH output
    into its *own* receive chain key, which only matches when it has received the whole previous
    chain. So we try lag = 0, 1, 2, ... messages of the previous chain still in flight: advance the
    previous chain by ``lag`` (those keys become skipped keys under the previous ratchet_pk, so the
    late messages still open), mix in the DH output, step to ``seq``, and open. lag = 0 is the
    reference's own computation. Keys derived in one attempt (lag previous-chain keys plus ``seq``
    new-chain keys) stay within MAX_SKIP, which also bounds the work a forged frame can cause.
    """
    if seq > MAX_SKIP:
        raise SkipLimitError(f"seq {seq} on a new chain would skip {seq} messages (at most {MAX_SKIP})")
    try:
        dh_output = x25519(session.send_ephemeral.secret, peer_ratchet_pk)
    except InvalidKeyError as exc:
        raise WeakRatchetKeyError("ratchet_pk is a low-order X25519 point; message rejected") from exc
    previous_first = session.recv_seq + 1
    max_lag = min(MAX_SKIP - seq, SEQ_LIMIT - previous_first)
    previous_chain = session.recv_chain_key
    previous_passed: list[tuple[int, bytes]] = []
    for lag in range(max_lag + 1):
        if lag:
            previous_seq = previous_first + lag - 1
            previous_mk = _message_key(previous_chain, previous_seq)
            previous_passed.append((previous_seq, previous_mk))
            previous_chain = _next_chain_key(previous_chain, previous_mk)
        chain_key, passed = _advance(chain_update(previous_chain, dh_output), 0, seq)
        mk = _message_key(chain_key, seq)
        plaintext = _open(box, nonce, mk)
        if plaintext is None:
            continue
        additions = [(b64u_encode(session.recv_ephemeral_pk), previous_passed), (b64u_encode(peer_ratchet_pk), passed)]
        skipped = _store_skipped(session.skipped, additions, now_ms) if lag or seq else session.skipped
        new_session = Session(
            peer_pk=session.peer_pk,
            send_chain_key=session.send_chain_key,
            recv_chain_key=_next_chain_key(chain_key, mk),
            send_ephemeral=session.send_ephemeral,
            recv_ephemeral_pk=peer_ratchet_pk,
            send_seq=session.send_seq,
            recv_seq=seq,
            needs_send_dh_step=True,
            skipped=skipped,
            last_used_at=now_ms,
        )
        return new_session, plaintext
    raise AuthenticationError(
        f"message {seq} under a new ratchet key failed authentication (tried {max_lag + 1} previous-chain positions)"
    )


def _store_skipped(
    current: tuple[SkippedKey, ...], additions: Iterable[tuple[str, list[tuple[int, bytes]]]], now_ms: int
) -> tuple[SkippedKey, ...]:
    """Add skipped keys the way the reference does (expired entries pruned first), with two fixes.

    An existing entry is never overwritten (only a key that opened its message is ever stored, and
    the first one stored for an id is the one that belongs to it), and the buffer is capped at
    MAX_SKIP entries by dropping the oldest, as the reference's periodic prune would.
    """
    kept = [entry for entry in current if now_ms - entry.added_at <= SKIPPED_KEY_TTL_MS]
    known = {(entry.prefix, entry.seq) for entry in kept}
    for prefix, keys in additions:
        for seq, key in keys:
            if (prefix, seq) not in known:
                known.add((prefix, seq))
                kept.append(SkippedKey(prefix, seq, key, now_ms))
    return _cap(kept)


def _cap(entries: list[SkippedKey]) -> tuple[SkippedKey, ...]:
    excess = len(entries) - MAX_SKIP
    if excess <= 0:
        return tuple(entries)
    oldest = set(sorted(range(len(entries)), key=lambda i: entries[i].added_at)[:excess])  # stable, like JS sort
    return tuple(entry for i, entry in enumerate(entries) if i not in oldest)


def prune_skipped(session: Session, now_ms: int) -> Session:
    """Drop expired skipped keys, then the oldest beyond MAX_SKIP (the reference's ``pruneSkippedInPlace``).

    The daemon calls this when it loads sessions and periodically, so that keys of messages that never
    arrive do not outlive their lifetime on disk.
    """
    kept = [entry for entry in session.skipped if now_ms - entry.added_at <= SKIPPED_KEY_TTL_MS]
    capped = _cap(kept)
    if len(capped) == len(session.skipped):
        return session
    return attrs.evolve(session, skipped=capped)


# ── our saved-state format ──────────────────────────────────────────────────────────────────────


@attrs.frozen
class _EphemeralV1:
    x25519_pk: str
    x25519_sk: str


@attrs.frozen
class _SkippedV1:
    ratchet_pk: str
    seq: int
    key: str
    added_at: int


@attrs.frozen
class _SessionFileV1:
    format: str
    version: int
    peer_pk: str
    send_chain_key: str
    recv_chain_key: str
    send_ephemeral: _EphemeralV1
    recv_ephemeral_pk: str
    send_seq: int
    recv_seq: int
    needs_send_dh_step: bool
    skipped: list[_SkippedV1]
    last_used_at: int


@attrs.frozen
class _ReferenceKeypair:
    ed25519_pk: str
    ed25519_sk: str
    x25519_pk: str
    x25519_sk: str


@attrs.frozen
class _ReferenceSkipped:
    key: str
    addedAt: int


@attrs.frozen
class _ReferenceSessionFile:  # field names as the reference writes them
    peerPk: str
    sendChainKey: str
    recvChainKey: str
    sendEphemeral: _ReferenceKeypair
    recvEphemeralPk: str
    sendSeq: int
    recvSeq: int
    needsSendDhStep: bool
    skippedMessageKeys: list[tuple[str, _ReferenceSkipped]]
    lastUsedAt: int


_T = TypeVar("_T")


_OUR_FORMAT = strict_converter(forbid_extra_keys=True)
_REFERENCE_FORMAT = strict_converter(forbid_extra_keys=False)  # the reference ignores unknown fields


def session_to_json(session: Session) -> bytes:
    """Our saved form: versioned JSON holding only what the ratchet needs (no Ed25519 secret at all)."""
    document = _SessionFileV1(
        format=STATE_FORMAT,
        version=STATE_VERSION,
        peer_pk=session.peer_pk,
        send_chain_key=b64u_encode(session.send_chain_key),
        recv_chain_key=b64u_encode(session.recv_chain_key),
        send_ephemeral=_EphemeralV1(
            b64u_encode(session.send_ephemeral.public), b64u_encode(session.send_ephemeral.secret)
        ),
        recv_ephemeral_pk=b64u_encode(session.recv_ephemeral_pk),
        send_seq=session.send_seq,
        recv_seq=session.recv_seq,
        needs_send_dh_step=session.needs_send_dh_step,
        skipped=[_SkippedV1(e.prefix, e.seq, b64u_encode(e.key), e.added_at) for e in session.skipped],
        last_used_at=session.last_used_at,
    )
    return (json.dumps(_OUR_FORMAT.unstructure(document), indent=2) + "\n").encode("utf-8")


def session_from_json(data: bytes) -> Session:
    """Read `session_to_json` output; anything else raises `SessionStateError` saying what is wrong."""
    raw = _parse_json_object(data)
    if raw.get("format") != STATE_FORMAT:
        raise SessionStateError(f"not an agentroom session state (format {raw.get('format')!r})")
    if raw.get("version") != STATE_VERSION:
        raise SessionStateError(f"unsupported session state version {raw.get('version')!r} (we read {STATE_VERSION})")
    document = _structure(_OUR_FORMAT, raw, _SessionFileV1)
    canonical = _canonical_key
    send_secret = canonical(document.send_ephemeral.x25519_sk, "send_ephemeral.x25519_sk")
    skipped = [
        SkippedKey(
            _canonical_prefix(entry.ratchet_pk, f"skipped[{i}].ratchet_pk"),
            entry.seq,
            canonical(entry.key, f"skipped[{i}].key"),
            entry.added_at,
        )
        for i, entry in enumerate(document.skipped)
    ]
    if len(skipped) > MAX_SKIP:
        raise SessionStateError(f"{len(skipped)} skipped keys stored; at most {MAX_SKIP} can be")
    return _checked_session(
        peer_pk=_canonical_prefix(document.peer_pk, "peer_pk"),
        send_chain_key=canonical(document.send_chain_key, "send_chain_key"),
        recv_chain_key=canonical(document.recv_chain_key, "recv_chain_key"),
        send_ephemeral=_ephemeral(
            canonical(document.send_ephemeral.x25519_pk, "send_ephemeral.x25519_pk"), send_secret
        ),
        recv_ephemeral_pk=canonical(document.recv_ephemeral_pk, "recv_ephemeral_pk"),
        send_seq=document.send_seq,
        recv_seq=document.recv_seq,
        needs_send_dh_step=document.needs_send_dh_step,
        skipped=skipped,
        last_used_at=document.last_used_at,
    )


# ── the reference's session-file text ───────────────────────────────────────────────────────────


def session_to_reference_json(session: Session, ephemeral_ed25519_pk: bytes, ephemeral_ed25519_sk: bytes) -> str:
    """The reference's ``serializeSession`` text (its ``sessions/<peer>.json``), for vector comparison.

    The reference stores a full keypair as ``sendEphemeral``; the Ed25519 half (the identity's own
    keys before the first rotation, an unused random keypair after) is not part of our state, so the
    caller supplies it. Keep this out of production paths: it is how the identity secret would leak.
    """
    document = {
        "peerPk": session.peer_pk,
        "sendChainKey": b64u_encode(session.send_chain_key),
        "recvChainKey": b64u_encode(session.recv_chain_key),
        "sendEphemeral": {
            "ed25519_pk": b64u_encode(ephemeral_ed25519_pk),
            "ed25519_sk": b64u_encode(ephemeral_ed25519_sk),
            "x25519_pk": b64u_encode(session.send_ephemeral.public),
            "x25519_sk": b64u_encode(session.send_ephemeral.secret),
        },
        "recvEphemeralPk": b64u_encode(session.recv_ephemeral_pk),
        "sendSeq": session.send_seq,
        "recvSeq": session.recv_seq,
        "needsSendDhStep": session.needs_send_dh_step,
        "skippedMessageKeys": [[e.key_id, {"key": b64u_encode(e.key), "addedAt": e.added_at}] for e in session.skipped],
        "lastUsedAt": session.last_used_at,
    }
    # JSON.stringify(value, null, 2) == json.dumps(indent=2) for these values (ASCII strings, ints, bools).
    return json.dumps(document, indent=2)


def session_from_reference_json(text: str) -> Session:
    """Import a reference session file; its ``sendEphemeral`` Ed25519 half is read and dropped.

    Keys are decoded leniently, as the reference decodes them. Beyond MAX_SKIP skipped keys, the
    oldest are dropped, as the reference's own prune does when its client next connects.
    """
    # surrogatepass: a lone surrogate in the text becomes bytes that are not UTF-8, refused as such below
    raw = _parse_json_object(text.encode("utf-8", "surrogatepass"))
    document = _structure(_REFERENCE_FORMAT, raw, _ReferenceSessionFile)
    ephemeral = document.sendEphemeral
    _lenient_key(ephemeral.ed25519_pk, 32, "sendEphemeral.ed25519_pk")
    _lenient_key(ephemeral.ed25519_sk, 64, "sendEphemeral.ed25519_sk")
    skipped = []
    for i, (key_id, value) in enumerate(document.skippedMessageKeys):
        prefix, separator, seq_text = key_id.rpartition(":")
        if not separator or not seq_text.isascii() or not seq_text.isdigit():
            raise SessionStateError(f"skippedMessageKeys[{i}]: id {key_id!r} is not '<ratchet_pk>:<seq>'")
        if len(seq_text) > len(str(SEQ_LIMIT)):  # int() of a very long one would raise a bare ValueError
            raise SessionStateError(f"skippedMessageKeys[{i}]: skipped key seq out of range")
        _lenient_key(prefix, KEY_BYTES, f"skippedMessageKeys[{i}] ratchet_pk")
        skipped.append(
            SkippedKey(prefix, int(seq_text), _lenient_key(value.key, KEY_BYTES, "skipped key"), value.addedAt)
        )
    return _checked_session(
        peer_pk=document.peerPk,
        send_chain_key=_lenient_key(document.sendChainKey, KEY_BYTES, "sendChainKey"),
        recv_chain_key=_lenient_key(document.recvChainKey, KEY_BYTES, "recvChainKey"),
        send_ephemeral=_ephemeral(
            _lenient_key(ephemeral.x25519_pk, KEY_BYTES, "sendEphemeral.x25519_pk"),
            _lenient_key(ephemeral.x25519_sk, KEY_BYTES, "sendEphemeral.x25519_sk"),
        ),
        recv_ephemeral_pk=_lenient_key(document.recvEphemeralPk, KEY_BYTES, "recvEphemeralPk"),
        send_seq=document.sendSeq,
        recv_seq=document.recvSeq,
        needs_send_dh_step=document.needsSendDhStep,
        skipped=list(_cap(skipped)),
        last_used_at=document.lastUsedAt,
    )


# ── shared validation ───────────────────────────────────────────────────────────────────────────


def _parse_json_object(data: bytes) -> dict[str, Any]:
    try:
        raw = load_json(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise SessionStateError(f"session state is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise SessionStateError(f"session state must be a JSON object, got {type(raw).__name__}")
    return raw


def _structure(converter: cattrs.Converter, raw: dict[str, Any], kind: type[_T]) -> _T:
    try:
        return converter.structure(raw, kind)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(cattrs.transform_error(exc, path="state"))
        raise SessionStateError(f"malformed session state: {problems}") from exc
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # cattrs lets a few through unwrapped
        raise SessionStateError(f"malformed session state: {exc}") from exc


def _require_b64u_key(text: str, length: int, what: str, error: type[RatchetError]) -> bytes:
    raw = b64u_decode(text)
    if len(raw) != length:
        raise error(f"{what}: expected {length} bytes of base64url, got {len(raw)}")
    return raw


def _lenient_key(text: str, length: int, what: str) -> bytes:
    return _require_b64u_key(text, length, what, SessionStateError)


def _canonical_key(text: str, what: str) -> bytes:
    """Our own files hold exactly what `b64u_encode` wrote; anything else means the file was altered."""
    raw = _lenient_key(text, KEY_BYTES, what)
    if b64u_encode(raw) != text:
        raise SessionStateError(f"{what}: not canonical base64url")
    return raw


def _canonical_prefix(text: str, what: str) -> str:
    _canonical_key(text, what)
    return text


def _ephemeral(public: bytes, secret: bytes) -> RatchetKeyPair:
    if x25519_public(secret) != public:
        raise SessionStateError("send ephemeral: public key does not belong to the secret key")
    return RatchetKeyPair(public, secret)


def _checked_session(
    *,
    peer_pk: str,
    send_chain_key: bytes,
    recv_chain_key: bytes,
    send_ephemeral: RatchetKeyPair,
    recv_ephemeral_pk: bytes,
    send_seq: int,
    recv_seq: int,
    needs_send_dh_step: bool,
    skipped: list[SkippedKey],
    last_used_at: int,
) -> Session:
    """The invariants both readers enforce, so a loaded session can never make the ratchet misbehave."""
    _require_b64u_key(peer_pk, KEY_BYTES, "peer public key", SessionStateError)
    if not 0 <= send_seq <= SEQ_LIMIT:
        raise SessionStateError(f"send seq {send_seq} out of range 0..{SEQ_LIMIT}")
    if not -1 <= recv_seq < SEQ_LIMIT:
        raise SessionStateError(f"receive seq {recv_seq} out of range -1..{SEQ_LIMIT - 1}")
    seen: set[tuple[str, int]] = set()
    for entry in skipped:
        if not 0 <= entry.seq < SEQ_LIMIT:
            raise SessionStateError(f"skipped key seq {entry.seq} out of range")
        if (entry.prefix, entry.seq) in seen:
            raise SessionStateError(f"skipped key {entry.prefix[:8]}...:{entry.seq} stored twice")
        seen.add((entry.prefix, entry.seq))
    return Session(
        peer_pk=peer_pk,
        send_chain_key=send_chain_key,
        recv_chain_key=recv_chain_key,
        send_ephemeral=send_ephemeral,
        recv_ephemeral_pk=recv_ephemeral_pk,
        send_seq=send_seq,
        recv_seq=recv_seq,
        needs_send_dh_step=needs_send_dh_step,
        skipped=tuple(skipped),
        last_used_at=last_used_at,
    )
