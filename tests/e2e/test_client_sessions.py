"""Two session managers talking through a real relay on a loopback port, with real SQLite stores.

This is the path of a message end to end inside one process: invite, claim, SESSION_INIT/ACK, DH turns
both ways, and the durability rules (outbox on a dead relay, journal deduplication on redelivery).
"""

import errno
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from agentroomd.client.connection import Backoff
from agentroomd.client.manager import ClientError, SessionManager
from agentroomd.client.store import ClientStore
from agentroomd.control.api import ReceivedMessage
from agentroomd.log import Logger
from agentroomd.relay.config import RelayConfig
from agentroomd.relay.server import serve_relay
from ratchet.keys import KeyPair


def fast_backoff() -> Backoff:
    return Backoff(base_s=0.02, cap_s=0.2)


@attrs.define
class Agent:
    manager: SessionManager
    store: ClientStore
    inbox: trio.MemoryReceiveChannel[ReceivedMessage]
    scope: trio.CancelScope

    @property
    def pk(self) -> str:
        return self.manager.pk

    async def next_message(self) -> ReceivedMessage:
        with trio.fail_after(10):
            return await self.inbox.receive()


async def start_agent(nursery: trio.Nursery, home: Path, name: str, identity: KeyPair | None = None) -> Agent:
    home.mkdir(parents=True, exist_ok=True)
    store = ClientStore(home / "client.db")
    manager = SessionManager(identity or KeyPair.generate(), store, Logger(name, level="error"),
                             backoff_factory=fast_backoff)
    send, receive = trio.open_memory_channel[ReceivedMessage](10_000)
    manager.on_received = send.send_nowait
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            try:
                await manager.run(task_status=task_status)
            finally:
                store.close()

    await nursery.start(run)
    return Agent(manager, store, receive, scope)


@attrs.define
class RelayProc:
    url: str
    port: int
    db: Path
    scope: trio.CancelScope


async def start_relay(nursery: trio.Nursery, db: Path, port: int = 0, hmac_secret: str | None = None) -> RelayProc:
    config = RelayConfig(port=port, db=str(db), rate_limit_disabled=True, log_level="error", hmac_secret=hmac_secret)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[object] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve_relay(config, task_status=task_status)

    handle = await nursery.start(run)
    return RelayProc(handle.url, handle.port, db, scope)


@pytest.fixture
async def world(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[RelayProc, Agent, Agent]]:
    relay = await start_relay(nursery, tmp_path / "relay.db")
    alice = await start_agent(nursery, tmp_path / "alice", "alice")
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    yield relay, alice, bob


async def pair(alice: Agent, bob: Agent, relay_url: str, version: int = 3) -> None:
    invite = await alice.manager.create_invite(relay_url, ttl_ms=3_600_000, version=version)
    peer, relay, answered = await bob.manager.accept_invite(invite.url)
    assert peer == alice.pk and relay == relay_url
    assert answered, "the inviter is online, so its SESSION_ACK must arrive"


async def test_invite_then_conversation_both_ways_with_dh_turns(world: tuple[RelayProc, Agent, Agent]) -> None:
    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    script = [(bob, alice, "hello alice"), (alice, bob, "hi bob"), (alice, bob, "second in a row"),
              (bob, alice, "turn again"), (alice, bob, "ünïcødé ✓ and emoji 🎉"), (bob, alice, "")]
    for sender, receiver, text in script:
        status, msg_id, peer = await sender.manager.send_message(receiver.pk, text)
        assert status == "delivered" and peer == receiver.pk
        got = await receiver.next_message()
        assert (got.text, got.from_, got.msg_id) == (text, sender.pk, msg_id)
    assert [p.pk for p in alice.manager.peers()] == [bob.pk]
    assert [p.pk for p in bob.manager.peers()] == [alice.pk]


async def test_relay_sees_only_ciphertext(world: tuple[RelayProc, Agent, Agent], nursery: trio.Nursery) -> None:
    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    relay.scope.cancel()  # stop the relay so the message waits in its database, then read every byte it kept
    canary = "canary-plaintext-7f3a9c"
    status, _, _ = await bob.manager.send_message(alice.pk, canary, timeout_s=0.5)
    assert status == "pending"
    await start_relay_again(nursery, relay)
    got = await alice.next_message()
    assert got.text == canary
    for path in relay.db.parent.glob("relay.db*"):
        assert canary.encode() not in path.read_bytes()


async def start_relay_again(nursery: trio.Nursery, relay: RelayProc) -> RelayProc:
    """The same relay again: same database file, same port (clients reconnect by themselves)."""
    return await start_relay(nursery, relay.db, port=relay.port)


async def test_outbox_survives_a_dead_relay_and_flushes_in_order(
    world: tuple[RelayProc, Agent, Agent], nursery: trio.Nursery
) -> None:
    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    relay.scope.cancel()
    for i in range(5):
        status, _, _ = await bob.manager.send_message(alice.pk, f"offline {i}", timeout_s=0.05)
        assert status == "pending"
    await start_relay_again(nursery, relay)
    texts = [(await alice.next_message()).text for _ in range(5)]
    assert texts == [f"offline {i}" for i in range(5)]


async def test_unknown_peer_and_oversized_message_are_clear_errors(world: tuple[RelayProc, Agent, Agent]) -> None:
    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    with pytest.raises(ClientError, match="no peer"):
        await alice.manager.send_message("nobody", "x")
    from agentroomd.client.manager import MAX_PLAINTEXT_BYTES

    with pytest.raises(ClientError, match=f"limit is {MAX_PLAINTEXT_BYTES}"):
        await alice.manager.send_message(bob.pk, "x" * (MAX_PLAINTEXT_BYTES + 1))
    status, _, _ = await alice.manager.send_message(bob.pk[:6], "prefix works")
    assert status == "delivered"
    assert (await bob.next_message()).text == "prefix works"


async def test_reused_invite_is_refused_and_leaves_no_peer(tmp_path: Path, world: tuple[RelayProc, Agent, Agent],
                                                          nursery: trio.Nursery) -> None:
    relay, alice, bob = world
    invite = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000)
    await bob.manager.accept_invite(invite.url)
    carol = await start_agent(nursery, tmp_path / "carol", "carol")
    with pytest.raises(ClientError) as info:
        await carol.manager.accept_invite(invite.url)
    assert info.value.kind == "invite_used"
    assert carol.manager.peers() == []


async def test_full_disk_on_send_fails_clearly_and_session_stays_consistent(
    world: tuple[RelayProc, Agent, Agent],
) -> None:
    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    # Fill the database to its page limit: SQLite then fails every write with SQLITE_FULL, as on a full disk.
    db = sqlite3.connect(alice.store.path)
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    alice.store._db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(ClientError, match="disk full"):
        await alice.manager.send_message(bob.pk, "y" * 100_000)
    alice.store._db.execute("PRAGMA max_page_count = 1073741823")
    status, _, _ = await alice.manager.send_message(bob.pk, "after the disk was freed")
    assert status == "delivered"
    assert (await bob.next_message()).text == "after the disk was freed"


async def test_unsolicited_session_init_is_dropped(world: tuple[RelayProc, Agent, Agent], tmp_path: Path,
                                                  nursery: trio.Nursery) -> None:
    """A stranger who builds a SESSION_INIT from alice's public keys, without an invite she issued, gets nothing.

    The reference accepts any SESSION_INIT; we accept one only for an invite we issued and that is unused.
    """
    from ratchet.frames import SessionInit
    from ratchet.handshake import accept_invite
    from ratchet.invite import create_invite

    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    mallory = await start_agent(nursery, tmp_path / "mallory", "mallory")
    # mallory knows alice's public keys (anyone holding an old invite does) and invents a nonce
    fake = create_invite(alice.manager.identity, relay.url, alice.manager.clock_ms(), alice.manager.rng)
    claim, _ = accept_invite(mallory.manager.identity, fake, mallory.manager.clock_ms())
    conn = await mallory.manager.wait_connected(relay.url, 5)
    init = SessionInit(msg_id=mallory.manager.rng.uuid4(), ts=mallory.manager.clock_ms(), from_=claim.from_pk,
                       to=alice.pk, ciphertext=claim.ciphertext, nonce=claim.nonce, sig=claim.sig, seq=0)
    await conn.send_frame(init)
    # alice handles deliveries in order on one connection: once bob's later message arrives, mallory's was seen
    await bob.manager.send_message(alice.pk, "after mallory")
    assert (await alice.next_message()).text == "after mallory"
    assert alice.manager.counters.unsolicited_session_init == 1
    assert mallory.pk not in [p.pk for p in alice.manager.peers()]


async def test_full_disk_on_receive_loses_nothing(world: tuple[RelayProc, Agent, Agent]) -> None:
    """A receiver that cannot store a message does not acknowledge it; it arrives once the disk has room."""
    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    db = sqlite3.connect(alice.store.path)
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.close()
    alice.store._db.execute(f"PRAGMA max_page_count = {pages}")
    status, _, _ = await bob.manager.send_message(alice.pk, "z" * 120_000)  # near the limit: fills the page cap
    assert status in ("delivered", "queued")
    conn = alice.manager.connection(relay.url)
    with trio.fail_after(10):
        await conn.wait_disconnected()
    assert conn.last_error is not None and "could not store" in conn.last_error
    alice.store._db.execute("PRAGMA max_page_count = 1073741823")
    got = await alice.next_message()
    assert got.text == "z" * 120_000
    await bob.manager.send_message(alice.pk, "and the next one")
    assert (await alice.next_message()).text == "and the next one"


async def test_undecryptable_frames_are_counted_and_the_session_survives(
    world: tuple[RelayProc, Agent, Agent],
) -> None:
    """A peer (or anyone holding its key) sending garbage under a valid signature cannot break the session."""
    from ratchet.encoding import b64u_encode
    from ratchet.frames import Msg
    from ratchet.signatures import sign_routed

    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    await bob.manager.send_message(alice.pk, "first")
    assert (await alice.next_message()).text == "first"
    conn = await bob.manager.wait_connected(relay.url, 5)
    nonce = b64u_encode(b"\x01" * 24)
    for seq in (1, 5, 2**31):
        garbage = Msg(msg_id=bob.manager.rng.uuid4(), ts=bob.manager.clock_ms(), from_=bob.pk, to=alice.pk,
                      ciphertext=b64u_encode(b"\x00" * 64), nonce=nonce,
                      sig=sign_routed(bob.manager.identity, alice.pk, seq, nonce), seq=seq,
                      ratchet_pk=b64u_encode(bob.manager.identity.x25519_pk))
        await conn.send_frame(garbage)
    await bob.manager.send_message(alice.pk, "still here")
    assert (await alice.next_message()).text == "still here"
    assert alice.manager.counters.undecryptable == 3
    await alice.manager.send_message(bob.pk, "and back")
    assert (await bob.next_message()).text == "and back"


async def test_reconnect_resumes_with_the_session_token(world: tuple[RelayProc, Agent, Agent],
                                                       nursery: trio.Nursery) -> None:
    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    conn = alice.manager.connection(relay.url)
    assert (conn.connects, conn.resumes) == (1, 0)
    relay.scope.cancel()
    with trio.fail_after(10):
        await conn.wait_disconnected()
    await start_relay_again(nursery, relay)  # same database, so the same kept HMAC secret
    await bob.manager.send_message(alice.pk, "after resume")
    assert (await alice.next_message()).text == "after resume"
    assert (conn.connects, conn.resumes) == (2, 1)


async def test_a_refused_token_falls_back_to_a_full_hello(tmp_path: Path, nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, tmp_path / "relay.db", hmac_secret="a" * 40)
    alice = await start_agent(nursery, tmp_path / "alice", "alice")
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    await pair(alice, bob, relay.url)
    conn = alice.manager.connection(relay.url)
    relay.scope.cancel()
    with trio.fail_after(10):
        await conn.wait_disconnected()
    await start_relay(nursery, relay.db, port=relay.port, hmac_secret="b" * 40)  # rotated: old tokens invalid
    await bob.manager.send_message(alice.pk, "after rotation")
    assert (await alice.next_message()).text == "after rotation"
    assert conn.resumes == 0 and conn.connects == 2


@pytest.mark.parametrize(("version", "lifetime_ms"), [(2, 5 * 60_000), (3, 24 * 3_600_000)])
async def test_expired_skipped_keys_are_erased_from_disk(world: tuple[RelayProc, Agent, Agent], version: int,
                                                         lifetime_ms: int) -> None:
    """A message that never arrives leaves a skipped key; after its lifetime it is gone from the saved state."""
    from agentroomd.client.peer_session import PeerSession

    relay, alice, bob = world
    await pair(alice, bob, relay.url, version)
    await alice.manager.send_message(bob.pk, "hi")  # v3: the inviter speaks first so both chains exist
    assert (await bob.next_message()).text == "hi"
    # bob seals one message that is lost on the way (never sent), then sends the next one normally
    lost_state, _ = bob.manager._sessions[alice.pk].seal(bob.manager.identity, bob.pk, alice.pk, b"lost",
                                                          bob.manager.rng.uuid4(), bob.manager.clock_ms(),
                                                          bob.manager.rng)
    bob.manager._sessions[alice.pk] = lost_state
    await bob.manager.send_message(alice.pk, "arrives")
    assert (await alice.next_message()).text == "arrives"

    def saved_skipped() -> int:
        row = alice.store.peer(bob.pk)
        assert row is not None and row.version == version
        state = PeerSession.load(row.version, row.state).state
        return len(state.skipped)

    assert saved_skipped() == 1
    assert await alice.manager.prune_expired_keys() == 0  # not expired yet
    real_clock = alice.manager.clock_ms
    alice.manager.clock_ms = lambda: real_clock() + lifetime_ms + 60_000
    assert await alice.manager.prune_expired_keys() == 1
    assert saved_skipped() == 0


async def test_an_inviter_that_dies_right_after_the_handshake_still_answers_it(tmp_path: Path,
                                                                            nursery: trio.Nursery) -> None:
    """The SESSION_ACK is committed with the new session (in the outbox), so a crash cannot lose it."""
    relay = await start_relay(nursery, tmp_path / "relay.db")
    alice_keys = KeyPair.generate()
    alice = await start_agent(nursery, tmp_path / "alice", "alice", alice_keys)
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    invite = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000)
    # alice "dies" the moment the session is committed, before her sender could run
    alice.manager.on_invite_redeemed = lambda invite_id, pk: alice.scope.cancel()
    _, _, answered = await bob.manager.accept_invite(invite.url, wait_ack_s=0.5)
    assert not answered
    alice_again = await start_agent(nursery, tmp_path / "alice", "alice", alice_keys)  # same home and store
    await alice_again.manager.send_message(bob.pk, "after the crash")
    assert (await bob.next_message()).text == "after the crash"  # the answer went first, then the message
    await bob.manager.send_message(alice.pk, "and back")
    assert (await alice_again.next_message()).text == "and back"


async def test_old_messages_and_expired_invites_are_pruned(world: tuple[RelayProc, Agent, Agent]) -> None:
    """[daemon] journal_keep bounds the journal; an expired v3 invite's secret leaves the registry and the disk."""
    from agentroomd.client.handshakes import REGISTRY_KEY

    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    for i in range(5):
        await bob.manager.send_message(alice.pk, f"m{i}")
        await alice.next_message()
    unused = await alice.manager.create_invite(relay.url, ttl_ms=60_000)
    assert [i.invite_id for i in alice.manager.handshakes.registry.issued] == [unused.invite_id]
    alice.manager._journal_keep = 3
    real_clock = alice.manager.clock_ms
    alice.manager.clock_ms = lambda: real_clock() + 10 * 60_000  # the unused invite is long expired
    await alice.manager.prune_expired_keys()
    assert [row.text for row in alice.store.journal_since(0)] == ["m2", "m3", "m4"]
    assert alice.manager.journal.oldest_cursor == alice.store.journal_since(0)[0].cursor
    assert alice.manager.handshakes.registry.issued == ()
    saved = alice.store.get_meta(REGISTRY_KEY)
    assert saved is not None and unused.invite_id not in saved


# -- write-ahead at the wire: nothing leaves before the commit it follows is on disk -------------------


class Disk:
    """`os.fdatasync` of one file as a slow disk (held until released) or a broken one (an I/O error).

    A disk that stalls or fails cannot be had here on demand; every other file syncs for real.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.inode = path.stat().st_ino
        self.released = threading.Event()
        self.error: OSError | None = None
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            if os.fstat(fd).st_ino == self.inode:
                if self.error is not None:
                    raise self.error
                self.released.wait(30)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)


def relay_rows_for(relay: RelayProc, pk: str) -> int:
    db = sqlite3.connect(relay.db)
    try:
        return int(db.execute("SELECT COUNT(*) FROM pending_messages WHERE to_pk = ?", (pk,)).fetchone()[0])
    finally:
        db.close()


async def settled(relay: RelayProc, *agents: Agent) -> None:
    """Every frame acknowledged, every task idle, every commit on disk: a disk can now stall or fail."""
    with trio.fail_after(10):
        for agent in agents:
            # the relay deletes acknowledged rows in batches, in its own threads: no event to await but its file
            while relay_rows_for(relay, agent.pk):  # noqa: ASYNC110
                await trio.sleep(0.01)
        await trio.testing.wait_all_tasks_blocked()
        for agent in agents:
            await agent.store.flush()


async def test_a_sealed_frame_leaves_only_once_its_state_is_on_disk_but_a_ping_never_waits(
    world: tuple[RelayProc, Agent, Agent], monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ratchet.frames import make_ping

    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    await settled(relay, alice, bob)
    disk = Disk(monkeypatch, alice.store.wal_path)
    status, msg_id, _ = await alice.manager.send_message(bob.pk, "held by a slow disk", timeout_s=0.5)
    assert status == "pending"  # committed (a crash keeps it) but not yet flushed: it has not left
    assert alice.store.unflushed
    with pytest.raises(trio.WouldBlock):
        bob.inbox.receive_nowait()
    with trio.fail_after(5):  # a PING depends on nothing stored: it goes out while the flush waits
        await alice.manager.connection(relay.url).send_frame(make_ping(alice.manager.rng, alice.manager.clock_ms()))
    assert alice.store.unflushed
    disk.released.set()
    got = await bob.next_message()
    assert (got.text, got.msg_id) == ("held by a slow disk", msg_id)


async def test_a_delivery_is_acknowledged_only_once_its_journal_line_is_on_disk(
    world: tuple[RelayProc, Agent, Agent], monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay, alice, bob = world
    await pair(alice, bob, relay.url)
    await settled(relay, alice, bob)
    disk = Disk(monkeypatch, bob.store.wal_path)
    status, _, _ = await alice.manager.send_message(bob.pk, "journaled, not yet flushed")
    assert status == "delivered"
    got = await bob.next_message()  # subscribers see it as soon as it is committed
    assert got.text == "journaled, not yet flushed"
    assert relay_rows_for(relay, bob.pk) == 1  # but the relay keeps it until bob's disk holds it
    disk.released.set()
    await settled(relay, bob)


async def test_a_disk_that_refuses_to_flush_stops_the_sender_and_loses_nothing(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentroomd.client.store import StoreFlushError

    relay = await start_relay(nursery, tmp_path / "relay.db")
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    identity = KeyPair.generate()
    with pytest.RaisesGroup(pytest.RaisesExc(StoreFlushError, match="refused to flush"), flatten_subgroups=True):
        async with trio.open_nursery() as own:
            alice = await start_agent(own, tmp_path / "alice", "alice", identity)
            await pair(alice, bob, relay.url)
            await settled(relay, alice, bob)
            disk = Disk(monkeypatch, alice.store.wal_path)
            disk.error = OSError(errno.EIO, "Input/output error")
            await alice.manager.send_message(bob.pk, "sealed before the disk broke")  # the sender stops here
    with pytest.raises(trio.WouldBlock):
        bob.inbox.receive_nowait()
    assert relay_rows_for(relay, bob.pk) == 0
    # The disk is replaced, the daemon restarts: the sealed frame was committed, so it goes out, once.
    monkeypatch.undo()
    alice = await start_agent(nursery, tmp_path / "alice", "alice", identity)
    got = await bob.next_message()
    assert got.text == "sealed before the disk broke"
    await alice.manager.send_message(bob.pk, "and the conversation goes on")
    assert (await bob.next_message()).text == "and the conversation goes on"


async def test_the_wal_is_checkpointed_by_flushes_and_reused_in_place(tmp_path: Path) -> None:
    store = ClientStore(tmp_path / "client.db", checkpoint_commits=20)
    sizes = []
    try:
        for i in range(300):
            await store.now(store.record_incoming, "peer", b"s" * 2000, f"m{i}", "t" * 500, i)
            await store.flush()
            sizes.append(store.wal_path.stat().st_size)
        assert store.checkpoints == 300 // 20 and not store.unflushed
    finally:
        store.close()
    # Once the first checkpoint has run, commits overwrite the blocks the WAL already has: it stops growing.
    assert max(sizes[40:]) == max(sizes[:40]) < 20 * 32 * 1024  # 20 commits of a few pages each
    reopened = ClientStore(tmp_path / "client.db")
    try:
        assert reopened.count_messages() == {"in": 300, "out": 0}
    finally:
        reopened.close()
