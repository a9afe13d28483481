"""Identity keys and the identity file against identity.json, and every way a file can be broken."""

import json
from pathlib import Path
from typing import Any

import pytest
from replay import ReplayRandom

from ratchet.encoding import b64u_encode
from ratchet.identity import Identity, IdentityFileError, identity_from_json, identity_to_json
from ratchet.keys import KeyPair, x25519_public


def _load(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "identity.json").read_text("utf-8"))
    return data


def _first_identity(vectors_dir: Path) -> tuple[KeyPair, bytes]:
    case = _load(vectors_dir)["generate_keypair_cases"][0]
    keypair = KeyPair.generate(ReplayRandom(case["injected_randomness"]))
    return keypair, case["stored_identity_json"].encode("utf-8")


def test_generated_keypairs_and_identity_files_match_the_reference(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["generate_keypair_cases"]
    assert cases
    for case in cases:
        rng = ReplayRandom(case["injected_randomness"])
        keypair = KeyPair.generate(rng)
        rng.assert_exhausted()
        assert keypair.ed25519_pk.hex() == case["ed25519_pk_hex"]
        assert keypair.ed25519_sk.hex() == case["ed25519_sk_hex"]
        assert keypair.x25519_pk.hex() == case["x25519_pk_hex"]
        assert keypair.x25519_sk.hex() == case["x25519_sk_hex"]
        stored = case["stored_identity_json"].encode("utf-8")
        assert identity_to_json(keypair) == stored
        assert identity_from_json(stored) == keypair
        identity = Identity(keypair)
        assert identity.pk == case["b64u"]["ed25519_pk"]
        assert identity.x25519_pk_b64u == case["b64u"]["x25519_pk"]


def test_x25519_edge_cases_clamp_inside_the_multiplication(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["x25519_edge_cases"]
    assert len(cases) == 4
    for case in cases:
        public = x25519_public(bytes.fromhex(case["x25519_sk_hex"]))
        assert public.hex() == case["x25519_pk_hex"], case["note"]
        assert b64u_encode(public) == case["x25519_pk_b64u"]


def test_ed25519_seed_cases(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["ed25519_seed_cases"]
    assert len(cases) == 3
    for case in cases:
        keypair = KeyPair.from_secrets(bytes.fromhex(case["ed25519_seed_hex"]), b"\x09" * 32)
        assert keypair.ed25519_pk.hex() == case["ed25519_pk_hex"], case["note"]
        assert b64u_encode(keypair.ed25519_pk) == case["ed25519_pk_b64u"]
        assert b64u_encode(keypair.ed25519_sk) == case["ed25519_sk_b64u"]


def test_handshake_identity_files_round_trip(vectors_dir: Path) -> None:
    handshake = json.loads((vectors_dir / "handshake.json").read_text("utf-8"))
    for name, identity in handshake["identities"].items():
        text = identity["identity_file_text"].encode("utf-8")
        keypair = identity_from_json(text)
        assert identity_to_json(keypair) == text, name
        assert Identity(keypair).pk == identity["ed25519_pk"]


def test_surrounding_whitespace_and_unknown_fields_are_tolerated(vectors_dir: Path) -> None:
    keypair, stored = _first_identity(vectors_dir)
    assert identity_from_json(stored + b"\n") == keypair
    document = json.loads(stored)
    document["comment"] = "written by hand"
    assert identity_from_json(json.dumps(document).encode()) == keypair


def _replace_field(stored: bytes, name: str, value: object) -> bytes:
    document = json.loads(stored)
    document[name] = value
    return json.dumps(document, indent=2).encode()


def _without_field(stored: bytes, name: str) -> bytes:
    document = json.loads(stored)
    del document[name]
    return json.dumps(document, indent=2).encode()


def test_corrupt_identity_files_are_refused_with_a_clear_message(vectors_dir: Path) -> None:
    keypair, stored = _first_identity(vectors_dir)
    other = KeyPair.from_secrets(b"\x44" * 32, b"\x55" * 32)
    other_file = json.loads(identity_to_json(other))
    cases: list[tuple[bytes, str]] = [
        (b"", "empty"),
        (b"  \n", "empty"),
        (stored[: len(stored) // 2], "truncated"),
        (stored[:-1], "truncated"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"ed25519_pk=abc", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"null", "JSON object"),
        (_without_field(stored, "x25519_sk"), "missing field 'x25519_sk'"),
        (_without_field(stored, "ed25519_pk"), "missing field 'ed25519_pk'"),
        (_replace_field(stored, "ed25519_pk", 42), "'ed25519_pk' must be an unpadded base64url string"),
        (_replace_field(stored, "x25519_pk", "AAAA"), "'x25519_pk' must be 32 bytes, got 3"),
        (_replace_field(stored, "ed25519_sk", b64u_encode(keypair.ed25519_sk[:32])), "must be 64 bytes, got 32"),
        (
            _replace_field(stored, "x25519_sk", b64u_encode(keypair.x25519_sk) + "=="),
            "'x25519_sk' must be an unpadded base64url string",
        ),
        (
            _replace_field(stored, "x25519_sk", "!" + b64u_encode(keypair.x25519_sk)[1:]),
            "'x25519_sk' must be an unpadded base64url string",
        ),
        (_replace_field(stored, "ed25519_sk", other_file["ed25519_sk"]), "ed25519_sk does not belong to ed25519_pk"),
        (_replace_field(stored, "ed25519_pk", other_file["ed25519_pk"]), "ed25519_sk does not belong to ed25519_pk"),
        (_replace_field(stored, "x25519_pk", other_file["x25519_pk"]), "x25519_pk does not belong to x25519_sk"),
        (_replace_field(stored, "x25519_sk", other_file["x25519_sk"]), "x25519_pk does not belong to x25519_sk"),
    ]
    for data, message in cases:
        with pytest.raises(IdentityFileError, match=message):
            identity_from_json(data)


def test_secret_half_of_ed25519_sk_must_carry_the_public_key(vectors_dir: Path) -> None:
    keypair, stored = _first_identity(vectors_dir)
    # seed is right, but the stored sk's second half (its copy of the pk) is not
    bad_sk = keypair.ed25519_sk[:32] + bytes(32)
    with pytest.raises(IdentityFileError, match="ed25519_sk does not belong"):
        identity_from_json(_replace_field(stored, "ed25519_sk", b64u_encode(bad_sk)))


def test_keypair_repr_never_shows_secrets(vectors_dir: Path) -> None:
    keypair, _ = _first_identity(vectors_dir)
    text = repr(Identity(keypair))
    assert b64u_encode(keypair.ed25519_sk) not in text
    assert keypair.x25519_sk.hex() not in text
