"""Noise's SymmetricState (rev 34 §5.2) over BLAKE2b-512 and XChaCha20-Poly1305.

The handshake is Noise ``IKpsk1`` built from these operations exactly as the specification defines
them; the one departure is the cipher: XChaCha20-Poly1305-IETF instead of ChaChaPoly, with the
24-byte nonce ``16 zero bytes || little-endian u64(n)``. So the protocol name is
``Noise_IKpsk1_25519_XChaChaPoly_BLAKE2b``.

The object is mutable on purpose and lives only inside one handshake function call; between the two
messages the invitee keeps just ``(h, ck)`` (after message 1 the cipher key is always re-derived
before it is used again).
"""

from typing import Final

from ratchet.v3.primitives import HASH_BYTES, KEY_BYTES, aead_open, aead_seal, hash64, noise_hkdf

__all__ = ["PROTOCOL_NAME", "SymmetricState"]

PROTOCOL_NAME: Final = b"Noise_IKpsk1_25519_XChaChaPoly_BLAKE2b"


def _nonce(n: int) -> bytes:
    return bytes(16) + n.to_bytes(8, "little")


class SymmetricState:
    """``h`` (transcript hash), ``ck`` (chaining key) and the current cipher key ``k`` with counter ``n``."""

    def __init__(self, h: bytes, ck: bytes) -> None:
        self.h = h
        self.ck = ck
        self.k: bytes | None = None
        self.n = 0

    @classmethod
    def initialize(cls) -> "SymmetricState":
        """``InitializeSymmetric(protocol_name)``: the name fits in HASHLEN, so it is zero-padded."""
        h = PROTOCOL_NAME.ljust(HASH_BYTES, b"\x00")
        return cls(h, h)

    def mix_hash(self, data: bytes) -> None:
        self.h = hash64(self.h + data)

    def mix_key(self, input_key_material: bytes) -> None:
        self.ck, temp_k = noise_hkdf(self.ck, input_key_material, 2)
        self.k, self.n = temp_k[:KEY_BYTES], 0

    def mix_key_and_hash(self, input_key_material: bytes) -> None:
        """How a ``psk`` token enters: into the chaining key, the transcript hash and the cipher key."""
        self.ck, temp_h, temp_k = noise_hkdf(self.ck, input_key_material, 3)
        self.mix_hash(temp_h)
        self.k, self.n = temp_k[:KEY_BYTES], 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:  # pragma: no cover - IKpsk1 always has a key before its first encryption
            raise AssertionError("no cipher key yet")
        ciphertext = aead_seal(self.k, _nonce(self.n), self.h, plaintext)
        self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes | None:
        """The plaintext, or None when it does not authenticate (then nothing changed: n, h stay)."""
        if self.k is None:  # pragma: no cover - see encrypt_and_hash
            raise AssertionError("no cipher key yet")
        plaintext = aead_open(self.k, _nonce(self.n), self.h, ciphertext)
        if plaintext is None:
            return None
        self.n += 1
        self.mix_hash(ciphertext)
        return plaintext
