"""The v3 hot path's shortcuts write and read the same bytes as the plain definitions they replace.

Each shortcut is held, on arbitrary inputs, to the definition it stands for: the routed signature
input with the nonce given as base64url bytes (`routed_sig_input_b64u`) to `routed_sig_input` and to
the reference JSON.stringify path; the frame digest to BLAKE2b-256 of label + frame.
"""

import hashlib
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from ratchet import signatures
from ratchet.signatures import routed_sig_input, routed_sig_input_b64u
from ratchet.v3.primitives import LABEL_FRAME_DIGEST, frame_digest
from ratchet.v3.wire import b64u


class Tag(str):
    """A str subclass: the shortcuts must not rely on what a subclass could override."""


# Public keys as v3 writes them, and any text at all (quotes, controls, non-ASCII, lone surrogates).
KEY_TEXT = st.binary(min_size=32, max_size=32).map(b64u) | st.text(max_size=20)
SEQS = st.integers(0, 2**32 - 1) | st.integers(-(2**60), 2**60) | st.booleans()
EXACT = 2**53


@given(KEY_TEXT, KEY_TEXT, SEQS, st.binary(max_size=40))
@example("A" * 43, "B" * 43, EXACT, b"\x00" * 32)
@example("A" * 43, "B" * 43, EXACT + 1, b"\x00" * 32)
@example("A" * 43, "B" * 43, -EXACT - 1, b"\x00" * 32)
@example("A" * 43, "B" * 43, True, b"\x00" * 32)
@example('"', "\\", 0, b"")
@example("\ud800", "\u2028", 7, b"\xff" * 32)
def test_routed_sig_input_b64u_is_routed_sig_input(from_pk: str, to_pk: str, seq: Any, digest: bytes) -> None:
    nonce = b64u(digest)
    expected = signatures._reference_routed_sig_input(from_pk, to_pk, seq, nonce)
    assert routed_sig_input(from_pk, to_pk, seq, nonce) == expected
    assert routed_sig_input_b64u(from_pk, to_pk, seq, nonce.encode("ascii")) == expected
    assert routed_sig_input_b64u(from_pk, to_pk, seq, nonce.encode("ascii")) == expected  # cached prefix
    assert routed_sig_input_b64u(Tag(from_pk), Tag(to_pk), seq, nonce.encode("ascii")) == expected


@given(st.binary(max_size=3000))
def test_frame_digest_is_blake2b_of_label_and_frame(frame: bytes) -> None:
    expected = hashlib.blake2b(LABEL_FRAME_DIGEST + frame, digest_size=32).digest()
    assert frame_digest(frame) == expected
    assert frame_digest(frame) == expected  # the shared starting state is never changed
