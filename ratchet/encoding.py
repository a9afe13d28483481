"""base64url as the reference emits and reads it.

The reference encodes with Node's ``Buffer.toString("base64url")`` (no padding) and decodes with
``Buffer.from(s, "base64url")``, which is lenient: it accepts both alphabets and padding, and skips
any other character. We emit exactly the same text and decode the same way, so that a value that
verifies there verifies here.
"""

import base64
import binascii
import re

from ratchet.errors import EncodingError

_NOT_B64 = re.compile(r"[^A-Za-z0-9+/\-_]")


def b64u_encode(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Decode like Node's lenient ``Buffer.from(text, "base64url")``.

    Both alphabets are accepted, padding is optional, and characters outside the alphabets are
    skipped (Node stops at the first ``=``; so do we). A single dangling character carries fewer
    than 8 bits and is dropped, as Node drops it.
    """
    head = text.split("=", 1)[0]
    cleaned = _NOT_B64.sub("", head).replace("+", "-").replace("/", "_")
    if len(cleaned) % 4 == 1:
        cleaned = cleaned[:-1]
    try:
        return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - cleaned input always decodes
        raise EncodingError(f"invalid base64url: {exc}") from exc


def b64u_decode_key(text: str, length: int, what: str) -> bytes:
    """Decode a base64url key and insist on its exact byte length, naming it in the error."""
    raw = b64u_decode(text)
    if len(raw) != length:
        raise EncodingError(f"{what}: expected {length} bytes, got {len(raw)}")
    return raw
