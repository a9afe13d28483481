"""What rooms and attached handlers keep on disk, and the one way they write it.

Layout under the daemon's state directory::

    rooms/<room_id>/room.json     a room: settings, relay port, invite, guest, conversation progress
    rooms/<room_id>/relay.db      the room relay's queue and its HMAC secret file (owned by agentroomd.relay)
    rooms/<room_id>/tunnel-child.json  the running tunnel child (pid, start time, ...), removed once it is
                                  reaped; a restart ends the one a killed daemon left (agentroomd.orphans)
    rooms/closed-relays.json      relay URLs of stopped rooms: our sessions stop reconnecting to them
    handlers/<peer pk>.json       a handler attached to one peer (`agentroomctl invite accept --on-message`)

Why one small JSON file per room and not a table in the client database: a room's file is its whole
life (its port, so a restart binds the same one; its invite; how far its handler got), it is written
rarely, and deleting the room's directory is the whole of `room stop`.

`RecordFile.save` is the only writer: it serialises the record inside a per-file lock (so two tasks
never race on the temporary file and the newest state always lands last) and writes it with
`files.atomic_write` in a worker thread. The handled cursor is saved *before* a handler runs for a
message, so a crash can lose one run but never repeat one (at-most-once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
import cattrs
import trio

from agentroomd.files import atomic_write

T = TypeVar("T")

ROOMS_DIR = "rooms"
HANDLERS_DIR = "handlers"
ROOM_FILE = "room.json"
CLOSED_RELAYS_FILE = "closed-relays.json"
FORMAT_VERSION = 1


class StateError(Exception):
    """A room or handler file cannot be read or written; the message names the file."""


@attrs.define
class PeerProgress:
    """How far the exchange with one peer went."""

    turns: int = 0  # our replies (the seed included) that went out
    ended: str | None = None  # "max_turns" | "peer_ended" | "room_closed"


@attrs.define
class Conversation:
    """A handler's progress: what it has taken from the journal, and each peer's turns."""

    handled_cursor: int = 0  # journal cursor of the last message taken (saved before its handler runs)
    seed_sent: bool = False
    peers: dict[str, PeerProgress] = attrs.Factory(dict)
    stats: dict[str, int] = attrs.Factory(dict)  # the handler's counters, so `room status` survives restarts

    def progress(self, peer: str) -> PeerProgress:
        return self.peers.setdefault(peer, PeerProgress())


@attrs.define
class RoomRecord:
    room_id: str
    name: str | None
    created_at: int  # ms since the epoch
    port: int  # 0 until the relay has bound one; then the same port on every start
    tunnel: bool
    on_message: str | None
    seed: str | None
    max_turns: int
    ttl_ms: int
    protocol: int = 3  # 3 between our own peers; 2 (--compat v2) for a TypeScript guest
    invite_url: str | None = None
    invite_id: str | None = None
    invite_expires_at: int | None = None
    invite_relay: str | None = None  # the relay URL inside the invite (the public one when tunnelled)
    issued_invites: list[str] = attrs.Factory(list)  # every invite id this room published
    peer: str | None = None  # the guest, once it redeemed an invite
    conversation: Conversation = attrs.Factory(Conversation)
    version: int = FORMAT_VERSION


@attrs.define
class AttachmentRecord:
    peer: str
    on_message: str
    max_turns: int
    seed: str | None
    created_at: int
    conversation: Conversation = attrs.Factory(Conversation)
    version: int = FORMAT_VERSION


_converter = cattrs.Converter()


def encode(record: Any) -> bytes:
    return (json.dumps(_converter.unstructure(record), ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def decode(path: Path, kind: type[T]) -> T:
    """Read a record; StateError naming the file when it is unreadable, not JSON, or not a record."""
    try:
        raw = json.loads(path.read_bytes())
    except OSError as exc:
        raise StateError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise StateError(f"{path} is corrupt (not JSON: {exc}); move it away to start without it") from exc
    if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION:
        raise StateError(f"{path} is not a version {FORMAT_VERSION} agentroom record; move it away")
    try:
        return _converter.structure(raw, kind)
    except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
        problems = "; ".join(cattrs.transform_error(exc)) if isinstance(exc, cattrs.BaseValidationError) else str(exc)
        raise StateError(f"{path} is corrupt ({problems}); move it away to start without it") from exc


class RecordFile(Generic[T]):
    """A record and the file it lives in. ``enabled`` is False while a room is still being opened."""

    def __init__(self, path: Path, record: T, *, enabled: bool = True) -> None:
        self.path = path
        self.record = record
        self.enabled = enabled
        self._lock = trio.Lock()

    async def save(self) -> None:
        """Write the record as it is now; raises StateError (nothing changed on disk) when the write fails."""
        if not self.enabled:
            return
        async with self._lock:
            data = encode(self.record)
            try:
                await trio.to_thread.run_sync(atomic_write, self.path, data)
            except OSError as exc:
                raise StateError(f"cannot write {self.path}: {exc.strerror or exc}") from exc


def read_closed_relays(path: Path) -> list[str]:
    """The relay URLs of stopped rooms; StateError when the file exists but is not a list of strings."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise StateError(f"{path} is unreadable ({exc}); delete it (it only quiets reconnects)") from exc
    if not isinstance(raw, list) or not all(isinstance(url, str) for url in raw):
        raise StateError(f"{path} is not a list of URLs; delete it (it only quiets reconnects)")
    return raw


async def write_closed_relays(path: Path, urls: list[str]) -> None:
    data = (json.dumps(sorted(set(urls))) + "\n").encode()
    try:
        await trio.to_thread.run_sync(atomic_write, path, data)
    except OSError as exc:
        raise StateError(f"cannot write {path}: {exc.strerror or exc}") from exc
