"""Invites against invite.json: byte-exact creation, every negative case, the accepted edge cases,
and the places where we are deliberately stricter than the reference."""

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from replay import ReplayRandom

from ratchet.encoding import b64u_encode
from ratchet.invite import (
    DEFAULT_TTL_MS,
    INVITE_PREFIX,
    InviteError,
    InviteExpiredError,
    InviteMalformedError,
    InviteSchemeError,
    InviteSignatureError,
    create_invite,
    parse_invite_url,
)
from ratchet.jsjson import js_stringify, js_utf8_encode
from ratchet.keys import KeyPair

NOW = 1767225605000


def _load(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "invite.json").read_text("utf-8"))
    return data


def _keys(vectors: dict[str, Any]) -> dict[str, KeyPair]:
    keys = {}
    for name, entry in vectors["keys"].items():
        rng = ReplayRandom(entry["injected_randomness"])
        keypair = KeyPair.generate(rng)
        rng.assert_exhausted()
        assert b64u_encode(keypair.ed25519_sk) == entry["ed25519_sk_b64u"]
        assert b64u_encode(keypair.x25519_pk) == entry["x25519_pk_b64u"]
        keys[name] = keypair
    return keys


def _mint(keypair: KeyPair, blob: object, sig: str | None = None) -> str:
    """An invite URL for any blob (JSON-able), signed by keypair over JSON.stringify(blob)."""
    if sig is None:
        sig = b64u_encode(keypair.sign(js_utf8_encode(js_stringify(blob))))
    return INVITE_PREFIX + b64u_encode(js_utf8_encode(js_stringify({"blob": blob, "sig": sig})))


def _standard_blob(keypair: KeyPair, **overrides: object) -> dict[str, object]:
    blob: dict[str, object] = {
        "invite_id": "575f1b24-2920-4ddf-ad13-4ad827004d3f",
        "inviter_ed25519_pk": b64u_encode(keypair.ed25519_pk),
        "inviter_x25519_pk": b64u_encode(keypair.x25519_pk),
        "server_url": "wss://relay.example/ws",
        "expires_at": NOW + 60_000,
        "nonce": "6kMMTk94n0rlcu-Laz4Uow",
    }
    blob.update(overrides)
    return blob


def test_created_invites_are_byte_identical_to_the_reference(vectors_dir: Path) -> None:
    vectors = _load(vectors_dir)
    keys = _keys(vectors)
    assert len(vectors["valid_invites"]) == 5
    for case in vectors["valid_invites"]:
        inputs = case["inputs"]
        rng = ReplayRandom(case["injected_randomness"])
        if inputs["ttl_defaulted"]:
            assert inputs["ttl_ms"] == DEFAULT_TTL_MS
            invite = create_invite(keys[case["inviter"]], inputs["server_url"], inputs["date_now_ms"], rng)
        else:
            invite = create_invite(
                keys[case["inviter"]], inputs["server_url"], inputs["date_now_ms"], rng, ttl_ms=inputs["ttl_ms"]
            )
        rng.assert_exhausted()
        assert invite.url == case["url"], case["name"]
        assert invite.sig == case["sig_b64u"]
        assert invite.blob.signed_text == case["signed_message_text"]
        assert js_utf8_encode(invite.blob.signed_text).hex() == case["signed_message_hex"]
        assert invite.payload_b64u == case["url"][len(INVITE_PREFIX) :]
        assert invite.invite_id == case["blob"]["invite_id"]
        assert invite.expires_at == case["blob"]["expires_at"]
        assert invite.blob.nonce == case["blob"]["nonce"]
        assert invite.blob.server_url == case["blob"]["server_url"]

        parsed = parse_invite_url(case["url"], case["parse"]["now_ms"])
        assert case["parse"]["result"]["ok"] is True
        expected = case["parse"]["result"]["signed"]
        assert parsed.sig == expected["sig"]
        for field, value in expected["blob"].items():
            assert getattr(parsed.blob, field) == value, (case["name"], field)
        assert parsed == invite


def _error_kind(reference_error: str) -> type[InviteError]:
    if reference_error == "not an agentroom invite URL":
        return InviteSchemeError
    if reference_error == "invite expired":
        return InviteExpiredError
    if reference_error == "invalid signature":
        return InviteSignatureError
    # "malformed invite", and the engine's SyntaxError (bad JSON) / TypeError (JSON null) texts
    assert reference_error == "malformed invite" or reference_error.startswith(("SyntaxError:", "TypeError:"))
    return InviteMalformedError


def test_every_negative_case_fails_with_the_same_kind_of_error(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["negative_cases"]
    assert len(cases) == 25
    for case in cases:
        assert case["result"]["ok"] is False
        kind = _error_kind(case["result"]["error"])
        with pytest.raises(kind) as raised:
            parse_invite_url(case["url"], case["now_ms"])
        assert type(raised.value) is kind, case["name"]
        if not case["result"]["error"].startswith(("SyntaxError:", "TypeError:")):
            assert str(raised.value).startswith(case["result"]["error"]), case["name"]


def test_accepted_edge_cases_except_where_we_are_stricter(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["accepted_edge_cases"]
    assert len(cases) == 8
    stricter = 0
    for case in cases:
        expected = case["result"]["signed"]
        if not isinstance(expected["blob"].get("expires_at"), int):
            # Deliberate difference: the reference never expires these; we refuse them.
            stricter += 1
            with pytest.raises(InviteMalformedError, match="expires_at must be an integer"):
                parse_invite_url(case["url"], case["now_ms"])
            continue
        parsed = parse_invite_url(case["url"], case["now_ms"])
        assert parsed.sig == expected["sig"], case["name"]
        assert parsed.blob.signed_text == js_stringify(expected["blob"]), case["name"]
        for field in ("invite_id", "inviter_ed25519_pk", "inviter_x25519_pk", "server_url", "expires_at", "nonce"):
            assert getattr(parsed.blob, field) == expected["blob"][field], (case["name"], field)
    assert stricter == 2


def test_expiry_grace_boundary(vectors_dir: Path) -> None:
    case = _load(vectors_dir)["valid_invites"][0]
    expires_at = case["blob"]["expires_at"]
    assert parse_invite_url(case["url"], expires_at + 30_000).expires_at == expires_at
    with pytest.raises(InviteExpiredError, match="invite expired"):
        parse_invite_url(case["url"], expires_at + 30_001)


def test_a_float_spelled_expires_at_is_the_same_js_number() -> None:
    keypair = KeyPair.from_secrets(b"\x01" * 32, b"\x02" * 32)
    blob = _standard_blob(keypair)
    url = _mint(keypair, blob)
    # Written as 1.76722566500e12 in the JSON text, JSON.stringify still prints the integer.
    respelled = js_stringify({"blob": blob, "sig": parse_invite_url(url, NOW).sig}).replace(
        str(blob["expires_at"]), "1.767225665000e12"
    )
    parsed = parse_invite_url(INVITE_PREFIX + b64u_encode(respelled.encode()), NOW)
    assert parsed.expires_at == NOW + 60_000


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"expires_at": True}, "expires_at must be an integer"),
        ({"expires_at": None}, "expires_at must be an integer"),
        ({"expires_at": 1767225665000.5}, "expires_at must be an integer"),
        ({"expires_at": -5}, "expires_at out of range"),
        ({"expires_at": 2**53}, "expires_at out of range"),
        ({"nonce": "AAAA"}, "nonce must encode 16 bytes"),
        ({"nonce": 7}, "nonce must be a non-empty string"),
        ({"inviter_x25519_pk": "AAAA"}, "inviter_x25519_pk must encode 32 bytes"),
        ({"server_url": ""}, "server_url must be a non-empty string"),
        ({"invite_id": ["x"]}, "invite_id must be a non-empty string"),
    ],
)
def test_validly_signed_but_unusable_fields_are_malformed(overrides: dict[str, object], message: str) -> None:
    keypair = KeyPair.from_secrets(b"\x01" * 32, b"\x02" * 32)
    url = _mint(keypair, _standard_blob(keypair, **overrides))
    with pytest.raises(InviteMalformedError, match=message):
        parse_invite_url(url, NOW)


def test_inviter_key_must_be_spelled_canonically() -> None:
    keypair = KeyPair.from_secrets(b"\x02" * 32, b"\x02" * 32)
    canonical = b64u_encode(keypair.ed25519_pk)
    assert "-" in canonical and "_" in canonical
    for spelling in (canonical + "=", canonical.replace("-", "+").replace("_", "/"), " " + canonical):
        url = _mint(keypair, _standard_blob(keypair, inviter_ed25519_pk=spelling))
        with pytest.raises(InviteMalformedError, match="not canonical"):
            parse_invite_url(url, NOW)


def test_missing_fields_after_a_valid_signature_are_malformed() -> None:
    keypair = KeyPair.from_secrets(b"\x01" * 32, b"\x02" * 32)
    for field in ("invite_id", "inviter_x25519_pk", "server_url", "nonce"):
        blob = _standard_blob(keypair)
        del blob[field]
        with pytest.raises(InviteMalformedError, match=field):
            parse_invite_url(_mint(keypair, blob), NOW)


def test_structural_problems_are_malformed() -> None:
    keypair = KeyPair.from_secrets(b"\x01" * 32, b"\x02" * 32)
    payloads = [
        b"\xff\xfe not utf-8",
        b'"just a string"',
        b"[1, 2]",
        b'{"blob": [], "sig": "x"}',
        b'{"blob": {"a": 1}, "sig": 5}',
        b'{"blob": "text", "sig": "x"}',
        b'{"blob": {}, "sig": "x"}',
        b'{"blob": {"expires_at": 1}}',
        b'{"blob": {"expires_at": NaN}, "sig": "x"}',
    ]
    for payload in payloads:
        with pytest.raises(InviteMalformedError):
            parse_invite_url(INVITE_PREFIX + b64u_encode(payload), NOW)
    # Without an inviter key there is nothing to verify with: an invalid signature, as in the reference.
    blob = _standard_blob(keypair)
    del blob["inviter_ed25519_pk"]
    with pytest.raises(InviteSignatureError):
        parse_invite_url(_mint(keypair, blob), NOW)


def test_non_string_url_is_not_an_invite() -> None:
    with pytest.raises(InviteSchemeError):
        parse_invite_url(None, NOW)  # type: ignore[arg-type]


def test_a_round_trip_through_a_fresh_invite() -> None:
    class CountingRandom:
        def __init__(self) -> None:
            self.n = 0

        def random_bytes(self, n: int) -> bytes:
            self.n += 1
            return bytes([self.n]) * n

        def ed25519_seed(self) -> bytes:
            raise AssertionError("create_invite draws no keys")

        def x25519_secret(self) -> bytes:
            raise AssertionError("create_invite draws no keys")

        def uuid4(self) -> str:
            return "123e4567-e89b-42d3-a456-426614174000"

    keypair = KeyPair.from_secrets(b"\x07" * 32, b"\x08" * 32)
    invite = create_invite(keypair, "ws://127.0.0.1:1/ws", NOW, CountingRandom(), ttl_ms=1000)
    assert parse_invite_url(invite.url, NOW + 31_000) == invite
    with pytest.raises(InviteExpiredError):
        parse_invite_url(invite.url, NOW + 31_001)


@given(st.text(max_size=200))
def test_random_text_only_ever_raises_invite_errors(text: str) -> None:
    for candidate in (text, INVITE_PREFIX + text):
        with pytest.raises(InviteError):
            parse_invite_url(candidate, NOW)


@given(st.binary(max_size=300))
def test_random_payload_bytes_only_ever_raise_invite_errors(payload: bytes) -> None:
    with pytest.raises(InviteError):
        parse_invite_url(INVITE_PREFIX + b64u_encode(payload), NOW)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.sampled_from(["blob", "sig", "expires_at", "x"]), c),
        max_leaves=12,
    )
)
def test_random_json_documents_only_ever_raise_invite_errors(document: object) -> None:
    with pytest.raises(InviteError):
        parse_invite_url(INVITE_PREFIX + b64u_encode(js_utf8_encode(js_stringify(document))), NOW)
