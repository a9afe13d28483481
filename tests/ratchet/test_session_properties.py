"""Random two-party conversations: whatever the turn order, reordering, saves and attacks, every
message is delivered exactly once, and nothing an attacker sends changes a session.

Each example is a script of operations interpreted against the live conversation: a party sends;
a party receives one of the first few messages in flight to it (so reordering stays inside the
skip window, across chains too); a party saves and reloads its state through our JSON format; the
relay tampers with one byte of a frame (ciphertext, nonce or ratchet_pk) or replays a frame that
was already delivered. At the end everything still in flight is delivered.
"""

import hashlib
from collections.abc import Iterator

import attrs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.kdf import bootstrap_keys
from ratchet.keys import KeyPair, x25519
from ratchet.session import (
    DecryptError,
    EncryptedMessage,
    Session,
    decrypt,
    encrypt,
    session_from_json,
    session_to_json,
)

WINDOW = 6  # a receiver takes any of the first WINDOW messages in flight to it
START_MS = 1_768_000_000_000


class CountingRandom:
    """Deterministic RandomSource: examples replay exactly, so hypothesis can shrink them."""

    def __init__(self, label: bytes) -> None:
        self._label = label
        self._counter = 0

    def random_bytes(self, n: int) -> bytes:
        self._counter += 1
        return hashlib.blake2b(self._counter.to_bytes(8, "big"), key=self._label, digest_size=n).digest()

    def ed25519_seed(self) -> bytes:
        return self.random_bytes(32)

    def x25519_secret(self) -> bytes:
        return self.random_bytes(32)

    def uuid4(self) -> str:  # pragma: no cover - the ratchet never draws ids
        raise AssertionError("the ratchet draws no UUIDs")


ALICE = KeyPair.from_secrets(b"\x01" * 32, b"\x02" * 32)
BOB = KeyPair.from_secrets(b"\x03" * 32, b"\x04" * 32)


def _fresh_sessions() -> dict[str, Session]:
    invite_nonce = b"\x05" * 16
    key_a, key_b = bootstrap_keys(x25519(ALICE.x25519_sk, BOB.x25519_pk), invite_nonce)
    assert (key_a, key_b) == bootstrap_keys(x25519(BOB.x25519_sk, ALICE.x25519_pk), invite_nonce)
    alice_pk, bob_pk = b64u_encode(ALICE.ed25519_pk), b64u_encode(BOB.ed25519_pk)
    return {
        "alice": Session.initial(bob_pk, key_a, key_b, ALICE, BOB.x25519_pk, True, START_MS),
        "bob": Session.initial(alice_pk, key_b, key_a, BOB, ALICE.x25519_pk, False, START_MS),
    }


@attrs.frozen
class Sent:
    plaintext: bytes
    message: EncryptedMessage


@attrs.define
class Conversation:
    sessions: dict[str, Session] = attrs.Factory(_fresh_sessions)
    rngs: dict[str, CountingRandom] = attrs.Factory(lambda: {n: CountingRandom(n.encode()) for n in ("alice", "bob")})
    in_flight: dict[str, list[Sent]] = attrs.Factory(lambda: {"alice": [], "bob": []})  # keyed by receiver
    delivered: dict[str, list[Sent]] = attrs.Factory(lambda: {"alice": [], "bob": []})
    sent_count: int = 0
    now_ms: int = START_MS

    def tick(self) -> int:
        self.now_ms += 250
        return self.now_ms

    def send(self, sender: str, body: bytes) -> None:
        self.sent_count += 1
        plaintext = f"#{self.sent_count} ".encode() + body
        self.sessions[sender], message = encrypt(self.sessions[sender], plaintext, self.tick(), self.rngs[sender])
        self.in_flight[_peer(sender)].append(Sent(plaintext, message))

    def receive(self, receiver: str, choice: int) -> None:
        queue = self.in_flight[receiver]
        if not queue:
            return
        sent = queue.pop(choice % min(WINDOW, len(queue)))
        before = self.sessions[receiver]
        self.sessions[receiver], plaintext = after, plaintext = _decrypt(before, sent.message, self.tick())
        assert plaintext == sent.plaintext
        _record_path(before, after)
        self.delivered[receiver].append(sent)

    def reject(self, receiver: str, message: EncryptedMessage) -> None:
        """An attacker's frame is refused, and the session is byte for byte what it was."""
        before = self.sessions[receiver]
        saved = session_to_json(before)
        try:
            _decrypt(before, message, self.tick())
        except DecryptError:
            pass
        else:
            raise AssertionError(f"accepted an attacker's frame: {message}")
        assert session_to_json(self.sessions[receiver]) == saved

    def frames_to(self, receiver: str) -> Iterator[Sent]:
        yield from self.in_flight[receiver]
        yield from self.delivered[receiver]


def _record_path(before: Session, after: Session) -> None:
    """Label the ratchet path a delivery took, so --hypothesis-show-statistics shows what was exercised."""
    if len(after.skipped) < len(before.skipped) and after.recv_seq == before.recv_seq:
        event("delivered from the skipped-key buffer")
    elif after.recv_ephemeral_pk != before.recv_ephemeral_pk:
        old_prefix = b64u_encode(before.recv_ephemeral_pk)
        if any(e.prefix == old_prefix for e in after.skipped if e not in before.skipped):
            event("new chain after recovering lost previous-chain messages")
        else:
            event("new chain (DH step)")
    elif after.recv_seq > before.recv_seq + 1:
        event("current chain, skipping ahead")
    else:
        event("current chain, in order")


def _peer(name: str) -> str:
    return "bob" if name == "alice" else "alice"


def _decrypt(session: Session, message: EncryptedMessage, now_ms: int) -> tuple[Session, bytes]:
    return decrypt(session, message.ciphertext, message.nonce, message.seq, message.ratchet_pk, now_ms)


def _flip(text: str, position: int, mask: int) -> str:
    raw = bytearray(b64u_decode(text))
    raw[position % len(raw)] ^= mask
    return b64u_encode(bytes(raw))


PARTY = st.sampled_from(["alice", "bob"])
BURST = st.integers(1, 4)  # several sends (or receives) in a row make chains of several messages
SEND = st.tuples(st.just("send"), PARTY, BURST, st.binary(max_size=24))
RECEIVE = st.tuples(st.just("receive"), PARTY, BURST, st.lists(st.integers(0, WINDOW - 1), min_size=4, max_size=4))
SAVE = st.tuples(st.just("save"), PARTY)
TAMPER = st.tuples(
    st.just("tamper"),
    PARTY,
    st.sampled_from(["ciphertext", "nonce", "ratchet_pk"]),
    st.integers(0, 2**16),
    st.integers(1, 255),
)
REPLAY = st.tuples(st.just("replay"), PARTY, st.integers(0, 2**16))
# A turn with stragglers: `who` sends a burst and the peer reads only the start of it before
# answering, so the rest of the burst is still in flight when the next chain starts.
TURN = st.tuples(st.just("turn"), PARTY, st.integers(2, 5), st.integers(0, 4))
# Sends and receives dominate, so that turns change while earlier messages are still in flight.
OPERATION = st.one_of(SEND, SEND, SEND, RECEIVE, RECEIVE, RECEIVE, TURN, TURN, SAVE, TAMPER, REPLAY)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPERATION, max_size=150), st.randoms(use_true_random=False))
def test_random_conversations_deliver_everything_exactly_once(operations: list[tuple], rnd: object) -> None:
    conversation = Conversation()
    for operation in operations:
        kind, who = operation[0], operation[1]
        if kind == "send":
            for _ in range(operation[2]):
                conversation.send(who, operation[3])
        elif kind == "receive":
            for choice in operation[3][: operation[2]]:
                conversation.receive(who, choice)
        elif kind == "turn":
            sent, read = operation[2], operation[3]
            for _ in range(sent):
                conversation.send(who, b"turn")
            for _ in range(min(read, sent - 1)):
                conversation.receive(_peer(who), 0)
            conversation.send(_peer(who), b"reply")
        elif kind == "save":
            restored = session_from_json(session_to_json(conversation.sessions[who]))
            assert restored == conversation.sessions[who]
            conversation.sessions[who] = restored
        elif kind == "tamper":
            frames = list(conversation.frames_to(who))
            if frames:
                field, position, mask = operation[2], operation[3], operation[4]
                original = frames[position % len(frames)].message
                tampered = attrs.evolve(original, **{field: _flip(getattr(original, field), position, mask)})
                conversation.reject(who, tampered)
        elif kind == "replay":
            done = conversation.delivered[who]
            if done:
                conversation.reject(who, done[operation[2] % len(done)].message)

    # Drain: whatever is still in flight arrives, still reordered within the window.
    for receiver in ("alice", "bob"):
        while conversation.in_flight[receiver]:
            conversation.receive(receiver, rnd.randrange(WINDOW))  # type: ignore[attr-defined]
    for receiver in ("alice", "bob"):
        delivered = [sent.plaintext for sent in conversation.delivered[receiver]]
        assert len(delivered) == len(set(delivered))  # exactly once
        for sent in conversation.delivered[receiver]:  # and every copy of a delivered frame is now a replay
            conversation.reject(receiver, sent.message)
    assert sum(len(v) for v in conversation.delivered.values()) == conversation.sent_count

