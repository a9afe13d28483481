"""Defects found by hunting for hostile input the protocol core mishandled; one test per defect.

Each test failed before its fix. The inputs are what a hostile peer, a hostile relay or a damaged
file can produce; the expectation is always the documented one: a `RatchetError` subclass (never a
stray ValueError, struct.error or UnicodeError), and a state that keeps working afterwards.
"""

import json

import attrs
import pytest
from v3.v3_support import ALICE, ALICE_PK, BOB, RELAY_URL, START_MS, Line, SeededRandom

from ratchet.encoding import b64u_encode
from ratchet.session import Session as V2Session
from ratchet.session import SessionStateError, session_from_reference_json, session_to_reference_json
from ratchet.session import SkippedKey as V2SkippedKey
from ratchet.v3 import (
    InviteRegistry,
    decrypt,
    invite_url,
    issue_invite,
    parse_invite_url,
    respond,
    start_handshake,
)
from ratchet.v3.errors import StaleChainError, StateFormatError
from ratchet.v3.session import COUNTER_LIMIT, MAX_RETIRED_RATCHET_KEYS
from ratchet.v3.state import (
    pending_from_json,
    pending_to_json,
    registry_from_json,
    registry_to_json,
    session_from_json,
    session_to_json,
)
from ratchet.v3.wire import MessageHeader, RoutedFields, b64u, b64u_strict

NOW, RELAY = START_MS, RELAY_URL


class _Reusing(SeededRandom):
    """`SeededRandom` whose X25519 draws all return ``secret``: a peer reusing an old ratchet key."""

    def __init__(self, seed: str, secret: bytes) -> None:
        super().__init__(seed)
        self._secret = secret

    def x25519_secret(self) -> bytes:
        return self._secret


# ── v3 saved invite registry and pending handshake ─────────────────────────────────────────────


def _registry_and_claim() -> tuple[dict[str, object], dict[str, object], RoutedFields]:
    """(registry document, pending document, Bob's SESSION_INIT) for one fresh invite of Alice's."""
    rng = SeededRandom("registry")
    issued = issue_invite(ALICE, RELAY, NOW, rng)
    started = start_handshake(BOB, parse_invite_url(invite_url(ALICE, issued), NOW), NOW, rng)
    registry = json.loads(registry_to_json(InviteRegistry().with_issued(issued)))
    pending = json.loads(pending_to_json(started.pending))
    return registry, pending, started.claim.as_session_init(ALICE_PK)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("features", 65536),  # struct.error in invite_binding ('H' format requires 0 <= number <= 65535)
        ("features", -1),  # struct.error (argument out of range)
        ("server_url", ""),  # ValueError from invite_binding
        ("server_url", "x" * 2049),  # ValueError from invite_binding
        ("server_url", "wss://\ud800"),  # UnicodeEncodeError: a lone surrogate JSON can spell as \ud800
    ],
)
def test_a_registry_invite_the_handshake_cannot_use_is_refused_at_load(field: str, value: object) -> None:
    """Before the fix the registry loaded, and the first SESSION_INIT naming that invite (any invitee can
    send one) made `respond` raise struct.error / ValueError / UnicodeEncodeError instead of a
    `HandshakeRejected`; `invite_url` failed the same way. A saved state must fail when it is read."""
    registry, _, _ = _registry_and_claim()
    registry["issued"][0][field] = value  # type: ignore[index]
    with pytest.raises(StateFormatError, match=f"issued\\[0\\].{field}"):
        registry_from_json(json.dumps(registry).encode())


@pytest.mark.parametrize(("field", "value"), [("features", 65536), ("features", -1), ("server_url", "\ud800")])
def test_a_pending_handshake_with_impossible_invite_fields_is_refused_at_load(field: str, value: object) -> None:
    """The same checks for the invitee's pending handshake. Nothing crashed here, but features -1 made
    `finish_handshake` grant whatever feature bits the inviter named, beyond what the invite offered."""
    _, pending, _ = _registry_and_claim()
    pending[field] = value
    with pytest.raises(StateFormatError, match=field):
        pending_from_json(json.dumps(pending).encode())


def test_a_valid_registry_still_loads_and_answers_the_claim() -> None:
    registry, pending, claim = _registry_and_claim()
    loaded = registry_from_json(json.dumps(registry).encode())
    assert pending_from_json(json.dumps(pending).encode()).invite_id == loaded.issued[0].invite_id
    accepted = respond(loaded, ALICE, claim, NOW, SeededRandom("respond"), relay_url=RELAY)
    assert accepted.session.peer_pk == b64u(BOB.ed25519_pk)


# ── v3 ratchet: a peer reusing an old ratchet key ─────────────────────────────────────────────


def test_a_peer_reusing_an_evicted_ratchet_key_cannot_make_our_saved_state_unreadable() -> None:
    """A malicious peer (it holds the session keys) reuses the ratchet secret of a chain whose late keys
    we still keep, once that chain has left the 16 remembered ratchet keys. Before the fix the frame was
    taken as a new chain: keys 0..n-1 were stored again under the old ratchet key, next to the kept
    ones, and the state the daemon then saved failed to load ("a skipped key is stored twice"), losing
    the session at the next restart. Such a key names an earlier chain: it is refused as stale."""
    line = Line("reuse")
    line.send("alice", b"opens the line")
    line.deliver("bob")
    line.send("bob", b"so that Alice's next send steps the ratchet")
    line.deliver("alice")
    for i in range(5):
        line.send("alice", f"chain K0, message {i}".encode())
    old_secret = line.sessions["alice"].sending.ratchet.secret  # type: ignore[union-attr]
    line.deliver("bob", 4)  # 0..3 never arrive: Bob keeps their keys under K0
    line.in_flight["bob"].clear()
    for _ in range(MAX_RETIRED_RATCHET_KEYS + 1):  # K0 leaves Bob's remembered ratchet keys
        line.send("bob", b"b")
        line.deliver("alice")
        line.send("alice", b"a")
        line.deliver("bob")
    line.send("bob", b"b")
    line.deliver("alice")
    kept = {(entry.ratchet_pk, entry.n) for entry in line.sessions["bob"].skipped}
    assert len(kept) == 4

    line.rng = _Reusing("evil", old_secret)
    for n in range(6):  # Alice steps the ratchet with K0's secret again and sends message 5 on it
        line.send("alice", f"reused K0, message {n}".encode())
    reused, _ = line.in_flight["bob"][-1]
    line.in_flight["bob"].clear()
    bob = line.sessions["bob"]
    before = session_to_json(bob)
    with pytest.raises(StaleChainError):
        decrypt(bob, reused, NOW)
    assert session_to_json(bob) == before
    assert session_from_json(before) == bob


def test_pn_after_an_exhausted_sending_chain_still_fits_the_header() -> None:
    """PN travels as u32. A sending chain that used all 2**32 numbers and then saw the peer's new ratchet
    key set PN = 2**32; the next send raised struct.error ("'I' format requires ...") and the saved state
    (which the reader accepted with PN = 2**32) could never send again. PN is capped at 2**32 - 1, and
    the reader refuses a PN the header cannot carry."""
    line = Line("pn-limit")
    line.send("alice", b"hello")
    line.deliver("bob")
    line.send("bob", b"reply")
    line.deliver("alice")
    line.send("alice", b"on a new chain")
    bob = line.sessions["bob"]
    assert bob.sending is not None
    line.sessions["bob"] = attrs.evolve(bob, sending=attrs.evolve(bob.sending, n=COUNTER_LIMIT))  # exhausted
    line.deliver("bob")  # the peer's new ratchet key: Bob's next send starts a chain, with PN for the old one
    sent = line.send("bob", b"after the DH step")
    assert MessageHeader.parse(b64u_strict(sent.ciphertext, "ciphertext")).pn == COUNTER_LIMIT - 1
    state = json.loads(session_to_json(line.sessions["bob"]))
    assert session_from_json(json.dumps(state).encode()) == line.sessions["bob"]
    state["previous_send_count"] = COUNTER_LIMIT
    with pytest.raises(StateFormatError, match="previous_send_count"):
        session_from_json(json.dumps(state).encode())


# ── v2: importing a reference session file ──────────────────────────────────────────────────────


def _reference_document() -> dict[str, object]:
    peer = b64u_encode(BOB.ed25519_pk)
    session = V2Session.initial(peer, b"\x01" * 32, b"\x02" * 32, ALICE, BOB.x25519_pk, True, NOW)
    prefix = b64u_encode(BOB.x25519_pk)
    session = V2Session(
        session.peer_pk,
        session.send_chain_key,
        session.recv_chain_key,
        session.send_ephemeral,
        session.recv_ephemeral_pk,
        0,
        -1,
        True,
        (V2SkippedKey(prefix, 3, b"\x03" * 32, NOW),),
        NOW,
    )
    document: dict[str, object] = json.loads(session_to_reference_json(session, ALICE.ed25519_pk, ALICE.ed25519_sk))
    return document


def test_a_reference_skipped_key_id_with_a_huge_seq_is_refused_clearly() -> None:
    """Before the fix, int() of a seq longer than Python's 4300-digit limit raised a bare ValueError."""
    document = _reference_document()
    entry = document["skippedMessageKeys"][0]  # type: ignore[index]
    entry[0] = entry[0].rsplit(":", 1)[0] + ":" + "9" * 5000
    with pytest.raises(SessionStateError, match="out of range"):
        session_from_reference_json(json.dumps(document))


def test_a_reference_file_text_holding_a_lone_surrogate_is_refused_clearly() -> None:
    """Text read with surrogateescape (or built from such JSON) holds lone surrogates; encoding it raised
    UnicodeEncodeError before the fix."""
    text = json.dumps(_reference_document())
    damaged = text.replace('"peerPk": "', '"peerPk": "\udcff', 1)
    with pytest.raises(SessionStateError, match="not valid JSON"):
        session_from_reference_json(damaged)
    assert session_from_reference_json(text).peer_pk == b64u_encode(BOB.ed25519_pk)
