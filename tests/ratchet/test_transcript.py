"""The ratchet against the reference's own transcript (ratchet_transcript.json, handshake.json).

Every frame is re-encrypted from the recorded randomness and compared field by field, every frame is
decrypted, and both parties' states are compared, before and after each step, through the
reference's session-file text. Where one of our deliberate fixes makes us differ from what the
reference recorded, the step says so (`Ours`) and the test asserts our behaviour instead; the
states are compared again as soon as they have converged with the reference's.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import nacl.bindings as sodium
import pytest
from replay import ReplayRandom

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.keys import KeyPair
from ratchet.session import (
    AuthenticationError,
    DecryptError,
    ReplayError,
    Session,
    SkipLimitError,
    decrypt,
    encrypt,
    session_from_json,
    session_from_reference_json,
    session_to_json,
    session_to_reference_json,
)
from ratchet.signatures import routed_sig_input, sign_routed, verify_routed

Json = Mapping[str, Any]


@pytest.fixture(scope="module")
def transcript(vectors_dir: Path) -> Json:
    return json.loads((vectors_dir / "ratchet_transcript.json").read_text("utf-8"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def handshake(vectors_dir: Path) -> Json:
    return json.loads((vectors_dir / "handshake.json").read_text("utf-8"))  # type: ignore[no-any-return]


# ── the two parties ─────────────────────────────────────────────────────────────────────────────


def _identity(record: Json) -> KeyPair:
    return KeyPair(*(b64u_decode(record[name]) for name in ("ed25519_pk", "ed25519_sk", "x25519_pk", "x25519_sk")))


class Party:
    """One client: its identity, its Session, and the Ed25519 half the reference keeps beside it.

    The reference's sendEphemeral is a full keypair (the identity until the first rotation, then an
    unused keypair from the drawn seed). Our state has no Ed25519 half; the test tracks it here only
    to render the reference's text for comparison.
    """

    def __init__(self, name: str, identity: KeyPair, session: Session) -> None:
        self.name = name
        self.identity = identity
        self.pk = b64u_encode(identity.ed25519_pk)
        self.session = session
        self.ephemeral_ed25519 = (identity.ed25519_pk, identity.ed25519_sk)
        self.in_sync = True  # False while a fix keeps our state different from the reference's

    def reference_text(self, session: Session | None = None) -> str:
        return session_to_reference_json(session or self.session, *self.ephemeral_ed25519)


def _start(handshake: Json) -> dict[str, Party]:
    """Both sides right after the handshake, built by Session.initial from handshake.json's keys."""
    alice, bob = (_identity(handshake["identities"][name]) for name in ("alice", "bob"))
    key_a, key_b = (bytes.fromhex(handshake["derived"][name]) for name in ("keyA_hex", "keyB_hex"))
    clock = {_step_name(step["label"]): step["now_ms"] for step in handshake["steps"]}
    return {
        "alice": Party(
            "alice",
            alice,
            Session.initial(b64u_encode(bob.ed25519_pk), key_a, key_b, alice, bob.x25519_pk, True, clock["init"]),
        ),
        "bob": Party(
            "bob",
            bob,
            Session.initial(b64u_encode(alice.ed25519_pk), key_b, key_a, bob, alice.x25519_pk, False, clock["accept"]),
        ),
    }


def _step_name(label: str) -> str:
    """The two handshake steps at which the reference creates a session (and reads its clock)."""
    if label.startswith("bob.acceptInvite"):
        return "accept"  # the invitee's session is created when it accepts
    if "alice derives keys" in label:
        return "init"  # the inviter's when SESSION_INIT arrives
    return label


def test_initial_states_and_session_files_match_handshake(handshake: Json, transcript: Json) -> None:
    parties = _start(handshake)
    for name, party in parties.items():
        text = party.reference_text()
        assert text == handshake["initial_session_states"][name]
        assert text == transcript["initial_states"][name]
        session_file = handshake["session_files"][name]
        assert session_file["text"] == text
        assert session_file["path"] == f"<home>/sessions/{party.session.peer_pk}.json"


# ── sending and delivering ──────────────────────────────────────────────────────────────────────


@attrs.frozen
class Outgoing:
    """One recorded encryptMessage call and the MSG frame the client built from it."""

    sender: str
    plaintext: bytes
    now_ms: int
    draws: Sequence[Json]
    frame: Json
    state_before: str | None = None
    state_after: str | None = None
    sig_payload_text: str | None = None


def _outgoing(record: Json, sender: str | None = None) -> Outgoing:
    send = record.get("send", record)  # beyond_max_skip records carry the send fields at top level
    return Outgoing(
        sender=record.get("sender", sender),
        plaintext=record["plaintext_utf8"].encode("utf-8"),
        now_ms=send["now_ms"],
        draws=send["injected_randomness"],
        frame=send["frame"],
        state_before=send.get("sender_state_before"),
        state_after=send.get("sender_state_after"),
        sig_payload_text=send.get("sig_payload_text"),
    )


def _send(parties: Mapping[str, Party], out: Outgoing) -> None:
    """Re-encrypt with the recorded draws and compare every field of the frame the reference sent."""
    party = parties[out.sender]
    peer = next(p for p in parties.values() if p is not party)
    if party.in_sync and out.state_before is not None:
        assert party.reference_text() == out.state_before
    rng = ReplayRandom(out.draws)
    rotates = rng.peek_source() == "crypto_sign_keypair"
    seed = bytes.fromhex(out.draws[0]["seed_hex"]) if rotates else None
    new_session, message = encrypt(party.session, out.plaintext, out.now_ms, rng)
    msg_id = rng.uuid4()  # the client draws the frame's msg_id after encrypting
    rng.assert_exhausted()

    frame = out.frame
    assert (frame["v"], frame["type"], frame["msg_id"], frame["ts"]) == (2, "MSG", msg_id, out.now_ms)
    assert (frame["from"], frame["to"]) == (party.pk, peer.pk)
    assert message.ciphertext == frame["ciphertext"]
    assert message.nonce == frame["nonce"]
    assert message.seq == frame["seq"]
    assert message.ratchet_pk == frame["ratchet_pk"]
    if out.sig_payload_text is not None:
        assert routed_sig_input(party.pk, peer.pk, message.seq, message.nonce) == out.sig_payload_text.encode()
    assert sign_routed(party.identity, peer.pk, message.seq, message.nonce) == frame["sig"]

    party.session = new_session
    if seed is not None:
        ed_pk, ed_sk = sodium.crypto_sign_seed_keypair(seed)
        party.ephemeral_ed25519 = (ed_pk, ed_sk)
    if party.in_sync and out.state_after is not None:
        assert party.reference_text() == out.state_after


@attrs.frozen
class Ours:
    """A step where a deliberate fix makes our outcome differ from the reference's recorded one."""

    why: str
    delivered: bool
    error: type[DecryptError] | None = None
    converged: bool = False  # our state equals the reference's again after this step


_REFERENCE_ERRORS: Mapping[str, type[DecryptError]] = {
    "replay detected": ReplayError,
    "wrong secret key for the given ciphertext": AuthenticationError,
}


def _deliver(parties: Mapping[str, Party], step: Json, frame: Json, ours: Ours | None = None) -> None:
    """decryptMessage as the client calls it: signature first, then decrypt, keep the state on success."""
    receiver = next(p for p in parties.values() if p.pk == frame["to"])
    before = receiver.session
    if receiver.in_sync and "receiver_state_before" in step:
        assert receiver.reference_text() == step["receiver_state_before"]
    try:
        after, plaintext = decrypt(
            before, frame["ciphertext"], frame["nonce"], frame["seq"], frame.get("ratchet_pk"), step["now_ms"]
        )
    except DecryptError as exc:
        after, plaintext, error = before, None, exc
    else:
        error = None

    result = step["decrypt_message_result"]
    if ours is None:
        assert (plaintext is not None) == result["ok"], error
        if result["ok"]:
            assert hashlib.sha256(plaintext or b"").hexdigest() == result["plaintext_sha256"]
        else:
            kind = next(v for k, v in _REFERENCE_ERRORS.items() if result["error"].startswith(k))
            assert isinstance(error, kind)
            assert result["error"] == str(error) or kind is AuthenticationError
    else:
        assert (plaintext is not None) == ours.delivered, (ours.why, error)
        if ours.error is not None:
            assert isinstance(error, ours.error), (ours.why, error)
    if error is not None:
        assert after is before  # a rejected frame leaves the caller's session exactly as it was

    # The client drops a frame whose signature does not verify, before decrypting it.
    if verify_routed(frame["from"], frame["to"], frame["seq"], frame["nonce"], frame["sig"]) and error is None:
        receiver.session = after
        outcome = step.get("client_outcome", {})
        if outcome.get("delivered_to_app") and ours is None:
            assert hashlib.sha256(plaintext or b"").hexdigest() == outcome["plaintext_sha256"]
            if "plaintext_utf8" in outcome:
                assert plaintext == outcome["plaintext_utf8"].encode("utf-8")
    if ours is not None:
        receiver.in_sync = ours.converged
    if receiver.in_sync and "receiver_state_after" in step:
        assert receiver.reference_text() == step["receiver_state_after"]


# ── the main transcript ─────────────────────────────────────────────────────────────────────────


def _converse(parties: Mapping[str, Party], messages: Sequence[Json]) -> None:
    for record in messages:
        out = _outgoing(record)
        _send(parties, out)
        delivery = record["delivery"]
        _deliver(parties, delivery, out.frame)
        assert delivery["decrypt_message_result"]["ok"] and delivery["state_changed"]
        assert delivery["client_outcome"]["plaintext_sha256"] == record["plaintext_sha256"]


def test_main_transcript_byte_for_byte(handshake: Json, transcript: Json) -> None:
    parties = _start(handshake)
    main = transcript["main_transcript"]
    assert len(main["messages"]) == 14
    _converse(parties, main["messages"])
    for name, party in parties.items():
        assert party.reference_text() == main["final_states"][name]


# ── scenarios ───────────────────────────────────────────────────────────────────────────────────

# Which recorded frame each delivery step of a scenario delivers ("deliver" names it in prose);
# None means the step carries its own (altered) frame as delivered_routed_frame.
_ALICE, _BOB = "frames_alice", "frames_bob"
_DELIVERIES: Mapping[str, Sequence[tuple[str, int] | None]] = {
    "out_of_order_within_skip_window": [*((_ALICE, i) for i in (1, 0, 4, 2, 3)), *((_BOB, i) for i in (2, 0, 1))],
    "replay": [("frames", i) for i in (0, 1, 1, 0, 3, 2, 2)] + [None],
    "tampering": [None] * 6 + [("frames", 0), ("frames", 2), None, ("frames", 1)],
    "previous_chain_after_rotation.case_missing_previous_chain_message": [("frames", i) for i in (0, 1, 3, 4, 2, 5, 4)],
    "previous_chain_after_rotation.case_buffered": [("frames", i) for i in (0, 3, 4, 5, 1, 2, 1)],
    "previous_chain_after_rotation.case_old_chain_replay_clobbers_buffer": [
        ("frames", i) for i in (0, 3, 4, 5, 3, 1, 2)
    ],
    "beyond_max_skip": [("frames", i) for i in (101, 100, 101, 5)],
}

# Steps where our fixed behaviour deliberately differs from the reference's recorded outcome.
_OURS: Mapping[str, Mapping[int, Ours]] = {
    "tampering": {
        8: Ours("a forged frame for a buffered seq must not destroy the buffered key", False, AuthenticationError),
        9: Ours("the genuine late message still opens with the key the forgery could not delete", True, converged=True),
    },
    "previous_chain_after_rotation.case_missing_previous_chain_message": {
        3: Ours(
            "b1 is still in flight: we advance the previous chain by one (buffering b1's key under E1) "
            "until b2, the new chain's first message, opens",
            True,
        ),
        4: Ours("late b1 opens from the buffer (the reference opens it on its lagging chain)", True),
        5: Ours("b3 follows b2 on the current chain; nothing to buffer", True),
        6: Ours("b2 was already delivered at step 3: a second copy is a replay", False, ReplayError, converged=True),
    },
    "previous_chain_after_rotation.case_old_chain_replay_clobbers_buffer": {
        4: Ours(
            "a replayed old-chain frame is rejected and stores nothing: the buffer is intact",
            False,
            AuthenticationError,
        ),
        5: Ours("late genuine c0 opens with its intact buffered key", True),
        6: Ours("late genuine c1 too; the buffer is now empty, as the reference's", True, converged=True),
    },
    "beyond_max_skip": {
        0: Ours("a gap of 101 > MAX_SKIP is refused up front, deriving and storing nothing", False, SkipLimitError),
        1: Ours("a gap of exactly 100 is accepted; the state equals the reference's", True, converged=True),
    },
}


def _scenario(transcript: Json, name: str) -> Json:
    node = transcript
    for part in name.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("name", list(_DELIVERIES))
def test_scenario(handshake: Json, transcript: Json, name: str) -> None:
    """Sends and deliveries in the order the reference ran them (by their clock), from the handshake."""
    scenario = _scenario(transcript, name)
    parties = _start(handshake)
    frame_lists = {key: scenario[key] for key in ("frames", _ALICE, _BOB) if key in scenario}
    outgoing = {
        (key, i): _outgoing(record, sender="alice")
        for key, records in frame_lists.items()
        for i, record in enumerate(records)
    }
    steps = scenario["steps"]
    assert len(steps) == len(_DELIVERIES[name])
    events: list[tuple[int, str, Any]] = [(out.now_ms, "send", out) for out in outgoing.values()]
    events += [(step["now_ms"], "deliver", (i, step)) for i, step in enumerate(steps)]
    events.sort(key=lambda event: event[0])
    assert len({event[0] for event in events}) == len(events), "the reference's clock orders every event"
    for _, kind, payload in events:
        if kind == "send":
            _send(parties, payload)
            continue
        index, step = payload
        which = _DELIVERIES[name][index]
        frame = step["delivered_routed_frame"] if which is None else outgoing[which].frame
        _deliver(parties, step, frame, _OURS.get(name, {}).get(index))
    assert all(party.in_sync for party in parties.values())


# ── persistence ─────────────────────────────────────────────────────────────────────────────────


def test_persistence_through_the_reference_session_file(handshake: Json, transcript: Json) -> None:
    """alice's session file after the main transcript, reloaded, continues the conversation."""
    parties = _start(handshake)
    _converse(parties, transcript["main_transcript"]["messages"])
    via_client = transcript["persistence_round_trip"]["via_client"]
    alice = parties["alice"]
    assert via_client["session_file_name"] == f"{alice.session.peer_pk}.json"
    assert alice.reference_text() == via_client["session_file_text"]

    alice.session = session_from_reference_json(via_client["session_file_text"])
    assert alice.reference_text() == via_client["state_after_load"]
    alice.session = session_from_json(session_to_json(alice.session))  # and through our own format
    assert alice.reference_text() == via_client["state_after_load"]
    _converse(parties, via_client["continue"])


def test_persistence_function_round_trip(handshake: Json, transcript: Json) -> None:
    """bob's state with two buffered keys survives both formats, and the keys still open k0 and k1."""
    parties = _start(handshake)
    round_trip = transcript["persistence_round_trip"]["function_round_trip"]
    frames = [_outgoing(record) for record in round_trip["frames"]]
    for out in frames:
        _send(parties, out)
    _deliver(parties, round_trip["deliver_k2_first"], frames[2].frame)
    bob = parties["bob"]
    saved = round_trip["serialized_bob_state_with_skipped_keys"]
    assert bob.reference_text() == saved

    restored_reference = session_from_reference_json(saved)
    assert bob.reference_text(restored_reference) == saved  # reserialized_equals
    restored_ours = session_from_json(session_to_json(bob.session))
    assert restored_ours == bob.session == restored_reference

    now = round_trip["now_ms_for_decrypts"]
    for restored in (restored_reference, restored_ours):
        session = restored
        for out, name in zip(frames[:2], ("decrypt_k0_from_restored", "decrypt_k1_from_restored"), strict=True):
            frame = out.frame
            session, plaintext = decrypt(
                session, frame["ciphertext"], frame["nonce"], frame["seq"], frame["ratchet_pk"], now
            )
            assert plaintext.decode("utf-8") == round_trip[name]
        assert bob.reference_text(session) == round_trip["state_after"]
