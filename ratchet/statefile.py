"""Strict JSON for saved states: what both session formats (v2 and v3) read back with.

A saved state is ours, so it is read strictly: JSON types taken literally (no "5" for 5, no 1 for
true, no string for a list), no duplicate keys, no NaN/Infinity, and the caller turns every failure
into its own error naming the document. One implementation, so the two formats cannot drift apart.
"""

import json
from collections.abc import Callable
from typing import Any, TypeVar

import cattrs
from cattrs.cols import list_structure_factory

T = TypeVar("T")


def _is_list_type(type_: Any) -> bool:
    return getattr(type_, "__origin__", None) is list


def strict_converter(*, forbid_extra_keys: bool) -> cattrs.Converter:
    """cattrs with JSON's types taken literally; unknown keys refused when ``forbid_extra_keys``."""
    converter = cattrs.Converter(forbid_extra_keys=forbid_extra_keys)

    def exact(kind: type[T]) -> Callable[[Any, Any], T]:
        def hook(value: Any, _: Any) -> T:
            if type(value) is not kind:
                raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
            return value

        return hook

    for kind in (int, str, bool):
        converter.register_structure_hook(kind, exact(kind))

    def arrays(type_: Any, conv: cattrs.BaseConverter) -> Callable[[Any, Any], Any]:
        inner = list_structure_factory(type_, conv)

        def hook(value: Any, target: Any) -> Any:
            if not isinstance(value, list):
                raise TypeError(f"expected a JSON array, got {type(value).__name__}")
            return inner(value, target)

        return hook

    converter.register_structure_hook_factory(_is_list_type, arrays)
    return converter


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def load_json(data: bytes) -> Any:
    """Parse UTF-8 JSON strictly; raises ValueError (UnicodeDecodeError and RecursionError included)."""
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
