"""crypto-anchors §6 group F (key erasure in what is persisted).

RAM erasure is best-effort in Python; what we can and do guarantee is that a key that has served its
purpose is absent from every saved state from then on. Each test greps the saved bytes for the key
in every encoding (raw, base64url, hex).
"""

import pytest
from v3_support import ALICE, ALICE_PK, BOB, RELAY_URL, START_MS, Line, SeededRandom

from ratchet.v3 import (
    InviteRegistry,
    finish_handshake,
    invite_url,
    issue_invite,
    parse_invite_url,
    prune,
    respond,
    start_handshake,
)
from ratchet.v3.errors import HandshakeRejected
from ratchet.v3.session import SKIPPED_KEY_TTL_MS
from ratchet.v3.state import pending_to_json, registry_to_json, session_to_json
from ratchet.v3.wire import b64u


def absent(secret: bytes, saved: bytes) -> bool:
    return secret not in saved and b64u(secret).encode() not in saved and secret.hex().encode() not in saved


def test_f38_a_used_message_key_is_gone_from_the_saved_state() -> None:
    line = Line("f38")
    line.send("alice", b"m0")
    line.send("alice", b"m1")
    line.deliver("bob", 1)
    key = line.sessions["bob"].skipped[0].key
    assert not absent(key, line.state("bob"))
    line.deliver("bob", 0)
    assert absent(key, line.state("bob"))


def test_f39_after_a_dh_step_the_old_ratchet_secret_and_chain_keys_are_gone() -> None:
    line = Line("f39")
    line.send("alice", b"a0")
    line.deliver("bob")
    line.send("bob", b"b0")
    bob = line.sessions["bob"]
    assert bob.sending is not None and bob.receiving is not None
    old = [bob.sending.ratchet.secret, bob.sending.chain_key, bob.receiving.chain_key, bob.root_key]
    line.deliver("alice")
    line.send("alice", b"a1 on a new chain")
    line.deliver("bob")  # Bob's receiving DH step uses, then drops, his ratchet secret
    saved = line.state("bob")
    for secret in old:
        assert absent(secret, saved)
    assert line.sessions["bob"].sending is None  # a new ratchet key is drawn at the next send


def test_f40_the_invite_secret_and_handshake_secrets_are_gone_after_redemption() -> None:
    rng = SeededRandom("f40")
    issued = issue_invite(ALICE, RELAY_URL, START_MS, rng)
    registry = InviteRegistry().with_issued(issued)
    assert not absent(issued.secret, registry_to_json(registry))
    started = start_handshake(BOB, parse_invite_url(invite_url(ALICE, issued), START_MS), START_MS, rng)
    assert absent(issued.secret, pending_to_json(started.pending))  # the invitee keeps only the Noise state
    init = started.claim.as_session_init(ALICE_PK)
    accepted = respond(registry, ALICE, init, START_MS, rng)
    bob = finish_handshake(started.pending, BOB, accepted.frame, START_MS)
    assert absent(issued.secret, registry_to_json(accepted.registry))
    for saved in (session_to_json(accepted.session), session_to_json(bob)):
        assert absent(issued.secret, saved)
        assert absent(started.pending.ephemeral.secret, saved)
        assert absent(started.pending.chaining_key, saved)
    with pytest.raises(HandshakeRejected) as caught:  # a second redemption finds nothing to derive from
        respond(accepted.registry, ALICE, init, START_MS, rng)
    assert caught.value.reason == "already_redeemed"


def test_f41_skipped_keys_are_deleted_on_use_and_on_expiry() -> None:
    line = Line("f41")
    for i in range(4):
        line.send("alice", f"m{i}".encode())
    line.deliver("bob", 3)
    keys = {entry.n: entry.key for entry in line.sessions["bob"].skipped}
    assert sorted(keys) == [0, 1, 2]
    line.deliver("bob", 1)  # m1: used
    saved = line.state("bob")
    assert absent(keys[1], saved) and not absent(keys[0], saved) and not absent(keys[2], saved)
    expired = prune(line.sessions["bob"], line.now_ms + SKIPPED_KEY_TTL_MS + 1)
    saved = session_to_json(expired)
    assert absent(keys[0], saved) and absent(keys[2], saved)
