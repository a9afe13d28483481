"""js_stringify / parse_json against ECMAScript behaviour (canonical_json.json) and properties."""

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratchet.errors import EncodingError
from ratchet.jsjson import MAX_NESTING, js_stringify, js_utf8_encode, parse_json, parse_json_object


def _load(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "canonical_json.json").read_text("utf-8"))
    return data


def test_every_parse_then_stringify_case_matches_node(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["parse_then_stringify"]
    assert len(cases) == 15
    for case in cases:
        out = js_stringify(parse_json(case["input_json_text"]))
        assert out == case["output_text"], case["name"]
        assert out.encode("utf-8").hex() == case["output_utf8_hex"], case["name"]


def test_every_shape_built_in_code_matches_node(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["built_in_code"]
    assert len(cases) == 5
    for case in cases:
        out = js_stringify(case["fields"])
        assert out == case["output_text"], case["what"]
        assert js_utf8_encode(out).hex() == case["output_utf8_hex"], case["what"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (-1.5, "-1.5"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (123456789.125, "123456789.125"),
        (1.5e300, "1.5e+300"),
        (-2.5e-7, "-2.5e-7"),
        (0.000123, "0.000123"),
        (float("nan"), "null"),
        (float("inf"), "null"),
        (-float("inf"), "null"),
        (2**53 + 1, "9007199254740992"),
        (10**400, "null"),
        (True, "true"),
        (None, "null"),
    ],
)
def test_numbers_and_literals_print_like_javascript(value: object, text: str) -> None:
    assert js_stringify(value) == text


def test_surrogates_pairs_join_and_lone_ones_escape() -> None:
    # A pair held as two code points is one astral character in JS: written raw.
    assert js_stringify("\ud83d\ude00") == '"😀"'
    assert js_stringify("a\udc00\ud800b") == '"a\\udc00\\ud800b"'
    assert js_utf8_encode("\ud83d\ude00") == "😀".encode()
    assert js_utf8_encode("x\ud800") == b"x\xef\xbf\xbd"  # Node writes U+FFFD for a lone surrogate


def test_indent_matches_json_stringify_with_two_spaces() -> None:
    value = {"a": [1, {}], "b": {"c": [], "2": "x"}, "d": "é"}
    assert js_stringify(value, indent=2) == (
        '{\n  "a": [\n    1,\n    {}\n  ],\n  "b": {\n    "2": "x",\n    "c": []\n  },\n  "d": "é"\n}'
    )


def test_array_index_hoisting_stops_at_2_pow_32_minus_2() -> None:
    value = {"b": 1, "4294967295": 2, "4294967294": 3, "-1": 4, "1.0": 5, "0": 6}
    assert js_stringify(value) == '{"0":6,"4294967294":3,"b":1,"4294967295":2,"-1":4,"1.0":5}'


def test_unsupported_values_are_a_programming_error() -> None:
    with pytest.raises(TypeError):
        js_stringify(b"bytes")
    with pytest.raises(TypeError):
        js_stringify({1: "int key"})
    with pytest.raises(TypeError):
        js_stringify(object())


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        '{"a":1',
        '{"a":1}x',
        "NaN",
        "[Infinity]",
        "[-Infinity]",
        "\ufeff{}",
        '{"a":"tab\there"}',
        "{'a':1}",
        "[1,]",
        "01",
        "[" * 100_000,
    ],
)
def test_invalid_json_is_an_encoding_error(text: str) -> None:
    with pytest.raises(EncodingError):
        parse_json(text)


def test_nesting_is_limited_so_everything_parsed_can_be_written_back() -> None:
    deep_ok = "[" * MAX_NESTING + "]" * MAX_NESTING
    assert js_stringify(parse_json(deep_ok)) == deep_ok
    mixed_ok = '{"a":' * (MAX_NESTING - 1) + "[]" + "}" * (MAX_NESTING - 1)
    assert js_stringify(parse_json(mixed_ok)) == mixed_ok
    too_deep = "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)
    with pytest.raises(EncodingError, match="nested deeper"):
        parse_json(too_deep)


def test_parse_json_object_requires_an_object_and_keeps_order() -> None:
    assert list(parse_json_object('{"z":1,"a":2,"z":3}').items()) == [("z", 3), ("a", 2)]
    for text in ("null", "[1]", '"s"', "1", "true"):
        with pytest.raises(EncodingError, match="expected an object"):
            parse_json_object(text)


def test_huge_integer_literal_parses_like_a_double() -> None:
    assert js_stringify(parse_json("1" + "0" * 500)) == "null"
    assert js_stringify(parse_json("[18446744073709551615]")) == "[18446744073709552000]"


json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**53 - 1), max_value=2**53 - 1) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


@given(json_values)
def test_stringify_round_trips_through_python_json(value: object) -> None:
    text = js_stringify(value)
    assert json.loads(text) == value
    assert parse_json(text) == value


@given(json_values.filter(lambda v: not isinstance(v, dict | list)) | st.lists(json_scalars, max_size=6))
def test_stringify_equals_compact_python_json_without_objects(value: object) -> None:
    # Python's compact, non-ASCII json escapes exactly the same characters for these values.
    assert js_stringify(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_text_round_trips_to_the_same_double(value: float) -> None:
    text = js_stringify(value)
    assert float(text) == value
    # JS switches to exponent form below 1e-6 and from 1e21 on; zero is plain "0".
    assert ("e" in text) == (value != 0 and not 1e-6 <= abs(value) < 1e21)
    if value == int(value) and abs(value) <= 2**53:
        assert text == str(int(value))
