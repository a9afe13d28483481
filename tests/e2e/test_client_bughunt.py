"""Defects found by reading the client sessions against a hostile world; each test failed before its fix.

Session managers in this process (the helpers of test_client_sessions) talk through a real relay on a
loopback port, with real SQLite stores. A disk that fails is had with SQLite's own switches
(``query_only``: every write fails as on a read-only database; ``max_page_count``: as on a full disk);
a network path that goes silent is a TCP hop of ours (`Blackhole`), the one fake: it stands for the
internet.
"""

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from hostile.hostile_relay import serve_hostile_relay
from test_client_sessions import Agent, Disk, pair, start_agent

from agentroomd.client.manager import ClientError
from agentroomd.log import Logger
from agentroomd.relay.config import RelayConfig
from agentroomd.relay.server import RelayHandle, serve_relay
from ratchet.frames import SessionAck
from ratchet.keys import KeyPair

WAIT_S = 10.0


@attrs.define
class World:
    relay: RelayHandle  # with the app, so that a test can break the relay's own database
    alice: Agent
    bob: Agent


def relay_config(tmp_path: Path) -> RelayConfig:
    return RelayConfig(port=0, db=str(tmp_path / "relay.db"), rate_limit_disabled=True, log_level="error")


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[World]:
    relay = await nursery.start(serve_relay, relay_config(tmp_path))
    alice = await start_agent(nursery, tmp_path / "alice", "alice")
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    yield World(relay, alice, bob)


def read_only(agent_or_db: Agent | sqlite3.Connection, on: bool) -> None:
    """Every write to this database fails from now on (``on``) as on a read-only one, or works again."""
    db = agent_or_db.store._db if isinstance(agent_or_db, Agent) else agent_or_db
    db.execute(f"PRAGMA query_only = {'ON' if on else 'OFF'}")


async def test_a_message_the_relay_could_not_store_is_sent_again_not_dropped(world: World) -> None:
    """The relay answers ERROR INTERNAL when its own database fails: the frame waits, it is not thrown away.

    Before: the outbox marked it failed and deleted the sealed frame, so the message was lost for good
    (its ratchet step spent) although the relay would have taken it a second later.
    """
    relay, alice, bob = world.relay, world.alice, world.bob
    await pair(alice, bob, relay.url)
    relay_db = relay.app.store._conn
    read_only(relay_db, True)
    try:
        status, msg_id, _ = await alice.manager.send_message(bob.pk, "while the relay's disk failed", timeout_s=1.5)
        assert status == "pending"
    finally:
        read_only(relay_db, False)
    got = await bob.next_message()
    assert (got.text, got.msg_id) == ("while the relay's disk failed", msg_id)
    status, _, _ = await alice.manager.send_message(bob.pk, "and the next one")
    assert status == "delivered"
    assert (await bob.next_message()).text == "and the next one"


async def test_a_disk_that_fails_after_the_relay_took_a_frame_does_not_stop_the_daemon(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay ACKed the frame, then the store cannot delete its outbox row: the sender goes on.

    Before: the StoreError escaped the outbox sender and ended the whole session manager (the daemon
    exited), although nothing was lost and a failed write on the receive path is survived.
    """
    relay, alice, bob = world.relay, world.alice, world.bob
    await pair(alice, bob, relay.url)
    await alice.store.flush()
    disk = Disk(monkeypatch, alice.store.wal_path)  # holds the frame until the database turns read-only
    status, _, _ = await alice.manager.send_message(bob.pk, "sent, then the disk turned read-only", timeout_s=0.2)
    assert status == "pending"
    read_only(alice, True)
    disk.released.set()
    assert (await bob.next_message()).text == "sent, then the disk turned read-only"
    await bob.manager.send_message(alice.pk, "answer while alice cannot write")
    conn = alice.manager.connection(relay.url)
    with trio.fail_after(WAIT_S):  # she cannot store it: not acknowledged, the connection drops
        await conn.wait_disconnected()
    read_only(alice, False)
    assert (await alice.next_message()).text == "answer while alice cannot write"
    status, _, _ = await alice.manager.send_message(bob.pk, "the disk is back")
    assert status == "delivered"
    # the frame whose row could not be deleted went again after the reconnect: bob shows it once
    assert (await bob.next_message()).text == "the disk is back"
    assert bob.manager.counters.duplicates == 1


async def test_frames_that_overtook_the_handshake_answer_survive_a_failed_write_while_opening_them(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    """v3: a message kept because it overtook the SESSION_ACK is opened when the answer comes again.

    The invitee saves the session, then opens the kept frames; if the disk fails in between, the
    SESSION_ACK is not acknowledged and comes again. Before: the second copy was taken for a replay
    (the session was already saved), the kept frame stayed in the store unopened for good, and the
    messages after it arrived without it: a message lost that the relay had been told was safe.
    """
    relay, url = await nursery.start(serve_hostile_relay, relay_config(tmp_path), KeyPair.generate(),
                                     Logger("relay", "error"))
    alice = await start_agent(nursery, tmp_path / "alice", "alice")
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    invite = await alice.manager.create_invite(url, ttl_ms=3_600_000)
    held = relay.hold(lambda frame: isinstance(frame, SessionAck))
    _, _, answered = await bob.manager.accept_invite(invite.url, wait_ack_s=0.2)
    assert not answered
    await relay.wait_for(lambda: held[0] if held else None)
    relay.route_normally()
    early = "the inviter speaks first " + "e" * 100_000  # opening it needs many new pages
    await alice.manager.send_message(bob.pk, early)
    with trio.fail_after(WAIT_S):
        while not bob.store.early_frames(alice.pk):  # noqa: ASYNC110 (kept in the store, no event for it)
            await trio.sleep(0.01)
    pages = bob.store._db.execute("PRAGMA page_count").fetchone()[0]
    bob.store._db.execute(f"PRAGMA max_page_count = {pages + 3}")  # room for the session, not for the message
    await relay.deliver(held[0])
    conn = bob.manager.connection(url)
    with trio.fail_after(WAIT_S):
        await conn.wait_disconnected()
    assert bob.manager.peer_state(alice.pk) == "established"  # the session was saved, the message was not
    bob.store._db.execute("PRAGMA max_page_count = 1073741823")
    await alice.manager.send_message(bob.pk, "after")
    assert [(await bob.next_message()).text for _ in range(2)] == [early, "after"]
    assert bob.store.early_frames(alice.pk) == []


async def test_a_v2_answer_that_cannot_be_saved_does_not_stop_the_daemon(
    tmp_path: Path, world: World, nursery: trio.Nursery,
) -> None:
    """v2: the invitee notes "established" in the background; a disk that refuses it is logged, not fatal.

    Before: the StoreError of that background write ended the session manager (the daemon exited).
    """
    relay, bob = world.relay, world.bob
    identity = KeyPair.generate()
    alice = await start_agent(nursery, tmp_path / "v2-alice", "alice", identity)
    invite = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000, version=2)
    alice.scope.cancel()  # the inviter is away: its answer comes later
    _, _, answered = await bob.manager.accept_invite(invite.url, wait_ack_s=0.2)
    assert not answered
    answer = bob.manager.handshakes.handshake_events[alice.pk]
    read_only(bob, True)
    alice = await start_agent(nursery, tmp_path / "v2-alice", "alice", identity)
    with trio.fail_after(WAIT_S):
        await answer.wait()
    await trio.testing.wait_all_tasks_blocked()  # the background write has run (and failed)
    read_only(bob, False)
    await alice.manager.send_message(bob.pk, "hello over v2")
    assert (await bob.next_message()).text == "hello over v2"
    await bob.manager.send_message(alice.pk, "and back")
    assert (await alice.next_message()).text == "and back"


class Blackhole:
    """A TCP hop to the relay that can go silent: what a dropped NAT mapping or a vanished host looks like.

    After `cut()`, every connection open at that moment swallows what it reads, both ways, and never
    closes; connections made afterwards are forwarded normally (the route is back).
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.generation = 0

    def cut(self) -> None:
        self.generation += 1

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream, generation: int) -> None:
        while data := await src.receive_some(65536):
            if generation == self.generation:
                await dst.send_all(data)

    async def _handle(self, client: trio.SocketStream) -> None:
        generation = self.generation
        async with client, await trio.open_tcp_stream("127.0.0.1", self.target_port) as upstream:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, generation)
                    nursery.start_soon(self._pump, upstream, client, generation)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # one side hung up: so does the hop

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)


async def test_a_connection_that_went_silent_is_given_up_and_its_messages_arrive(
    world: World, nursery: trio.Nursery,
) -> None:
    """A relay that answers no PING is gone: the client connects again and gets what was sent meanwhile.

    Before: PINGs went out and nobody looked for the PONG, so a connection whose route died without a
    FIN or RST stayed "connected" until TCP gave up (many minutes; never while nothing is sent), and
    every message the relay handed to it waited that long.
    """
    relay, alice, bob = world.relay, world.alice, world.bob
    hole = Blackhole(relay.port)
    port = await nursery.start(hole.serve)
    url = f"ws://127.0.0.1:{port}/ws"
    for agent in (alice, bob):
        agent.manager._ping_interval_s = 0.2  # before their connections exist
    await pair(alice, bob, url)
    conn = alice.manager.connection(url)
    assert conn.connects == 1
    hole.cut()
    status, _, _ = await bob.manager.send_message(alice.pk, "sent into the void", timeout_s=5)
    assert status == "delivered"  # the relay handed it to alice's old socket, which leads nowhere
    assert (await alice.next_message()).text == "sent into the void"
    assert conn.connects == 2


@pytest.mark.parametrize("closer", ["inviter", "invitee"])
async def test_after_a_close_a_new_invite_starts_a_new_conversation(world: World, closer: str) -> None:
    """A closed session says "a new conversation needs a new invite": the new invite between the same two works.

    Before: the invitee refused it with AlreadyExists ("already in a session"), and the inviter would
    have dropped the SESSION_INIT as a duplicate, so the two could never talk again.
    """
    relay, alice, bob = world.relay, world.alice, world.bob
    await pair(alice, bob, relay.url)
    await alice.manager.send_message(bob.pk, "first conversation")
    assert (await bob.next_message()).text == "first conversation"
    if closer == "inviter":
        await alice.manager.close_peer(bob.pk)
    else:
        await bob.manager.close_peer(alice.pk)
    with trio.fail_after(WAIT_S):  # the CLOSE reached the other side
        while {alice.manager.peer_state(bob.pk), bob.manager.peer_state(alice.pk)} != {"closed"}:  # noqa: ASYNC110
            await trio.sleep(0.01)
    await pair(alice, bob, relay.url)
    assert [(p.pk, alice.manager.peer_state(p.pk)) for p in alice.manager.peers()] == [(bob.pk, "established")]
    assert [(p.pk, bob.manager.peer_state(p.pk)) for p in bob.manager.peers()] == [(alice.pk, "established")]
    for sender, receiver, text in [(alice, bob, "second conversation"), (bob, alice, "and back")]:
        status, _, _ = await sender.manager.send_message(receiver.pk, text)
        assert status == "delivered"
        assert (await receiver.next_message()).text == text


async def test_a_prune_the_disk_refuses_is_tried_again_and_stops_nothing(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Erasing expired keys is a write like any other: a disk that refuses it must not end the daemon.

    Before: the StoreError left the pruning task and ended the whole session manager.
    """
    from agentroomd.client import manager

    monkeypatch.setattr(manager, "PRUNE_INTERVAL_S", 0.02)  # a round every 20 ms instead of every 5 min
    relay = await nursery.start(serve_relay, relay_config(tmp_path))
    alice = await start_agent(nursery, tmp_path / "alice", "alice")
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    await pair(alice, bob, relay.url)
    read_only(alice, True)
    with trio.fail_after(WAIT_S):
        while alice.manager.counters.prune_failures < 2:  # noqa: ASYNC110 - a round has no event of its own
            await trio.sleep(0.01)
    read_only(alice, False)
    await bob.manager.send_message(alice.pk, "still here")
    assert (await alice.next_message()).text == "still here"


async def test_a_claim_the_inviter_never_answers_does_not_block_its_next_invite(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    """Our v3 claim waited for an answer that will never come (here: the inviter lost its home and with it
    the invite); a fresh invite from the same inviter must start the conversation.

    Before: the peer stayed "pending" for good, `close` refused it (no session), and every later invite
    from that inviter was refused as AlreadyExists: the two could never talk again.
    """
    relay = await nursery.start(serve_relay, relay_config(tmp_path))
    identity = KeyPair.generate()
    alice = await start_agent(nursery, tmp_path / "alice", "alice", identity)
    invite = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000)
    alice.scope.cancel()  # offline before anyone claims
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    _, _, answered = await bob.manager.accept_invite(invite.url, wait_ack_s=0.2)
    assert not answered and bob.manager.peer_state(identity_pk(identity)) == "pending"
    # The inviter comes back without the invite (a new home): the claim is refused, bob is never answered.
    alice = await start_agent(nursery, tmp_path / "alice-again", "alice", identity)
    again = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000)
    peer, _, answered = await bob.manager.accept_invite(again.url)
    assert (peer, answered) == (alice.pk, True)
    assert bob.manager.peer_state(alice.pk) == "established"
    await bob.manager.send_message(alice.pk, "at last")
    assert (await alice.next_message()).text == "at last"


def identity_pk(identity: KeyPair) -> str:
    from ratchet.encoding import b64u_encode

    return b64u_encode(identity.ed25519_pk)


async def test_a_peer_with_an_open_v2_session_that_claims_a_fresh_v2_invite_starts_over(
    tmp_path: Path, nursery: trio.Nursery, world: World,
) -> None:
    """A TypeScript peer that lost its session (its 30-day clean-up keeps the key) accepts a fresh invite of
    ours: the reference inviter replaces the session, and so must we, or the pair can never talk again.

    Before: our inviter dropped the SESSION_INIT as a duplicate while the invitee believed it had a session.
    """
    relay, alice, bob = world.relay, world.alice, world.bob
    identity = bob.manager.identity
    await pair(alice, bob, relay.url, version=2)
    await bob.manager.send_message(alice.pk, "first conversation")
    assert (await alice.next_message()).text == "first conversation"
    bob.scope.cancel()  # bob loses his home (and his session), not his key
    bob = await start_agent(nursery, tmp_path / "bob-again", "bob", identity)
    again = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000, version=2)
    peer, _, answered = await bob.manager.accept_invite(again.url)
    assert (peer, answered) == (alice.pk, True)
    for sender, receiver, text in ((bob, alice, "second conversation"), (alice, bob, "heard you")):
        status, _, _ = await sender.manager.send_message(receiver.pk, text)
        assert status == "delivered"
        assert (await receiver.next_message()).text == text
    assert [p.pk for p in alice.manager.peers()] == [bob.pk]
    # the fresh claim was taken as a new conversation, neither a duplicate nor an unsolicited one
    assert alice.manager.counters.unsolicited_session_init == 0


async def test_an_invite_naming_an_unreachable_relay_leaves_no_connection_behind(world: World) -> None:
    """Refused with RelayUnreachable, and nothing of it is kept: before, the connection to that relay went on
    reconnecting for as long as the daemon ran (status listed it), although no peer or invite used it."""
    relay, alice, bob = world.relay, world.alice, world.bob
    dead = "ws://127.0.0.1:9/ws"  # the discard port: nothing listens
    invite = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000, advertised_url=dead)
    with pytest.raises(ClientError, match="cannot reach relay"):
        await bob.manager.accept_invite(invite.url, timeout_s=0.3)
    assert [conn.url for conn in bob.manager.relays()] == []
    assert bob.manager.peers() == []


async def test_accepting_an_invite_again_while_its_inviter_is_away_keeps_the_claim(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    """The same invite accepted a second time while the inviter is offline: a clear AlreadyExists, and the
    first claim stays. Before: the second claim replaced the first, the relay refused it as already
    claimed, and the cleanup deleted the peer: once the inviter came back it had a session, we had none."""
    relay = await nursery.start(serve_relay, relay_config(tmp_path))
    identity = KeyPair.generate()
    alice = await start_agent(nursery, tmp_path / "alice", "alice", identity)
    invite = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000)
    alice.scope.cancel()
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    _, _, answered = await bob.manager.accept_invite(invite.url, wait_ack_s=0.2)
    assert not answered
    with pytest.raises(ClientError, match="already accepted"):
        await bob.manager.accept_invite(invite.url, wait_ack_s=0.2)
    assert bob.manager.peer_state(identity_pk(identity)) == "pending"
    alice = await start_agent(nursery, tmp_path / "alice", "alice", identity)  # back, with its invite
    with trio.fail_after(WAIT_S):
        await bob.manager.wait_session(alice.pk)
    await bob.manager.send_message(alice.pk, "the first claim held")
    assert (await alice.next_message()).text == "the first claim held"
