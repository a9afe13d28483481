"""What is waiting to be written to one WebSocket, bounded in bytes.

The reference refuses live delivery to a socket whose `bufferedAmount` exceeds 1 MiB and queues the
frame in SQLite instead. `Outbox` is that buffer made explicit: `try_put` (used for frames from other
agents) fails when the budget is spent, so the router stores the frame rather than buffering without
bound; `put` (used for the connection's own replies and its store pump) waits for room, which pushes
back on a client that does not read. Bytes stay counted until the writer has finished sending them.
"""

from __future__ import annotations

from collections import deque

import attrs
import trio


@attrs.frozen
class OutItem:
    """One text frame to write. ``row_id`` is the stored row a DELIVERY carries, if any."""

    text: str
    row_id: str | None = None
    is_delivery: bool = False


class Outbox:
    """A byte-bounded FIFO with one consumer (the connection's writer)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self._items: deque[OutItem] = deque()
        self._bytes = 0
        self._readable = trio.Event()
        self._room = trio.Event()
        self._closed = False
        self._drain = True

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written: a frame sent now would not overtake anything."""
        return self._bytes == 0 and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def has_room(self, size: int = 1) -> bool:
        return not self._closed and (self._bytes == 0 or self._bytes + size <= self.limit_bytes)

    def try_put(self, item: OutItem) -> bool:
        """Queue ``item`` if the budget allows (an empty outbox always takes one frame); else False."""
        size = len(item.text)
        if not self.has_room(size):
            return False
        self._items.append(item)
        self._bytes += size
        self._readable.set()
        return True

    async def put(self, item: OutItem) -> bool:
        """Queue ``item``, waiting for room; False if the outbox closes first."""
        while not self.try_put(item):
            if self._closed:
                return False
            self._room = trio.Event() if self._room.is_set() else self._room
            await self._room.wait()
        return True

    async def get(self) -> OutItem | None:
        """The next item to write, or None once closed (after the remaining items, when draining)."""
        while True:
            if self._items and (not self._closed or self._drain):
                return self._items.popleft()
            if self._closed:
                return None
            if self._readable.is_set():
                self._readable = trio.Event()
            await self._readable.wait()

    def done(self, item: OutItem) -> None:
        """The writer finished sending ``item``: its bytes no longer count."""
        self._bytes -= len(item.text)
        self._room.set()

    def close(self, *, drain: bool) -> list[OutItem]:
        """Accept nothing more. With ``drain`` the writer still gets what is queued; else that is returned."""
        self._closed = True
        self._drain = drain
        dropped: list[OutItem] = []
        if not drain:
            dropped = list(self._items)
            self._items.clear()
            self._bytes -= sum(len(item.text) for item in dropped)
        self._readable.set()
        self._room.set()
        return dropped
