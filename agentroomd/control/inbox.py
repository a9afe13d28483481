"""Received messages: a journal with cursors, and the fan-out to subscribers (`message.subscribe`).

The client sessions call `await inbox.publish(InboundMessage(...))` once a frame is verified and
decrypted. The journal assigns the next cursor (1, 2, 3, ...) and keeps the message, so that a
subscriber coming back with `since=<last cursor it saw>` misses nothing; then every live subscriber is
offered the message without waiting. A subscriber whose bounded buffer is full is ended as lagged
(its `resume_from` is the last cursor it was handed) instead of slowing the sessions down; the client
resubscribes from there and reads the rest from the journal (Syncthing's `since` pattern).

`Journal` is the seam for the durable journal: `MemoryJournal` keeps the newest N messages in memory
and forgets them on restart; the client store provides a SQLite one with the same members
(`Inbox.use_journal` swaps it in; `Inbox.announce` fans out a record the session journaled itself).
Cursors only have to increase; they need not be consecutive.

`Inbox.session_closed` tells subscribers that asked for it (`subscribe(..., session_events=True)`: the
control plane's `message.subscribe`) that a peer's session ended. It travels through the same bounded
buffer as the messages, so it arrives in order with them, and a full buffer ends the subscriber as
lagged just as a message would. It is live only: the journal does not keep it, so a replay never
repeats it (the peer's state says "closed" for anyone who was away).
"""

import collections
import itertools
from typing import Protocol

import attrs
import trio

from agentroomd.control import api
from agentroomd.control.api import ErrorKind, ReceivedMessage

BACKLOG_PAGE = 256


@attrs.frozen
class InboundMessage:
    """A decrypted message as the session hands it over; the journal gives it a cursor."""

    from_: str
    text: str
    msg_id: str
    ts: int


class Journal(Protocol):
    """Where received messages are kept, in cursor order."""

    @property
    def last_cursor(self) -> int:
        """Cursor of the newest message (0 when nothing was ever received)."""
        ...

    @property
    def oldest_cursor(self) -> int:
        """Cursor of the oldest message still kept (last_cursor + 1 when none is kept)."""
        ...

    async def append(self, message: InboundMessage) -> ReceivedMessage:
        """Store ``message`` durably under the next cursor and return it with that cursor."""
        ...

    async def since(self, cursor: int, limit: int) -> list[ReceivedMessage]:
        """Up to ``limit`` kept messages with a cursor greater than ``cursor``, oldest first."""
        ...


class MemoryJournal:
    """The newest ``keep`` messages in memory: enough for `listen --since` until the durable journal lands."""

    def __init__(self, keep: int) -> None:
        self._records: collections.deque[ReceivedMessage] = collections.deque(maxlen=keep)
        self._last = 0

    @property
    def last_cursor(self) -> int:
        return self._last

    @property
    def oldest_cursor(self) -> int:
        return self._records[0].cursor if self._records else self._last + 1

    async def append(self, message: InboundMessage) -> ReceivedMessage:
        self._last += 1
        record = ReceivedMessage(
            cursor=self._last, from_=message.from_, text=message.text, msg_id=message.msg_id, ts=message.ts
        )
        self._records.append(record)
        await trio.lowlevel.checkpoint()
        return record

    async def since(self, cursor: int, limit: int) -> list[ReceivedMessage]:
        await trio.lowlevel.checkpoint()
        if not self._records or cursor >= self._last:
            return []
        start = max(0, cursor - self._records[0].cursor + 1)  # cursors are consecutive within the deque
        return list(itertools.islice(self._records, start, start + limit))


@attrs.frozen
class SessionClosed:
    """A peer's session ended (v3 CLOSE, sent by ``by``: "peer" | "us") at ``ts`` ms: a live event, not journaled."""

    peer: str
    by: str
    ts: int


StreamItem = ReceivedMessage | SessionClosed


@attrs.frozen
class SubscriptionEnd:
    """Why a subscription stopped, as the error of the `message.closed` notification."""

    kind: ErrorKind
    message: str


class Subscription:
    """One subscriber: its backlog from the journal, then live messages (and events) through a bounded channel."""

    def __init__(
        self, inbox: "Inbox", subscription_id: str, since: int | None, buffer: int, *, session_events: bool = False
    ) -> None:
        self.id = subscription_id
        self.session_events = session_events  # whether `Inbox.session_closed` reaches this subscriber
        self._inbox = inbox
        self._send, self._receive = trio.open_memory_channel[StreamItem](buffer)
        # Messages published from now on reach the channel; everything up to `high` comes from the journal.
        self.high = inbox.journal.last_cursor
        self.delivered = self.high if since is None else min(since, self.high)  # the last cursor handed out
        self._backlog: collections.deque[ReceivedMessage] = collections.deque()
        self.end: SubscriptionEnd | None = None
        self.detached = False

    def offer(self, item: StreamItem) -> None:
        """Called by the publisher: never blocks; a full buffer ends this subscription as lagged."""
        if self.end is not None:
            return
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            self.close(api.LAGGED, "subscriber too slow: resubscribe with since=resume_from")

    def close(self, kind: ErrorKind, message: str) -> None:
        """End the stream; what is already buffered is still delivered, then iteration stops."""
        if self.end is None:
            self.end = SubscriptionEnd(kind, message)
            self._send.close()
            self._inbox.forget(self)

    def detach(self) -> None:
        """The consumer is gone (unsubscribed, hung up): stop receiving without reporting an end."""
        self.detached = True
        self._receive.close()
        self._send.close()
        self._inbox.forget(self)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> ReceivedMessage:
        """The backlog (cursor > since) first, then live messages: each exactly once, in cursor order."""
        while True:
            item = await self.next_item()
            if item is None:
                raise StopAsyncIteration
            if isinstance(item, ReceivedMessage):
                return item

    async def next_item(self) -> StreamItem | None:
        """Like iterating, but with the live events in their place among the messages; None at the end."""
        while True:
            if self.detached:
                return None
            if not self._backlog and self.delivered < self.high:
                page = await self._inbox.journal.since(self.delivered, BACKLOG_PAGE)
                self._backlog.extend(record for record in page if self.delivered < record.cursor <= self.high)
                if not self._backlog:
                    self.high = self.delivered  # the rest was dropped from the journal meanwhile
            if self._backlog:
                record: StreamItem = self._backlog.popleft()
            else:
                try:
                    record = await self._receive.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    return None
            if isinstance(record, SessionClosed):
                return record  # live only: every one received after subscribing is new
            if record.cursor > self.delivered:
                self.delivered = record.cursor
                return record

    @property
    def resume_from(self) -> int:
        """The last cursor handed to the consumer: resubscribe with since=resume_from to continue."""
        return self.delivered


class Inbox:
    """The publisher side used by client sessions, and the subscriber registry used by the control server."""

    def __init__(self, journal: Journal, buffer: int) -> None:
        self.journal = journal
        self.buffer = buffer
        self._subscribers: dict[str, Subscription] = {}
        self._ids = itertools.count(1)
        self.closed: SubscriptionEnd | None = None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def use_journal(self, journal: Journal) -> None:
        """Swap the journal (the client sessions bring a durable one) before anyone has subscribed."""
        if self._subscribers:
            raise RuntimeError("the journal can only be replaced before the first subscription")
        self.journal = journal

    async def publish(self, message: InboundMessage) -> ReceivedMessage:
        """Journal ``message``, then offer it to every subscriber (never waits for a subscriber)."""
        record = await self.journal.append(message)
        self.announce(record)
        return record

    def announce(self, record: ReceivedMessage) -> None:
        """Offer a message already journaled (e.g. in the session's own transaction) to every subscriber.

        Call it with no checkpoint between the journal's `last_cursor` advancing and this call, so
        that a subscriber registering in between cannot miss the record (it will only dedupe it).
        """
        for subscriber in list(self._subscribers.values()):
            subscriber.offer(record)

    def session_closed(self, pk: str, by: str, ts: int) -> None:
        """Offer "the session with ``pk`` ended" to every subscriber that asked for session events.

        Never waits, like `announce`, and goes through the same buffer, so each subscriber sees it after
        every message announced before it.
        """
        event = SessionClosed(peer=pk, by=by, ts=ts)
        for subscriber in list(self._subscribers.values()):
            if subscriber.session_events:
                subscriber.offer(event)

    def subscribe(self, since: int | None, *, session_events: bool = False) -> Subscription:
        """Register a subscriber now (synchronously, so no message can slip between backlog and live).

        ``session_events``: also deliver `SessionClosed` events, through `Subscription.next_item`.
        """
        if self.closed is not None:
            raise api.RpcError(self.closed.kind, self.closed.message)
        subscription = Subscription(self, f"s{next(self._ids)}", since, self.buffer, session_events=session_events)
        self._subscribers[subscription.id] = subscription
        return subscription

    def get(self, subscription_id: str) -> Subscription | None:
        return self._subscribers.get(subscription_id)

    def forget(self, subscription: Subscription) -> None:
        self._subscribers.pop(subscription.id, None)

    def close(self, kind: ErrorKind, message: str) -> None:
        """End every subscription (shutdown) and refuse new ones."""
        self.closed = SubscriptionEnd(kind, message)
        for subscriber in list(self._subscribers.values()):
            subscriber.close(kind, message)
