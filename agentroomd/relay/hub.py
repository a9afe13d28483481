"""Who is connected, and how a routed frame reaches its recipient: live, or through the store.

A frame for an agent is handed to its connection live only when nothing stored is ahead of it
(the connection's pump has caught up and no insert for that agent is in flight) and its outbox has
room; otherwise it is stored and the pump is woken. Frames for an agent whose client acknowledges
deliveries are always stored first, then handed over; their row goes when the client acknowledges.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

from agentroomd.log import Logger
from agentroomd.relay.config import RelayConfig
from agentroomd.relay.connection import Connection
from agentroomd.relay.metrics import Metrics
from agentroomd.relay.outbox import OutItem
from agentroomd.relay.store import RelayStore
from agentroomd.relay.wire import FastIds, delivery_text, routed_text
from ratchet.frames import KeyLayout, Routed
from ratchet.rand import SYSTEM_RANDOM, RandomSource

RouteResult = Literal["delivered", "queued", "queue_full"]


class Hub:
    """The registry of authenticated connections (one per agent key) and the routing of frames between them."""

    def __init__(
        self,
        config: RelayConfig,
        store: RelayStore,
        metrics: Metrics,
        log: Logger,
        rng: RandomSource,
        now_ms: Callable[[], int],
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.log = log
        self.rng = rng
        # Ids of the relay's own frames and rows: the fast generator unless randomness is injected (tests).
        self.new_id: Callable[[], str] = FastIds().uuid4 if rng is SYSTEM_RANDOM else rng.uuid4
        self.now_ms = now_ms
        self.agents: dict[str, Connection] = {}
        self._inserting: Counter[str] = Counter()

    # ------------------------------------------------------------------ registry

    def register(self, conn: Connection, pk: str, acks_deliveries: bool) -> None:
        """``conn`` now speaks for ``pk``; an older connection of that key is closed (1000, replaced).

        From here on frames for ``pk`` are stored and wake ``conn``, until `Connection.start_pump`
        (called once HELLO_ACK is queued) lets live delivery begin. Register *before* asking the store
        whether rows are waiting, so that no row stored in between can be missed.
        """
        previous = self.agents.get(pk)
        if previous is not None and previous is not conn:
            previous.close(1000, "replaced by new connection", drain=False)
            self.unregister(previous)
        conn.pk = pk
        conn.acks_deliveries = acks_deliveries
        conn.unacked.clear()
        self.agents[pk] = conn

    def unregister(self, conn: Connection) -> None:
        """``conn`` is gone (or failed to authenticate): forget it, if it is still the one registered for its key."""
        if conn.pk is not None and self.agents.get(conn.pk) is conn:
            del self.agents[conn.pk]

    def abandon(self, conn: Connection) -> None:
        """Authentication could not be completed (the store failed): ``conn`` is unauthenticated again."""
        self.unregister(conn)
        conn.pk = None
        conn.acks_deliveries = False

    def inserts_in_flight(self, pk: str | None) -> bool:
        return pk is not None and self._inserting[pk] > 0

    def pending_not_before_s(self) -> int:
        return self.now_ms() // 1000 - int(self.config.pending_ttl_days * 86_400)

    # ------------------------------------------------------------------ routing

    async def route(self, routed: Routed) -> RouteResult:
        """Deliver a client's ``routed`` frame to its recipient now, or store it; "queue_full" when neither is possible.

        What travels is the frame as the reference relay forwards it: its parsed form (PARSED key layout).
        """
        to = routed.to
        envelope = routed_text(routed, KeyLayout.PARSED)
        conn = self.agents.get(to)
        if conn is not None and not conn.acks_deliveries:
            text = delivery_text(self.new_id(), self.now_ms(), envelope)
            if conn.offer(OutItem(text, is_delivery=True), None):
                self.metrics.inc("messages_delivered_total")
                return "delivered"
        row_id = self.new_id()
        self._inserting[to] += 1
        try:
            ord_ = await self.store.enqueue(to, row_id, envelope, self.now_ms() // 1000, self.config.max_pending_msgs)
        finally:
            self._done_inserting(to)
        if ord_ is None:
            self.metrics.inc("queue_full_total")
            return "queue_full"
        if self.offer_row(to, row_id, envelope, ord_):
            self.metrics.inc("messages_delivered_total")
            return "delivered"
        self.metrics.inc("messages_queued_total")
        return "queued"

    def offer_row(self, to: str, row_id: str, envelope: str, ord_: int) -> bool:
        """A row was stored for ``to``: hand it over live if possible (True), else wake the pump."""
        conn = self.agents.get(to)
        if conn is None:
            return False
        text = delivery_text(row_id, self.now_ms(), envelope)
        if conn.offer(OutItem(text, row_id=row_id, is_delivery=True), ord_):
            return True
        conn.wake()
        return False

    def begin_insert(self, to: str) -> None:
        """An insert for ``to`` is starting outside `route` (invite claims): hold live delivery back."""
        self._inserting[to] += 1

    def end_insert(self, to: str) -> None:
        self._done_inserting(to)

    def _done_inserting(self, to: str) -> None:
        self._inserting[to] -= 1
        if self._inserting[to] <= 0:
            del self._inserting[to]
            conn = self.agents.get(to)
            if conn is not None and not conn.caught_up:
                conn.wake()


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
