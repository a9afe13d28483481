"""The relay as an ASGI application: HTTP routes (/health, /metrics, /auth/challenge) and the WebSocket /ws.

The protocol is the reference's v2 (agentroom-reference.md §2.3, §3.2, §3.3): a reference client
sees the same frames, codes and texts (tests/relay/test_vectors.py replays its recorded handshake
byte for byte). Where we differ, a reference client either cannot tell or is better off:

* ERROR frames carry `ref_msg_id`, the frame they answer (extension; the reference strips it);
* HELLO `acks_deliveries: true` (extension): rows are kept until the client's DELIVERY_ACK;
* a recipient gets its queued frames before any newer live one (the reference let them overtake),
  ordered exactly (the reference ordered by 1-second timestamps);
* a claim and its SESSION_INIT are stored in one transaction; INVITE_CLAIM's `from` must be the
  authenticated key, as for routed frames;
* a token resume replaces an older socket of the same key (the reference left a ghost);
* unauthenticated sockets time out (1008), and every frame, authenticated or not, valid or not,
  counts against a rate limit (the reference limited only authenticated, valid frames);
* oversize messages are measured in UTF-8 bytes and closed with 1009 by the app, so they are counted.

`RelayApp` holds no sockets itself: hypercorn calls it once per HTTP request or WebSocket. Its
long-lived parts (store, hub, buckets) are created by `server.serve_relay`, which also owns shutdown.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import trio

from agentroomd.log import LEVELS, Logger, short_pk
from agentroomd.relay.auth import ChallengeBook, TokenBuckets, mint_token, verify_token
from agentroomd.relay.config import RelayConfig
from agentroomd.relay.connection import Connection
from agentroomd.relay.hub import Hub, wall_ms
from agentroomd.relay.metrics import Metrics
from agentroomd.relay.store import RelayStore, StoreError
from agentroomd.relay.wire import ack_text, parse_client_frame, routed_text
from ratchet.frames import (
    Ack,
    AckStatus,
    Delivery,
    DeliveryAck,
    Error,
    Frame,
    FrameError,
    Hello,
    HelloAck,
    InviteClaim,
    InvitePublish,
    Msg,
    Ping,
    Pong,
    SessionAck,
    SessionInit,
    make_ack,
    make_error,
    make_hello_ack,
    pong_for,
    routed_from_claim,
    serialize_frame,
)
from ratchet.jsjson import encodes_as_utf8
from ratchet.rand import SYSTEM_RANDOM, RandomSource
from ratchet.signatures import verify_hello, verify_routed

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
PROMETHEUS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
MAINTENANCE_INTERVAL_S = 60
DAY_MS = 86_400_000


class RelayApp:
    """The ASGI callable. ``wall_ms`` (wire timestamps, tokens, invite expiry) and ``clock`` (rate limits,
    challenge TTL) are injectable so tests can move time."""

    def __init__(
        self,
        config: RelayConfig,
        store: RelayStore,
        *,
        log: Logger | None = None,
        rng: RandomSource = SYSTEM_RANDOM,
        wall_ms: Callable[[], int] = wall_ms,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert config.hmac_secret is not None, "call ensure_hmac_secret(config) first"
        self.config = config
        self.store = store
        self.log = log or Logger("relay", level=config.log_level)
        self.rng = rng
        self.wall_ms = wall_ms
        self.metrics = Metrics()
        self.hub = Hub(config, store, self.metrics, self.log, rng, wall_ms)
        disabled = config.rate_limit_disabled
        self.challenges = ChallengeBook(config.challenge_ttl_s, config.max_outstanding_challenges, clock, rng)
        self.challenge_buckets = TokenBuckets(config.challenge_per_min, config.challenge_per_min / 60, clock, disabled)
        self.hello_fail_buckets = TokenBuckets(
            config.hello_failures_per_min, config.hello_failures_per_min / 60, clock, disabled
        )
        self.frame_buckets = TokenBuckets(config.frame_burst, config.frames_per_min / 60, clock, disabled)
        self.connections: set[Connection] = set()
        self.shutting_down = False
        self._all_closed = trio.Event()
        self._all_closed.set()
        self._started = time.monotonic()
        self._secrets = [s for s in (config.hmac_secret, config.hmac_secret_previous) if s]

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, send)
        elif kind == "websocket":
            await self._websocket(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        # The store and background tasks belong to serve_relay's nursery; nothing to start here.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------------ HTTP

    async def _http(self, scope: Scope, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        if method in ("GET", "HEAD") and path == "/health":
            await self._health(send)
        elif method in ("GET", "HEAD") and path == "/metrics":
            await self._metrics(scope, send)
        elif method in ("GET", "HEAD") and path == "/auth/challenge":
            await self._challenge(scope, send)
        else:
            await _respond_json(send, 404, {"error": "not found"})

    async def _health(self, send: Send) -> None:
        uptime = int(time.monotonic() - self._started)
        try:
            counts = await self.store.counts()
        except StoreError as exc:
            self.metrics.inc("store_errors_total")
            self.log.error("health.db_error", error=str(exc))
            body = {"ok": False, "db": "error", "uptime_s": uptime}
            await _respond_json(send, 503, body)
            return
        body = {
            "ok": True,
            "db": "ok",
            "agents": counts.agents,
            "pending": counts.pending,
            "invites": counts.invites,
            "connections": len(self.connections),
            "uptime_s": uptime,
        }
        await _respond_json(send, 200, body)

    def gauges(self) -> dict[str, int]:
        return {
            "ws_connections": len(self.hub.agents),
            "connections_open": len(self.connections),
            "uptime_s": int(time.monotonic() - self._started),
        }

    async def _metrics(self, scope: Scope, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        accept = _header(scope, b"accept") or ""
        wants_text = query.get("format", [""])[0] == "prometheus" or (
            "text/plain" in accept and "application/json" not in accept
        )
        if wants_text:
            body = self.metrics.as_prometheus(self.gauges()).encode()
            await _respond(send, 200, body, [(b"content-type", PROMETHEUS_CONTENT_TYPE)])
        else:
            await _respond_json(send, 200, self.metrics.as_json(self.gauges()))

    def client_ip(self, scope: Scope) -> str:
        """The rate-limit identity of a request: the socket's address, or X-Forwarded-For's first entry if trusted."""
        if self.config.trust_proxy:
            forwarded = _header(scope, b"x-forwarded-for")
            if forwarded:
                first = forwarded.split(",", 1)[0].strip()
                if first:
                    return first
        return _peer_ip(scope)

    async def _challenge(self, scope: Scope, send: Send) -> None:
        if not self.challenge_buckets.take(f"challenge:{self.client_ip(scope)}"):
            self.metrics.inc("rate_limit_hits")
            await _respond_json(send, 429, {"error": "too many requests"})
            return
        challenge = self.challenges.issue()
        if challenge is None:
            self.metrics.inc("rate_limit_hits")
            await _respond_json(send, 503, {"error": "too many outstanding challenges"})
            return
        self.metrics.inc("challenges_issued")
        await _respond_json(send, 200, {"challenge": challenge})

    # ------------------------------------------------------------------ WebSocket

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        if scope["path"] != "/ws":
            await _reject(send, 404, b'{"error":"not found"}')
            return
        if self.shutting_down or len(self.connections) >= self.config.max_connections:
            self.metrics.inc("connections_refused_total")
            reason = "shutting_down" if self.shutting_down else "max_connections"
            self.log.warn("upgrade.refused", reason=reason)
            await _reject(send, 503, b"")
            return
        conn = Connection(self.hub, self.client_ip(scope), _peer_ip(scope), self.config.backpressure_bytes)
        self.connections.add(conn)
        self._all_closed = trio.Event() if self._all_closed.is_set() else self._all_closed
        self.metrics.inc("connections_total")
        try:
            await send({"type": "websocket.accept"})
            await conn.run(send, lambda: self._serve_socket(conn, scope, receive))
        except Exception as exc:
            # One broken connection must never take the relay down; it is logged and counted, and closed 1011.
            self.log.error("ws.internal_error", error=f"{exc.__class__.__name__}: {exc}", conn=conn.id)
            self.metrics.error("INTERNAL")
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await send({"type": "websocket.close", "code": 1011, "reason": "internal error"})
        finally:
            self.hub.unregister(conn)
            self.connections.discard(conn)
            if not self.connections:
                self._all_closed.set()

    async def _serve_socket(self, conn: Connection, scope: Scope, receive: Receive) -> None:
        token = _bearer_token(scope)
        if token is not None:
            await self._resume(conn, token)
        async with trio.open_nursery() as nursery:
            if not conn.authenticated:
                nursery.start_soon(self._auth_deadline, conn)
            await self._read_loop(conn, receive)
            nursery.cancel_scope.cancel()

    async def _auth_deadline(self, conn: Connection) -> None:
        await trio.sleep(self.config.auth_timeout_s)
        if not conn.authenticated and not conn.closing:
            self.metrics.inc("auth_timeouts_total")
            self.metrics.error("AUTH_TIMEOUT")
            conn.close(1008, "authentication timeout", drain=True)

    async def _read_loop(self, conn: Connection, receive: Receive) -> None:
        limit = self.config.ws_max_payload
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return  # websocket.disconnect
            if conn.closing:
                continue  # closing: drain the socket until the peer's close arrives
            self.metrics.inc("frames_received_total")
            data: str | bytes | None = message.get("text")
            if data is None:
                data = message.get("bytes") or b""
            if _payload_bytes(data, limit) > limit:
                self.metrics.inc("oversize_frames_total")
                self.metrics.error("MESSAGE_TOO_BIG")
                conn.close(1009, "message too big", drain=False)
                continue
            await self._handle_data(conn, data)

    # ------------------------------------------------------------------ frames

    async def _handle_data(self, conn: Connection, data: str | bytes) -> None:
        try:
            frame = parse_client_frame(data)
        except FrameError as exc:
            if not self._take_frame_token(conn):
                await self._rate_limited(conn, exc.msg_id)
                return
            code = exc.code
            message = "invalid JSON" if code == "BAD_JSON" else str(exc)
            await self._error(conn, code, message, exc.msg_id)
            return
        exempt = isinstance(frame, DeliveryAck) and frame.ref_msg_id in conn.unacked
        if not exempt and not self._take_frame_token(conn):
            await self._rate_limited(conn, frame.msg_id)
            return
        try:
            await self._dispatch(conn, frame)
        except StoreError as exc:
            self.metrics.inc("store_errors_total")
            self.log.error("store.error", error=str(exc), type=frame.TYPE)
            await self._error(conn, "INTERNAL", "relay storage failure", frame.msg_id)

    def _take_frame_token(self, conn: Connection) -> bool:
        key = f"frames:{conn.pk}" if conn.pk is not None else f"frames-conn:{conn.id}"
        return self.frame_buckets.take(key)

    async def _rate_limited(self, conn: Connection, ref: str | None) -> None:
        self.metrics.inc("rate_limit_hits")
        await self._error(conn, "RATE_LIMIT", "too many frames", ref)

    async def _dispatch(self, conn: Connection, frame: Frame) -> None:
        if isinstance(frame, Ping):
            await conn.send_text(serialize_frame(pong_for(frame)))
        elif isinstance(frame, Pong):
            return
        elif isinstance(frame, Hello):
            await self._hello(conn, frame)
        elif not conn.authenticated:
            await self._error(conn, "UNAUTH", "authenticate first with HELLO", frame.msg_id)
        elif isinstance(frame, Msg | SessionInit | SessionAck):
            await self._route(conn, frame)
        elif isinstance(frame, InvitePublish):
            await self._publish(conn, frame)
        elif isinstance(frame, InviteClaim):
            await self._claim(conn, frame)
        elif isinstance(frame, DeliveryAck):
            self._delivery_ack(conn, frame)
        else:
            assert isinstance(frame, HelloAck | Ack | Delivery | Error)
            await self._error(conn, "UNKNOWN_TYPE", "unexpected frame type", frame.msg_id)

    async def _error(self, conn: Connection, code: str, message: str, ref: str | None) -> None:
        self.metrics.error(code)
        frame = make_error(self.rng, self.wall_ms(), code, message, ref_msg_id=ref)
        await conn.send_text(serialize_frame(frame))

    async def _ack(self, conn: Connection, ref: str, status: AckStatus, error: str | None = None) -> None:
        if error is None:
            await conn.send_text(ack_text(self.hub.new_id(), self.wall_ms(), ref, status))
        else:
            await conn.send_text(serialize_frame(make_ack(self.rng, self.wall_ms(), ref, status, error=error)))

    # ------------------------------------------------------------------ authentication

    async def _hello(self, conn: Connection, frame: Hello) -> None:
        if not frame.ed25519_pk.isascii() and not encodes_as_utf8(frame.ed25519_pk):
            # The lenient base64url decoder skips it, so the signature may verify; but an agent's key is its
            # name in tokens and in the database, neither of which can hold a lone surrogate.
            await self._error(conn, "BAD_FRAME", "invalid frame: ed25519_pk: lone surrogate", frame.msg_id)
            return
        if not self.challenges.consume(frame.challenge):
            await self._error(conn, "INVALID_CHALLENGE", "challenge expired or unknown", frame.msg_id)
            conn.close(1000, "INVALID_CHALLENGE", drain=True)
            return
        if not verify_hello(frame.ed25519_pk, frame.challenge, frame.sig):
            self.metrics.inc("hello_failures")
            self.log.warn("hello.fail", ip=conn.peer_ip, pk=short_pk(frame.ed25519_pk))
            if not self.hello_fail_buckets.take(f"hello_fail:{conn.peer_ip}"):
                self.metrics.inc("rate_limit_hits")
                await self._error(conn, "RATE_LIMIT", "too many authentication failures", frame.msg_id)
                conn.close(1008, "RATE_LIMIT", drain=True)
            else:
                await self._error(conn, "INVALID_SIG", "signature verification failed", frame.msg_id)
                conn.close(1000, "INVALID_SIG", drain=True)
            return
        now = self.wall_ms()
        assert self.config.hmac_secret is not None
        token = mint_token(self.config.hmac_secret, frame.ed25519_pk, now, self.rng)
        if conn.pk is not None:
            # HELLO again on an authenticated socket: a fresh token, same key and delivery mode.
            if conn.pk != frame.ed25519_pk:
                await self._error(conn, "UNAUTH", "already authenticated as another key", frame.msg_id)
                return
            ack = make_hello_ack(self.rng, now, token, acks_deliveries=conn.acks_deliveries)
            await conn.send_text(serialize_frame(ack))
            return
        self.hub.register(conn, frame.ed25519_pk, frame.acks_deliveries)
        try:
            pending = await self.store.upsert_agent(
                frame.ed25519_pk, frame.x25519_pk, frame.acks_deliveries, now // 1000
            )
        except StoreError:
            self.hub.abandon(conn)
            raise
        ack = make_hello_ack(self.rng, now, token, acks_deliveries=frame.acks_deliveries)
        await conn.send_text(serialize_frame(ack))
        self.metrics.inc("hello_success_total")
        self.log.info("hello.success", pk=short_pk(frame.ed25519_pk), acks_deliveries=frame.acks_deliveries)
        conn.start_pump(rows_waiting=pending > 0)

    async def _resume(self, conn: Connection, token: str) -> None:
        claims = verify_token(token, self._secrets, self.wall_ms(), int(self.config.token_ttl_s * 1000))
        if claims is None:
            self.metrics.inc("token_failures_total")
            await self._error(conn, "UNAUTH", "invalid or expired session token", None)
            return
        self.hub.register(conn, claims.ed25519_pk, False)
        try:
            acks, pending = await self.store.touch_agent(claims.ed25519_pk, self.wall_ms() // 1000)
        except StoreError as exc:
            self.hub.abandon(conn)
            self.metrics.inc("store_errors_total")
            self.log.error("store.error", error=str(exc), type="resume")
            await self._error(conn, "INTERNAL", "relay storage failure", None)
            return
        conn.acks_deliveries = acks  # nothing was handed over yet: the mode may still change
        self.metrics.inc("token_resumes_total")
        self.log.info("token.resume", pk=short_pk(claims.ed25519_pk), acks_deliveries=acks)
        conn.start_pump(rows_waiting=pending > 0)

    # ------------------------------------------------------------------ routing and invites

    async def _route(self, conn: Connection, frame: Msg | SessionInit | SessionAck) -> None:
        if frame.from_ != conn.pk:
            await self._error(conn, "UNAUTH", "from mismatch", frame.msg_id)
            return
        result = await self.hub.route(frame)
        self._log_routed(frame.TYPE, frame.from_, frame.to, frame.ciphertext, frame.ratchet_pk, result)
        if result == "queue_full":
            await self._ack(conn, frame.msg_id, "error", "recipient queue full")
            return
        self.metrics.inc("messages_routed_total")
        await self._ack(conn, frame.msg_id, result)

    async def _publish(self, conn: Connection, frame: InvitePublish) -> None:
        assert conn.pk is not None
        now = self.wall_ms()
        expires_at = min(frame.expires_at, now + int(self.config.invite_max_ttl_days * DAY_MS))
        result = await self.store.publish_invite(
            frame.invite_id, frame.blob, conn.pk, expires_at, now, self.config.max_invites_per_pk
        )
        if result == "quota":
            await self._error(conn, "INVITE_QUOTA", "too many unclaimed invites", frame.msg_id)
            return
        self.metrics.inc("invites_published_total")
        await self._ack(conn, frame.msg_id, "delivered")

    def _log_routed(self, kind: str, from_pk: str, to_pk: str, ciphertext: str, ratchet_pk: str | None,
                    status: str) -> None:
        """At debug level, what the relay can see of a routed frame: who to whom, type, size, ratchet key."""
        if self.log.threshold <= LEVELS["debug"]:
            self.log.debug("frame.routed", type=kind, status=status, ciphertext_bytes=len(ciphertext) * 3 // 4,
                           ratchet_pk=short_pk(ratchet_pk) if ratchet_pk else None,
                           **{"from": short_pk(from_pk), "to": short_pk(to_pk)})

    async def _claim(self, conn: Connection, frame: InviteClaim) -> None:
        if frame.from_ != conn.pk:
            await self._error(conn, "UNAUTH", "from mismatch", frame.msg_id)
            return
        invite = await self.store.get_invite(frame.invite_id)
        now = self.wall_ms()
        if invite is None:
            await self._error(conn, "NOT_FOUND", "invite not found", frame.msg_id)
            return
        if invite.claimed:
            await self._error(conn, "ALREADY_CLAIMED", "invite already used", frame.msg_id)
            return
        if invite.expires_at <= now:
            await self._error(conn, "EXPIRED", "invite expired", frame.msg_id)
            return
        if not verify_routed(frame.from_, invite.inviter_pk, 0, frame.nonce, frame.sig):
            self.log.warn("invite_claim.invalid_sig", **{"from": short_pk(frame.from_)}, invite_id=frame.invite_id)
            await self._error(conn, "INVALID_SIG", "INVITE_CLAIM signature verification failed", frame.msg_id)
            return
        envelope = routed_text(routed_from_claim(frame, invite.inviter_pk))
        row_id = self.hub.new_id()
        inviter = invite.inviter_pk
        self.hub.begin_insert(inviter)
        try:
            result, ord_ = await self.store.claim_invite(
                frame.invite_id, now, row_id, envelope, self.config.max_pending_msgs
            )
        finally:
            self.hub.end_insert(inviter)
        if result == "claimed":
            assert ord_ is not None
            self._log_routed("SESSION_INIT", frame.from_, inviter, frame.ciphertext, None, "queued")
            self.metrics.inc("invites_claimed_total")
            self.hub.offer_row(inviter, row_id, envelope, ord_)
            await self._ack(conn, frame.msg_id, "queued")
        elif result == "queue_full":
            self.metrics.inc("queue_full_total")
            await self._ack(conn, frame.msg_id, "error", "recipient queue full")
        elif result == "already_claimed":
            await self._error(conn, "ALREADY_CLAIMED", "invite already used", frame.msg_id)
        elif result == "expired":
            await self._error(conn, "EXPIRED", "invite expired", frame.msg_id)
        else:
            await self._error(conn, "NOT_FOUND", "invite not found", frame.msg_id)

    def _delivery_ack(self, conn: Connection, frame: DeliveryAck) -> None:
        assert conn.pk is not None
        if frame.ref_msg_id in conn.unacked:
            conn.unacked.discard(frame.ref_msg_id)
            self.metrics.inc("deliveries_acked_total")
        # Unknown ids are released too (an ack that crossed a reconnect); the store only ever deletes
        # rows addressed to this connection's own key.
        self.hub.store.discard([(conn.pk, frame.ref_msg_id)])

    # ------------------------------------------------------------------ maintenance and shutdown

    async def maintenance(self) -> None:
        """Forever: every minute drop expired challenges and refilled buckets; every prune interval prune the store.

        The first prune runs at start-up, before the relay listens (see server.py), so not here.
        """
        next_prune = trio.current_time() + self.config.prune_interval_s
        while True:
            self.challenges.prune()
            for buckets in (self.challenge_buckets, self.hello_fail_buckets, self.frame_buckets):
                buckets.evict_full()
            if trio.current_time() >= next_prune:
                await self.prune_now()
                next_prune = trio.current_time() + self.config.prune_interval_s
            await trio.sleep(min(MAINTENANCE_INTERVAL_S, self.config.prune_interval_s))

    async def prune_now(self) -> None:
        try:
            result = await self.store.prune(self.wall_ms(), self.config.pending_ttl_days * 86_400)
        except StoreError as exc:
            self.metrics.inc("store_errors_total")
            self.log.error("prune.failed", error=str(exc))
            return
        if result.invites or result.pending or result.claimed_invites or result.agents:
            self.log.info(
                "prune.done",
                invites=result.invites,
                pending=result.pending,
                claimed_invites=result.claimed_invites,
                agents=result.agents,
            )

    async def close_all(self, code: int = 1001, reason: str = "server shutting down") -> None:
        """Refuse new sockets, close every open one with ``code`` and wait until they are gone."""
        self.shutting_down = True
        for conn in list(self.connections):
            conn.close(code, reason, drain=True)
        await self._all_closed.wait()


# ---------------------------------------------------------------------- helpers


def _payload_bytes(data: str | bytes, limit: int) -> int:
    """UTF-8 size of a message, as the reference's `ws` counts maxPayload (encoding only when it can matter)."""
    if isinstance(data, bytes):
        return len(data)
    if len(data) * 4 <= limit or len(data) > limit:
        return len(data)
    return len(data.encode("utf-8", "surrogatepass"))


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _peer_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def _bearer_token(scope: Scope) -> str | None:
    """`Authorization: Bearer <token>`, else the legacy `?token=` query parameter (reference clients <= 1.15)."""
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tokens = query.get("token")
    return tokens[0] if tokens else None


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _respond_json(send: Send, status: int, value: object) -> None:
    await _respond(send, status, json.dumps(value, separators=(",", ":")).encode(), JSON_HEADERS)


async def _reject(send: Send, status: int, body: bytes) -> None:
    """Refuse a WebSocket upgrade with a plain HTTP response (the ASGI websocket.http.response extension)."""
    headers = [(b"connection", b"close"), (b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body})
