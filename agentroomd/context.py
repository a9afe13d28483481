"""What every service of the daemon shares, and the seams later services plug into.

`DaemonContext` is built once in `daemon.py` and handed to each service's `run`. A service:
- registers its control methods: `ctx.methods.register(api.MESSAGE_SEND, handler)` (this replaces the
  not-implemented stub the daemon reserved for it);
- publishes received messages: `await ctx.inbox.publish(InboundMessage(...))`;
- reports its state in `daemon.status`: `ctx.add_status("sessions", lambda: {...})`;
- takes part in graceful shutdown: `ctx.on_shutdown("sessions", async_fn)`; hooks run in reverse
  order of registration within the `[daemon] shutdown_grace_s` deadline, before everything is cancelled;
- waits for `ctx.shutdown.requested` if it has a graceful stop of its own.

Services that build on another publish themselves here: the client sessions set `ctx.sessions` (the
`SessionManager`) before they report started, so the rooms, started after them, can use it.
"""

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from agentroomd.config import Config, Paths
from agentroomd.control.inbox import Inbox
from agentroomd.control.rpc import MethodRegistry
from agentroomd.log import Logger
from ratchet.identity import Identity

if TYPE_CHECKING:
    from agentroomd.client.manager import SessionManager

StatusProvider = Callable[[], dict[str, Any]]
ShutdownHook = Callable[[], Awaitable[None]]
# A long-lived service: `async def run(ctx, *, task_status=trio.TASK_STATUS_IGNORED) -> None`, started
# with `root.start(run, ctx)`; it runs until cancelled.
Service = Callable[..., Awaitable[None]]


@attrs.define(eq=False)
class Shutdown:
    """The request to stop: set once, by a signal or by `daemon.stop`; the reason is logged."""

    requested: trio.Event = attrs.Factory(trio.Event)
    reason: str | None = None

    def request(self, reason: str) -> None:
        if not self.requested.is_set():
            self.reason = reason
            self.requested.set()


@attrs.define(eq=False)
class DaemonContext:
    paths: Paths
    config: Config
    identity: Identity
    log: Logger
    methods: MethodRegistry
    inbox: Inbox
    shutdown: Shutdown = attrs.Factory(Shutdown)
    ready: trio.Event = attrs.Factory(trio.Event)  # set once the control socket accepts connections
    started_at_ms: int = attrs.Factory(lambda: int(time.time() * 1000))
    started_monotonic: float = attrs.Factory(time.monotonic)
    sessions: "SessionManager | None" = None  # set by the client sessions service once it runs
    _status: dict[str, StatusProvider] = attrs.Factory(dict)
    _shutdown_hooks: list[tuple[str, ShutdownHook]] = attrs.Factory(list)

    @property
    def pk(self) -> str:
        return self.identity.pk

    def add_status(self, name: str, provider: StatusProvider) -> None:
        self._status[name] = provider

    def service_status(self) -> dict[str, dict[str, Any]]:
        return {name: provider() for name, provider in self._status.items()}

    def on_shutdown(self, name: str, hook: ShutdownHook) -> None:
        self._shutdown_hooks.append((name, hook))

    async def run_shutdown_hooks(self) -> None:
        """Graceful phase: newest service first (the control socket drains before the sessions close)."""
        for name, hook in reversed(self._shutdown_hooks):
            self.log.info("shutdown_phase", service=name)
            await hook()
