"""What is signed, and how, for routed frames and HELLO.

Routed frames (MSG, SESSION_ACK, INVITE_CLAIM / SESSION_INIT) are signed over the UTF-8 of
``JSON.stringify({from, to, seq, nonce})`` in exactly that order: not over type, msg_id, ts,
ciphertext or ratchet_pk (the reference's design; the AEAD protects the ciphertext). HELLO is signed
over the UTF-8 of the challenge *text* as received, not over its base64url-decoded bytes.

Verification never raises: a malformed key or signature (bad base64url, wrong length) is simply an
invalid signature, as in the reference, where ``verify`` catches libsodium's exceptions.

Every message is signed once and verified once, so the signed bytes are built with one f-string
when the fields are plain strings and seq an exact integer: each string written by `js_string` and
seq as its digits is what `js_stringify` writes for the object (tests/ratchet/test_fast_paths.py
holds the two to the same bytes). The text of our own public key and the bytes of the peer's are
cached: they are the same few keys on every message.
"""

import functools

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import EncodingError
from ratchet.jsjson import js_string, js_stringify, js_utf8_encode
from ratchet.keys import KeyPair, verify

__all__ = [
    "hello_sig_input",
    "routed_sig_input",
    "routed_sig_input_b64u",
    "sign_hello",
    "sign_routed",
    "verify_b64u",
    "verify_hello",
    "verify_routed",
]

_MAX_EXACT_INT = 2**53  # JSON.stringify writes every integer up to this magnitude as its digits
_KEY_CACHE_SIZE = 256  # distinct keys kept decoded/encoded: a daemon talks to a handful of peers


def routed_sig_input(from_pk: str, to_pk: str, seq: int, nonce: str) -> bytes:
    """The signed bytes of a routed frame: compact JSON of from, to, seq (a number) and nonce, in order."""
    if (
        type(seq) is int
        and -_MAX_EXACT_INT <= seq <= _MAX_EXACT_INT
        and type(from_pk) is str
        and type(to_pk) is str
        and type(nonce) is str
    ):
        # js_string output holds no surrogate code point, so strict UTF-8 is js_utf8_encode here.
        return f'{_routed_prefix(from_pk, to_pk)}{seq},"nonce":{js_string(nonce)}}}'.encode()
    return _reference_routed_sig_input(from_pk, to_pk, seq, nonce)


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _routed_prefix(from_pk: str, to_pk: str) -> str:
    """``{"from":<from>,"to":<to>,"seq":`` for a pair of exact strings: the same on every message of a line."""
    return f'{{"from":{js_string(from_pk)},"to":{js_string(to_pk)},"seq":'


def routed_sig_input_b64u(from_pk: str, to_pk: str, seq: int, nonce: bytes) -> bytes:
    """`routed_sig_input` with ``nonce`` as the ASCII bytes of base64url text, such as v3's frame digest.

    The caller guarantees that ``nonce`` holds only base64url characters (v3 writes the nonce itself,
    or has just compared it with what it writes): JSON escapes none of them, so the nonce is quoted as
    is and the bytes are put together without a text round trip. Exact strings and an exact integer
    seq of at most 2**53 take that way; anything else the general one, with the same result.
    """
    if type(seq) is int and -_MAX_EXACT_INT <= seq <= _MAX_EXACT_INT and type(from_pk) is str and type(to_pk) is str:
        return b'%b%d,"nonce":"%b"}' % (_routed_prefix_bytes(from_pk, to_pk), seq, nonce)
    return routed_sig_input(from_pk, to_pk, seq, nonce.decode("ascii"))


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _routed_prefix_bytes(from_pk: str, to_pk: str) -> bytes:
    return _routed_prefix(from_pk, to_pk).encode()


def _reference_routed_sig_input(from_pk: str, to_pk: str, seq: int, nonce: str) -> bytes:
    return js_utf8_encode(js_stringify({"from": from_pk, "to": to_pk, "seq": seq, "nonce": nonce}))


_public_key_text = functools.lru_cache(maxsize=_KEY_CACHE_SIZE)(b64u_encode)
_public_key_bytes = functools.lru_cache(maxsize=_KEY_CACHE_SIZE)(b64u_decode)


def sign_routed(keypair: KeyPair, to_pk: str, seq: int, nonce: str) -> str:
    """base64url Ed25519 signature of a routed frame sent by ``keypair`` (``from`` is its Ed25519 key)."""
    public_key = keypair.ed25519_pk
    from_pk = _public_key_text(public_key) if type(public_key) is bytes else b64u_encode(public_key)
    message = routed_sig_input(from_pk, to_pk, seq, nonce)
    return b64u_encode(keypair.sign(message))


def verify_routed(from_pk: str, to_pk: str, seq: int, nonce: str, sig: str) -> bool:
    """True when ``sig`` is ``from_pk``'s signature over this routed frame's {from, to, seq, nonce}."""
    return verify_b64u(from_pk, routed_sig_input(from_pk, to_pk, seq, nonce), sig)


def hello_sig_input(challenge: str) -> bytes:
    """HELLO signs the challenge string's UTF-8 bytes (the base64url text itself)."""
    return js_utf8_encode(challenge)


def sign_hello(keypair: KeyPair, challenge: str) -> str:
    """base64url Ed25519 signature for a HELLO answering ``challenge``."""
    return b64u_encode(keypair.sign(hello_sig_input(challenge)))


def verify_hello(ed25519_pk_b64u: str, challenge: str, sig_b64u: str) -> bool:
    """True when ``sig_b64u`` is a valid HELLO signature of ``challenge`` by ``ed25519_pk_b64u``."""
    return verify_b64u(ed25519_pk_b64u, hello_sig_input(challenge), sig_b64u)


def verify_b64u(ed25519_pk_b64u: str, message: bytes, sig_b64u: str) -> bool:
    """Ed25519 verification with the key and signature in (lenient) base64url; False on any malformation."""
    if not isinstance(ed25519_pk_b64u, str) or not isinstance(sig_b64u, str):
        return False
    try:
        public_key = _public_key_bytes(ed25519_pk_b64u)
        signature = b64u_decode(sig_b64u)
    except EncodingError:
        return False
    return verify(public_key, message, signature)
