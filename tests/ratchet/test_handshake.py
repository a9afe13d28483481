"""The session bootstrap against handshake.json, replaying the reference's randomness step by step,
plus every way a handshake message can be bad."""

import json
from pathlib import Path
from typing import Any

import attrs
import nacl.bindings as sodium
import pytest
from replay import ReplayRandom

from ratchet import frames
from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.handshake import (
    HandshakeError,
    accept_invite,
    check_session_ack,
    handle_session_init,
    session_ack_plaintext,
    session_init_payload,
)
from ratchet.identity import identity_to_json
from ratchet.invite import create_invite, parse_invite_url
from ratchet.kdf import bootstrap_keys
from ratchet.keys import KeyPair, x25519
from ratchet.rand import SYSTEM_RANDOM
from ratchet.session import decrypt, encrypt, session_to_reference_json
from ratchet.signatures import sign_hello, sign_routed, verify_hello, verify_routed

LOW_ORDER_POINTS = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.fixture(scope="module")
def vectors(vectors_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((vectors_dir / "handshake.json").read_text("utf-8"))
    return data


def _step(vectors: dict[str, Any], index: int) -> dict[str, Any]:
    step: dict[str, Any] = vectors["steps"][index]
    return step


def _identities(vectors: dict[str, Any]) -> tuple[KeyPair, KeyPair]:
    """alice and bob, generated from the draws of their first connect (steps 0 and 1)."""
    keypairs = []
    for index in (0, 1):
        rng = ReplayRandom(_step(vectors, index)["injected_randomness"])
        keypairs.append(KeyPair.generate(rng))
    return keypairs[0], keypairs[1]


def _sent(step: dict[str, Any]) -> dict[str, Any]:
    frames = step["frames_sent_by_client"]
    assert len(frames) == 1
    frame: dict[str, Any] = frames[0]["frame"]
    return frame


def _bob_accepts(vectors: dict[str, Any]) -> tuple[Any, Any]:
    _, bob = _identities(vectors)
    step = _step(vectors, 3)
    invite = parse_invite_url(vectors["invite_url"], step["now_ms"])
    return accept_invite(bob, invite, step["now_ms"])


def test_identities_and_hello_signatures(vectors: dict[str, Any]) -> None:
    for index, name in ((0, "alice"), (1, "bob")):
        step = _step(vectors, index)
        rng = ReplayRandom(step["injected_randomness"])
        keypair = KeyPair.generate(rng)
        assert identity_to_json(keypair).decode() == vectors["identities"][name]["identity_file_text"]
        hello = _sent(step)
        assert hello["type"] == "HELLO"
        assert b64u_encode(keypair.ed25519_pk) == hello["ed25519_pk"]
        assert b64u_encode(keypair.x25519_pk) == hello["x25519_pk"]
        assert sign_hello(keypair, step["challenge_from_relay"]) == hello["sig"]
        assert verify_hello(hello["ed25519_pk"], hello["challenge"], hello["sig"])
        assert rng.uuid4() == hello["msg_id"]  # the next draw is HELLO's msg_id
        rng.assert_exhausted()


def test_invite_publish_fields(vectors: dict[str, Any]) -> None:
    alice, _ = _identities(vectors)
    step = _step(vectors, 2)
    rng = ReplayRandom(step["injected_randomness"])
    invite = create_invite(alice, "wss://relay.example/ws", step["now_ms"], rng)
    publish = _sent(step)
    assert invite.url == vectors["invite_url"] == step["returned"]["url"]
    assert invite.invite_id == step["returned"]["invite_id"] == publish["invite_id"]
    assert invite.payload_b64u == publish["blob"]
    assert invite.expires_at == publish["expires_at"]
    assert json.loads(invite.blob.signed_text) == vectors["invite_blob"]
    assert rng.uuid4() == publish["msg_id"]
    rng.assert_exhausted()


def test_invitee_accept_builds_the_exact_invite_claim(vectors: dict[str, Any]) -> None:
    alice, bob = _identities(vectors)
    step = _step(vectors, 3)
    rng = ReplayRandom(step["injected_randomness"])
    claim, session = _bob_accepts(vectors)
    frame = _sent(step)
    assert frame["type"] == "INVITE_CLAIM"
    assert claim.invite_id == frame["invite_id"]
    assert claim.from_pk == frame["from"]
    assert claim.ciphertext == frame["ciphertext"]
    assert claim.nonce == frame["nonce"] == claim.ciphertext
    assert claim.sig == frame["sig"]
    assert verify_routed(claim.from_pk, b64u_encode(alice.ed25519_pk), 0, claim.nonce, claim.sig)
    assert rng.uuid4() == frame["msg_id"]  # the only draw of this step: the frame's msg_id
    rng.assert_exhausted()

    derived = vectors["derived"]
    assert session.peer_pk == b64u_encode(alice.ed25519_pk)
    assert session.send_chain_key.hex() == derived["keyB_hex"]
    assert session.recv_chain_key.hex() == derived["keyA_hex"]
    assert session.needs_send_dh_step is False
    assert session.recv_ephemeral_pk == alice.x25519_pk
    assert session.send_ephemeral.public == bob.x25519_pk
    assert (session.send_seq, session.recv_seq, session.skipped) == (0, -1, ())
    assert session.last_used_at == step["now_ms"]
    reference_text = session_to_reference_json(session, bob.ed25519_pk, bob.ed25519_sk)
    assert reference_text == vectors["initial_session_states"]["bob"] == vectors["session_files"]["bob"]["text"]


def test_inviter_handles_session_init_and_builds_the_exact_session_ack(vectors: dict[str, Any]) -> None:
    alice, bob = _identities(vectors)
    step = _step(vectors, 4)
    routed = step["delivered_to_client"]["frame"]["routed"]
    assert routed["type"] == "SESSION_INIT"
    rng = ReplayRandom(step["injected_randomness"])
    fields, session, invite_nonce = handle_session_init(
        alice, routed["from"], routed["ciphertext"], step["now_ms"], rng, frame_nonce=routed["nonce"], sig=routed["sig"]
    )
    ack = _sent(step)
    assert ack["type"] == "SESSION_ACK"
    assert fields.from_pk == ack["from"]
    assert fields.to == ack["to"]
    assert fields.ciphertext == ack["ciphertext"]
    assert fields.nonce == ack["nonce"]
    assert fields.sig == ack["sig"]
    assert fields.seq == ack["seq"] == 0
    assert "ratchet_pk" not in ack
    assert rng.uuid4() == ack["msg_id"]  # after the 24-byte ack nonce: SESSION_ACK's msg_id
    rng.assert_exhausted()

    derived = vectors["derived"]
    assert invite_nonce == vectors["invite_blob"]["nonce"]
    assert b64u_decode(invite_nonce).hex() == derived["salt_hex"]
    assert x25519(alice.x25519_sk, bob.x25519_pk).hex() == derived["x25519_shared_secret_hex"]
    assert b64u_encode(session.send_chain_key) == derived["keyA_b64u"]
    assert b64u_encode(session.recv_chain_key) == derived["keyB_b64u"]
    assert session.needs_send_dh_step is True
    assert session.peer_pk == b64u_encode(bob.ed25519_pk)
    assert session.recv_ephemeral_pk == bob.x25519_pk
    assert session.last_used_at == step["now_ms"]
    reference_text = session_to_reference_json(session, alice.ed25519_pk, alice.ed25519_sk)
    assert reference_text == vectors["initial_session_states"]["alice"] == vectors["session_files"]["alice"]["text"]


def test_invitee_checks_the_session_ack(vectors: dict[str, Any]) -> None:
    _, bob = _identities(vectors)
    _, session = _bob_accepts(vectors)
    routed = _step(vectors, 5)["delivered_to_client"]["frame"]["routed"]
    assert routed["type"] == "SESSION_ACK"
    assert verify_routed(routed["from"], b64u_encode(bob.ed25519_pk), routed["seq"], routed["nonce"], routed["sig"])
    key_a = session.recv_chain_key
    invite_nonce = vectors["invite_blob"]["nonce"]
    assert check_session_ack(key_a, invite_nonce, routed["ciphertext"], routed["nonce"]) is True
    opened = sodium.crypto_secretbox_open(b64u_decode(routed["ciphertext"]), b64u_decode(routed["nonce"]), key_a)
    assert opened == session_ack_plaintext(invite_nonce) == vectors["derived"]["session_ack_plaintext"].encode()


def test_session_ack_check_rejects_anything_else(vectors: dict[str, Any]) -> None:
    _, session = _bob_accepts(vectors)
    routed = _step(vectors, 5)["delivered_to_client"]["frame"]["routed"]
    key_a, ct, nonce = session.recv_chain_key, routed["ciphertext"], routed["nonce"]
    invite_nonce = vectors["invite_blob"]["nonce"]
    flipped = bytearray(b64u_decode(ct))
    flipped[-1] ^= 1
    assert not check_session_ack(session.send_chain_key, invite_nonce, ct, nonce)  # keyB, not keyA
    assert not check_session_ack(key_a, "AAAAAAAAAAAAAAAAAAAAAA", ct, nonce)  # another invite's nonce
    assert not check_session_ack(key_a, invite_nonce, b64u_encode(bytes(flipped)), nonce)
    assert not check_session_ack(key_a, invite_nonce, ct, b64u_encode(bytes(24)))
    for bad_ct, bad_nonce in (("", nonce), ("!!!", nonce), (ct, ""), (ct, "AAAA"), ("A", "A")):
        assert not check_session_ack(key_a, invite_nonce, bad_ct, bad_nonce)
    assert not check_session_ack(b"short", invite_nonce, ct, nonce)


def test_every_client_frame_text_is_reproduced_byte_for_byte(vectors: dict[str, Any]) -> None:
    """The whole conversation as the reference wrote it on the socket, from our values + frames.py."""
    alice, bob = _identities(vectors)
    texts: list[tuple[str, str]] = []
    for index, keypair in ((0, alice), (1, bob)):
        step = _step(vectors, index)
        rng = ReplayRandom(step["injected_randomness"])
        assert KeyPair.generate(rng) == keypair
        hello = frames.Hello(
            msg_id=frames.new_msg_id(rng),
            ts=step["now_ms"],
            ed25519_pk=b64u_encode(keypair.ed25519_pk),
            x25519_pk=b64u_encode(keypair.x25519_pk),
            sig=sign_hello(keypair, step["challenge_from_relay"]),
            challenge=step["challenge_from_relay"],
        )
        texts.append((frames.serialize_frame(hello), step["frames_sent_by_client"][0]["raw_text"]))

    step = _step(vectors, 2)
    rng = ReplayRandom(step["injected_randomness"])
    invite = create_invite(alice, "wss://relay.example/ws", step["now_ms"], rng)
    publish = frames.InvitePublish(
        msg_id=frames.new_msg_id(rng),
        ts=step["now_ms"],
        invite_id=invite.invite_id,
        blob=invite.payload_b64u,
        expires_at=invite.expires_at,
    )
    texts.append((frames.serialize_frame(publish), step["frames_sent_by_client"][0]["raw_text"]))

    step = _step(vectors, 3)
    rng = ReplayRandom(step["injected_randomness"])
    claim, _ = accept_invite(bob, parse_invite_url(invite.url, step["now_ms"]), step["now_ms"])
    claim_frame = frames.InviteClaim(
        msg_id=frames.new_msg_id(rng),
        ts=step["now_ms"],
        invite_id=claim.invite_id,
        from_=claim.from_pk,
        ciphertext=claim.ciphertext,
        nonce=claim.nonce,
        sig=claim.sig,
    )
    texts.append((frames.serialize_frame(claim_frame), step["frames_sent_by_client"][0]["raw_text"]))

    step = _step(vectors, 4)
    rng = ReplayRandom(step["injected_randomness"])
    init = frames.routed_from_claim(claim_frame, b64u_encode(alice.ed25519_pk))
    delivered = frames.parse_frame(step["delivered_to_client"]["raw_text"])
    assert isinstance(delivered, frames.Delivery)
    assert frames.serialize_frame(init) == frames.serialize_frame(delivered.routed)
    fields, _, _ = handle_session_init(
        alice, init.from_, init.ciphertext, step["now_ms"], rng, frame_nonce=init.nonce, sig=init.sig
    )
    ack = frames.SessionAck(
        msg_id=frames.new_msg_id(rng),
        ts=step["now_ms"],
        from_=fields.from_pk,
        to=fields.to,
        ciphertext=fields.ciphertext,
        nonce=fields.nonce,
        sig=fields.sig,
        seq=fields.seq,
    )
    texts.append((frames.serialize_frame(ack), step["frames_sent_by_client"][0]["raw_text"]))
    rng.assert_exhausted()
    for ours, reference in texts:
        assert ours == reference


def test_full_handshake_with_fresh_randomness_then_messages_flow() -> None:
    alice = KeyPair.generate(SYSTEM_RANDOM)
    bob = KeyPair.generate(SYSTEM_RANDOM)
    now = 1_800_000_000_000
    invite = create_invite(alice, "ws://127.0.0.1:9/ws", now, SYSTEM_RANDOM)
    claim, bob_session = accept_invite(bob, parse_invite_url(invite.url, now + 1), now + 1)
    fields, alice_session, invite_nonce = handle_session_init(
        alice, claim.from_pk, claim.ciphertext, now + 2, SYSTEM_RANDOM, frame_nonce=claim.nonce, sig=claim.sig
    )
    assert invite_nonce == invite.blob.nonce
    assert verify_routed(fields.from_pk, fields.to, fields.seq, fields.nonce, fields.sig)
    assert check_session_ack(bob_session.recv_chain_key, invite.blob.nonce, fields.ciphertext, fields.nonce)

    alice_session, sealed = encrypt(alice_session, "hallo 👋".encode(), now + 3, SYSTEM_RANDOM)
    bob_session, plain = decrypt(bob_session, sealed.ciphertext, sealed.nonce, sealed.seq, sealed.ratchet_pk, now + 4)
    assert plain == "hallo 👋".encode()
    bob_session, reply = encrypt(bob_session, b"ack", now + 5, SYSTEM_RANDOM)
    _, plain = decrypt(alice_session, reply.ciphertext, reply.nonce, reply.seq, reply.ratchet_pk, now + 6)
    assert plain == b"ack"


# ── bad input ───────────────────────────────────────────────────────────────────────────────────

NOW = 1_800_000_000_000


def _pair(seed: int) -> KeyPair:
    return KeyPair.from_secrets(bytes([seed]) * 32, bytes([seed + 1]) * 32)


def _one_nonce() -> ReplayRandom:
    return ReplayRandom([{"source": "randombytes_buf", "length": 24, "hex": "11" * 24}])


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_invitee_refuses_a_low_order_inviter_key(point: str) -> None:
    bogus_inviter = attrs.evolve(_pair(1), x25519_pk=bytes.fromhex(point))
    invite = create_invite(bogus_inviter, "wss://relay.example/ws", NOW, SYSTEM_RANDOM)
    parsed = parse_invite_url(invite.url, NOW)  # validly signed: only the key agreement can tell
    with pytest.raises(HandshakeError, match="low-order"):
        accept_invite(_pair(10), parsed, NOW)


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_inviter_refuses_a_low_order_invitee_key(point: str) -> None:
    alice, bob = _pair(1), _pair(10)
    payload = session_init_payload(b64u_encode(bytes.fromhex(point)), b64u_encode(bytes(16)))
    rng = _one_nonce()
    with pytest.raises(HandshakeError, match="low-order"):
        handle_session_init(alice, b64u_encode(bob.ed25519_pk), payload, NOW, rng)
    assert rng.remaining == 1  # nothing drawn, nothing to answer


def test_nobody_accepts_their_own_invite() -> None:
    alice = _pair(1)
    invite = create_invite(alice, "wss://relay.example/ws", NOW, SYSTEM_RANDOM)
    with pytest.raises(HandshakeError, match="own identity"):
        accept_invite(alice, parse_invite_url(invite.url, NOW), NOW)


def _b64_json(text: str) -> str:
    return b64u_encode(text.encode())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("!!!!", "not base64url JSON"),
        (_b64_json("not json"), "not base64url JSON"),
        (b64u_encode(b"\xff\xfe"), "not base64url JSON"),
        (_b64_json("[1,2]"), "not base64url JSON"),
        (_b64_json('{"nonce":"AAAAAAAAAAAAAAAAAAAAAA"}'), "x25519_pk and nonce"),
        (_b64_json('{"x25519_pk":"' + "A" * 43 + '"}'), "x25519_pk and nonce"),
        (_b64_json('{"x25519_pk":5,"nonce":"AAAAAAAAAAAAAAAAAAAAAA"}'), "x25519_pk and nonce"),
        (_b64_json('{"x25519_pk":"AAAA","nonce":"AAAAAAAAAAAAAAAAAAAAAA"}'), "expected 32 bytes, got 3"),
        (session_init_payload(b64u_encode(_pair(10).x25519_pk), "AAAA"), "invite nonce: expected 16 bytes"),
    ],
)
def test_inviter_refuses_a_malformed_session_init_payload(payload: str, message: str) -> None:
    rng = _one_nonce()
    with pytest.raises(HandshakeError, match=message):
        handle_session_init(_pair(1), b64u_encode(_pair(10).ed25519_pk), payload, NOW, rng)
    assert rng.remaining == 1


def test_inviter_checks_sender_signature_and_nonce_binding() -> None:
    alice, bob, mallory = _pair(1), _pair(10), _pair(20)
    alice_pk, bob_pk = b64u_encode(alice.ed25519_pk), b64u_encode(bob.ed25519_pk)
    payload = session_init_payload(b64u_encode(bob.x25519_pk), b64u_encode(bytes(16)))
    good_sig = sign_routed(bob, alice_pk, 0, payload)
    cases: list[tuple[str, dict[str, str], str]] = [
        ("AAAA", {}, "expected 32 bytes"),
        (bob_pk + "=", {}, "not canonical"),
        (alice_pk, {}, "our own identity"),
        (bob_pk, {"frame_nonce": "other", "sig": good_sig}, "nonce differs"),
        (bob_pk, {"sig": sign_routed(mallory, alice_pk, 0, payload)}, "signature does not verify"),
        (bob_pk, {"sig": sign_routed(bob, b64u_encode(mallory.ed25519_pk), 0, payload)}, "does not verify"),
        (bob_pk, {"sig": "garbage"}, "signature does not verify"),
    ]
    for from_pk, extra, message in cases:
        rng = _one_nonce()
        with pytest.raises(HandshakeError, match=message):
            handle_session_init(alice, from_pk, payload, NOW, rng, **extra)
        assert rng.remaining == 1
    fields, _, _ = handle_session_init(alice, bob_pk, payload, NOW, _one_nonce(), frame_nonce=payload, sig=good_sig)
    assert fields.to == bob_pk


def test_both_sides_derive_the_same_keys() -> None:
    alice, bob = _pair(1), _pair(10)
    invite = create_invite(alice, "wss://relay.example/ws", NOW, SYSTEM_RANDOM)
    claim, bob_session = accept_invite(bob, parse_invite_url(invite.url, NOW), NOW)
    _, alice_session, _ = handle_session_init(alice, claim.from_pk, claim.ciphertext, NOW, SYSTEM_RANDOM)
    key_a, key_b = bootstrap_keys(x25519(alice.x25519_sk, bob.x25519_pk), b64u_decode(invite.blob.nonce))
    assert (alice_session.send_chain_key, alice_session.recv_chain_key) == (key_a, key_b)
    assert (bob_session.send_chain_key, bob_session.recv_chain_key) == (key_b, key_a)
