"""Invites: the self-signed capability URL that starts a session.

Format (the reference's, byte for byte)::

    blob = {invite_id, inviter_ed25519_pk, inviter_x25519_pk, server_url, expires_at, nonce}
    sig  = Ed25519(UTF-8(JSON.stringify(blob)))
    url  = "agentroom://invite/" + base64url(UTF-8(JSON.stringify({blob, sig})))

Parsing follows the reference's order (prefix, decode + JSON, blob and sig present, expiry with a
30 s grace, then the signature over the blob *as received*, re-serialised in its received key
order) and reports the same kinds of failure as typed exceptions. Deliberately stricter than the
reference, because it turns silent surprises into clear errors:

* ``expires_at`` must be an integer (a missing or string ``expires_at`` never expires there);
  it must also be a positive safe integer, as INVITE_PUBLISH requires;
* the payload must be UTF-8 and its JSON must be an object whose ``blob`` is an object and whose
  ``sig`` is a non-empty string;
* after the signature checks out, the fields the handshake uses must be well formed: string
  ``invite_id`` and ``server_url``, a 32-byte ``inviter_x25519_pk``, a 16-byte ``nonce``, and an
  ``inviter_ed25519_pk`` in canonical base64url (it is the inviter's address on the relay; another
  spelling of the same key verifies but could never complete the handshake).

An invite proves only that its creator holds ``inviter_ed25519_pk``: whom it came from must be
established out of band.
"""

from collections.abc import Mapping

import attrs

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import EncodingError, RatchetError
from ratchet.jsjson import js_stringify, js_utf8_encode, parse_json
from ratchet.keys import X25519_BYTES, KeyPair
from ratchet.rand import RandomSource
from ratchet.signatures import verify_b64u

__all__ = [
    "DEFAULT_TTL_MS",
    "EXPIRY_GRACE_MS",
    "INVITE_NONCE_BYTES",
    "INVITE_PREFIX",
    "InviteBlob",
    "InviteError",
    "InviteExpiredError",
    "InviteMalformedError",
    "InviteSchemeError",
    "InviteSignatureError",
    "SignedInvite",
    "create_invite",
    "parse_invite_url",
]

INVITE_PREFIX = "agentroom://invite/"
DEFAULT_TTL_MS = 86_400_000
EXPIRY_GRACE_MS = 30_000
INVITE_NONCE_BYTES = 16
MAX_SAFE_INTEGER = 2**53 - 1


class InviteError(RatchetError):
    """An invite URL cannot be used; the subclass says why."""


class InviteSchemeError(InviteError):
    """The text does not start with ``agentroom://invite/`` (exactly, case-sensitive)."""

    def __init__(self, detail: str = "not an agentroom invite URL") -> None:
        super().__init__(detail)


class InviteMalformedError(InviteError):
    """The payload does not decode to a well-formed signed invite."""

    def __init__(self, detail: str = "malformed invite") -> None:
        super().__init__(detail)


class InviteExpiredError(InviteError):
    """The invite's ``expires_at`` (plus the 30 s grace) has passed."""

    def __init__(self, detail: str = "invite expired") -> None:
        super().__init__(detail)


class InviteSignatureError(InviteError):
    """The signature does not verify with the invite's own ``inviter_ed25519_pk``."""

    def __init__(self, detail: str = "invalid signature") -> None:
        super().__init__(detail)


@attrs.frozen
class InviteBlob:
    """The signed part of an invite.

    ``signed_text`` is ``JSON.stringify`` of the blob exactly as received (key order, extra fields
    included): the text the signature covers. For an invite we created it is the canonical order.
    """

    invite_id: str
    inviter_ed25519_pk: str
    inviter_x25519_pk: str
    server_url: str
    expires_at: int
    nonce: str
    signed_text: str = attrs.field(repr=False)


@attrs.frozen
class SignedInvite:
    """A verified invite: its blob, its signature and the URL it came in."""

    blob: InviteBlob
    sig: str
    url: str

    @property
    def payload_b64u(self) -> str:
        """The URL after the prefix: what INVITE_PUBLISH carries as ``blob``."""
        return self.url[len(INVITE_PREFIX) :]

    @property
    def invite_id(self) -> str:
        return self.blob.invite_id

    @property
    def expires_at(self) -> int:
        return self.blob.expires_at


def create_invite(
    identity: KeyPair,
    server_url: str,
    now_ms: int,
    rng: RandomSource,
    ttl_ms: int = DEFAULT_TTL_MS,
) -> SignedInvite:
    """A new invite to ``server_url`` valid until ``now_ms + ttl_ms``.

    Draws, in the reference's order, the 16-byte nonce and then the invite_id UUID.
    """
    nonce = b64u_encode(rng.random_bytes(INVITE_NONCE_BYTES))
    invite_id = rng.uuid4()
    blob: dict[str, object] = {
        "invite_id": invite_id,
        "inviter_ed25519_pk": b64u_encode(identity.ed25519_pk),
        "inviter_x25519_pk": b64u_encode(identity.x25519_pk),
        "server_url": server_url,
        "expires_at": now_ms + ttl_ms,
        "nonce": nonce,
    }
    signed_text = js_stringify(blob)
    sig = b64u_encode(identity.sign(js_utf8_encode(signed_text)))
    url = INVITE_PREFIX + b64u_encode(js_utf8_encode(js_stringify({"blob": blob, "sig": sig})))
    invite_blob = InviteBlob(
        invite_id=invite_id,
        inviter_ed25519_pk=b64u_encode(identity.ed25519_pk),
        inviter_x25519_pk=b64u_encode(identity.x25519_pk),
        server_url=server_url,
        expires_at=now_ms + ttl_ms,
        nonce=nonce,
        signed_text=signed_text,
    )
    return SignedInvite(blob=invite_blob, sig=sig, url=url)


def parse_invite_url(url: str, now_ms: int) -> SignedInvite:
    """Decode and verify an invite URL at time ``now_ms``; raises a subclass of ``InviteError``."""
    if not isinstance(url, str) or not url.startswith(INVITE_PREFIX):
        raise InviteSchemeError()
    payload = b64u_decode(url[len(INVITE_PREFIX) :])
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InviteMalformedError("malformed invite: payload is not UTF-8") from exc
    try:
        document = parse_json(text)
    except EncodingError as exc:
        raise InviteMalformedError(f"malformed invite: {exc}") from exc
    if not isinstance(document, dict):
        raise InviteMalformedError("malformed invite: not a JSON object")
    blob = document.get("blob")
    sig = document.get("sig")
    if not blob or not sig:
        raise InviteMalformedError()
    if not isinstance(blob, dict) or not isinstance(sig, str):
        raise InviteMalformedError("malformed invite: blob must be an object and sig a string")

    expires_at = _expires_at(blob)
    if now_ms > expires_at + EXPIRY_GRACE_MS:
        raise InviteExpiredError()

    signed_text = js_stringify(blob)
    inviter_pk = blob.get("inviter_ed25519_pk")
    if not isinstance(inviter_pk, str) or not verify_b64u(inviter_pk, js_utf8_encode(signed_text), sig):
        raise InviteSignatureError()

    return SignedInvite(
        blob=InviteBlob(
            invite_id=_string_field(blob, "invite_id"),
            inviter_ed25519_pk=_canonical_ed25519_pk(inviter_pk),
            inviter_x25519_pk=_key_field(blob, "inviter_x25519_pk", X25519_BYTES),
            server_url=_string_field(blob, "server_url"),
            expires_at=expires_at,
            nonce=_key_field(blob, "nonce", INVITE_NONCE_BYTES),
            signed_text=signed_text,
        ),
        sig=sig,
        url=url,
    )


def _expires_at(blob: Mapping[str, object]) -> int:
    """The blob's expiry as an int; anything but a positive safe integer is malformed (see module doc)."""
    value = blob.get("expires_at")
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 1.7e12 or 1767312000000.0 is the same JS number as 1767312000000
    if not isinstance(value, int) or isinstance(value, bool):
        raise InviteMalformedError("malformed invite: expires_at must be an integer (milliseconds)")
    if not 0 < value <= MAX_SAFE_INTEGER:
        raise InviteMalformedError("malformed invite: expires_at out of range")
    return value


def _string_field(blob: Mapping[str, object], name: str) -> str:
    value = blob.get(name)
    if not isinstance(value, str) or not value:
        raise InviteMalformedError(f"malformed invite: {name} must be a non-empty string")
    return value


def _canonical_ed25519_pk(value: str) -> str:
    """The inviter's key names it on the wire (frame ``to``, session files): only one spelling works."""
    if b64u_encode(b64u_decode(value)) != value:
        raise InviteMalformedError("malformed invite: inviter_ed25519_pk is not canonical base64url")
    return value


def _key_field(blob: Mapping[str, object], name: str, length: int) -> str:
    value = _string_field(blob, name)
    if len(b64u_decode(value)) != length:
        raise InviteMalformedError(f"malformed invite: {name} must encode {length} bytes")
    return value
