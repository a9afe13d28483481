"""The v3 handshake: Noise ``IKpsk1`` with the invite secret as PSK, then the Double Ratchet.

::

    prologue = "agentroom-v3 handshake" || 0x00 || invite binding || invitee Ed25519 pk
    <- s                                     (the inviter's X25519 key, from the invite)
    ...
    -> [header] e, es, s, ss, psk, payload   HANDSHAKE_INIT     (INVITE_CLAIM -> SESSION_INIT)
    <- [header] e, ee, se, payload           HANDSHAKE_RESPONSE (SESSION_ACK)

``[header]`` is the frame's cleartext prefix (version, type, and for message 1 the invite id), mixed
into the transcript hash before the message's tokens, so nothing in a frame travels unauthenticated.
The invite binding (`ratchet.v3.invite.invite_binding`: version, features, id, expiry, both inviter
keys, relay URL) and both Ed25519 identities are in the prologue: a changed invite, another relay,
a relay rewriting ``from``, or a stripped version or capability makes the handshake fail.

What each side proves:

* **The invitee** knows the invite secret (psk: without it message 1's payload does not open, and a
  relay that claims the invite gets nothing, not even a burnt invite), holds its X25519 key (``ss``)
  and its Ed25519 identity: the payload carries its signature over the transcript hash ``h`` at that
  point, which binds the routing identity (``from``) to the keys used and resists key-compromise
  impersonation (a thief of the inviter's keys still cannot pose as a given invitee).
* **The inviter** holds the X25519 key the invite names (``es``, ``se``) and knows the secret.
* Fresh ephemerals on both sides: a replayed message 1 never yields the same keys (``ee``).

Message payloads: message 1 carries ``features u16 || Ed25519 signature``, message 2 ``features u16``.
The features the session uses are the intersection of the invite's and both payloads'.

After message 2 both sides derive ``root_key || chain_key = HKDF(ck, h, "agentroom-v3 split")``
and ``session_id = BLAKE2b-128("agentroom-v3 session id" || h)``; the transcript hash ``h`` itself
becomes part of every message's associated data.

What the daemon does with it:

* invitee: `start_handshake` → persist ``Started.pending`` → send ``Started.claim`` (INVITE_CLAIM);
  on SESSION_ACK from the inviter: `finish_handshake` → persist the session, delete the pending state.
* inviter: on SESSION_INIT: `respond` with its `InviteRegistry` → persist ``Accepted.registry`` and
  ``Accepted.session`` (one atomic step, or registry first) → send ``Accepted.frame`` (SESSION_ACK).
  Any `HandshakeRejected` is dropped and counted by its ``reason``; the registry is unchanged.
"""

import hashlib
import struct
from typing import Final

import attrs

from ratchet.errors import InvalidKeyError
from ratchet.invite import EXPIRY_GRACE_MS, InviteExpiredError, InviteMalformedError
from ratchet.keys import KeyPair, verify, x25519
from ratchet.rand import RandomSource
from ratchet.v3.errors import (
    AuthenticationError,
    HandshakeRejected,
    MalformedFrameError,
    RejectReason,
    WeakRatchetKeyError,
    WrongPeerError,
)
from ratchet.v3.invite import SUPPORTED_FEATURES, Invite, InviteRegistry, IssuedInvite, RedeemedInvite, invite_binding
from ratchet.v3.noise import SymmetricState
from ratchet.v3.primitives import KEY_BYTES, hkdf
from ratchet.v3.session import RatchetKeyPair, ReceivingChain, SendingChain, Session
from ratchet.v3.wire import (
    ClaimFields,
    FrameType,
    InitFrame,
    ResponseFrame,
    RoutedFields,
    b64u,
    b64u_strict,
    open_routed,
    seal_routed,
)

__all__ = [
    "Accepted",
    "PendingHandshake",
    "Started",
    "finish_handshake",
    "respond",
    "start_handshake",
]

LABEL_PROLOGUE: Final = b"agentroom-v3 handshake\x00"
LABEL_INVITEE_SIGNATURE: Final = b"agentroom-v3 invitee signature"
LABEL_SPLIT: Final = b"agentroom-v3 split"
LABEL_SESSION_ID: Final = b"agentroom-v3 session id"
_FEATURES: Final = struct.Struct(">H")


@attrs.frozen(repr=False)
class PendingHandshake:
    """The invitee between INVITE_CLAIM and SESSION_ACK. Persist it before the claim leaves.

    It holds the Noise state after message 1 (``h``, ``ck``: ``ck`` already depends on the invite
    secret, the secret itself is not kept) and our handshake ephemeral, plus the claim itself so the
    daemon can resend the very same frame after a reconnect. Delete it once the session exists.
    """

    own_pk: str
    inviter_pk: str
    inviter_x25519_pk: bytes
    invite_id: str
    expires_at: int
    server_url: str
    features: int
    handshake_hash: bytes
    chaining_key: bytes
    ephemeral: RatchetKeyPair
    claim: ClaimFields
    created_at: int

    def __repr__(self) -> str:
        return f"PendingHandshake(invite={self.invite_id}, inviter={self.inviter_pk[:8]}...)"


@attrs.frozen
class Started:
    """Persist ``pending``, then send ``claim`` as INVITE_CLAIM."""

    pending: PendingHandshake
    claim: ClaimFields


@attrs.frozen
class Accepted:
    """Persist ``registry`` and ``session``, then send ``frame`` as SESSION_ACK."""

    registry: InviteRegistry
    session: Session
    frame: RoutedFields


def _prologue(binding: bytes, invitee_ed25519_pk: bytes) -> bytes:
    return LABEL_PROLOGUE + binding + invitee_ed25519_pk


def _split(symmetric: SymmetricState) -> tuple[bytes, bytes, bytes]:
    """(root key, the inviter's first sending chain key, session id) from the finished handshake."""
    out = hkdf(symmetric.ck, symmetric.h, LABEL_SPLIT, 2 * KEY_BYTES)
    session_id = hashlib.blake2b(LABEL_SESSION_ID + symmetric.h, digest_size=16).digest()
    return out[:KEY_BYTES], out[KEY_BYTES:], session_id


def _features(payload: bytes) -> int:
    value: int = _FEATURES.unpack_from(payload)[0]
    return value


# ── invitee ─────────────────────────────────────────────────────────────────────────────────────


def start_handshake(
    identity: KeyPair, invite: Invite, now_ms: int, rng: RandomSource, *, features: int = SUPPORTED_FEATURES
) -> Started:
    """Message 1 for ``invite`` (from `ratchet.v3.invite.parse_invite_url`). Draws the ephemeral secret."""
    own_ed25519 = identity.ed25519_pk
    inviter_ed25519 = b64u_strict(invite.inviter_pk, "inviter pk", 32)
    if inviter_ed25519 == own_ed25519:
        raise InviteMalformedError("this invite was created by our own identity; someone else must accept it")
    if now_ms > invite.expires_at + EXPIRY_GRACE_MS:
        raise InviteExpiredError()
    symmetric = SymmetricState.initialize()
    symmetric.mix_hash(_prologue(invite.binding, own_ed25519))
    symmetric.mix_hash(invite.inviter_x25519_pk)  # pre-message: <- s
    ephemeral = RatchetKeyPair.from_secret(rng.x25519_secret())
    header = InitFrame(invite.invite_id, b"", b"", b"").header
    symmetric.mix_hash(header)
    symmetric.mix_hash(ephemeral.public)  # e
    symmetric.mix_key(ephemeral.public)  # (PSK handshakes also mix e into the key)
    try:
        symmetric.mix_key(x25519(ephemeral.secret, invite.inviter_x25519_pk))  # es
        encrypted_static = symmetric.encrypt_and_hash(identity.x25519_pk)  # s
        symmetric.mix_key(x25519(identity.x25519_sk, invite.inviter_x25519_pk))  # ss
    except InvalidKeyError as exc:
        raise InviteMalformedError("malformed invite: the inviter's X25519 key is a low-order point") from exc
    symmetric.mix_key_and_hash(invite.secret)  # psk
    signature = identity.sign(LABEL_INVITEE_SIGNATURE + symmetric.h)
    encrypted_payload = symmetric.encrypt_and_hash(_FEATURES.pack(features) + signature)
    inner = InitFrame(invite.invite_id, ephemeral.public, encrypted_static, encrypted_payload).pack()
    routed = seal_routed(identity, FrameType.HANDSHAKE_INIT, invite.inviter_pk, inner, 0)
    claim = ClaimFields(invite.invite_id, routed.from_pk, routed.ciphertext, routed.nonce, routed.sig)
    pending = PendingHandshake(
        own_pk=b64u(own_ed25519),
        inviter_pk=invite.inviter_pk,
        inviter_x25519_pk=invite.inviter_x25519_pk,
        invite_id=invite.invite_id,
        expires_at=invite.expires_at,
        server_url=invite.server_url,
        features=features & invite.features,
        handshake_hash=symmetric.h,
        chaining_key=symmetric.ck,
        ephemeral=ephemeral,
        claim=claim,
        created_at=now_ms,
    )
    return Started(pending, claim)


def finish_handshake(pending: PendingHandshake, identity: KeyPair, frame: RoutedFields, now_ms: int) -> Session:
    """The invitee's session from the inviter's SESSION_ACK; raises (and changes nothing) if it is not genuine.

    Errors: `MalformedFrameError` (and subclasses) for a frame that is not a v3 HANDSHAKE_RESPONSE,
    `WrongPeerError` for the wrong sender or a bad routed signature, `AuthenticationError` when the
    response does not come from the holder of the inviter's key and the invite secret.
    """
    if b64u(identity.ed25519_pk) != pending.own_pk:
        raise ValueError("identity does not match the pending handshake")
    _, inner = open_routed(frame, pending.inviter_pk, pending.own_pk)
    response = ResponseFrame.parse(inner)
    symmetric = SymmetricState(pending.handshake_hash, pending.chaining_key)
    symmetric.mix_hash(response.header)
    symmetric.mix_hash(response.ephemeral)  # e
    symmetric.mix_key(response.ephemeral)
    try:
        symmetric.mix_key(x25519(pending.ephemeral.secret, response.ephemeral))  # ee
        symmetric.mix_key(x25519(identity.x25519_sk, response.ephemeral))  # se
    except InvalidKeyError as exc:
        raise WeakRatchetKeyError("the inviter's handshake ephemeral is a low-order point") from exc
    payload = symmetric.decrypt_and_hash(response.encrypted_payload)
    if payload is None:
        raise AuthenticationError("SESSION_ACK does not authenticate: not from the inviter, or altered")
    root_key, chain_key, session_id = _split(symmetric)
    return Session(
        own_pk=pending.own_pk,
        peer_pk=pending.inviter_pk,
        role="invitee",
        session_id=session_id,
        transcript_hash=symmetric.h,
        features=pending.features & _features(payload),
        root_key=root_key,
        sending=None,  # our first send performs the first DH step
        receiving=ReceivingChain(response.ephemeral, chain_key, 0),
        previous_send_count=0,
        skipped=(),
        retired_ratchet_pks=(),
        closed_by_us=False,
        closed_by_peer=False,
        created_at=now_ms,
        last_used_at=now_ms,
    )


# ── inviter ─────────────────────────────────────────────────────────────────────────────────────


def respond(
    registry: InviteRegistry,
    identity: KeyPair,
    frame: RoutedFields,
    now_ms: int,
    rng: RandomSource,
    *,
    relay_url: str | None = None,
    features: int = SUPPORTED_FEATURES,
) -> Accepted:
    """Accept a SESSION_INIT for an invite we issued and nobody redeemed, or raise `HandshakeRejected`.

    ``relay_url`` is the URL of the relay this frame came through; when given, it must be the one the
    invite was issued for. Draws our handshake ephemeral secret (after every check has passed).
    """
    own_pk = b64u(identity.ed25519_pk)
    if frame.from_pk == own_pk:
        raise HandshakeRejected("own_invite", "SESSION_INIT from our own identity")
    try:
        invitee_ed25519 = b64u_strict(frame.from_pk, "from", 32)
        _, inner = open_routed(frame, frame.from_pk, own_pk)
        init = InitFrame.parse(inner)
    except WrongPeerError as exc:
        raise HandshakeRejected("bad_signature", str(exc)) from exc
    except MalformedFrameError as exc:
        raise HandshakeRejected("malformed", str(exc)) from exc
    record = _usable_invite(registry, init.invite_id, now_ms, relay_url)

    symmetric = SymmetricState.initialize()
    binding = invite_binding(
        record.features, record.invite_id, record.expires_at, identity.ed25519_pk, identity.x25519_pk, record.server_url
    )
    symmetric.mix_hash(_prologue(binding, invitee_ed25519))
    symmetric.mix_hash(identity.x25519_pk)  # pre-message: <- s
    symmetric.mix_hash(init.header)
    symmetric.mix_hash(init.ephemeral)  # e
    symmetric.mix_key(init.ephemeral)
    try:
        symmetric.mix_key(x25519(identity.x25519_sk, init.ephemeral))  # es
        invitee_static = symmetric.decrypt_and_hash(init.encrypted_static)  # s
        if invitee_static is None:
            raise HandshakeRejected("bad_handshake", "the invitee's static key does not decrypt")
        symmetric.mix_key(x25519(identity.x25519_sk, invitee_static))  # ss
    except InvalidKeyError as exc:
        raise HandshakeRejected("weak_key", "a low-order X25519 key in SESSION_INIT") from exc
    symmetric.mix_key_and_hash(record.secret)  # psk
    signed_hash = symmetric.h
    payload = symmetric.decrypt_and_hash(init.encrypted_payload)
    if payload is None:
        raise HandshakeRejected("bad_handshake", "SESSION_INIT does not authenticate: no invite secret, or altered")
    peer_features, signature = _features(payload), payload[_FEATURES.size :]
    if not verify(invitee_ed25519, LABEL_INVITEE_SIGNATURE + signed_hash, signature):
        raise HandshakeRejected("bad_signature", "the invitee's identity signature does not verify")

    ephemeral = RatchetKeyPair.from_secret(rng.x25519_secret())
    response_header = ResponseFrame(b"", b"").header
    symmetric.mix_hash(response_header)
    symmetric.mix_hash(ephemeral.public)  # e
    symmetric.mix_key(ephemeral.public)
    try:
        symmetric.mix_key(x25519(ephemeral.secret, init.ephemeral))  # ee
        symmetric.mix_key(x25519(ephemeral.secret, invitee_static))  # se
    except InvalidKeyError as exc:  # pragma: no cover - both keys already passed a DH above
        raise HandshakeRejected("weak_key", "a low-order X25519 key in SESSION_INIT") from exc
    encrypted_payload = symmetric.encrypt_and_hash(_FEATURES.pack(features))
    inner_response = ResponseFrame(ephemeral.public, encrypted_payload).pack()
    root_key, chain_key, session_id = _split(symmetric)
    session = Session(
        own_pk=own_pk,
        peer_pk=frame.from_pk,
        role="inviter",
        session_id=session_id,
        transcript_hash=symmetric.h,
        features=record.features & peer_features & features,
        root_key=root_key,
        sending=SendingChain(ephemeral, chain_key, 0),  # we may speak first, under our handshake ephemeral
        receiving=None,
        previous_send_count=0,
        skipped=(),
        retired_ratchet_pks=(),
        closed_by_us=False,
        closed_by_peer=False,
        created_at=now_ms,
        last_used_at=now_ms,
    )
    ack = seal_routed(identity, FrameType.HANDSHAKE_RESPONSE, frame.from_pk, inner_response, 0)
    return Accepted(registry.redeem(record.invite_id, frame.from_pk, now_ms), session, ack)


def _usable_invite(registry: InviteRegistry, invite_id: str, now_ms: int, relay_url: str | None) -> IssuedInvite:
    found = registry.find(invite_id)
    reason: RejectReason
    if found is None:
        reason, detail = "unknown_invite", "we did not issue this invite (or revoked it)"
    elif isinstance(found, RedeemedInvite):
        reason, detail = "already_redeemed", "this invite was already redeemed"
    elif now_ms > found.expires_at + EXPIRY_GRACE_MS:
        reason, detail = "expired", "this invite has expired"
    elif relay_url is not None and relay_url != found.server_url:
        reason, detail = "wrong_relay", "this invite was issued for another relay"
    else:
        return found
    raise HandshakeRejected(reason, f"{detail} ({invite_id})")
