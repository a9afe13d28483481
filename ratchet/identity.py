"""The identity file: both long-term keypairs, in the reference's exact on-disk format.

The reference stores ``JSON.stringify({ed25519_pk, ed25519_sk, x25519_pk, x25519_sk}, null, 2)``
(base64url, no trailing newline) and reads it back without any check. We write the same bytes, so
an identity moves between the two implementations, but we refuse a file that is truncated, corrupt
or internally inconsistent with an ``IdentityFileError`` that says what is wrong: a silently broken
identity would only surface later as signatures nobody can verify.

Bytes in, bytes out: reading and writing the file (atomically, mode 0600) is the daemon's job.
"""

import hmac
import re

import attrs
import nacl.bindings as sodium

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import EncodingError, RatchetError
from ratchet.jsjson import js_stringify, parse_json
from ratchet.keys import ED25519_PK_BYTES, ED25519_SK_BYTES, X25519_BYTES, KeyPair, x25519_public

__all__ = ["Identity", "IdentityFileError", "identity_from_json", "identity_to_json"]

_FIELDS = (
    ("ed25519_pk", ED25519_PK_BYTES),
    ("ed25519_sk", ED25519_SK_BYTES),
    ("x25519_pk", X25519_BYTES),
    ("x25519_sk", X25519_BYTES),
)
_B64U_TEXT = re.compile(r"[A-Za-z0-9_-]*")


class IdentityFileError(RatchetError):
    """The identity file cannot be used: unreadable, truncated, incomplete or inconsistent."""


@attrs.frozen
class Identity:
    """An identity keypair with the base64url forms the protocol shows (frames, invites, file names)."""

    keypair: KeyPair

    @property
    def pk(self) -> str:
        """The Ed25519 public key in base64url: the identity's name on the wire."""
        return b64u_encode(self.keypair.ed25519_pk)

    @property
    def x25519_pk_b64u(self) -> str:
        return b64u_encode(self.keypair.x25519_pk)


def identity_to_json(kp: KeyPair) -> bytes:
    """The identity file's bytes, identical to the reference's (2-space indent, no trailing newline)."""
    document = {
        "ed25519_pk": b64u_encode(kp.ed25519_pk),
        "ed25519_sk": b64u_encode(kp.ed25519_sk),
        "x25519_pk": b64u_encode(kp.x25519_pk),
        "x25519_sk": b64u_encode(kp.x25519_sk),
    }
    return js_stringify(document, indent=2).encode("utf-8")


def identity_from_json(data: bytes) -> KeyPair:
    """Load an identity file, checking that it is complete and that every key matches its partner."""
    if not data.strip():
        raise IdentityFileError("identity file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IdentityFileError(f"identity file is not UTF-8 text (byte {exc.start})") from exc
    try:
        document = parse_json(text)
    except EncodingError as exc:
        looks_cut = text.lstrip().startswith("{") and not text.rstrip().endswith("}")
        reason = "truncated (incomplete JSON)" if looks_cut else "not valid JSON"
        raise IdentityFileError(f"identity file is {reason}: {exc}") from exc
    if not isinstance(document, dict):
        raise IdentityFileError("identity file must hold a JSON object")

    raw: dict[str, bytes] = {}
    for name, length in _FIELDS:
        if name not in document:
            raise IdentityFileError(f"identity file is missing field {name!r}")
        value = document[name]
        if not isinstance(value, str) or _B64U_TEXT.fullmatch(value) is None:
            raise IdentityFileError(f"identity field {name!r} must be an unpadded base64url string")
        decoded = b64u_decode(value)
        if len(decoded) != length:
            raise IdentityFileError(f"identity field {name!r} must be {length} bytes, got {len(decoded)}")
        raw[name] = decoded

    seed = raw["ed25519_sk"][:32]
    derived_pk, derived_sk = sodium.crypto_sign_seed_keypair(seed)
    if not hmac.compare_digest(derived_pk, raw["ed25519_pk"]) or not hmac.compare_digest(derived_sk, raw["ed25519_sk"]):
        raise IdentityFileError("identity file is inconsistent: ed25519_sk does not belong to ed25519_pk")
    if not hmac.compare_digest(x25519_public(raw["x25519_sk"]), raw["x25519_pk"]):
        raise IdentityFileError("identity file is inconsistent: x25519_pk does not belong to x25519_sk")
    return KeyPair(raw["ed25519_pk"], raw["ed25519_sk"], raw["x25519_pk"], raw["x25519_sk"])
