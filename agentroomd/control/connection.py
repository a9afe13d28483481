"""One accepted control connection: ordered writes, notifications, tasks that start after a reply.

Requests on a connection are answered one at a time, in order (like varlink), which keeps the
"reply to subscribe first, then the notifications" promise simple: a handler that wants to stream
registers a task with `after_reply`, and the connection starts it only once the reply is written.
Writes from the request loop and from subscription pumps share one FIFO lock, so lines never interleave.
"""

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from agentroomd.control.framing import encode
from agentroomd.control.inbox import Subscription


class Gauge:
    """A count of things in progress (requests, pumps) that shutdown can wait to reach zero."""

    def __init__(self) -> None:
        self.value = 0
        self._zero = trio.Event()
        self._zero.set()

    def enter(self) -> None:
        if self.value == 0:
            self._zero = trio.Event()
        self.value += 1

    def leave(self) -> None:
        self.value -= 1
        if self.value == 0:
            self._zero.set()

    async def wait_zero(self) -> None:
        await self._zero.wait()


class ConnectionGoneError(Exception):
    """The client hung up (or reset the connection) while we were writing to it."""


class Connection:
    """The server side of one client; handlers receive it as their `Caller`."""

    def __init__(self, stream: trio.abc.Stream, connection_id: int, nursery: trio.Nursery, peer_pid: int) -> None:
        self._stream = stream
        self._connection_id = connection_id
        self._nursery = nursery
        self.peer_pid = peer_pid
        self._send_lock = trio.StrictFIFOLock()
        self._deferred: list[Callable[[], Awaitable[None]]] = []
        self.subscriptions: dict[str, Subscription] = {}

    @property
    def connection_id(self) -> int:
        return self._connection_id

    def after_reply(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._deferred.append(fn)

    def start_deferred(self) -> None:
        """Called by the request loop right after a reply was written."""
        deferred, self._deferred = self._deferred, []
        for fn in deferred:
            self._nursery.start_soon(fn)

    def drop_deferred(self) -> None:
        """The call failed after registering follow-up work: that work must not start."""
        self._deferred.clear()

    async def send(self, message: dict[str, Any]) -> None:
        data = encode(message)
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionGoneError from exc

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        await self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def end_subscriptions(self) -> None:
        for subscription in list(self.subscriptions.values()):
            subscription.detach()
        self.subscriptions.clear()
