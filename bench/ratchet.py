"""How close the ratchet comes to the cryptography it cannot avoid.

Measures messages per second for the two halves of a MSG, encrypt + sign (sender) and
verify + decrypt (receiver), and, in the same run and on inputs of the same sizes, the floor: only
the PyNaCl / hashlib calls one message needs, per message and in our order (Ed25519 sign or verify,
one secretbox seal or open with, for a seal, the draw of its random 24-byte nonce, and the three
BLAKE2b calls of a chain step: the message key, then the chain update's extract and expand).
ratio = our rate / floor rate; the target is >= 0.8 on each half and on the round trip, i.e. our
Python around those calls adds at most a quarter of their time. A breakdown shows the ratchet and
the signature wrapper alone, and what the nonce draw adds to the floor.

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

from ratchet.encoding import b64u_encode
from ratchet.kdf import LABEL_CHAIN, bootstrap_keys
from ratchet.keys import KeyPair, x25519
from ratchet.rand import SYSTEM_RANDOM
from ratchet.session import EncryptedMessage, Session, decrypt, encrypt
from ratchet.signatures import routed_sig_input, sign_routed, verify_routed

TARGET = 0.8
NOW_MS = 1_768_000_000_000
CHAIN_EXPAND = LABEL_CHAIN.encode() + b"\x01"
NONCE_BYTES = 24


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


def chain_step(chain_key: bytes, seq: int) -> tuple[bytes, bytes]:
    """The three BLAKE2b calls of one message: message key, chain update (extract, expand)."""
    mk = hashlib.blake2b(seq.to_bytes(4, "big"), digest_size=32, key=chain_key).digest()
    prk = hashlib.blake2b(mk, digest_size=32, key=chain_key).digest()
    return mk, hashlib.blake2b(CHAIN_EXPAND, digest_size=32, key=prk).digest()


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


# ── run ─────────────────────────────────────────────────────────────────────────────────────────

Job = Callable[[Fixture], None]
ROWS: list[tuple[str, Job, Job]] = [
    ("encrypt + sign", ours_send, floor_send),
    ("verify + decrypt", ours_receive, floor_receive),
    ("  ratchet encrypt", ours_encrypt, floor_seal),
    ("  ratchet decrypt", ours_decrypt, floor_open),
    ("  sign_routed", ours_sign, floor_sign),
    ("  verify_routed", ours_verify, floor_verify),
]


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
    print(f"{'':20} {'ours msg/s':>11} {'floor msg/s':>12} {'ratio':>6}   us/msg over floor")

    def line(name: str, ours: float, floor: float) -> float:
        ratio = floor / ours
        overhead = (ours - floor) / count * 1e6
        verdict = "" if name.startswith(" ") else f"{'ok' if ratio >= TARGET else 'BELOW TARGET'} (target >= {TARGET})"
        print(f"{name:20} {count / ours:11,.0f} {count / floor:12,.0f} {ratio:6.2f}   {overhead:8.1f}   {verdict}")
        return ratio

    ratios = [line(name, best[ours], best[floor]) for name, ours, floor in ROWS[:2]]
    ratios.append(line("round trip", best[ours_send] + best[ours_receive], best[floor_send] + best[floor_receive]))
    print("breakdown:")
    for name, ours, floor in ROWS[2:]:
        line(name, best[ours], best[floor])
    draw = best[nonce_draws] / count * 1e6
    print(
        f"  (the floor's nonce draws: {draw:.2f} us/msg; encrypt + sign against a floor without them: "
        f"{(best[floor_send] - best[nonce_draws]) / best[ours_send]:.2f})"
    )
    return 0 if min(ratios) >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
