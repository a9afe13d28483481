"""A RandomSource that replays the randomness the reference drew when the vectors were made.

Every vector step lists its ``injected_randomness`` in draw order, each entry naming its source:

    randombytes_buf      -> random_bytes(n)   (``length``, ``hex``)
    crypto_sign_keypair  -> ed25519_seed()    (``seed_hex``)
    crypto_box_keypair   -> x25519_secret()   (``secret_key_hex``)
    crypto.randomUUID    -> uuid4()           (``value``)

``ReplayRandom`` hands the values out in that order and fails the test (AssertionError) as soon as
the code under test draws something else, or a different length, than the reference drew at that
point: a replay that silently went out of step would make every later byte comparison meaningless.

    rng = ReplayRandom(step["injected_randomness"])
    ...                       # code under test draws from rng
    rng.assert_exhausted()    # or inspect rng.remaining
"""

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

_SOURCE_BY_METHOD = {
    "random_bytes": "randombytes_buf",
    "ed25519_seed": "crypto_sign_keypair",
    "x25519_secret": "crypto_box_keypair",
    "uuid4": "crypto.randomUUID",
}


class ReplayRandom:
    """Implements ``ratchet.rand.RandomSource`` from recorded draws (one or more lists, concatenated)."""

    def __init__(self, *draw_lists: Iterable[Mapping[str, Any]]) -> None:
        self._draws: deque[Mapping[str, Any]] = deque(d for draws in draw_lists for d in draws)
        self.drawn = 0

    def extend(self, draws: Iterable[Mapping[str, Any]]) -> None:
        """Append the draws of a later step."""
        self._draws.extend(draws)

    @property
    def remaining(self) -> int:
        return len(self._draws)

    def peek_source(self) -> str | None:
        """The source of the next recorded draw, or None when all have been used."""
        return str(self._draws[0]["source"]) if self._draws else None

    def assert_exhausted(self) -> None:
        assert not self._draws, f"{len(self._draws)} recorded draw(s) left unused, next: {dict(self._draws[0])}"

    def _next(self, method: str) -> Mapping[str, Any]:
        wanted = _SOURCE_BY_METHOD[method]
        assert self._draws, f"{method}() called after all {self.drawn} recorded draws were used"
        draw = self._draws[0]
        assert draw["source"] == wanted, (
            f"draw #{self.drawn} (k={draw.get('k')}): code called {method}() ({wanted}) "
            f"but the reference drew from {draw['source']}"
        )
        self._draws.popleft()
        self.drawn += 1
        return draw

    def random_bytes(self, n: int) -> bytes:
        draw = self._next("random_bytes")
        assert draw["length"] == n, f"random_bytes({n}) but the reference drew {draw['length']} bytes"
        value = bytes.fromhex(draw["hex"])
        assert len(value) == n
        return value

    def ed25519_seed(self) -> bytes:
        return bytes.fromhex(self._next("ed25519_seed")["seed_hex"])

    def x25519_secret(self) -> bytes:
        return bytes.fromhex(self._next("x25519_secret")["secret_key_hex"])

    def uuid4(self) -> str:
        return str(self._next("uuid4")["value"])
