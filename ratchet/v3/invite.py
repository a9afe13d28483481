"""v3 invites: a capability URL whose secret never reaches the relay, and the inviter's registry.

The URL (``agentroom://invite3/`` + base64url) carries, in binary::

    version u8 = 3 | features u16 | invite_id 16 | expires_at u64 (ms) | inviter Ed25519 pk 32
    | inviter X25519 pk 32 | server_url length u16 | server_url UTF-8 | secret 32 | signature 64

The signature is the inviter's Ed25519 signature over ``"agentroom-v3 invite" || everything before
it``: it makes a mistyped or altered URL fail at once with a clear error, and it tells the invitee,
before any traffic, that the X25519 key belongs to the Ed25519 identity it will talk to.

What the relay learns (INVITE_PUBLISH) is only a random ``invite_id``, drawn independently of the
secret so it cannot be linked to it, the expiry, and the constant blob ``PUBLISH_BLOB`` (the relay
schema insists on a non-empty blob). The 32-byte secret is the handshake's pre-shared key: a relay
that claims the invite itself cannot complete the handshake (see `ratchet.v3.handshake`).

A distinct prefix makes the protocol version explicit per conversation: the daemon calls
`invite_version` and hands ``agentroom://invite/`` URLs to v2 and ``agentroom://invite3/`` URLs to
v3; a v2 peer (the TypeScript reference) refuses a v3 URL as "not an agentroom invite URL".

The inviter keeps an `InviteRegistry`: the invites it issued (with their secrets) and the ones
redeemed (id, expiry and peer only: the secret is deleted at redemption, so a replayed claim cannot
re-derive anything). It accepts a SESSION_INIT only for an invite that is issued, unexpired and not
redeemed; `ratchet.v3.handshake.respond` enforces this and returns the updated registry.
"""

import struct
from typing import Final, Literal

import attrs

from ratchet.errors import EncodingError
from ratchet.invite import (
    DEFAULT_TTL_MS,
    EXPIRY_GRACE_MS,
    INVITE_PREFIX,
    InviteExpiredError,
    InviteMalformedError,
    InviteSchemeError,
    InviteSignatureError,
)
from ratchet.keys import KeyPair, verify
from ratchet.rand import RandomSource
from ratchet.v3.errors import MalformedFrameError
from ratchet.v3.wire import PublishFields, b64u, b64u_strict, uuid_bytes, uuid_text

__all__ = [
    "DEFAULT_TTL_MS",
    "EXPIRY_GRACE_MS",
    "INVITE_PREFIX_V3",
    "INVITE_SECRET_BYTES",
    "PUBLISH_BLOB",
    "SUPPORTED_FEATURES",
    "Invite",
    "InviteRegistry",
    "IssuedInvite",
    "RedeemedInvite",
    "invite_binding",
    "invite_url",
    "invite_version",
    "issue_invite",
    "parse_invite_url",
    "publish_fields",
]

INVITE_PREFIX_V3: Final = "agentroom://invite3/"
INVITE_SECRET_BYTES: Final = 32
PUBLISH_BLOB: Final = "v3"
SUPPORTED_FEATURES: Final = 0
"""Capability bits this implementation understands (none yet); peers negotiate their intersection."""
MAX_SERVER_URL_BYTES: Final = 2048
MAX_SAFE_INTEGER: Final = 2**53 - 1
INVITE_VERSION: Final = 3

LABEL_INVITE_SIGNATURE: Final = b"agentroom-v3 invite"
_FIXED: Final = struct.Struct(">BH16sQ32s32sH")  # version, features, invite_id, expires_at, ed, x, url length
_SIGNATURE_BYTES: Final = 64


def invite_version(url: str) -> Literal[2, 3]:
    """Which protocol an invite URL starts: 3 for ``agentroom://invite3/``, 2 for ``agentroom://invite/``."""
    if isinstance(url, str):
        if url.startswith(INVITE_PREFIX_V3):
            return 3
        if url.startswith(INVITE_PREFIX):
            return 2
    raise InviteSchemeError()


def invite_binding(
    features: int, invite_id: str, expires_at: int, inviter_ed25519_pk: bytes, inviter_x25519_pk: bytes, server_url: str
) -> bytes:
    """The public part of an invite, as the URL encodes it; the handshake prologue hashes it too."""
    url = server_url.encode("utf-8")
    if not url or len(url) > MAX_SERVER_URL_BYTES:
        raise ValueError(f"server_url must be 1..{MAX_SERVER_URL_BYTES} bytes of UTF-8")
    fixed = _FIXED.pack(
        INVITE_VERSION, features, uuid_bytes(invite_id), expires_at, inviter_ed25519_pk, inviter_x25519_pk, len(url)
    )
    return fixed + url


@attrs.frozen(repr=False)
class IssuedInvite:
    """An invite we issued and nobody redeemed yet: what the inviter must keep (secret included)."""

    invite_id: str
    secret: bytes
    expires_at: int
    server_url: str
    features: int
    created_at: int

    def __repr__(self) -> str:
        return f"IssuedInvite({self.invite_id}, expires_at={self.expires_at})"


@attrs.frozen
class RedeemedInvite:
    """A redeemed invite: kept until its expiry passes, so that a replayed claim is refused as such."""

    invite_id: str
    expires_at: int
    redeemed_at: int
    peer_pk: str


@attrs.frozen(repr=False)
class Invite:
    """A verified v3 invite, as the invitee holds it."""

    invite_id: str
    expires_at: int
    inviter_pk: str
    inviter_x25519_pk: bytes
    server_url: str
    features: int
    secret: bytes
    url: str

    def __repr__(self) -> str:  # the URL and the secret are capabilities: never in a log
        return f"Invite({self.invite_id}, inviter={self.inviter_pk[:8]}..., expires_at={self.expires_at})"

    @property
    def binding(self) -> bytes:
        return invite_binding(
            self.features,
            self.invite_id,
            self.expires_at,
            b64u_strict(self.inviter_pk, "inviter pk", 32),
            self.inviter_x25519_pk,
            self.server_url,
        )


def issue_invite(
    identity: KeyPair,
    server_url: str,
    now_ms: int,
    rng: RandomSource,
    ttl_ms: int = DEFAULT_TTL_MS,
    features: int = SUPPORTED_FEATURES,
) -> IssuedInvite:
    """A new invite to ``server_url``, valid until ``now_ms + ttl_ms``.

    Draws the 32-byte secret, then the invite id (a UUID v4, independent of the secret). Add it to
    the registry and persist the registry *before* the URL is shown or published.
    """
    if ttl_ms <= 0 or not 0 < now_ms + ttl_ms <= MAX_SAFE_INTEGER:
        raise ValueError(f"ttl_ms must be positive and the expiry a safe integer, got ttl_ms={ttl_ms}")
    secret = rng.random_bytes(INVITE_SECRET_BYTES)
    issued = IssuedInvite(
        invite_id=rng.uuid4(),
        secret=secret,
        expires_at=now_ms + ttl_ms,
        server_url=server_url,
        features=features,
        created_at=now_ms,
    )
    invite_binding(features, issued.invite_id, issued.expires_at, identity.ed25519_pk, identity.x25519_pk, server_url)
    return issued


def invite_url(identity: KeyPair, issued: IssuedInvite) -> str:
    """The URL to hand the invitee out of band (deterministic: Ed25519 signatures are)."""
    body = (
        invite_binding(
            issued.features,
            issued.invite_id,
            issued.expires_at,
            identity.ed25519_pk,
            identity.x25519_pk,
            issued.server_url,
        )
        + issued.secret
    )
    return INVITE_PREFIX_V3 + b64u(body + identity.sign(LABEL_INVITE_SIGNATURE + body))


def publish_fields(issued: IssuedInvite) -> PublishFields:
    """INVITE_PUBLISH for this invite: id and expiry only."""
    return PublishFields(invite_id=issued.invite_id, blob=PUBLISH_BLOB, expires_at=issued.expires_at)


def parse_invite_url(url: str, now_ms: int) -> Invite:
    """Decode and verify a v3 invite URL at ``now_ms``; raises `ratchet.invite.InviteError` subclasses.

    Order as for v2: prefix, decoding, expiry (with the 30 s grace), then the signature.
    """
    if not isinstance(url, str) or not url.startswith(INVITE_PREFIX_V3):
        raise InviteSchemeError()
    try:
        payload = b64u_strict(url[len(INVITE_PREFIX_V3) :], "invite")
    except MalformedFrameError as exc:
        raise InviteMalformedError("malformed invite: not base64url") from exc
    if len(payload) < _FIXED.size + 1 + INVITE_SECRET_BYTES + _SIGNATURE_BYTES:
        raise InviteMalformedError("malformed invite: too short (truncated?)")
    version, features, raw_id, expires_at, inviter_ed, inviter_x, url_length = _FIXED.unpack_from(payload)
    if version != INVITE_VERSION:
        raise InviteMalformedError(f"malformed invite: unsupported invite version {version}")
    expected = _FIXED.size + url_length + INVITE_SECRET_BYTES + _SIGNATURE_BYTES
    if len(payload) != expected or not 0 < url_length <= MAX_SERVER_URL_BYTES:
        raise InviteMalformedError("malformed invite: wrong length (truncated or extended?)")
    try:
        server_url = payload[_FIXED.size : _FIXED.size + url_length].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InviteMalformedError("malformed invite: server_url is not UTF-8") from exc
    if not 0 < expires_at <= MAX_SAFE_INTEGER:
        raise InviteMalformedError("malformed invite: expires_at out of range")
    if now_ms > expires_at + EXPIRY_GRACE_MS:
        raise InviteExpiredError()
    body, signature = payload[:-_SIGNATURE_BYTES], payload[-_SIGNATURE_BYTES:]
    if not verify(inviter_ed, LABEL_INVITE_SIGNATURE + body, signature):
        raise InviteSignatureError()
    try:
        invite_id = uuid_text(raw_id)
    except (ValueError, EncodingError) as exc:  # pragma: no cover - any 16 bytes are a UUID
        raise InviteMalformedError("malformed invite: invite_id") from exc
    return Invite(
        invite_id=invite_id,
        expires_at=expires_at,
        inviter_pk=b64u(inviter_ed),
        inviter_x25519_pk=inviter_x,
        server_url=server_url,
        features=features,
        secret=body[-INVITE_SECRET_BYTES:],
        url=url,
    )


@attrs.frozen
class InviteRegistry:
    """The inviter's invites: issued (secret kept) and redeemed (secret gone). Immutable, like a Session.

    Persist it whenever it changes: before showing a new invite URL, and (with the new session)
    before a SESSION_ACK leaves. Concurrent handshakes must be serialised by the caller: two calls
    that start from the same registry could each redeem the same invite.
    """

    issued: tuple[IssuedInvite, ...] = ()
    redeemed: tuple[RedeemedInvite, ...] = ()

    def find(self, invite_id: str) -> IssuedInvite | RedeemedInvite | None:
        for issued in self.issued:
            if issued.invite_id == invite_id:
                return issued
        for redeemed in self.redeemed:
            if redeemed.invite_id == invite_id:
                return redeemed
        return None

    def with_issued(self, invite: IssuedInvite) -> "InviteRegistry":
        if self.find(invite.invite_id) is not None:
            raise ValueError(f"invite {invite.invite_id} is already in the registry")
        return attrs.evolve(self, issued=(*self.issued, invite))

    def redeem(self, invite_id: str, peer_pk: str, now_ms: int) -> "InviteRegistry":
        """The registry after ``invite_id`` was redeemed by ``peer_pk``: its secret is gone."""
        found = self.find(invite_id)
        if not isinstance(found, IssuedInvite):
            raise KeyError(invite_id)
        return InviteRegistry(
            issued=tuple(i for i in self.issued if i.invite_id != invite_id),
            redeemed=(*self.redeemed, RedeemedInvite(invite_id, found.expires_at, now_ms, peer_pk)),
        )

    def revoke(self, invite_id: str) -> "InviteRegistry":
        """Forget an unredeemed invite: any later claim is refused as unknown."""
        return attrs.evolve(self, issued=tuple(i for i in self.issued if i.invite_id != invite_id))

    def prune(self, now_ms: int) -> "InviteRegistry":
        """Drop what can no longer matter: invites (issued or redeemed) past expiry plus grace.

        A claim for a pruned invite is refused as unknown, which is as final as refusing it as
        expired, so the registry stays bounded by the invites still alive.
        """
        return InviteRegistry(
            issued=tuple(i for i in self.issued if now_ms <= i.expires_at + EXPIRY_GRACE_MS),
            redeemed=tuple(r for r in self.redeemed if now_ms <= r.expires_at + EXPIRY_GRACE_MS),
        )
