"""The key primitives: Ed25519 signing and X25519 agreement, through libsodium only.

An identity holds two independent keypairs (the X25519 key is not derived from the Ed25519 key),
exactly as the reference does. Secret keys are raw bytes here; their base64url form belongs to the
JSON layers.
"""

import attrs
import nacl.bindings as sodium
import nacl.exceptions

from ratchet.errors import InvalidKeyError
from ratchet.rand import SYSTEM_RANDOM, RandomSource

ED25519_PK_BYTES = 32
ED25519_SK_BYTES = 64  # libsodium's form: 32-byte seed followed by the 32-byte public key
ED25519_SIG_BYTES = 64
X25519_BYTES = 32


@attrs.frozen(repr=False)
class KeyPair:
    """One Ed25519 keypair and one X25519 keypair: an identity, or a ratchet ephemeral."""

    ed25519_pk: bytes
    ed25519_sk: bytes
    x25519_pk: bytes
    x25519_sk: bytes

    def __repr__(self) -> str:  # never print secret keys, even by accident in a log or a traceback
        return f"KeyPair(ed25519_pk={self.ed25519_pk.hex()[:16]}..., x25519_pk={self.x25519_pk.hex()[:16]}...)"

    @classmethod
    def from_secrets(cls, ed25519_seed: bytes, x25519_sk: bytes) -> "KeyPair":
        """Rebuild both keypairs from a 32-byte Ed25519 seed and a 32-byte X25519 secret key."""
        if len(ed25519_seed) != 32:
            raise InvalidKeyError(f"Ed25519 seed must be 32 bytes, got {len(ed25519_seed)}")
        ed_pk, ed_sk = sodium.crypto_sign_seed_keypair(ed25519_seed)
        return cls(ed_pk, ed_sk, x25519_public(x25519_sk), x25519_sk)

    @classmethod
    def generate(cls, rng: RandomSource = SYSTEM_RANDOM) -> "KeyPair":
        """A fresh keypair; draws the Ed25519 seed first, then the X25519 secret (the reference's order)."""
        seed = rng.ed25519_seed()
        return cls.from_secrets(seed, rng.x25519_secret())

    def sign(self, message: bytes) -> bytes:
        return sign(self.ed25519_sk, message)


def x25519_public(x25519_sk: bytes) -> bytes:
    """The X25519 public key of a secret key (clamping happens inside the multiplication)."""
    if len(x25519_sk) != X25519_BYTES:
        raise InvalidKeyError(f"X25519 secret key must be 32 bytes, got {len(x25519_sk)}")
    return sodium.crypto_scalarmult_base(x25519_sk)


def x25519(our_sk: bytes, their_pk: bytes) -> bytes:
    """Raw X25519 output; a low-order peer key (all-zero result) is rejected, as libsodium does."""
    if len(our_sk) != X25519_BYTES or len(their_pk) != X25519_BYTES:
        raise InvalidKeyError("X25519 keys must be 32 bytes")
    try:
        shared = sodium.crypto_scalarmult(our_sk, their_pk)
    except nacl.exceptions.CryptoError as exc:
        raise InvalidKeyError("weak X25519 public key (low-order point)") from exc
    if shared == bytes(X25519_BYTES):
        raise InvalidKeyError("weak X25519 public key (low-order point)")
    return shared


def sign(ed25519_sk: bytes, message: bytes) -> bytes:
    """Detached Ed25519 signature (64 bytes)."""
    if len(ed25519_sk) != ED25519_SK_BYTES:
        raise InvalidKeyError(f"Ed25519 secret key must be 64 bytes, got {len(ed25519_sk)}")
    return sodium.crypto_sign(message, ed25519_sk)[:ED25519_SIG_BYTES]


def verify(ed25519_pk: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message``; never raises on bad input."""
    if len(ed25519_pk) != ED25519_PK_BYTES or len(signature) != ED25519_SIG_BYTES:
        return False
    try:
        sodium.crypto_sign_open(signature + message, ed25519_pk)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError):
        return False
    return True
