"""The v3 Double Ratchet (Signal specification, revision 1): root chain, PN, bounded skipped keys.

State and algorithm follow the spec (§3): a root key, a sending and a receiving chain, our ratchet
key pair and the peer's ratchet public key, message numbers, PN, and the skipped message keys. Two
choices the spec leaves open are made here, each for a reason:

* **The new sending ratchet key is drawn at the next send, not at receipt** (spec §6.5). `decrypt`
  then needs no randomness and is a pure function of (state, frame, time), and our previous ratchet
  secret is deleted as soon as the receiving step used it. `Session.sending is None` means "a DH step
  is owed at the next send"; PN is recorded when the receiving step happens, as in the spec.
* **Both sides can send first.** The handshake leaves the inviter with a sending chain under its
  handshake ephemeral and the invitee with the matching receiving chain (the spec's "initialise
  Bob's sending chain ... from a shared secret"); the invitee's first send performs the first DH step.

Bounds (all checked before any key is derived, so a forged or hostile frame costs bounded time):
at most ``MAX_SKIP`` keys are derived ahead on one chain (for the new chain and for the rest of the
previous chain, each), at most ``MAX_SKIPPED_KEYS`` skipped keys are kept in total across chains
(oldest evicted), each for at most ``SKIPPED_KEY_TTL_MS``; counters stay below 2**32 and never wrap.

Everything the frame carries is authenticated (see `ratchet.v3.wire` for the outer fields): the
AEAD's associated data is ``"agentroom-v3 message" || transcript hash || sender Ed25519 pk ||
recipient Ed25519 pk || header``, the header holding version, type, session id, ratchet key, PN, N
and the nonce. So reflection, splicing between sessions, type confusion and version changes fail.

States are immutable. `encrypt` returns a `Sealed` (new state + frame), `decrypt` an `Opened`
(new state + message); a failed decrypt raises and the caller keeps the state it had, so a rejected
frame changes nothing, by construction. The crash-safety rules are part of the contract:

* **Before a frame leaves**, persist ``Sealed.state``. A crash after that loses at most the frame
  (resend it from an outbox); the message number is never used again.
* **Before a plaintext is released** (handed to a subscriber, handler, or acknowledged to the relay),
  persist ``Opened.state`` together with the message, or record the message first keyed by
  ``Received.message_id`` (idempotently) and then the state. Reloading the state makes any replay of
  the frame fail (`DuplicateMessageError`); restoring an *older* snapshot would accept it again, which
  is why the journal must deduplicate by ``message_id``.
"""

import functools
from typing import Final, Literal, TypeAlias

import attrs

from ratchet.errors import InvalidKeyError
from ratchet.keys import KeyPair, x25519, x25519_public
from ratchet.rand import RandomSource
from ratchet.v3.errors import (
    AuthenticationError,
    DuplicateMessageError,
    MessageTooLargeError,
    SendChainExhaustedError,
    SessionClosedError,
    SessionMismatchError,
    SkipLimitError,
    SkippedKeyExpiredError,
    StaleChainError,
    UnexpectedRatchetKeyError,
    WeakRatchetKeyError,
)
from ratchet.v3.primitives import AEAD_NONCE_BYTES, AEAD_TAG_BYTES, aead_open, aead_seal, kdf_ck, kdf_rk
from ratchet.v3.wire import (
    MAX_FRAME_BYTES,
    MESSAGE_HEADER_BYTES,
    FrameType,
    RoutedFields,
    b64u,
    b64u_strict,
    open_message,
    pack_message_header,
    public_key_text,
    seal_routed,
)

__all__ = [
    "COUNTER_LIMIT",
    "MAX_PLAINTEXT",
    "MAX_RETIRED_RATCHET_KEYS",
    "MAX_SKIP",
    "MAX_SKIPPED_KEYS",
    "SKIPPED_KEY_TTL_MS",
    "MessageKind",
    "Opened",
    "RatchetKeyPair",
    "Received",
    "ReceivingChain",
    "Role",
    "Sealed",
    "SendingChain",
    "Session",
    "SkippedKey",
    "close",
    "decrypt",
    "encrypt",
    "prune",
]

MAX_SKIP: Final = 1000
"""Most message keys one frame may make us derive ahead on one chain (spec MAX_SKIP)."""
MAX_SKIPPED_KEYS: Final = 2000
"""Most skipped keys kept across all chains; beyond it the oldest are evicted."""
SKIPPED_KEY_TTL_MS: Final = 24 * 3_600_000
"""A skipped key older than this is deleted (spec §6.4): a late message after a day is lost."""
MAX_RETIRED_RATCHET_KEYS: Final = 16
"""Earlier peer ratchet keys remembered, so their late frames are refused without a DH step."""
COUNTER_LIMIT: Final = 2**32
"""N and PN travel as u32: a chain holds at most 2**32 messages, and counters never wrap."""
MAX_PLAINTEXT: Final = MAX_FRAME_BYTES - MESSAGE_HEADER_BYTES - AEAD_TAG_BYTES
"""The largest plaintext one MSG frame can carry through a relay (147,358 bytes)."""

LABEL_MESSAGE_AD: Final = b"agentroom-v3 message"

Role: TypeAlias = Literal["inviter", "invitee"]
MessageKind: TypeAlias = Literal["message", "close"]


@attrs.frozen(repr=False)
class RatchetKeyPair:
    """An X25519 ratchet key pair (ours): the secret exists only until the receiving step that uses it."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"RatchetKeyPair({b64u(self.public)[:8]}...)"

    @classmethod
    def from_secret(cls, secret: bytes) -> "RatchetKeyPair":
        return cls(x25519_public(secret), secret)


@attrs.frozen(repr=False)
class SendingChain:
    """Our current sending chain: our ratchet key, the chain key, and the next message number (Ns)."""

    ratchet: RatchetKeyPair
    chain_key: bytes
    n: int

    def __repr__(self) -> str:
        return f"SendingChain({self.ratchet!r}, n={self.n})"


@attrs.frozen(repr=False)
class ReceivingChain:
    """The peer's current chain: its ratchet public key, the chain key, the next expected number (Nr)."""

    ratchet_pk: bytes
    chain_key: bytes
    n: int

    def __repr__(self) -> str:
        return f"ReceivingChain({b64u(self.ratchet_pk)[:8]}..., n={self.n})"


@attrs.frozen(repr=False)
class SkippedKey:
    """The key of message ``n`` on the peer's chain ``ratchet_pk``, kept because a later one came first."""

    ratchet_pk: bytes
    n: int
    key: bytes
    added_at: int

    def __repr__(self) -> str:
        return f"SkippedKey({b64u(self.ratchet_pk)[:8]}...:{self.n}, added_at={self.added_at})"


@attrs.frozen(repr=False)
class Session:
    """One side of a v3 session. Build it with `ratchet.v3.handshake`; persist it with `ratchet.v3.state`."""

    own_pk: str
    peer_pk: str
    role: Role
    session_id: bytes
    transcript_hash: bytes
    features: int
    root_key: bytes
    sending: SendingChain | None
    receiving: ReceivingChain | None
    previous_send_count: int
    skipped: tuple[SkippedKey, ...]
    retired_ratchet_pks: tuple[bytes, ...]
    closed_by_us: bool
    closed_by_peer: bool
    created_at: int
    last_used_at: int

    def __repr__(self) -> str:  # keys never reach a log through repr
        return (
            f"Session(v3, {self.role}, peer={self.peer_pk[:8]}..., id={self.session_id.hex()}, "
            f"sending={self.sending!r}, receiving={self.receiving!r}, skipped={len(self.skipped)})"
        )

    @property
    def session_id_b64u(self) -> str:
        return b64u(self.session_id)

    @property
    def closed(self) -> bool:
        return self.closed_by_us or self.closed_by_peer


@attrs.frozen(repr=False)
class Received:
    """A message the peer sent, authenticated. ``message_id`` is stable across redeliveries of the frame."""

    kind: MessageKind
    plaintext: bytes
    message_id: str
    n: int

    def __repr__(self) -> str:
        return f"Received({self.kind}, {len(self.plaintext)} bytes, id={self.message_id[:8]}...)"


@attrs.frozen
class Sealed:
    """Persist ``state`` durably, *then* send ``frame`` (as a MSG). Never the other way round."""

    state: Session
    frame: RoutedFields


@attrs.frozen
class Opened:
    """Persist ``state`` (and record ``message`` by its id) *before* releasing the plaintext or acking."""

    state: Session
    message: Received


# ── sending ─────────────────────────────────────────────────────────────────────────────────────


def encrypt(session: Session, identity: KeyPair, plaintext: bytes, now_ms: int, rng: RandomSource) -> Sealed:
    """Seal one message for the peer. Draws, in order: a ratchet secret when a DH step is owed, the nonce."""
    return _seal(session, identity, FrameType.MESSAGE, plaintext, now_ms, rng)


def close(session: Session, identity: KeyPair, now_ms: int, rng: RandomSource, reason: bytes = b"") -> Sealed:
    """Seal the authenticated end-of-session marker; afterwards this session sends nothing more.

    The peer learns that the conversation ended here (a relay that drops the tail cannot pass it
    off as a complete conversation); messages it already had in flight are still accepted.
    """
    return _seal(session, identity, FrameType.CLOSE, reason, now_ms, rng)


def _seal(
    session: Session, identity: KeyPair, frame_type: FrameType, plaintext: bytes, now_ms: int, rng: RandomSource
) -> Sealed:
    if public_key_text(identity.ed25519_pk) != session.own_pk:
        raise ValueError("identity does not match the session's own key")
    if session.closed_by_us or session.closed_by_peer:
        raise SessionClosedError("the session is closed; start a new one with a new invite")
    if len(plaintext) > MAX_PLAINTEXT:
        raise MessageTooLargeError(f"{len(plaintext)} bytes exceed the {MAX_PLAINTEXT}-byte frame limit")
    root_key = session.root_key
    sending = session.sending
    if sending is None:  # the DH step owed since the peer's last new ratchet key
        if session.receiving is None:  # pragma: no cover - excluded by construction and by the state reader
            raise AssertionError("a session has a sending or a receiving chain")
        ratchet = RatchetKeyPair.from_secret(rng.x25519_secret())
        root_key, chain_key = kdf_rk(root_key, x25519(ratchet.secret, session.receiving.ratchet_pk))
        sending = SendingChain(ratchet, chain_key, 0)
    if sending.n >= COUNTER_LIMIT:
        raise SendChainExhaustedError("the sending chain is exhausted; the peer must reply before we send again")
    next_chain, message_key = kdf_ck(sending.chain_key)
    nonce = rng.random_bytes(AEAD_NONCE_BYTES)
    header = pack_message_header(
        frame_type, session.session_id, sending.ratchet.public, session.previous_send_count, sending.n, nonce
    )
    associated = _associated_prefix(session.transcript_hash, session.own_pk, session.peer_pk) + header
    box = aead_seal(message_key, nonce, associated, plaintext)
    frame = seal_routed(identity, frame_type, session.peer_pk, header + box, sending.n)
    skipped = session.skipped
    state = _successor(
        session,
        root_key=root_key,
        sending=SendingChain(sending.ratchet, next_chain, sending.n + 1),
        receiving=session.receiving,
        previous_send_count=session.previous_send_count,
        skipped=_unexpired(skipped, now_ms) if skipped else skipped,
        retired_ratchet_pks=session.retired_ratchet_pks,
        closed_by_us=frame_type is FrameType.CLOSE,
        closed_by_peer=session.closed_by_peer,
        last_used_at=now_ms,
    )
    return Sealed(state, frame)


# ── receiving ───────────────────────────────────────────────────────────────────────────────────


def decrypt(session: Session, frame: RoutedFields, now_ms: int, *, signature_verified: bool = False) -> Opened:
    """Accept one MSG frame from the peer, or raise (a `ratchet.v3.errors.V3Error`) and change nothing.

    Order: outer fields and header (`ratchet.v3.wire.open_routed`), then a kept skipped key, then the
    current receiving chain, then a new chain (DH step). A frame under an earlier ratchet key with no
    key kept is refused without any DH computation. ``signature_verified``: see `open_routed`.
    """
    frame_type, header, inner = open_message(
        frame, session.peer_pk, session.own_pk, signature_verified=signature_verified
    )
    if header.session_id != session.session_id:
        raise SessionMismatchError("the frame belongs to another session with this peer")
    header_bytes, box = inner[:MESSAGE_HEADER_BYTES], inner[MESSAGE_HEADER_BYTES:]
    associated = _associated_data(session, session.peer_pk, session.own_pk, header_bytes)
    closes = frame_type is FrameType.CLOSE
    kind: MessageKind = "close" if closes else "message"

    for index, entry in enumerate(session.skipped):
        if entry.n == header.n and entry.ratchet_pk == header.ratchet_pk:
            if now_ms - entry.added_at > SKIPPED_KEY_TTL_MS:
                raise SkippedKeyExpiredError(f"the key kept for late message {header.n} expired")
            plaintext = _open(entry.key, header.nonce, associated, box)
            remaining = session.skipped[:index] + session.skipped[index + 1 :]
            state = _successor(
                session,
                root_key=session.root_key,
                sending=session.sending,
                receiving=session.receiving,
                previous_send_count=session.previous_send_count,
                skipped=_unexpired(remaining, now_ms),
                retired_ratchet_pks=session.retired_ratchet_pks,
                closed_by_us=session.closed_by_us,
                closed_by_peer=session.closed_by_peer or closes,
                last_used_at=now_ms,
            )
            return Opened(state, Received(kind, plaintext, frame.nonce, header.n))

    if session.closed_by_peer:
        raise SessionClosedError("the peer closed this session; only messages sent before its close are accepted")

    receiving = session.receiving
    if receiving is not None and header.ratchet_pk == receiving.ratchet_pk:
        if header.n < receiving.n:
            raise DuplicateMessageError(f"message {header.n} was already received on this chain")
        chain_key = receiving.chain_key
        skipped_here: list[tuple[int, bytes]] = []
        if header.n > receiving.n:  # messages skipped (in order, none: no gap to check, no key to keep)
            _check_gap(header.n - receiving.n, "message number")
            chain_key, skipped_here = _skip(chain_key, receiving.n, header.n)
        next_chain, message_key = kdf_ck(chain_key)
        plaintext = _open(message_key, header.nonce, associated, box)
        skipped = session.skipped
        if skipped or skipped_here:  # else `_store` would return the empty tuple as it is
            skipped = _store(skipped, [(receiving.ratchet_pk, skipped_here)], now_ms)
        state = _successor(
            session,
            root_key=session.root_key,
            sending=session.sending,
            receiving=ReceivingChain(receiving.ratchet_pk, next_chain, header.n + 1),
            previous_send_count=session.previous_send_count,
            skipped=skipped,
            retired_ratchet_pks=session.retired_ratchet_pks,
            closed_by_us=session.closed_by_us,
            closed_by_peer=closes,
            last_used_at=now_ms,
        )
        return Opened(state, Received(kind, plaintext, frame.nonce, header.n))

    if header.ratchet_pk in session.retired_ratchet_pks:
        raise StaleChainError(f"message {header.n} of an earlier chain: already received, expired or evicted")
    if any(entry.ratchet_pk == header.ratchet_pk for entry in session.skipped):
        # An earlier chain whose key left the retired list while some of its keys are still kept: only a
        # peer reusing an old ratchet secret sends this, and taking it as new would store positions twice.
        raise StaleChainError(f"message {header.n} under the ratchet key of an earlier chain")
    sending = session.sending
    if sending is None:
        raise UnexpectedRatchetKeyError("a new ratchet key although we have not sent since the peer's last one")
    _check_gap(header.n, "message number")
    additions: list[tuple[bytes, list[tuple[int, bytes]]]] = []
    if receiving is not None and header.pn > receiving.n:  # the rest of the previous chain (spec: PN)
        _check_gap(header.pn - receiving.n, "previous chain length (PN)")
        additions.append((receiving.ratchet_pk, _skip(receiving.chain_key, receiving.n, header.pn)[1]))
    try:
        dh_output = x25519(sending.ratchet.secret, header.ratchet_pk)
    except InvalidKeyError as exc:
        raise WeakRatchetKeyError("the peer's ratchet key is a low-order point") from exc
    root_key, chain_key = kdf_rk(session.root_key, dh_output)
    chain_key, skipped_here = _skip(chain_key, 0, header.n)
    next_chain, message_key = kdf_ck(chain_key)
    plaintext = _open(message_key, header.nonce, associated, box)
    additions.append((header.ratchet_pk, skipped_here))
    retired = session.retired_ratchet_pks
    if receiving is not None:
        retired = (*retired, receiving.ratchet_pk)[-MAX_RETIRED_RATCHET_KEYS:]
    state = _successor(
        session,
        root_key=root_key,
        sending=None,  # our ratchet secret is spent: the next send draws a new one
        receiving=ReceivingChain(header.ratchet_pk, next_chain, header.n + 1),
        previous_send_count=min(sending.n, COUNTER_LIMIT - 1),  # PN is a u32: an exhausted chain (2**32) says 2**32 - 1
        skipped=_store(session.skipped, additions, now_ms),
        retired_ratchet_pks=retired,
        closed_by_us=session.closed_by_us,
        closed_by_peer=closes,
        last_used_at=now_ms,
    )
    return Opened(state, Received(kind, plaintext, frame.nonce, header.n))


def prune(session: Session, now_ms: int) -> Session:
    """Delete expired skipped keys (the daemon calls this on load and periodically, then persists)."""
    kept = _unexpired(session.skipped, now_ms)
    return session if len(kept) == len(session.skipped) else attrs.evolve(session, skipped=kept)


# ── helpers ─────────────────────────────────────────────────────────────────────────────────────


def _successor(
    session: Session,
    *,
    root_key: bytes,
    sending: SendingChain | None,
    receiving: ReceivingChain | None,
    previous_send_count: int,
    skipped: tuple[SkippedKey, ...],
    retired_ratchet_pks: tuple[bytes, ...],
    closed_by_us: bool,
    closed_by_peer: bool,
    last_used_at: int,
) -> Session:
    """The session after one message: every field that may change is named at each call.

    What ``attrs.evolve`` would build, without its per-call introspection (once per message sent
    or received); the identity fields, session id, transcript hash and creation time carry over.
    """
    return Session(
        session.own_pk,
        session.peer_pk,
        session.role,
        session.session_id,
        session.transcript_hash,
        session.features,
        root_key,
        sending,
        receiving,
        previous_send_count,
        skipped,
        retired_ratchet_pks,
        closed_by_us,
        closed_by_peer,
        session.created_at,
        last_used_at,
    )


def _open(key: bytes, nonce: bytes, associated: bytes, box: bytes) -> bytes:
    plaintext = aead_open(key, nonce, associated, box)
    if plaintext is None:
        raise AuthenticationError("the frame does not authenticate (forged, tampered with, or other keys)")
    return plaintext


def _associated_data(session: Session, sender_pk: str, recipient_pk: str, header: bytes) -> bytes:
    """Fixed-length parts only, so the concatenation parses one way (spec §3.1, CONCAT)."""
    return _associated_prefix(session.transcript_hash, sender_pk, recipient_pk) + header


@functools.lru_cache(maxsize=256)
def _associated_prefix(transcript_hash: bytes, sender_pk: str, recipient_pk: str) -> bytes:
    """The part of the associated data that is the same on every message one way of a session.

    Only public values are kept (the transcript hash and two public keys), and a key that does not
    decode raises every time (``lru_cache`` keeps no exceptions).
    """
    return (
        LABEL_MESSAGE_AD
        + transcript_hash
        + b64u_strict(sender_pk, "sender pk", 32)
        + b64u_strict(recipient_pk, "recipient pk", 32)
    )


def _check_gap(gap: int, what: str) -> None:
    if gap > MAX_SKIP:
        raise SkipLimitError(f"{what} is {gap} ahead; at most {MAX_SKIP} keys are derived ahead")


def _skip(chain_key: bytes, start: int, until: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Advance a chain from message ``start`` to ``until``, returning the message keys passed over."""
    keys = []
    for n in range(start, until):
        chain_key, message_key = kdf_ck(chain_key)
        keys.append((n, message_key))
    return chain_key, keys


def _unexpired(skipped: tuple[SkippedKey, ...], now_ms: int) -> tuple[SkippedKey, ...]:
    if not skipped or all(now_ms - entry.added_at <= SKIPPED_KEY_TTL_MS for entry in skipped):
        return skipped
    return tuple(entry for entry in skipped if now_ms - entry.added_at <= SKIPPED_KEY_TTL_MS)


def _store(
    skipped: tuple[SkippedKey, ...], additions: list[tuple[bytes, list[tuple[int, bytes]]]], now_ms: int
) -> tuple[SkippedKey, ...]:
    """Expired keys out, new keys in, oldest evicted past the cap.

    No chain position can be stored twice: keys are only ever derived for positions at or after the
    receiving chain's next number, and that number only grows.
    """
    if len(skipped) <= MAX_SKIPPED_KEYS and not any(keys for _, keys in additions):  # the usual case: no copies
        return _unexpired(skipped, now_ms)
    kept = list(_unexpired(skipped, now_ms))
    for ratchet_pk, keys in additions:
        kept.extend(SkippedKey(ratchet_pk, n, key, now_ms) for n, key in keys)
    return tuple(kept[-MAX_SKIPPED_KEYS:])
