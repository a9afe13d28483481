"""The session manager: one ratchet session per peer, one connection per relay, durable in both directions.

The path of a message through this module:

send:    resolve peer -> (peer lock) encrypt -> store state + outbox + journal in one transaction
         -> hand the committed row to the relay's sender -> it sends rows in order -> relay ACK
         -> outbox row done
receive: DELIVERY -> signature -> (peer lock) decrypt -> store state + journal in one transaction (which
         also recognises a frame journaled before)
         -> subscribers -> the connection acknowledges the DELIVERY to the relay

A frame is sealed and saved before it leaves, so a crash re-sends the same sealed frame instead of
re-using a message key; a received frame is journaled before it is acknowledged, and journaled only
once (the journal is keyed by the sender's msg_id), so a crash between the two re-delivers it and the
duplicate is recognised.

The outbox table is the source of truth for what is still to be sent. While a relay connection stays
up, its sender takes rows just committed from memory (`_fresh`) rather than reading them back from
SQLite; after a start, a reconnect or any failed send it reads the table again (`_reread`), in order.
"""

import time
from collections.abc import Callable

import attrs
import trio

from agentroomd.client.connection import Backoff, ConnectionLost, DeliveryNotStored, RelayConnection
from agentroomd.client.handshakes import REGISTRY_KEY, Handshakes, InviteInfo
from agentroomd.client.journal import StoreJournal
from agentroomd.client.peer_session import Duplicate, PeerSession, SealError, v3_msg_id
from agentroomd.client.store import ClientStore, OutboxRow, PeerRow, StoreError
from agentroomd.control.api import ReceivedMessage
from agentroomd.log import Logger, short_pk
from ratchet import v3
from ratchet.encoding import b64u_encode
from ratchet.errors import RatchetError
from ratchet.frames import Ack, Delivery, Error, FrameError, Msg, SessionAck, SessionInit, parse_frame, serialize_frame
from ratchet.keys import KeyPair
from ratchet.rand import SYSTEM_RANDOM, RandomSource
from ratchet.signatures import verify_routed
from ratchet.v3.session import MAX_PLAINTEXT as V3_MAX_PLAINTEXT
from ratchet.v3.transport import routed_frame

V2_MAX_PLAINTEXT = 147_440  # 196,608 base64url chars of ciphertext, minus the 16-byte MAC
# One limit for every peer, whatever its protocol: v3's frame header makes its limit slightly lower.
MAX_PLAINTEXT_BYTES = min(V2_MAX_PLAINTEXT, V3_MAX_PLAINTEXT)
RETRY_DELAY_S = 1.0
EARLY_LIMIT = 1000  # frames kept per peer while its handshake is unfinished
PRUNE_INTERVAL_S = 300.0


class ClientError(Exception):
    """A request the user made cannot be done; ``kind`` names the case for the control plane."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@attrs.define
class Counters:
    received: int = 0
    sent: int = 0
    undecryptable: int = 0
    bad_signature: int = 0
    unknown_peer: int = 0
    duplicates: int = 0
    unsolicited_session_init: int = 0
    misaddressed: int = 0
    prune_failures: int = 0  # rounds of erasing expired keys that the store refused (retried every 300 s)


@attrs.define
class _SendWaiter:
    done: trio.Event = attrs.Factory(trio.Event)
    status: str = ""
    error: str | None = None


def now_ms() -> int:
    return int(time.time() * 1000)


def _refuse_closed(pk: str, session: PeerSession, consequence: str) -> None:
    """Raise the clear error for a v3 session that was closed, naming who closed it."""
    state = session.state
    if not isinstance(state, v3.Session) or not state.closed:
        return
    if state.closed_by_us and state.closed_by_peer:
        who = f"the session with {short_pk(pk)} was closed by both sides"
    elif state.closed_by_us:
        who = f"you closed the session with {short_pk(pk)} (`agentroomctl close`)"
    else:
        who = f"{short_pk(pk)} closed the session"
    raise ClientError("session_closed", f"{who}: {consequence}; a new conversation needs a new invite")


class SessionManager:
    """Owns every peer session, relay connection and outbox sender of one identity."""

    def __init__(
        self,
        identity: KeyPair,
        store: ClientStore,
        log: Logger,
        *,
        rng: RandomSource = SYSTEM_RANDOM,
        clock_ms: Callable[[], int] = now_ms,
        backoff_factory: Callable[[], Backoff] = Backoff,
        ping_interval_s: float = 30.0,
        journal_keep: int = 10_000,
    ) -> None:
        self.identity = identity
        self._ping_interval_s = ping_interval_s
        self._journal_keep = journal_keep
        self.pk = b64u_encode(identity.ed25519_pk)
        self.store = store
        self.journal = StoreJournal(store)
        self.log = log
        self.rng = rng
        self.clock_ms = clock_ms
        self.counters = Counters()
        self._backoff_factory = backoff_factory
        self._sessions: dict[str, PeerSession] = {}  # peers whose handshake is done (or v2-claimed)
        self._session_added = trio.Event()  # set, then replaced, when a peer's session appears
        self.handshakes = Handshakes(self)
        self._peers: dict[str, PeerRow] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._connections: dict[str, RelayConnection] = {}
        self._wake: dict[str, trio.Event] = {}
        self._fresh: dict[str, list[OutboxRow]] = {}  # per relay: rows committed since its sender last looked
        self._reread: dict[str, bool] = {}  # per relay: the sender must read the outbox table again
        self._send_waiters: dict[str, _SendWaiter] = {}
        self._nursery: trio.Nursery | None = None
        self._connection_scopes: dict[str, trio.CancelScope] = {}
        self.on_received: Callable[[ReceivedMessage], None] = lambda record: None
        self.on_peer: Callable[[str], None] = lambda pk: None
        # (invite_id, peer pk): one of our invites became a session (hosted rooms learn their guest here)
        self.on_invite_redeemed: Callable[[str, str], None] = lambda invite_id, pk: None
        # (peer pk, "peer" | "us"): a v3 session ended by an authenticated CLOSE (handlers end their exchange)
        self.on_session_closed: Callable[[str, str], None] = lambda pk, by: None
        # (peer pk, "peer" | "us", ms): the same, for the control plane's subscribers (the inbox); kept apart
        # from `on_session_closed`, which the rooms service sets, so that neither replaces the other
        self.on_session_closed_notice: Callable[[str, str, int], None] = lambda pk, by, ts: None

    # -- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus["SessionManager"] = trio.TASK_STATUS_IGNORED) -> None:
        """Load every peer, connect to every relay we have a peer or an open invite on, run until cancelled."""
        for row in await self.store.call(self.store.peers):
            try:
                if row.state:  # empty while a v3 handshake waits for the inviter's answer
                    self._sessions[row.pk] = PeerSession.load(row.version, row.state)
            except RatchetError as exc:
                raise StoreError(
                    f"session state of peer {short_pk(row.pk)} in {self.store.path} is corrupt: {exc}"
                ) from exc
            self._peers[row.pk] = row
        registry = await self.store.call(self.store.get_meta, REGISTRY_KEY)
        if registry is not None:
            try:
                self.handshakes.registry = v3.registry_from_json(registry.encode())
            except RatchetError as exc:
                raise StoreError(f"the v3 invite registry in {self.store.path} is corrupt: {exc}") from exc
        relays = {row.relay_url for row in self._peers.values()}
        relays |= {inv.relay_url for inv in await self.store.call(self.store.invites)
                   if inv.redeemed_by is None and inv.expires_at > self.clock_ms()}
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for url in sorted(relays):
                self.connection(url)
            task_status.started(self)
            await self._prune_skipped_keys_forever()

    async def _prune_skipped_keys_forever(self) -> None:
        while True:
            try:
                await self.prune_expired_keys()
            except StoreError as exc:
                # A full or read-only disk: the expired keys stay on disk until a later round can erase them
                # (said in the log); sending and receiving go on, as they do through other failed writes.
                self.counters.prune_failures += 1
                self.log.error("prune.failed", error=str(exc))
            await trio.sleep(PRUNE_INTERVAL_S)

    async def prune_expired_keys(self) -> int:
        """Erase expired skipped message keys from memory and from disk; returns how many sessions changed."""
        changed = 0
        for pk in list(self._sessions):
            async with self._lock(pk):
                pruned = self._sessions[pk].prune(self.clock_ms())
                if pruned is not self._sessions[pk]:
                    await self.store.call(self.store.set_peer_state, pk, pruned.dump())
                    self._sessions[pk] = pruned
                    changed += 1
        async with self.handshakes.registry_lock:  # v3 invites past expiry: their secrets go too
            registry = self.handshakes.registry.prune(self.clock_ms())
            if registry != self.handshakes.registry:
                await self.store.call(self.store.set_meta, REGISTRY_KEY, v3.registry_to_json(registry).decode())
                self.handshakes.registry = registry
        await self.store.call(self.store.prune_journal, self._journal_keep)
        self.journal.refresh_oldest(await self.store.call(self.store.journal_oldest))
        return changed

    def connection(self, url: str) -> RelayConnection:
        """The connection to ``url``, started on first use (with its outbox sender)."""
        conn = self._connections.get(url)
        if conn is None:
            if self._nursery is None:
                raise RuntimeError("SessionManager.run() has not started")
            conn = RelayConnection(
                url, self.identity, self, self.log, rng=self.rng, clock_ms=self.clock_ms,
                backoff=self._backoff_factory(), on_connected=self._on_connected,
                ping_interval_s=self._ping_interval_s, before_send=self.store.flush,
            )
            self._connections[url] = conn
            self._wake[url] = trio.Event()
            self._fresh[url] = []
            self._reread[url] = True
            scope = self._connection_scopes[url] = trio.CancelScope()
            self._nursery.start_soon(self._run_connection, conn, scope)
        return conn

    async def _run_connection(self, conn: RelayConnection, scope: trio.CancelScope) -> None:
        """The connection and its outbox sender, under one scope so that `close_relay` can end both."""
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run)
                nursery.start_soon(self._outbox_sender, conn)

    def close_relay(self, url: str) -> bool:
        """Stop using the relay at ``url`` (a hosted room was stopped); False if we had no connection to it.

        Sealed frames for it stay in the outbox; `connection(url)` would start over and send them.
        """
        scope = self._connection_scopes.pop(url, None)
        if scope is None:
            return False
        scope.cancel()
        self._connections.pop(url, None)
        self._wake.pop(url, None)
        self._fresh.pop(url, None)
        self._reread.pop(url, None)
        return True

    def relays(self) -> list[RelayConnection]:
        return list(self._connections.values())

    async def wait_connected(self, url: str, timeout_s: float) -> RelayConnection:
        """The connection to ``url`` once it is up; ClientError after ``timeout_s``.

        A connection this call started for nothing else (an invite naming a relay that is down) is
        stopped again on failure: nothing would use it, and it would reconnect for as long as we run.
        """
        started_here = url not in self._connections
        conn = self.connection(url)
        with trio.move_on_after(timeout_s):
            await conn.wait_connected()
            return conn
        if started_here and not any(peer.relay_url == url for peer in self._peers.values()):
            self.close_relay(url)
        detail = f": {conn.last_error}" if conn.last_error else ""
        raise ClientError("relay_unreachable", f"cannot reach relay {url}{detail}; is it running and reachable?")

    # -- peers ----------------------------------------------------------------------------------

    def peers(self) -> list[PeerRow]:
        return sorted(self._peers.values(), key=lambda row: row.created_at)

    def peer_state(self, pk: str) -> str:
        """"established", "pending" (our v3 claim waits for the inviter's answer) or "closed" (by either side).

        Read from the session itself, not from the peers table's handshake column, so it cannot disagree
        with what `send_message` allows.
        """
        session = self._sessions.get(pk)
        if session is None:
            return "pending"
        if isinstance(session.state, v3.Session) and session.state.closed:
            return "closed"
        return "established"

    async def message_counts(self, pk: str) -> dict[str, int]:
        """Messages journaled with ``pk``: {"in": received, "out": sent}."""
        return await self.store.call(self.store.count_messages, pk)

    async def invite_redeemer(self, invite_id: str) -> str | None:
        """The peer that redeemed our invite ``invite_id``, if any (survives restarts: it is in the store)."""
        for row in await self.store.call(self.store.invites):
            if row.invite_id == invite_id:
                return row.redeemed_by
        return None

    def resolve_peer(self, ref: str) -> str:
        """A full public key, a unique prefix of one, or a local alias -> the full public key."""
        if ref in self._peers:
            return ref
        by_alias = [pk for pk, row in self._peers.items() if row.alias == ref]
        if by_alias:
            return by_alias[0]
        matches = [pk for pk in self._peers if pk.startswith(ref)] if ref else []
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ClientError("ambiguous_peer", f"{ref!r} matches {len(matches)} peers; give more characters")
        raise ClientError("unknown_peer", f"no peer {ref!r}: see `agentroomctl peers`, or accept an invite first")

    async def wait_session(self, pk: str) -> None:
        """Return once we hold a session with ``pk`` (its handshake finished); at once if we do already."""
        while pk not in self._sessions:
            await self._session_added.wait()

    def session_added(self) -> None:
        """A peer's session just appeared in ``_sessions``: wake every `wait_session`."""
        self._session_added.set()
        self._session_added = trio.Event()

    def _established(self, pk: str, detail: str) -> PeerSession:
        """The session with ``pk``; ClientError("handshake_pending", ...) while the inviter has not answered."""
        session = self._sessions.get(pk)
        if session is None:
            raise ClientError("handshake_pending", f"the handshake with {short_pk(pk)} is not finished yet: {detail}")
        return session

    def _lock(self, pk: str) -> trio.Lock:
        return self._locks.setdefault(pk, trio.Lock())

    # -- invites (see handshakes.py) ------------------------------------------------------------

    async def create_invite(self, relay_url: str, ttl_ms: int, timeout_s: float = 15.0,
                            advertised_url: str | None = None, version: int = 3) -> InviteInfo:
        """Create and publish an invite: v3 by default, v2 (``version=2``) for a TypeScript peer."""
        return await self.handshakes.create_invite(relay_url, ttl_ms, timeout_s, advertised_url, version)

    async def accept_invite(self, url: str, alias: str | None = None, timeout_s: float = 15.0,
                            wait_ack_s: float = 5.0) -> tuple[str, str, bool]:
        """Claim an invite (its URL says v2 or v3): (inviter pk, relay url, whether the inviter answered)."""
        return await self.handshakes.accept_invite(url, alias, timeout_s, wait_ack_s)

    # -- sending --------------------------------------------------------------------------------

    async def send_message(self, peer_ref: str, text: str, timeout_s: float = 30.0) -> tuple[str, str, str]:
        """Seal, save and send ``text``; returns (status, msg_id, peer pk) once the relay answered.

        Status is "delivered" or "queued" (the relay's word), or "pending" when the relay did not
        answer within ``timeout_s``: the sealed frame stays in the outbox and goes out, in order, as
        soon as the relay is reachable.
        """
        pk = self.resolve_peer(peer_ref)
        plaintext = text.encode("utf-8")
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise ClientError("too_large", f"message is {len(plaintext)} bytes; the limit is {MAX_PLAINTEXT_BYTES}")
        async with self._lock(pk):
            row = self._peers[pk]
            session = self._established(pk, "the inviter has not answered (is its daemon running?)")
            _refuse_closed(pk, session, "nothing more can be sent on it")
            ts = self.clock_ms()
            try:
                new_session, frame = session.seal(self.identity, self.pk, pk, plaintext, self.rng.uuid4(), ts,
                                                  self.rng)
            except SealError as exc:
                raise ClientError(exc.kind, f"cannot encrypt for {short_pk(pk)}: {exc}") from exc
            waiter = self._send_waiters[frame.msg_id] = _SendWaiter()
            sealed = serialize_frame(frame)
            try:
                row_id = await self.store.now(self.store.record_outgoing, pk, new_session.dump(), frame.msg_id,
                                               row.relay_url, sealed, text, ts)
            except StoreError as exc:
                self._send_waiters.pop(frame.msg_id, None)
                raise ClientError("store_failed", f"message not sent: {exc}") from exc
            self._sessions[pk] = new_session
            self._hand_to_sender(OutboxRow(row_id, frame.msg_id, row.relay_url, pk, sealed))
        self.counters.sent += 1
        self._wake[row.relay_url].set()
        return await self._relay_answer(waiter, frame.msg_id, timeout_s), frame.msg_id, pk

    def _hand_to_sender(self, row: OutboxRow) -> None:
        """A row just committed to the outbox goes to its relay's sender; call under the peer's lock.

        Under the peer lock, this peer's rows reach the sender in the order they were sealed. Offline,
        the row is left to the table (so an outage does not pile copies of the outbox up in memory),
        and the sender must then read the table before it takes anything from memory.
        """
        conn = self.connection(row.relay_url)
        if conn.is_connected and not self._reread[row.relay_url]:
            self._fresh[row.relay_url].append(row)
        else:
            self._reread[row.relay_url] = True

    async def _relay_answer(self, waiter: _SendWaiter, msg_id: str, timeout_s: float) -> str:
        """The relay's word on a frame handed to the sender: "delivered" / "queued", or "pending" in time."""
        try:
            with trio.move_on_after(timeout_s):
                await waiter.done.wait()
        finally:
            self._send_waiters.pop(msg_id, None)
        if not waiter.done.is_set():
            return "pending"
        if waiter.error is not None:
            raise ClientError("relay_refused", waiter.error)
        return waiter.status

    async def close_peer(self, peer_ref: str, timeout_s: float = 30.0) -> tuple[str, str, str]:
        """End the v3 session with a peer for good: seal, save and send its CLOSE; (status, msg_id, peer pk).

        The CLOSE is an authenticated end marker: the peer learns that the conversation ended here, so a
        relay that drops its tail cannot pass it off as complete. It takes the path of a message (state
        and sealed frame in one transaction, then the outbox sender) and answers with the relay's status
        the way `send_message` does. Afterwards nothing more is sent to the peer, also after a restart.
        """
        pk = self.resolve_peer(peer_ref)
        async with self._lock(pk):
            row = self._peers[pk]
            session = self._established(pk, "there is no session to close (the inviter has not answered)")
            if not isinstance(session.state, v3.Session):
                raise ClientError("close_unsupported", f"the session with {short_pk(pk)} speaks protocol v2 (a "
                                  "TypeScript peer), which has no authenticated close: nothing was sent. Tell the "
                                  "peer in a message that the conversation ends here, and stop writing to it")
            _refuse_closed(pk, session, "there is nothing left to close")
            ts = self.clock_ms()
            try:
                sealed_close = v3.close(session.state, self.identity, ts, self.rng)
            except RatchetError as exc:
                raise ClientError("session_error", f"cannot close the session with {short_pk(pk)}: {exc}") from exc
            frame = routed_frame(sealed_close.frame, v3_msg_id(sealed_close.frame.nonce), ts)
            new_session = PeerSession(3, sealed_close.state)
            waiter = self._send_waiters[frame.msg_id] = _SendWaiter()
            sealed = serialize_frame(frame)
            try:
                row_id = await self.store.now(self.store.record_outgoing, pk, new_session.dump(), frame.msg_id,
                                               row.relay_url, sealed, None, ts, handshake="closed")
            except StoreError as exc:
                self._send_waiters.pop(frame.msg_id, None)
                raise ClientError("store_failed", f"session not closed: {exc}") from exc
            self._sessions[pk] = new_session
            self._peers[pk] = attrs.evolve(row, handshake="closed")
            self._hand_to_sender(OutboxRow(row_id, frame.msg_id, row.relay_url, pk, sealed))
        self.log.info("session.closed_by_us", peer=short_pk(pk))
        self.on_session_closed(pk, "us")
        self.on_session_closed_notice(pk, "us", ts)
        self._wake[row.relay_url].set()
        return await self._relay_answer(waiter, frame.msg_id, timeout_s), frame.msg_id, pk

    async def _outbox_sender(self, conn: RelayConnection) -> None:
        """Sends this relay's outbox in order, one frame at a time, each until the relay answers it.

        Rows come from `_fresh` while all is well; from the table after a start, a reconnect or a failed
        send. A row committed while the table was being read may be in both: ``read_last`` skips it.
        """
        url = conn.url
        read_last: set[str] = set()
        while True:
            wake = self._wake[url]
            await conn.wait_connected()
            if self._reread[url]:
                self._reread[url] = False
                self._fresh[url] = []  # every row in it is committed, so in the table
                rows = await self.store.call(self.store.outbox, url)
                read_last = {row.msg_id for row in rows}
            else:
                rows = sorted((row for row in self._fresh[url] if row.msg_id not in read_last), key=lambda r: r.id)
                self._fresh[url] = []
            if not rows:
                await wake.wait()
                self._wake[url] = trio.Event()
                continue
            for row in rows:
                try:
                    answer = await self._request(conn, row.msg_id, row.frame, 30.0)
                except ClientError:
                    # connection dropped or relay silent: wait for the reconnect, then resend in order
                    self._reread[url] = True
                    break
                if isinstance(answer, Ack) and answer.status in ("delivered", "queued"):
                    await self._outbox_done(url, row.msg_id, answer.status)
                    self._finish_send(row.msg_id, answer.status, None)
                    continue
                code = answer.code if isinstance(answer, Error) else "ACK_ERROR"
                message = answer.message if isinstance(answer, Error) else (answer.error or "")
                # INTERNAL: the relay's own storage failed on this frame; it takes it once its disk recovers
                if code in ("RATE_LIMIT", "ACK_ERROR", "UNAUTH", "INTERNAL"):
                    self.log.warn("outbox.retry", relay=url, code=code)
                    self._reread[url] = True
                    await trio.sleep(RETRY_DELAY_S)
                    break
                # The relay will never take this frame (malformed by its rules): drop it, tell the sender.
                self.log.error("outbox.rejected", relay=url, code=code, msg_id=row.msg_id)
                await self._outbox_done(url, row.msg_id, "failed")
                self._finish_send(row.msg_id, "failed", f"relay rejected the message: {code} {message}")

    async def _outbox_done(self, url: str, msg_id: str, status: str) -> None:
        """Take an answered frame out of the outbox; a store that cannot write (full disk) keeps the row.

        The relay has the frame, so the sender goes on: the row is sent again after the next reconnect,
        and the receiver recognises the copy (the message key is spent, the journal knows its msg_id).
        """
        try:
            await self.store.now(self.store.outbox_done, msg_id, status)
        except StoreError as exc:
            self.log.error("outbox.not_recorded", relay=url, msg_id=msg_id, error=str(exc))

    def _finish_send(self, msg_id: str, status: str, error: str | None) -> None:
        waiter = self._send_waiters.get(msg_id)
        if waiter is not None:
            waiter.status, waiter.error = status, error
            waiter.done.set()

    async def _on_connected(self, conn: RelayConnection) -> None:
        if conn.url in self._reread:
            self._reread[conn.url] = True
        self._wake[conn.url].set()
        await trio.lowlevel.checkpoint()

    async def _request(self, conn: RelayConnection, msg_id: str, text: str, timeout_s: float) -> Ack | Error:
        try:
            with trio.fail_after(timeout_s):
                return await conn.request(msg_id, text)
        except ConnectionLost as exc:
            raise ClientError("relay_unreachable", str(exc)) from exc
        except trio.TooSlowError as exc:
            raise ClientError("timeout", f"relay {conn.url} did not answer within {timeout_s:g} s") from exc

    # -- receiving ------------------------------------------------------------------------------

    async def on_delivery(self, conn: RelayConnection, delivery: Delivery) -> None:
        """Handle one DELIVERY; returns once it is safe for the relay to forget it.

        A store failure (full disk, I/O error) raises DeliveryNotStored: the connection drops without
        acknowledging, and the relay hands the frame over again after the reconnect.
        """
        try:
            await self._on_delivery(conn, delivery)
        except StoreError as exc:
            self.log.error("delivery.not_stored", relay=conn.url, error=str(exc))
            raise DeliveryNotStored(f"could not store a delivery: {exc}") from exc

    async def _on_delivery(self, conn: RelayConnection, delivery: Delivery) -> None:
        routed = delivery.routed
        if routed.to != self.pk:
            self.counters.misaddressed += 1
            self.log.warn("delivery.misaddressed", relay=conn.url)
            return
        if not verify_routed(routed.from_, routed.to, routed.seq, routed.nonce, routed.sig):
            self.counters.bad_signature += 1
            self.log.warn("delivery.bad_signature", relay=conn.url, peer=short_pk(routed.from_), type=routed.TYPE)
            return
        if isinstance(routed, SessionInit):
            await self.handshakes.on_session_init(conn, routed)
        elif isinstance(routed, SessionAck):
            await self.handshakes.on_session_ack(routed)
        else:
            await self._on_msg(routed, signature_verified=True)

    async def _on_msg(self, msg: Msg, *, signature_verified: bool = False) -> None:
        pk = msg.from_
        if pk not in self._sessions and pk in self._peers:
            # Our handshake with this peer waits for its answer, which this frame overtook (v3 lets the
            # inviter speak first). Keep it, durably, and open it once the session exists.
            kept = await self.store.call(self.store.keep_early, pk, msg.msg_id, serialize_frame(msg), EARLY_LIMIT)
            self.log.info("message.early", peer=short_pk(pk), kept=kept)
            if not kept:
                self.counters.undecryptable += 1
            return
        if pk not in self._sessions:
            self.counters.unknown_peer += 1
            self.log.warn("message.unknown_peer", peer=short_pk(pk))
            return
        async with self._lock(pk):
            # A frame already journaled (the relay delivers it again after a crash or a lost
            # DELIVERY_ACK) is recognised without a store round trip on the common path: its message
            # key is spent, so opening it fails (then the journal says whether it is a duplicate), and
            # should it open anyway, `record_incoming` finds it in the same transaction and changes nothing.
            try:
                new_session, kind, plaintext = self._sessions[pk].open(msg, self.clock_ms(),
                                                                      signature_verified=signature_verified)
            except Duplicate:
                self.counters.duplicates += 1
                return
            except RatchetError as exc:
                if await self.store.now(self.store.has_message, pk, msg.msg_id):
                    self.counters.duplicates += 1
                    return
                self.counters.undecryptable += 1
                self.log.warn("message.undecryptable", peer=short_pk(pk), seq=msg.seq, reason=type(exc).__name__)
                return
            if kind == "close":
                # the peer ended the session (v3's authenticated end marker): keep its state, say so
                await self.store.call(self.store.set_peer_state, pk, new_session.dump(), "closed")
                self._sessions[pk] = new_session
                self._peers[pk] = attrs.evolve(self._peers[pk], handshake="closed")
                self.log.info("session.closed_by_peer", peer=short_pk(pk))
                self.on_session_closed(pk, "peer")
                self.on_session_closed_notice(pk, "peer", self.clock_ms())
                return
            text = plaintext.decode("utf-8", errors="replace")
            ts = self.clock_ms()
            cursor = await self.store.now(self.store.record_incoming, pk, new_session.dump(), msg.msg_id, text, ts)
            if cursor is None:  # journaled before: the stored session did not change, so neither does ours
                self.counters.duplicates += 1
                return
            self._sessions[pk] = new_session
            # no checkpoint between the journal advancing and the announcement: no subscriber can miss it
            self.journal.advanced_to(cursor)
            self.on_received(ReceivedMessage(cursor=cursor, from_=pk, text=text, msg_id=msg.msg_id, ts=ts))
        self.counters.received += 1
        self.handshakes.mark_established(pk)

    async def open_early_frames(self, pk: str) -> None:
        """The handshake with ``pk`` just finished: open the frames that overtook its answer, in order."""
        kept = await self.store.call(self.store.early_frames, pk)
        if not kept:
            return
        for text in kept:
            try:
                frame = parse_frame(text)
            except FrameError:
                continue
            if isinstance(frame, Msg):
                await self._on_msg(frame)  # journaled (or refused) one by one; a crash here replays the rest
        await self.store.call(self.store.drop_early, pk)

    def outbox_changed(self, relay_url: str) -> None:
        """Rows were committed to the outbox outside `send_message`: the sender re-reads the table."""
        self.connection(relay_url)
        self._reread[relay_url] = True
        self._wake[relay_url].set()
