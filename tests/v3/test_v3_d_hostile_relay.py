"""crypto-anchors §6 group D (the relay as adversary), against the v3 core.

The live version (a hostile relay between two real daemons) belongs to the daemon integration; here
the relay is played by the test, which sees and may change exactly what a relay sees: the routed
fields, INVITE_PUBLISH and INVITE_CLAIM, serialised as `ratchet.frames` writes them.
"""

import json

import attrs
import pytest
from v3_support import ALICE, ALICE_PK, BOB, BOB_PK, MALLORY, RELAY_URL, START_MS, Line, SeededRandom, inner_of

from ratchet.frames import serialize_frame
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
from ratchet.v3.errors import DuplicateMessageError, SessionClosedError, V3Error, WrongPeerError
from ratchet.v3.primitives import frame_digest
from ratchet.v3.session import Session
from ratchet.v3.transport import claim_frame, publish_frame, routed_frame
from ratchet.v3.wire import RoutedFields, b64u, b64u_strict, inner_type, seal_routed


def test_d30_injected_random_or_forged_frames_are_refused_without_any_change() -> None:
    line = Line("d30")
    line.send("alice", b"warm up")
    line.deliver("bob")
    genuine = line.send("alice", b"genuine")
    rng = SeededRandom("d30-junk")
    before = line.state("bob")
    forgeries: list[RoutedFields] = []
    for size in (0, 1, 2, 50, 82, 98, 120, 500):
        junk = rng.random_bytes(size)
        forgeries.append(attrs.evolve(genuine, ciphertext=b64u(junk)))
        forgeries.append(attrs.evolve(genuine, ciphertext=b64u(b"\x03\x03" + junk)))
        # Signed by the relay's own key, claiming to be Alice, or honestly from Mallory:
        forged = seal_routed(MALLORY, inner_type(inner_of(genuine)), BOB_PK, b"\x03\x03" + junk, 0)
        forgeries.append(attrs.evolve(forged, from_pk=ALICE_PK))
        forgeries.append(forged)
    forgeries.append(seal_routed(MALLORY, inner_type(inner_of(genuine)), BOB_PK, inner_of(genuine), genuine.seq))
    for forgery in forgeries:
        with pytest.raises(V3Error):
            decrypt(line.sessions["bob"], forgery, line.now_ms)
    assert line.state("bob") == before
    assert line.deliver("bob").message.plaintext == b"genuine"


def test_d31_drops_duplicates_delays_and_reordering_are_survived() -> None:
    line = Line("d31")
    for i in range(6):
        line.send("alice", f"a{i}".encode())
    line.in_flight["bob"].pop(2)  # dropped for ever
    duplicate = line.in_flight["bob"][0][0]
    line.deliver("bob", 3)  # reordered
    line.deliver("bob", 0)
    with pytest.raises(DuplicateMessageError):
        decrypt(line.sessions["bob"], duplicate, line.now_ms)
    line.send("bob", b"b0")
    line.deliver("alice")
    line.send("alice", b"a6 on a new chain")
    line.deliver("bob", -1)  # overtakes the delayed a1, a3 and a5...
    line.now_ms += 3_600_000
    while line.in_flight["bob"]:  # ...which arrive an hour later
        line.deliver("bob", 0)
    assert [entry.n for entry in line.sessions["bob"].skipped] == [2]  # exactly the dropped one is missing


def test_d31_the_end_of_session_marker_reveals_truncation() -> None:
    line = Line("d31-close")
    for i in range(4):
        line.send("alice", f"a{i}".encode())
    sealed = close(line.sessions["alice"], ALICE, line.now_ms, line.rng, b"done")
    line.sessions["alice"] = sealed.state
    with pytest.raises(SessionClosedError):
        encrypt(line.sessions["alice"], ALICE, b"after close", line.now_ms, line.rng)
    line.in_flight["bob"].pop(3)  # the relay drops the last message before the close
    line.deliver("bob", 0)
    line.deliver("bob", 0)
    opened = decrypt(line.sessions["bob"], sealed.frame, line.now_ms)
    assert (opened.message.kind, opened.message.plaintext) == ("close", b"done")
    bob = opened.state
    assert bob.closed_by_peer
    # Bob can tell what is missing before the end: the keys kept for the messages not received.
    assert [entry.n for entry in bob.skipped] == [2, 3]
    late = line.in_flight["bob"][0][0]  # a2, delayed: it was sent before the close, so it is accepted
    assert decrypt(bob, late, line.now_ms).message.plaintext == b"a2"
    with pytest.raises(SessionClosedError):
        encrypt(bob, BOB, b"reply after close", line.now_ms, line.rng)


def test_d32_a_relay_cannot_show_one_side_a_frame_the_other_did_not_send() -> None:
    """Equivocation is reduced to withholding: every frame either is one the sender sealed, or fails.
    Withheld frames show up as gaps (kept keys) and a missing end marker (d31)."""
    line = Line("d32")
    frame = line.send("alice", b"what Alice said")
    for field, value in (("ciphertext", frame.ciphertext[:-2] + "AA"), ("seq", 7), ("to", ALICE_PK)):
        with pytest.raises(V3Error):
            decrypt(line.sessions["bob"], attrs.evolve(frame, **{field: value}), line.now_ms)
    assert line.deliver("bob").message.plaintext == b"what Alice said"


def test_d33_nothing_the_relay_stores_or_sees_contains_plaintext_the_invite_secret_or_keys() -> None:
    """Canary audit over every byte a relay would be given in a complete conversation."""
    rng = SeededRandom("d33")
    canary = b"CANARY-plaintext-7f3a9c"
    issued = issue_invite(ALICE, RELAY_URL, START_MS, rng)
    registry = InviteRegistry().with_issued(issued)
    url = invite_url(ALICE, issued)
    started = start_handshake(BOB, parse_invite_url(url, START_MS), START_MS, rng)
    accepted = respond(registry, ALICE, started.claim.as_session_init(ALICE_PK), START_MS, rng)
    alice = accepted.session
    bob = finish_handshake(started.pending, BOB, accepted.frame, START_MS)
    relay_texts = [
        serialize_frame(publish_frame(publish_fields(issued), rng.uuid4(), START_MS)),
        serialize_frame(claim_frame(started.claim, rng.uuid4(), START_MS)),
        serialize_frame(routed_frame(accepted.frame, rng.uuid4(), START_MS)),
    ]
    secrets = {b"invite secret": issued.secret, b"invitee x25519 static": BOB.x25519_pk}
    sessions = [alice, bob]
    for turn in range(4):
        for sender, name in ((ALICE, "alice"), (BOB, "bob")):
            current = alice if name == "alice" else bob
            sealed = encrypt(current, sender, canary + str(turn).encode(), START_MS, rng)
            relay_texts.append(serialize_frame(routed_frame(sealed.frame, rng.uuid4(), START_MS)))
            receiver = bob if name == "alice" else alice
            opened = decrypt(receiver, sealed.frame, START_MS)
            if name == "alice":
                alice, bob = sealed.state, opened.state
            else:
                bob, alice = sealed.state, opened.state
            sessions += [alice, bob]
    for session in sessions:  # every root, chain, ratchet and skipped key any state ever held
        for index, value in enumerate(_session_secrets(session)):
            secrets[f"session secret {len(secrets)}-{index}".encode()] = value
    haystack = "\n".join(relay_texts).encode()
    decoded = b"".join(_decoded_fields(text) for text in relay_texts)
    assert canary not in haystack and canary not in decoded
    assert issued.secret.hex().encode() not in haystack
    for label, value in secrets.items():
        for form in (value, b64u(value).encode(), value.hex().encode()):
            assert form not in haystack and form not in decoded, label
    assert url[len("agentroom://invite3/") :].encode() not in haystack


def _session_secrets(session: Session) -> list[bytes]:
    values = [session.root_key]
    if session.sending is not None:
        values += [session.sending.chain_key, session.sending.ratchet.secret]
    if session.receiving is not None:
        values.append(session.receiving.chain_key)
    values += [entry.key for entry in session.skipped]
    return values


def _decoded_fields(text: str) -> bytes:
    """Every string field of a relay frame that decodes as base64url, decoded (the relay can do that)."""
    out = b""

    def walk(value: object) -> None:
        nonlocal out
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, str):
            try:
                out += b64u_strict(value, "field")
            except V3Error:
                pass

    walk(json.loads(text))
    return out


def test_d34_only_authenticated_bytes_reach_the_application() -> None:
    """What `decrypt` returns is the AEAD plaintext and values derived from authenticated bytes; the
    relay's own fields (msg_id, ts, ERROR texts) never pass through the session at all."""
    line = Line("d34")
    frame = line.send("alice", b"the only thing Bob's application sees")
    opened = line.deliver("bob")
    message = opened.message
    assert attrs.asdict(message) == {
        "kind": "message",
        "plaintext": b"the only thing Bob's application sees",
        "message_id": frame.nonce,  # the digest of the authenticated frame
        "n": 0,
    }
    assert b64u_strict(frame.nonce, "nonce") == frame_digest(inner_of(frame))
    with pytest.raises(WrongPeerError):  # a relay-made frame "from" the relay itself is not Alice's
        decrypt(opened.state, attrs.evolve(frame, from_pk=b64u(MALLORY.ed25519_pk)), line.now_ms)
