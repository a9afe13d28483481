"""Known answers for v3 (crypto-anchors §6 G.43): the frozen files in tests/vectors/v3/ are reproduced
byte for byte, and each vector also replays from its own recorded inputs alone, as another
implementation would use it. Regenerate with tests/v3/make_vectors.py, deliberately."""

import json
from typing import Any

import attrs
import pytest
from v3_vectors import (
    NAMES,
    VECTORS_DIR,
    ReplayRandom,
    _identity,
    build_vectors,
    fields_from_json,
    fields_json,
)

from ratchet.v3 import (
    InviteRegistry,
    close,
    decrypt,
    encrypt,
    finish_handshake,
    invite_url,
    issue_invite,
    parse_invite_url,
    publish_fields,
    respond,
    start_handshake,
)
from ratchet.v3.primitives import aead_open, aead_seal, frame_digest, hkdf, kdf_ck, kdf_rk, noise_hkdf
from ratchet.v3.state import pending_to_json, registry_from_json, registry_to_json, session_from_json, session_to_json


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((VECTORS_DIR / f"{name}.json").read_text())
    return document


@pytest.fixture(scope="module")
def rebuilt() -> dict[str, dict[str, Any]]:
    return build_vectors()


@pytest.mark.parametrize("name", NAMES)
def test_the_frozen_vectors_are_reproduced_byte_for_byte(name: str, rebuilt: dict[str, dict[str, Any]]) -> None:
    frozen = (VECTORS_DIR / f"{name}.json").read_text()
    assert json.dumps(rebuilt[name], indent=2, ensure_ascii=False) + "\n" == frozen, (
        f"{name}.json no longer matches: if the wire format changed on purpose, run tests/v3/make_vectors.py"
    )


def test_the_primitives_match_their_vectors() -> None:
    v = load("primitives")
    for case in v["hkdf"]:
        okm = hkdf(bytes.fromhex(case["salt"]), bytes.fromhex(case["ikm"]), bytes.fromhex(case["info"]), case["length"])
        assert okm.hex() == case["okm"]
    noise = v["noise_hkdf"]
    outputs = noise_hkdf(bytes.fromhex(noise["chaining_key"]), bytes.fromhex(noise["ikm"]), 3)
    assert [o.hex() for o in outputs] == noise["outputs"]
    rk = v["kdf_rk"]
    root, chain = kdf_rk(bytes.fromhex(rk["root_key"]), bytes.fromhex(rk["dh_output"]))
    assert (root.hex(), chain.hex()) == (rk["next_root_key"], rk["chain_key"])
    for step in v["kdf_ck"]:
        next_chain, message_key = kdf_ck(bytes.fromhex(step["chain_key"]))
        assert (next_chain.hex(), message_key.hex()) == (step["next_chain_key"], step["message_key"])
    for case in v["aead"]:
        key, nonce, ad = (bytes.fromhex(case[k]) for k in ("key", "nonce", "ad"))
        assert aead_seal(key, nonce, ad, bytes.fromhex(case["plaintext"])).hex() == case["sealed"]
        assert aead_open(key, nonce, ad, bytes.fromhex(case["sealed"])) == bytes.fromhex(case["plaintext"])
    assert frame_digest(bytes.fromhex(v["frame_digest"]["frame"])).hex() == v["frame_digest"]["digest"]


def test_the_invite_vector_replays_from_its_recorded_draws() -> None:
    v = load("invite")
    rng = ReplayRandom(v["draws"])
    inviter = _identity(v["inviter"])
    issued = issue_invite(inviter, v["server_url"], v["now_ms"], rng, ttl_ms=v["ttl_ms"])
    rng.assert_exhausted()
    assert invite_url(inviter, issued) == v["url"]
    assert attrs.asdict(publish_fields(issued)) == v["publish"]
    invite = parse_invite_url(v["url"], v["now_ms"])
    assert (invite.invite_id, invite.secret.hex(), invite.binding.hex()) == (v["invite_id"], v["secret"], v["binding"])
    assert registry_to_json(InviteRegistry().with_issued(issued)).decode() == v["registry_json"]


def test_the_handshake_vector_replays_from_its_recorded_draws() -> None:
    invite_v, v = load("invite"), load("handshake")
    inviter, invitee = _identity(invite_v["inviter"]), _identity(v["invitee"])
    registry = registry_from_json(invite_v["registry_json"].encode())
    start_rng = ReplayRandom(v["start_draws"])
    started = start_handshake(invitee, parse_invite_url(invite_v["url"], v["now_ms"]), v["now_ms"], start_rng)
    start_rng.assert_exhausted()
    assert attrs.asdict(started.claim) == v["claim"]
    assert pending_to_json(started.pending).decode() == v["pending_json"]
    respond_rng = ReplayRandom(v["respond_draws"])
    accepted = respond(registry, inviter, fields_from_json(v["session_init"]), v["now_ms"], respond_rng)
    respond_rng.assert_exhausted()
    assert fields_json(accepted.frame) == v["session_ack"]
    assert registry_to_json(accepted.registry).decode() == v["registry_after_json"]
    assert session_to_json(accepted.session).decode() == v["inviter_session_json"]
    bob = finish_handshake(started.pending, invitee, fields_from_json(v["session_ack"]), v["now_ms"])
    assert session_to_json(bob).decode() == v["invitee_session_json"]
    assert (bob.transcript_hash.hex(), bob.session_id.hex()) == (v["handshake_hash"], v["session_id"])


def test_the_conversation_vector_replays_step_by_step() -> None:
    v = load("conversation")
    keys = {"alice": _identity(load("invite")["inviter"]), "bob": _identity(load("handshake")["invitee"])}
    sessions = {name: session_from_json(text.encode()) for name, text in v["initial"].items()}
    frames = {}
    for step in v["steps"]:
        actor = step["actor"]
        if step["action"] in ("send", "close"):
            rng = ReplayRandom(step["draws"])
            plaintext = step["plaintext"].encode()
            if step["action"] == "close":
                sealed = close(sessions[actor], keys[actor], step["now_ms"], rng, plaintext)
            else:
                sealed = encrypt(sessions[actor], keys[actor], plaintext, step["now_ms"], rng)
            rng.assert_exhausted()
            assert fields_json(sealed.frame) == step["frame"], step["label"]
            sessions[actor] = sealed.state
            frames[step["label"]] = fields_from_json(step["frame"])
        else:
            opened = decrypt(sessions[actor], frames[step["label"]], step["now_ms"])
            message = opened.message
            assert (message.kind, message.plaintext.decode(), message.message_id) == (
                step["kind"],
                step["plaintext"],
                step["message_id"],
            )
            sessions[actor] = opened.state
        assert session_to_json(sessions[actor]).decode() == step["state_after"], step["label"]
    assert [s["label"] for s in v["steps"] if s["action"] == "receive"][-4:] == ["A4", "A3", "A2", "B2"]
