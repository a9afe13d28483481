"""Random conversations over a hostile relay: whatever the turn order, reordering (across chains too),
drops, delays, saves and attacks, every frame that arrives is accepted exactly once with the text
that was sent, and nothing an attacker does changes either session by a single byte.

Each example is a script interpreted against a live `Line` (Alice and Bob after a real handshake):
a party sends; a party receives one of the first WINDOW frames in flight to it; the relay drops a
frame; a party restarts from its saved state; the relay replays a delivered frame or alters one in
flight (one byte of the inner frame, re-signed or not, or any outer field); time passes. At the end
everything still in flight is delivered.
"""

import attrs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from v3_support import ALICE, BOB, MALLORY_PK, Line, flip_bit, inner_of, resealed, with_ciphertext

from ratchet.v3 import decrypt
from ratchet.v3.errors import DecryptError, DuplicateMessageError, V3Error
from ratchet.v3.wire import RoutedFields, b64u

WINDOW = 6
KINDS = ["send"] * 3 + ["deliver"] * 4 + ["drop", "reload", "replay", "tamper", "wait"]
# (kind, party, index or byte position, alteration kind, milliseconds): each kind reads what it needs.
OPERATION = st.tuples(
    st.sampled_from(KINDS),
    st.sampled_from(["alice", "bob"]),
    st.integers(0, 10_000),
    st.integers(0, 12),
    st.integers(1, 600_000),
)
SCRIPT = st.lists(OPERATION, min_size=30, max_size=80)


def altered(frame: RoutedFields, kind: int, position: int) -> RoutedFields:
    """One of thirteen ways for the relay to change a frame (``position`` picks the byte or bit)."""
    inner = inner_of(frame)
    signer = ALICE if frame.from_pk == b64u(ALICE.ed25519_pk) else BOB
    if kind <= 3:  # one bit of the inner frame, as is
        return with_ciphertext(frame, flip_bit(inner, position))
    if kind <= 6:  # one bit of the inner frame, re-signed with the sender's identity key
        return resealed(frame, flip_bit(inner, position), signer)
    if kind == 7:
        return attrs.evolve(frame, seq=frame.seq + 1 + position % 5)
    if kind == 8:
        return attrs.evolve(frame, nonce=frame.nonce[::-1])
    if kind == 9:
        return attrs.evolve(frame, sig=frame.sig[1:] + frame.sig[0])
    if kind == 10:
        return attrs.evolve(frame, from_pk=MALLORY_PK)
    if kind == 11:
        return attrs.evolve(frame, type="SESSION_ACK")
    return with_ciphertext(frame, inner[: position % len(inner)])  # truncated


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=SCRIPT, seed=st.integers(0, 2**16))
def test_random_conversations_deliver_every_arriving_message_exactly_once(
    script: list[tuple[str, str, int, int, int]], seed: int
) -> None:
    line = Line(f"property-{seed}")
    counter = 0
    delivered: dict[str, list[RoutedFields]] = {"alice": [], "bob": []}
    received: dict[str, list[bytes]] = {"alice": [], "bob": []}
    sent: dict[str, list[bytes]] = {"alice": [], "bob": []}
    dropped: set[bytes] = set()

    def deliver_one(name: str, index: int) -> None:
        frame, plaintext = line.in_flight[name][index]
        kept_before = len(line.sessions[name].skipped)
        opened = line.deliver(name, index)  # asserts the plaintext matches what was sent
        if len(opened.state.skipped) < kept_before:
            late = opened.state.receiving is not None and opened.state.receiving.ratchet_pk != inner_of(frame)[18:50]
            event("late message opened with a kept key" + (" (previous chain)" if late else ""))
        assert opened.message.message_id == frame.nonce
        delivered[name].append(frame)
        received[name].append(plaintext)

    for kind, name, number, alteration, milliseconds in script:
        if kind == "send":
            counter += 1
            text = f"{name} says #{counter}".encode()
            line.send(name, text)
            sent[line.other(name)].append(text)
        elif kind in ("deliver", "drop", "tamper") and line.in_flight[name]:
            index = number % min(WINDOW, len(line.in_flight[name]))
            if kind == "deliver":
                deliver_one(name, index)
            elif kind == "drop":
                dropped.add(line.in_flight[name].pop(index)[1])
            else:
                frame = line.in_flight[name][index][0]
                before = line.state(name)
                try:
                    decrypt(line.sessions[name], altered(frame, alteration, number), line.now_ms)
                except V3Error:
                    pass
                else:
                    raise AssertionError(f"an altered frame was accepted (alteration {alteration})")
                assert line.state(name) == before
        elif kind == "reload":
            line.reload(name)
        elif kind == "replay" and delivered[name]:
            frame = delivered[name][number % len(delivered[name])]
            before = line.state(name)
            try:
                decrypt(line.sessions[name], frame, line.now_ms)
            except DuplicateMessageError:
                pass  # its chain is current or remembered: recognised as a duplicate
            except DecryptError:
                pass  # a chain older than the remembered ones: refused all the same
            else:
                raise AssertionError("a replayed frame was accepted")
            assert line.state(name) == before
        elif kind == "wait":
            line.now_ms += milliseconds

    event(f"ratchet turns >= {min(4, len(line.sessions['alice'].retired_ratchet_pks))}")
    for name in ("alice", "bob"):
        while line.in_flight[name]:
            deliver_one(name, 0)
        expected = [text for text in sent[name] if text not in dropped]
        assert sorted(received[name]) == sorted(expected)
        assert len(set(received[name])) == len(received[name])
        # Keys are kept only for messages that never arrived (dropped ones a later frame passed over).
        assert len(line.sessions[name].skipped) <= sum(1 for text in sent[name] if text in dropped)


@settings(max_examples=60, deadline=None)
@given(position=st.integers(0, 10_000), xor=st.integers(1, 255), reseal=st.booleans(), seed=st.integers(0, 50))
def test_changing_any_byte_of_a_frame_is_rejected_and_changes_nothing(
    position: int, xor: int, reseal: bool, seed: int
) -> None:
    line = Line(f"tamper-{seed}")
    line.send("alice", b"one")
    line.deliver("bob")
    line.send("bob", b"two")
    line.deliver("alice")
    frame = line.send("alice", b"the target, on Alice's second chain")
    inner = inner_of(frame)
    index = position % len(inner)
    changed = inner[:index] + bytes([inner[index] ^ xor]) + inner[index + 1 :]
    attacked = resealed(frame, changed, ALICE) if reseal else with_ciphertext(frame, changed)
    before = line.state("bob")
    try:
        decrypt(line.sessions["bob"], attacked, line.now_ms)
    except V3Error:
        pass
    else:
        raise AssertionError(f"byte {index} changed (xor {xor}) and the frame was still accepted")
    assert line.state("bob") == before
    assert line.deliver("bob").message.plaintext == b"the target, on Alice's second chain"
