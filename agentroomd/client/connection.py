"""One authenticated WebSocket connection to one relay, kept alive for as long as its task runs.

The connection knows the relay protocol (challenge, HELLO, PING/PONG, ACK correlation, DELIVERY_ACK)
and nothing about sessions: every DELIVERY goes to the `DeliveryHandler` it was given, one at a
time and in arrival order, and the DELIVERY is acknowledged to the relay only after the handler
returned, i.e. after the message is journaled. If the handler raises (a store failure), the
connection is dropped without acknowledging, so the relay delivers the frame again after reconnecting.
Acknowledgements go out from their own task (`_acker`), so the reader goes on to the next delivery
while the store flushes, and deliveries that arrive back to back share one flush.

Write-ahead at the wire: before any frame of ours goes out (PING and PONG aside: they depend on
nothing stored), the ``before_send`` hook runs (the session manager's is the store's flush), so nothing
leaves the machine before the commits it follows are on disk: a sealed frame after its ratchet state, a
DELIVERY_ACK after the journal line it acknowledges.

Reconnects use exponential backoff with jitter; the backoff resets once a connection was established.
"""

import json
import random
import ssl
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Protocol

import attrs
import trio
from trio_websocket import (
    ConnectionClosed,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from agentroomd.log import Logger
from ratchet.encoding import b64u_encode
from ratchet.errors import RatchetError
from ratchet.frames import (
    Ack,
    Delivery,
    Error,
    Frame,
    FrameError,
    Hello,
    HelloAck,
    Ping,
    Pong,
    make_delivery_ack,
    make_ping,
    parse_frame,
    pong_for,
    serialize_frame,
)
from ratchet.keys import KeyPair
from ratchet.rand import SYSTEM_RANDOM, RandomSource
from ratchet.signatures import sign_hello

MAX_FRAME_BYTES = 512 * 1024
PING_INTERVAL_S = 30.0
CONNECT_TIMEOUT_S = 10.0
TOKEN_REUSE_S = 55 * 60.0


class RelayError(Exception):
    """The relay could not be reached or refused us; the message says which and why."""


class ConnectionLost(RelayError):
    """The connection dropped while a request was waiting for its answer."""


class DeliveryNotStored(RelayError):
    """The handler could not store a delivery: drop the connection unacknowledged, redeliver later."""


class DeliveryHandler(Protocol):
    async def on_delivery(self, conn: "RelayConnection", delivery: Delivery) -> None: ...


def http_base(ws_url: str) -> str:
    """The relay's HTTP origin for a ws(s) URL: ws -> http, wss -> https (the reference always used http)."""
    if ws_url.startswith("wss://"):
        base = "https://" + ws_url[len("wss://") :]
    elif ws_url.startswith("ws://"):
        base = "http://" + ws_url[len("ws://") :]
    else:
        raise RelayError(f"not a relay URL (expected ws:// or wss://): {ws_url}")
    base = base.rstrip("/")
    return base[: -len("/ws")] if base.endswith("/ws") else base


def fetch_challenge_sync(ws_url: str, timeout: float) -> str:
    """GET /auth/challenge (blocking; run it in a thread)."""
    url = http_base(ws_url) + "/auth/challenge"
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ssl.create_default_context()) as resp:
            body = resp.read(4096)
    except urllib.error.HTTPError as exc:
        hint = " (rate limited: retry in about a minute)" if exc.code == 429 else ""
        raise RelayError(f"challenge request to {url} failed: HTTP {exc.code}{hint}") from exc
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise RelayError(f"relay {url} unreachable: {exc}") from exc
    try:
        challenge = json.loads(body)["challenge"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RelayError(f"relay {url} sent a malformed challenge") from exc
    if not isinstance(challenge, str) or not 1 <= len(challenge) <= 256:
        raise RelayError(f"relay {url} sent a malformed challenge")
    return challenge


@attrs.define
class Backoff:
    """Exponential backoff with full jitter in [0.5, 1] of the step: base * 2**attempt, capped."""

    base_s: float = 0.5
    cap_s: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay: float = min(self.cap_s, self.base_s * 2.0**self.attempt) * random.uniform(0.5, 1.0)
        self.attempt = min(self.attempt + 1, 30)
        return delay

    def reset(self) -> None:
        self.attempt = 0


@attrs.define
class _Waiter:
    done: trio.Event = attrs.Factory(trio.Event)
    result: Ack | Error | None = None
    lost: bool = False


class RelayConnection:
    """Keeps one relay connection up and correlates requests with the relay's ACK/ERROR answers."""

    def __init__(
        self,
        url: str,
        identity: KeyPair,
        handler: DeliveryHandler,
        log: Logger,
        *,
        rng: RandomSource = SYSTEM_RANDOM,
        clock_ms: Callable[[], int],
        backoff: Backoff | None = None,
        on_connected: Callable[["RelayConnection"], Awaitable[None]] | None = None,
        ping_interval_s: float = PING_INTERVAL_S,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.url = url
        self._before_send = before_send
        self._ping_interval_s = ping_interval_s
        self._identity = identity
        self._handler = handler
        self._log = log
        self._rng = rng
        self._clock_ms = clock_ms
        self._backoff = backoff or Backoff()
        self._on_connected = on_connected
        self._ws: WebSocketConnection | None = None
        self._waiters: dict[str, _Waiter] = {}
        self._connected = trio.Event()
        self._lost = trio.Event()
        self._send_lock = trio.Lock()
        self.relay_keeps_until_acked = False
        self._acks: list[str] = []  # DELIVERY msg_ids handled on this connection, not yet acknowledged
        self._acks_wanted = trio.Event()
        self._token: str | None = None
        self._token_at = 0.0
        self._heard_at = 0.0  # when the current connection last received a frame (trio clock)
        self.state = "connecting"
        self.last_error: str | None = None
        self.connects = 0
        self.resumes = 0  # connections authenticated with the session token instead of a new HELLO

    # -- public API -----------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        """Returns once the current connection (or the next one, if none is up) has dropped."""
        await self._lost.wait()

    async def request(self, msg_id: str, text: str) -> Ack | Error:
        """Send one serialised client frame and wait for the relay's ACK or ERROR naming it.

        Raises ConnectionLost if the connection is down or drops before the answer; the caller
        bounds the wait with its own cancel scope.
        """
        waiter = _Waiter()
        self._waiters[msg_id] = waiter
        try:
            await self._send_text(text)
            await waiter.done.wait()
        finally:
            self._waiters.pop(msg_id, None)
        if waiter.lost or waiter.result is None:
            raise ConnectionLost(f"connection to {self.url} dropped before the relay answered")
        return waiter.result

    async def send_frame(self, frame: Frame) -> None:
        """Fire-and-forget send; raises ConnectionLost when not connected.

        PING and PONG depend on nothing we stored, so they never wait for a flush (a slow disk must not
        keep the reader from answering the relay's PING).
        """
        await self._send_text(serialize_frame(frame), flush=not isinstance(frame, Ping | Pong))

    # -- the connection loop --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, reconnect with backoff; runs until cancelled."""
        task_status.started()
        while True:
            try:
                await self._one_connection()
            except* (RelayError, OSError, HandshakeError, ConnectionClosed, trio.TooSlowError) as group:
                # the reader and pinger run in a nursery, so their failures arrive as an ExceptionGroup
                self.last_error = _describe(group.exceptions[0])
                self._log.warn("relay.disconnected", relay=self.url, error=self.last_error)
            finally:
                self._drop()
            self.state = "backoff"
            await trio.sleep(self._backoff.next_delay())

    async def _one_connection(self) -> None:
        self.state = "connecting"
        token = self._token if self._token_fresh() else None
        challenge = None
        if token is None:
            challenge = await trio.to_thread.run_sync(fetch_challenge_sync, self.url, CONNECT_TIMEOUT_S)
        headers = [(b"authorization", b"Bearer " + token.encode())] if token else None
        opened: WebSocketConnection | None = None
        try:
            async with open_websocket_url(
                self.url,
                extra_headers=headers,
                max_message_size=MAX_FRAME_BYTES,
                connect_timeout=CONNECT_TIMEOUT_S,
                disconnect_timeout=2,
            ) as ws:
                opened = ws
                await self._serve(ws, challenge)
        finally:
            if opened is not None:
                await _close_transport(opened)

    def _token_fresh(self) -> bool:
        """A session token is worth trying for 55 of its 60 minutes (it is minted only by HELLO)."""
        return self._token is not None and trio.current_time() - self._token_at < TOKEN_REUSE_S

    async def _serve(self, ws: WebSocketConnection, challenge: str | None) -> None:
        self._ws = ws
        first: Frame | None = None
        if challenge is None:
            first = await self._resume(ws)
        else:
            await self._hello(ws, challenge)
        self._backoff.reset()
        self.connects += 1
        self.resumes += challenge is None
        self.state = "connected"
        self.last_error = None
        self._lost = trio.Event()
        self._connected.set()
        self._log.info("relay.connected", relay=self.url, keeps_until_acked=self.relay_keeps_until_acked,
                       resumed=challenge is None)
        self._acks = []
        self._heard_at = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pinger)
            nursery.start_soon(self._acker)
            if self._on_connected is not None:
                nursery.start_soon(self._on_connected, self)
            if first is not None:
                await self._dispatch(first)
            await self._reader(ws)
            nursery.cancel_scope.cancel()

    async def _resume(self, ws: WebSocketConnection) -> Frame | None:
        """Token resume as the reference client does it: PING, and the first answer settles it.

        An ERROR means the token was refused: forget it and fail this attempt, so the next one (right
        away) does a full challenge and HELLO. Any other frame means we are in; a DELIVERY that came
        first is handed back to be processed normally.
        """
        await ws.send_message(serialize_frame(make_ping(self._rng, self._clock_ms())))
        with trio.fail_after(CONNECT_TIMEOUT_S):
            frame = _parse_or_none(await ws.get_message())
        if isinstance(frame, Error):
            self._token = None
            self._backoff.reset()
            raise RelayError(f"relay refused the session token ({frame.code}); authenticating again")
        return None if isinstance(frame, Pong) else frame

    async def _hello(self, ws: WebSocketConnection, challenge: str) -> None:
        kp = self._identity
        hello = Hello(
            msg_id=self._rng.uuid4(),
            ts=self._clock_ms(),
            ed25519_pk=b64u_encode(kp.ed25519_pk),
            x25519_pk=b64u_encode(kp.x25519_pk),
            sig=sign_hello(kp, challenge),
            challenge=challenge,
            acks_deliveries=True,
        )
        await ws.send_message(serialize_frame(hello))
        with trio.fail_after(CONNECT_TIMEOUT_S):
            while True:
                frame = _parse_or_none(await ws.get_message())
                if isinstance(frame, HelloAck):
                    self.relay_keeps_until_acked = frame.acks_deliveries
                    self._token, self._token_at = frame.session_token, trio.current_time()
                    return
                if isinstance(frame, Error):
                    raise RelayError(f"relay refused HELLO: {frame.code} {frame.message}")
                if isinstance(frame, Ping):
                    await ws.send_message(serialize_frame(pong_for(frame)))

    async def _reader(self, ws: WebSocketConnection) -> None:
        while True:
            try:
                raw = await ws.get_message()
            except ConnectionClosed as exc:
                raise RelayError(f"relay closed the connection ({_describe(exc)})") from None
            self._heard_at = trio.current_time()
            frame = _parse_or_none(raw)
            if frame is None:
                self._log.warn("relay.bad_frame", relay=self.url, size=len(raw))
                continue
            await self._dispatch(frame)

    async def _dispatch(self, frame: Frame) -> None:
        if isinstance(frame, Delivery):
            await self._handler.on_delivery(self, frame)
            if self.relay_keeps_until_acked:
                self._acks.append(frame.msg_id)
                self._acks_wanted.set()
        elif isinstance(frame, Ack):
            self._resolve(frame.ref_msg_id, frame)
        elif isinstance(frame, Error):
            if frame.ref_msg_id is not None and frame.ref_msg_id in self._waiters:
                self._resolve(frame.ref_msg_id, frame)
            else:
                self._log.warn("relay.error", relay=self.url, code=frame.code, message=frame.message[:200])
        elif isinstance(frame, Ping):
            await self.send_frame(pong_for(frame))

    async def _acker(self) -> None:
        """Acknowledge handled deliveries, oldest first; each send waits for the flush that covers it."""
        while True:
            await self._acks_wanted.wait()
            self._acks_wanted = trio.Event()
            batch, self._acks = self._acks, []
            for msg_id in batch:
                await self.send_frame(make_delivery_ack(self._rng, self._clock_ms(), msg_id))

    async def _pinger(self) -> None:
        """PING every interval; a relay that sent nothing at all (not even the PONG) for a whole interval
        after a PING is gone (a dropped NAT mapping, a vanished host: the socket itself never says so)."""
        pinged_at: float | None = None
        while True:
            await trio.sleep(self._ping_interval_s)
            if pinged_at is not None and self._heard_at < pinged_at:
                raise RelayError(f"relay {self.url} did not answer a PING within {self._ping_interval_s:g} s")
            pinged_at = trio.current_time()
            with trio.fail_after(self._ping_interval_s):  # a socket nobody reads fills up: the send would hang
                await self.send_frame(make_ping(self._rng, self._clock_ms()))

    # -- internals ------------------------------------------------------------------------------

    async def _send_text(self, text: str, *, flush: bool = True) -> None:
        if self._ws is None or not self._connected.is_set():
            raise ConnectionLost(f"not connected to {self.url}")
        if flush and self._before_send is not None:
            await self._before_send()
        ws = self._ws
        if ws is None or not self._connected.is_set():
            raise ConnectionLost(f"not connected to {self.url}")
        async with self._send_lock:
            try:
                await ws.send_message(text)
            except ConnectionClosed as exc:
                raise ConnectionLost(f"connection to {self.url} closed") from exc

    def _resolve(self, msg_id: str, frame: Ack | Error) -> None:
        waiter = self._waiters.get(msg_id)
        if waiter is not None:
            waiter.result = frame
            waiter.done.set()

    def _drop(self) -> None:
        self._ws = None
        if self._connected.is_set():
            self._connected = trio.Event()
        self.state = "disconnected"
        self._lost.set()
        for waiter in self._waiters.values():
            waiter.lost = True
            waiter.done.set()


async def _close_transport(ws: WebSocketConnection) -> None:
    """Close the TCP stream under ``ws``.

    trio-websocket 0.12 leaves a client's socket open when the *server* starts the close handshake
    (it waits for the server's TCP close, then never closes its own end, and ``aclose()`` returns early
    once a close reason is set), which leaks one file descriptor per relay restart. Closing the stream
    ourselves is idempotent and harmless when the library already did it.
    """
    stream = getattr(ws, "_stream", None)
    if isinstance(stream, trio.abc.AsyncResource):
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _parse_or_none(raw: str | bytes) -> Frame | None:
    try:
        return parse_frame(raw)
    except (FrameError, RatchetError):
        return None


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, ConnectionClosed):
        reason = exc.reason
        return "connection closed" if reason is None else f"connection closed ({reason.code} {reason.reason or ''})"
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__
