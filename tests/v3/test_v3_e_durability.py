"""crypto-anchors §6 group E (state durability), against the v3 core and its crash-safety contract.

The core does no I/O; what it guarantees is an API whose rules make crashes harmless:
`Sealed` says "persist the state, then send", `Opened` says "record the message by its id and
persist the state, then release or acknowledge". These tests play a daemon that follows the rules
(a dict as the disk, a list as the network) and crash it at every point in between.
"""

from collections.abc import Callable

import pytest
import trio
from v3_support import ALICE, BOB, RELAY_URL, START_MS, Line, SeededRandom

from ratchet.v3 import InviteRegistry, decrypt, encrypt, invite_url, issue_invite, parse_invite_url, start_handshake
from ratchet.v3.errors import DuplicateMessageError, StateFormatError
from ratchet.v3.state import (
    pending_from_json,
    pending_to_json,
    registry_from_json,
    registry_to_json,
    session_from_json,
    session_to_json,
)
from ratchet.v3.wire import MessageHeader, RoutedFields, b64u_strict


def _position(frame: RoutedFields) -> tuple[bytes, int]:
    header = MessageHeader.parse(b64u_strict(frame.ciphertext, "ciphertext"))
    return header.ratchet_pk, header.n


@pytest.mark.parametrize("crash_at", ["before_persist", "after_persist_before_send", "no_crash"])
def test_e35_sender_crashes_never_reuse_a_chain_position(crash_at: str) -> None:
    line = Line("e35-sender")
    disk = {"alice": line.state("alice")}
    wire: list[RoutedFields] = []

    def send(plaintext: bytes, crash: str | None) -> None:
        alice = session_from_json(disk["alice"])  # the daemon starts from what is persisted
        sealed = encrypt(alice, ALICE, plaintext, line.now_ms, line.rng)
        if crash == "before_persist":
            return  # crashed: nothing persisted, nothing sent
        disk["alice"] = session_to_json(sealed.state)
        if crash == "after_persist_before_send":
            return  # crashed: the frame is lost (an outbox would resend this very frame)
        wire.append(sealed.frame)

    send(b"first attempt", crash_at if crash_at != "no_crash" else None)
    send(b"after the restart", None)
    positions = [_position(frame) for frame in wire]
    assert len(positions) == len(set(positions))
    bob = line.sessions["bob"]
    for frame in wire:
        bob = decrypt(bob, frame, line.now_ms).state


@pytest.mark.parametrize("crash_at", ["after_decrypt", "after_journal", "after_persist", "no_crash"])
def test_e35_receiver_crashes_never_lose_or_duplicate_a_message(crash_at: str) -> None:
    line = Line("e35-receiver")
    frame = line.send("alice", b"exactly once")
    disk = {"bob": line.state("bob")}
    journal: dict[str, bytes] = {}
    acked: list[str] = []

    def receive(crash: str | None) -> None:
        bob = session_from_json(disk["bob"])
        try:
            opened = decrypt(bob, frame, line.now_ms)
        except DuplicateMessageError:
            acked.append(frame.nonce)  # already recorded and persisted: just acknowledge
            return
        if crash == "after_decrypt":
            return
        journal.setdefault(opened.message.message_id, opened.message.plaintext)  # idempotent by id
        if crash == "after_journal":
            return
        disk["bob"] = session_to_json(opened.state)
        if crash == "after_persist":
            return
        acked.append(frame.nonce)

    receive(crash_at if crash_at != "no_crash" else None)
    receive(None)  # the relay redelivers whatever was not acknowledged
    assert journal == {frame.nonce: b"exactly once"}
    assert acked


def test_e35_a_torn_state_file_is_refused_never_misread() -> None:
    line = Line("e35-torn")
    line.send("alice", b"one")
    line.send("alice", b"two")
    line.deliver("bob", 1)
    rng = SeededRandom("e35-torn")
    issued = issue_invite(ALICE, RELAY_URL, START_MS, rng)
    started = start_handshake(BOB, parse_invite_url(invite_url(ALICE, issued), START_MS), START_MS, rng)
    documents: list[tuple[bytes, Callable[[bytes], object]]] = [
        (line.state("bob"), session_from_json),
        (line.state("alice"), session_from_json),
        (registry_to_json(InviteRegistry().with_issued(issued)), registry_from_json),
        (pending_to_json(started.pending), pending_from_json),
    ]
    for data, reader in documents:
        reader(data)
        for length in range(len(data) - 1):  # every proper prefix: a write cut short by a crash
            with pytest.raises(StateFormatError):
                reader(data[:length])


def test_e36_persisting_before_sending_is_what_prevents_reuse() -> None:
    """Following `Sealed`'s rule, a restart continues after the last persisted position. Breaking it
    (sending, then crashing before persisting) re-uses a position for a different plaintext: the
    receiver then refuses the second frame as a duplicate, and the random nonce keeps the two
    ciphertexts from sharing a keystream. The rule is what keeps that message from being lost."""
    line = Line("e36")
    persisted = line.sessions["alice"]
    sent_then_crashed = encrypt(persisted, ALICE, b"sent, state not saved", line.now_ms, line.rng)
    restarted = encrypt(persisted, ALICE, b"a different message", line.now_ms, line.rng)
    assert _position(sent_then_crashed.frame) == _position(restarted.frame)
    header_a = MessageHeader.parse(b64u_strict(sent_then_crashed.frame.ciphertext, "c"))
    header_b = MessageHeader.parse(b64u_strict(restarted.frame.ciphertext, "c"))
    assert header_a.nonce != header_b.nonce
    bob = decrypt(line.sessions["bob"], sent_then_crashed.frame, line.now_ms).state
    with pytest.raises(DuplicateMessageError):
        decrypt(bob, restarted.frame, line.now_ms)
    # The rule followed: persist, crash before sending, restart from the persisted state.
    after_restart = encrypt(sent_then_crashed.state, ALICE, b"next", line.now_ms, line.rng)
    assert _position(after_restart.frame)[1] == _position(sent_then_crashed.frame)[1] + 1


async def test_e37_concurrent_senders_on_one_session_are_serialised_by_its_owner() -> None:
    """States are values, so two tasks that encrypt from the same state would reuse a position. The
    daemon keeps one owner per session; a lock around read-encrypt-persist makes concurrent sends
    distinct and in order."""
    line = Line("e37")
    holder = {"state": line.sessions["alice"]}
    lock = trio.Lock()
    frames: list[RoutedFields] = []

    async def sender(label: str) -> None:
        for i in range(5):
            async with lock:
                sealed = encrypt(holder["state"], ALICE, f"{label}{i}".encode(), line.now_ms, line.rng)
                await trio.lowlevel.checkpoint()  # a persist would await here
                holder["state"] = sealed.state
                frames.append(sealed.frame)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender, "x")
        nursery.start_soon(sender, "y")
    assert [frame.seq for frame in frames] == list(range(10))
    bob = line.sessions["bob"]
    for frame in frames:
        bob = decrypt(bob, frame, line.now_ms).state
    unsafe = [encrypt(line.sessions["alice"], ALICE, b"same state twice", line.now_ms, line.rng) for _ in range(2)]
    assert _position(unsafe[0].frame) == _position(unsafe[1].frame)  # why the owner must serialise
