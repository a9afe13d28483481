"""The client sessions as a daemon service: the store, the session manager, and their control methods.

This is where control-plane requests become session-manager calls and where the manager's errors
become stable JSON-RPC error kinds; nothing else in the daemon talks to the session manager.
"""

from typing import Any

import attrs
import trio

from agentroomd.client.connection import Backoff
from agentroomd.client.manager import ClientError, SessionManager
from agentroomd.client.store import ClientStore, StoreError, StoreFullError
from agentroomd.context import DaemonContext
from agentroomd.control import api
from agentroomd.control.rpc import Caller
from agentroomd.files import ensure_private_dir
from ratchet.frames import MAX_SAFE_INTEGER

CLIENT_DB = "client.db"

_KINDS = {
    "unknown_peer": api.UNKNOWN_PEER,
    "ambiguous_peer": api.AMBIGUOUS_PEER,
    "invalid_invite": api.INVITE_INVALID,
    "invite_not_found": api.INVITE_INVALID,
    "invite_used": api.INVITE_USED,
    "invite_expired": api.INVITE_EXPIRED,
    "relay_unreachable": api.RELAY_UNREACHABLE,
    "relay_refused": api.RELAY_UNREACHABLE,
    "timeout": api.TIMEOUT,
    "already_exists": api.ALREADY_EXISTS,
    "too_large": api.LIMIT_EXCEEDED,
    "session_error": api.INVALID_STATE,
    "session_closed": api.INVALID_STATE,
    "close_unsupported": api.INVALID_STATE,
    "handshake_pending": api.INVALID_STATE,
    "store_failed": api.STORAGE_ERROR,
}


def rpc_error(exc: ClientError) -> api.RpcError:
    kind = _KINDS.get(exc.kind, api.INVALID_STATE)
    if exc.kind == "store_failed" and isinstance(exc.__cause__, StoreFullError):
        kind = api.DISK_FULL
    return api.RpcError(kind, str(exc))


async def run_sessions(ctx: DaemonContext, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Open the client database, start the session manager, and serve the session methods."""
    ensure_private_dir(ctx.paths.state_dir)
    store = ClientStore(ctx.paths.state_dir / CLIENT_DB)
    try:
        settings = ctx.config.client
        manager = SessionManager(
            ctx.identity.keypair, store, ctx.log,
            backoff_factory=lambda: Backoff(base_s=settings.reconnect_initial_s, cap_s=settings.reconnect_max_s),
            ping_interval_s=settings.ping_interval_s, journal_keep=ctx.config.daemon.journal_keep,
        )
        ctx.inbox.use_journal(manager.journal)
        manager.on_received = ctx.inbox.announce
        manager.on_session_closed_notice = ctx.inbox.session_closed
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            for url in settings.relays:
                manager.connection(url)
            _register(ctx, manager)
            ctx.add_status("sessions", lambda: _status(manager))
            ctx.sessions = manager
            task_status.started()
    finally:
        store.close()


def _status(manager: SessionManager) -> dict[str, Any]:
    return {
        "peers": len(manager.peers()),
        "relays": [
            {"url": conn.url, "state": conn.state, "connects": conn.connects, "last_error": conn.last_error}
            for conn in manager.relays()
        ],
        "counters": attrs.asdict(manager.counters),
    }


def protocol_version(compat: str | None) -> int:
    """The protocol an invite asks for: v3 between our own peers, v2 for a TypeScript peer."""
    if compat in (None, "v3"):
        return 3
    if compat == "v2":
        return 2
    raise api.RpcError(api.INVALID_PARAMS, f"compat must be 'v2' or 'v3', not {compat!r}")


def ttl_problem(ttl_ms: int, now_ms: int) -> str | None:
    """What is wrong with an invite lifetime (invite.create, room.open), or None: positive, and an expiry
    (ms since 1970) every peer reads exactly, below 2**53."""
    if ttl_ms <= 0:
        return "must be positive"
    if ttl_ms > MAX_SAFE_INTEGER - now_ms:
        return "too long, the invite's expiry must stay below 2**53 ms"
    return None


def _default_relay(ctx: DaemonContext, manager: SessionManager, given: str | None) -> str:
    if given:
        return given
    if ctx.config.client.relays:
        return ctx.config.client.relays[0]
    connected = [conn.url for conn in manager.relays() if conn.is_connected]
    if len(connected) == 1:
        return connected[0]
    raise api.RpcError(api.NO_RELAY, "no relay given: pass --relay ws://HOST:PORT/ws, or open a room first")


def _register(ctx: DaemonContext, manager: SessionManager) -> None:
    timeout = ctx.config.client.ack_timeout_s

    async def relay_connect(params: api.RelayConnectParams, caller: Caller) -> api.RelayConnectResult:
        try:
            conn = await manager.wait_connected(params.url, timeout)
        except ClientError as exc:
            raise rpc_error(exc) from exc
        return api.RelayConnectResult(url=conn.url, state=conn.state)

    async def invite_create(params: api.InviteCreateParams, caller: Caller) -> api.InviteCreateResult:
        relay = _default_relay(ctx, manager, params.relay)
        ttl_ms = params.ttl_ms if params.ttl_ms is not None else ctx.config.client.invite_ttl_s * 1000
        problem = ttl_problem(ttl_ms, manager.clock_ms())
        if problem is not None:
            raise api.RpcError(api.INVALID_PARAMS, f"ttl_ms: {problem}", errors=[f"ttl_ms: {problem}"])
        version = protocol_version(params.compat)
        try:
            invite = await manager.create_invite(relay, ttl_ms, timeout_s=timeout, version=version)
        except ClientError as exc:
            raise rpc_error(exc) from exc
        except StoreError as exc:
            raise api.RpcError(api.STORAGE_ERROR, str(exc)) from exc
        return api.InviteCreateResult(url=invite.url, invite_id=invite.invite_id, expires_at=invite.expires_at,
                                      relay=relay, protocol=invite.version)

    async def invite_accept(params: api.InviteAcceptParams, caller: Caller) -> api.InviteAcceptResult:
        try:
            peer, relay, answered = await manager.accept_invite(params.url, params.alias, timeout_s=timeout)
        except ClientError as exc:
            raise rpc_error(exc) from exc
        except StoreError as exc:
            raise api.RpcError(api.STORAGE_ERROR, str(exc)) from exc
        return api.InviteAcceptResult(peer=peer, relay=relay, answered=answered)

    async def peer_list(params: api.Empty, caller: Caller) -> api.PeerListResult:
        return api.PeerListResult(peers=[api.PeerInfo(pk=row.pk, alias=row.alias, relay=row.relay_url,
                                                      state=manager.peer_state(row.pk))
                                         for row in manager.peers()])

    async def peer_close(params: api.PeerCloseParams, caller: Caller) -> api.PeerCloseResult:
        try:
            status, msg_id, peer = await manager.close_peer(params.peer, timeout_s=timeout)
        except ClientError as exc:
            raise rpc_error(exc) from exc
        return api.PeerCloseResult(peer=peer, status=status, msg_id=msg_id)

    async def message_send(params: api.MessageSendParams, caller: Caller) -> api.MessageSendResult:
        try:
            status, msg_id, peer = await manager.send_message(params.peer, params.text, timeout_s=timeout)
        except ClientError as exc:
            raise rpc_error(exc) from exc
        return api.MessageSendResult(status=status, msg_id=msg_id, peer=peer)

    ctx.methods.register(api.RELAY_CONNECT, relay_connect)
    ctx.methods.register(api.INVITE_CREATE, invite_create)
    ctx.methods.register(api.INVITE_ACCEPT, invite_accept)
    ctx.methods.register(api.PEER_LIST, peer_list)
    ctx.methods.register(api.PEER_CLOSE, peer_close)
    ctx.methods.register(api.MESSAGE_SEND, message_send)
