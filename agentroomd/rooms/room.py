"""One hosted room: its own relay, an optional tunnel, a single-use invite, and the handler for its guest.

A room's tasks, under the room's own cancel scope (`Room.stop` cancels exactly these)::

    Room.host                       restarts the room with backoff if it fails (e.g. its port is taken)
    └── _serve (one nursery)
        ├── serve_relay             the room relay, on the port saved in room.json (any free port the first time)
        ├── TunnelSupervisor.run    when tunnelled; `_follow_tunnel` publishes each URL change
        ├── Responder.run           when the room has a handler: answers the guest
        └── _settle                 finds a guest that joined while we were down, publishes the invite, seeds

The invite always names the relay URL a guest can reach: the tunnel's `wss://.../ws` when tunnelled
(our own client still talks to the relay on loopback), the local URL otherwise. While nobody has
joined, every new tunnel URL gets a fresh invite (the old one points at a dead URL); once the guest
joined, a new quick-tunnel URL cannot reach it (its daemon knows only the old one), which the room's
``last_error`` says plainly. A fixed `[tunnel] public_url` keeps the same URL across restarts.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import trio

from agentroomd import systemd
from agentroomd.client.manager import ClientError, SessionManager
from agentroomd.client.store import StoreError
from agentroomd.control import api
from agentroomd.control.inbox import Inbox
from agentroomd.handlers import HandlerLimits
from agentroomd.log import Logger, short_pk
from agentroomd.orphans import CHILD_RECORD_FILE
from agentroomd.relay.config import RelayConfig, relay_config_from
from agentroomd.relay.server import RelayHandle, serve_relay
from agentroomd.rooms.responder import Responder, end_notice
from agentroomd.rooms.state import RecordFile, RoomRecord, StateError
from agentroomd.tunnel import ObservableValue, TunnelConfig, TunnelState, TunnelStatus, TunnelSupervisor

RELAY_DB = "relay.db"
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 30.0
STABLE_AFTER_S = 60.0
STOP_NOTICE_S = 3.0
STOPPED_BEFORE_INVITE = "the room was stopped before its invite was out"  # room.open's error then
# The room's port and database are its own: the reference's PORT / AGENTROOM_DB are for `agentroomd relay`.
_RELAY_ENV_IGNORED = frozenset({"PORT", "AGENTROOM_DB"})
_RELAY_TABLE_IGNORED = frozenset({"port", "db", "state_dir", "tunnel"})


@attrs.frozen
class RoomDeps:
    """What every room needs from the daemon."""

    sessions: SessionManager
    inbox: Inbox
    relay_table: Mapping[str, Any]
    tunnel_config: TunnelConfig
    limits: HandlerLimits
    limiter: trio.CapacityLimiter
    log: Logger
    ack_timeout_s: float
    environ: Mapping[str, str] = attrs.Factory(lambda: dict(os.environ))


def now_ms() -> int:
    return int(time.time() * 1000)


def describe_error(exc: BaseException) -> str:
    """The one failure inside (nested) exception groups, in words."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class Room:
    def __init__(self, file: RecordFile[RoomRecord], directory: Path, deps: RoomDeps) -> None:
        self.file = file
        self.directory = directory
        self.deps = deps
        self.scope = trio.CancelScope()
        self.finished = trio.Event()
        self.relay: RelayHandle | None = None
        self.local_url: str | None = None
        self.tunnel: TunnelSupervisor | None = None
        # The tunnel as status reports show it. A new URL shows together with the invite that names it
        # (a relay round trip later), so that `public_url` and `invite_url` never disagree in one answer.
        self._tunnel_shown: TunnelStatus | None = None
        self.last_error: str | None = None
        self.invite_error: str | None = None
        self.starts = 0
        self._hosting = False
        self.changes = ObservableValue(0)  # bumped on every change `room.open` may be waiting for
        self._nursery: trio.Nursery | None = None
        self._invite_lock = trio.Lock()
        record = file.record
        self.responder: Responder | None = None
        if record.on_message:
            self.responder = Responder(
                label=record.room_id, command=record.on_message, max_turns=record.max_turns,
                conversation=record.conversation, accepts=self._is_guest, inbox=deps.inbox,
                sessions=deps.sessions, limits=deps.limits, limiter=deps.limiter, log=deps.log,
                save=file.save, ack_timeout_s=deps.ack_timeout_s,
            )  # fmt: skip

    @property
    def record(self) -> RoomRecord:
        return self.file.record

    @property
    def room_id(self) -> str:
        return self.record.room_id

    def _is_guest(self, pk: str) -> bool:
        return pk == self.record.peer

    def _changed(self) -> None:
        self.changes.set(self.changes.value + 1)

    # -- lifecycle ------------------------------------------------------------------------------

    async def host(self, *, strict_start: bool, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the room until `stop`. With ``strict_start`` a failure before the relay listens is raised
        to the opener; afterwards (and always on a daemon restart) failures are logged and retried."""
        reported = False

        def report() -> None:
            nonlocal reported
            if not reported:
                reported = True
                task_status.started()

        self._hosting = True
        if not strict_start:
            report()
        failures = 0
        with self.scope:
            try:
                while True:
                    began = trio.current_time()
                    try:
                        await self._serve(report)
                    except Exception as exc:  # one room failing must not stop the daemon: log, show, retry
                        if not reported:
                            raise
                        self._failed(exc)
                    failures = 1 if trio.current_time() - began >= STABLE_AFTER_S else failures + 1
                    await trio.sleep(min(RESTART_MAX_S, RESTART_INITIAL_S * 2 ** (failures - 1)))
            finally:
                self.finished.set()

    def _failed(self, exc: Exception) -> None:
        self.last_error = describe_error(exc)
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        fields: dict[str, Any] = {"room": self.room_id, "port": self.record.port, "error": self.last_error}
        if not isinstance(leaf, OSError):
            fields["traceback"] = "".join(traceback.format_exception(exc))
        self.deps.log.error("room_failed", **fields)
        self._changed()

    async def _serve(self, report: Callable[[], None]) -> None:
        record = self.record
        async with trio.open_nursery() as nursery:
            relay: RelayHandle = await nursery.start(partial(serve_relay, self.relay_config()))
            try:
                self.relay, self.local_url, self.last_error = relay, relay.url, None
                self.starts += 1
                if record.port != relay.port:
                    record.port = relay.port  # the same port on every later start
                    await self.file.save()
                self._nursery = nursery
                if record.tunnel:
                    self.tunnel = TunnelSupervisor(
                        self.deps.tunnel_config, relay.port, environ=self.deps.environ,
                        logger=Logger("tunnel"), label=self.room_id,
                        child_record=self.directory / CHILD_RECORD_FILE,
                    )  # fmt: skip
                    self._tunnel_shown = None  # a new supervisor: nothing of the last one's is shown
                    await nursery.start(self.tunnel.run)
                    nursery.start_soon(self._follow_tunnel, self.tunnel)
                if self.responder is not None:
                    await nursery.start(self.responder.run)
                self.deps.sessions.connection(relay.url)
                nursery.start_soon(self._settle, relay)
                self.deps.log.info("room_started", room=self.room_id, port=relay.port, tunnel=record.tunnel)
                self._changed()
                report()
                await trio.sleep_forever()
            finally:
                self._nursery = None
                self.relay = None

    def relay_config(self) -> RelayConfig:
        table = {k: v for k, v in self.deps.relay_table.items() if k not in _RELAY_TABLE_IGNORED}
        env = {k: v for k, v in self.deps.environ.items() if k not in _RELAY_ENV_IGNORED}
        return relay_config_from(
            table, env, state_dir=str(self.directory), port=self.record.port, db=str(self.directory / RELAY_DB)
        )

    async def stop(self) -> None:
        """Tell the guest (briefly), then end the relay, tunnel and handler of this room only."""
        peer = self.record.peer
        if peer is not None and self.relay is not None:
            with trio.move_on_after(STOP_NOTICE_S):
                await self._say_goodbye(peer)
        self.scope.cancel()
        self._changed()  # a `room.open` still waiting for this room's invite must not wait for it any more
        if self._hosting:
            await self.finished.wait()
        if self.local_url is not None:
            self.deps.sessions.close_relay(self.local_url)
        self.deps.log.info("room_stopped", room=self.room_id)

    async def _say_goodbye(self, peer: str) -> None:
        if self.responder is not None:
            await self.responder.finish(peer, "room_closed", notify_peer=True)
            return
        progress = self.record.conversation.progress(peer)
        if progress.ended is None:
            try:
                await self.deps.sessions.send_message(peer, end_notice("room_closed", progress.turns),
                                                      timeout_s=self.deps.ack_timeout_s)
            except ClientError as exc:
                self.deps.log.warn("end_notice_not_sent", room=self.room_id, error=str(exc))

    # -- invite, guest, seed --------------------------------------------------------------------

    async def _follow_tunnel(self, tunnel: TunnelSupervisor) -> None:
        version = -1
        while True:
            version, status = await tunnel.status.wait_change(version)
            systemd.notify_status(f"room {self.room_id}: tunnel {status.state.value} {status.url or ''}".strip())
            if status.url is not None and self.record.peer is None and status.url != self.record.invite_relay:
                await self.publish_invite(status.url, tunnel_status=status)
            self._tunnel_shown = status
            self._changed()

    async def _settle(self, relay: RelayHandle) -> None:
        record = self.record
        if record.peer is None:
            for invite_id in reversed(record.issued_invites):  # joined while the daemon was down?
                try:
                    pk = await self.deps.sessions.invite_redeemer(invite_id)
                except StoreError as exc:
                    self.deps.log.error("room_invite_lookup_failed", room=self.room_id, error=str(exc))
                    break
                if pk is not None:
                    self.guest_joined(pk)
                    return
        if not record.tunnel and record.peer is None and record.invite_relay != relay.url:
            await self.publish_invite(relay.url)
        if record.peer is not None:
            await self._seed_if_due()

    async def publish_invite(self, advertised_url: str, tunnel_status: TunnelStatus | None = None) -> None:
        """Create and publish a fresh single-use invite naming ``advertised_url``.

        ``tunnel_status``: the tunnel status that brought the URL; reports show it from the moment the
        invite is out (or has failed), not before.
        """
        async with self._invite_lock:
            relay, record = self.relay, self.record
            if relay is None or record.peer is not None:
                return
            try:
                invite = await self.deps.sessions.create_invite(
                    relay.url, record.ttl_ms, timeout_s=self.deps.ack_timeout_s, advertised_url=advertised_url,
                    version=record.protocol,
                )
            except (ClientError, StoreError) as exc:
                self.invite_error = f"could not publish the invite: {exc}"
                self.deps.log.error("room_invite_failed", room=self.room_id, error=str(exc))
                self._tunnel_shown = tunnel_status or self._tunnel_shown
                self._changed()
                return
            self._tunnel_shown = tunnel_status or self._tunnel_shown
            record.invite_url, record.invite_id = invite.url, invite.invite_id
            record.invite_expires_at, record.invite_relay = invite.expires_at, advertised_url
            record.issued_invites.append(invite.invite_id)
            self.invite_error = None
            await self._save_quietly()
            self.deps.log.info("room_invite", room=self.room_id, relay=advertised_url,
                               expires_at=record.invite_expires_at)
            self._changed()

    def owns_invite(self, invite_id: str) -> bool:
        return invite_id in self.record.issued_invites

    def guest_joined(self, pk: str) -> None:
        """One of our invites became a session: that peer is this room's guest (called synchronously)."""
        if self.record.peer is not None:
            return
        self.record.peer = pk
        self.deps.log.info("room_guest_joined", room=self.room_id, peer=short_pk(pk))
        self._changed()
        if self._nursery is not None:
            self._nursery.start_soon(self._after_join)

    async def _after_join(self) -> None:
        await self._save_quietly()
        await self._seed_if_due()

    async def _seed_if_due(self) -> None:
        record = self.record
        if not record.seed or record.conversation.seed_sent or record.peer is None:
            return
        try:
            if self.responder is not None:
                await self.responder.send_seed(record.peer, record.seed)
            else:
                record.conversation.seed_sent = True
                await self.file.save()
                await self.deps.sessions.send_message(record.peer, record.seed, timeout_s=self.deps.ack_timeout_s)
        except (ClientError, StateError) as exc:
            self.last_error = f"the seed was not sent: {exc}"
            self.deps.log.warn("seed_not_sent", room=self.room_id, error=str(exc))

    async def _save_quietly(self) -> None:
        try:
            await self.file.save()
        except StateError as exc:
            self.deps.log.error("state_not_saved", room=self.room_id, error=str(exc))

    # -- what `room.open` waits for, and what `room status` shows --------------------------------

    async def wait_invite(self) -> None:
        """Until the invite is out; TunnelUnavailable / InvalidState errors when it cannot be."""

        def settled(_: int) -> bool:
            return self.record.invite_url is not None or self._open_failure() is not None

        await self.changes.wait_for(settled)
        failure = self._open_failure()
        if self.record.invite_url is None and failure is not None:
            raise failure

    def _open_failure(self) -> api.RpcError | None:
        if self.scope.cancel_called:
            return api.RpcError(api.INVALID_STATE, STOPPED_BEFORE_INVITE)
        tunnel = self.tunnel.status.value if self.tunnel is not None else None
        if tunnel is not None and tunnel.state is TunnelState.FATAL:
            return api.RpcError(api.TUNNEL_UNAVAILABLE, tunnel.last_error or "the tunnel cannot start")
        if self.invite_error is not None:
            return api.RpcError(api.INVALID_STATE, self.invite_error)
        if self.last_error is not None:
            return api.RpcError(api.INVALID_STATE, self.last_error)
        return None

    def state(self) -> str:
        record = self.record
        if self.relay is None:
            return "failed" if self.last_error else "starting"
        if record.peer is not None:
            progress = record.conversation.peers.get(record.peer)
            return "ended" if progress is not None and progress.ended else "connected"
        if record.invite_expires_at is not None and now_ms() > record.invite_expires_at:
            return "expired"
        return "waiting" if record.invite_url else "starting"

    def _problem(self) -> str | None:
        if self.last_error or self.invite_error:
            return self.last_error or self.invite_error
        record = self.record
        tunnel = self._shown_tunnel()
        if tunnel is not None and tunnel.state is TunnelState.FATAL:  # not retried: it needs the user
            return f"the tunnel cannot start: {tunnel.last_error or 'see the daemon log'}"
        if record.peer is not None and tunnel is not None and tunnel.url and tunnel.url != record.invite_relay:
            return (
                f"the tunnel URL changed to {tunnel.url}, but the guest only knows {record.invite_relay}: "
                "quick tunnels get a new URL when they restart; use a fixed [tunnel] public_url to keep one"
            )
        return None

    def _shown_tunnel(self) -> TunnelStatus | None:
        if self.tunnel is None:
            return None
        return self._tunnel_shown or self.tunnel.status.value  # the live one until the room has followed it once

    async def info(self) -> api.RoomInfo:
        record = self.record
        counts = {"in": 0, "out": 0}
        if record.peer is not None:
            try:
                counts = await self.deps.sessions.message_counts(record.peer)
            except StoreError as exc:
                self.deps.log.warn("room_counts_failed", room=self.room_id, error=str(exc))
        tunnel = self._shown_tunnel()
        return api.RoomInfo(
            room_id=record.room_id,
            name=record.name,
            state=self.state(),
            relay_url=self.local_url,
            public_url=tunnel.url if tunnel is not None else None,
            invite_url=record.invite_url,
            port=record.port,
            invite_expires_at=record.invite_expires_at,
            peer=record.peer,
            created_at=record.created_at,
            messages=api.MessageCounts(received=counts.get("in", 0), sent=counts.get("out", 0)),
            handler=self.responder.info() if self.responder is not None else None,
            tunnel=None if tunnel is None else api.TunnelInfo(
                provider=tunnel.provider, state=tunnel.state.value, url=tunnel.url, public_url=tunnel.public_url,
                restarts=tunnel.restarts, last_error=tunnel.last_error,
            ),
            last_error=self._problem(),
        )  # fmt: skip
