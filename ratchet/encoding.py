"""base64url as the reference emits and reads it.

The reference encodes with Node's ``Buffer.toString("base64url")`` (no padding) and decodes with
``Buffer.from(s, "base64url")``, which is lenient: it accepts both alphabets and padding, and skips
any other character. We emit exactly the same text and decode the same way, so that a value that
verifies there verifies here.

Every frame field and key goes through these two functions, ciphertexts of up to 192 KiB among
them, so both are built from a few C calls. Decoding takes the strict C decoder for the well-formed
text every honest peer sends, and the plain lenient reference (`_lenient_b64u_decode`) for anything
else; tests/ratchet/test_fast_paths.py proves the two agree on every input.
"""

import base64
import binascii
import re

from ratchet.errors import EncodingError

_NOT_B64 = re.compile(r"[^A-Za-z0-9+/\-_]")
_TO_STANDARD_ALPHABET = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE_ALPHABET = bytes.maketrans(b"+/", b"-_")


def b64u_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5)."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE_ALPHABET).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Decode like Node's lenient ``Buffer.from(text, "base64url")``.

    Both alphabets are accepted, padding is optional, and characters outside the alphabets are
    skipped (Node stops at the first ``=``; so do we). A single dangling character carries fewer
    than 8 bits and is dropped, as Node drops it.

    Text that is plain base64 (either alphabet, or a mix, with no padding or correct padding) is
    exactly what the strict C decoder accepts, and for it the strict decoder returns what the
    lenient rules give; everything else takes the lenient path.
    """
    if type(text) is str and text.isascii():  # anything else keeps the reference's behaviour (and errors)
        data = text.encode("ascii").translate(_TO_STANDARD_ALPHABET)
        if len(data) % 4:
            data += b"=" * (-len(data) % 4)
        try:
            return binascii.a2b_base64(data, strict_mode=True)
        except binascii.Error:
            pass
    return _lenient_b64u_decode(text)


def _lenient_b64u_decode(text: str) -> bytes:
    """The reference rules written plainly: cut at the first ``=``, drop foreign characters, decode."""
    head = text.split("=", 1)[0]
    cleaned = _NOT_B64.sub("", head).replace("+", "-").replace("/", "_")
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - cleaned input always decodes
        raise EncodingError(f"invalid base64url: {exc}") from exc


def _reference_b64u_encode(data: bytes) -> str:
    """`b64u_encode` through the stdlib's urlsafe codec: what the fast encoder must equal."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode_key(text: str, length: int, what: str) -> bytes:
    """Decode a base64url key and insist on its exact byte length, naming it in the error."""
    raw = b64u_decode(text)
    if len(raw) != length:
        raise EncodingError(f"{what}: expected {length} bytes, got {len(raw)}")
    return raw
