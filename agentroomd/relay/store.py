"""The relay's SQLite store: agents seen, published invites, and frames waiting for their recipient.

One `sqlite3` connection in WAL mode with `synchronous = NORMAL`, used by one caller at a time (a
`CapacityLimiter(1)`). The frequent, small operations (queue a frame, fetch a recipient's rows,
delete delivered rows, record a HELLO, invites) run **inline** on the event loop: in WAL mode with
NORMAL a commit appends to the WAL without an fsync, about 15-25 us, far less than a hop to a worker
thread and back (and the hop's latency sat in the path of every ACK "queued"). What can take long
runs in a worker thread: the table-wide `prune` and `counts`, and WAL **checkpoints**, which copy
the WAL into the database file and fsync it. SQLite's automatic checkpoint would run inside some
commit on the event loop, so it is off (`wal_autocheckpoint = 0`); a background task checkpoints
(PASSIVE, through a second connection of its own, which never blocks the writer) in a thread after
every `CHECKPOINT_EVERY_COMMITS` commits. Every public method is one transaction, so a cancelled
caller still leaves the database consistent (a thread call uses `abandon_on_cancel=False`).

The schema is the reference's (agentroom-reference.md §3.4) plus what ordered, acknowledged delivery
needs: `pending_messages.ord`, an increasing integer that orders a recipient's queue exactly (the
reference ordered by 1-second timestamps), and `agents.acks_deliveries`, whether the agent's client
acknowledges deliveries (then a row stays until acknowledged). A database written by the reference
relay is migrated in place on open.

Rows that were written to a socket (or acknowledged) are deleted in batches by a background task
(`discard`); until the batch is committed they are hidden from `fetch_pending`, so a quick reconnect
does not get them twice. Closing the store flushes the batch and checkpoints the WAL.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal, TypeVar

import attrs
import trio

from agentroomd.log import Logger
from agentroomd.relay.config import MEMORY_DB
from ratchet.jsjson import js_utf8_encode

SCHEMA_VERSION = 1
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS agents (
    ed25519_pk TEXT PRIMARY KEY,
    x25519_pk TEXT NOT NULL,
    registered_at INTEGER NOT NULL DEFAULT (CAST(strftime('%s', 'now') AS INTEGER)),
    last_seen INTEGER,
    acks_deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS invites (
    invite_id TEXT PRIMARY KEY,
    blob TEXT NOT NULL,
    inviter_pk TEXT NOT NULL,
    expires_at INTEGER NOT NULL,   -- epoch milliseconds
    claimed_at INTEGER             -- epoch seconds
);
CREATE TABLE IF NOT EXISTS pending_messages (
    ord INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,       -- also the msg_id of the DELIVERY that carries it
    to_pk TEXT NOT NULL,
    envelope TEXT NOT NULL,        -- the routed frame's JSON text
    created_at INTEGER NOT NULL    -- epoch seconds
);
CREATE INDEX IF NOT EXISTS idx_pending_to ON pending_messages(to_pk, ord);
CREATE INDEX IF NOT EXISTS idx_invites_expires ON invites(expires_at);
CREATE INDEX IF NOT EXISTS idx_invites_inviter ON invites(inviter_pk);
"""

CLAIMED_INVITE_RETENTION_S = 30 * 86_400
AGENT_RETENTION_S = 90 * 86_400
# A queued frame commits 3-4 pages (row + two index leaves): ~250 commits are SQLite's default 1000-page
# auto-checkpoint. Between checkpoints the WAL grows by at most this much and is then reused from its start.
CHECKPOINT_EVERY_COMMITS = 250
DISCARD_GATHER_S = 0.02  # how long deletions gather before they are committed together
DISCARD_BATCH = 256  # rows deleted per inline transaction (a bigger backlog takes several, with a yield between)


class StoreError(Exception):
    """The database failed (disk, corruption, locked); the message says which operation."""


@attrs.frozen
class PendingRow:
    ord: int
    id: str
    envelope: str


@attrs.frozen
class InviteRow:
    invite_id: str
    inviter_pk: str
    expires_at: int  # ms
    claimed: bool


@attrs.frozen
class StoreCounts:
    agents: int
    pending: int
    invites: int


@attrs.frozen
class PruneResult:
    invites: int
    pending: int
    claimed_invites: int
    agents: int


@attrs.define
class _Insert:
    """One `enqueue` call waiting for the next group commit."""

    to_pk: str
    row_id: str
    envelope: str
    now_s: int
    cap: int | None
    done: trio.Event = attrs.Factory(trio.Event)
    ord: int | None = None
    error: StoreError | None = None


PublishResult = Literal["ok", "quota"]
ClaimResult = Literal["claimed", "already_claimed", "expired", "not_found", "queue_full"]


class RelayStore:
    """Async façade over one SQLite connection; create with `open_store`."""

    def __init__(self, conn: sqlite3.Connection, log: Logger, path: str | None = None) -> None:
        self._conn = conn
        self._log = log
        self._path = path  # the database file, for the checkpointer's own connection (None: in memory)
        self._limiter = trio.CapacityLimiter(1)  # one user of the connection at a time, inline or in a thread
        self._discards: set[tuple[str, str]] = set()  # (to_pk, row id)
        self._discard_wanted = trio.Event()
        self._inserts: list[_Insert] = []
        self._insert_wanted = trio.Event()
        # Exact number of rows per recipient, for the queue cap without a COUNT(*) per queued frame: kept
        # up to date by inserts, forgotten (recounted on next need) wherever rows are deleted or a
        # transaction fails.
        self._queued: dict[str, int] = {}
        self._commits = 0  # write transactions since the last checkpoint
        self._checkpoint_wanted = trio.Event()
        self.checkpoints = 0  # WAL checkpoints run by the background task so far
        self._checkpointed = trio.Event()
        self._closed = False

    # ------------------------------------------------------------------ plumbing

    async def _run(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in a worker thread: for what may take long (table scans, checkpoints, closing)."""
        if self._closed:
            raise StoreError(f"{what}: store is closed")
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"{what}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            self._count_commits()

    async def _run_inline(self, what: str, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` right here on the event loop: for the small indexed reads and writes (see the module doc).

        When no thread call holds the connection, this does not yield at all.
        """
        if self._closed:
            raise StoreError(f"{what}: store is closed")
        limiter = self._limiter
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await limiter.acquire()
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            raise StoreError(f"{what}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            limiter.release()
            self._count_commits()

    def _tx(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in one IMMEDIATE transaction (the write lock is taken up front: no upgrade deadlock)."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = body(conn)
        except BaseException:
            self._queued.clear()
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            self._queued.clear()
            raise
        self._commits += 1  # never concurrently: the limiter; the checkpointer is told on the event loop
        return result

    def _count_commits(self) -> None:
        if self._commits >= CHECKPOINT_EVERY_COMMITS:
            self._checkpoint_wanted.set()

    # ------------------------------------------------------------------ agents

    async def upsert_agent(self, ed25519_pk: str, x25519_pk: str, acks_deliveries: bool, now_s: int) -> int:
        """Record a HELLO; returns how many rows are queued for this agent."""

        def body(conn: sqlite3.Connection) -> int:
            conn.execute(
                "INSERT INTO agents (ed25519_pk, x25519_pk, registered_at, last_seen, acks_deliveries)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(ed25519_pk) DO UPDATE SET"
                " x25519_pk = excluded.x25519_pk, last_seen = excluded.last_seen,"
                " acks_deliveries = excluded.acks_deliveries",
                (ed25519_pk, _sqlite_text(x25519_pk), now_s, now_s, int(acks_deliveries)),
            )
            return _count_pending(conn, ed25519_pk)

        return await self._run_inline("upsert_agent", self._tx, body)

    async def touch_agent(self, ed25519_pk: str, now_s: int) -> tuple[bool, int]:
        """Record a token resume; returns whether this agent acknowledges deliveries, and its queued rows."""

        def body(conn: sqlite3.Connection) -> tuple[bool, int]:
            conn.execute("UPDATE agents SET last_seen = ? WHERE ed25519_pk = ?", (now_s, ed25519_pk))
            row = conn.execute("SELECT acks_deliveries FROM agents WHERE ed25519_pk = ?", (ed25519_pk,)).fetchone()
            return (bool(row[0]) if row else False), _count_pending(conn, ed25519_pk)

        return await self._run_inline("touch_agent", self._tx, body)

    # ------------------------------------------------------------------ pending frames

    async def enqueue(self, to_pk: str, row_id: str, envelope: str, now_s: int, cap: int) -> int | None:
        """Queue ``envelope`` for ``to_pk``; its `ord`, or None when the recipient already has ``cap`` rows.

        Returns once the row is committed. Concurrent calls are committed together (group commit: one
        transaction for everything that arrived during one pass of the scheduler), in call order: a
        commit costs more than an insert (it writes the touched pages to the WAL), so under load each
        frame pays a fraction of one.
        """
        request = _Insert(_sqlite_text(to_pk), row_id, envelope, now_s, cap)
        self._inserts.append(request)
        self._insert_wanted.set()
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.ord

    async def _insert_loop(self) -> None:
        batch: list[_Insert] = []
        try:
            while True:
                await self._insert_wanted.wait()
                self._insert_wanted = trio.Event()
                batch, self._inserts = self._inserts, []

                def body(conn: sqlite3.Connection, batch: list[_Insert] = batch) -> list[int | None]:
                    return [self._insert_capped(conn, r.to_pk, r.row_id, r.envelope, r.now_s, r.cap) for r in batch]

                try:
                    results = await self._run_inline("enqueue", self._tx, body)
                except StoreError as exc:
                    for request in batch:
                        request.error = exc
                else:
                    for request, ord_ in zip(batch, results, strict=True):
                        request.ord = ord_
                for request in batch:
                    request.done.set()
        finally:
            # Only if the store closes under a caller (cancelled while waiting for the connection, or
            # before its turn): fail it, never hang it. A committed request is already done.
            for request in [*batch, *self._inserts]:
                if not request.done.is_set():
                    request.error = StoreError("enqueue: store is closing")
                    request.done.set()

    def _insert_capped(
        self, conn: sqlite3.Connection, to_pk: str, row_id: str, envelope: str, now_s: int, cap: int | None
    ) -> int | None:
        """`_insert_pending` with the cap checked against the kept count (counted once, then kept)."""
        queued = self._queued.get(to_pk)
        if queued is None:
            queued = self._queued[to_pk] = _count_pending(conn, to_pk)
        if cap is not None and queued >= cap:
            return None
        ord_ = _insert_pending(conn, to_pk, row_id, envelope, now_s, None)
        self._queued[to_pk] = queued + 1
        return ord_

    async def fetch_pending(self, to_pk: str, after_ord: int, limit: int, not_before_s: int) -> list[PendingRow]:
        """Up to ``limit`` rows for ``to_pk`` after ``after_ord``, oldest first, younger than the TTL.

        Empty only when there is no such row: a batch made only of rows waiting for deletion (hidden) is
        skipped, never answered as "nothing left", which a store pump would take for "caught up".
        """

        def body(after: int) -> list[PendingRow]:
            rows = self._conn.execute(
                "SELECT ord, id, envelope FROM pending_messages"
                " WHERE to_pk = ? AND ord > ? AND created_at >= ? ORDER BY ord LIMIT ?",
                (to_pk, after, not_before_s, limit),
            ).fetchall()
            return [PendingRow(ord, row_id, envelope) for ord, row_id, envelope in rows]

        while True:
            rows = await self._run_inline("fetch_pending", body, after_ord)
            visible = [row for row in rows if (to_pk, row.id) not in self._discards]
            if visible or len(rows) < limit:
                return visible
            after_ord = rows[-1].ord

    async def pending_count(self, to_pk: str) -> int:
        def body() -> int:
            row = self._conn.execute("SELECT COUNT(*) FROM pending_messages WHERE to_pk = ?", (to_pk,)).fetchone()
            return int(row[0])

        return await self._run_inline("pending_count", body)

    def discard(self, rows: Iterable[tuple[str, str]]) -> None:
        """Delete these (recipient, row id) rows soon, in a batch; `fetch_pending` hides them right away.

        The recipient is part of the key so that one agent can never release another agent's row.
        """
        before = len(self._discards)
        self._discards.update(rows)
        if len(self._discards) != before:
            self._discard_wanted.set()

    async def flush_discards(self) -> None:
        """Delete every row passed to `discard` so far, `DISCARD_BATCH` rows per transaction."""
        while self._discards:
            batch = list(itertools.islice(self._discards, DISCARD_BATCH))

            def body(conn: sqlite3.Connection, batch: list[tuple[str, str]] = batch) -> None:
                conn.executemany(
                    "DELETE FROM pending_messages WHERE id = ? AND to_pk = ?", [(i, pk) for pk, i in batch]
                )
                for pk, _row in batch:
                    self._queued.pop(pk, None)

            await self._run_inline("delete_pending", self._tx, body)
            self._discards.difference_update(batch)
            if self._discards:
                await trio.lowlevel.checkpoint()  # a long backlog does not hold the event loop in one go

    async def _discard_loop(self) -> None:
        while True:
            await self._discard_wanted.wait()
            # Let deletions gather: one transaction for many rows costs a fraction of one per row, and
            # nothing waits for them (the rows are hidden from `fetch_pending` already).
            await trio.sleep(DISCARD_GATHER_S)
            self._discard_wanted = trio.Event()
            try:
                await self.flush_discards()
            except StoreError as exc:
                # The rows stay hidden from this process and are retried; at worst they are delivered again
                # after a restart, which the ratchet rejects as a replay. Never worth stopping the relay.
                self._log.error("store.delete_failed", error=str(exc), rows=len(self._discards))
                self._discard_wanted.set()
                await trio.sleep(1)

    # ------------------------------------------------------------------ invites

    async def publish_invite(
        self, invite_id: str, blob: str, inviter_pk: str, expires_at_ms: int, now_ms: int, quota: int
    ) -> PublishResult:
        """Store an invite unless ``inviter_pk`` already has ``quota`` open ones; a duplicate id keeps the first."""

        def body(conn: sqlite3.Connection) -> PublishResult:
            (open_count,) = conn.execute(
                "SELECT COUNT(*) FROM invites WHERE inviter_pk = ? AND claimed_at IS NULL AND expires_at > ?",
                (inviter_pk, now_ms),
            ).fetchone()
            if open_count >= quota:
                return "quota"
            conn.execute(
                "INSERT OR IGNORE INTO invites (invite_id, blob, inviter_pk, expires_at) VALUES (?, ?, ?, ?)",
                (invite_id, _sqlite_text(blob), inviter_pk, expires_at_ms),
            )
            return "ok"

        return await self._run_inline("publish_invite", self._tx, body)

    async def get_invite(self, invite_id: str) -> InviteRow | None:
        def body() -> InviteRow | None:
            row = self._conn.execute(
                "SELECT invite_id, inviter_pk, expires_at, claimed_at FROM invites WHERE invite_id = ?", (invite_id,)
            ).fetchone()
            if row is None:
                return None
            return InviteRow(row[0], row[1], int(row[2]), row[3] is not None)

        return await self._run_inline("get_invite", body)

    async def claim_invite(
        self,
        invite_id: str,
        now_ms: int,
        row_id: str,
        envelope: str,
        cap: int | None,
    ) -> tuple[ClaimResult, int | None]:
        """Mark the invite claimed and queue the SESSION_INIT ``envelope`` for its inviter, atomically.

        Exactly one of any number of concurrent claims succeeds: the UPDATE only matches an unclaimed,
        unexpired row. ``cap`` (the inviter's queue limit) is checked first unless None; a full queue
        leaves the invite unclaimed. Returns the outcome and the queued row's `ord`.
        """

        def body(conn: sqlite3.Connection) -> tuple[ClaimResult, int | None]:
            row = conn.execute(
                "SELECT inviter_pk, expires_at, claimed_at FROM invites WHERE invite_id = ?", (invite_id,)
            ).fetchone()
            if row is None:
                return "not_found", None
            inviter_pk, expires_at, claimed_at = row
            if claimed_at is not None:
                return "already_claimed", None
            if expires_at <= now_ms:
                return "expired", None
            if cap is not None:
                (count,) = conn.execute(
                    "SELECT COUNT(*) FROM pending_messages WHERE to_pk = ?", (inviter_pk,)
                ).fetchone()
                if count >= cap:
                    return "queue_full", None
            updated = conn.execute(
                "UPDATE invites SET claimed_at = ? WHERE invite_id = ? AND claimed_at IS NULL AND expires_at > ?",
                (now_ms // 1000, invite_id, now_ms),
            ).rowcount
            if updated != 1:
                return "already_claimed", None
            ord_ = _insert_pending(conn, inviter_pk, row_id, envelope, now_ms // 1000, None)
            self._queued.pop(inviter_pk, None)
            return "claimed", ord_

        return await self._run_inline("claim_invite", self._tx, body)

    # ------------------------------------------------------------------ health and maintenance

    async def counts(self) -> StoreCounts:
        """Rows in each table; deletions still gathering are committed first, so delivered rows never count."""
        await self.flush_discards()
        def body() -> StoreCounts:
            conn = self._conn
            agents = conn.execute("SELECT COUNT(*) FROM agents").fetchone()[0]
            pending = conn.execute("SELECT COUNT(*) FROM pending_messages").fetchone()[0]
            invites = conn.execute("SELECT COUNT(*) FROM invites").fetchone()[0]
            return StoreCounts(int(agents), int(pending), int(invites))

        return await self._run("counts", body)

    async def prune(self, now_ms: int, pending_ttl_s: float) -> PruneResult:
        """The reference's hourly prune: expired invites, old pending rows, old claimed invites, stale agents."""
        now_s = now_ms // 1000
        await self.flush_discards()

        def body(conn: sqlite3.Connection) -> PruneResult:
            invites = conn.execute(
                "DELETE FROM invites WHERE claimed_at IS NULL AND expires_at <= ?", (now_ms,)
            ).rowcount
            pending = conn.execute(
                "DELETE FROM pending_messages WHERE created_at < ?", (now_s - int(pending_ttl_s),)
            ).rowcount
            claimed = conn.execute(
                "DELETE FROM invites WHERE claimed_at IS NOT NULL AND claimed_at < ?",
                (now_s - CLAIMED_INVITE_RETENTION_S,),
            ).rowcount
            agents = conn.execute("DELETE FROM agents WHERE last_seen < ?", (now_s - AGENT_RETENTION_S,)).rowcount
            self._queued.clear()
            return PruneResult(invites, pending, claimed, agents)

        return await self._run("prune", self._tx, body)

    async def _checkpoint_loop(self) -> None:
        """Checkpoint the WAL in a worker thread whenever enough commits piled up (see the module docstring).

        PASSIVE through a connection of its own: it copies what no reader still needs, never waits for
        or blocks the event loop's writes, and lets the next write start the WAL over from its beginning.
        """
        if self._path is None:
            return
        limiter = trio.CapacityLimiter(1)  # the checkpoint connection's own: one thread call at a time
        checkpointer: sqlite3.Connection | None = None

        def checkpoint() -> None:
            nonlocal checkpointer
            if checkpointer is None:
                checkpointer = sqlite3.connect(self._path or "", check_same_thread=False, isolation_level=None)
                checkpointer.execute("PRAGMA busy_timeout = 5000")
            checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()  # to the end: no statement left open

        try:
            while True:
                await self._checkpoint_wanted.wait()
                self._checkpoint_wanted = trio.Event()
                self._commits = 0
                try:
                    await trio.to_thread.run_sync(checkpoint, limiter=limiter)
                except sqlite3.Error as exc:
                    # The WAL just grows until the next try (or the checkpoint at close); never worth stopping.
                    self._log.error("store.checkpoint_failed", error=f"{exc.__class__.__name__}: {exc}")
                    await trio.sleep(1)
                else:
                    self.checkpoints += 1
                    self._checkpointed.set()
                    self._checkpointed = trio.Event()
        finally:
            if checkpointer is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(checkpointer.close, limiter=limiter)

    async def wait_for_checkpoints(self, count: int) -> None:
        """Until the background task has run ``count`` checkpoints in all."""
        while self.checkpoints < count:
            await self._checkpointed.wait()

    async def _close(self) -> None:
        """Flush pending deletions, checkpoint the WAL into the main file, close."""
        try:
            await self.flush_discards()
        finally:

            def body() -> None:
                try:
                    if self._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    self._conn.close()

            await self._run("close", body)
            self._closed = True


def _sqlite_text(text: str) -> str:
    """``text`` as SQLite can hold it: a lone surrogate (a JSON string may escape one; UTF-8 cannot hold it) becomes
    U+FFFD, as Node's UTF-8 encoding makes it in the reference's database. Without this, binding it raises."""
    return text if text.isascii() else js_utf8_encode(text).decode("utf-8")


def _count_pending(conn: sqlite3.Connection, to_pk: str) -> int:
    (count,) = conn.execute("SELECT COUNT(*) FROM pending_messages WHERE to_pk = ?", (to_pk,)).fetchone()
    return int(count)


def _insert_pending(
    conn: sqlite3.Connection, to_pk: str, row_id: str, envelope: str, now_s: int, cap: int | None
) -> int | None:
    if cap is not None and _count_pending(conn, to_pk) >= cap:
        return None
    cursor = conn.execute(
        "INSERT INTO pending_messages (id, to_pk, envelope, created_at) VALUES (?, ?, ?, ?)",
        (row_id, to_pk, envelope, now_s),
    )
    return int(cursor.lastrowid or 0)


def _connect(path: str) -> sqlite3.Connection:
    if path != MEMORY_DB:
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = str(Path(path).expanduser())
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode: a committed row survives a crash of the process (what "queued" promises);
        # only a power loss can drop the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        # Checkpoints run in a thread of their own (RelayStore._checkpoint_loop), never inside a commit.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _wal_database_file(conn: sqlite3.Connection) -> str | None:
    """The main database's file when it is in WAL mode (the checkpointer opens it too), else None."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        return None
    for _seq, name, file in conn.execute("PRAGMA database_list"):
        if name == "main" and file:
            return str(file)
    return None


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring a reference relay's database (no `ord`, no `acks_deliveries`) up to it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        pending_columns = _columns(conn, "pending_messages")
        if pending_columns and "ord" not in pending_columns:
            conn.execute("ALTER TABLE pending_messages RENAME TO pending_messages_v0")
            conn.execute("DROP INDEX IF EXISTS idx_pending_to")
        agent_columns = _columns(conn, "agents")
        if agent_columns and "acks_deliveries" not in agent_columns:
            conn.execute("ALTER TABLE agents ADD COLUMN acks_deliveries INTEGER NOT NULL DEFAULT 0")
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        if pending_columns and "ord" not in pending_columns:
            conn.execute(
                "INSERT INTO pending_messages (id, to_pk, envelope, created_at)"
                " SELECT id, to_pk, envelope, created_at FROM pending_messages_v0 ORDER BY created_at, rowid"
            )
            conn.execute("DROP TABLE pending_messages_v0")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@asynccontextmanager
async def open_store(path: str, log: Logger | None = None) -> AsyncIterator[RelayStore]:
    """Open (creating or migrating) the database at ``path`` and run its deletion batcher until exit."""
    try:
        conn = await trio.to_thread.run_sync(_connect, path)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open relay database {path}: {exc}") from exc
    store = RelayStore(conn, log or Logger("relay.store"), _wal_database_file(conn))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store._discard_loop)
            nursery.start_soon(store._insert_loop)
            nursery.start_soon(store._checkpoint_loop)
            try:
                yield store
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await store._close()


def now_ms() -> int:
    """Wall-clock milliseconds, the unit of `ts` and `expires_at` on the wire."""
    return time.time_ns() // 1_000_000
