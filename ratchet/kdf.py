"""Key derivation exactly as the reference computes it (keyed BLAKE2b, not RFC 5869 HKDF).

extract: PRK = BLAKE2b-256(key = salt, msg = ikm)
expand:  OKM = BLAKE2b-L(key = PRK, msg = UTF-8(info) || 0x01), a single block
"""

import hashlib
import struct

from ratchet.errors import RatchetError

LABEL_KEY_A = "agentroom-v1-keyA"
LABEL_KEY_B = "agentroom-v1-keyB"
LABEL_ROOT = "agentroom-v2-root"
LABEL_CHAIN = "agentroom-v2-chain"

KEY_BYTES = 32


def kdf(ikm: bytes, salt: bytes, info: str, length: int = KEY_BYTES) -> bytes:
    """The reference's ``hkdf``: keyed-BLAKE2b extract, then one keyed-BLAKE2b expand block.

    A salt of 0 bytes means unkeyed BLAKE2b; more than 64 bytes (BLAKE2b's key limit), or an output
    length outside 1..64, is an error.
    """
    if len(salt) > 64:
        raise RatchetError(f"kdf salt too long: {len(salt)} bytes (max 64)")
    if not 1 <= length <= 64:
        raise RatchetError(f"kdf output length out of range: {length} (1..64)")
    prk = hashlib.blake2b(ikm, digest_size=32, key=salt).digest()
    return hashlib.blake2b(info.encode("utf-8") + b"\x01", digest_size=length, key=prk).digest()


def message_key(chain_key: bytes, seq: int) -> bytes:
    """MK = BLAKE2b-256(key = chain key, msg = uint32 big-endian(seq)); seq wraps modulo 2**32."""
    return hashlib.blake2b(struct.pack(">I", seq % 2**32), digest_size=32, key=chain_key).digest()


def chain_update(chain_key: bytes, ikm: bytes) -> bytes:
    """Mix ``ikm`` (a message key, or a DH output for a DH step) into a chain key."""
    return kdf(ikm, chain_key, LABEL_CHAIN)


def ratchet_step(root_key: bytes, dh_output: bytes) -> tuple[bytes, bytes]:
    """The reference's ``ratchetStep``: (new root key, chain key). v2 uses only the chain key."""
    return kdf(dh_output, root_key, LABEL_ROOT), kdf(dh_output, root_key, LABEL_CHAIN)


def bootstrap_keys(shared_secret: bytes, invite_nonce: bytes) -> tuple[bytes, bytes]:
    """(keyA, keyB) from the invite DH; the inviter sends on keyA, the invitee on keyB."""
    return (
        kdf(shared_secret, invite_nonce, LABEL_KEY_A),
        kdf(shared_secret, invite_nonce, LABEL_KEY_B),
    )
