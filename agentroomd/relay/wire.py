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

import attrs

from ratchet.frames import PROTOCOL_VERSION, KeyLayout, Routed, serialize_frame

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False).encode


def routed_text(frame: Routed, layout: KeyLayout | None = None) -> str:
    """`serialize_frame(frame)` for a MSG / SESSION_INIT / SESSION_ACK, in ``layout`` if given.

    `routed_text(frame, KeyLayout.PARSED)` is `serialize_frame(as_forwarded(frame))`: what the
    reference relay forwards for a client's frame.
    """
    layout = layout or frame.key_layout
    strings = (frame.msg_id, frame.from_, frame.to, frame.ciphertext, frame.nonce, frame.sig, frame.ratchet_pk or "")
    if not all(text.isascii() for text in strings):
        return serialize_frame(frame if layout is frame.key_layout else attrs.evolve(frame, key_layout=layout))
    value: dict[str, object] = {"v": frame.v}
    if layout is KeyLayout.WIRE:
        value.update(type=frame.TYPE, msg_id=frame.msg_id, ts=frame.ts)
    else:
        value.update(msg_id=frame.msg_id, ts=frame.ts, type=frame.TYPE)
    value.update(
        {
            "from": frame.from_,
            "to": frame.to,
            "ciphertext": frame.ciphertext,
            "nonce": frame.nonce,
            "sig": frame.sig,
            "seq": frame.seq,
        }
    )
    if frame.ratchet_pk is not None:
        value["ratchet_pk"] = frame.ratchet_pk
    return _encode(value)


def delivery_text(msg_id: str, ts: int, routed: str) -> str:
    """`serialize_frame(Delivery(msg_id=..., ts=..., routed=...))` given the routed frame's own text."""
    return f'{{"v":{PROTOCOL_VERSION},"type":"DELIVERY","msg_id":{_encode(msg_id)},"ts":{int(ts)},"routed":{routed}}}'


def ack_text(msg_id: str, ts: int, ref_msg_id: str, status: str) -> str:
    """`serialize_frame(Ack(...))` without an error text (the relay's delivered / queued answers)."""
    return (
        f'{{"v":{PROTOCOL_VERSION},"type":"ACK","msg_id":{_encode(msg_id)},"ts":{int(ts)},'
        f'"ref_msg_id":{_encode(ref_msg_id)},"status":{_encode(status)}}}'
    )


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
