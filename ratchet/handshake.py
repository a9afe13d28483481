"""Session bootstrap: INVITE_CLAIM -> SESSION_INIT -> SESSION_ACK, as the reference runs it.

Both sides compute ``shared = X25519(own x25519 sk, peer x25519 pk)`` and, with the invite's
16-byte nonce as salt, ``keyA`` / ``keyB`` (``ratchet.kdf.bootstrap_keys``). The inviter sends on
keyA and receives on keyB; the invitee the reverse.

* The invitee's INVITE_CLAIM carries base64url(JSON {x25519_pk, nonce}) as ``ciphertext`` *and* as
  ``nonce`` (it is not encrypted), signed over {from, to = inviter, seq 0, nonce}. Because the
  signature covers ``nonce`` and not ``ciphertext``, the inviter must insist that they are equal.
* The inviter answers SESSION_ACK: secretbox(JSON {ack: invite nonce}) under keyA itself, with a
  fresh 24-byte nonce, seq 0, no ratchet_pk.
* The reference's invitee never opens the ack; we do (``check_session_ack``), so a SESSION_ACK that
  does not prove knowledge of keyA is noticed.

Low-order X25519 keys (an all-zero shared secret) are refused with ``HandshakeError`` on both sides.
"""

import hmac

import attrs
import nacl.bindings as sodium
import nacl.exceptions

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import EncodingError, InvalidKeyError, RatchetError
from ratchet.invite import INVITE_NONCE_BYTES, SignedInvite
from ratchet.jsjson import js_stringify, js_utf8_encode, parse_json_object
from ratchet.kdf import bootstrap_keys
from ratchet.keys import ED25519_PK_BYTES, X25519_BYTES, KeyPair, x25519
from ratchet.rand import RandomSource
from ratchet.session import Session
from ratchet.signatures import sign_routed, verify_routed

__all__ = [
    "ACK_NONCE_BYTES",
    "HandshakeError",
    "InviteClaim",
    "SessionAckFields",
    "accept_invite",
    "check_session_ack",
    "handle_session_init",
    "session_ack_plaintext",
    "session_init_payload",
]

ACK_NONCE_BYTES = 24
HANDSHAKE_SEQ = 0


class HandshakeError(RatchetError):
    """A handshake message or key cannot be used (bad payload, bad or low-order key, bad signature)."""


@attrs.frozen
class InviteClaim:
    """The fields of the INVITE_CLAIM frame the invitee sends (msg_id/ts are the frame layer's)."""

    invite_id: str
    from_pk: str
    ciphertext: str
    nonce: str
    sig: str


@attrs.frozen
class SessionAckFields:
    """The fields of the SESSION_ACK routed frame the inviter sends (seq 0, no ratchet_pk)."""

    from_pk: str
    to: str
    ciphertext: str
    nonce: str
    sig: str
    seq: int = HANDSHAKE_SEQ


def session_init_payload(x25519_pk_b64u: str, invite_nonce: str) -> str:
    """INVITE_CLAIM's ``ciphertext`` (and ``nonce``): base64url of JSON {x25519_pk, nonce}, unencrypted."""
    return b64u_encode(js_utf8_encode(js_stringify({"x25519_pk": x25519_pk_b64u, "nonce": invite_nonce})))


def session_ack_plaintext(invite_nonce: str) -> bytes:
    """What SESSION_ACK seals under keyA: JSON {ack: invite nonce}."""
    return js_utf8_encode(js_stringify({"ack": invite_nonce}))


def accept_invite(identity: KeyPair, invite: SignedInvite, now_ms: int) -> tuple[InviteClaim, Session]:
    """The invitee's side: derive the keys, build the INVITE_CLAIM fields and the initial Session.

    ``invite`` must come from ``parse_invite_url`` (signature and expiry already checked). Draws no
    randomness; the frame's msg_id is the caller's.
    """
    own_pk = b64u_encode(identity.ed25519_pk)
    inviter_pk = invite.blob.inviter_ed25519_pk
    if b64u_decode(inviter_pk) == identity.ed25519_pk:
        raise HandshakeError("this invite was created by our own identity; it must be accepted by someone else")
    inviter_x25519_pk = _decode_key(invite.blob.inviter_x25519_pk, X25519_BYTES, "inviter_x25519_pk")
    key_a, key_b = _bootstrap(identity, inviter_x25519_pk, invite.blob.nonce, "the inviter's")

    payload = session_init_payload(b64u_encode(identity.x25519_pk), invite.blob.nonce)
    claim = InviteClaim(
        invite_id=invite.blob.invite_id,
        from_pk=own_pk,
        ciphertext=payload,
        nonce=payload,
        sig=sign_routed(identity, inviter_pk, HANDSHAKE_SEQ, payload),
    )
    session = Session.initial(
        peer_pk=inviter_pk,
        send_chain_key=key_b,
        recv_chain_key=key_a,
        own=identity,
        peer_x25519_pk=inviter_x25519_pk,
        initiator=False,
        now_ms=now_ms,
    )
    return claim, session


def handle_session_init(
    identity: KeyPair,
    from_pk: str,
    ciphertext: str,
    now_ms: int,
    rng: RandomSource,
    *,
    frame_nonce: str | None = None,
    sig: str | None = None,
) -> tuple[SessionAckFields, Session, str]:
    """The inviter's side of a SESSION_INIT from ``from_pk``.

    Returns the SESSION_ACK fields, the inviter's initial Session and the invite nonce the invitee
    named (check it against the invites you issued: the reference does not). Draws the 24-byte ack
    nonce from ``rng``.

    Pass the frame's ``frame_nonce`` and ``sig`` to have them checked here: the signature must verify
    over {from, to = us, seq 0, nonce}, and ``nonce`` must equal ``ciphertext``, since the signature
    covers only the nonce. Without them the caller must have done both checks.
    """
    own_pk = b64u_encode(identity.ed25519_pk)
    peer_ed25519_pk = _decode_key(from_pk, ED25519_PK_BYTES, "SESSION_INIT from")
    if b64u_encode(peer_ed25519_pk) != from_pk:
        raise HandshakeError("SESSION_INIT from: not canonical base64url")
    if peer_ed25519_pk == identity.ed25519_pk:
        raise HandshakeError("SESSION_INIT from our own identity")
    if frame_nonce is not None and frame_nonce != ciphertext:
        raise HandshakeError("SESSION_INIT nonce differs from its payload, which the signature would not cover")
    if sig is not None and not verify_routed(from_pk, own_pk, HANDSHAKE_SEQ, ciphertext, sig):
        raise HandshakeError("SESSION_INIT signature does not verify")

    peer_x25519_b64u, invite_nonce = _parse_init_payload(ciphertext)
    peer_x25519_pk = _decode_key(peer_x25519_b64u, X25519_BYTES, "SESSION_INIT x25519_pk")
    key_a, key_b = _bootstrap(identity, peer_x25519_pk, invite_nonce, "the invitee's")

    ack_nonce = rng.random_bytes(ACK_NONCE_BYTES)
    sealed = sodium.crypto_secretbox(session_ack_plaintext(invite_nonce), ack_nonce, key_a)
    ack_nonce_b64u = b64u_encode(ack_nonce)
    fields = SessionAckFields(
        from_pk=own_pk,
        to=from_pk,
        ciphertext=b64u_encode(sealed),
        nonce=ack_nonce_b64u,
        sig=sign_routed(identity, from_pk, HANDSHAKE_SEQ, ack_nonce_b64u),
    )
    session = Session.initial(
        peer_pk=from_pk,
        send_chain_key=key_a,
        recv_chain_key=key_b,
        own=identity,
        peer_x25519_pk=peer_x25519_pk,
        initiator=True,
        now_ms=now_ms,
    )
    return fields, session, invite_nonce


def check_session_ack(key_a: bytes, invite_nonce: str, ciphertext: str, nonce: str) -> bool:
    """The invitee's check of SESSION_ACK: does it open under keyA to JSON {ack: our invite nonce}?

    ``key_a`` is the invitee's initial ``recv_chain_key`` (keep it from ``accept_invite``'s Session:
    it changes as soon as a message is received). Never raises; a malformed ack is simply False.
    Verify the frame's signature separately with ``verify_routed``.
    """
    try:
        box = b64u_decode(ciphertext)
        box_nonce = b64u_decode(nonce)
    except EncodingError:
        return False
    if len(key_a) != 32 or len(box_nonce) != ACK_NONCE_BYTES:
        return False
    try:
        opened = sodium.crypto_secretbox_open(box, box_nonce, key_a)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return hmac.compare_digest(opened, session_ack_plaintext(invite_nonce))


def _decode_key(text: str, length: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise HandshakeError(f"{what}: expected a base64url string")
    try:
        raw = b64u_decode(text)
    except EncodingError as exc:
        raise HandshakeError(f"{what}: {exc}") from exc
    if len(raw) != length:
        raise HandshakeError(f"{what}: expected {length} bytes, got {len(raw)}")
    return raw


def _parse_init_payload(ciphertext: str) -> tuple[str, str]:
    """(invitee x25519_pk b64u, invite nonce b64u) from a SESSION_INIT payload."""
    try:
        payload = parse_json_object(b64u_decode(ciphertext).decode("utf-8"))
    except (EncodingError, UnicodeDecodeError) as exc:
        raise HandshakeError(f"SESSION_INIT payload is not base64url JSON: {exc}") from exc
    x25519_pk = payload.get("x25519_pk")
    invite_nonce = payload.get("nonce")
    if not isinstance(x25519_pk, str) or not isinstance(invite_nonce, str):
        raise HandshakeError("SESSION_INIT payload needs string fields x25519_pk and nonce")
    return x25519_pk, invite_nonce


def _bootstrap(identity: KeyPair, peer_x25519_pk: bytes, invite_nonce: str, whose: str) -> tuple[bytes, bytes]:
    salt = b64u_decode(invite_nonce)
    if len(salt) != INVITE_NONCE_BYTES:
        raise HandshakeError(f"invite nonce: expected {INVITE_NONCE_BYTES} bytes, got {len(salt)}")
    try:
        shared = x25519(identity.x25519_sk, peer_x25519_pk)
    except InvalidKeyError as exc:
        raise HandshakeError(f"{whose} X25519 key is a low-order point; refusing the handshake") from exc
    return bootstrap_keys(shared, salt)
