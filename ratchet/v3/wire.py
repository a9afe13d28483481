"""The v3 frames: a versioned binary frame inside the fields a v2 relay already routes.

A v2 relay (ours or the reference's, which drops unknown JSON fields) routes MSG / SESSION_INIT /
SESSION_ACK frames with ``from, to, ciphertext, nonce, sig, seq, ratchet_pk``. v3 puts its whole
frame, header included, into ``ciphertext`` (base64url) and derives every other field from it:

=============  ==========================================================================
``ciphertext``  base64url of the inner frame (below), canonical, at most 147,456 bytes
``nonce``       base64url of ``frame_digest(inner frame)`` (32 bytes)
``seq``         the message number n for MSG, 0 for the handshake frames
``sig``         the v2 routed signature over {from, to, seq, nonce}: through the digest it
                covers every byte of the frame
``ratchet_pk``  absent
=============  ==========================================================================

A receiver recomputes all of them and refuses a frame where any differs, so no byte a relay
forwards can change without the frame being rejected. Every inner frame starts with the version
byte 3 and a type byte; the type decides which relay frame may carry it (type confusion fails):

====  ===================  ===========================  ======================================
type  name                 carried by                   layout after version and type
====  ===================  ===========================  ======================================
1     HANDSHAKE_INIT       INVITE_CLAIM → SESSION_INIT  invite_id 16, e 32, enc(s) 48, enc(payload) 82
2     HANDSHAKE_RESPONSE   SESSION_ACK                  e 32, enc(payload) 18
3     MESSAGE              MSG                          session_id 16, dh 32, pn u32, n u32, nonce 24, box
4     CLOSE                MSG                          as MESSAGE
====  ===================  ===========================  ======================================

Integers are big-endian. docs/protocol-v3.md is the full specification.
"""

import binascii
import enum
import functools
import struct
import uuid
from typing import Final, Literal, TypeAlias

import attrs

from ratchet.encoding import b64u_decode
from ratchet.errors import EncodingError
from ratchet.frames import MAX_CIPHERTEXT
from ratchet.keys import KeyPair, sign, verify
from ratchet.signatures import routed_sig_input_b64u
from ratchet.v3.errors import FrameTypeError, MalformedFrameError, UnsupportedVersionError, WrongPeerError
from ratchet.v3.primitives import AEAD_NONCE_BYTES, AEAD_TAG_BYTES, frame_digest

__all__ = [
    "HANDSHAKE_INIT_BYTES",
    "HANDSHAKE_RESPONSE_BYTES",
    "MAX_FRAME_BYTES",
    "MESSAGE_HEADER_BYTES",
    "VERSION",
    "ClaimFields",
    "FrameType",
    "InitFrame",
    "MessageHeader",
    "OuterType",
    "PublishFields",
    "ResponseFrame",
    "RoutedFields",
    "b64u",
    "b64u_strict",
]

VERSION: Final = 3
ED25519_PK_BYTES: Final = 32
X25519_BYTES: Final = 32
SESSION_ID_BYTES: Final = 16
INVITE_ID_BYTES: Final = 16
SIGNATURE_BYTES: Final = 64

MAX_FRAME_BYTES: Final = MAX_CIPHERTEXT // 4 * 3
"""The largest inner frame whose base64url fits the relays' ciphertext bound (196,608 characters)."""

OuterType: TypeAlias = Literal["MSG", "SESSION_INIT", "SESSION_ACK"]


class FrameType(enum.IntEnum):
    HANDSHAKE_INIT = 1
    HANDSHAKE_RESPONSE = 2
    MESSAGE = 3
    CLOSE = 4

    @property
    def outer_type(self) -> OuterType:
        """The relay frame type that carries this kind of inner frame."""
        if self is FrameType.HANDSHAKE_INIT:
            return "SESSION_INIT"
        if self is FrameType.HANDSHAKE_RESPONSE:
            return "SESSION_ACK"
        return "MSG"


INIT_PAYLOAD_BYTES: Final = 2 + SIGNATURE_BYTES  # features u16, invitee's identity signature
RESPONSE_PAYLOAD_BYTES: Final = 2  # features u16
HANDSHAKE_INIT_BYTES: Final = (
    2 + INVITE_ID_BYTES + X25519_BYTES + (X25519_BYTES + AEAD_TAG_BYTES) + (INIT_PAYLOAD_BYTES + AEAD_TAG_BYTES)
)
HANDSHAKE_RESPONSE_BYTES: Final = 2 + X25519_BYTES + RESPONSE_PAYLOAD_BYTES + AEAD_TAG_BYTES
_MESSAGE_HEADER: Final = struct.Struct(f">BB{SESSION_ID_BYTES}s{X25519_BYTES}sII{AEAD_NONCE_BYTES}s")
MESSAGE_HEADER_BYTES: Final = _MESSAGE_HEADER.size
_MESSAGE_TYPES: Final = frozenset((FrameType.MESSAGE, FrameType.CLOSE))
_FRAME_TYPES: Final = {int(frame_type): frame_type for frame_type in FrameType}
"""Type byte to `FrameType`: a dictionary lookup costs a fraction of the enum's own constructor."""
_OUTER_TYPES: Final = {frame_type: frame_type.outer_type for frame_type in FrameType}
"""`FrameType.outer_type` looked up, not recomputed, on every frame sent and received."""


# ── base64url, strictly ─────────────────────────────────────────────────────────────────────────

_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_VALUE: Final = bytes(_ALPHABET.find(bytes([c])) % 64 for c in range(256))
"""Each base64url character's 6-bit value (other bytes never get this far)."""
_UNUSED_BITS: Final = (0, 0, 0x0F, 0x03)
"""By length mod 4: the low bits of the last character that encode no byte, and must be zero."""
_PADDING: Final = (b"", b"", b"==", b"=")


def b64u(data: bytes) -> str:
    """base64url without padding, as every v3 field is written (`_b64u_ascii`, decoded; inlined: one
    call less for each of the three fields of every frame sent)."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").replace(b"+", b"-").replace(b"/", b"_").decode()


def _b64u_ascii(data: bytes) -> bytes:
    """`b64u` as ASCII bytes. Two ``replace`` (each a fast search, then copies) took 1.1 us where one
    ``translate`` (a table lookup per byte) took 1.4 us on a 610-byte frame (microbenchmark)."""
    return binascii.b2a_base64(data, newline=False).rstrip(b"=").replace(b"+", b"-").replace(b"/", b"_")


def b64u_strict(text: object, what: str, length: int | None = None) -> bytes:
    """Decode base64url that must be exactly what `b64u` writes: one spelling per value.

    v2 decodes leniently (like Node); v3 does not, so a relay cannot re-spell a field (padding,
    the other alphabet, stray characters) and still have it accepted. Canonical means: only the
    64 base64url characters, no padding, a length that is not 1 mod 4, and zero bits where the
    last character encodes no byte. Each is checked directly, without re-encoding the bytes (this
    runs on every received frame's ciphertext); tests/v3/test_v3_b64u_strict.py holds it equal to
    the former definition, "matches [A-Za-z0-9_-]*, decodes, and re-encodes to itself".
    """
    if not isinstance(text, str) or not text.isascii() or len(text) % 4 == 1:
        raise MalformedFrameError(f"{what}: not canonical base64url")
    if "+" in text or "/" in text or "=" in text:  # the standard alphabet's own characters, and padding
        raise MalformedFrameError(f"{what}: not canonical base64url")
    data = text.encode("ascii")
    standard = data.replace(b"-", b"+").replace(b"_", b"/")  # two searches beat a per-byte table here
    try:  # strict mode refuses every other character outside the alphabet
        raw = binascii.a2b_base64(standard + _PADDING[len(data) % 4], strict_mode=True)
    except binascii.Error as exc:
        raise MalformedFrameError(f"{what}: not canonical base64url") from exc
    if data and _VALUE[data[-1]] & _UNUSED_BITS[len(data) % 4]:
        raise MalformedFrameError(f"{what}: not canonical base64url")
    if length is not None and len(raw) != length:
        raise MalformedFrameError(f"{what}: expected {length} bytes, got {len(raw)}")
    return raw


# ── the relay-visible fields ────────────────────────────────────────────────────────────────────


@attrs.frozen
class RoutedFields:
    """One routed frame (MSG / SESSION_INIT / SESSION_ACK) without the relay's msg_id and ts.

    `ratchet.v3.transport` converts to and from `ratchet.frames` objects.
    """

    type: OuterType
    from_pk: str
    to: str
    ciphertext: str
    nonce: str
    sig: str
    seq: int
    ratchet_pk: str | None = None


@attrs.frozen
class ClaimFields:
    """INVITE_CLAIM: the relay verifies ``sig`` and forwards the rest as SESSION_INIT to the inviter."""

    invite_id: str
    from_pk: str
    ciphertext: str
    nonce: str
    sig: str

    def as_session_init(self, inviter_pk: str) -> RoutedFields:
        """What the inviter receives: the relay's SESSION_INIT built from this claim (to = inviter, seq 0)."""
        return RoutedFields("SESSION_INIT", self.from_pk, inviter_pk, self.ciphertext, self.nonce, self.sig, 0)


@attrs.frozen
class PublishFields:
    """INVITE_PUBLISH: all a v3 relay learns about an invite (a random id, an expiry, a constant blob)."""

    invite_id: str
    blob: str
    expires_at: int


@functools.lru_cache(maxsize=256)
def public_key_text(public_key: bytes) -> str:
    """`b64u` of a public key, remembered: a line signs with, and addresses, the same few keys every time."""
    return b64u(public_key)


def seal_routed(identity: KeyPair, frame_type: FrameType, to: str, inner: bytes, seq: int) -> RoutedFields:
    """The routed fields carrying ``inner`` from ``identity`` to ``to``."""
    if len(inner) > MAX_FRAME_BYTES:
        raise MalformedFrameError(f"frame of {len(inner)} bytes exceeds the relay bound of {MAX_FRAME_BYTES}")
    nonce = _b64u_ascii(frame_digest(inner))
    from_pk = public_key_text(identity.ed25519_pk)
    signature = sign(identity.ed25519_sk, routed_sig_input_b64u(from_pk, to, seq, nonce))  # as `sign_routed`
    return RoutedFields(
        _OUTER_TYPES[frame_type], from_pk, to, b64u(inner), nonce.decode("ascii"), b64u(signature), seq
    )


def open_routed(
    fields: RoutedFields, sender_pk: str, recipient_pk: str, *, signature_verified: bool = False
) -> tuple[FrameType, bytes]:
    """Check every outer field of a received v3 frame and return (inner type, inner frame).

    Checks, cheapest first: ``from``/``to`` are the expected parties (reflection, misrouting), no
    ``ratchet_pk``, canonical base64url within the size bound, version 3, a known type carried by the
    right relay frame type (type confusion), ``nonce`` is the frame's digest, ``seq`` matches the
    frame, and the routed signature verifies. The inner frame's own authentication comes after this.

    ``signature_verified=True`` skips only the last check, for a caller that has just run
    `ratchet.signatures.verify_routed` on these very fields (the daemon checks every delivery's
    signature before it routes it to a session, to count forgeries): an Ed25519 verification is the
    costliest step of receiving, and once is enough. The signature must still be well-formed.
    """
    frame_type, inner, _ = _open_routed(fields, sender_pk, recipient_pk, signature_verified)
    return frame_type, inner


def open_message(
    fields: RoutedFields, sender_pk: str, recipient_pk: str, *, signature_verified: bool = False
) -> tuple[FrameType, "MessageHeader", bytes]:
    """`open_routed`, then `MessageHeader.parse` of the inner frame: (type, header, inner frame).

    The same checks and errors, in the same order, as the two calls; the header is parsed once
    (checking ``seq`` already needs it).
    """
    frame_type, inner, header = _open_routed(fields, sender_pk, recipient_pk, signature_verified)
    if header is None:  # not a message frame, or too short to hold a header: parse says which
        header = MessageHeader.parse(inner)
    return frame_type, header, inner


def _open_routed(
    fields: RoutedFields, sender_pk: str, recipient_pk: str, signature_verified: bool
) -> tuple[FrameType, bytes, "MessageHeader | None"]:
    if fields.from_pk != sender_pk:
        raise WrongPeerError("frame is not from the expected peer")
    if fields.to != recipient_pk:
        raise WrongPeerError("frame is not addressed to us")
    if fields.ratchet_pk is not None:
        raise MalformedFrameError("v3 frames carry no ratchet_pk (a v2 frame, or an altered one)")
    if not isinstance(fields.ciphertext, str) or len(fields.ciphertext) > MAX_CIPHERTEXT:
        raise MalformedFrameError("ciphertext exceeds the relay bound")
    inner = b64u_strict(fields.ciphertext, "ciphertext")
    frame_type = inner_type(inner)
    if _OUTER_TYPES[frame_type] != fields.type:
        raise FrameTypeError(f"a {frame_type.name} frame cannot arrive as {fields.type}")
    # Equal to the canonical text of the digest, or else: the canonical spelling check first, as
    # `b64u_strict` then a comparison of bytes would say (encoding 32 bytes beats decoding them).
    nonce = _b64u_ascii(frame_digest(inner))
    if fields.nonce != nonce.decode("ascii"):
        b64u_strict(fields.nonce, "nonce")
        raise MalformedFrameError("nonce is not the digest of the frame: the frame was altered")
    header = None
    if frame_type in _MESSAGE_TYPES and len(inner) >= MESSAGE_HEADER_BYTES:
        header = _parse_message_header(frame_type, inner)
    if type(fields.seq) is not int or fields.seq != (0 if header is None else header.n):
        raise MalformedFrameError("seq does not match the frame")
    signature = b64u_strict(fields.sig, "sig", SIGNATURE_BYTES)
    if not signature_verified and not _routed_signature_valid(fields, nonce, signature):
        raise WrongPeerError("routed signature does not verify with the sender's key")
    return frame_type, inner, header


def _routed_signature_valid(fields: RoutedFields, nonce: bytes, signature: bytes) -> bool:
    """`ratchet.signatures.verify_routed` of the fields, given the signature's bytes (decoded already)
    and ``fields.nonce`` as the ASCII bytes it was found equal to.

    The same steps: the sender's key decoded leniently (a key that does not decode is a signature
    that does not verify), the signed bytes of `routed_sig_input`, one Ed25519 verification.
    """
    if not isinstance(fields.from_pk, str):
        return False
    try:
        public_key = _public_key_bytes(fields.from_pk)
    except EncodingError:
        return False
    return verify(public_key, routed_sig_input_b64u(fields.from_pk, fields.to, fields.seq, nonce), signature)


_public_key_bytes: Final = functools.lru_cache(maxsize=256)(b64u_decode)
"""Lenient decoding of a sender's key, remembered (a line hears from one key)."""


def inner_type(inner: bytes) -> FrameType:
    """The type of an inner frame, after checking its version byte."""
    if len(inner) < 2:
        raise MalformedFrameError(f"frame too short: {len(inner)} bytes")
    if inner[0] != VERSION:
        raise UnsupportedVersionError(f"protocol version {inner[0]} is not {VERSION}")
    frame_type = _FRAME_TYPES.get(inner[1])
    if frame_type is None:
        raise MalformedFrameError(f"unknown v3 frame type {inner[1]}")
    return frame_type


# ── inner frames ────────────────────────────────────────────────────────────────────────────────


def uuid_bytes(invite_id: str) -> bytes:
    """The 16 bytes of a canonical lowercase UUID string (what relays accept as invite_id)."""
    try:
        parsed = uuid.UUID(invite_id)
    except (ValueError, AttributeError, TypeError) as exc:
        raise MalformedFrameError("invite id is not a UUID") from exc
    if str(parsed) != invite_id:
        raise MalformedFrameError("invite id is not a canonical lowercase UUID")
    return parsed.bytes


def uuid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw))


@attrs.frozen
class InitFrame:
    """HANDSHAKE_INIT (Noise IKpsk1 message 1) split into its parts."""

    invite_id: str
    ephemeral: bytes
    encrypted_static: bytes
    encrypted_payload: bytes

    @property
    def header(self) -> bytes:
        """The cleartext prefix the transcript hashes before the message's tokens."""
        return bytes([VERSION, FrameType.HANDSHAKE_INIT]) + uuid_bytes(self.invite_id)

    def pack(self) -> bytes:
        return self.header + self.ephemeral + self.encrypted_static + self.encrypted_payload

    @classmethod
    def parse(cls, inner: bytes) -> "InitFrame":
        if inner_type(inner) is not FrameType.HANDSHAKE_INIT:
            raise FrameTypeError(f"expected HANDSHAKE_INIT, got {FrameType(inner[1]).name}")
        if len(inner) != HANDSHAKE_INIT_BYTES:
            raise MalformedFrameError(f"HANDSHAKE_INIT must be {HANDSHAKE_INIT_BYTES} bytes, got {len(inner)}")
        at = 2 + INVITE_ID_BYTES
        static_end = at + X25519_BYTES + X25519_BYTES + AEAD_TAG_BYTES
        return cls(
            invite_id=uuid_text(inner[2:at]),
            ephemeral=inner[at : at + X25519_BYTES],
            encrypted_static=inner[at + X25519_BYTES : static_end],
            encrypted_payload=inner[static_end:],
        )


@attrs.frozen
class ResponseFrame:
    """HANDSHAKE_RESPONSE (Noise IKpsk1 message 2) split into its parts."""

    ephemeral: bytes
    encrypted_payload: bytes

    @property
    def header(self) -> bytes:
        return bytes([VERSION, FrameType.HANDSHAKE_RESPONSE])

    def pack(self) -> bytes:
        return self.header + self.ephemeral + self.encrypted_payload

    @classmethod
    def parse(cls, inner: bytes) -> "ResponseFrame":
        if inner_type(inner) is not FrameType.HANDSHAKE_RESPONSE:
            raise FrameTypeError(f"expected HANDSHAKE_RESPONSE, got {FrameType(inner[1]).name}")
        if len(inner) != HANDSHAKE_RESPONSE_BYTES:
            raise MalformedFrameError(f"HANDSHAKE_RESPONSE must be {HANDSHAKE_RESPONSE_BYTES} bytes, got {len(inner)}")
        return cls(ephemeral=inner[2 : 2 + X25519_BYTES], encrypted_payload=inner[2 + X25519_BYTES :])


@attrs.frozen
class MessageHeader:
    """The cleartext header of a MESSAGE or CLOSE frame; all of it is AEAD associated data."""

    type: FrameType
    session_id: bytes
    ratchet_pk: bytes
    pn: int
    n: int
    nonce: bytes

    def pack(self) -> bytes:
        return pack_message_header(self.type, self.session_id, self.ratchet_pk, self.pn, self.n, self.nonce)

    @classmethod
    def parse(cls, inner: bytes) -> "MessageHeader":
        return _parse_message_header(inner_type(inner), inner)


def pack_message_header(
    frame_type: FrameType, session_id: bytes, ratchet_pk: bytes, pn: int, n: int, nonce: bytes
) -> bytes:
    """`MessageHeader.pack` without building the object first (every sent message packs one)."""
    return _MESSAGE_HEADER.pack(VERSION, frame_type, session_id, ratchet_pk, pn, n, nonce)


def _parse_message_header(frame_type: FrameType, inner: bytes) -> MessageHeader:
    """`MessageHeader.parse` for an inner frame whose version and type ``inner_type`` has read."""
    if frame_type not in _MESSAGE_TYPES:
        raise FrameTypeError(f"a {frame_type.name} frame is not a message")
    if len(inner) < MESSAGE_HEADER_BYTES + AEAD_TAG_BYTES:
        raise MalformedFrameError(f"message frame too short: {len(inner)} bytes")
    _, _, session_id, ratchet_pk, pn, n, nonce = _MESSAGE_HEADER.unpack_from(inner)
    return MessageHeader(frame_type, session_id, ratchet_pk, pn, n, nonce)
