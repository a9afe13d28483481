"""The fast canonical base64url codec is the one it replaced, on every input.

`ratchet.v3.wire.b64u_strict` used to accept a text when a regular expression matched it, its
length was not 1 mod 4, the standard decoder read it, and re-encoding the bytes gave the text back.
It now checks the same conditions one by one without re-encoding (receiving a frame decodes its
ciphertext, its nonce and its signature). The old definitions are kept here, verbatim, as the
reference: the two must accept the same texts, return the same bytes, and refuse the rest with
the same error. `b64u` must write what the standard library's encoder writes.
"""

import base64
import binascii
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ratchet.v3.errors import MalformedFrameError
from ratchet.v3.wire import b64u, b64u_strict

_REFERENCE_PATTERN = re.compile(r"[A-Za-z0-9_-]*")


def reference_b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def reference_b64u_strict(text: object, what: str, length: int | None = None) -> bytes:
    if not isinstance(text, str) or _REFERENCE_PATTERN.fullmatch(text) is None or len(text) % 4 == 1:
        raise MalformedFrameError(f"{what}: not canonical base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedFrameError(f"{what}: not canonical base64url") from exc
    if reference_b64u(raw) != text:
        raise MalformedFrameError(f"{what}: not canonical base64url")
    if length is not None and len(raw) != length:
        raise MalformedFrameError(f"{what}: expected {length} bytes, got {len(raw)}")
    return raw


def outcome(decode: object, text: object, length: int | None) -> bytes | str:
    """The bytes, or the error's message (both raise MalformedFrameError and nothing else)."""
    assert callable(decode)
    try:
        result = decode(text, "field", length)
    except MalformedFrameError as exc:
        return f"error: {exc}"
    assert isinstance(result, bytes)
    return result


# Texts near the canonical ones: base64url and standard characters, padding, whitespace, non-ASCII.
NEAR_ALPHABET = st.sampled_from([*"AQgwBCz09_-+/=", " ", "\n", "\t", "é", "\x00", "\x80", "."])
LENGTHS = st.none() | st.integers(0, 40)


def mutated(text: str, position: int, character: str, mode: int) -> str:
    """``text`` with one character replaced, inserted or deleted at ``position``."""
    if not text:
        return character
    at = position % (len(text) + 1)
    if mode == 0:
        return text[:at] + character + text[at + 1 :]
    if mode == 1:
        return text[:at] + character + text[at:]
    return text[:at] + text[at + 1 :]


@given(st.binary(max_size=200))
def test_b64u_writes_what_the_standard_encoder_writes(data: bytes) -> None:
    assert b64u(data) == reference_b64u(data)
    assert b64u_strict(b64u(data), "field") == data


@given(st.binary(max_size=60), st.integers(0, 100), NEAR_ALPHABET, st.integers(0, 2), LENGTHS)
def test_one_character_off_a_canonical_text_gets_the_same_answer(
    data: bytes, position: int, character: str, mode: int, length: int | None
) -> None:
    text = mutated(b64u(data), position, character, mode)
    assert outcome(b64u_strict, text, length) == outcome(reference_b64u_strict, text, length)


@given(st.text(NEAR_ALPHABET, max_size=30) | st.text(max_size=12), LENGTHS)
@example("", None)
@example("", 0)
@example("QQ", None)  # canonical: "A"
@example("QR", None)  # the same byte with a nonzero unused bit
@example("QUI", None)
@example("QUJ", None)
@example("QUJD", 3)
@example("QUJD", 4)
@example("QQ==", None)
@example("A", None)
@example("QQ\n", None)
@example("Q+8", None)
@example("Q/8", None)
@example("QUJD==", None)
@example("    ", None)  # only characters a lenient decoder skips
@example("QUJD\n\n\n\n", None)
def test_any_text_gets_the_same_answer(text: str, length: int | None) -> None:
    assert outcome(b64u_strict, text, length) == outcome(reference_b64u_strict, text, length)


@pytest.mark.parametrize("value", [None, 3, b"QUJD", bytearray(b"QUJD"), ["QUJD"]])
def test_a_value_that_is_not_text_is_refused(value: object) -> None:
    assert outcome(b64u_strict, value, None) == outcome(reference_b64u_strict, value, None) == (
        "error: field: not canonical base64url"
    )


def test_every_last_character_of_a_two_and_three_character_group() -> None:
    """All 64 last characters after "QU" and "Q": exactly the canonical ones pass, as before."""
    for prefix in ("Q", "QU", "QUJDQ", "QUJDQU"):
        for character in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_":
            text = prefix + character
            assert outcome(b64u_strict, text, None) == outcome(reference_b64u_strict, text, None)
