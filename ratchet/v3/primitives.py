"""The v3 primitives, each a thin, named composition of libsodium and hashlib.

* hash: BLAKE2b-512. HKDF: RFC 5869 over HMAC-BLAKE2b-512 (HashLen 64). Noise's ``HKDF(ck, ikm, n)``
  is that HKDF with ``ck`` as salt and an empty info, its output cut into 64-byte pieces.
* AEAD: XChaCha20-Poly1305 (IETF), 32-byte key, 24-byte nonce, 16-byte tag, with associated data.
* DH: X25519 through `ratchet.keys.x25519`, which refuses low-order points.
* Double Ratchet KDFs (Signal spec §5.2): ``KDF_RK`` is HKDF(salt = root key, ikm = DH output,
  info = "agentroom-v3 root") cut into (root key, chain key); ``KDF_CK`` is keyed BLAKE2b-256 with the
  chain key, over the constant 0x01 for the message key and 0x02 for the next chain key.

Every label starts with "agentroom-v3 ", so no v3 key can ever equal a v2 key derived from the same
input (v2 labels start with "agentroom-v1-" / "agentroom-v2-").
"""

import hashlib
import hmac
from typing import Final

import nacl.bindings as sodium
import nacl.exceptions

__all__ = [
    "AEAD_NONCE_BYTES",
    "AEAD_TAG_BYTES",
    "HASH_BYTES",
    "KEY_BYTES",
    "aead_open",
    "aead_seal",
    "frame_digest",
    "hash64",
    "hkdf",
    "kdf_ck",
    "kdf_rk",
    "noise_hkdf",
]

HASH_BYTES: Final = 64
KEY_BYTES: Final = 32
AEAD_NONCE_BYTES: Final = 24
AEAD_TAG_BYTES: Final = 16
FRAME_DIGEST_BYTES: Final = 32

LABEL_ROOT: Final = b"agentroom-v3 root"
LABEL_FRAME_DIGEST: Final = b"agentroom-v3 frame digest"
_MESSAGE_KEY_INPUT: Final = b"\x01"
_CHAIN_KEY_INPUT: Final = b"\x02"


def hash64(data: bytes) -> bytes:
    """BLAKE2b-512: Noise's HASH."""
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF (extract then expand) with HMAC-BLAKE2b-512."""
    if not 0 < length <= 255 * HASH_BYTES:
        raise ValueError(f"hkdf length out of range: {length}")
    prk = _hmac(salt if salt else bytes(HASH_BYTES), ikm)
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = _hmac(prk, block + info + bytes([counter]))
        out += block
        counter += 1
    return out[:length]


def noise_hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """Noise's ``HKDF(chaining_key, input_key_material, num_outputs)``: 2 or 3 outputs of 64 bytes."""
    data = hkdf(chaining_key, ikm, b"", outputs * HASH_BYTES)
    return tuple(data[i * HASH_BYTES : (i + 1) * HASH_BYTES] for i in range(outputs))


def kdf_rk(root_key: bytes, dh_output: bytes) -> tuple[bytes, bytes]:
    """Signal's ``KDF_RK``: (next root key, new chain key), both 32 bytes."""
    out = hkdf(root_key, dh_output, LABEL_ROOT, 2 * KEY_BYTES)
    return out[:KEY_BYTES], out[KEY_BYTES:]


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """Signal's ``KDF_CK``: (next chain key, message key), both 32 bytes."""
    next_chain = hashlib.blake2b(_CHAIN_KEY_INPUT, digest_size=KEY_BYTES, key=chain_key).digest()
    message_key = hashlib.blake2b(_MESSAGE_KEY_INPUT, digest_size=KEY_BYTES, key=chain_key).digest()
    return next_chain, message_key


def aead_seal(key: bytes, nonce: bytes, associated_data: bytes, plaintext: bytes) -> bytes:
    """XChaCha20-Poly1305-IETF: ciphertext followed by the 16-byte tag."""
    sealed: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated_data, nonce, key)
    return sealed


def aead_open(key: bytes, nonce: bytes, associated_data: bytes, sealed: bytes) -> bytes | None:
    """The plaintext, or None when the tag does not verify (never raises for a forged box)."""
    if len(sealed) < AEAD_TAG_BYTES:
        return None
    try:
        plaintext: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(sealed, associated_data, nonce, key)
    except nacl.exceptions.CryptoError:
        return None
    return plaintext


def frame_digest(frame: bytes) -> bytes:
    """What a v3 routed frame carries as ``nonce``: a digest of the whole inner frame.

    The v2 routed signature covers ``{from, to, seq, nonce}``; with this nonce it covers every byte of
    the frame too, and a receiver that recomputes it rejects any change to ``ciphertext`` up front.
    """
    digest = _FRAME_DIGEST_START.copy()  # the label already absorbed: no copy of the frame, no setup
    digest.update(frame)
    return digest.digest()


_FRAME_DIGEST_START: Final = hashlib.blake2b(LABEL_FRAME_DIGEST, digest_size=FRAME_DIGEST_BYTES)
"""BLAKE2b-256 after the label, copied for each frame (a copy is never updated in place here)."""
