"""The client's durable state in one SQLite file: sessions, peers, issued invites, outbox, journal.

Why one database and not a file per session: receiving a message changes two things that must move
together (the ratchet state, which must not accept the frame twice, and the journal, which must not
lose it), and sending changes two more (the ratchet state, which must never reuse a message key, and
the outbox, which must not lose the sealed frame). One SQLite transaction makes each pair atomic.

Durability comes in two steps, so that the fsync is paid where it protects something and nowhere else:

* **commit** (WAL, ``synchronous=NORMAL``): the transaction is atomic and survives a crash or a kill
  of the daemon at any point (the kernel holds the pages). Subscribers may see a message from here on.
* **flush** (`ClientStore.flush`: an fdatasync of the WAL, off the event loop): everything committed so
  far also survives a power cut or a kernel crash. Nothing leaves the machine before the commits it
  depends on are flushed: the relay connection flushes before it writes any frame, so a sealed frame
  goes out only once its ratchet state is on disk (a message key is never reused, even after a power
  cut) and a DELIVERY_ACK only once the journal line it acknowledges is.

One flush covers every commit before it, so back-to-back messages share one. A full disk surfaces at
commit as `StoreFullError` and the transaction rolls back, so the ratchet state stays consistent; a
flush the disk refuses poisons the store (`StoreFlushError`): nothing more may leave.

The message path's statements (a few rows, no fsync) run on the event loop through `ClientStore.now`:
a worker-thread round trip costs more than the statements. Everything else, and every flush and WAL
checkpoint, runs in a worker thread through `ClientStore.call`; both are serialised by one
CapacityLimiter(1) because one sqlite3 connection must not be used by two threads at once.
"""

import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import attrs
import trio

P = ParamSpec("P")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    pk TEXT PRIMARY KEY,
    alias TEXT,
    relay_url TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state BLOB NOT NULL,
    handshake TEXT NOT NULL DEFAULT 'established',
    version INTEGER NOT NULL DEFAULT 2
);
CREATE UNIQUE INDEX IF NOT EXISTS peers_alias ON peers(alias) WHERE alias IS NOT NULL;
CREATE TABLE IF NOT EXISTS invites (
    invite_id TEXT PRIMARY KEY,
    nonce TEXT NOT NULL UNIQUE,
    relay_url TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    redeemed_by TEXT,
    options TEXT NOT NULL DEFAULT '{}',
    version INTEGER NOT NULL DEFAULT 2
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL UNIQUE,
    relay_url TEXT NOT NULL,
    peer_pk TEXT NOT NULL,
    frame TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS early_frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    peer_pk TEXT NOT NULL,
    msg_id TEXT NOT NULL,
    frame TEXT NOT NULL,
    UNIQUE (peer_pk, msg_id)
);
CREATE TABLE IF NOT EXISTS journal (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id TEXT NOT NULL,
    peer_pk TEXT NOT NULL,
    direction TEXT NOT NULL CHECK (direction IN ('in', 'out')),
    text TEXT NOT NULL,
    ts INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT '',
    UNIQUE (peer_pk, direction, msg_id)
);
"""


# A flush checkpoints the WAL into the database (in a worker thread) after this many commits. The WAL is
# then rewritten from its start, in place: an fdatasync of blocks the file already has commits no file
# size change (no filesystem journal commit), ~90 us instead of ~140 us per flush on this disk, and
# does not queue behind other files' fsyncs. `journal_size_limit` caps what a burst leaves behind.
CHECKPOINT_COMMITS = 500
WAL_SIZE_LIMIT = 8 * 1024 * 1024

_PEER_COLUMNS = "pk, alias, relay_url, created_at, state, handshake, version"
_INVITE_COLUMNS = "invite_id, nonce, relay_url, expires_at, created_at, redeemed_by, options, version"


class StoreError(Exception):
    """The client database failed; the message names the file and what to do."""


class StoreFullError(StoreError):
    """The disk (or the database's size limit) is full: nothing was written."""


class StoreFlushError(StoreError):
    """The disk refused to flush committed data: what the kernel holds may never reach it.

    After a failed fsync the kernel may drop the dirty pages and report the next fsync clean, so a
    retry proves nothing: the store stays failed and nothing more may leave until the daemon restarts
    (SQLite then recovers whatever did reach the disk).
    """


@attrs.frozen
class PeerRow:
    pk: str
    alias: str | None
    relay_url: str
    created_at: int
    state: bytes
    handshake: str
    version: int = 2  # protocol of the session: 2 (the reference's) or 3 (ours)


@attrs.frozen
class InviteRow:
    invite_id: str
    nonce: str
    relay_url: str
    expires_at: int
    created_at: int
    redeemed_by: str | None
    options: str
    version: int = 2


@attrs.frozen
class OutboxRow:
    id: int
    msg_id: str
    relay_url: str
    peer_pk: str
    frame: str


@attrs.frozen
class JournalRow:
    cursor: int
    msg_id: str
    peer_pk: str
    direction: str
    text: str
    ts: int
    status: str


def claim_state(handshake: str) -> dict[str, Any]:
    """A peer's handshake column read as our claim waiting for its answer ({"state": "claimed" (v2) or
    "claimed-v3", ...}); empty for anything else ("established", "closed", or a column that does not read)."""
    if not handshake.startswith("{"):
        return {}
    try:
        state = json.loads(handshake)
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def _now_ms() -> int:
    return int(time.time() * 1000)


class ClientStore:
    """Owns the client database; every table is read and written only through this class."""

    def __init__(self, path: Path, *, checkpoint_commits: int = CHECKPOINT_COMMITS) -> None:
        self.path = Path(path)
        self.wal_path = self.path.with_name(self.path.name + "-wal")
        self._limiter = trio.CapacityLimiter(1)
        self._checkpoint_commits = checkpoint_commits
        self._checkpointed_at = 0  # `_commits` when the last checkpoint started
        self._commits = 0  # transactions committed (written only under the limiter)
        self._flushed = 0  # of which the last completed flush covers this many
        self._flush_lock = trio.Lock()
        self._flush_failure: StoreFlushError | None = None
        self._wal_fd: int | None = None
        self.flushes = 0
        self.checkpoints = 0
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # Committed is crash-safe; `flush` makes it power-safe. Checkpoints run in `flush`, off the loop.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"cannot open the client database {self.path}: {exc}. It holds your sessions and messages, so it "
                "is left as it is: restore it from a backup, or move it aside to start over (peers then need new "
                "invites)"
            ) from exc

    def close(self) -> None:
        """Close the database (SQLite checkpoints the WAL into it and syncs it on the way out)."""
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self._db.close()

    def _migrate(self) -> None:
        """Columns added after the first release: add them to an older database in place."""
        for table in ("peers", "invites"):
            columns = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if "version" not in columns:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN version INTEGER NOT NULL DEFAULT 2")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one store method in a worker thread; a cancel waits for the statement to finish."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

    async def now(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one short store method on the event loop (the message path: a few rows, no fsync).

        Waits, without blocking the loop, while a worker thread has the connection.
        """
        async with self._limiter:
            return fn(*args, **kwargs)

    # -- flushing -------------------------------------------------------------------------------

    @property
    def unflushed(self) -> bool:
        """Whether some commit is not yet known to be on disk."""
        return self._flushed < self._commits

    async def flush(self) -> None:
        """Return once every transaction committed before this call is on disk (survives a power cut).

        Concurrent callers share one fdatasync; with nothing new committed it costs nothing. Every
        ``checkpoint_commits`` commits the flush is a checkpoint instead (SQLite syncs the WAL, copies it
        into the database and syncs that), so SQLite never checkpoints inside a commit on the event loop.
        Raises `StoreFlushError` once the disk has refused a flush, and on every call after that.
        """
        if self._flush_failure is not None:
            raise self._flush_failure
        if not self.unflushed:
            return
        async with self._flush_lock:
            target = self._commits
            if self._flushed >= target:
                return  # a flush that finished while we waited for the lock covered us
            if self._flush_failure is not None:
                raise self._flush_failure
            try:
                if target - self._checkpointed_at >= self._checkpoint_commits:
                    self._checkpointed_at = target
                    await self.call(self._checkpoint)
                    self.checkpoints += 1
                else:
                    await trio.to_thread.run_sync(self._sync_wal)
            except (OSError, sqlite3.Error) as exc:
                self._flush_failure = StoreFlushError(
                    f"the disk refused to flush {self.path} ({exc}): nothing more is sent or acknowledged; "
                    "check the disk, then restart the daemon"
                )
                raise self._flush_failure from exc
            self._flushed = max(self._flushed, target)
            self.flushes += 1

    def _sync_wal(self) -> None:
        """fdatasync the WAL through a descriptor of our own (kept open; reopened if the file was replaced)."""
        fd = self._wal_fd
        if fd is not None and os.fstat(fd).st_ino != self.wal_path.stat().st_ino:
            os.close(fd)
            fd = self._wal_fd = None
        if fd is None:
            fd = self._wal_fd = os.open(self.wal_path, os.O_RDONLY | os.O_CLOEXEC)
        os.fdatasync(fd)

    def _checkpoint(self) -> None:
        """Copy the WAL into the database; the next commit starts the WAL over from its first block."""
        busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if busy:  # cannot happen with our single connection; never report a flush that did not happen
            raise sqlite3.OperationalError("WAL checkpoint was blocked")
        self._sync_wal()  # what SQLite had nothing left to copy it may not have synced: a flush is a flush

    # -- transactions ---------------------------------------------------------------------------

    def _tx(self, body: Callable[[sqlite3.Connection], T]) -> T:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._db)
            except BaseException:
                if self._db.in_transaction:  # SQLite already rolled back on SQLITE_FULL
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._commits += 1
            return result
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            text = str(exc)
            if "full" in text:
                raise StoreFullError(f"disk full while writing {self.path}: nothing was saved ({text})") from exc
            raise StoreError(f"client database {self.path} failed: {text}") from exc

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"client database {self.path} failed: {exc}") from exc

    # -- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._tx(lambda db: db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)))

    # -- peers ----------------------------------------------------------------------------------

    def peers(self) -> list[PeerRow]:
        rows = self._query(f"SELECT {_PEER_COLUMNS} FROM peers ORDER BY created_at")
        return [PeerRow(*r) for r in rows]

    def peer(self, pk: str) -> PeerRow | None:
        rows = self._query(f"SELECT {_PEER_COLUMNS} FROM peers WHERE pk = ?", (pk,))
        return PeerRow(*rows[0]) if rows else None

    def add_peer(self, pk: str, relay_url: str, state: bytes, handshake: str, alias: str | None = None,
                 invite_id: str | None = None, version: int = 2, meta: dict[str, str] | None = None,
                 outbox_frame: tuple[str, str] | None = None, replace_unanswered: bool = False,
                 replace_open_v2: bool = False) -> bool:
        """Insert a new peer; False when the peer already exists (a duplicate SESSION_INIT is ignored).

        A peer whose session was closed is replaced: a closed session ends a conversation, and the next
        one starts with a new invite. With ``replace_unanswered`` (accepting a new invite) so is our v3
        claim that the inviter never answered, with the frames kept for it; with ``replace_open_v2`` (a
        new v2 invite) so is an open v2 session, as the reference does: a TypeScript peer that lost its
        session starts over with a fresh invite (the invite, redeemed here, stops any replay).

        With ``invite_id`` the invite is marked redeemed in the same transaction, so an invite can
        create at most one session even if two SESSION_INITs race; ``meta`` (e.g. the v3 invite
        registry that the redemption changed) is written in that transaction too, and so is
        ``outbox_frame`` (msg_id, frame text): the inviter's SESSION_ACK, sent from the outbox like any
        other frame, so a crash or a dropped connection cannot leave the invitee waiting forever.
        """

        def body(db: sqlite3.Connection) -> bool:
            existing = db.execute("SELECT handshake, version FROM peers WHERE pk = ?", (pk,)).fetchone()
            replaceable = existing is not None and (
                existing[0] == "closed"
                or (replace_unanswered and claim_state(existing[0]).get("state") == "claimed-v3")
                or (replace_open_v2 and version == 2 and existing[1] == 2)
            )
            if existing is not None and not replaceable:
                return False
            if invite_id is not None:
                cur = db.execute(
                    "UPDATE invites SET redeemed_by = ? WHERE invite_id = ? AND redeemed_by IS NULL", (pk, invite_id)
                )
                if cur.rowcount != 1:
                    return False
            if existing is not None:
                db.execute("DELETE FROM peers WHERE pk = ?", (pk,))
                db.execute("DELETE FROM early_frames WHERE peer_pk = ?", (pk,))  # they belonged to that one
            db.execute(
                "INSERT INTO peers (pk, alias, relay_url, created_at, state, handshake, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (pk, alias, relay_url, _now_ms(), state, handshake, version),
            )
            for key, value in (meta or {}).items():
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
            if outbox_frame is not None:
                db.execute(
                    "INSERT INTO outbox (msg_id, relay_url, peer_pk, frame, created_at) VALUES (?, ?, ?, ?, ?)",
                    (outbox_frame[0], relay_url, pk, outbox_frame[1], _now_ms()),
                )
            return True

        return self._tx(body)

    def set_peer_state(self, pk: str, state: bytes, handshake: str | None = None) -> None:
        def body(db: sqlite3.Connection) -> None:
            if handshake is None:
                db.execute("UPDATE peers SET state = ? WHERE pk = ?", (state, pk))
            else:
                db.execute("UPDATE peers SET state = ?, handshake = ? WHERE pk = ?", (state, handshake, pk))

        self._tx(body)

    def delete_peer(self, pk: str) -> None:
        """Forget a peer whose handshake failed before any message (e.g. the relay refused the claim)."""
        self._tx(lambda db: db.execute("DELETE FROM peers WHERE pk = ?", (pk,)))

    def set_handshake(self, pk: str, handshake: str) -> None:
        self._tx(lambda db: db.execute("UPDATE peers SET handshake = ? WHERE pk = ?", (handshake, pk)))

    def set_alias(self, pk: str, alias: str | None) -> None:
        self._tx(lambda db: db.execute("UPDATE peers SET alias = ? WHERE pk = ?", (alias, pk)))

    # -- invites --------------------------------------------------------------------------------

    def add_invite(self, invite_id: str, nonce: str, relay_url: str, expires_at: int, options: str = "{}",
                   version: int = 2, meta: dict[str, str] | None = None) -> None:
        """Remember an invite we issued (and, for v3, the registry holding its secret) in one transaction."""

        def body(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO invites (invite_id, nonce, relay_url, expires_at, created_at, options, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (invite_id, nonce, relay_url, expires_at, _now_ms(), options, version),
            )
            for key, value in (meta or {}).items():
                db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

        self._tx(body)

    def invite(self, invite_id: str) -> InviteRow | None:
        rows = self._query(f"SELECT {_INVITE_COLUMNS} FROM invites WHERE invite_id = ?", (invite_id,))
        return InviteRow(*rows[0]) if rows else None

    def invite_by_nonce(self, nonce: str) -> InviteRow | None:
        rows = self._query(
            f"SELECT {_INVITE_COLUMNS} FROM invites WHERE nonce = ?",
            (nonce,),
        )
        return InviteRow(*rows[0]) if rows else None

    def invites(self) -> list[InviteRow]:
        rows = self._query(
            f"SELECT {_INVITE_COLUMNS} FROM invites ORDER BY created_at"
        )
        return [InviteRow(*r) for r in rows]

    # -- sending: ratchet state and sealed frame in one transaction ------------------------------

    def record_outgoing(self, peer_pk: str, state: bytes, msg_id: str, relay_url: str, frame: str,
                        text: str | None, ts: int, handshake: str | None = None) -> int:
        """Save the advanced ratchet state, the sealed frame (outbox) and the journal line together.

        Runs before the frame leaves: after a crash the frame is re-sent from the outbox and the
        ratchet never re-derives the same message key for another plaintext. Returns the outbox row's id.
        A frame with no ``text`` (a v3 CLOSE) is not journaled; ``handshake`` (e.g. "closed") is saved too.
        """

        def body(db: sqlite3.Connection) -> int:
            if handshake is None:
                db.execute("UPDATE peers SET state = ? WHERE pk = ?", (state, peer_pk))
            else:
                db.execute("UPDATE peers SET state = ?, handshake = ? WHERE pk = ?", (state, handshake, peer_pk))
            cur = db.execute(
                "INSERT INTO outbox (msg_id, relay_url, peer_pk, frame, created_at) VALUES (?, ?, ?, ?, ?)",
                (msg_id, relay_url, peer_pk, frame, ts),
            )
            assert cur.lastrowid is not None
            row_id = cur.lastrowid
            if text is not None:
                db.execute(
                    "INSERT INTO journal (msg_id, peer_pk, direction, text, ts, status) VALUES (?, ?, 'out', ?, ?, ?)",
                    (msg_id, peer_pk, text, ts, "pending"),
                )
            return row_id

        return self._tx(body)

    def outbox(self, relay_url: str) -> list[OutboxRow]:
        rows = self._query(
            "SELECT id, msg_id, relay_url, peer_pk, frame FROM outbox WHERE relay_url = ? ORDER BY id", (relay_url,)
        )
        return [OutboxRow(*r) for r in rows]

    def outbox_done(self, msg_id: str, status: str) -> None:
        """The relay ACKed the frame (delivered or queued): it leaves the outbox."""

        def body(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM outbox WHERE msg_id = ?", (msg_id,))
            db.execute("UPDATE journal SET status = ? WHERE msg_id = ? AND direction = 'out'", (status, msg_id))

        self._tx(body)

    # -- receiving: journal line and ratchet state in one transaction ----------------------------

    def has_message(self, peer_pk: str, msg_id: str) -> bool:
        """Whether this peer's message was already journaled (a relay redelivery after a crash)."""
        sql = "SELECT 1 FROM journal WHERE peer_pk = ? AND direction = 'in' AND msg_id = ?"
        return bool(self._query(sql, (peer_pk, msg_id)))

    def record_incoming(self, peer_pk: str, state: bytes, msg_id: str, text: str, ts: int) -> int | None:
        """Journal a decrypted message and save the ratchet state that consumed it; returns its cursor.

        None when the message was already journaled (a redelivery after a crash): nothing changes.
        """

        def body(db: sqlite3.Connection) -> int | None:
            seen = "SELECT 1 FROM journal WHERE peer_pk = ? AND direction = 'in' AND msg_id = ?"
            if db.execute(seen, (peer_pk, msg_id)).fetchone():
                return None
            db.execute("UPDATE peers SET state = ? WHERE pk = ?", (state, peer_pk))
            cur = db.execute(
                "INSERT INTO journal (msg_id, peer_pk, direction, text, ts) VALUES (?, ?, 'in', ?, ?)",
                (msg_id, peer_pk, text, ts),
            )
            return cur.lastrowid

        return self._tx(body)

    def append_journal(self, peer_pk: str, msg_id: str, text: str, ts: int) -> int:
        """Journal an incoming line that changes no ratchet state; returns its cursor."""

        def body(db: sqlite3.Connection) -> int:
            cur = db.execute(
                "INSERT INTO journal (msg_id, peer_pk, direction, text, ts) VALUES (?, ?, 'in', ?, ?)",
                (msg_id, peer_pk, text, ts),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

        return self._tx(body)

    # -- frames that arrived before their session could open them ----------------------------------

    def keep_early(self, peer_pk: str, msg_id: str, frame: str, limit: int) -> bool:
        """Keep a frame that overtook the handshake's answer; False when ``limit`` frames are kept already."""

        def body(db: sqlite3.Connection) -> bool:
            (count,) = db.execute("SELECT COUNT(*) FROM early_frames WHERE peer_pk = ?", (peer_pk,)).fetchone()
            if count >= limit:
                return False
            db.execute("INSERT OR IGNORE INTO early_frames (peer_pk, msg_id, frame) VALUES (?, ?, ?)",
                       (peer_pk, msg_id, frame))
            return True

        return self._tx(body)

    def early_frames(self, peer_pk: str) -> list[str]:
        rows = self._query("SELECT frame FROM early_frames WHERE peer_pk = ? ORDER BY id", (peer_pk,))
        return [row[0] for row in rows]

    def drop_early(self, peer_pk: str) -> None:
        self._tx(lambda db: db.execute("DELETE FROM early_frames WHERE peer_pk = ?", (peer_pk,)))

    def journal_since(self, cursor: int, limit: int = 1000, direction: str = "in") -> list[JournalRow]:
        rows = self._query(
            "SELECT cursor, msg_id, peer_pk, direction, text, ts, status FROM journal"
            " WHERE cursor > ? AND direction = ? ORDER BY cursor LIMIT ?",
            (cursor, direction, limit),
        )
        return [JournalRow(*r) for r in rows]

    def prune_journal(self, keep: int) -> int:
        """Keep the newest ``keep`` received messages (`listen --since`); returns how many were removed."""

        def body(db: sqlite3.Connection) -> int:
            row = db.execute(
                "SELECT cursor FROM journal WHERE direction = 'in' ORDER BY cursor DESC LIMIT 1 OFFSET ?", (keep,)
            ).fetchone()
            if row is None:
                return 0
            return db.execute("DELETE FROM journal WHERE direction = 'in' AND cursor <= ?", (row[0],)).rowcount

        return self._tx(body)

    def journal_oldest(self) -> int | None:
        rows = self._query("SELECT MIN(cursor) FROM journal WHERE direction = 'in'")
        return rows[0][0] if rows and rows[0][0] is not None else None

    def journal_tail(self) -> int:
        rows = self._query("SELECT COALESCE(MAX(cursor), 0) FROM journal")
        return int(rows[0][0])

    def count_messages(self, peer_pk: str | None = None) -> dict[str, int]:
        sql = "SELECT direction, COUNT(*) FROM journal"
        params: tuple[Any, ...] = ()
        if peer_pk is not None:
            sql += " WHERE peer_pk = ?"
            params = (peer_pk,)
        counts = {"in": 0, "out": 0}
        for direction, n in self._query(sql + " GROUP BY direction", params):
            counts[direction] = n
        return counts
