"""ECMAScript ``JSON.stringify`` / ``JSON.parse``, reproduced byte for byte.

The reference has no canonical-JSON routine: every signed byte string is ``JSON.stringify`` of an
object built in code, or of the object ``JSON.parse`` produced from received text (invite
verification). To verify what the reference signs, and to sign what it verifies, we must produce the
same text, so this module follows ECMAScript to the letter rather than Python's ``json`` defaults:

* keys keep insertion order, except that array-index keys ("0", "7", "10", not "01") come first in
  ascending numeric order, as in every JS object;
* numbers are IEEE-754 doubles printed by ``Number::toString`` (shortest round-trip digits, plain
  notation from 1e-6 up to 1e21, otherwise ``1e+21`` / ``1.5e-7``); a Python ``int`` is a JS number
  too, so integers beyond 2**53 lose precision exactly as they do in JS; non-finite numbers print
  as ``null``;
* only ``"``, ``\\`` and U+0000..U+001F are escaped; non-ASCII is written raw; lone surrogates are
  written as lowercase ``\\udXXX`` (ES2019 well-formed stringify).

Speed: every signed byte string and every frame the relay forwards (ciphertexts up to 192 KiB) is
written here, so the writer takes C fast paths where they provably give the same bytes, and the
plain rules above (the ``_reference_*`` functions, kept as the specification) everywhere else:

* a string with no surrogate code point is exactly what ``json.encoder.encode_basestring`` (the C
  encoder behind ``json.dumps(s, ensure_ascii=False)``) writes: both escape only ``"``, ``\\`` and
  U+0000..U+001F, with the same short forms (``\\b \\t \\n \\f \\r``) and lowercase ``\\u00xx``
  for the rest, and both write U+007F, U+2028 and U+2029 raw (JSON.stringify never escaped
  those; the canonical_json.json case "strings: U+2028 / U+2029 are emitted raw" pins it). Only
  surrogates differ: Python writes them raw, JS joins pairs and escapes lone ones, so such strings
  take the reference path (test_fast_paths.py also checks the rule on every other code point). A
  long ASCII string without any character to escape (a ciphertext) is found by one
  ``memchr`` per such character and copied as is;
* an ``int`` of magnitude up to 2**53 is an exact double, and ``Number::toString`` prints it as its
  decimal digits, i.e. ``str(n)``; beyond that, and for floats, the reference number path;
* a plain ``dict`` none of whose keys starts with a digit has no array-index key to hoist.

tests/ratchet/test_fast_paths.py checks by hypothesis that `js_stringify`, `js_string` and
`js_utf8_encode` equal their reference paths on every input.
"""

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import cast

from ratchet.errors import EncodingError

__all__ = [
    "MAX_NESTING",
    "encodes_as_utf8",
    "js_string",
    "js_stringify",
    "js_utf8_encode",
    "json_type_name",
    "parse_json",
    "parse_json_object",
]

_MAX_ARRAY_INDEX = 2**32 - 2
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]{0,9}")
_DIGITS = frozenset("0123456789")
_MAX_EXACT_INT = 2**53  # every int up to this magnitude is an exact double, printed as its digits

# A surrogate pair is one astral character in JS (written raw); anything else in the class is escaped.
_STRING_ESCAPE = re.compile(r'([\ud800-\udbff][\udc00-\udfff])|([\x00-\x1f"\\\ud800-\udfff])')
_SURROGATES = re.compile(r"([\ud800-\udbff][\udc00-\udfff])|[\ud800-\udfff]")
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Integer literals longer than this cannot be finite doubles' exact digits anyway; parse them as
# floats (which overflow to inf, i.e. JS Infinity) instead of hitting Python's int-digits limit.
_MAX_INT_LITERAL_DIGITS = 400

MAX_NESTING = 512


def _join_pair(pair: str) -> str:
    """One astral character from a UTF-16 surrogate pair held as two code points."""
    high, low = ord(pair[0]), ord(pair[1])
    return chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))


def _escape_match(match: "re.Match[str]") -> str:
    pair = match.group(1)
    if pair is not None:
        return _join_pair(pair)
    char = match.group(2)
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    return f"\\u{ord(char):04x}"


def _reference_quote(text: str) -> str:
    return '"' + _STRING_ESCAPE.sub(_escape_match, text) + '"'


_encode_basestring: Callable[[str], str] = json.encoder.encode_basestring  # C (_json) when available
_HAS_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_ASCII = ('"', "\\", *map(chr, range(0x20)))
_LONG_STRING = 1024  # from here on, 34 memchr scans beat the C escaper's per-character loop


def _write_string(text: str, out: list[str]) -> None:
    """Append ``JSON.stringify(text)`` for an exact ``str``; see the module docstring for why it is exact."""
    if text.isascii():  # O(1): CPython keeps the flag
        if len(text) >= _LONG_STRING and not any(char in text for char in _ESCAPED_ASCII):
            out += ('"', text, '"')
        else:
            out.append(_encode_basestring(text))
    elif _HAS_SURROGATE.search(text) is None:
        out.append(_encode_basestring(text))
    else:
        out.append(_reference_quote(text))


def js_string(text: str) -> str:
    """``JSON.stringify(text)`` for one string: quoted, escaped as JS escapes it."""
    if type(text) is not str:  # a subclass may override what the fast path relies on
        return _reference_quote(text)
    if len(text) < _LONG_STRING and text.isascii():  # keys, ids, base64url: the common case, inline
        return _encode_basestring(text)
    out: list[str] = []
    _write_string(text, out)
    return out[0] if len(out) == 1 else "".join(out)


def encodes_as_utf8(text: str) -> bool:
    """Whether ``text`` holds no surrogate code point, so strict UTF-8 carries it as it is.

    JSON may escape a lone surrogate (``"\\ud800"``) and Python keeps undecodable argv bytes as ones;
    SQLite, our JSON-RPC answers and our files are strict UTF-8 and would refuse them.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def js_utf8_encode(text: str) -> bytes:
    """UTF-8 bytes of a JS string, as Node's ``Buffer.from(text, "utf8")`` makes them.

    Surrogate pairs held as two code points become one 4-byte character and lone surrogates become
    U+FFFD, so any Python ``str`` (for example one decoded from JSON ``\\ud800`` escapes) encodes.
    Text without surrogates (all of `js_stringify`'s output) is plain strict UTF-8.
    """
    if type(text) is not str:
        return _reference_utf8_encode(text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate code point: strict UTF-8 refuses exactly these
        return _reference_utf8_encode(text)


def _reference_utf8_encode(text: str) -> bytes:
    return _SURROGATES.sub(lambda m: _join_pair(m.group(1)) if m.group(1) else "\ufffd", text).encode("utf-8")


def _format_number(value: float) -> str:
    """ECMAScript ``Number::toString(10)`` for a finite double (JSON.stringify's number form)."""
    if value == 0:
        return "0"  # also -0
    sign = "-" if value < 0 else ""
    # repr() gives the shortest digits that round-trip, which is what Number::toString picks as well.
    decimal = Decimal(repr(abs(value)))
    _, digit_tuple, exponent = decimal.as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    k = len(digits)
    n = exponent + k  # value = 0.digits * 10**n
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        e_text = f"e+{e}" if e >= 0 else f"e-{-e}"
        body = (digits if k == 1 else digits[0] + "." + digits[1:]) + e_text
    return sign + body


def _number(value: int | float) -> str:
    if isinstance(value, int):
        try:
            value = float(value)
        except OverflowError:
            return "null"  # beyond the double range: JS would hold Infinity
    if not math.isfinite(value):
        return "null"
    return _format_number(value)


def _is_array_index(key: str) -> bool:
    return _ARRAY_INDEX.fullmatch(key) is not None and int(key) <= _MAX_ARRAY_INDEX


def _ordered_items(obj: Mapping[object, object]) -> list[tuple[str, object]]:
    """Own-property order of a JS object: array-index keys ascending, then the rest in insertion order."""
    items: list[tuple[str, object]] = []
    for key, item in obj.items():
        if not isinstance(key, str):
            raise TypeError(f"JSON object keys must be str, got {type(key).__name__}")
        items.append((key, item))
    indexed = sorted((kv for kv in items if _is_array_index(kv[0])), key=lambda kv: int(kv[0]))
    if not indexed:
        return items
    return indexed + [kv for kv in items if not _is_array_index(kv[0])]


_Writer = Callable[[object, list[str], str, int], None]


def _reference_write(
    value: object, out: list[str], indent: str, level: int, write_child: _Writer | None = None
) -> None:
    """The JSON.stringify rules, written plainly; members go to ``write_child`` when one is given."""
    child = write_child or _reference_write
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_reference_quote(value))
    elif isinstance(value, int | float):
        out.append(_number(value))
    elif isinstance(value, Mapping):
        items = _ordered_items(value)
        if not items:
            out.append("{}")
            return
        inner = "\n" + indent * (level + 1) if indent else ""
        out.append("{")
        for position, (key, item) in enumerate(items):
            if position:
                out.append(",")
            out.append(inner)
            out.append(_reference_quote(key))
            out.append(": " if indent else ":")
            child(item, out, indent, level + 1)
        if indent:
            out.append("\n" + indent * level)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        if not value:
            out.append("[]")
            return
        inner = "\n" + indent * (level + 1) if indent else ""
        out.append("[")
        for position, item in enumerate(value):
            if position:
                out.append(",")
            out.append(inner)
            child(item, out, indent, level + 1)
        if indent:
            out.append("\n" + indent * level)
        out.append("]")
    else:
        raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _write(value: object, out: list[str], indent: str, level: int) -> None:
    """`_reference_write` with fast paths for the exact types protocol values are made of.

    One Python frame per nesting level, like the reference, so that anything `parse_json` accepts
    (up to MAX_NESTING levels) is written without reaching the recursion limit. Short ASCII strings
    (keys, ids, keys and signatures in base64url) go straight to the C escaper.
    """
    if type(value) is str:
        _write_string(value, out)
    elif type(value) is int and -_MAX_EXACT_INT <= value <= _MAX_EXACT_INT:
        out.append(str(value))
    elif type(value) is dict:
        if not value:
            out.append("{}")
            return
        items: Iterable[tuple[object, object]] = value.items()
        for key in value:
            if type(key) is not str or key[:1] in _DIGITS:  # maybe an array index to hoist, or an odd key
                items = _ordered_items(value)
                break
        inner = "\n" + indent * (level + 1) if indent else ""
        separator, comma, colon = "{" + inner, "," + inner, ": " if indent else ":"
        for key, item in items:
            if type(key) is str and len(key) < _LONG_STRING and key.isascii():
                out.append(separator + _encode_basestring(key) + colon)
            else:
                out.append(separator)
                out.append(js_string(cast(str, key)))  # _ordered_items lets only str through
                out.append(colon)
            if type(item) is str and len(item) < _LONG_STRING and item.isascii():
                out.append(_encode_basestring(item))
            else:
                _write(item, out, indent, level + 1)
            separator = comma
        out.append("\n" + indent * level + "}" if indent else "}")
    elif type(value) is list or type(value) is tuple:
        if not value:
            out.append("[]")
            return
        inner = "\n" + indent * (level + 1) if indent else ""
        separator, comma = "[" + inner, "," + inner
        for item in value:
            if type(item) is str and len(item) < _LONG_STRING and item.isascii():
                out.append(separator + _encode_basestring(item))
            else:
                out.append(separator)
                _write(item, out, indent, level + 1)
            separator = comma
        out.append("\n" + indent * level + "]" if indent else "]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    else:
        _reference_write(value, out, indent, level, _write)


def js_stringify(value: object, indent: int = 0) -> str:
    """Exactly ``JSON.stringify(value)``, or ``JSON.stringify(value, null, indent)`` when indent > 0.

    Accepts None, bool, int, float, str, mappings with str keys and sequences (not bytes). Anything
    else is a programming error and raises TypeError.
    """
    out: list[str] = []
    _write(value, out, " " * min(max(indent, 0), 10), 0)
    return "".join(out)


def _reference_js_stringify(value: object, indent: int = 0) -> str:
    """`js_stringify` by the plain rules only: the specification the fast paths are tested against."""
    out: list[str] = []
    _reference_write(value, out, " " * min(max(indent, 0), 10), 0)
    return "".join(out)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _parse_int(literal: str) -> int | float:
    if len(literal) > _MAX_INT_LITERAL_DIGITS:
        return float(literal)
    return int(literal)


_DECODER = json.JSONDecoder(
    object_pairs_hook=dict,  # first position, last value for duplicate keys: what JSON.parse does
    parse_constant=_reject_constant,
    parse_int=_parse_int,
    strict=True,
)


def parse_json(text: str) -> object:
    """Strict JSON (RFC 8259, like ``JSON.parse``) with object key order preserved.

    Objects become ``dict`` in received order (duplicates: the first position keeps the last value),
    integers ``int``, other numbers ``float``. NaN/Infinity literals, trailing data, control
    characters in strings and a leading BOM are rejected with ``EncodingError``, and so is nesting
    deeper than ``MAX_NESTING`` (JS has no such limit, but no protocol value nests beyond 3, and a
    value we accept must also be one ``js_stringify`` can write back without exhausting the stack).
    """
    try:
        value = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise EncodingError(f"invalid JSON: {exc}") from exc
    if _nests_deeper_than(value, MAX_NESTING):
        raise EncodingError(f"invalid JSON: nested deeper than {MAX_NESTING} levels")
    return value


def _nests_deeper_than(value: object, limit: int) -> bool:
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children: Iterable[object]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_json_object(text: str) -> dict[str, object]:
    """``parse_json`` for text that must hold a JSON object at the top level."""
    value = parse_json(text)
    if not isinstance(value, dict):
        raise EncodingError(f"invalid JSON: expected an object, got {json_type_name(value)}")
    return value


def json_type_name(value: object) -> str:
    """What a parsed JSON value is called in JSON's own words ("null", "a number", "an array", ...), for errors."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else type(value).__name__
