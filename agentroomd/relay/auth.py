"""Who may talk to the relay, and how fast: challenges, session tokens, token buckets.

All three are plain in-memory objects with an injectable clock, so tests can drive time; none of
them does I/O. The formats are the reference's (agentroom-reference.md §2.3, §3.5), so a reference
client's token works here and ours there.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Sequence

import attrs

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import EncodingError
from ratchet.rand import SYSTEM_RANDOM, RandomSource

Clock = Callable[[], float]  # seconds, monotonic


class ChallengeBook:
    """Outstanding HELLO challenges: random, short-lived, single use (consumed on the first attempt, valid or not)."""

    def __init__(
        self,
        ttl_s: float = 60,
        max_outstanding: int = 100_000,
        clock: Clock = time.monotonic,
        rng: RandomSource = SYSTEM_RANDOM,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_outstanding = max_outstanding
        self._clock = clock
        self._rng = rng
        self._issued: dict[str, float] = {}  # insertion order == issue order, which makes pruning cheap

    def issue(self) -> str | None:
        """A fresh challenge (base64url of 24 random bytes, 32 chars); None if too many are outstanding."""
        if len(self._issued) >= self.max_outstanding:
            self.prune()
            if len(self._issued) >= self.max_outstanding:
                return None
        challenge = b64u_encode(self._rng.random_bytes(24))
        self._issued[challenge] = self._clock()
        return challenge

    def consume(self, challenge: str) -> bool:
        """True if ``challenge`` was issued, is unused and younger than the TTL; it is used up either way."""
        issued_at = self._issued.pop(challenge, None)
        return issued_at is not None and self._clock() - issued_at <= self.ttl_s

    def prune(self) -> int:
        """Forget expired challenges; returns how many."""
        cutoff = self._clock() - self.ttl_s
        expired = []
        for challenge, issued_at in self._issued.items():
            if issued_at >= cutoff:
                break
            expired.append(challenge)
        for challenge in expired:
            del self._issued[challenge]
        return len(expired)

    def __len__(self) -> int:
        return len(self._issued)


@attrs.frozen
class TokenClaims:
    jti: str
    ed25519_pk: str
    issued_at_ms: int


def _mac(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), payload, hashlib.sha256).digest()


def mint_token(secret: str, ed25519_pk: str, now_ms: int, rng: RandomSource = SYSTEM_RANDOM) -> str:
    """`base64url("<jti>.<pk>.<issued ms>") + "." + base64url(HMAC-SHA256(secret, payload))`, as the reference."""
    jti = b64u_encode(rng.random_bytes(8))
    payload = f"{jti}.{ed25519_pk}.{now_ms}".encode()
    return f"{b64u_encode(payload)}.{b64u_encode(_mac(secret, payload))}"


def verify_token(token: str, secrets: Sequence[str], now_ms: int, ttl_ms: int = 3_600_000) -> TokenClaims | None:
    """The claims of a valid, unexpired token MACed with any of ``secrets``; None for anything else.

    Mirrors the reference: split at the first ".", decode leniently, constant-time MAC comparison
    against each key (current, then previous), payload `jti.pk.ts` where pk is everything between the
    first and the last ".", reject when older than ``ttl_ms``. Never raises on malformed input.
    """
    payload_b64, sep, mac_b64 = token.partition(".")
    if not sep:
        return None
    try:
        # Node decodes the payload to a string (invalid UTF-8 -> U+FFFD) and MACs the re-encoded string.
        payload = b64u_decode(payload_b64).decode("utf-8", errors="replace").encode("utf-8")
        mac = b64u_decode(mac_b64)
    except EncodingError:
        return None
    if not any(len(mac) == 32 and hmac.compare_digest(mac, _mac(secret, payload)) for secret in secrets):
        return None
    parts = payload.decode("utf-8").split(".")
    if len(parts) < 3:
        return None
    jti, pk, ts_text = parts[0], ".".join(parts[1:-1]), parts[-1]
    if not ts_text.isascii() or not ts_text.isdigit():
        return None
    issued_at = int(ts_text)
    if now_ms - issued_at > ttl_ms:
        return None
    return TokenClaims(jti, pk, issued_at)


class TokenBuckets:
    """Keyed token buckets: ``capacity`` tokens, refilled continuously at ``refill_per_s``.

    Disabled buckets always grant (RATE_LIMIT_DISABLED), so caps and quotas elsewhere still apply.
    Buckets that have refilled are evicted by `evict_full`, so the map stays bounded by recent keys.
    """

    def __init__(self, capacity: float, refill_per_s: float, clock: Clock = time.monotonic, disabled: bool = False):
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self.disabled = disabled
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last update)

    def take(self, key: str, cost: float = 1.0) -> bool:
        if self.disabled:
            return True
        now = self._clock()
        tokens, last = self._buckets.get(key, (self.capacity, now))
        tokens = min(self.capacity, tokens + (now - last) * self.refill_per_s)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            return False
        self._buckets[key] = (tokens - cost, now)
        return True

    def evict_full(self) -> int:
        """Drop buckets that have refilled completely (as good as new); returns how many. Keeps the map bounded."""
        now = self._clock()
        full = [
            key
            for key, (tokens, last) in self._buckets.items()
            if tokens + (now - last) * self.refill_per_s >= self.capacity
        ]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)
