"""One WebSocket connection: its writer, its store pump, and how it closes.

Three tasks share one nursery per socket:

* the **reader** (run by the app) takes frames in order and handles each to the end before the next,
  so a client's ACKs come back in the order it sent its frames;
* the **writer** takes frames from the `Outbox` and writes them, and after writing a DELIVERY of a
  stored row to a client that does not acknowledge deliveries (a reference client) it tells the
  store to delete that row: "delivered" means written to the socket. The reader writes its own
  replies itself when the outbox is idle (nothing queued, nothing being written); two writes never
  need a lock of ours, because hypercorn serialises the bytes of each `send` in call order (the
  frame is encoded before the first await, and its socket lock is FIFO);
* the **pump** (once authenticated) moves this agent's stored frames to the outbox, oldest first,
  following a cursor over the rows' `ord`. Until it has caught up, the router stores new frames for
  this agent instead of handing them over live, so a newer frame never overtakes a queued one.

For a client that acknowledges deliveries (`acks_deliveries`), rows are kept until its DELIVERY_ACK;
a row delivered but not acknowledged on this connection is delivered again, in order, on the next.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import trio

from agentroomd.relay.outbox import Outbox, OutItem
from agentroomd.relay.store import StoreError
from agentroomd.relay.wire import delivery_text, routed_text
from ratchet.frames import FrameError, Msg, SessionAck, SessionInit, parse_frame

if TYPE_CHECKING:
    from agentroomd.relay.hub import Hub

PUMP_BATCH = 64
CLOSE_HANDSHAKE_WAIT_S = 2.0
_ids = itertools.count(1)


class Connection:
    """State of one accepted WebSocket; authenticated once `pk` is set."""

    def __init__(self, hub: Hub, ip: str, peer_ip: str, outbox_bytes: int) -> None:
        self.id = next(_ids)
        self.hub = hub
        self.ip = ip  # for rate limits on challenges: the X-Forwarded-For client when trusted
        self.peer_ip = peer_ip  # the socket's own address (HELLO failures are keyed on it, as the reference does)
        self.outbox = Outbox(outbox_bytes)
        self.pk: str | None = None
        self.acks_deliveries = False
        self.unacked: set[str] = set()  # rows delivered on this connection and not yet acknowledged
        self.cursor = 0  # highest `ord` handed to the outbox
        self.caught_up = False  # the pump has handed over every stored row for pk
        self.caught_up_once = trio.Event()  # set the first time it is (tests wait on it)
        self.close_code: int | None = None
        self.close_reason = ""
        self._wake = trio.Event()
        self._disconnected = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._send: Any = None  # the ASGI send
        self._pump_scope: trio.CancelScope | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def authenticated(self) -> bool:
        return self.pk is not None

    @property
    def closing(self) -> bool:
        return self.close_code is not None

    async def run(self, send: Any, reader: Any) -> None:
        """Run writer and ``reader`` (an async callable) until the socket is gone or closed."""
        self._send = send
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._write_loop, send)
            try:
                await reader()
            finally:
                self._disconnected.set()
                nursery.cancel_scope.cancel()

    def start_pump(self, rows_waiting: bool) -> None:
        """Begin moving stored frames for `pk` to the socket (call once authenticated and HELLO_ACK is queued).

        ``rows_waiting`` is False only when the store had no row for `pk` after this connection was
        registered: then, unless something was stored meanwhile, live delivery may start at once.
        """
        if self._nursery is None or self.closing:
            return
        self.cursor = 0
        self.caught_up = not rows_waiting and not self._wake.is_set() and not self.hub.inserts_in_flight(self.pk)
        if self.caught_up:
            self.caught_up_once.set()
        self._pump_scope = trio.CancelScope()
        self._nursery.start_soon(self._pump, self._pump_scope)

    def close(self, code: int, reason: str, *, drain: bool) -> None:
        """Close with ``code``: after the queued frames if ``drain``, else right away. Idempotent."""
        if self.closing:
            return
        self.close_code, self.close_reason = code, reason
        if self._pump_scope is not None:
            self._pump_scope.cancel()
        self.outbox.close(drain=drain)

    def wake(self) -> None:
        """Rows were stored for this agent: the pump must look again."""
        self.caught_up = False
        self._wake.set()

    # ------------------------------------------------------------------ sending

    async def send_text(self, text: str) -> None:
        """Send one of this connection's own replies (ACK, ERROR, PONG, HELLO_ACK) in order.

        When nothing is queued and nothing is being written, the reply is written right here, by the
        task that handles this client's frames: no hand-over to the writer (the common case, and the
        relay's hot path). Otherwise it is queued behind the rest, waiting for room: a client that does
        not read its replies stops being read (backpressure on that client only).
        """
        if self._send is not None and self.outbox.idle:
            await self._send({"type": "websocket.send", "text": text})
            return
        await self.outbox.put(OutItem(text))

    def offer(self, item: OutItem, ord_: int | None) -> bool:
        """Hand a frame for this agent to the outbox now if nothing stored is ahead of it; True if taken.

        ``ord_`` is the frame's row when it was stored first (then the cursor moves past it).
        """
        if not self.caught_up or self.hub.inserts_in_flight(self.pk) or self.closing:
            return False
        if not self.outbox.try_put(item):
            return False
        if ord_ is not None:
            self.cursor = max(self.cursor, ord_)
            if self.acks_deliveries and item.row_id is not None:
                self.unacked.add(item.row_id)
        return True

    async def _write_loop(self, send: Any) -> None:
        store = self.hub.store
        while True:
            item = await self.outbox.get()
            if item is None:
                break
            await send({"type": "websocket.send", "text": item.text})
            self.outbox.done(item)
            if item.is_delivery:
                self.hub.metrics.inc("deliveries_total")
                if item.row_id is not None and not self.acks_deliveries and self.pk is not None:
                    store.discard([(self.pk, item.row_id)])
        if self.close_code is not None:
            await send({"type": "websocket.close", "code": self.close_code, "reason": self.close_reason})
            with trio.move_on_after(CLOSE_HANDSHAKE_WAIT_S):
                await self._disconnected.wait()
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ the store pump

    async def _pump(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                await self._pump_rows()
            except StoreError as exc:
                # Without the store this connection cannot get its queue; make the client reconnect.
                self.hub.metrics.inc("store_errors_total")
                self.hub.log.error("pending.fetch_failed", error=str(exc))
                self.close(1011, "relay storage failure", drain=True)

    async def _pump_rows(self) -> None:
        hub, pk = self.hub, self.pk
        assert pk is not None
        if self.caught_up:
            await self._wake.wait()
        while True:
            self._wake = trio.Event()
            rows = await hub.store.fetch_pending(pk, self.cursor, PUMP_BATCH, hub.pending_not_before_s())
            if not rows:
                if self._wake.is_set():
                    continue
                if not hub.inserts_in_flight(pk):
                    self.caught_up = True
                    self.caught_up_once.set()
                await self._wake.wait()
                continue
            for row in rows:
                try:
                    routed = parse_frame(row.envelope)
                    if not isinstance(routed, Msg | SessionInit | SessionAck):
                        raise FrameError("BAD_FRAME", "stored frame is not a routed frame")
                except FrameError:
                    hub.metrics.inc("pending_dropped_malformed")
                    hub.log.warn("pending.dropped_malformed", id=row.id)
                    hub.store.discard([(pk, row.id)])
                    self.cursor = row.ord
                    continue
                text = delivery_text(row.id, hub.now_ms(), routed_text(routed))
                if self.acks_deliveries:
                    self.unacked.add(row.id)
                if not await self.outbox.put(OutItem(text, row_id=row.id, is_delivery=True)):
                    return
                self.cursor = row.ord
