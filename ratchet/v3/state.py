"""Saved forms of the v3 states: versioned JSON, read back strictly, with errors that say what is wrong.

Three documents, each ``{"format": ..., "version": 1, ...}`` with keys and secrets in base64url:

* ``agentroom-session-v3``: a `Session` (``session_to_json`` / ``session_from_json``);
* ``agentroom-v3-pending-handshake``: the invitee's `PendingHandshake`;
* ``agentroom-v3-invites``: the inviter's `InviteRegistry`.

The v2 session format is ``agentroom-session``, so a v2 reader refuses a v3 file by its format and
vice versa; the daemon can dispatch on the ``format`` field. Unknown keys, missing keys, a value of
the wrong JSON type, a non-canonical base64url key, a key of the wrong length, a counter out of
range or an inconsistent state (a ratchet secret that does not match its public key, no chain at
all, too many skipped keys) all raise `StateFormatError`, so a loaded state can never make the
protocol misbehave. Nothing here contains an identity secret key.
"""

import json
from typing import Final, TypeVar

import attrs
import cattrs

from ratchet.keys import x25519_public
from ratchet.statefile import load_json, strict_converter
from ratchet.v3.errors import MalformedFrameError, StateFormatError
from ratchet.v3.handshake import PendingHandshake
from ratchet.v3.invite import INVITE_SECRET_BYTES, MAX_SERVER_URL_BYTES, InviteRegistry, IssuedInvite, RedeemedInvite
from ratchet.v3.session import (
    COUNTER_LIMIT,
    MAX_RETIRED_RATCHET_KEYS,
    MAX_SKIPPED_KEYS,
    RatchetKeyPair,
    ReceivingChain,
    Role,
    SendingChain,
    Session,
    SkippedKey,
)
from ratchet.v3.wire import ClaimFields, b64u, b64u_strict, uuid_bytes

__all__ = [
    "PENDING_FORMAT",
    "REGISTRY_FORMAT",
    "SESSION_FORMAT",
    "pending_from_json",
    "pending_to_json",
    "registry_from_json",
    "registry_to_json",
    "session_from_json",
    "session_to_json",
]

SESSION_FORMAT: Final = "agentroom-session-v3"
PENDING_FORMAT: Final = "agentroom-v3-pending-handshake"
REGISTRY_FORMAT: Final = "agentroom-v3-invites"
FORMAT_VERSION: Final = 1
MAX_SAFE_INTEGER: Final = 2**53 - 1


# ── documents ───────────────────────────────────────────────────────────────────────────────────


@attrs.frozen
class _SendingDoc:
    ratchet_pk: str
    ratchet_sk: str
    chain_key: str
    n: int


@attrs.frozen
class _ReceivingDoc:
    ratchet_pk: str
    chain_key: str
    n: int


@attrs.frozen
class _SkippedDoc:
    ratchet_pk: str
    n: int
    key: str
    added_at: int


@attrs.frozen
class _SessionDoc:
    format: str
    version: int
    own_pk: str
    peer_pk: str
    role: str
    session_id: str
    transcript_hash: str
    features: int
    root_key: str
    sending: _SendingDoc | None
    receiving: _ReceivingDoc | None
    previous_send_count: int
    skipped: list[_SkippedDoc]
    retired_ratchet_pks: list[str]
    closed_by_us: bool
    closed_by_peer: bool
    created_at: int
    last_used_at: int


@attrs.frozen
class _KeyPairDoc:
    public: str
    secret: str


@attrs.frozen
class _ClaimDoc:
    invite_id: str
    from_pk: str
    ciphertext: str
    nonce: str
    sig: str


@attrs.frozen
class _PendingDoc:
    format: str
    version: int
    own_pk: str
    inviter_pk: str
    inviter_x25519_pk: str
    invite_id: str
    expires_at: int
    server_url: str
    features: int
    handshake_hash: str
    chaining_key: str
    ephemeral: _KeyPairDoc
    claim: _ClaimDoc
    created_at: int


@attrs.frozen
class _IssuedDoc:
    invite_id: str
    secret: str
    expires_at: int
    server_url: str
    features: int
    created_at: int


@attrs.frozen
class _RedeemedDoc:
    invite_id: str
    expires_at: int
    redeemed_at: int
    peer_pk: str


@attrs.frozen
class _RegistryDoc:
    format: str
    version: int
    issued: list[_IssuedDoc]
    redeemed: list[_RedeemedDoc]


# ── session ─────────────────────────────────────────────────────────────────────────────────────


def session_to_json(session: Session) -> bytes:
    """The session's saved form (it holds chain keys and at most one ratchet secret: keep it private)."""
    sending = session.sending
    receiving = session.receiving
    document = _SessionDoc(
        format=SESSION_FORMAT,
        version=FORMAT_VERSION,
        own_pk=session.own_pk,
        peer_pk=session.peer_pk,
        role=session.role,
        session_id=b64u(session.session_id),
        transcript_hash=b64u(session.transcript_hash),
        features=session.features,
        root_key=b64u(session.root_key),
        sending=None
        if sending is None
        else _SendingDoc(
            b64u(sending.ratchet.public), b64u(sending.ratchet.secret), b64u(sending.chain_key), sending.n
        ),
        receiving=None
        if receiving is None
        else _ReceivingDoc(b64u(receiving.ratchet_pk), b64u(receiving.chain_key), receiving.n),
        previous_send_count=session.previous_send_count,
        skipped=[_SkippedDoc(b64u(e.ratchet_pk), e.n, b64u(e.key), e.added_at) for e in session.skipped],
        retired_ratchet_pks=[b64u(pk) for pk in session.retired_ratchet_pks],
        closed_by_us=session.closed_by_us,
        closed_by_peer=session.closed_by_peer,
        created_at=session.created_at,
        last_used_at=session.last_used_at,
    )
    return _dump(document)


def session_from_json(data: bytes) -> Session:
    """Read `session_to_json` output; anything else raises `StateFormatError` naming the problem."""
    doc = _load(data, SESSION_FORMAT, _SessionDoc)
    if doc.role not in ("inviter", "invitee"):
        raise StateFormatError(f"role must be 'inviter' or 'invitee', got {doc.role!r}")
    role: Role = "inviter" if doc.role == "inviter" else "invitee"
    own_pk = _pk(doc.own_pk, "own_pk")
    peer_pk = _pk(doc.peer_pk, "peer_pk")
    if own_pk == peer_pk:
        raise StateFormatError("own_pk and peer_pk are the same key")
    sending = None
    if doc.sending is not None:
        ratchet = _keypair(doc.sending.ratchet_pk, doc.sending.ratchet_sk, "sending.ratchet")
        chain_key = _key(doc.sending.chain_key, "sending.chain_key")
        sending = SendingChain(ratchet, chain_key, _counter(doc.sending.n, "sending.n", inclusive=True))
    receiving = None
    if doc.receiving is not None:
        receiving = ReceivingChain(
            _key(doc.receiving.ratchet_pk, "receiving.ratchet_pk"),
            _key(doc.receiving.chain_key, "receiving.chain_key"),
            _counter(doc.receiving.n, "receiving.n", inclusive=True),
        )
    if sending is None and receiving is None:
        raise StateFormatError("a session needs a sending or a receiving chain; this one has neither")
    if len(doc.skipped) > MAX_SKIPPED_KEYS:
        raise StateFormatError(f"{len(doc.skipped)} skipped keys stored; at most {MAX_SKIPPED_KEYS} can be")
    skipped = tuple(
        SkippedKey(
            _key(e.ratchet_pk, f"skipped[{i}].ratchet_pk"),
            _counter(e.n, f"skipped[{i}].n"),
            _key(e.key, f"skipped[{i}].key"),
            _time(e.added_at, f"skipped[{i}].added_at"),
        )
        for i, e in enumerate(doc.skipped)
    )
    if len({(e.ratchet_pk, e.n) for e in skipped}) != len(skipped):
        raise StateFormatError("a skipped key is stored twice")
    if len(doc.retired_ratchet_pks) > MAX_RETIRED_RATCHET_KEYS:
        raise StateFormatError(f"at most {MAX_RETIRED_RATCHET_KEYS} retired ratchet keys can be stored")
    _features(doc.features, "features")
    return Session(
        own_pk=own_pk,
        peer_pk=peer_pk,
        role=role,
        session_id=_key(doc.session_id, "session_id", 16),
        transcript_hash=_key(doc.transcript_hash, "transcript_hash", 64),
        features=doc.features,
        root_key=_key(doc.root_key, "root_key"),
        sending=sending,
        receiving=receiving,
        previous_send_count=_counter(doc.previous_send_count, "previous_send_count"),
        skipped=skipped,
        retired_ratchet_pks=tuple(_key(pk, f"retired[{i}]") for i, pk in enumerate(doc.retired_ratchet_pks)),
        closed_by_us=doc.closed_by_us,
        closed_by_peer=doc.closed_by_peer,
        created_at=_time(doc.created_at, "created_at"),
        last_used_at=_time(doc.last_used_at, "last_used_at"),
    )


# ── pending handshake ───────────────────────────────────────────────────────────────────────────


def pending_to_json(pending: PendingHandshake) -> bytes:
    claim = pending.claim
    document = _PendingDoc(
        format=PENDING_FORMAT,
        version=FORMAT_VERSION,
        own_pk=pending.own_pk,
        inviter_pk=pending.inviter_pk,
        inviter_x25519_pk=b64u(pending.inviter_x25519_pk),
        invite_id=pending.invite_id,
        expires_at=pending.expires_at,
        server_url=pending.server_url,
        features=pending.features,
        handshake_hash=b64u(pending.handshake_hash),
        chaining_key=b64u(pending.chaining_key),
        ephemeral=_KeyPairDoc(b64u(pending.ephemeral.public), b64u(pending.ephemeral.secret)),
        claim=_ClaimDoc(claim.invite_id, claim.from_pk, claim.ciphertext, claim.nonce, claim.sig),
        created_at=pending.created_at,
    )
    return _dump(document)


def pending_from_json(data: bytes) -> PendingHandshake:
    doc = _load(data, PENDING_FORMAT, _PendingDoc)
    own_pk = _pk(doc.own_pk, "own_pk")
    invite_id = _invite_id(doc.invite_id, "invite_id")
    if doc.claim.from_pk != own_pk or doc.claim.invite_id != doc.invite_id:
        raise StateFormatError("the stored claim does not belong to this pending handshake")
    for text, what in ((doc.claim.ciphertext, "claim.ciphertext"), (doc.claim.nonce, "claim.nonce")):
        _bytes(text, what, None)
    _bytes(doc.claim.sig, "claim.sig", 64)
    _server_url(doc.server_url, "server_url")
    _features(doc.features, "features")
    return PendingHandshake(
        own_pk=own_pk,
        inviter_pk=_pk(doc.inviter_pk, "inviter_pk"),
        inviter_x25519_pk=_key(doc.inviter_x25519_pk, "inviter_x25519_pk"),
        invite_id=invite_id,
        expires_at=_time(doc.expires_at, "expires_at"),
        server_url=doc.server_url,
        features=doc.features,
        handshake_hash=_key(doc.handshake_hash, "handshake_hash", 64),
        chaining_key=_key(doc.chaining_key, "chaining_key", 64),
        ephemeral=_keypair(doc.ephemeral.public, doc.ephemeral.secret, "ephemeral"),
        claim=ClaimFields(doc.claim.invite_id, doc.claim.from_pk, doc.claim.ciphertext, doc.claim.nonce, doc.claim.sig),
        created_at=_time(doc.created_at, "created_at"),
    )


# ── invite registry ─────────────────────────────────────────────────────────────────────────────


def registry_to_json(registry: InviteRegistry) -> bytes:
    """The inviter's registry (it holds invite secrets until redemption: keep it private)."""
    document = _RegistryDoc(
        format=REGISTRY_FORMAT,
        version=FORMAT_VERSION,
        issued=[
            _IssuedDoc(i.invite_id, b64u(i.secret), i.expires_at, i.server_url, i.features, i.created_at)
            for i in registry.issued
        ],
        redeemed=[_RedeemedDoc(r.invite_id, r.expires_at, r.redeemed_at, r.peer_pk) for r in registry.redeemed],
    )
    return _dump(document)


def registry_from_json(data: bytes) -> InviteRegistry:
    doc = _load(data, REGISTRY_FORMAT, _RegistryDoc)
    issued = tuple(
        IssuedInvite(
            invite_id=_invite_id(i.invite_id, f"issued[{n}].invite_id"),
            secret=_key(i.secret, f"issued[{n}].secret", INVITE_SECRET_BYTES),
            expires_at=_time(i.expires_at, f"issued[{n}].expires_at"),
            server_url=_server_url(i.server_url, f"issued[{n}].server_url"),
            features=_features(i.features, f"issued[{n}].features"),
            created_at=_time(i.created_at, f"issued[{n}].created_at"),
        )
        for n, i in enumerate(doc.issued)
    )
    redeemed = tuple(
        RedeemedInvite(
            invite_id=_invite_id(r.invite_id, f"redeemed[{n}].invite_id"),
            expires_at=_time(r.expires_at, f"redeemed[{n}].expires_at"),
            redeemed_at=_time(r.redeemed_at, f"redeemed[{n}].redeemed_at"),
            peer_pk=_pk(r.peer_pk, f"redeemed[{n}].peer_pk"),
        )
        for n, r in enumerate(doc.redeemed)
    )
    ids = [i.invite_id for i in issued] + [r.invite_id for r in redeemed]
    if len(set(ids)) != len(ids):
        raise StateFormatError("an invite id appears twice in the registry")
    return InviteRegistry(issued, redeemed)


# ── strict JSON machinery ───────────────────────────────────────────────────────────────────────

_T = TypeVar("_T")


_CONVERTER: Final = strict_converter(forbid_extra_keys=True)


def _dump(document: object) -> bytes:
    return (json.dumps(_CONVERTER.unstructure(document), indent=2) + "\n").encode("utf-8")


def _load(data: bytes, expected_format: str, kind: type[_T]) -> _T:
    try:
        raw = load_json(data)
    except ValueError as exc:
        raise StateFormatError(f"{expected_format}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise StateFormatError(f"{expected_format}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format") != expected_format:
        raise StateFormatError(f"not an {expected_format} document (format {raw.get('format')!r})")
    if raw.get("version") != FORMAT_VERSION:
        raise StateFormatError(f"{expected_format}: unsupported version {raw.get('version')!r} (we read 1)")
    try:
        return _CONVERTER.structure(raw, kind)
    except cattrs.BaseValidationError as exc:
        problems = "; ".join(cattrs.transform_error(exc, path="state"))
        raise StateFormatError(f"{expected_format}: {problems}") from exc
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # cattrs lets a few through unwrapped
        raise StateFormatError(f"{expected_format}: {exc}") from exc


def _bytes(text: str, what: str, length: int | None) -> bytes:
    try:
        return b64u_strict(text, what, length)
    except MalformedFrameError as exc:
        raise StateFormatError(str(exc)) from exc


def _key(text: str, what: str, length: int = 32) -> bytes:
    return _bytes(text, what, length)


def _pk(text: str, what: str) -> str:
    _key(text, what)
    return text


def _keypair(public_text: str, secret_text: str, what: str) -> RatchetKeyPair:
    public = _key(public_text, f"{what} public key")
    secret = _key(secret_text, f"{what} secret key")
    if x25519_public(secret) != public:
        raise StateFormatError(f"{what}: the public key does not belong to the secret key")
    return RatchetKeyPair(public, secret)


def _counter(value: int, what: str, *, inclusive: bool = False) -> int:
    limit = COUNTER_LIMIT if inclusive else COUNTER_LIMIT - 1
    if not 0 <= value <= limit:
        raise StateFormatError(f"{what} = {value} out of range 0..{limit}")
    return value


def _time(value: int, what: str) -> int:
    if not 0 <= value <= MAX_SAFE_INTEGER:
        raise StateFormatError(f"{what} = {value} is not a time in milliseconds")
    return value


def _features(value: int, what: str) -> int:
    """Feature bits travel as u16 (invite, handshake payloads): anything wider cannot be bound or sent."""
    if not 0 <= value <= 0xFFFF:
        raise StateFormatError(f"{what} = {value} out of range 0..65535")
    return value


def _server_url(text: str, what: str) -> str:
    """What `invite_binding` accepts (1..2048 bytes of UTF-8), so a loaded invite can always be bound."""
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:  # a lone surrogate, which JSON can spell as \udXXX
        raise StateFormatError(f"{what}: not Unicode text") from exc
    if not 0 < size <= MAX_SERVER_URL_BYTES:
        raise StateFormatError(f"{what}: must be 1..{MAX_SERVER_URL_BYTES} bytes of UTF-8, got {size}")
    return text


def _invite_id(text: str, what: str) -> str:
    try:
        uuid_bytes(text)
    except MalformedFrameError as exc:
        raise StateFormatError(f"{what}: {exc}") from exc
    return text
