"""The v3 known-answer vectors: how they are computed (used by make_vectors.py and by the tests).

Every input is fixed (identity secrets, clock values) or recorded (each random draw, in order, with
the method that drew it), so another implementation can replay a vector from the JSON alone. The
files in tests/vectors/v3/ are this module's output, frozen: a test recomputes them and compares
every byte, so a change to the wire format or the key schedule is always a deliberate one.
"""

import hashlib
import json
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import attrs

from ratchet.keys import KeyPair, x25519
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
from ratchet.v3.invite import invite_binding
from ratchet.v3.noise import PROTOCOL_NAME
from ratchet.v3.primitives import aead_seal, frame_digest, hkdf, kdf_ck, kdf_rk, noise_hkdf
from ratchet.v3.session import Session
from ratchet.v3.state import pending_to_json, registry_to_json, session_to_json
from ratchet.v3.wire import RoutedFields

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors" / "v3"
NAMES = ("primitives", "invite", "handshake", "conversation")

START_MS = 1_768_000_000_000
SERVER_URL = "wss://relay.example/ws"
INVITER_SECRETS = {"ed25519_seed": "11" * 32, "x25519_sk": "22" * 32}
INVITEE_SECRETS = {"ed25519_seed": "33" * 32, "x25519_sk": "44" * 32}


def _identity(secrets: dict[str, str]) -> KeyPair:
    return KeyPair.from_secrets(bytes.fromhex(secrets["ed25519_seed"]), bytes.fromhex(secrets["x25519_sk"]))


class RecordingRandom:
    """Deterministic draws (BLAKE2b of a label and a counter) that are also written down, in order."""

    def __init__(self, label: str) -> None:
        self._key = hashlib.blake2b(label.encode(), digest_size=32).digest()
        self._count = 0
        self.draws: list[dict[str, str]] = []

    def _next(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self._count += 1
            out += hashlib.blake2b(self._count.to_bytes(8, "big"), key=self._key).digest()
        return out[:n]

    def take(self) -> list[dict[str, str]]:
        draws, self.draws = self.draws, []
        return draws

    def random_bytes(self, n: int) -> bytes:
        value = self._next(n)
        self.draws.append({"method": "random_bytes", "hex": value.hex()})
        return value

    def ed25519_seed(self) -> bytes:
        value = self._next(32)
        self.draws.append({"method": "ed25519_seed", "hex": value.hex()})
        return value

    def x25519_secret(self) -> bytes:
        value = self._next(32)
        self.draws.append({"method": "x25519_secret", "hex": value.hex()})
        return value

    def uuid4(self) -> str:
        value = str(uuid.UUID(bytes=self._next(16), version=4))
        self.draws.append({"method": "uuid4", "value": value})
        return value


class ReplayRandom:
    """Hands out recorded draws; drawing anything else than what was recorded fails the test at once."""

    def __init__(self, draws: list[dict[str, str]]) -> None:
        self._draws = deque(draws)

    def _next(self, method: str) -> dict[str, str]:
        assert self._draws, f"{method}() drawn, but no recorded draw is left"
        draw = self._draws.popleft()
        assert draw["method"] == method, f"{method}() drawn where {draw['method']}() was recorded"
        return draw

    def assert_exhausted(self) -> None:
        assert not self._draws, f"{len(self._draws)} recorded draws were not used"

    def random_bytes(self, n: int) -> bytes:
        value = bytes.fromhex(self._next("random_bytes")["hex"])
        assert len(value) == n
        return value

    def ed25519_seed(self) -> bytes:
        return bytes.fromhex(self._next("ed25519_seed")["hex"])

    def x25519_secret(self) -> bytes:
        return bytes.fromhex(self._next("x25519_secret")["hex"])

    def uuid4(self) -> str:
        return self._next("uuid4")["value"]


def fields_json(fields: RoutedFields) -> dict[str, Any]:
    return attrs.asdict(fields)


def fields_from_json(data: dict[str, Any]) -> RoutedFields:
    return RoutedFields(**data)


def _primitives() -> dict[str, Any]:
    key = bytes(range(32))
    chain = bytes.fromhex("a5" * 32)
    chain_steps = []
    for _ in range(3):
        next_chain, message_key = kdf_ck(chain)
        chain_steps.append(
            {"chain_key": chain.hex(), "next_chain_key": next_chain.hex(), "message_key": message_key.hex()}
        )
        chain = next_chain
    dh = x25519(bytes.fromhex("55" * 32), KeyPair.from_secrets(bytes(32), bytes.fromhex("66" * 32)).x25519_pk)
    root, chain_key = kdf_rk(key, dh)
    noise = noise_hkdf(bytes.fromhex("77" * 64), b"input key material", 3)
    return {
        "description": "v3 building blocks: HKDF over HMAC-BLAKE2b-512, Noise HKDF, KDF_RK, KDF_CK, "
        "XChaCha20-Poly1305-IETF, the frame digest. All values hex.",
        "hkdf": [
            {
                "salt": salt.hex(),
                "ikm": ikm.hex(),
                "info": info.hex(),
                "length": length,
                "okm": hkdf(salt, ikm, info, length).hex(),
            }
            for salt, ikm, info, length in (
                (key, b"ikm", b"agentroom-v3 root", 64),
                (bytes(64), bytes(32), b"", 128),
                (b"salt", b"", b"info", 200),
            )
        ],
        "noise_hkdf": {
            "chaining_key": "77" * 64,
            "ikm": b"input key material".hex(),
            "outputs": [o.hex() for o in noise],
        },
        "kdf_rk": {
            "root_key": key.hex(),
            "dh_output": dh.hex(),
            "next_root_key": root.hex(),
            "chain_key": chain_key.hex(),
        },
        "kdf_ck": chain_steps,
        "aead": [
            {
                "key": key.hex(),
                "nonce": nonce.hex(),
                "ad": ad.hex(),
                "plaintext": plaintext.hex(),
                "sealed": aead_seal(key, nonce, ad, plaintext).hex(),
            }
            for nonce, ad, plaintext in ((bytes(24), b"", b""), (bytes(range(24)), b"header", b"hello, agent"))
        ],
        "frame_digest": {"frame": "0303" + "00" * 80, "digest": frame_digest(bytes.fromhex("0303" + "00" * 80)).hex()},
        "noise_protocol_name": PROTOCOL_NAME.decode(),
    }


def build_vectors() -> dict[str, dict[str, Any]]:
    """All four vector documents, computed from scratch."""
    inviter, invitee = _identity(INVITER_SECRETS), _identity(INVITEE_SECRETS)
    rng = RecordingRandom("agentroom-v3 vectors")

    issued = issue_invite(inviter, SERVER_URL, START_MS, rng, ttl_ms=3_600_000)
    url = invite_url(inviter, issued)
    registry = InviteRegistry().with_issued(issued)
    invite_doc = {
        "description": "issue_invite then invite_url; draws: the 32-byte secret, then the invite id",
        "inviter": INVITER_SECRETS,
        "server_url": SERVER_URL,
        "now_ms": START_MS,
        "ttl_ms": 3_600_000,
        "draws": rng.take(),
        "invite_id": issued.invite_id,
        "secret": issued.secret.hex(),
        "binding": invite_binding(
            issued.features, issued.invite_id, issued.expires_at, inviter.ed25519_pk, inviter.x25519_pk, SERVER_URL
        ).hex(),
        "url": url,
        "publish": attrs.asdict(publish_fields(issued)),
        "registry_json": registry_to_json(registry).decode(),
    }

    started = start_handshake(invitee, parse_invite_url(url, START_MS), START_MS, rng)
    start_draws = rng.take()
    init = started.claim.as_session_init(started.pending.inviter_pk)
    accepted = respond(registry, inviter, init, START_MS, rng, relay_url=SERVER_URL)
    respond_draws = rng.take()
    bob = finish_handshake(started.pending, invitee, accepted.frame, START_MS)
    alice = accepted.session
    handshake_doc = {
        "description": "start_handshake (invitee), respond (inviter), finish_handshake (invitee) for the invite "
        "of invite.json; Noise_IKpsk1_25519_XChaChaPoly_BLAKE2b with the invite secret as PSK",
        "invitee": INVITEE_SECRETS,
        "now_ms": START_MS,
        "start_draws": start_draws,
        "claim": attrs.asdict(started.claim),
        "pending_json": pending_to_json(started.pending).decode(),
        "session_init": fields_json(init),
        "respond_draws": respond_draws,
        "session_ack": fields_json(accepted.frame),
        "registry_after_json": registry_to_json(accepted.registry).decode(),
        "handshake_hash": alice.transcript_hash.hex(),
        "session_id": alice.session_id.hex(),
        "inviter_session_json": session_to_json(alice).decode(),
        "invitee_session_json": session_to_json(bob).decode(),
    }

    conversation_doc = {
        "description": "A scripted conversation from the sessions of handshake.json: the inviter speaks first, "
        "DH steps each turn, A4 overtakes A2 and A3 (PN), a late delivery, then a close. Each send lists its "
        "draws; each step gives the actor's saved state afterwards.",
        "initial": {"alice": handshake_doc["inviter_session_json"], "bob": handshake_doc["invitee_session_json"]},
        "steps": _conversation(alice, bob, inviter, invitee, rng),
    }
    return {
        "primitives": _primitives(),
        "invite": invite_doc,
        "handshake": handshake_doc,
        "conversation": conversation_doc,
    }


def _conversation(
    alice: Session, bob: Session, inviter: KeyPair, invitee: KeyPair, rng: RecordingRandom
) -> list[dict[str, Any]]:
    sessions = {"alice": alice, "bob": bob}
    keys = {"alice": inviter, "bob": invitee}
    frames: dict[str, RoutedFields] = {}
    steps: list[dict[str, Any]] = []
    now = START_MS + 1000

    def send(actor: str, label: str, text: str, *, closing: bool = False) -> None:
        if closing:
            sealed = close(sessions[actor], keys[actor], now, rng, text.encode())
        else:
            sealed = encrypt(sessions[actor], keys[actor], text.encode(), now, rng)
        sessions[actor] = sealed.state
        frames[label] = sealed.frame
        steps.append(
            {
                "actor": actor,
                "action": "close" if closing else "send",
                "label": label,
                "now_ms": now,
                "plaintext": text,
                "draws": rng.take(),
                "frame": fields_json(sealed.frame),
                "state_after": session_to_json(sealed.state).decode(),
            }
        )

    def receive(actor: str, label: str) -> None:
        opened = decrypt(sessions[actor], frames[label], now)
        sessions[actor] = opened.state
        steps.append(
            {
                "actor": actor,
                "action": "receive",
                "label": label,
                "now_ms": now,
                "kind": opened.message.kind,
                "plaintext": opened.message.plaintext.decode(),
                "message_id": opened.message.message_id,
                "state_after": session_to_json(opened.state).decode(),
            }
        )

    send("alice", "A0", "hello Bob, I speak first")
    receive("bob", "A0")
    send("bob", "B0", "hi Alice (my first DH step)")
    receive("alice", "B0")
    for i in (1, 2, 3):
        send("alice", f"A{i}", f"A{i} on Alice's second chain")
    receive("bob", "A1")
    send("bob", "B1", "B1 after A1")
    receive("alice", "B1")
    send("alice", "A4", "A4 on a third chain, overtaking A2 and A3")
    receive("bob", "A4")
    now += 60_000
    receive("bob", "A3")
    receive("bob", "A2")
    send("bob", "B2", "goodbye", closing=True)
    receive("alice", "B2")
    return steps


def write_vectors(directory: Path = VECTORS_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, document in build_vectors().items():
        (directory / f"{name}.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
