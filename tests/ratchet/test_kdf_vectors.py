"""ratchet.kdf and ratchet.keys against every case of kdf.json, including the error cases."""

import json
from pathlib import Path
from typing import Any

import pytest

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import InvalidKeyError, RatchetError
from ratchet.kdf import LABEL_CHAIN, bootstrap_keys, chain_update, kdf, message_key, ratchet_step
from ratchet.keys import x25519, x25519_public


def _load(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "kdf.json").read_text("utf-8"))
    return data


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


def test_generic_kdf_cases(vectors_dir: Path) -> None:
    section = _load(vectors_dir)["hkdf"]
    assert len(section["cases"]) == 11
    for case in section["cases"]:
        assert case["info_utf8"].encode("utf-8").hex() == case["info_hex"]
        assert (case["info_utf8"].encode("utf-8") + b"\x01").hex() == case["expand_input_hex"]
        okm = kdf(_hex(case["ikm_hex"]), _hex(case["salt_hex"]), case["info_utf8"], case["len"])
        assert okm.hex() == case["okm_hex"], case["note"]


def test_generic_kdf_error_cases(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["hkdf"]["error_cases"]
    assert len(cases) == 1
    for case in cases:
        assert case["throws"]
        with pytest.raises(RatchetError, match="salt too long"):
            kdf(_hex(case["ikm_hex"]), _hex(case["salt_hex"]), case["info_utf8"], case["len"])


def test_message_key_cases(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["message_key"]["cases"]
    assert len(cases) == 18
    for case in cases:
        assert message_key(_hex(case["chain_key_hex"]), case["seq"]).hex() == case["message_key_hex"], case["seq"]


def test_ratchet_step_cases(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["ratchet_step"]["cases"]
    assert len(cases) == 6
    for case in cases:
        root, chain = ratchet_step(_hex(case["root_key_hex"]), _hex(case["dh_output_hex"]))
        assert root.hex() == case["new_root_key_hex"]
        assert chain.hex() == case["chain_key_hex"]


def test_symmetric_chain_advance(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["chain_advance"]["cases"]
    assert len(cases) == 2
    for case in cases:
        chain = _hex(case["initial_chain_key_hex"])
        assert len(case["steps"]) == 6
        for step in case["steps"]:
            assert chain.hex() == step["chain_key_hex"]
            mk = message_key(chain, step["seq"])
            assert mk.hex() == step["message_key_hex"]
            chain = chain_update(chain, mk)
            assert chain.hex() == step["next_chain_key_hex"]
            assert chain == kdf(mk, _hex(step["chain_key_hex"]), LABEL_CHAIN)


def test_dh_ratchet_chain_update_both_sides(vectors_dir: Path) -> None:
    section = _load(vectors_dir)["dh_ratchet_chain_update"]
    assert len(section["cases"]) == 6
    for case in section["cases"]:
        sender_sk = _hex(case["sender_new_ephemeral_x25519_sk_hex"])
        receiver_sk = _hex(case["receiver_current_x25519_sk_hex"])
        assert b64u_encode(x25519_public(sender_sk)) == case["sender_new_ephemeral_x25519_pk_b64u"]
        assert b64u_encode(x25519_public(receiver_sk)) == case["receiver_current_x25519_pk_b64u"]
        sender_dh = x25519(sender_sk, b64u_decode(case["receiver_current_x25519_pk_b64u"]))
        receiver_dh = x25519(receiver_sk, b64u_decode(case["sender_new_ephemeral_x25519_pk_b64u"]))
        assert sender_dh.hex() == receiver_dh.hex() == case["dh_output_hex"]
        after = chain_update(_hex(case["chain_key_before_hex"]), sender_dh)
        assert after.hex() == case["chain_key_after_hex"]


def test_low_order_peer_keys_are_rejected(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["dh_ratchet_chain_update"]["error_cases"]
    assert len(cases) == 2
    for case in cases:
        assert "weak public key" in case["throws"]
        with pytest.raises(InvalidKeyError, match="low-order"):
            x25519(_hex(case["our_sk_hex"]), _hex(case["their_pk_hex"]))


def test_session_bootstrap_roles(vectors_dir: Path) -> None:
    cases = _load(vectors_dir)["session_bootstrap"]["cases"]
    assert len(cases) == 5
    for case in cases:
        inviter_sk = _hex(case["inviter_x25519_sk_hex"])
        invitee_sk = _hex(case["invitee_x25519_sk_hex"])
        assert b64u_encode(x25519_public(inviter_sk)) == case["inviter_x25519_pk_b64u"]
        assert b64u_encode(x25519_public(invitee_sk)) == case["invitee_x25519_pk_b64u"]
        salt = b64u_decode(case["invite_nonce_b64u"])
        assert salt.hex() == case["salt_hex"]
        shared_inviter = x25519(inviter_sk, b64u_decode(case["invitee_x25519_pk_b64u"]))
        shared_invitee = x25519(invitee_sk, b64u_decode(case["inviter_x25519_pk_b64u"]))
        assert shared_inviter.hex() == shared_invitee.hex() == case["shared_secret_hex"]
        key_a, key_b = bootstrap_keys(shared_inviter, salt)
        assert key_a.hex() == case["keyA_hex"]
        assert key_b.hex() == case["keyB_hex"]
        assert (key_a.hex(), key_b.hex()) == (case["inviter"]["sendKey_hex"], case["inviter"]["recvKey_hex"])
        assert (key_b.hex(), key_a.hex()) == (case["invitee"]["sendKey_hex"], case["invitee"]["recvKey_hex"])
