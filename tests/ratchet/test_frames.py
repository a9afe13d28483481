"""Wire frames against the reference's vectors: same verdicts, same bytes, plus our bounds and extensions."""

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from ratchet.frames import (
    FRAME_TYPES,
    Ack,
    Delivery,
    DeliveryAck,
    Error,
    Frame,
    FrameError,
    Hello,
    HelloAck,
    InviteClaim,
    KeyLayout,
    Msg,
    Ping,
    Pong,
    SessionInit,
    as_forwarded,
    make_ack,
    make_delivery,
    make_delivery_ack,
    make_error,
    make_hello_ack,
    make_ping,
    parse_frame,
    pong_for,
    routed_from_claim,
    serialize_frame,
)
from ratchet.jsjson import js_stringify

UUID = "123e4567-e89b-12d3-a456-426614174000"
OTHER_UUID = "61c9c35e-1baf-4c85-ac12-9b212cbccbf9"


class FixedIds:
    """A RandomSource stand-in for frame building: hands out the given msg_ids in order."""

    def __init__(self, *ids: str) -> None:
        self._ids = list(ids)

    def uuid4(self) -> str:
        return self._ids.pop(0)

    def random_bytes(self, n: int) -> bytes:  # pragma: no cover - frames never draw bytes
        raise AssertionError("frames must not draw random bytes")

    def ed25519_seed(self) -> bytes:  # pragma: no cover
        raise AssertionError("frames must not draw keys")

    def x25519_secret(self) -> bytes:  # pragma: no cover
        raise AssertionError("frames must not draw keys")


@pytest.fixture(scope="module")
def frames_json(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "frames.json").read_text("utf-8"))
    return data


@pytest.fixture(scope="module")
def handshake(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "handshake.json").read_text("utf-8"))
    return data


@pytest.fixture(scope="module")
def transcript(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "ratchet_transcript.json").read_text("utf-8"))
    return data


def example(frames_json: dict[str, Any], name: str) -> dict[str, Any]:
    for case in frames_json["examples"] + frames_json["edge_and_invalid_cases"]:
        if case["name"] == name:
            return dict(case)
    raise AssertionError(f"no vector case named {name!r}")


def rejection(data: str | bytes) -> FrameError:
    with pytest.raises(FrameError) as caught:
        parse_frame(data)
    return caught.value


def issue_list(error: FrameError) -> list[tuple[tuple[str, ...], str]]:
    return [(issue.path, issue.code) for issue in error.issues]


# --------------------------------------------------------------------------------------------
# frames.json


def test_every_parsed_example_round_trips_byte_for_byte(frames_json: dict[str, Any]) -> None:
    seen_types = set()
    for case in frames_json["examples"]:
        frame = parse_frame(case["raw_text"])
        seen_types.add(frame.TYPE)
        assert serialize_frame(frame) == case["raw_text"], case["name"]
        # parsed_output_text is zod's output: the same frame in the PARSED layout.
        assert serialize_frame(as_forwarded(frame)) == case["parsed_output_text"], case["name"]
        assert parse_frame(case["parsed_output_text"]) == frame, case["name"]
    assert seen_types == set(frames_json["header"]["frame_types"])


def test_edge_cases_get_the_reference_verdict_issue_paths_and_codes(frames_json: dict[str, Any]) -> None:
    checked = 0
    for case in frames_json["edge_and_invalid_cases"]:
        if "documented_bound_in_PROTOCOL_md" in case:
            continue  # over-long: deliberately stricter, see the next test
        checked += 1
        if "json_parse_error" in case:
            assert rejection(case["raw_text"]).code == "BAD_JSON", case["name"]
        elif case["ok"]:
            frame = parse_frame(case["raw_text"])
            assert serialize_frame(as_forwarded(frame)) == case["parsed_output_text"], case["name"]
        else:
            error = rejection(case["raw_text"])
            expected = [(tuple(issue["path"]), issue["code"]) for issue in case["issues"]]
            assert issue_list(error) == expected, case["name"]
            assert error.code in ("BAD_FRAME", "UNKNOWN_TYPE"), case["name"]
    assert checked == 48


def over_long_text(frames_json: dict[str, Any], case: dict[str, Any]) -> str:
    """The exact input of an over-long case: given, or rebuilt from its rule and checked by SHA-256."""
    if "raw_text" in case:
        return str(case["raw_text"])
    rebuild = {
        "over-long: from = 10000 chars": ("MSG minimal valid", "from", "a" * 10000, {}),
        "over-long: ciphertext = 200 KiB": ("MSG minimal valid", "ciphertext", "c" * 204800, {}),
        "over-long: INVITE_PUBLISH blob = 20 KiB": (
            "INVITE_PUBLISH expires_at 0",
            "blob",
            "b" * 20480,
            {"expires_at": 1},
        ),
    }
    base_name, field, value, extra = rebuild[case["name"]]
    base = json.loads(example(frames_json, base_name)["raw_text"])
    text = js_stringify({**base, field: value, **extra})
    assert len(text) == case["raw_text_length"]
    assert hashlib.sha256(text.encode()).hexdigest() == case["raw_text_sha256"]
    return text


def test_over_long_fields_the_reference_accepted_are_rejected_at_the_documented_bound(
    frames_json: dict[str, Any],
) -> None:
    expected_paths = {
        "over-long: from = 10000 chars": ("from",),
        "over-long: nonce = 600 chars": ("nonce",),
        "over-long: ciphertext = 200 KiB": ("ciphertext",),
        "over-long: INVITE_PUBLISH blob = 20 KiB": ("blob",),
        "over-long: HELLO challenge = 300 chars": ("challenge",),
        "over-long: ERROR message = 2000 chars": ("message",),
    }
    over_long = [c for c in frames_json["edge_and_invalid_cases"] if "documented_bound_in_PROTOCOL_md" in c]
    assert {c["name"] for c in over_long} == set(expected_paths)
    for case in over_long:
        assert case["ok"] is True  # the reference schema let it through; we do not
        error = rejection(over_long_text(frames_json, case))
        assert error.code == "BAD_FRAME"
        assert issue_list(error) == [(expected_paths[case["name"]], "too_big")]
        assert len(str(error)) <= 1024


# --------------------------------------------------------------------------------------------
# handshake.json and ratchet_transcript.json


def raw_texts(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "raw_text" and isinstance(value, str):
                yield value
            else:
                yield from raw_texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from raw_texts(item)


def frame_objects(node: object) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "msg_id" in node and "type" in node and "v" in node:
            yield node
            return
        for value in node.values():
            yield from frame_objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from frame_objects(item)


def test_every_raw_frame_of_the_handshake_re_serialises_byte_identically(handshake: dict[str, Any]) -> None:
    texts = list(raw_texts(handshake["steps"]))
    assert len(texts) == 12
    for text in texts:
        assert serialize_frame(parse_frame(text)) == text
        assert serialize_frame(parse_frame(text.encode("utf-8"))) == text


def test_every_frame_of_the_ratchet_transcript_re_serialises_byte_identically(transcript: dict[str, Any]) -> None:
    objects = list(frame_objects(transcript))
    assert len(objects) == 162
    layouts = set()
    for obj in objects:
        text = js_stringify(obj)  # what JSON.stringify put on the socket
        frame = parse_frame(text)
        layouts.add(frame.key_layout)
        assert serialize_frame(frame) == text
    # sent frames are in the sender's order, frames delivered through the relay in zod's
    assert layouts == {KeyLayout.WIRE, KeyLayout.PARSED}


def test_routed_from_claim_builds_the_session_init_delivery_of_the_vectors(handshake: dict[str, Any]) -> None:
    claim = parse_frame(handshake["steps"][3]["frames_sent_by_client"][0]["raw_text"])
    assert isinstance(claim, InviteClaim)
    delivered = handshake["steps"][4]["delivered_to_client"]["raw_text"]
    alice_pk = handshake["identities"]["alice"]["ed25519_pk"]
    routed = routed_from_claim(claim, alice_pk)
    assert routed == SessionInit(
        msg_id=claim.msg_id,
        ts=claim.ts,
        from_=claim.from_,
        to=alice_pk,
        ciphertext=claim.ciphertext,
        nonce=claim.nonce,
        sig=claim.sig,
        seq=0,
    )
    assert routed.ratchet_pk is None
    delivery = make_delivery(FixedIds("00000000-0000-4000-8000-000000000004"), 1768089604000, routed)
    assert serialize_frame(delivery) == delivered


def test_relayed_msg_is_wrapped_like_the_reference_relay_wraps_it(frames_json: dict[str, Any]) -> None:
    sent = parse_frame(example(frames_json, "MSG (client)")["raw_text"])
    assert isinstance(sent, Msg) and sent.key_layout is KeyLayout.WIRE
    delivery = make_delivery(FixedIds("00000000-0000-4000-8000-0000000000ff"), 1767225600000, as_forwarded(sent))
    assert (
        serialize_frame(delivery)
        == example(frames_json, "DELIVERY wrapping MSG (routed = zod-parsed frame, keys in schema order)")["raw_text"]
    )
    # the wrapped frame is the sent one: key order is not part of a frame's identity
    assert delivery.routed == sent


def test_relay_built_frames_match_the_test_relay(frames_json: dict[str, Any]) -> None:
    ack = make_ack(FixedIds("00000000-0000-4000-8000-000000000003"), 1768089603000, OTHER_UUID, "delivered")
    assert serialize_frame(ack) == example(frames_json, "ACK delivered (test relay)")["raw_text"]
    hello_ack = make_hello_ack(FixedIds("00000000-0000-4000-8000-000000000001"), 1768089601000, "test-session-token")
    assert serialize_frame(hello_ack) == example(frames_json, "HELLO_ACK (test relay)")["raw_text"]
    error_case = example(frames_json, "ERROR (test relay)")
    error_frame = parse_frame(error_case["raw_text"])
    assert isinstance(error_frame, Error)
    rebuilt = make_error(FixedIds(error_frame.msg_id), error_frame.ts, error_frame.code, error_frame.message)
    assert serialize_frame(rebuilt) == error_case["raw_text"]
    assert serialize_frame(make_ping(FixedIds(UUID), 1)) == js_stringify(
        {"v": 2, "type": "PING", "msg_id": UUID, "ts": 1}
    )


def test_pong_echoes_the_ping_as_the_reference_does(frames_json: dict[str, Any]) -> None:
    pong_text = example(frames_json, "PONG (client echo of PING: {...ping, type:'PONG'})")["raw_text"]
    pong = parse_frame(pong_text)
    ping = Ping(msg_id=pong.msg_id, ts=pong.ts)
    assert pong_for(ping) == pong
    assert serialize_frame(pong_for(ping)) == pong_text


# --------------------------------------------------------------------------------------------
# Our extensions


def test_hello_and_hello_ack_carry_acks_deliveries_only_when_set() -> None:
    base = {"v": 2, "type": "HELLO", "msg_id": UUID, "ts": 1, "ed25519_pk": "a", "x25519_pk": "b", "sig": "c"}
    hello = parse_frame(js_stringify({**base, "challenge": "x", "acks_deliveries": True}))
    assert isinstance(hello, Hello) and hello.acks_deliveries is True
    assert serialize_frame(hello).endswith(',"challenge":"x","acks_deliveries":true}')
    plain = attrs.evolve(hello, acks_deliveries=False)
    assert "acks_deliveries" not in serialize_frame(plain)  # byte-identical to the reference's HELLO
    assert parse_frame(js_stringify({**base, "challenge": "x"})) == plain
    assert issue_list(rejection(js_stringify({**base, "challenge": "x", "acks_deliveries": "yes"}))) == [
        (("acks_deliveries",), "invalid_type")
    ]
    ack = make_hello_ack(FixedIds(UUID), 5, "tok", acks_deliveries=True)
    assert serialize_frame(ack) == (
        f'{{"v":2,"type":"HELLO_ACK","msg_id":"{UUID}","ts":5,"session_token":"tok","acks_deliveries":true}}'
    )
    assert parse_frame(serialize_frame(ack)) == ack


def test_error_names_the_frame_it_answers_and_delivery_ack_round_trips() -> None:
    error = make_error(FixedIds(UUID), 7, "NOT_FOUND", "invite not found", ref_msg_id=OTHER_UUID)
    assert serialize_frame(error) == (
        f'{{"v":2,"type":"ERROR","msg_id":"{UUID}","ts":7,"code":"NOT_FOUND",'
        f'"message":"invite not found","ref_msg_id":"{OTHER_UUID}"}}'
    )
    assert parse_frame(serialize_frame(error)) == error
    bad_ref = serialize_frame(error).replace(OTHER_UUID, "nope")
    assert issue_list(rejection(bad_ref)) == [(("ref_msg_id",), "invalid_format")]

    ack = make_delivery_ack(FixedIds(UUID), 9, OTHER_UUID)
    assert (
        serialize_frame(ack) == f'{{"v":2,"type":"DELIVERY_ACK","msg_id":"{UUID}","ts":9,"ref_msg_id":"{OTHER_UUID}"}}'
    )
    assert parse_frame(serialize_frame(ack)) == ack
    missing = js_stringify({"v": 2, "type": "DELIVERY_ACK", "msg_id": UUID, "ts": 9})
    assert issue_list(rejection(missing)) == [(("ref_msg_id",), "invalid_type")]
    assert "DELIVERY_ACK" in FRAME_TYPES and len(FRAME_TYPES) == 13


# --------------------------------------------------------------------------------------------
# Bounds (PROTOCOL.md), counted in UTF-16 code units like zod


ROUTED = {"v": 2, "type": "MSG", "msg_id": UUID, "ts": 1, "from": "a", "to": "b", "ciphertext": "c",
          "nonce": "n", "sig": "s", "seq": 0}  # fmt: skip
BOUNDED = [
    (ROUTED, "from", 512),
    (ROUTED, "to", 512),
    (ROUTED, "nonce", 512),
    (ROUTED, "sig", 512),
    (ROUTED, "ratchet_pk", 512),
    (ROUTED, "ciphertext", 196_608),
    ({**ROUTED, "type": "INVITE_CLAIM", "invite_id": UUID}, "ciphertext", 196_608),
    ({"v": 2, "type": "INVITE_PUBLISH", "msg_id": UUID, "ts": 1, "invite_id": UUID, "expires_at": 2}, "blob", 16_384),
    (
        {"v": 2, "type": "HELLO", "msg_id": UUID, "ts": 1, "ed25519_pk": "a", "x25519_pk": "b", "sig": "c"},
        "challenge",
        256,
    ),
    (
        {"v": 2, "type": "HELLO", "msg_id": UUID, "ts": 1, "challenge": "x", "x25519_pk": "b", "sig": "c"},
        "ed25519_pk",
        512,
    ),
    ({"v": 2, "type": "HELLO_ACK", "msg_id": UUID, "ts": 1}, "session_token", 512),
    ({"v": 2, "type": "ERROR", "msg_id": UUID, "ts": 1, "message": "m"}, "code", 64),
    ({"v": 2, "type": "ERROR", "msg_id": UUID, "ts": 1, "code": "X"}, "message", 1024),
    ({"v": 2, "type": "ACK", "msg_id": UUID, "ts": 1, "ref_msg_id": UUID, "status": "error"}, "error", 1024),
]


@pytest.mark.parametrize(("base", "field", "bound"), BOUNDED, ids=[f"{b['type']}.{f}" for b, f, _ in BOUNDED])
def test_field_bounds_accept_the_limit_and_reject_one_more(base: dict[str, Any], field: str, bound: int) -> None:
    at_limit = parse_frame(js_stringify({**base, field: "x" * bound}))
    assert serialize_frame(at_limit).count("x" * bound) == 1
    assert parse_frame(serialize_frame(at_limit)) == at_limit
    error = rejection(js_stringify({**base, field: "x" * (bound + 1)}))
    assert issue_list(error) == [((field,), "too_big")]


def test_lengths_count_utf16_code_units_like_javascript() -> None:
    base = {"v": 2, "type": "HELLO", "msg_id": UUID, "ts": 1, "ed25519_pk": "a", "x25519_pk": "b", "sig": "c"}
    assert parse_frame(js_stringify({**base, "challenge": "é" * 256}))  # BMP: one unit each
    assert parse_frame(js_stringify({**base, "challenge": "😀" * 128}))  # astral: two units each
    assert issue_list(rejection(js_stringify({**base, "challenge": "😀" * 129}))) == [(("challenge",), "too_big")]


def test_builders_cut_error_texts_to_their_bounds_without_splitting_a_character() -> None:
    error = make_error(FixedIds(UUID), 1, "C" * 100, "a" + "😀" * 600)
    assert error.code == "C" * 64
    assert error.message == "a" + "😀" * 511  # 1023 units: the next character would be 1025
    ack = make_ack(FixedIds(UUID), 1, OTHER_UUID, "error", error="e" * 5000)
    assert ack.error == "e" * 1024
    assert parse_frame(serialize_frame(ack)) == ack


# --------------------------------------------------------------------------------------------
# Malformed input: only FrameError, with a short message that never quotes the input


PING = '{"v":2,"type":"PING","msg_id":"123e4567-e89b-12d3-a456-426614174000","ts":1}'


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\xff\xfe{}", "BAD_JSON"),  # not UTF-8
        (PING.encode()[:-1] + b"\xc3", "BAD_JSON"),  # truncated UTF-8 sequence
        ("\ud800" + PING, "BAD_JSON"),  # a str holding a surrogate code point is not text
        ("[" * 100_000, "BAD_JSON"),  # deep nesting: no RecursionError
        ('{"x":' * 100_000, "BAD_JSON"),
        ("", "BAD_JSON"),
        ("\ufeff" + PING, "BAD_JSON"),  # JSON.parse rejects a BOM too
        (PING + "x", "BAD_JSON"),
        (PING.replace('"ts":1', '"ts":NaN'), "BAD_JSON"),
        (PING.replace('"ts":1', '"ts":Infinity'), "BAD_JSON"),
        (PING.replace('"ts":1', '"ts":01'), "BAD_JSON"),
        (PING.replace('"ts":1', '"ts":' + "1" * 5000), "BAD_FRAME"),  # a number (JS: Infinity), not an int error
        (PING.replace('"ts":1', '"ts":1e400'), "BAD_FRAME"),
        (PING.replace('"ts":1', '"ts":true'), "BAD_FRAME"),  # a boolean is not a number
        (PING.replace('"v":2', '"v":true'), "BAD_FRAME"),
        (PING.replace('"v":2', '"v":2.5'), "BAD_FRAME"),
        (PING.replace('000"', '000\\n"'), "BAD_FRAME"),  # no trailing newline after a UUID
        (PING.replace('"PING"', '"DELIVERY"'), "BAD_FRAME"),  # routed missing
        (PING.replace('"PING"', "7"), "BAD_FRAME"),
        (PING.replace('"PING"', '"HELLO\\u0000"'), "UNKNOWN_TYPE"),
    ],
)
def test_malformed_input_raises_only_frame_error(data: str | bytes, code: str) -> None:
    error = rejection(data)
    assert error.code == code
    assert 0 < len(str(error)) <= 1024


def test_error_messages_never_echo_the_input() -> None:
    marker = "SECRET-MARKER-"
    huge = marker * 20_000
    for text in [
        js_stringify({"v": 2, "type": huge, "msg_id": UUID, "ts": 1}),
        js_stringify({**ROUTED, "from": huge}),
        js_stringify({**ROUTED, "seq": huge}),
        js_stringify({**ROUTED, "msg_id": huge}),
        "{" + huge,
        huge,
    ]:
        error = rejection(text)
        assert marker not in str(error)
        assert len(str(error)) <= 1024
        assert all(marker not in issue.message for issue in error.issues)


def test_many_issues_still_give_a_bounded_message() -> None:
    error = rejection(js_stringify({"v": 2, "type": "DELIVERY", "msg_id": UUID, "ts": 1, "routed": {"v": 9}}))
    assert len(error.issues) == 10  # routed: v, msg_id, ts, type, from, to, ciphertext, nonce, sig, seq
    assert len(str(error)) <= 1024


def test_frame_error_names_the_frame_when_it_could_be_read() -> None:
    bad_seq = rejection(js_stringify({**ROUTED, "seq": -1}))
    assert (bad_seq.msg_id, bad_seq.frame_type) == (UUID, "MSG")
    unknown = rejection(js_stringify({"v": 2, "type": "WAT", "msg_id": UUID, "ts": 1}))
    assert (unknown.code, unknown.msg_id, unknown.frame_type) == ("UNKNOWN_TYPE", UUID, None)
    bad_id = rejection(js_stringify({**ROUTED, "msg_id": "x"}))
    assert (bad_id.msg_id, bad_id.frame_type) == (None, "MSG")
    not_json = rejection("{")
    assert (not_json.msg_id, not_json.frame_type, not_json.issues) == (None, None, ())


def test_json_numbers_that_are_integers_count_as_integers() -> None:
    for literal, value in [("1.0", 1), ("1e3", 1000), ("1E+3", 1000), ("-0", 0), ("1.00000000000000001", 1)]:
        frame = parse_frame(js_stringify({**ROUTED, "seq": 5}).replace('"seq":5', f'"seq":{literal}'))
        assert isinstance(frame, Msg)
        assert frame.seq == value and type(frame.seq) is int
    assert parse_frame(PING.replace('"v":2', '"v":2.0')).v == 2
    assert parse_frame(js_stringify({**ROUTED, "seq": 2**53 - 1}))


def test_duplicate_keys_keep_the_last_value_like_json_parse() -> None:
    frame = parse_frame(PING[:-1] + ',"ts":42}')
    assert frame.ts == 42


def test_lone_surrogate_escapes_survive_as_javascript_escapes() -> None:
    text = js_stringify({"v": 2, "type": "ERROR", "msg_id": UUID, "ts": 1, "code": "\ud800", "message": "\x00😀\udfff"})
    assert text.endswith('"code":"\\ud800","message":"\\u0000😀\\udfff"}')
    frame = parse_frame(text)
    assert isinstance(frame, Error) and frame.code == "\ud800"
    assert serialize_frame(frame) == text
    assert parse_frame(serialize_frame(frame).encode("utf-8")) == frame


# --------------------------------------------------------------------------------------------
# Frames built in code are held to the same rules


def test_constructing_an_invalid_frame_raises_frame_error() -> None:
    routed = {"msg_id": UUID, "ts": 1, "from_": "a", "to": "b", "ciphertext": "c", "nonce": "n", "sig": "s"}
    assert Msg(seq=0, **routed).v == 2
    for bad in [{"seq": -1}, {"seq": 1.0}, {"seq": True}, {"seq": 0, "ratchet_pk": ""}, {"seq": 0, "v": 3}]:
        with pytest.raises(FrameError) as caught:
            Msg(**{"seq": 0, **routed, **bad})
        assert caught.value.code == "BAD_FRAME"
    with pytest.raises(FrameError):
        Delivery(msg_id=UUID, ts=1, routed=Ping(msg_id=UUID, ts=1))  # type: ignore[arg-type]
    with pytest.raises(FrameError):
        Ack(msg_id=UUID, ts=1, ref_msg_id=UUID, status="ok")  # type: ignore[arg-type]
    with pytest.raises(FrameError):
        DeliveryAck(msg_id="not-a-uuid", ts=1, ref_msg_id=UUID)


def test_key_layout_changes_bytes_but_not_identity() -> None:
    frame: Frame = parse_frame(PING)
    forwarded = as_forwarded(frame)
    assert forwarded == frame and hash(forwarded) == hash(frame)
    assert serialize_frame(forwarded) == '{"v":2,"msg_id":"123e4567-e89b-12d3-a456-426614174000","ts":1,"type":"PING"}'
    assert parse_frame(serialize_frame(forwarded)).key_layout is KeyLayout.PARSED
    assert isinstance(parse_frame(PING.replace("PING", "PONG")), Pong)


def test_unknown_keys_are_dropped_and_bytes_and_bytearray_parse_like_text() -> None:
    text = js_stringify({**ROUTED, "extra": {"deep": [1, 2]}, "ratchet_pk": "rk"})
    frame = parse_frame(text)
    assert serialize_frame(frame) == js_stringify({**ROUTED, "ratchet_pk": "rk"})
    assert parse_frame(text.encode()) == parse_frame(bytearray(text.encode())) == frame
    assert isinstance(parse_frame(js_stringify({**ROUTED, "type": "SESSION_INIT"})), SessionInit)
    assert isinstance(parse_frame(js_stringify({"v": 1, "type": "HELLO_ACK", "msg_id": UUID, "ts": 1,
                                                "session_token": "t"})), HelloAck)  # fmt: skip
