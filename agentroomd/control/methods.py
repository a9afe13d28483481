"""The control methods the daemon skeleton answers itself, and the reserved ones later services fill in.

Reserved methods answer `agentroom.NotImplemented` (code -32601) until the owning service registers
its handler (`ctx.methods.register(spec, handler)` replaces the stub), so the CLI is wired end to end
from the start and a script can tell "not built yet" from "unknown method".
"""

import os
import time
from typing import Any

from agentroomd.context import DaemonContext
from agentroomd.control import api
from agentroomd.control.rpc import Caller
from agentroomd.control.server import ControlServer

RESERVED: dict[api.MethodSpec[Any, Any], str] = {
    api.RELAY_CONNECT: "client sessions",
    api.INVITE_CREATE: "client sessions",
    api.INVITE_ACCEPT: "client sessions",
    api.PEER_LIST: "client sessions",
    api.MESSAGE_SEND: "client sessions",
    api.ROOM_OPEN: "rooms",
    api.ROOM_LIST: "rooms",
    api.ROOM_STATUS: "rooms",
    api.ROOM_STOP: "rooms",
}


def register_daemon_methods(ctx: DaemonContext, control: ControlServer) -> None:
    """daemon.*, identity.show, and stubs for every reserved method not registered by a service yet."""

    async def hello(params: api.HelloParams, caller: Caller) -> api.HelloResult:
        if params.protocol != api.PROTOCOL_VERSION:
            ctx.log.warn("control_protocol_mismatch", client=params.client[:64], protocol=params.protocol)
        return api.HelloResult(
            daemon="agentroomd",
            version=api.package_version(),
            protocol=api.PROTOCOL_VERSION,
            pid=os.getpid(),
            methods=ctx.methods.names(),
        )

    async def status(params: api.Empty, caller: Caller) -> api.StatusResult:
        journal = ctx.inbox.journal
        return api.StatusResult(
            daemon="agentroomd",
            version=api.package_version(),
            protocol=api.PROTOCOL_VERSION,
            pid=os.getpid(),
            started_at=ctx.started_at_ms,
            uptime_s=round(time.monotonic() - ctx.started_monotonic, 3),
            pk=ctx.pk,
            home=str(ctx.paths.home) if ctx.paths.home else None,
            state_dir=str(ctx.paths.state_dir),
            config_file=str(ctx.paths.config_file),
            socket=str(ctx.paths.socket_path),
            control=control.status(),
            journal=api.JournalStatus(last_cursor=journal.last_cursor, oldest_cursor=journal.oldest_cursor),
            services=ctx.service_status(),
        )

    async def stop(params: api.Empty, caller: Caller) -> api.StopResult:
        async def request_stop() -> None:  # only after the reply is on the wire
            ctx.shutdown.request("daemon.stop")

        caller.after_reply(request_stop)
        return api.StopResult(stopping=True, pid=os.getpid())

    async def identity(params: api.Empty, caller: Caller) -> api.IdentityResult:
        return api.IdentityResult(
            pk=ctx.identity.pk, x25519_pk=ctx.identity.x25519_pk_b64u, identity_path=str(ctx.paths.identity_file)
        )

    ctx.methods.register(api.DAEMON_HELLO, hello)
    ctx.methods.register(api.DAEMON_STATUS, status)
    ctx.methods.register(api.DAEMON_STOP, stop)
    ctx.methods.register(api.IDENTITY_SHOW, identity)
    for spec, feature in RESERVED.items():
        ctx.methods.register_stub(spec, feature)
