"""How close the ratchet comes to the cryptography it cannot avoid, for protocol v2 and v3.

Measures messages per second for the two halves of a MSG, encrypt + sign (sender) and
verify + decrypt (receiver), and, in the same run and on inputs of the same sizes, the floor: only
the PyNaCl / hashlib calls one message needs, per message and in our order.
ratio = our rate / floor rate; the target is >= 0.8 on each half and on the round trip, i.e. our
Python around those calls adds at most a quarter of their time. A breakdown shows the parts alone.

v2 (`ratchet.session` + `ratchet.signatures`). Floor: Ed25519 sign or verify, one secretbox seal or
open with, for a seal, the draw of its random 24-byte nonce, and the three BLAKE2b calls of a chain
step (the message key, then the chain update's extract and expand).

v3 (`ratchet.v3.encrypt` / `ratchet.v3.decrypt`, the daemon's default). Floor, per message:

* send (``_seal``, then ``seal_routed``): KDF_CK = two keyed BLAKE2b-256 calls (next chain key over
  0x02, message key over 0x01); the 24-byte nonce draw; one XChaCha20-Poly1305-IETF encrypt with its
  associated data (label, transcript hash, both Ed25519 keys, the 82-byte header); the frame digest
  (one BLAKE2b-256 over label + inner frame); one Ed25519 sign of the routed signature input.
* receive (``open_routed``, then ``decrypt``), with ``signature_verified=False``, the full check: the
  frame digest; one Ed25519 verify of the routed input; KDF_CK (two keyed BLAKE2b-256); one
  XChaCha20-Poly1305-IETF decrypt.

No DH step: on a line where one side talks, every message is on the current chain (the DH step
and its X25519 + HKDF come once per turn of the conversation, not per message). Base64url, JSON of
the signature input, headers and states are ours, not the floor's. A breakdown row times v3
decrypt with ``signature_verified=True`` (the daemon's path: it checks the signature before it
routes the frame) against the floor without the verify.

Times are CPU time of this process (``time.process_time``), best round per job, every job once
per round: on a shared machine, time spent descheduled would otherwise land on whichever job was
running.

    .venv/bin/python -m bench.ratchet [--messages N] [--size BYTES] [--rounds R]

Exit status 1 when any of the three headline ratios misses the target.
"""

import argparse
import hashlib
import sys
import time
from collections.abc import Callable

import nacl.bindings as sodium
import nacl.utils

from ratchet import v3
from ratchet.encoding import b64u_encode
from ratchet.kdf import LABEL_CHAIN, bootstrap_keys
from ratchet.keys import KeyPair, x25519
from ratchet.rand import SYSTEM_RANDOM
from ratchet.session import EncryptedMessage, Session, decrypt, encrypt
from ratchet.signatures import routed_sig_input, sign_routed, verify_routed
from ratchet.v3.primitives import LABEL_FRAME_DIGEST
from ratchet.v3.session import LABEL_MESSAGE_AD
from ratchet.v3.wire import MESSAGE_HEADER_BYTES, RoutedFields, b64u, b64u_strict

TARGET = 0.8
NOW_MS = 1_768_000_000_000
CHAIN_EXPAND = LABEL_CHAIN.encode() + b"\x01"
NONCE_BYTES = 24
RELAY_URL = "wss://relay.example/ws"


class Fixture:
    """Two parties right after the handshake, and inputs for the floor of the same sizes."""

    def __init__(self, count: int, size: int) -> None:
        self.count, self.plaintext = count, b"x" * size
        self.alice, self.bob = KeyPair.generate(), KeyPair.generate()
        key_a, key_b = bootstrap_keys(x25519(self.alice.x25519_sk, self.bob.x25519_pk), b"\x00" * 16)
        self.alice_pk, self.bob_pk = b64u_encode(self.alice.ed25519_pk), b64u_encode(self.bob.ed25519_pk)
        self.alice_session = Session.initial(self.bob_pk, key_a, key_b, self.alice, self.bob.x25519_pk, True, NOW_MS)
        self.bob_session = Session.initial(self.alice_pk, key_b, key_a, self.bob, self.alice.x25519_pk, False, NOW_MS)
        # One first message outside the timings: it carries the inviter's DH step (once per turn).
        self.alice_session, first = encrypt(self.alice_session, self.plaintext, NOW_MS, SYSTEM_RANDOM)
        self.bob_session, _ = decrypt(
            self.bob_session, first.ciphertext, first.nonce, first.seq, first.ratchet_pk, NOW_MS
        )
        # The frames the receiving jobs read, made once by the sending path (its timed runs drop
        # theirs, as the floor drops its boxes); the floor signs and verifies the same bytes.
        self.frames: list[tuple[EncryptedMessage, str]] = []
        session = self.alice_session
        for _ in range(count):
            session, message = encrypt(session, self.plaintext, NOW_MS, SYSTEM_RANDOM)
            self.frames.append((message, sign_routed(self.alice, self.bob_pk, message.seq, message.nonce)))
        self.sig_inputs = [routed_sig_input(self.alice_pk, self.bob_pk, m.seq, m.nonce) for m, _ in self.frames]
        self.signed = [sodium.crypto_sign(data, self.alice.ed25519_sk) for data in self.sig_inputs]
        self.nonce = b"\x02" * 24
        self.boxes = []
        chain = b"\x01" * 32
        for seq in range(count):
            mk, chain = chain_step(chain, seq)
            self.boxes.append(sodium.crypto_secretbox(self.plaintext, self.nonce, mk))
        self.v3 = V3Fixture(self.alice, self.bob, self.plaintext, count)


class V3Fixture:
    """A v3 line right after its handshake (Alice invited Bob), and the floor's inputs for it.

    Alice sends on the chain the handshake gave her, Bob receives on the matching chain: no DH step
    inside the timings. The floor's associated data, digest inputs and signature inputs are the very
    bytes of the frames Alice's timed sends produce (the same sizes, the same content).
    """

    def __init__(self, alice: KeyPair, bob: KeyPair, plaintext: bytes, count: int) -> None:
        alice_pk = b64u(alice.ed25519_pk)
        issued = v3.issue_invite(alice, RELAY_URL, NOW_MS, SYSTEM_RANDOM)
        started = v3.start_handshake(
            bob, v3.parse_invite_url(v3.invite_url(alice, issued), NOW_MS), NOW_MS, SYSTEM_RANDOM
        )
        registry = v3.InviteRegistry().with_issued(issued)
        init = started.claim.as_session_init(alice_pk)
        accepted = v3.respond(registry, alice, init, NOW_MS, SYSTEM_RANDOM, relay_url=RELAY_URL)
        self.alice_session = accepted.session
        self.bob_session = v3.finish_handshake(started.pending, bob, accepted.frame, NOW_MS)
        # One first message outside the timings, as for v2.
        first = v3.encrypt(self.alice_session, alice, plaintext, NOW_MS, SYSTEM_RANDOM)
        self.alice_session = first.state
        self.bob_session = v3.decrypt(self.bob_session, first.frame, NOW_MS).state
        self.frames: list[RoutedFields] = []
        session = self.alice_session
        for _ in range(count):
            sealed = v3.encrypt(session, alice, plaintext, NOW_MS, SYSTEM_RANDOM)
            session = sealed.state
            self.frames.append(sealed.frame)
        inners = [b64u_strict(frame.ciphertext, "ciphertext") for frame in self.frames]
        ad_prefix = LABEL_MESSAGE_AD + self.alice_session.transcript_hash + alice.ed25519_pk + bob.ed25519_pk
        self.ads = [ad_prefix + inner[:MESSAGE_HEADER_BYTES] for inner in inners]
        self.nonces = [inner[MESSAGE_HEADER_BYTES - NONCE_BYTES : MESSAGE_HEADER_BYTES] for inner in inners]
        self.digest_inputs = [LABEL_FRAME_DIGEST + inner for inner in inners]
        self.sig_inputs = [routed_sig_input(f.from_pk, f.to, f.seq, f.nonce) for f in self.frames]
        self.signed = [sodium.crypto_sign(data, alice.ed25519_sk) for data in self.sig_inputs]
        self.boxes = []
        chain = b"\x01" * 32
        for seq in range(count):
            chain, mk = v3_chain_step(chain)
            box = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, self.ads[seq], self.nonces[seq], mk)
            self.boxes.append(box)


def chain_step(chain_key: bytes, seq: int) -> tuple[bytes, bytes]:
    """The three BLAKE2b calls of one message: message key, chain update (extract, expand)."""
    mk = hashlib.blake2b(seq.to_bytes(4, "big"), digest_size=32, key=chain_key).digest()
    prk = hashlib.blake2b(mk, digest_size=32, key=chain_key).digest()
    return mk, hashlib.blake2b(CHAIN_EXPAND, digest_size=32, key=prk).digest()


def v3_chain_step(chain_key: bytes) -> tuple[bytes, bytes]:
    """v3's KDF_CK: two keyed BLAKE2b-256 calls, the next chain key (0x02) then the message key (0x01)."""
    next_chain = hashlib.blake2b(b"\x02", digest_size=32, key=chain_key).digest()
    return next_chain, hashlib.blake2b(b"\x01", digest_size=32, key=chain_key).digest()


# ── ours ────────────────────────────────────────────────────────────────────────────────────────


def ours_send(f: Fixture) -> None:
    session = f.alice_session
    for _ in range(f.count):
        session, message = encrypt(session, f.plaintext, NOW_MS, SYSTEM_RANDOM)
        sign_routed(f.alice, f.bob_pk, message.seq, message.nonce)


def ours_receive(f: Fixture) -> None:
    session = f.bob_session
    for message, sig in f.frames:
        if not verify_routed(f.alice_pk, f.bob_pk, message.seq, message.nonce, sig):
            raise AssertionError("signature did not verify")
        session, _ = decrypt(session, message.ciphertext, message.nonce, message.seq, message.ratchet_pk, NOW_MS)


def ours_encrypt(f: Fixture) -> None:
    session = f.alice_session
    for _ in range(f.count):
        session, _ = encrypt(session, f.plaintext, NOW_MS, SYSTEM_RANDOM)


def ours_decrypt(f: Fixture) -> None:
    session = f.bob_session
    for message, _ in f.frames:
        session, _ = decrypt(session, message.ciphertext, message.nonce, message.seq, message.ratchet_pk, NOW_MS)


def ours_sign(f: Fixture) -> None:
    for message, _ in f.frames:
        sign_routed(f.alice, f.bob_pk, message.seq, message.nonce)


def ours_verify(f: Fixture) -> None:
    for message, sig in f.frames:
        verify_routed(f.alice_pk, f.bob_pk, message.seq, message.nonce, sig)


# ── the floor ───────────────────────────────────────────────────────────────────────────────────


def floor_seal(f: Fixture) -> None:
    chain = b"\x01" * 32
    for seq in range(f.count):
        mk, chain = chain_step(chain, seq)
        sodium.crypto_secretbox(f.plaintext, nacl.utils.random(NONCE_BYTES), mk)


def floor_open(f: Fixture) -> None:
    chain = b"\x01" * 32
    for seq in range(f.count):
        mk, chain = chain_step(chain, seq)
        sodium.crypto_secretbox_open(f.boxes[seq], f.nonce, mk)


def floor_sign(f: Fixture) -> None:
    for data in f.sig_inputs:
        sodium.crypto_sign(data, f.alice.ed25519_sk)


def floor_verify(f: Fixture) -> None:
    for signed in f.signed:
        sodium.crypto_sign_open(signed, f.alice.ed25519_pk)


def floor_send(f: Fixture) -> None:
    """What one sent message cannot avoid, one message at a time like ours_send."""
    chain = b"\x01" * 32
    for seq in range(f.count):
        mk, chain = chain_step(chain, seq)
        sodium.crypto_secretbox(f.plaintext, nacl.utils.random(NONCE_BYTES), mk)
        sodium.crypto_sign(f.sig_inputs[seq], f.alice.ed25519_sk)


def floor_receive(f: Fixture) -> None:
    """What one received message cannot avoid, one message at a time like ours_receive."""
    chain = b"\x01" * 32
    for seq in range(f.count):
        sodium.crypto_sign_open(f.signed[seq], f.alice.ed25519_pk)
        mk, chain = chain_step(chain, seq)
        sodium.crypto_secretbox_open(f.boxes[seq], f.nonce, mk)


def nonce_draws(f: Fixture) -> None:
    """The part of the floor the first version of this bench left out (it sealed under a fixed nonce)."""
    for _ in range(f.count):
        nacl.utils.random(NONCE_BYTES)


# ── v3: ours ────────────────────────────────────────────────────────────────────────────────────


def v3_ours_send(f: Fixture) -> None:
    session = f.v3.alice_session
    for _ in range(f.count):
        session = v3.encrypt(session, f.alice, f.plaintext, NOW_MS, SYSTEM_RANDOM).state


def v3_ours_receive(f: Fixture) -> None:
    session = f.v3.bob_session
    for frame in f.v3.frames:
        session = v3.decrypt(session, frame, NOW_MS).state


def v3_ours_receive_checked(f: Fixture) -> None:
    """The daemon's path: it has verified the routed signature itself before routing the frame here."""
    session = f.v3.bob_session
    for frame in f.v3.frames:
        session = v3.decrypt(session, frame, NOW_MS, signature_verified=True).state


# ── v3: the floor ───────────────────────────────────────────────────────────────────────────────


def v3_floor_send(f: Fixture) -> None:
    """KDF_CK, nonce draw, AEAD seal, frame digest, Ed25519 sign: v3's order in `_seal`/`seal_routed`."""
    g = f.v3
    chain = b"\x01" * 32
    for seq in range(f.count):
        chain, mk = v3_chain_step(chain)
        sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(f.plaintext, g.ads[seq], nacl.utils.random(NONCE_BYTES), mk)
        hashlib.blake2b(g.digest_inputs[seq], digest_size=32).digest()
        sodium.crypto_sign(g.sig_inputs[seq], f.alice.ed25519_sk)


def v3_floor_receive(f: Fixture) -> None:
    """Frame digest, Ed25519 verify, KDF_CK, AEAD open: v3's order in `open_routed`/`decrypt`."""
    g = f.v3
    chain = b"\x01" * 32
    for seq in range(f.count):
        hashlib.blake2b(g.digest_inputs[seq], digest_size=32).digest()
        sodium.crypto_sign_open(g.signed[seq], f.alice.ed25519_pk)
        chain, mk = v3_chain_step(chain)
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(g.boxes[seq], g.ads[seq], g.nonces[seq], mk)


def v3_floor_receive_checked(f: Fixture) -> None:
    """v3_floor_receive without the Ed25519 verify (done before, by the caller)."""
    g = f.v3
    chain = b"\x01" * 32
    for seq in range(f.count):
        hashlib.blake2b(g.digest_inputs[seq], digest_size=32).digest()
        chain, mk = v3_chain_step(chain)
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(g.boxes[seq], g.ads[seq], g.nonces[seq], mk)


# ── run ─────────────────────────────────────────────────────────────────────────────────────────

Job = Callable[[Fixture], None]
Row = tuple[str, Job, Job]
# Per protocol: the two headline rows (a round trip row follows them), then the breakdown.
PROTOCOLS: list[tuple[tuple[Row, Row], list[Row]]] = [
    (
        (("v2 encrypt + sign", ours_send, floor_send), ("v2 verify + decrypt", ours_receive, floor_receive)),
        [
            ("  ratchet encrypt", ours_encrypt, floor_seal),
            ("  ratchet decrypt", ours_decrypt, floor_open),
            ("  sign_routed", ours_sign, floor_sign),
            ("  verify_routed", ours_verify, floor_verify),
        ],
    ),
    (
        (
            ("v3 encrypt + sign", v3_ours_send, v3_floor_send),
            ("v3 verify + decrypt", v3_ours_receive, v3_floor_receive),
        ),
        [("  v3 decrypt, sig pre-checked", v3_ours_receive_checked, v3_floor_receive_checked)],
    ),
]
ROWS: list[Row] = [row for headlines, breakdown in PROTOCOLS for row in (*headlines, *breakdown)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratchet", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per round (default 1000)")
    parser.add_argument("--size", type=int, default=512, help="plaintext bytes (default 512)")
    parser.add_argument("--rounds", type=int, default=15, help="rounds; each job's best round counts (default 15)")
    args = parser.parse_args(argv)
    fixture = Fixture(args.messages, args.size)

    jobs = [job for _, ours, floor in ROWS for job in (ours, floor)] + [nonce_draws]
    best: dict[Job, float] = {}
    for _ in range(args.rounds):  # every job once per round, so changes in machine load hit all alike
        for job in jobs:
            started = time.process_time()
            job(fixture)
            elapsed = time.process_time() - started
            best[job] = min(best.get(job, elapsed), elapsed)

    count = args.messages
    print(
        f"ratchet bench: {count} messages x {args.rounds} rounds, {args.size}-byte plaintext, best round per job (CPU)"
    )
    print(f"{'':30} {'ours msg/s':>11} {'floor msg/s':>12} {'ratio':>6}   us/msg over floor")

    def line(name: str, ours: float, floor: float) -> float:
        ratio = floor / ours
        overhead = (ours - floor) / count * 1e6
        verdict = "" if name.startswith(" ") else f"{'ok' if ratio >= TARGET else 'BELOW TARGET'} (target >= {TARGET})"
        print(f"{name:30} {count / ours:11,.0f} {count / floor:12,.0f} {ratio:6.2f}   {overhead:8.1f}   {verdict}")
        return ratio

    ratios = []
    for (send, receive), breakdown in PROTOCOLS:
        ratios += [line(name, best[ours], best[floor]) for name, ours, floor in (send, receive)]
        protocol = send[0].split()[0]
        ratios.append(
            line(f"{protocol} round trip", best[send[1]] + best[receive[1]], best[send[2]] + best[receive[2]])
        )
        print(f"{protocol} breakdown:")
        for name, ours, floor in breakdown:
            line(name, best[ours], best[floor])
    draw = best[nonce_draws] / count * 1e6
    print(
        f"(the floors' nonce draws: {draw:.2f} us/msg; v2 encrypt + sign against a floor without them: "
        f"{(best[floor_send] - best[nonce_draws]) / best[ours_send]:.2f})"
    )
    return 0 if min(ratios) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
