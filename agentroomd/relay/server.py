"""Run the relay inside a trio nursery: `await nursery.start(serve_relay, config)`.

`serve_relay` owns everything the relay needs for its lifetime, in this order: the store (opened
first, closed last, so every connection can still flush to it), the maintenance task, and hypercorn.
It reports readiness with a `RelayHandle` (the bound port and URLs).

Shutdown is graceful however it is asked for (the caller's cancel scope, or SIGTERM/SIGINT in the
CLI, which cancels that scope): new upgrades get 503, every socket is closed with 1001 "server
shutting down" and given a moment to finish (hypercorn does not close websockets itself,
daemon-anchors §3.3), then the listeners close and what is left gets hypercorn's graceful timeout,
and finally the store flushes its pending deletions and checkpoints. The connection layer runs in a
shielded scope, so an outer cancellation becomes this ordered stop instead of tearing sockets down
mid-frame (hypercorn issue #106). See `_serve_connections` for why we drive hypercorn's per-socket
protocol code from our own accept loop rather than calling `hypercorn.trio.serve`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState

from agentroomd.log import Logger
from agentroomd.relay.app import RelayApp
from agentroomd.relay.config import RelayConfig, ensure_hmac_secret
from agentroomd.relay.hub import wall_ms as default_wall_ms
from agentroomd.relay.store import open_store
from agentroomd.relay.transport import FastWriteTCPServer
from ratchet.rand import SYSTEM_RANDOM, RandomSource

# hypercorn enforces a coarse size limit (in characters) as a memory guard; the exact limit in UTF-8
# bytes is the app's, so that an oversize message is answered with 1009 *and* counted in /metrics.
HYPERCORN_SIZE_SLACK = 65_536
HYPERCORN_GRACE_S = 1.0


@attrs.frozen
class RelayHandle:
    """What a started relay tells its parent."""

    host: str
    port: int
    url: str  # ws://HOST:PORT/ws
    http_url: str  # http://HOST:PORT
    app: RelayApp = attrs.field(repr=False, eq=False)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


class _NdjsonHandler(logging.Handler):
    """hypercorn's own warnings and errors, re-emitted as our NDJSON lines."""

    def __init__(self, log: Logger) -> None:
        super().__init__(logging.WARNING)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        fields: dict[str, Any] = {"message": record.getMessage()}
        if record.exc_info and record.exc_info[1] is not None:
            fields["error"] = f"{record.exc_info[0].__name__ if record.exc_info[0] else 'Error'}: {record.exc_info[1]}"
        if record.levelno >= logging.ERROR:
            self._log.error("hypercorn", **fields)
        else:
            self._log.warn("hypercorn", **fields)


def hypercorn_config(config: RelayConfig, log: Logger) -> HypercornConfig:
    cfg = HypercornConfig()
    cfg.websocket_max_message_size = config.ws_max_payload + HYPERCORN_SIZE_SLACK
    cfg.websocket_ping_interval = config.ping_interval_s
    cfg.graceful_timeout = HYPERCORN_GRACE_S
    cfg.include_server_header = False
    cfg.backlog = max(128, config.max_connections)
    cfg.accesslog = None
    error_logger = logging.getLogger(f"agentroomd.relay.hypercorn.{id(cfg)}")
    error_logger.propagate = False
    error_logger.setLevel(logging.WARNING)
    error_logger.handlers = [_NdjsonHandler(log)]
    cfg.errorlog = error_logger
    return cfg


async def _serve_connections(
    app: RelayApp,
    cfg: HypercornConfig,
    host: str,
    port: int,
    shutdown: trio.Event,
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn's per-connection protocol stack behind our own accept loop, until ``shutdown`` is set.

    `hypercorn.trio.serve` runs every connection in one nursery, so an exception escaping one
    connection's protocol code ends the whole server. That happens in 0.18.0: bytes right after an
    upgrade request, before the app accepts, make it send a 400 on an h11 connection already in
    ERROR state (the LocalProtocolError of hypercorn issue #225). A relay on the internet cannot let
    any client stop it, so each connection runs here under its own guard, which logs and counts
    the failure and drops only that connection. We use hypercorn's `TCPServer` (its own per-socket
    driver) unchanged; lifespan is not needed because `serve_relay` owns the app's resources.
    """
    context = WorkerContext(None)
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=cfg.backlog)

    async def handle(stream: trio.SocketStream) -> None:
        # Once a WebSocket's app call returns, everything it sent is written (hypercorn's socket writes
        # are shielded and complete before `send` returns) and nothing more can happen on the socket.
        # hypercorn 0.18 would still hold it open (in CLOSE-WAIT after a client died) until its ping
        # task next wakes, up to `websocket_ping_interval` later, because that task is never cancelled:
        # under a reconnect storm descriptors pile up. So we end the connection ourselves right then;
        # `trio.serve_listeners` closes the stream.
        done = trio.CancelScope()

        async def app_for_this_socket(scope: Any, receive: Any, send: Any) -> None:
            try:
                await app(scope, receive, send)
            finally:
                if scope["type"] == "websocket":
                    done.cancel()

        with done:
            try:
                await FastWriteTCPServer(
                    ASGIWrapper(app_for_this_socket), cfg, context, ConnectionState({}), stream  # type: ignore[arg-type]
                )
            except Exception as exc:  # logged and counted: one connection's failure never stops the relay
                app.metrics.inc("connections_crashed_total")
                app.log.error("connection.crashed", error=f"{exc.__class__.__name__}: {exc}"[:300])

    with scope:
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as acceptor:
                await acceptor.start(partial(trio.serve_listeners, handle, listeners, handler_nursery=connections))
                task_status.started(listeners[0].socket.getsockname()[1])
                await shutdown.wait()
                acceptor.cancel_scope.cancel()
            for listener in listeners:
                await listener.aclose()
            await context.terminated.set()  # idle keep-alive HTTP connections close now
            connections.cancel_scope.deadline = trio.current_time() + cfg.graceful_timeout


async def serve_relay(
    config: RelayConfig,
    *,
    task_status: trio.TaskStatus[RelayHandle] = trio.TASK_STATUS_IGNORED,
    log: Logger | None = None,
    rng: RandomSource = SYSTEM_RANDOM,
    wall_ms: Callable[[], int] = default_wall_ms,
    clock: Callable[[], float] = time.monotonic,
    app_factory: Callable[..., RelayApp] = RelayApp,
) -> None:
    """Serve the relay until cancelled; ``task_status.started(RelayHandle)`` once it accepts connections.

    ``app_factory`` builds the ASGI app as ``RelayApp(config, store, log=, rng=, wall_ms=, clock=)``
    does; tests pass a subclass (the hostile relay) to run it on exactly this stack.
    """
    config = ensure_hmac_secret(config)
    log = log or Logger("relay", level=config.log_level)
    try:
        await _serve(config, log, rng, wall_ms, clock, task_status, app_factory)
    finally:
        log.info("shutdown.done")


async def _serve(
    config: RelayConfig,
    log: Logger,
    rng: RandomSource,
    wall_ms: Callable[[], int],
    clock: Callable[[], float],
    task_status: trio.TaskStatus[RelayHandle],
    app_factory: Callable[..., RelayApp],
) -> None:
    async with open_store(config.db, log) as store:
        app = app_factory(config, store, log=log, rng=rng, wall_ms=wall_ms, clock=clock)
        cfg = hypercorn_config(config, log)
        shutdown = trio.Event()
        server_scope = trio.CancelScope(shield=True)
        await app.prune_now()  # what expired while the relay was down goes before anyone connects
        async with trio.open_nursery() as nursery:
            nursery.start_soon(app.maintenance)
            try:
                port = await nursery.start(
                    _serve_connections, app, cfg, config.host, config.port, shutdown, server_scope
                )
                host = _url_host(config.host)
                handle = RelayHandle(config.host, port, f"ws://{host}:{port}/ws", f"http://{host}:{port}", app)
                log.info("server.start", host=config.host, port=port, db="memory" if not config.persistent else "file")
                task_status.started(handle)
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    log.info("shutdown.start", connections=len(app.connections))
                    with trio.move_on_after(config.shutdown_grace_s):
                        await app.close_all(1001, "server shutting down")
                    shutdown.set()
                    # what is left gets graceful_timeout (above); this is the hard stop behind it.
                    server_scope.deadline = trio.current_time() + HYPERCORN_GRACE_S + config.shutdown_grace_s
                nursery.cancel_scope.cancel()
