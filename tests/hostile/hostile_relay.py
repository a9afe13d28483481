"""A hostile relay built on our own relay: `RelayApp`, recording every frame, able to hold, alter and forge any.

The attacks of tests/hostile run against real daemons, so the adversary must be a real relay: it
authenticates clients, routes, stores and delivers exactly as `agentroomd relay` does (same
`RelayApp`, same SQLite store, same hypercorn stack from `agentroomd.relay.server`), and on top of
that does what a relay operator could do with the same process:

* remember everything it sees: each client frame as received (`texts`), each routed frame before any
  tampering (`routed`), invite publications and claims, each client's X25519 key from its HELLO;
* decide, per routed frame, what to deliver instead (`on_route`): nothing (hold it), altered copies,
  or forgeries, in any order; and put frames of its own in front of a claim (`on_claim`);
* deliver any frame it likes to any client (`deliver`), through its own store and delivery pump, so
  the recipient cannot tell an injected frame from a routed one;
* hold an identity of its own (`identity`) to sign forgeries and to claim invites as a third party.

Everything it stores goes to ``config.db`` and everything it logs (debug level) to the logger's
stream: the canary audit reads both.
"""

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from agentroomd.client.connection import RelayConnection
from agentroomd.log import Logger
from agentroomd.relay.app import RelayApp
from agentroomd.relay.config import RelayConfig
from agentroomd.relay.connection import Connection
from agentroomd.relay.server import serve_relay
from agentroomd.relay.store import RelayStore
from agentroomd.relay.wire import routed_text
from ratchet.encoding import b64u_encode
from ratchet.frames import (
    Ack,
    Delivery,
    Error,
    Hello,
    InviteClaim,
    InvitePublish,
    KeyLayout,
    Msg,
    Routed,
    SessionAck,
    SessionInit,
    routed_from_claim,
    serialize_frame,
)
from ratchet.keys import KeyPair
from ratchet.signatures import sign_routed
from ratchet.v3.primitives import frame_digest
from ratchet.v3.wire import b64u, b64u_strict

T = TypeVar("T")
RouteHook = Callable[[Routed], list[Routed] | None]
ClaimHook = Callable[[InviteClaim], list[Routed]]


class HostileRelay(RelayApp):
    """`RelayApp` with a recorder and hooks; see the module docstring."""

    def __init__(self, config: RelayConfig, store: RelayStore, *, log: Logger, identity: KeyPair) -> None:
        super().__init__(config, store, log=log)
        self.identity = identity
        self.pk = b64u_encode(identity.ed25519_pk)
        self.texts: list[str] = []  # every frame a client sent, as received
        self.routed: list[Routed] = []  # every MSG / SESSION_ACK / SESSION_INIT a client sent, untouched
        self.published: list[InvitePublish] = []
        self.claims: list[InviteClaim] = []
        self.x25519: dict[str, str] = {}  # Ed25519 pk -> X25519 pk, from HELLO
        self.on_route: RouteHook | None = None  # None from the hook: route normally; a list: deliver that instead
        self.on_claim: ClaimHook | None = None  # frames to deliver to the inviter before the claim is handled
        self.ignore_claimed = False  # pass claims on even when our own database says the invite was claimed
        self._seen = trio.Event()

    # -- recording -------------------------------------------------------------------------------

    def _notify(self) -> None:
        self._seen.set()
        self._seen = trio.Event()

    async def wait_for(self, found: Callable[[], T | None], timeout_s: float = 10.0) -> T:
        """The first non-None ``found()``, re-evaluated whenever the relay records a frame."""
        with trio.fail_after(timeout_s):
            while True:
                seen = self._seen
                value = found()
                if value is not None:
                    return value
                await seen.wait()

    async def frame_with_id(self, msg_id: str) -> Routed:
        """The routed frame a client sent with ``msg_id`` (waits until the relay has seen it)."""
        return await self.wait_for(lambda: next((f for f in self.routed if f.msg_id == msg_id), None))

    async def _handle_data(self, conn: Connection, data: str | bytes) -> None:
        self.texts.append(data if isinstance(data, str) else data.decode("utf-8", "replace"))
        await super()._handle_data(conn, data)

    async def _hello(self, conn: Connection, frame: Hello) -> None:
        self.x25519[frame.ed25519_pk] = frame.x25519_pk
        await super()._hello(conn, frame)

    async def _publish(self, conn: Connection, frame: InvitePublish) -> None:
        self.published.append(frame)
        self._notify()
        await super()._publish(conn, frame)

    async def _claim(self, conn: Connection, frame: InviteClaim) -> None:
        self.claims.append(frame)
        self._notify()
        invite = await self.store.get_invite(frame.invite_id)
        if invite is not None and frame.from_ == conn.pk:
            for forged in self.on_claim(frame) if self.on_claim is not None else []:
                await self.deliver(forged, to=invite.inviter_pk)
            if invite.claimed and self.ignore_claimed:
                await self.deliver(routed_from_claim(frame, invite.inviter_pk))
                await self._ack(conn, frame.msg_id, "queued")
                return
        await super()._claim(conn, frame)

    async def _route(self, conn: Connection, frame: Msg | SessionInit | SessionAck) -> None:
        if frame.from_ == conn.pk:
            self.routed.append(frame)
            self._notify()
            instead = self.on_route(frame) if self.on_route is not None else None
            if instead is not None:
                for other in instead:
                    await self.deliver(other)
                await self._ack(conn, frame.msg_id, "queued")  # the sender believes it is on its way
                return
        await super()._route(conn, frame)

    # -- delivering what we like -----------------------------------------------------------------

    async def deliver(self, frame: Routed, to: str | None = None) -> None:
        """Store ``frame`` for ``to`` (default: its own ``to``) and hand it over as our relay does any frame."""
        recipient = to or frame.to
        envelope = routed_text(frame, KeyLayout.PARSED)
        row_id = self.hub.new_id()
        self.hub.begin_insert(recipient)
        try:
            ord_ = await self.store.enqueue(recipient, row_id, envelope, self.wall_ms() // 1000,
                                            self.config.max_pending_msgs)
        finally:
            self.hub.end_insert(recipient)
        assert ord_ is not None, "recipient queue full"
        self._log_routed(frame.TYPE, frame.from_, recipient, frame.ciphertext, frame.ratchet_pk, "injected")
        self.hub.offer_row(recipient, row_id, envelope, ord_)

    def fresh_id(self) -> str:
        return self.hub.new_id()

    def hold(self, wanted: Callable[[Routed], bool]) -> list[Routed]:
        """From now on keep the routed frames ``wanted`` picks (their sender gets "queued"); returns where they go."""
        held: list[Routed] = []

        def hook(frame: Routed) -> list[Routed] | None:
            if not wanted(frame):
                return None
            held.append(frame)
            return []

        self.on_route = hook
        return held

    def route_normally(self) -> None:
        self.on_route = None


# -- forging ---------------------------------------------------------------------------------------


def inner_of(frame: Routed) -> bytes:
    """The v3 inner frame a routed frame carries."""
    return b64u_strict(frame.ciphertext, "ciphertext")


def with_inner(frame: Routed, inner: bytes, *, signer: KeyPair | None = None, **changes: Any) -> Routed:
    """``frame`` carrying ``inner``, its nonce recomputed, re-signed by ``signer`` (else the old signature stays)."""
    nonce = b64u(frame_digest(inner))
    updated = attrs.evolve(frame, ciphertext=b64u(inner), nonce=nonce, **changes)
    if signer is not None:
        updated = attrs.evolve(updated, sig=sign_routed(signer, updated.to, updated.seq, nonce))
    return updated


def resigned(frame: Routed, signer: KeyPair, **changes: Any) -> Routed:
    """``frame`` with ``changes``, its routed signature made by ``signer`` (the relay's own key)."""
    updated = attrs.evolve(frame, **changes)
    return attrs.evolve(updated, sig=sign_routed(signer, updated.to, updated.seq, updated.nonce))


def retyped(frame: Routed, kind: type[Msg] | type[SessionInit] | type[SessionAck], msg_id: str) -> Routed:
    """The same routed fields under another frame type (the type is not signed in v2's routed signature)."""
    fields = {key: value for key, value in attrs.asdict(frame, recurse=False).items() if key != "msg_id"}
    return kind(msg_id=msg_id, **fields)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


# -- a client of the relay's own --------------------------------------------------------------------


class RelayClient:
    """The relay operator's own client (our daemon's `RelayConnection`) for an identity of its own.

    What a third identity sends goes through the relay's real paths (HELLO, INVITE_CLAIM checks);
    whatever anyone sends to that identity lands in `deliveries`.
    """

    def __init__(self, url: str, identity: KeyPair, log: Logger) -> None:
        self.deliveries: list[Routed] = []
        self.connection = RelayConnection(url, identity, self, log, clock_ms=lambda: time.time_ns() // 1_000_000)

    async def on_delivery(self, conn: RelayConnection, delivery: Delivery) -> None:
        self.deliveries.append(delivery.routed)

    async def request(self, frame: InviteClaim, timeout_s: float = 10.0) -> Ack | Error:
        with trio.fail_after(timeout_s):
            await self.connection.wait_connected()
            return await self.connection.request(frame.msg_id, serialize_frame(frame))


@asynccontextmanager
async def relay_client(url: str, identity: KeyPair, log: Logger) -> AsyncIterator[RelayClient]:
    client = RelayClient(url, identity, log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.connection.run)
        yield client
        nursery.cancel_scope.cancel()


# -- serving ---------------------------------------------------------------------------------------


async def serve_hostile_relay(
    config: RelayConfig,
    identity: KeyPair,
    log: Logger,
    *,
    task_status: trio.TaskStatus[tuple[HostileRelay, str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`agentroomd.relay.server.serve_relay` with a `HostileRelay` as the app; started with (app, ws URL).

    Same store, same hypercorn stack and the same ordered shutdown; only the app class differs.
    """

    def hostile(config: RelayConfig, store: RelayStore, **kwargs: Any) -> HostileRelay:
        return HostileRelay(config, store, log=kwargs["log"], identity=identity)

    async with trio.open_nursery() as nursery:
        handle = await nursery.start(partial(serve_relay, config, log=log, app_factory=hostile))
        assert isinstance(handle.app, HostileRelay)
        task_status.started((handle.app, handle.url))
