"""Randomness as an injected dependency.

`ratchet` draws nothing itself: every operation that needs randomness takes a `RandomSource`.
Production code passes `SystemRandom`; the vector tests pass a source that replays the values the
reference drew, so that every output byte can be compared.
"""

import uuid
from typing import Protocol

import nacl.utils


class RandomSource(Protocol):
    """The four kinds of randomness the protocol draws, in the reference's terms."""

    def random_bytes(self, n: int) -> bytes:
        """libsodium ``randombytes_buf(n)``: nonces."""
        ...

    def ed25519_seed(self) -> bytes:
        """32 bytes that seed ``crypto_sign_seed_keypair``."""
        ...

    def x25519_secret(self) -> bytes:
        """32 bytes used as an X25519 secret key (unclamped, as libsodium stores it)."""
        ...

    def uuid4(self) -> str:
        """A random RFC 9562 version-4 UUID string (frame and invite ids)."""
        ...


class SystemRandom:
    """The operating system's CSPRNG through libsodium."""

    def random_bytes(self, n: int) -> bytes:
        return nacl.utils.random(n)

    def ed25519_seed(self) -> bytes:
        return nacl.utils.random(32)

    def x25519_secret(self) -> bytes:
        return nacl.utils.random(32)

    def uuid4(self) -> str:
        return str(uuid.uuid4())


SYSTEM_RANDOM = SystemRandom()
