"""Signature inputs, signatures and verification against signatures.json."""

import json
from pathlib import Path
from typing import Any

import pytest

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.jsjson import parse_json_object
from ratchet.keys import KeyPair
from ratchet.signatures import (
    hello_sig_input,
    routed_sig_input,
    sign_hello,
    sign_routed,
    verify_b64u,
    verify_hello,
    verify_routed,
)


def _load(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "signatures.json").read_text("utf-8"))
    return data


def _signer(case: dict[str, Any]) -> KeyPair:
    """A KeyPair for the case's Ed25519 key (the X25519 half is irrelevant to signing)."""
    secret = b64u_decode(case["signer_ed25519_sk_b64u"])
    keypair = KeyPair.from_secrets(secret[:32], b"\x01" * 32)
    assert keypair.ed25519_sk == secret
    assert b64u_encode(keypair.ed25519_pk) == case["signer_ed25519_pk_b64u"]
    return keypair


def test_every_signature_case_is_reproduced_and_verifies(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["cases"]
    kinds_seen = set()
    for case in cases:
        keypair = _signer(case)
        message = bytes.fromhex(case["message_hex"])
        assert message.decode("utf-8") == case["message_text"], case["name"]
        kind = case["kind"].split(":")[0]
        kinds_seen.add(kind)
        if kind == "HELLO":
            assert hello_sig_input(case["message_text"]) == message
            assert sign_hello(keypair, case["message_text"]) == case["sig_b64u"]
            assert verify_hello(case["signer_ed25519_pk_b64u"], case["message_text"], case["sig_b64u"])
        elif kind == "frame":
            fields = parse_json_object(case["message_text"])
            assert list(fields) == ["from", "to", "seq", "nonce"]
            from_pk, to_pk, seq, nonce = fields["from"], fields["to"], fields["seq"], fields["nonce"]
            assert isinstance(from_pk, str) and isinstance(to_pk, str) and isinstance(nonce, str)
            assert isinstance(seq, int)
            assert from_pk == case["signer_ed25519_pk_b64u"]
            assert routed_sig_input(from_pk, to_pk, seq, nonce) == message, case["name"]
            assert sign_routed(keypair, to_pk, seq, nonce) == case["sig_b64u"], case["name"]
            assert verify_routed(from_pk, to_pk, seq, nonce, case["sig_b64u"])
        else:  # invite blob, raw messages: plain Ed25519 over the given bytes
            assert b64u_encode(keypair.sign(message)) == case["sig_b64u"], case["name"]
        assert verify_b64u(case["signer_ed25519_pk_b64u"], message, case["sig_b64u"]) is case["verifies"]
    assert kinds_seen == {"HELLO", "invite", "frame", "raw message"}


def test_every_negative_case_fails_verification(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["verification_negative_cases"]
    assert len(cases) == 5
    for case in cases:
        message = bytes.fromhex(case["message_hex"])
        assert verify_b64u(case["pk_b64u"], message, case["sig_b64u"]) is False, case["name"]
        fields = parse_json_object(message.decode("utf-8"))
        seq = fields["seq"]
        assert isinstance(seq, int)
        # the same check through the frame API, with the case's key as the claimed sender
        assert not verify_routed(case["pk_b64u"], str(fields["to"]), seq, str(fields["nonce"]), case["sig_b64u"])


def test_hello_signs_the_challenge_text_not_its_decoded_bytes(vectors_dir: Path) -> None:
    case = _load(vectors_dir)["cases"][0]
    keypair = _signer(case)
    challenge = case["message_text"]
    decoded_signature = b64u_encode(keypair.sign(b64u_decode(challenge)))
    assert not verify_hello(case["signer_ed25519_pk_b64u"], challenge, decoded_signature)
    assert not verify_hello(case["signer_ed25519_pk_b64u"], challenge + "x", case["sig_b64u"])


@pytest.mark.parametrize(
    ("pk", "sig"),
    [
        ("", ""),
        ("!!!", "!!!"),
        ("AAAA", "AAAA"),
        ("gmBDwz04nfM3_pUameV65AtRhIc_y2ZpR5f-6ucXWio", ""),
        ("gmBDwz04nfM3_pUameV65AtRhIc_y2ZpR5f-6ucXWio", "A" * 2000),
        ("A" * 44, "A" * 86),
    ],
)
def test_malformed_keys_and_signatures_are_just_invalid(pk: str, sig: str) -> None:
    assert verify_routed(pk, "to", 0, "nonce", sig) is False
    assert verify_hello(pk, "challenge", sig) is False


def test_signature_binds_every_signed_field() -> None:
    keypair = KeyPair.from_secrets(b"\x11" * 32, b"\x22" * 32)
    from_pk = b64u_encode(keypair.ed25519_pk)
    sig = sign_routed(keypair, "BBBB", 7, "NNNN")
    assert verify_routed(from_pk, "BBBB", 7, "NNNN", sig)
    assert not verify_routed(from_pk, "BBBC", 7, "NNNN", sig)
    assert not verify_routed(from_pk, "BBBB", 8, "NNNN", sig)
    assert not verify_routed(from_pk, "BBBB", 7, "NNNM", sig)
    other = KeyPair.from_secrets(b"\x12" * 32, b"\x22" * 32)
    assert not verify_routed(b64u_encode(other.ed25519_pk), "BBBB", 7, "NNNN", sig)


def test_reference_inventory_anchor_signature() -> None:
    keypair = KeyPair.from_secrets(b"\x11" * 32, b"\x33" * 32)
    assert b64u_encode(keypair.ed25519_pk) == "0EqyMnQrtKs6E2i9RhXk5tAiSrcaAWuvhSCjMsl3hzc"
    assert sign_routed(keypair, "BBBB", 0, "NNNN") == (
        "MQpWLp7FJmpIX_ssvLzOiZOnl6gtUpQHwE3fS3DP6IfhwmuOuAnKOQlKqLkiBbcu53nkyX1Pb9B_d2qrx-w0Dw"
    )
