"""Protocol v2 interop at the daemon's seams, against the reference's own bytes.

tests/ratchet replays the vectors through `ratchet` directly; the daemon builds its frames itself
(`PeerSession.seal` builds MSG, `Handshakes` builds SESSION_ACK) and keeps sessions in its own store
format between messages. These tests put the reference's recorded frames through exactly those
paths: what a TypeScript peer sends must open, and what we send must be the bytes the reference
would have sent with the same randomness.
"""

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from agentroomd.client.manager import SessionManager
from agentroomd.client.peer_session import PeerSession
from agentroomd.client.store import ClientStore
from agentroomd.log import Logger
from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.frames import Delivery, Msg, SessionAck, parse_frame, serialize_frame
from ratchet.jsjson import js_stringify
from ratchet.keys import KeyPair
from ratchet.session import Session

Json = Mapping[str, Any]
RELAY_URL = "ws://127.0.0.1:9/ws"  # never reached: the test hands the relay's frames over itself


class ReplayRandom:
    """The reference's recorded draws, handed out in order; any other draw fails the test.

    (A minimal twin of tests/ratchet/replay.py, which is not importable from this directory.)
    """

    def __init__(self, draws: list[Json]) -> None:
        self._draws = list(draws)

    def _next(self, source: str) -> Json:
        assert self._draws, f"drew from {source} after every recorded draw was used"
        draw = self._draws.pop(0)
        assert draw["source"] == source, f"drew from {source}, the reference drew from {draw['source']}"
        return draw

    def random_bytes(self, n: int) -> bytes:
        draw = self._next("randombytes_buf")
        assert draw["length"] == n
        return bytes.fromhex(draw["hex"])

    def ed25519_seed(self) -> bytes:
        return bytes.fromhex(self._next("crypto_sign_keypair")["seed_hex"])

    def x25519_secret(self) -> bytes:
        return bytes.fromhex(self._next("crypto_box_keypair")["secret_key_hex"])

    def uuid4(self) -> str:
        return str(self._next("crypto.randomUUID")["value"])

    def assert_exhausted(self) -> None:
        assert not self._draws, f"{len(self._draws)} recorded draw(s) left unused"


def _load(vectors_dir: Path, name: str) -> Json:
    return json.loads((vectors_dir / name).read_text("utf-8"))  # type: ignore[no-any-return]


def _identity(record: Json) -> KeyPair:
    return KeyPair(*(b64u_decode(record[name]) for name in ("ed25519_pk", "ed25519_sk", "x25519_pk", "x25519_sk")))


def _step(handshake: Json, fragment: str) -> Json:
    return next(step for step in handshake["steps"] if fragment in step["label"])


class _Conn:
    """What `on_delivery` needs of a relay connection: the URL the invite was published on."""

    url = RELAY_URL


async def test_daemon_inviter_answers_a_reference_session_init_with_the_reference_session_ack(
    vectors_dir: Path, tmp_path: Path
) -> None:
    handshake = _load(vectors_dir, "handshake.json")
    step = _step(handshake, "alice derives keys")
    blob = handshake["invite_blob"]
    rng = ReplayRandom(step["injected_randomness"])
    store = ClientStore(tmp_path / "client.db")
    manager = SessionManager(_identity(handshake["identities"]["alice"]), store, Logger("alice", level="error"),
                             rng=rng, clock_ms=lambda: int(step["now_ms"]))
    await store.call(store.add_invite, blob["invite_id"], blob["nonce"], RELAY_URL, blob["expires_at"])
    async with trio.open_nursery() as nursery:
        await nursery.start(manager.run)
        delivery = parse_frame(step["delivered_to_client"]["raw_text"])
        assert isinstance(delivery, Delivery)
        with trio.fail_after(10):
            await manager.on_delivery(_Conn(), delivery)  # type: ignore[arg-type]
        rng.assert_exhausted()  # ack nonce, then the SESSION_ACK's msg_id: the reference's order
        bob_pk = handshake["identities"]["bob"]["ed25519_pk"]
        assert manager.peer_state(bob_pk) == "established"
        outbox = await store.call(store.outbox, RELAY_URL)
        assert [row.frame for row in outbox] == [step["frames_sent_by_client"][0]["raw_text"]]
        assert isinstance(parse_frame(outbox[0].frame), SessionAck)
        nursery.cancel_scope.cancel()
    store.close()


def _initial_sessions(handshake: Json) -> dict[str, PeerSession]:
    alice, bob = (_identity(handshake["identities"][name]) for name in ("alice", "bob"))
    key_a, key_b = (bytes.fromhex(handshake["derived"][name]) for name in ("keyA_hex", "keyB_hex"))
    init_ms = _step(handshake, "alice derives keys")["now_ms"]
    accept_ms = _step(handshake, "bob.acceptInvite")["now_ms"]
    return {
        "alice": PeerSession(2, Session.initial(b64u_encode(bob.ed25519_pk), key_a, key_b, alice, bob.x25519_pk,
                                                True, init_ms)),
        "bob": PeerSession(2, Session.initial(b64u_encode(alice.ed25519_pk), key_b, key_a, bob, alice.x25519_pk,
                                              False, accept_ms)),
    }


def test_peer_sessions_seal_and_open_the_reference_transcript_through_the_saved_state(vectors_dir: Path) -> None:
    """Every MSG the daemon seals is the reference's text; every reference MSG opens; state saved in between."""
    handshake = _load(vectors_dir, "handshake.json")
    transcript = _load(vectors_dir, "ratchet_transcript.json")
    identities = {name: _identity(handshake["identities"][name]) for name in ("alice", "bob")}
    pks = {name: b64u_encode(kp.ed25519_pk) for name, kp in identities.items()}
    sessions = _initial_sessions(handshake)
    for record in transcript["main_transcript"]["messages"]:
        sender, receiver = record["sender"], record["receiver"]
        send = record["send"]
        draws = list(send["injected_randomness"])
        msg_id = draws.pop()["value"]  # the client draws the frame's msg_id last, after encrypting
        rng = ReplayRandom(draws)
        plaintext = record["plaintext_utf8"].encode("utf-8")
        sealed, frame = sessions[sender].seal(identities[sender], pks[sender], pks[receiver], plaintext, msg_id,
                                              send["now_ms"], rng)
        rng.assert_exhausted()
        assert serialize_frame(frame) == js_stringify(send["frame"]), record["index"]
        # the daemon keeps every state on disk between messages: go through the saved form each time
        sessions[sender] = PeerSession.load(2, sealed.dump())

        delivered = parse_frame(js_stringify(send["frame"]))
        assert isinstance(delivered, Msg)
        opened, kind, text = sessions[receiver].open(delivered, record["delivery"]["now_ms"])
        assert kind == "message"
        assert hashlib.sha256(text).hexdigest() == record["plaintext_sha256"], record["index"]
        sessions[receiver] = PeerSession.load(2, opened.dump())
