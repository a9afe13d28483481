"""The texts the relay writes for every routed frame, built fast and byte-identical to `serialize_frame`.

`ratchet.frames.serialize_frame` reproduces JavaScript's JSON.stringify character by character,
which costs milliseconds for a 190 KiB ciphertext. On the relay's hot path the frames are plain:
ASCII strings (base64url keys, nonces, ciphertexts, UUIDs) and safe integers. For such values the
C JSON encoder (`ensure_ascii=False`, compact separators) writes exactly what JSON.stringify writes:
same escapes (`\\"`, `\\\\`, `\\b\\f\\n\\r\\t`, `\\u00xx` in lowercase), integers as digits. Anything else
(a non-ASCII string, which could hold a lone surrogate) goes through `serialize_frame`. The tests
check both paths against `serialize_frame` on random frames.

The key order is the reference's, which `serialize_frame` also follows: `v, type, msg_id, ts` for
frames built in code (WIRE layout), `v, msg_id, ts, type` for a client's frame as zod parsed it
(PARSED layout, what the reference relay forwards), then the routed fields in schema order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

import attrs

from ratchet.frames import (
    PROTOCOL_VERSION,
    DeliveryAck,
    Frame,
    FrameError,
    KeyLayout,
    Msg,
    Routed,
    SessionAck,
    SessionInit,
    parse_frame,
    serialize_frame,
)

# What the C encoder writes for a str with ensure_ascii=False (json.dumps(text, ensure_ascii=False)).
_quote: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def routed_text(frame: Routed, layout: KeyLayout | None = None) -> str:
    """`serialize_frame(frame)` for a MSG / SESSION_INIT / SESSION_ACK, in ``layout`` if given.

    `routed_text(frame, KeyLayout.PARSED)` is `serialize_frame(as_forwarded(frame))`: what the
    reference relay forwards for a client's frame. Written piece by piece (what the C encoder would
    write for the same dict, at a third of the cost); the validators of the frame classes guarantee
    that ``v``, ``ts`` and ``seq`` are plain ints.
    """
    layout = layout or frame.key_layout
    ratchet_pk = frame.ratchet_pk
    if not (
        frame.ciphertext.isascii()
        and frame.msg_id.isascii()
        and frame.from_.isascii()
        and frame.to.isascii()
        and frame.nonce.isascii()
        and frame.sig.isascii()
        and (ratchet_pk is None or ratchet_pk.isascii())
    ):
        return serialize_frame(frame if layout is frame.key_layout else attrs.evolve(frame, key_layout=layout))
    if layout is KeyLayout.WIRE:
        head = f'{{"v":{frame.v:d},"type":"{frame.TYPE}","msg_id":{_quote(frame.msg_id)},"ts":{frame.ts:d},'
    else:
        head = f'{{"v":{frame.v:d},"msg_id":{_quote(frame.msg_id)},"ts":{frame.ts:d},"type":"{frame.TYPE}",'
    tail = "}" if ratchet_pk is None else f',"ratchet_pk":{_quote(ratchet_pk)}}}'
    return (
        f'{head}"from":{_quote(frame.from_)},"to":{_quote(frame.to)},"ciphertext":{_quote(frame.ciphertext)},'
        f'"nonce":{_quote(frame.nonce)},"sig":{_quote(frame.sig)},"seq":{frame.seq:d}{tail}'
    )


def delivery_text(msg_id: str, ts: int, routed: str) -> str:
    """`serialize_frame(Delivery(msg_id=..., ts=..., routed=...))` given the routed frame's own text."""
    return f'{{"v":{PROTOCOL_VERSION},"type":"DELIVERY","msg_id":{_quote(msg_id)},"ts":{int(ts)},"routed":{routed}}}'


def ack_text(msg_id: str, ts: int, ref_msg_id: str, status: str) -> str:
    """`serialize_frame(Ack(...))` without an error text (the relay's delivered / queued answers)."""
    return (
        f'{{"v":{PROTOCOL_VERSION},"type":"ACK","msg_id":{_quote(msg_id)},"ts":{int(ts)},'
        f'"ref_msg_id":{_quote(ref_msg_id)},"status":{_quote(status)}}}'
    )


# ---------------------------------------------------------------------- parsing what clients send most


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_decode = json.JSONDecoder(parse_constant=_refuse_constant, strict=True).decode
_ROUTED_CLASSES: Mapping[str, type[Routed]] = {"MSG": Msg, "SESSION_INIT": SessionInit, "SESSION_ACK": SessionAck}
_ROUTED_KEYS = frozenset(("v", "type", "msg_id", "ts", "from", "to", "ciphertext", "nonce", "sig", "seq"))
_DELIVERY_ACK_KEYS = frozenset(("v", "type", "msg_id", "ts", "ref_msg_id"))


def parse_client_frame(data: str | bytes) -> Frame:
    """`parse_frame(data)`, in about half the time for the frames clients send most (MSG, SESSION_INIT,
    SESSION_ACK, DELIVERY_ACK); raises `FrameError` exactly when `parse_frame` does, with the same error.

    The short cut takes only text that is ASCII, decodes it with the C JSON decoder (the same grammar
    as `parse_frame`'s: NaN/Infinity and control characters refused, duplicate keys keep the first
    position and the last value), requires exactly the type's keys, and builds the frame through its
    class, whose validators are the very checks `parse_frame` applies to each field. Whatever it does
    not take (other types, unknown or missing keys, a null `ratchet_pk`, a number written as `1.0`,
    any value a validator refuses) goes to `parse_frame`, so verdicts and error texts come from one
    place. tests/relay/test_wire.py checks that both agree, on random and on malformed input.
    """
    frame = _parse_common(data)
    return frame if frame is not None else parse_frame(data)


def _parse_common(data: str | bytes) -> Frame | None:
    if type(data) is not str or not data.isascii():
        return None
    try:
        value = _decode(data)
    except (ValueError, RecursionError):
        return None
    if type(value) is not dict:
        return None
    kind = value.get("type")
    if type(kind) is not str:
        return None
    keys = value.keys()
    try:
        if kind == "DELIVERY_ACK":
            if keys != _DELIVERY_ACK_KEYS:
                return None
            return DeliveryAck(
                v=value["v"],
                msg_id=value["msg_id"],
                ts=value["ts"],
                ref_msg_id=value["ref_msg_id"],
                key_layout=_layout(value),
            )
        cls = _ROUTED_CLASSES.get(kind)
        if cls is None or not keys >= _ROUTED_KEYS:
            return None
        ratchet_pk = value.get("ratchet_pk")
        if len(keys) != (10 if ratchet_pk is None else 11):  # absent, or present and not null
            return None
        return cls(
            v=value["v"],
            msg_id=value["msg_id"],
            ts=value["ts"],
            from_=value["from"],
            to=value["to"],
            ciphertext=value["ciphertext"],
            nonce=value["nonce"],
            sig=value["sig"],
            seq=value["seq"],
            ratchet_pk=ratchet_pk,
            key_layout=_layout(value),
        )
    except FrameError:
        return None


def _layout(value: Mapping[str, object]) -> KeyLayout:
    """PARSED when msg_id comes before type, as `parse_frame` decides it."""
    for key in value:
        if key == "msg_id":
            return KeyLayout.PARSED
        if key == "type":
            return KeyLayout.WIRE
    return KeyLayout.WIRE


# ---------------------------------------------------------------------- ids

_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_V4 = (0x4000 << 64) | (0x8000 << 48)


class FastIds:
    """Random version-4 UUID strings for the relay's own frames and rows, at a third of `uuid.uuid4`'s cost.

    Same randomness (the OS CSPRNG), drawn 4 KiB at a time instead of 16 bytes per id: the relay
    makes two ids per routed message (its DELIVERY and its ACK), so this is on the hot path.
    """

    def __init__(self) -> None:
        self._pool = b""
        self._offset = 0

    def uuid4(self) -> str:
        if self._offset + 16 > len(self._pool):
            self._pool, self._offset = os.urandom(4096), 0
        value = int.from_bytes(self._pool[self._offset : self._offset + 16], "big") & _UUID_CLEAR | _UUID_V4
        self._offset += 16
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
