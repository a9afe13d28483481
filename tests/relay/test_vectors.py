"""The reference clients' recorded handshake, replayed byte for byte against our relay.

handshake.json holds every frame two real TypeScript clients wrote, and every frame a relay that
mimics the reference wrote back. We serve the recorded challenges (through the relay's injected
randomness) and the recorded clock, send the clients' exact texts, and require the relay's answers
to be the recorded texts: only the relay's own frame ids and the session token (an opaque secret)
may differ.
"""

import json
from collections import deque
from pathlib import Path
from typing import Any

import trio
from relay_support import connect, fetch_challenge, make_config, start_relay

from ratchet.encoding import b64u_decode
from ratchet.frames import parse_frame
from ratchet.rand import SYSTEM_RANDOM


class RecordedRandom:
    """Challenges from the recording, counter UUIDs for the relay's own ids, system randomness otherwise."""

    def __init__(self, challenges: list[str]) -> None:
        self.challenges = deque(b64u_decode(text) for text in challenges)
        self.count = 0

    def random_bytes(self, n: int) -> bytes:
        if n == 24 and self.challenges:
            return self.challenges.popleft()
        return SYSTEM_RANDOM.random_bytes(n)

    def ed25519_seed(self) -> bytes:
        return SYSTEM_RANDOM.ed25519_seed()

    def x25519_secret(self) -> bytes:
        return SYSTEM_RANDOM.x25519_secret()

    def uuid4(self) -> str:
        self.count += 1
        return f"00000000-0000-4000-8000-{self.count:012d}"


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def same_but_ids(ours: str, recorded: str) -> None:
    """``ours`` equals ``recorded`` except the relay-made msg_id (and session_token), which may differ."""
    mine, theirs = parse_frame(ours), parse_frame(recorded)
    assert mine.TYPE == theirs.TYPE
    normal = ours.replace(mine.msg_id, theirs.msg_id)
    token = getattr(mine, "session_token", None)
    if token is not None:
        normal = normal.replace(token, getattr(theirs, "session_token", ""))
    assert normal == recorded


async def test_reference_handshake_replays_byte_for_byte(
    nursery: trio.Nursery, tmp_path: Path, vectors_dir: Path
) -> None:
    data: dict[str, Any] = json.loads((vectors_dir / "handshake.json").read_text("utf-8"))
    steps = data["steps"]
    clock = Clock()
    rng = RecordedRandom([step["challenge_from_relay"] for step in steps if "challenge_from_relay" in step])
    relay = await start_relay(nursery, make_config(tmp_path), rng=rng, wall_ms=clock)

    def sent(step: dict[str, Any], side: str) -> list[str]:
        return [frame["raw_text"] for frame in step[side]]

    async with connect(relay) as alice, connect(relay) as bob:
        # steps 0 and 1: each client fetches a challenge and answers with the recorded HELLO
        for step, client in ((steps[0], alice), (steps[1], bob)):
            clock.now = step["now_ms"]
            assert await fetch_challenge(relay) == step["challenge_from_relay"]
            (hello,) = sent(step, "frames_sent_by_client")
            await client.send(hello)
            (expected,) = sent(step, "frames_sent_by_relay")
            same_but_ids(await client.recv_text(), expected)

        # step 2: alice publishes the invite -> ACK delivered
        clock.now = steps[2]["now_ms"]
        (publish,) = sent(steps[2], "frames_sent_by_client")
        await alice.send(publish)
        same_but_ids(await alice.recv_text(), sent(steps[2], "frames_sent_by_relay")[0])

        # step 3: bob claims -> ACK queued to bob; step 4: alice gets DELIVERY(SESSION_INIT)
        clock.now = steps[3]["now_ms"]
        (claim,) = sent(steps[3], "frames_sent_by_client")
        await bob.send(claim)
        same_but_ids(await bob.recv_text(), sent(steps[3], "frames_sent_by_relay")[0])
        same_but_ids(await alice.recv_text(), steps[4]["delivered_to_client"]["raw_text"])

        # step 4: alice answers SESSION_ACK -> ACK delivered; step 5: bob gets DELIVERY(SESSION_ACK)
        clock.now = steps[4]["now_ms"]
        (session_ack,) = sent(steps[4], "frames_sent_by_client")
        await alice.send(session_ack)
        same_but_ids(await alice.recv_text(), sent(steps[4], "frames_sent_by_relay")[0])
        same_but_ids(await bob.recv_text(), steps[5]["delivered_to_client"]["raw_text"])
