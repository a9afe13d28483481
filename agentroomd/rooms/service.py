"""Rooms and handlers as a daemon service: `room.*` and `handler.*` control methods, reopening at start.

Who answers a peer: at most one of a room (its guest), a handler attached to the peer
(`invite accept --on-message`, `handler.attach`), or the one running `serve` (every other peer).
Rooms and attached handlers persist (see `agentroomd.rooms.state`) and come back on a daemon
restart; a serve lives exactly as long as the control connection that asked for it.

Graceful stop (a shutdown hook, run after the control plane has closed the inbox, so nothing new is
taken): running handlers get to finish within the daemon's grace period, serves are told the daemon
is stopping, then every room's relay closes its sockets with 1001 and its tunnel is stopped. Rooms'
files stay as they are, so the next start reopens them on the same ports.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from agentroomd.client.manager import MAX_PLAINTEXT_BYTES, ClientError, SessionManager
from agentroomd.client.service import protocol_version, rpc_error, ttl_problem
from agentroomd.context import DaemonContext
from agentroomd.control import api
from agentroomd.control.connection import Connection, ConnectionGoneError
from agentroomd.control.rpc import Caller
from agentroomd.files import ensure_private_dir
from agentroomd.handlers import limits_from_table
from agentroomd.log import short_pk
from agentroomd.orphans import CHILD_RECORD_FILE, end_orphans
from agentroomd.rooms.responder import Responder
from agentroomd.rooms.room import STOPPED_BEFORE_INVITE, Room, RoomDeps, describe_error
from agentroomd.rooms.state import (
    CLOSED_RELAYS_FILE,
    HANDLERS_DIR,
    ROOM_FILE,
    ROOMS_DIR,
    AttachmentRecord,
    Conversation,
    RecordFile,
    RoomRecord,
    StateError,
    decode,
    read_closed_relays,
    write_closed_relays,
)
from agentroomd.tunnel import TunnelConfig, TunnelError, resolve_cloudflared

OPEN_TIMEOUT_S = 30.0  # without a tunnel: the relay, our connection to it and the invite
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SERVE_EVENT_BUFFER = 1024
# handler.attach's seed status when the peer has not finished the handshake (a v3 inviter that is offline)
SEED_AFTER_HANDSHAKE = "after_handshake"


def now_ms() -> int:
    return int(time.time() * 1000)


class Attachment:
    """A handler attached to one peer, under its own cancel scope (detach cancels it)."""

    def __init__(self, file: RecordFile[AttachmentRecord], responder: Responder) -> None:
        self.file = file
        self.responder = responder
        self.scope = trio.CancelScope()
        self.finished = trio.Event()

    @property
    def peer(self) -> str:
        return self.file.record.peer

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with self.scope:
            try:
                await self.responder.run(task_status=task_status)
            finally:
                self.finished.set()


@attrs.define(eq=False)
class ServeEvents:
    """The events of one serve on their way to its client; never blocks the handler."""

    channel: trio.MemorySendChannel[dict[str, Any]]
    dropped: int = 0

    def put(self, event: dict[str, Any]) -> None:
        try:
            self.channel.send_nowait({**event, "ts": now_ms()})
        except trio.WouldBlock:
            self.dropped += 1  # a client that does not read its events must not stall the handler
        except trio.ClosedResourceError:
            pass


@attrs.define(eq=False)
class Serve:
    serve_id: str
    responder: Responder
    events: ServeEvents
    created: float = attrs.Factory(trio.current_time)
    running: bool = False  # its task started (only after the reply reached the client)


class RoomsService:
    def __init__(self, ctx: DaemonContext, sessions: SessionManager, nursery: trio.Nursery) -> None:
        self.ctx = ctx
        self.sessions = sessions
        self.nursery = nursery
        self.log = ctx.log
        self.rooms_dir = ctx.paths.state_dir / ROOMS_DIR
        self.handlers_dir = ctx.paths.state_dir / HANDLERS_DIR
        self.limits = limits_from_table(ctx.config.handlers)
        self.deps = RoomDeps(
            sessions=sessions, inbox=ctx.inbox, relay_table=ctx.config.relay,
            tunnel_config=TunnelConfig.from_table(ctx.config.tunnel), limits=self.limits,
            limiter=trio.CapacityLimiter(self.limits.max_concurrent), log=ctx.log,
            ack_timeout_s=ctx.config.client.ack_timeout_s,
        )  # fmt: skip
        self.rooms: dict[str, Room] = {}
        self.broken: dict[str, str] = {}  # room id -> why its file cannot be read
        self.attachments: dict[str, Attachment] = {}
        # handler.attach / handler.detach of one peer, one at a time: attach checks "nobody answers this peer"
        # and then awaits (saving, starting, seeding), so two at once would both pass the check and both answer
        self._attach_locks: dict[str, trio.Lock] = {}
        self.serves: dict[str, Serve] = {}
        self._serve_ids = 0
        self.closed_relays: list[str] = []  # relay URLs of stopped rooms

    # -- start ----------------------------------------------------------------------------------

    async def reopen(self) -> None:
        """Start every saved room and attached handler again (rooms on their saved ports)."""
        ensure_private_dir(self.rooms_dir)
        ensure_private_dir(self.handlers_dir)
        # Tunnels a killed daemon left running would serve dead ports, and the rooms would start second ones.
        await end_orphans(self.rooms_dir.glob(f"*/{CHILD_RECORD_FILE}"), self.deps.tunnel_config.kill_grace_s, self.log)
        for directory in sorted(self.rooms_dir.iterdir()):
            path = directory / ROOM_FILE
            if not directory.is_dir() or not path.exists():
                continue
            try:
                record = decode(path, RoomRecord)
                if record.room_id != directory.name:  # `room stop` removes rooms/<room_id>: it must be this one
                    raise StateError(
                        f"{path} names room {record.room_id!r} but lies in {directory.name}/ (a copied or renamed "
                        "directory?); move it away to start without it"
                    )
                room = Room(RecordFile(path, record), directory, self.deps)
            except (StateError, ValueError) as exc:
                self.broken[directory.name] = _unusable(path, exc)
                self.log.error("room_unreadable", room=directory.name, error=self.broken[directory.name])
                continue
            self.rooms[record.room_id] = room
            await self.nursery.start(partial(room.host, strict_start=False))
            self.log.info("room_reopened", room=record.room_id, port=record.port)
        for path in sorted(self.handlers_dir.glob("*.json")):
            try:
                attached = decode(path, AttachmentRecord)
                attachment = await self._start_attachment(RecordFile(path, attached))
            except (StateError, ValueError) as exc:  # ValueError: from the Responder, before anything started
                self.log.error("handler_unreadable", file=str(path), error=_unusable(path, exc))
                continue
            if attached.seed and not attached.conversation.seed_sent:
                # attached while the inviter was offline (or stopped before the seed went out): it still waits
                attachment.responder.send_seed_after_handshake(attached.peer, attached.seed)
                self.log.info("seed_waiting", peer=short_pk(attached.peer))
        # Peers and invites of stopped rooms still name those rooms' relays: stop reconnecting to them.
        try:
            self.closed_relays = read_closed_relays(self.rooms_dir / CLOSED_RELAYS_FILE)
        except StateError as exc:
            self.log.warn("closed_relays_unreadable", error=str(exc))
        live_ports = {room.record.port for room in self.rooms.values()}
        for url in self.closed_relays:
            if urlsplit(url).port not in live_ports:
                self.sessions.close_relay(url)

    def owner(self, pk: str) -> str | None:
        """Who answers ``pk`` already: "room <id>" (a room with a handler) or "handler", else None."""
        for room in self.rooms.values():
            if room.record.peer == pk and room.responder is not None:
                return f"room {room.room_id}"
        return "handler" if pk in self.attachments else None

    def session_closed(self, pk: str, by: str) -> None:
        """A session ended (v3 CLOSE, from the peer or from us): whoever answers that peer ends its exchange."""
        reason = "peer_closed" if by == "peer" else "closed"
        responders = [room.responder for room in self.rooms.values()
                      if room.record.peer == pk and room.responder is not None]
        if pk in self.attachments:
            responders.append(self.attachments[pk].responder)
        responders += [serve.responder for serve in self.serves.values()
                       if serve.running and pk in serve.responder.conversation.peers]
        for responder in responders:
            self.nursery.start_soon(partial(responder.finish, pk, reason, notify_peer=False))

    def invite_redeemed(self, invite_id: str, pk: str) -> None:
        for room in self.rooms.values():
            if room.owns_invite(invite_id):
                room.guest_joined(pk)
                return

    # -- rooms ----------------------------------------------------------------------------------

    async def room_open(self, params: api.RoomOpenParams, caller: Caller) -> api.RoomInfo:
        self._check_open(params)
        if params.tunnel:
            self._check_tunnel()
        room_id = self._new_room_id()
        directory = ensure_private_dir(self.rooms_dir / room_id)
        ttl_ms = params.ttl_ms if params.ttl_ms is not None else self.ctx.config.client.invite_ttl_s * 1000
        protocol = protocol_version(params.compat)
        record = RoomRecord(
            room_id=room_id, name=params.name, created_at=now_ms(), port=params.port or 0, tunnel=params.tunnel,
            on_message=params.on_message, seed=params.seed, max_turns=params.max_turns, ttl_ms=ttl_ms,
            protocol=protocol,
            conversation=Conversation(handled_cursor=self.ctx.inbox.journal.last_cursor),
        )  # fmt: skip
        room = Room(RecordFile(directory / ROOM_FILE, record, enabled=False), directory, self.deps)
        self.rooms[room_id] = room
        try:
            try:
                await self.nursery.start(partial(room.host, strict_start=True))
            except Exception as exc:  # the relay did not start: the port is taken, most likely
                if room.scope.cancel_called:  # or a `room.stop` (--all) ended the room before it could start
                    raise api.RpcError(api.INVALID_STATE, STOPPED_BEFORE_INVITE) from exc
                raise api.RpcError(
                    api.INVALID_STATE,
                    f"cannot start the room relay on port {params.port or 'any'}: {describe_error(exc)}"
                    + ("; choose another --port, or leave it out" if params.port else ""),
                ) from exc
            timeout = OPEN_TIMEOUT_S + (2 * self.deps.tunnel_config.url_timeout_s if params.tunnel else 0)
            with trio.move_on_after(timeout):
                await room.wait_invite()
            if record.invite_url is None:
                tunnel = room.tunnel.status.value if room.tunnel is not None else None
                why = f"; last error: {tunnel.last_error}" if tunnel is not None and tunnel.last_error else ""
                kind = api.TUNNEL_UNAVAILABLE if params.tunnel else api.TIMEOUT
                raise api.RpcError(kind, f"no invite within {timeout:g} s{why}")
            room.file.enabled = True
            await room.file.save()
            await self._forget_closed_relay(room.local_url)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._discard(room)
            raise
        self.log.info("room_opened", room=room_id, port=record.port, tunnel=params.tunnel,
                      handler=bool(params.on_message))
        return await room.info()

    def _check_open(self, params: api.RoomOpenParams) -> None:
        problems = []
        if params.on_message is not None and not params.on_message.strip():
            problems.append("on_message: the handler command is empty")
        if params.max_turns < 0:
            problems.append("max_turns: must be 0 (no limit) or more")
        if params.max_turns and not params.on_message:
            problems.append("max_turns: needs a handler (on_message)")
        problems += _seed_problems(params.seed)
        if params.port is not None and not 0 <= params.port <= 65535:
            problems.append("port: must be 1..65535, or 0 for any free port")
        ttl = None if params.ttl_ms is None else ttl_problem(params.ttl_ms, self.sessions.clock_ms())
        if ttl is not None:
            problems.append(f"ttl_ms: {ttl}")
        if params.name is not None and not NAME_PATTERN.fullmatch(params.name):
            problems.append("name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if problems:
            raise api.RpcError(api.INVALID_PARAMS, "; ".join(problems), errors=problems)
        if params.name is not None and any(params.name in (r.room_id, r.record.name) for r in self.rooms.values()):
            raise api.RpcError(api.ALREADY_EXISTS, f"a room named {params.name!r} is already open")

    def _check_tunnel(self) -> None:
        config = self.deps.tunnel_config
        if config.provider != "cloudflared":
            return
        try:
            resolve_cloudflared(config.cloudflared, self.deps.environ)
        except TunnelError as exc:
            raise api.RpcError(api.TUNNEL_UNAVAILABLE, str(exc)) from exc

    def _new_room_id(self) -> str:
        while True:
            room_id = f"room-{secrets.token_hex(3)}"
            if room_id not in self.rooms and not (self.rooms_dir / room_id).exists():
                return room_id

    async def _discard(self, room: Room) -> None:
        """Stop a room and delete everything it had on disk."""
        await room.stop()
        self.rooms.pop(room.room_id, None)
        await trio.to_thread.run_sync(partial(shutil.rmtree, room.directory, ignore_errors=True))
        if room.local_url is not None and room.local_url not in self.closed_relays:
            self.closed_relays.append(room.local_url)
            await self._save_closed_relays()

    async def _forget_closed_relay(self, url: str | None) -> None:
        """A new room listens where a stopped one did: its URL is live again."""
        if url in self.closed_relays:
            self.closed_relays.remove(url)
            await self._save_closed_relays()

    async def _save_closed_relays(self) -> None:
        try:
            await write_closed_relays(self.rooms_dir / CLOSED_RELAYS_FILE, self.closed_relays)
        except StateError as exc:
            self.log.warn("closed_relays_not_saved", error=str(exc))

    def _find(self, ref: str | None) -> Room | str:
        """The room named by id or name (or the only one); a broken room's id gives its id back."""
        if ref is None:
            names = list(self.rooms) + list(self.broken)
            if len(names) == 1:
                return self.rooms.get(names[0]) or names[0]
            if not names:
                raise api.RpcError(api.NOT_FOUND, "no room is open; open one with `agentroomctl room open`")
            raise api.RpcError(
                api.INVALID_PARAMS, f"{len(names)} rooms are open: name one (see `agentroomctl room list`)"
            )
        for room in self.rooms.values():
            if ref in (room.room_id, room.record.name):
                return room
        if ref in self.broken:
            return ref
        raise api.RpcError(api.NOT_FOUND, f"no room {ref!r}; see `agentroomctl room list`")

    async def room_list(self, params: api.Empty, caller: Caller) -> api.RoomListResult:
        rooms = [await room.info() for room in sorted(self.rooms.values(), key=lambda r: r.record.created_at)]
        rooms += [self._broken_info(room_id) for room_id in sorted(self.broken)]
        return api.RoomListResult(rooms=rooms)

    def _broken_info(self, room_id: str) -> api.RoomInfo:
        return api.RoomInfo(room_id=room_id, name=None, state="failed", relay_url=None, public_url=None,
                            invite_url=None, last_error=self.broken[room_id])

    async def room_status(self, params: api.RoomRef, caller: Caller) -> api.RoomInfo:
        found = self._find(params.room_id)
        return self._broken_info(found) if isinstance(found, str) else await found.info()

    async def room_stop(self, params: api.RoomStopParams, caller: Caller) -> api.RoomStopResult:
        if params.all and params.room_id is not None:
            raise api.RpcError(api.INVALID_PARAMS, "give a room or all, not both")
        if params.all or (params.room_id is None and not self.rooms and not self.broken):
            targets: list[Room | str] = [*self.rooms.values(), *self.broken]
        else:
            targets = [self._find(params.room_id)]
        stopped = []
        for target in targets:
            if isinstance(target, str):
                self.broken.pop(target, None)
                await trio.to_thread.run_sync(partial(shutil.rmtree, self.rooms_dir / target, ignore_errors=True))
                stopped.append(target)
            else:
                await self._discard(target)
                stopped.append(target.room_id)
        return api.RoomStopResult(stopped=stopped)

    # -- handlers attached to peers ---------------------------------------------------------------

    async def _start_attachment(self, file: RecordFile[AttachmentRecord]) -> Attachment:
        record = file.record
        responder = Responder(
            label="", command=record.on_message, max_turns=record.max_turns, conversation=record.conversation,
            accepts=lambda pk: pk == record.peer, inbox=self.ctx.inbox, sessions=self.sessions,
            limits=self.limits, limiter=self.deps.limiter, log=self.log, save=file.save,
            ack_timeout_s=self.deps.ack_timeout_s,
        )  # fmt: skip
        attachment = Attachment(file, responder)
        self.attachments[record.peer] = attachment
        await self.nursery.start(attachment.run)
        return attachment

    def _resolve(self, peer: str) -> str:
        try:
            return self.sessions.resolve_peer(peer)
        except ClientError as exc:
            raise rpc_error(exc) from exc

    async def handler_attach(self, params: api.HandlerAttachParams, caller: Caller) -> api.HandlerAttachResult:
        _check_handler(params.on_message, params.max_turns, params.seed)
        pk = self._resolve(params.peer)
        async with self._attach_lock(pk):
            return await self._attach(pk, params)

    def _attach_lock(self, pk: str) -> trio.Lock:
        return self._attach_locks.setdefault(pk, trio.Lock())

    async def _attach(self, pk: str, params: api.HandlerAttachParams) -> api.HandlerAttachResult:
        owner = self.owner(pk)
        if owner is not None:
            raise api.RpcError(api.ALREADY_EXISTS, f"{short_pk(pk)} is already answered by a {owner}")
        if params.since is not None and params.since < 0:
            raise api.RpcError(api.INVALID_PARAMS, "since: must be 0 or a cursor", errors=["since: < 0"])
        since = params.since if params.since is not None else self.ctx.inbox.journal.last_cursor
        record = AttachmentRecord(peer=pk, on_message=params.on_message, max_turns=params.max_turns,
                                  seed=params.seed, created_at=now_ms(), conversation=Conversation(since))
        file = RecordFile(self.handlers_dir / f"{pk}.json", record)
        try:
            await file.save()
        except StateError as exc:
            raise api.RpcError(api.STORAGE_ERROR, str(exc)) from exc
        attachment = await self._start_attachment(file)
        seed = None
        if params.seed:
            try:
                seed = await _send_seed(attachment.responder, pk, params.seed, after_handshake=True)
            except api.RpcError as exc:
                # All or nothing: a handler left attached after its seed failed would answer a conversation
                # that never started, and a retry of the same command would be refused as "already answered".
                # (A handshake still pending is no failure: the seed goes out once the inviter answers.)
                await self._remove_attachment(attachment)
                raise api.RpcError(api.ErrorKind(exc.code, exc.type),
                                   f"the seed was not sent: {exc.message}; so no handler was attached "
                                   f"(`agentroomctl handler attach {pk[:12]}` once that is solved)",
                                   **{k: v for k, v in exc.data.items() if k != "type"}) from exc
        self.log.info("handler_attached", peer=short_pk(pk), max_turns=params.max_turns,
                      seed=seed.status if seed is not None else None)
        return api.HandlerAttachResult(peer=pk, handler=attachment.responder.info(), seed=seed)

    async def _remove_attachment(self, attachment: Attachment) -> None:
        """Stop ``attachment`` and forget it, its saved record included."""
        if self.attachments.get(attachment.peer) is attachment:
            del self.attachments[attachment.peer]
        attachment.scope.cancel()
        await attachment.finished.wait()
        await trio.to_thread.run_sync(partial(Path.unlink, attachment.file.path, missing_ok=True))

    async def handler_detach(self, params: api.HandlerDetachParams, caller: Caller) -> api.Empty:
        pk = self._resolve(params.peer)
        async with self._attach_lock(pk):  # an attach under way finishes first (its saved file is not lost)
            attachment = self.attachments.pop(pk, None)
            if attachment is None:
                owner = self.owner(pk)
                hint = f" (it is answered by {owner}: stop the room instead)" if owner else ""
                raise api.RpcError(api.NOT_FOUND, f"no handler is attached to {short_pk(pk)}{hint}")
            await self._remove_attachment(attachment)
        self.log.info("handler_detached", peer=short_pk(pk))
        return api.Empty()

    # -- serve: a handler for as long as one control connection stays open -----------------------

    async def handler_serve(self, params: api.ServeParams, caller: Caller) -> api.ServeResult:
        if not isinstance(caller, Connection):
            raise api.RpcError(api.INVALID_STATE, "serve needs a control connection")
        _check_handler(params.on_message, params.max_turns, params.seed)
        if params.seed and not params.to:
            raise api.RpcError(api.INVALID_PARAMS, "a seed needs a peer to send it to (to)", errors=["to: missing"])
        for stale in [s for s in self.serves.values() if not s.running and trio.current_time() - s.created > 10]:
            self.serves.pop(stale.serve_id)  # its client hung up before the reply: the serve never started
        if self.serves:
            raise api.RpcError(api.ALREADY_EXISTS, "a serve is already running for this daemon; stop it first")
        to = self._resolve(params.to) if params.to else None
        if to is not None and (owner := self.owner(to)) is not None:
            raise api.RpcError(api.ALREADY_EXISTS, f"{short_pk(to)} is already answered by a {owner}")
        self._serve_ids += 1
        serve_id = f"serve{self._serve_ids}"
        cursor = self.ctx.inbox.journal.last_cursor
        send, receive = trio.open_memory_channel[dict[str, Any]](SERVE_EVENT_BUFFER)
        events = ServeEvents(send)
        responder = Responder(
            label="", command=params.on_message, max_turns=params.max_turns, conversation=Conversation(cursor),
            accepts=lambda pk: self.owner(pk) is None, inbox=self.ctx.inbox, sessions=self.sessions,
            limits=self.limits, limiter=self.deps.limiter, log=self.log, on_event=events.put,
            ack_timeout_s=self.deps.ack_timeout_s,
        )  # fmt: skip
        serve = Serve(serve_id, responder, events)
        self.serves[serve_id] = serve
        try:
            seed = await _send_seed(responder, to, params.seed, after_handshake=True) if params.seed and to else None
        except BaseException:
            self.serves.pop(serve_id, None)
            raise
        caller.after_reply(partial(self._run_serve, caller, serve, receive))
        self.log.info("serve_started", serve=serve_id, max_turns=params.max_turns)
        return api.ServeResult(serve=serve_id, pk=self.sessions.pk, cursor=cursor, seed=seed)

    async def _run_serve(
        self, connection: Connection, serve: Serve, events: trio.MemoryReceiveChannel[dict[str, Any]]
    ) -> None:
        serve.running = True
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve.responder.run)
                async with events:
                    async for event in events:
                        await connection.notify(api.HANDLER_EVENT, {"serve": serve.serve_id, "event": event})
                        if event["type"] in ("done", "closed"):
                            break
                nursery.cancel_scope.cancel()
        except* ConnectionGoneError:
            pass  # the serve's client left: the serve ends with it (raised in the nursery: in a group)
        finally:
            serve.events.channel.close()
            self.serves.pop(serve.serve_id, None)
            self.log.info("serve_ended", serve=serve.serve_id, dropped_events=serve.events.dropped)

    # -- shutdown and status --------------------------------------------------------------------

    async def shutdown(self) -> None:
        responders = [room.responder for room in self.rooms.values() if room.responder is not None]
        responders += [a.responder for a in self.attachments.values()]
        responders += [s.responder for s in self.serves.values()]
        async with trio.open_nursery() as nursery:
            for responder in responders:
                nursery.start_soon(responder.drain)
        for serve in list(self.serves.values()):
            error = api.RpcError(api.SHUTTING_DOWN, "agentroomd is shutting down")
            serve.events.put({"type": "closed", "error": error.to_json()})
        async with trio.open_nursery() as nursery:
            for room in list(self.rooms.values()):
                room.scope.cancel()
                nursery.start_soon(room.finished.wait)

    def status(self) -> dict[str, Any]:
        return {
            "rooms": len(self.rooms) + len(self.broken),
            "handlers": [
                {"peer": pk, **attrs.asdict(attachment.responder.info()), **_seed_status(attachment.responder)}
                for pk, attachment in self.attachments.items()
            ],
            "serving": bool(self.serves),
        }


def _unusable(path: Path, exc: StateError | ValueError) -> str:
    """Why a saved record cannot be used. A value no room or handler can have (a negative max_turns, a blank
    command; the Responder refuses it with a ValueError) is corruption like any other, named by its file."""
    if isinstance(exc, StateError):
        return str(exc)
    return f"{path} is corrupt ({exc}); move it away to start without it"


def _check_handler(command: str, max_turns: int, seed: str | None) -> None:
    problems = []
    if not command.strip():
        problems.append("on_message: the handler command is empty")
    if max_turns < 0:
        problems.append("max_turns: must be 0 (no limit) or more")
    problems += _seed_problems(seed)
    if problems:
        raise api.RpcError(api.INVALID_PARAMS, "; ".join(problems), errors=problems)


def _seed_problems(seed: str | None) -> list[str]:
    """A seed that could never be sent is refused up front, before anything is attached or opened."""
    if seed is None:
        return []
    if not seed:
        return ["seed: the message is empty"]
    size = len(seed.encode("utf-8", errors="surrogatepass"))
    if size > MAX_PLAINTEXT_BYTES:
        return [f"seed: {size} bytes; a message holds at most {MAX_PLAINTEXT_BYTES}"]
    return []


def _seed_status(responder: Responder) -> dict[str, Any]:
    """An attached handler's seed in `daemon.status`: still waiting for the handshake, or why it failed."""
    return {"seed_waiting": responder.seed_waiting, "last_error": responder.seed_error}


async def _send_seed(
    responder: Responder, peer: str, text: str, *, after_handshake: bool = False
) -> api.MessageSendResult | None:
    """Send the seed now; with ``after_handshake``, a handshake still pending defers it instead of failing.

    The deferred seed is reported with status `SEED_AFTER_HANDSHAKE` (no msg_id yet: nothing was sealed).
    """
    try:
        sent = await responder.send_seed(peer, text)
    except ClientError as exc:
        if after_handshake and exc.kind == "handshake_pending":
            responder.send_seed_after_handshake(peer, text)
            return api.MessageSendResult(status=SEED_AFTER_HANDSHAKE, msg_id="", peer=peer)
        raise rpc_error(exc) from exc
    except StateError as exc:
        raise api.RpcError(api.STORAGE_ERROR, f"the seed was not sent: {exc}") from exc
    if sent is None:
        return None
    status, msg_id, pk = sent
    return api.MessageSendResult(status=status, msg_id=msg_id, peer=pk)


async def run_rooms(ctx: DaemonContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Reopen saved rooms and handlers, then serve the room and handler methods until cancelled."""
    sessions = ctx.sessions
    if sessions is None:
        raise RuntimeError("the rooms service needs the client sessions to start first (SERVICES order)")
    async with trio.open_nursery() as nursery:
        service = RoomsService(ctx, sessions, nursery)
        sessions.on_invite_redeemed = service.invite_redeemed
        sessions.on_session_closed = service.session_closed
        await service.reopen()
        ctx.methods.register(api.ROOM_OPEN, service.room_open)
        ctx.methods.register(api.ROOM_LIST, service.room_list)
        ctx.methods.register(api.ROOM_STATUS, service.room_status)
        ctx.methods.register(api.ROOM_STOP, service.room_stop)
        ctx.methods.register(api.HANDLER_ATTACH, service.handler_attach)
        ctx.methods.register(api.HANDLER_DETACH, service.handler_detach)
        ctx.methods.register(api.HANDLER_SERVE, service.handler_serve)
        ctx.add_status("rooms", service.status)
        ctx.on_shutdown("rooms", service.shutdown)
        task_status.started()
        await trio.sleep_forever()  # the nursery stays open for rooms opened later


__all__ = ["RoomsService", "run_rooms"]
