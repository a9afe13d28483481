"""Real daemons behind the hostile relay: homes under /tmp, driven through agentroomctl, and the canary audit.

Each daemon is a `support.agent.Agent`: one agentroomd home, started and read through `agentroomctl`;
its methods block, so `World` calls them in worker threads while the relay keeps running on the
test's trio loop. `World` keeps the ledger the assertions need: every message a test sent (each with
a unique canary), what each daemon must have received, in order, and every invite URL handed out.
"""

import base64
import secrets
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio
from hostile_relay import HostileRelay, serve_hostile_relay
from support.agent import Agent

from agentroomd.log import Logger
from agentroomd.relay.config import RelayConfig
from ratchet.frames import Routed
from ratchet.keys import KeyPair
from ratchet.v3 import parse_invite_url
from ratchet.v3.invite import INVITE_PREFIX_V3

FAST_CLIENT = "[client]\nack_timeout_s = 5.0\nreconnect_initial_s = 0.05\nreconnect_max_s = 0.5\n"
LISTEN_TIMEOUT_S = 20.0
SEND_TIMEOUT_S = 30.0
T = TypeVar("T")


@attrs.frozen
class Said:
    """One message a test sent: who to whom, its text (with a canary), the sender's msg_id, the frame the relay saw."""

    sender: str
    receiver: str
    text: str
    msg_id: str
    frame: Routed


@attrs.define
class World:
    """The hostile relay, the daemons, and the ledger of what must (and must not) arrive."""

    relay: HostileRelay
    url: str
    root: Path
    relay_dir: Path
    stop_relay_scope: trio.CancelScope
    relay_stopped: trio.Event
    daemons: dict[str, Agent] = attrs.Factory(dict)
    canaries: list[str] = attrs.Factory(list)
    invite_urls: list[str] = attrs.Factory(list)
    expected: dict[str, list[Said]] = attrs.Factory(dict)  # receiver -> messages it must have, in order

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args))

    async def daemons_named(self, *names: str) -> list[Agent]:
        """Start a daemon for each name, side by side."""
        started = [Agent(self.root / name, FAST_CLIENT, name=name) for name in names]
        async with trio.open_nursery() as nursery:
            for daemon in started:
                nursery.start_soon(self.run, daemon.start)
        for daemon in started:
            self.daemons[daemon.name] = daemon
            self.expected[daemon.name] = []
        return started

    async def invite(self, host: Agent) -> str:
        created = await self.run(host.one, "invite", "create", "--relay", self.url, "--ttl", "1h")
        url = str(created["url"])
        assert url.startswith(INVITE_PREFIX_V3) and created["protocol"] == 3
        self.invite_urls.append(url)
        return url

    async def accept(self, guest: Agent, url: str) -> str:
        accepted = await self.run(guest.one, "invite", "accept", url)
        return str(accepted["peer"])

    async def pair(self, host: Agent, guest: Agent) -> None:
        assert await self.accept(guest, await self.invite(host)) == host.pk

    async def say(self, sender: Agent, receiver: Agent, label: str, *, arrives: bool = True) -> Said:
        """Send a message with a fresh canary; ``arrives``: append it to what ``receiver`` must get next."""
        canary = f"canary-{secrets.token_hex(10)}"
        self.canaries.append(canary)
        text = f"{label} {canary}"
        sent = await self.run(partial(sender.send, receiver.pk, text, timeout=SEND_TIMEOUT_S))
        assert sent.status in ("delivered", "queued"), sent
        frame = await self.relay.frame_with_id(sent.msg_id)
        said = Said(sender.name, receiver.name, text, sent.msg_id, frame)
        if arrives:
            self.expected[receiver.name].append(said)
        return said

    def arrived(self, saids: Iterable[Said]) -> None:
        """These messages must arrive, in this order (the relay's order), after what is already expected."""
        for said in saids:
            self.expected[said.receiver].append(said)

    async def check(self, *receivers: Agent, timeout_s: float = LISTEN_TIMEOUT_S) -> list[Counter[str]]:
        """Each receiver's inbox, checked side by side; returns their counters (status --json), in order.

        `listen` must show exactly the expected messages, each once, in order, with the sender's
        msg_id; and the journal must end there (status: journal.last_cursor), so nothing bogus was
        kept between or after them. The counters are read after the inbox, so every frame the relay
        put before the last expected message has been handled by then.
        """
        counters: dict[str, Counter[str]] = {}

        async def check_one(receiver: Agent) -> None:
            want = self.expected[receiver.name]
            got = await self.run(receiver.inbox, len(want), timeout_s)
            sender_pk = {name: daemon.pk for name, daemon in self.daemons.items()}
            assert [(m["from"], m["text"], m["msg_id"]) for m in got] == [
                (sender_pk[s.sender], s.text, s.msg_id) for s in want
            ], f"{receiver.name} got {[(m['text'], m['msg_id']) for m in got]}"
            status = await self.run(receiver.status)
            assert status["journal"]["last_cursor"] == (got[-1]["cursor"] if got else 0), (
                f"{receiver.name} kept more than was sent to it: {status['journal']}"
            )
            counters[receiver.name] = Counter(status["services"]["sessions"]["counters"])

        async with trio.open_nursery() as nursery:
            for receiver in receivers:
                nursery.start_soon(check_one, receiver)
        return [counters[receiver.name] for receiver in receivers]

    async def finish(self) -> None:
        """Stop every daemon, then the relay (its store flushed and closed); idempotent."""
        async with trio.open_nursery() as nursery:
            for daemon in self.daemons.values():
                nursery.start_soon(self.run, daemon.stop)
        self.stop_relay_scope.cancel()
        with trio.fail_after(15):
            await self.relay_stopped.wait()

    async def audit(self) -> None:
        """Stop everything, then search every byte the relay stored or logged, and every frame it received."""
        await self.finish()
        stored = {path.name: path.read_bytes() for path in sorted(self.relay_dir.iterdir()) if path.is_file()}
        assert {"relay.db", "relay.log"} <= stored.keys(), sorted(stored)
        seen = "\n".join(self.relay.texts).encode()
        corpus = {**stored, "frames received": seen}
        # Positive controls: the search reads real data (what the relay legitimately knows is there).
        for invite in self.relay.published:
            assert invite.invite_id.encode() in stored["relay.db"] + stored.get("relay.db-wal", b"")
        assert b'"event":"frame.routed"' in stored["relay.log"], "the relay did not log at debug level"
        leaks = [
            (what, where)
            for what, needles in self.secrets().items()
            for needle in needles
            for where, data in corpus.items()
            if needle in data
        ]
        assert leaks == [], f"the relay stored or logged secrets: {leaks}"

    def secrets(self) -> dict[str, list[bytes]]:
        """What must never reach the relay: each canary, each invite URL's payload and its decoded secret."""
        found: dict[str, list[bytes]] = {}
        for canary in self.canaries:
            found[canary] = encodings(canary.encode())
        for url in self.invite_urls:
            payload = url[len(INVITE_PREFIX_V3):]
            secret = parse_invite_url(url, 0).secret
            found[f"invite {payload[:12]}..."] = [payload.encode(), *encodings(secret)]
        return found


def encodings(data: bytes) -> list[bytes]:
    """``data`` as it could sit inside stored text: raw, hex, and base64/base64url at each of the 3 alignments.

    For base64 only the characters that depend on ``data`` alone are kept, so the needle matches
    wherever ``data`` sits inside a longer encoded string.
    """
    found = [data, data.hex().encode(), data.hex().upper().encode()]
    for shift, skip in ((0, 0), (1, 2), (2, 3)):
        encoded = base64.urlsafe_b64encode(bytes(shift) + data).rstrip(b"=")[skip:-2]
        found += [encoded, encoded.replace(b"-", b"+").replace(b"_", b"/")]
    return found


async def start_world(nursery: trio.Nursery) -> World:
    root = Path(tempfile.mkdtemp(prefix="ar-hostile-", dir="/tmp"))
    relay_dir = root / "relay"
    relay_dir.mkdir()
    config = RelayConfig(port=0, db=str(relay_dir / "relay.db"), rate_limit_disabled=True, log_level="debug")
    log_file = (relay_dir / "relay.log").open("w")  # the relay's stderr, at debug level
    scope, stopped = trio.CancelScope(), trio.Event()

    async def run(task_status: trio.TaskStatus[tuple[HostileRelay, str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with scope:
                await serve_hostile_relay(config, KeyPair.generate(), Logger("relay", "debug", log_file),
                                          task_status=task_status)
        finally:
            log_file.close()
            stopped.set()

    relay, url = await nursery.start(run)
    return World(relay, url, root, relay_dir, scope, stopped)
