"""The durable journal of received messages, as the control plane's `Journal` seam expects it.

Rows live in the client store (one SQLite file), written in the same transaction as the ratchet
state that decrypted them. Cursors are the journal's row ids: increasing, not always consecutive
(sent messages share the table), which subscribers handle because they only compare cursors.
"""

from agentroomd.client.store import ClientStore, JournalRow
from agentroomd.control.api import ReceivedMessage
from agentroomd.control.inbox import InboundMessage


def to_received(row: JournalRow) -> ReceivedMessage:
    return ReceivedMessage(cursor=row.cursor, from_=row.peer_pk, text=row.text, msg_id=row.msg_id, ts=row.ts)


class StoreJournal:
    """`Journal` over the client store; `last_cursor` is cached so subscribing never touches the disk."""

    def __init__(self, store: ClientStore) -> None:
        self._store = store
        self._last = store.journal_tail()
        first = store.journal_since(0, limit=1)
        self._oldest = first[0].cursor if first else self._last + 1

    @property
    def last_cursor(self) -> int:
        return self._last

    @property
    def oldest_cursor(self) -> int:
        return self._oldest

    def refresh_oldest(self, oldest: int | None) -> None:
        """Old messages were pruned: the oldest kept one is now ``oldest`` (None: none kept)."""
        self._oldest = oldest if oldest is not None else self._last + 1

    def advanced_to(self, cursor: int) -> None:
        """A session journaled a message under ``cursor`` (called right after its commit)."""
        self._last = max(self._last, cursor)
        self._oldest = min(self._oldest, cursor)

    async def append(self, message: InboundMessage) -> ReceivedMessage:
        """Journal a message that changes no ratchet state (e.g. a system notice)."""
        cursor = await self._store.call(
            self._store.append_journal, message.from_, message.msg_id, message.text, message.ts
        )
        self.advanced_to(cursor)
        return ReceivedMessage(cursor=cursor, from_=message.from_, text=message.text, msg_id=message.msg_id,
                               ts=message.ts)

    async def since(self, cursor: int, limit: int) -> list[ReceivedMessage]:
        rows = await self._store.call(self._store.journal_since, cursor, limit)
        return [to_received(row) for row in rows]
