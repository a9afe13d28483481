"""crypto-anchors §6 group B (replay, ordering, skipping), against the v3 Double Ratchet."""

import time

import attrs
import pytest
from v3_support import ALICE, Line, forged_header, skip_ahead

from ratchet.v3 import decrypt, encrypt, prune
from ratchet.v3.errors import (
    AuthenticationError,
    DuplicateMessageError,
    SendChainExhaustedError,
    SkipLimitError,
    SkippedKeyExpiredError,
    StaleChainError,
)
from ratchet.v3.session import COUNTER_LIMIT, MAX_RETIRED_RATCHET_KEYS, MAX_SKIP, MAX_SKIPPED_KEYS, SKIPPED_KEY_TTL_MS
from ratchet.v3.state import session_from_json, session_to_json
from ratchet.v3.wire import b64u


def test_b07_an_exact_replay_in_the_current_chain_is_a_duplicate() -> None:
    line = Line("b07")
    frame = line.send("alice", b"once")
    line.deliver("bob")
    before = line.state("bob")
    with pytest.raises(DuplicateMessageError):
        decrypt(line.sessions["bob"], frame, line.now_ms)
    assert line.state("bob") == before
    line.send("alice", b"next")
    line.deliver("bob")


def test_b08_a_replay_from_an_older_chain_after_a_dh_step_is_refused_as_stale() -> None:
    line = Line("b08")
    old = line.send("alice", b"on Alice's first chain")
    line.deliver("bob")
    line.send("bob", b"Bob's turn")
    line.deliver("alice")
    line.send("alice", b"Alice's second chain")
    line.deliver("bob")  # Bob stepped: Alice's first chain is retired
    before = line.state("bob")
    with pytest.raises(StaleChainError):  # recognised, not "authentication failed", and no DH step
        decrypt(line.sessions["bob"], old, line.now_ms)
    assert line.state("bob") == before
    line.send("alice", b"still fine")
    line.deliver("bob")


def test_b09_a_replay_after_restart_is_refused() -> None:
    line = Line("b09")
    frame = line.send("alice", b"before the restart")
    line.deliver("bob")
    line.reload("bob")  # the process restarts from what it persisted
    with pytest.raises(DuplicateMessageError):
        decrypt(line.sessions["bob"], frame, line.now_ms)


def test_b09_a_used_skipped_key_stays_used_after_restart() -> None:
    line = Line("b09-skipped")
    first = line.send("alice", b"one")
    line.send("alice", b"two")
    line.deliver("bob", 1)  # two first: one's key is kept
    line.deliver("bob", 0)  # one: its kept key is used and deleted
    line.reload("bob")
    with pytest.raises(DuplicateMessageError):
        decrypt(line.sessions["bob"], first, line.now_ms)


def test_b10_replay_after_rollback_to_an_older_snapshot_decrypts_again_with_the_same_message_id() -> None:
    """Documented behaviour: a restored older state accepts the frame again; the journal must
    deduplicate by `Received.message_id`, which is the same for every delivery of the same frame."""
    line = Line("b10")
    snapshot = line.state("bob")
    frame = line.send("alice", b"delivered twice if the state is rolled back")
    first = line.deliver("bob")
    rolled_back = session_from_json(snapshot)
    again = decrypt(rolled_back, frame, line.now_ms)
    assert again.message.plaintext == first.message.plaintext
    assert again.message.message_id == first.message.message_id == frame.nonce


def test_b11_out_of_order_within_the_window_decrypts_each_exactly_once() -> None:
    line = Line("b11")
    frames = [line.send("alice", f"message {i}".encode()) for i in range(1, 6)]
    bob = line.sessions["bob"]
    for i in (5, 1, 3, 2, 4):
        opened = decrypt(bob, frames[i - 1], line.now_ms)
        assert opened.message.plaintext == f"message {i}".encode()
        bob = opened.state
        with pytest.raises(DuplicateMessageError):
            decrypt(bob, frames[i - 1], line.now_ms)
    assert bob.skipped == ()


def test_b12_a_gap_larger_than_max_skip_is_refused_and_changes_nothing() -> None:
    line = Line("b12")
    line.sessions["alice"] = skip_ahead(line.sessions["alice"], MAX_SKIP + 1)  # n = MAX_SKIP + 1: one too far
    too_far = line.send("alice", b"too far ahead")
    before = line.state("bob")
    with pytest.raises(SkipLimitError):
        decrypt(line.sessions["bob"], too_far, line.now_ms)
    assert line.state("bob") == before
    # An in-window message still decrypts (here: Alice's chain position MAX_SKIP on a fresh line).
    line = Line("b12")
    line.sessions["alice"] = skip_ahead(line.sessions["alice"], MAX_SKIP)
    line.send("alice", b"exactly at the limit")
    opened = line.deliver("bob")
    assert len(opened.state.skipped) == MAX_SKIP


def test_b13_huge_counters_are_refused_in_bounded_time() -> None:
    line = Line("b13")
    frame = line.send("alice", b"x")
    line.deliver("bob")
    line.send("bob", b"so that Bob holds a sending ratchet key")
    frame = line.send("alice", b"y")
    huge = COUNTER_LIMIT - 1
    attacks = [
        forged_header(frame, ALICE, n=huge),
        forged_header(frame, ALICE, n=huge, ratchet_pk=ALICE.x25519_pk),  # a new chain, huge N
        forged_header(frame, ALICE, pn=huge, ratchet_pk=ALICE.x25519_pk),  # a new chain, huge PN
    ]
    before = line.state("bob")
    for attack in attacks:
        started = time.perf_counter()
        with pytest.raises(SkipLimitError):
            decrypt(line.sessions["bob"], attack, line.now_ms)
        assert time.perf_counter() - started < 0.05  # no key-derivation loop
    assert line.state("bob") == before


def test_b14_late_messages_of_the_previous_chain_decrypt_after_a_dh_step() -> None:
    """PN at work: A1..A3 sent, B gets A1 and answers, A gets B1 and sends A4 on a new chain; the relay
    delivers A4 before A2 and A3, which still decrypt."""
    line = Line("b14")
    for i in (1, 2, 3):
        line.send("alice", f"A{i}".encode())
    line.deliver("bob", 0)  # A1
    line.send("bob", b"B1")
    line.deliver("alice")
    line.send("alice", b"A4")  # new chain; its header carries PN = 3
    a4 = line.deliver("bob", 2)
    assert a4.message.plaintext == b"A4"
    assert len(a4.state.skipped) == 2  # A2 and A3, kept from the previous chain
    assert line.deliver("bob", 0).message.plaintext == b"A2"
    assert line.deliver("bob", 0).message.plaintext == b"A3"
    assert line.sessions["bob"].skipped == ()


def test_b15_a_late_message_past_its_key_expiry_is_refused_without_a_dh_step() -> None:
    line = Line("b15")
    late = line.send("alice", b"late")
    line.send("alice", b"overtakes it")
    line.deliver("bob", 1)
    line.send("bob", b"reply")
    line.deliver("alice")
    line.send("alice", b"new chain")
    line.deliver("bob", -1)
    later = line.now_ms + SKIPPED_KEY_TTL_MS + 1
    with pytest.raises(SkippedKeyExpiredError):
        decrypt(line.sessions["bob"], late, later)
    pruned = prune(line.sessions["bob"], later)
    assert pruned.skipped == ()
    with pytest.raises(StaleChainError):  # its chain is retired: refused before any DH computation
        decrypt(pruned, late, later)


def test_b15_a_message_from_a_chain_older_than_the_retired_list_is_still_refused() -> None:
    line = Line("b15-retention")
    ancient = line.send("alice", b"from long ago")
    line.send("alice", b"overtakes")
    line.deliver("bob", 1)
    for turn in range(MAX_RETIRED_RATCHET_KEYS + 2):
        line.send("bob", f"b{turn}".encode())
        line.deliver("alice")
        line.send("alice", f"a{turn}".encode())
        line.deliver("bob", -1)
    bob = prune(line.sessions["bob"], line.now_ms + SKIPPED_KEY_TTL_MS + 1)
    before = session_to_json(bob)
    with pytest.raises(AuthenticationError):  # not remembered any more: a DH step is tried and fails
        decrypt(bob, ancient, line.now_ms + SKIPPED_KEY_TTL_MS + 1)
    assert session_to_json(bob) == before


def test_b16_the_skipped_key_store_is_bounded_across_chains() -> None:
    """An adversarial peer leaves a long tail in every chain: at most MAX_SKIPPED_KEYS are kept, oldest out."""
    line = Line("b16")
    for turn in range(3):
        line.send("alice", f"turn {turn} opens a new chain".encode())
        line.deliver("bob")
        line.sessions["alice"] = skip_ahead(line.sessions["alice"], MAX_SKIP - 1)
        line.send("alice", f"after a gap of {MAX_SKIP - 1}".encode())
        line.deliver("bob")
        line.send("bob", b"reply")
        line.deliver("alice")
    bob = line.sessions["bob"]
    assert len(bob.skipped) == MAX_SKIPPED_KEYS  # 3 tails of 999 keys were left behind
    first_chain = bob.skipped[0].ratchet_pk
    survivors = [entry.n for entry in bob.skipped if entry.ratchet_pk == first_chain]
    assert survivors == [MAX_SKIP - 2, MAX_SKIP - 1]  # the oldest 997 keys of the first tail were evicted
    assert len(session_to_json(bob)) < MAX_SKIPPED_KEYS * 200


def test_b17_skipped_keys_expire_and_leave_the_saved_state() -> None:
    line = Line("b17")
    line.send("alice", b"lost")
    line.send("alice", b"arrives")
    line.deliver("bob", 1)
    key = b64u(line.sessions["bob"].skipped[0].key)
    assert key in line.state("bob").decode()
    line.now_ms += SKIPPED_KEY_TTL_MS + 1
    line.send("alice", b"a day later")
    line.deliver("bob", 1)  # any state change prunes expired keys
    assert key not in line.state("bob").decode()
    assert line.sessions["bob"].skipped == ()


def test_b18_each_direction_counts_on_its_own_and_never_wraps() -> None:
    line = Line("b18")
    alice_frames = [line.send("alice", b"a") for _ in range(3)]
    bob_frames = [line.send("bob", b"b") for _ in range(5)]
    assert [f.seq for f in alice_frames] == [0, 1, 2]
    assert [f.seq for f in bob_frames] == [0, 1, 2, 3, 4]
    alice = line.sessions["alice"]
    assert alice.sending is not None
    last = attrs.evolve(alice, sending=attrs.evolve(alice.sending, n=COUNTER_LIMIT - 1))
    sealed = encrypt(last, ALICE, b"the last number", line.now_ms, line.rng)
    assert sealed.frame.seq == COUNTER_LIMIT - 1
    with pytest.raises(SendChainExhaustedError):
        encrypt(sealed.state, ALICE, b"would wrap", line.now_ms, line.rng)


def test_b19_a_failed_decrypt_consumes_no_key() -> None:
    line = Line("b19")
    frames = [line.send("alice", f"m{i}".encode()) for i in range(6)]
    forged = forged_header(frames[5], ALICE, nonce=bytes(24))  # the right position, a forged box
    before = line.state("bob")
    with pytest.raises(AuthenticationError):
        decrypt(line.sessions["bob"], forged, line.now_ms)
    assert line.state("bob") == before
    for index in (5, 0, 1, 2, 3, 4):  # the genuine frames, including position 5, all still decrypt
        opened = decrypt(line.sessions["bob"], frames[index], line.now_ms)
        line.sessions["bob"] = opened.state
        assert opened.message.plaintext == f"m{index}".encode()
