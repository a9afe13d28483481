"""Every fast path in the protocol core gives exactly the bytes of the plain rules it stands in for.

The plain rules are kept in the modules as the reference (``_reference_*``, ``_lenient_*``) and are
themselves pinned to Node's output by the vectors; here hypothesis feeds both paths the inputs that
could tell them apart: non-ASCII, control characters, quotes and backslashes, U+2028/U+2029, lone and
paired surrogates, strings on both sides of the long-string threshold, integers at the edges of the
exact-double range, keys that look like array indexes, odd subclasses, and base64 text with foreign
characters, padding in every place and non-zero trailing bits. A last pair of tests checks that the
fast paths are really taken on the hot inputs (a silent fallback would pass every equality test).
"""

import base64
import enum
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import nacl.bindings as sodium
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import ratchet.encoding as encoding
import ratchet.jsjson as jsjson
import ratchet.signatures as signatures
from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.frames import Delivery, KeyLayout, Msg, parse_frame, serialize_frame
from ratchet.jsjson import MAX_NESTING, js_string, js_stringify, js_utf8_encode, parse_json
from ratchet.keys import KeyPair, verify
from ratchet.signatures import routed_sig_input, sign_routed, verify_b64u, verify_routed

EXACT = 2**53
LONG = jsjson._LONG_STRING

# ── strategies ──────────────────────────────────────────────────────────────────────────────────

# Characters that each take a different branch somewhere: escapes, the C escaper's short forms,
# characters JS writes raw although other encoders escape them, surrogates, astral characters.
TRICKY_CHARS = st.sampled_from(
    [
        *['"', "\\", "/", "\x00", "\x08", "\t", "\n", "\x0b", "\x0c", "\r", "\x1f", " ", "\x7f", "\x80", "é"],
        *["\u2028", "\u2029", "\ufeff", "\uffff", "\U0001f600", "\U0010ffff"],
        *["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d", "\ude00"],
    ]
)
ANY_CHAR = st.characters(exclude_categories=())  # surrogates included
SURROGATE = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=())
CHARS = st.one_of(TRICKY_CHARS, ANY_CHAR, SURROGATE, st.characters(max_codepoint=0x7F))
TEXT = st.text(CHARS, max_size=24)


def _long(text: str, repeat: int) -> str:
    return (text or "x") * repeat


def _spliced(text: str, insert: str, at: int) -> str:
    at %= len(text) + 1
    return text[:at] + insert + text[at:]


# Strings beyond the long-string threshold: plain printable ASCII (the memchr path), or with one
# character that must be escaped (or is not ASCII) somewhere inside.
PRINTABLE_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
LONG_ASCII = st.builds(_long, PRINTABLE_ASCII, st.integers(1, 3000))
LONG_TEXT = st.one_of(LONG_ASCII, st.builds(_spliced, LONG_ASCII, CHARS, st.integers(0, 2**20)))
STRINGS = st.one_of(TEXT, LONG_TEXT)

EDGE_INTS = st.sampled_from(
    [0, 1, -1, EXACT - 1, EXACT, EXACT + 1, EXACT + 2, -EXACT + 1, -EXACT, -EXACT - 1, 2**64, -(2**64), 10**21, 10**400]
)
INTS = st.one_of(EDGE_INTS, st.integers(), st.integers(-(2**60), 2**60))
KEYS = st.one_of(
    TEXT,
    st.sampled_from(["", "0", "00", "01", "1", "7", "10", "4294967294", "4294967295", "-1", "1.0", "٣", "1a"]),
    st.integers(0, 2**33).map(str),
)


class Colour(enum.IntEnum):
    RED = 7


class Tag(str):
    """A str subclass: the fast paths leave these to the reference rules."""


class Count(int):
    pass


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    INTS,
    st.floats(),
    STRINGS,
    st.just(Colour.RED),
    st.builds(Tag, TEXT),
    st.builds(Count, INTS),
)


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=5),
        st.lists(children, max_size=5).map(tuple),
        st.dictionaries(KEYS, children, max_size=5),
        st.dictionaries(KEYS, children, max_size=5).map(OrderedDict),
        st.dictionaries(KEYS, children, max_size=3).map(MappingProxyType),
        st.dictionaries(st.builds(Tag, TEXT), children, max_size=3),
    )


VALUES = st.recursive(SCALARS, _containers, max_leaves=30)


# ── JSON.stringify ──────────────────────────────────────────────────────────────────────────────


def _both(function: Callable[[], str]) -> tuple[str, str] | tuple[type[BaseException], str]:
    try:
        return function(), ""
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)


@settings(max_examples=1500, deadline=None)
@given(VALUES, st.sampled_from([0, 2, 4]))
def test_stringify_fast_writer_equals_the_reference_rules(value: object, indent: int) -> None:
    assert _both(lambda: js_stringify(value, indent)) == _both(lambda: jsjson._reference_js_stringify(value, indent))


@settings(max_examples=1000, deadline=None)
@given(STRINGS)
@example("\u2028\u2029")  # JSON.stringify writes both raw (canonical_json.json pins it)
@example("\ud83d\ude00")  # a pair held as two code points: one astral character in JS
@example("a\udc00\ud800b")
@example("x" * LONG + '"')
@example("x" * LONG + "\x1f")
@example("x" * LONG)
def test_string_fast_paths_equal_the_reference_quote(text: str) -> None:
    expected = jsjson._reference_quote(text)
    assert js_string(text) == expected
    assert js_string(Tag(text)) == expected
    assert js_stringify(text) == expected
    assert js_stringify([text, {text: text}]) == f"[{expected},{{{expected}:{expected}}}]"


def test_the_rule_for_the_c_escaper_holds_on_every_character_but_surrogates() -> None:
    """The written-down rule: outside U+D800..U+DFFF, json's C escaper writes what JSON.stringify does."""
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        assert json.encoder.encode_basestring(char) == jsjson._reference_quote(char), hex(code)


@settings(max_examples=500, deadline=None)
@given(STRINGS)
def test_utf8_fast_path_equals_the_reference(text: str) -> None:
    assert js_utf8_encode(text) == jsjson._reference_utf8_encode(text)
    assert js_utf8_encode(Tag(text)) == jsjson._reference_utf8_encode(text)


@pytest.mark.parametrize("value", [EXACT - 1, EXACT, EXACT + 1, -EXACT, -EXACT - 1, 2**63, 10**21, 10**400])
def test_integers_at_the_exact_double_edges_print_like_javascript(value: int) -> None:
    expected = jsjson._reference_js_stringify(value)
    assert js_stringify(value) == js_stringify([value])[1:-1] == expected
    assert js_stringify({"n": value}) == '{"n":' + expected + "}"
    assert js_stringify(Count(value)) == expected


def test_both_writers_match_every_node_case(vectors_dir: Path) -> None:
    cases = json.loads((vectors_dir / "canonical_json.json").read_text("utf-8"))
    for case in cases["parse_then_stringify"]:
        value = parse_json(case["input_json_text"])
        assert js_stringify(value) == jsjson._reference_js_stringify(value) == case["output_text"], case["name"]
    for case in cases["built_in_code"]:
        out = js_stringify(case["fields"])
        assert out == jsjson._reference_js_stringify(case["fields"]) == case["output_text"], case["what"]
        assert js_utf8_encode(out) == jsjson._reference_utf8_encode(out)


@pytest.mark.parametrize("key", [*"0123456789", "10", "4294967294"])
def test_array_index_keys_are_hoisted_on_both_paths(key: str) -> None:
    value = {"b": 1, key: 2, "a": {"x": 1, key: [key]}}
    expected = f'{{"{key}":2,"b":1,"a":{{"{key}":["{key}"],"x":1}}}}'
    assert js_stringify(value) == jsjson._reference_js_stringify(value) == expected


@pytest.mark.parametrize("key", ["01", "4294967295", "1a", "1.0", "-1", "", " 1"])
def test_keys_that_only_look_numeric_stay_in_place_on_both_paths(key: str) -> None:
    value = {"b": 1, key: 2}
    assert js_stringify(value) == jsjson._reference_js_stringify(value) == f'{{"b":1,"{key}":2}}'


def _deep(depth: int, key: str) -> str:
    return ('{"' + key + '":') * (depth - 1) + '["' + "\u2028" * 3 + '"]' + "}" * (depth - 1)


@pytest.mark.parametrize("key", ["a", "0", "4294967295"])
def test_deepest_accepted_value_is_written_by_both_writers(key: str) -> None:
    text = _deep(MAX_NESTING, key)
    value = parse_json(text)
    assert js_stringify(value) == jsjson._reference_js_stringify(value) == text
    assert js_stringify(value, 2) == jsjson._reference_js_stringify(value, 2)


@pytest.mark.parametrize(
    "value",
    [{1: "int key"}, {"a": {None: 1}}, [b"bytes"], {"a": object()}, {"0": 1, 2: 3}, bytearray(b"x")],
)
def test_unsupported_values_fail_the_same_way_on_both_paths(value: object) -> None:
    fast, reference = _both(lambda: js_stringify(value)), _both(lambda: jsjson._reference_js_stringify(value))
    assert fast == reference
    assert fast[0] is TypeError


# ── the signed bytes ────────────────────────────────────────────────────────────────────────────

B64ISH_CHARS = st.sampled_from([*"ABCXYZabcxyz0189-_+/=", " ", "\n", ".", "é", "\ud800"])
B64ISH = st.text(B64ISH_CHARS, max_size=60)
SIG_TEXT = st.one_of(STRINGS, st.binary(max_size=33).map(b64u_encode), B64ISH)
SEQS = st.one_of(INTS, st.booleans(), st.floats(), st.none(), TEXT)


@settings(max_examples=1500, deadline=None)
@given(SIG_TEXT, SIG_TEXT, SEQS, SIG_TEXT)
@example("A" * 43, "B" * 43, EXACT, "C" * 32)
@example("A" * 43, "B" * 43, EXACT + 1, "C" * 32)
@example("A" * 43, "B" * 43, -EXACT - 1, "C" * 32)
@example("A" * 43, "B" * 43, True, "C" * 32)
@example("A" * 43, "B" * 43, 1.0, "C" * 32)
@example("\ud800", '"', 0, "\ud83d\ude00")
def test_routed_sig_input_equals_the_reference(from_pk: str, to_pk: str, seq: Any, nonce: str) -> None:
    expected = signatures._reference_routed_sig_input(from_pk, to_pk, seq, nonce)
    assert routed_sig_input(from_pk, to_pk, seq, nonce) == expected
    assert routed_sig_input(from_pk, to_pk, seq, nonce) == expected  # again, through the cached prefix
    assert routed_sig_input(Tag(from_pk), Tag(to_pk), seq, Tag(nonce)) == expected


def test_routed_sig_input_with_non_string_fields_follows_the_reference() -> None:
    odd: list[tuple[Any, Any, Any, Any]] = [(1, None, 2, [3]), ("a", {"b": 1}, 0, 1.5), ("a", "b", Colour.RED, "n")]
    for fields in odd:
        assert routed_sig_input(*fields) == signatures._reference_routed_sig_input(*fields)


_KEYS = (KeyPair.from_secrets(b"\x01" * 32, b"\x02" * 32), KeyPair.from_secrets(b"\x03" * 32, b"\x04" * 32))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(min_size=24, max_size=24), st.sampled_from(["", "=", "==", "\n"]))
def test_cached_keys_sign_and_verify_like_the_plain_calls(seq: int, nonce: bytes, suffix: str) -> None:
    alice, bob = _KEYS
    alice_pk, bob_pk = b64u_encode(alice.ed25519_pk), b64u_encode(bob.ed25519_pk)
    nonce_text = b64u_encode(nonce)
    message = signatures._reference_routed_sig_input(alice_pk, bob_pk, seq, nonce_text)
    sig = sign_routed(alice, bob_pk, seq, nonce_text)
    assert b64u_decode(sig) == sodium.crypto_sign(message, alice.ed25519_sk)[:64]  # deterministic Ed25519
    assert verify_routed(alice_pk, bob_pk, seq, nonce_text, sig)
    assert verify_b64u(alice_pk + suffix, message, sig)  # lenient key decoding, cached or not
    assert not verify_routed(bob_pk, bob_pk, seq, nonce_text, sig)
    assert not verify_routed(alice_pk, bob_pk, seq + 1, nonce_text, sig)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(B64ISH, st.just(b64u_encode(b"\x01" * 32))), st.binary(max_size=40), st.one_of(B64ISH, st.just("A" * 86))
)
def test_verify_with_cached_key_decoding_equals_plain_verification(pk_text: str, message: bytes, sig_text: str) -> None:
    expected = verify(encoding._lenient_b64u_decode(pk_text), message, encoding._lenient_b64u_decode(sig_text))
    assert verify_b64u(pk_text, message, sig_text) == expected
    assert verify_b64u(pk_text, message, sig_text) == expected


# ── base64url ───────────────────────────────────────────────────────────────────────────────────


def _padded(text: str, padding: str) -> str:
    return text + padding


ENCODED = st.binary(max_size=80).map(b64u_encode)
B64_INPUTS = st.one_of(
    B64ISH,
    ENCODED,
    st.builds(_padded, ENCODED, st.sampled_from(["", "=", "==", "===", "=A", "==\n", "=="])),
    st.builds(_padded, st.binary(max_size=80).map(lambda b: base64.b64encode(b).decode()), st.just("")),
    st.builds(_spliced, ENCODED, st.text(CHARS, min_size=1, max_size=3), st.integers(0, 200)),
    st.text(CHARS, max_size=40),
    st.text(st.sampled_from(list("AQgw_-+/")), max_size=13),  # lengths 4k+2 / 4k+3 with non-zero trailing bits
)


@settings(max_examples=3000, deadline=None)
@given(B64_INPUTS)
@example("")
@example("=")
@example("A")
@example("AB")  # non-zero trailing bits: Node drops them, so do both paths
@example("AB==")
@example("AB=")
@example("AB===")
@example("ABC=D")
@example("ABCDE")
@example("AB+/-_")
@example("AB CD")
@example("ABéCD")
def test_b64u_decode_fast_path_equals_the_lenient_rules(text: str) -> None:
    assert b64u_decode(text) == encoding._lenient_b64u_decode(text)


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.integers(2000, 3100), st.text(CHARS, max_size=2), st.integers(0, 2**18))
def test_b64u_on_ciphertext_sized_inputs(seed: bytes, repeat: int, junk: str, at: int) -> None:
    data = (seed * repeat)[:196_608]
    text = b64u_encode(data)
    assert text == encoding._reference_b64u_encode(data)
    assert b64u_decode(text) == data
    spliced = _spliced(text, junk, at)
    assert b64u_decode(spliced) == encoding._lenient_b64u_decode(spliced)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_b64u_encode_equals_the_stdlib_codec(data: bytes) -> None:
    assert b64u_encode(data) == encoding._reference_b64u_encode(data)


# ── the relay's big frames, and that the fast paths are really taken ────────────────────────────

PK = b64u_encode(b"\x05" * 32)
ID = "123e4567-e89b-42d3-a456-426614174000"


def _big_delivery() -> Delivery:
    ciphertext = b64u_encode(bytes(range(256)) * 576)  # 147 456 bytes -> 196 608 characters, the bound
    msg = Msg(msg_id=ID, ts=1_768_000_000_000, from_=PK, to=PK, ciphertext=ciphertext, nonce=PK, sig=PK, seq=9)
    routed = Msg(**{**_fields(msg), "key_layout": KeyLayout.PARSED})
    return Delivery(msg_id=ID, ts=1_768_000_000_001, routed=routed)


def _fields(frame: Msg) -> dict[str, Any]:
    return {
        name: getattr(frame, name) for name in ("v", "msg_id", "ts", "from_", "to", "ciphertext", "nonce", "sig", "seq")
    }


def test_a_192_kib_delivery_serialises_to_the_reference_text_and_back() -> None:
    delivery = _big_delivery()
    text = serialize_frame(delivery)
    assert len(text) > 196_608
    assert text == jsjson._reference_js_stringify(json.loads(text))
    assert parse_frame(text) == delivery


def _tripwire(name: str) -> Callable[..., Any]:
    def fail(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"{name} ran: a hot input left the fast path")

    return fail


def test_the_fast_paths_are_taken_on_the_hot_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equality alone would also pass if everything fell back to the reference rules, only slower."""
    delivery = _big_delivery()
    expected_text = serialize_frame(delivery)
    alice = _KEYS[0]
    sig = sign_routed(alice, PK, 9, PK)
    for module, name in [
        (jsjson, "_reference_write"),
        (jsjson, "_reference_quote"),
        (jsjson, "_reference_utf8_encode"),
        (signatures, "_reference_routed_sig_input"),
        (encoding, "_lenient_b64u_decode"),
    ]:
        monkeypatch.setattr(module, name, _tripwire(name))
    assert serialize_frame(delivery) == expected_text
    assert js_stringify({"a": [1, "\u2028é", None, True], "b": {"c": -(2**53)}}, 2).startswith("{")
    assert js_utf8_encode(expected_text[:100] + "é\u2028")
    assert verify_routed(b64u_encode(alice.ed25519_pk), PK, 9, PK, sig)
    ciphertext = delivery.routed.ciphertext
    assert b64u_decode(ciphertext) == bytes(range(256)) * 576
    for padded in (b64u_encode(b"\x01" * 32) + "=", base64.b64encode(b"\xfb\xff" * 40).decode(), ""):
        b64u_decode(padded)
