"""The relay's life: graceful shutdown (1001, store flushed), pruning and TTL, a reference database migrated."""

import sqlite3
from pathlib import Path

import trio
from relay_support import (
    Agent,
    authenticated,
    get_json,
    make_config,
    new_id,
    now_ms,
    pending_rows,
    quiet_log,
    running_relay,
)

from agentroomd.relay.config import RelayConfig
from agentroomd.relay.server import RelayHandle, serve_relay
from agentroomd.relay.store import CHECKPOINT_EVERY_COMMITS, open_store
from agentroomd.relay.wire import routed_text
from ratchet.frames import Delivery, as_forwarded

DAY_MS = 86_400_000


class Stoppable:
    """A relay the test can stop (by cancellation, as a parent nursery would) and wait for."""

    def __init__(self, config: RelayConfig, **kwargs: object) -> None:
        self.config = config
        self.kwargs = kwargs
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[RelayHandle] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with self.scope:
                await serve_relay(self.config, task_status=task_status, **self.kwargs)  # type: ignore[arg-type]
        finally:
            self.stopped.set()


async def test_cancellation_closes_sockets_with_1001_and_flushes_the_store(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    log, capture = quiet_log()
    relay_task = Stoppable(make_config(tmp_path), log=log)
    relay: RelayHandle = await nursery.start(relay_task.run)
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _):
        frame = alice.msg(bob.pk)
        await a.send(frame)
        await a.expect_ack(frame.msg_id, "queued")
        async with authenticated(relay, bob) as (b, _):
            assert (await b.expect(Delivery)).routed == frame  # written to bob: its row is due for deletion
            relay_task.scope.cancel()
            for client in (a, b):
                closed = await client.expect_close()
                assert (closed.code, closed.reason) == (1001, "server shutting down")
    with trio.fail_after(10):
        await relay_task.stopped.wait()
    assert pending_rows(tmp_path / "relay.db") == []  # the deletion was flushed before the store closed
    events = capture.events()
    assert events.index("shutdown.start") < events.index("shutdown.done")
    assert not (tmp_path / "relay.db-wal").exists() or (tmp_path / "relay.db-wal").stat().st_size == 0


class WallClock:
    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now


async def test_pending_rows_expire_after_the_ttl_and_prune_cleans_up(tmp_path: Path) -> None:
    clock = WallClock()
    config = make_config(tmp_path, pending_ttl_days=7)
    alice, bob = Agent(), Agent()
    async with running_relay(config, wall_ms=clock) as relay:
        async with authenticated(relay, alice) as (a, _):
            old = alice.msg(bob.pk, "old")
            await a.send(old)
            await a.expect_ack(old.msg_id, "queued")
            publish = alice.publish(new_id(), "blob", clock.now + DAY_MS)
            await a.send(publish)
            await a.expect_ack(publish.msg_id, "delivered")
            clock.now += 6 * DAY_MS
            recent = alice.msg(bob.pk, "recent")
            await a.send(recent)
            await a.expect_ack(recent.msg_id, "queued")
        clock.now += 2 * DAY_MS  # `old` is 8 days old now, `recent` 2 days; the invite expired
        async with authenticated(relay, bob) as (b, _):
            assert [d.routed for d in await b.deliveries(1)] == [recent]  # an expired row is never delivered
            await b.round_trip()
        await relay.app.prune_now()
        health = await get_json(relay, "/health")
        assert (health["pending"], health["invites"]) == (0, 0)


async def test_a_reference_relay_database_is_migrated_in_order(tmp_path: Path) -> None:
    """The reference's schema (no `ord`, 1-second created_at) is upgraded in place; queued frames survive."""
    alice, bob = Agent(), Agent()
    frames = [alice.msg(bob.pk, f"from the reference relay {i}") for i in range(3)]
    db = tmp_path / "relay.db"
    with sqlite3.connect(db) as conn:
        conn.executescript(
            """
            CREATE TABLE agents (ed25519_pk TEXT PRIMARY KEY, x25519_pk TEXT NOT NULL,
                registered_at INTEGER NOT NULL DEFAULT (unixepoch()), last_seen INTEGER);
            CREATE TABLE invites (invite_id TEXT PRIMARY KEY, blob TEXT NOT NULL, inviter_pk TEXT NOT NULL,
                expires_at INTEGER NOT NULL, claimed_at INTEGER);
            CREATE TABLE pending_messages (id TEXT PRIMARY KEY, to_pk TEXT NOT NULL, envelope TEXT NOT NULL,
                created_at INTEGER NOT NULL DEFAULT (unixepoch()));
            CREATE INDEX idx_pending_to ON pending_messages(to_pk);
            """
        )
        now_s = now_ms() // 1000
        rows = [(new_id(), bob.pk, routed_text(as_forwarded(f)), now_s + i) for i, f in enumerate(frames)]
        conn.executemany("INSERT INTO pending_messages VALUES (?, ?, ?, ?)", reversed(rows))
        conn.execute("INSERT INTO pending_messages VALUES (?, ?, ?, ?)", (new_id(), bob.pk, "{not json", now_s))
        conn.execute("INSERT INTO agents (ed25519_pk, x25519_pk) VALUES (?, ?)", (bob.pk, bob.x25519_pk))
    async with running_relay(make_config(tmp_path)) as relay, authenticated(relay, bob) as (b, _):
        assert [d.routed for d in await b.deliveries(3)] == frames  # oldest first; the poison row is dropped
        await b.round_trip()
        await relay.app.store.flush_discards()
        assert pending_rows(db) == []
        assert (await get_json(relay, "/metrics"))["pending_dropped_malformed"] == 1


async def test_store_reopens_what_it_wrote(tmp_path: Path) -> None:
    db = str(tmp_path / "x" / "relay.db")  # the directory is created
    async with open_store(db) as store:
        assert await store.enqueue("pk", "row-1", "{}", 1, cap=2) == 1
        assert await store.enqueue("pk", "row-2", "{}", 1, cap=2) == 2
        assert await store.enqueue("pk", "row-3", "{}", 1, cap=2) is None
        store.discard([("other-pk", "row-1")])  # not pk's row: nothing happens
        await store.flush_discards()
    async with open_store(db) as store:
        assert [row.id for row in await store.fetch_pending("pk", 0, 10, 0)] == ["row-1", "row-2"]
        assert (await store.counts()).pending == 2


async def test_concurrent_enqueues_are_committed_in_one_order_within_the_cap(tmp_path: Path) -> None:
    async with open_store(str(tmp_path / "relay.db")) as store:
        results: dict[int, int | None] = {}

        async def enqueue(i: int) -> None:
            results[i] = await store.enqueue("pk", f"row-{i}", "{}", 1, cap=30)

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(enqueue, i)
        stored = [i for i in range(40) if results[i] is not None]
        assert len(stored) == 30 and sum(results[i] is None for i in range(40)) == 10
        rows = await store.fetch_pending("pk", 0, 100, 0)
        assert [row.ord for row in rows] == sorted(results[i] for i in stored)  # type: ignore[type-var]
        assert [row.id for row in rows] == [f"row-{i}" for i in sorted(stored, key=lambda i: results[i] or 0)]


async def test_the_wal_is_checkpointed_in_the_background_and_stays_bounded(tmp_path: Path) -> None:
    # Commits run on the event loop with SQLite's auto-checkpoint off; the store's own task checkpoints
    # (in a thread) every CHECKPOINT_EVERY_COMMITS commits, so the WAL file is reused instead of growing.
    db = tmp_path / "relay.db"
    envelope = "x" * 2_000
    async with open_store(str(db)) as store:
        sizes = []
        for round_ in range(1, 4):
            for i in range(CHECKPOINT_EVERY_COMMITS):
                await store.enqueue(f"pk-{i % 7}", f"row-{round_}-{i}", envelope, 1, cap=10_000)  # one commit each
            with trio.fail_after(10):
                await store.wait_for_checkpoints(round_)
            sizes.append(Path(f"{db}-wal").stat().st_size)
        assert sizes[2] <= sizes[0] * 1.5, sizes  # without checkpoints it would be about 3x
        assert (await store.counts()).pending == 3 * CHECKPOINT_EVERY_COMMITS


async def test_the_queue_cap_stays_exact_across_deletions_prunes_and_claims(tmp_path: Path) -> None:
    # The store keeps each recipient's row count instead of counting per queued frame; every way rows
    # come and go must keep the cap exact.
    async with open_store(str(tmp_path / "relay.db")) as store:
        for i in range(3):
            assert await store.enqueue("pk", f"a{i}", "{}", 1, cap=3) is not None
        assert await store.enqueue("pk", "a3", "{}", 1, cap=3) is None  # full
        store.discard([("pk", "a0")])
        await store.flush_discards()
        assert await store.enqueue("pk", "a4", "{}", 1, cap=3) is not None  # room for exactly one
        assert await store.enqueue("pk", "a5", "{}", 1, cap=3) is None
        day_s = 86_400
        pruned = await store.prune(now_ms=(1 + 8 * day_s) * 1000, pending_ttl_s=7 * day_s)  # every row is 8 days old
        assert pruned.pending == 3
        for i in range(3):
            assert await store.enqueue("pk", f"b{i}", "{}", 8 * day_s, cap=3) is not None
        assert await store.enqueue("pk", "b3", "{}", 8 * day_s, cap=3) is None

        now = 8 * day_s * 1000
        assert await store.publish_invite(new_id(), "blob", "inviter", now + 60_000, now, quota=5) == "ok"
        invite = new_id()
        assert await store.publish_invite(invite, "blob", "inviter", now + 60_000, now, quota=5) == "ok"
        assert await store.enqueue("inviter", "c0", "{}", 8 * day_s, cap=2) is not None
        assert (await store.claim_invite(invite, now, "c1", "{}", cap=2))[0] == "claimed"
        assert await store.enqueue("inviter", "c2", "{}", 8 * day_s, cap=2) is None  # the claim's row counts
        assert (await store.counts()).pending == 5
