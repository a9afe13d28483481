"""The control protocol as data: method names, their params and results, error kinds. Shared with the CLI.

This module is the contract between `agentroomd` and `agentroomctl` (and anyone scripting the socket),
so it imports nothing but attrs and cattrs: the CLI loads it without loading the daemon.

Every method is a `MethodSpec(name, params, result)`. The daemon registers a handler per spec
(`agentroomd.control.rpc.MethodRegistry`); the CLI calls `client.call(SPEC, params)` and gets the result
class back. Params are checked strictly (unknown keys are refused: daemon and CLI ship together);
results are read leniently (a client ignores keys it does not know, so results may grow).

Wire names equal the attribute names, except that a trailing underscore is dropped (`from_` -> "from").
"""

import functools
import sys
from pathlib import Path
from typing import Any, Generic, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

PROTOCOL_VERSION = 1

P = TypeVar("P")
R = TypeVar("R")


@functools.cache
def package_version() -> str:
    """The installed agentroom version, looked up once and only when asked.

    Every `agentroomctl` run asks (its --version and its hello), so this reads the installed
    distribution's METADATA straight from `sys.path`: importing `importlib.metadata` alone costs
    more than the rest of this module (about 13 ms of a CLI start). It remains the fallback.
    """
    for entry in sys.path:
        try:
            found = sorted(Path(entry or ".").glob("agentroom-*.dist-info/METADATA"))
        except OSError:
            continue
        for metadata in found:
            try:
                for line in metadata.read_text(encoding="utf-8").splitlines():
                    if line.startswith("Version:"):
                        return line.partition(":")[2].strip()
                    if not line:
                        break  # end of the headers
            except OSError:
                continue
    import importlib.metadata  # lazy: see above

    try:
        return importlib.metadata.version("agentroom")
    except importlib.metadata.PackageNotFoundError:  # running from a tree that was never installed
        return "0+unknown"


# ----------------------------------------------------------------------------------------------- errors


@attrs.frozen
class ErrorKind:
    """One stable error: its JSON-RPC code and its `data.type` name (scripts should match on the type)."""

    code: int
    type: str


PARSE_ERROR = ErrorKind(-32700, "jsonrpc.ParseError")  # the line is not JSON
INVALID_REQUEST = ErrorKind(-32600, "jsonrpc.InvalidRequest")  # not a JSON-RPC 2.0 request, batch, line too long
METHOD_NOT_FOUND = ErrorKind(-32601, "jsonrpc.MethodNotFound")
NOT_IMPLEMENTED = ErrorKind(-32601, "agentroom.NotImplemented")  # method known, not built into this daemon yet
INVALID_PARAMS = ErrorKind(-32602, "jsonrpc.InvalidParams")  # data.errors lists every problem
INTERNAL_ERROR = ErrorKind(-32603, "jsonrpc.InternalError")  # a bug: the daemon log has the traceback
SHUTTING_DOWN = ErrorKind(-32000, "agentroom.ShuttingDown")
NOT_FOUND = ErrorKind(-32001, "agentroom.NotFound")  # room, subscription, ... unknown
ALREADY_EXISTS = ErrorKind(-32002, "agentroom.AlreadyExists")
INVALID_STATE = ErrorKind(-32003, "agentroom.InvalidState")  # e.g. not connected to any relay yet
PERMISSION_DENIED = ErrorKind(-32004, "agentroom.PermissionDenied")  # the caller is another user
LAGGED = ErrorKind(-32005, "agentroom.Lagged")  # subscriber too slow; data.resume_from
TIMEOUT = ErrorKind(-32006, "agentroom.Timeout")
LIMIT_EXCEEDED = ErrorKind(-32007, "agentroom.LimitExceeded")  # too many clients or subscriptions
UNKNOWN_PEER = ErrorKind(-32010, "agentroom.UnknownPeer")  # no session with that key, prefix or alias
AMBIGUOUS_PEER = ErrorKind(-32011, "agentroom.AmbiguousPeer")  # a prefix matching several peers
INVITE_INVALID = ErrorKind(-32012, "agentroom.InviteInvalid")  # not an invite URL, malformed, bad signature
INVITE_EXPIRED = ErrorKind(-32013, "agentroom.InviteExpired")
INVITE_USED = ErrorKind(-32014, "agentroom.InviteUsed")
RELAY_UNREACHABLE = ErrorKind(-32015, "agentroom.RelayUnreachable")
NO_RELAY = ErrorKind(-32016, "agentroom.NoRelay")  # no relay given and none configured
DISK_FULL = ErrorKind(-32017, "agentroom.DiskFull")  # nothing was saved; state is unchanged
STORAGE_ERROR = ErrorKind(-32018, "agentroom.StorageError")  # a state file or database failed
TUNNEL_UNAVAILABLE = ErrorKind(-32019, "agentroom.TunnelUnavailable")  # no tunnel binary, or no public URL in time

ERROR_KINDS: tuple[ErrorKind, ...] = tuple(value for value in globals().values() if isinstance(value, ErrorKind))


class RpcError(Exception):
    """A JSON-RPC error: raised by method handlers in the daemon, and by the client when the daemon answers one."""

    def __init__(self, kind: ErrorKind, message: str, **data: Any) -> None:
        super().__init__(message)
        self.code = kind.code
        self.type = kind.type
        self.message = message
        self.data: dict[str, Any] = {"type": kind.type, **data}

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "data": self.data}

    @classmethod
    def from_json(cls, error: Any) -> "RpcError":
        """Rebuild from a wire error object; tolerant, because it may come from a newer or broken daemon."""
        if not isinstance(error, dict):
            return cls(INTERNAL_ERROR, f"malformed error object from the daemon: {error!r}"[:300])
        raw_data, raw_code, raw_message = error.get("data"), error.get("code"), error.get("message")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        code = raw_code if isinstance(raw_code, int) else INTERNAL_ERROR.code
        raw_type = data.get("type")
        type_ = raw_type if isinstance(raw_type, str) else "jsonrpc.Error"
        message = raw_message if isinstance(raw_message, str) else "unknown error"
        extra = {str(key): value for key, value in data.items() if key != "type"}
        return cls(ErrorKind(code, type_), message, **extra)

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.type!r}, {self.message!r})"


# ------------------------------------------------------------------------------------------ the methods


@attrs.frozen
class MethodSpec(Generic[P, R]):
    """A method's name and the classes of its params and result."""

    name: str
    params: type[P]
    result: type[R]
    summary: str


@attrs.frozen
class Empty:
    """No params, or an empty result."""


# daemon.hello: the first call of a connection; tells the client what this daemon speaks.
@attrs.frozen
class HelloParams:
    client: str = "unknown"
    version: str = ""
    protocol: int = PROTOCOL_VERSION


@attrs.frozen
class HelloResult:
    daemon: str
    version: str
    protocol: int
    pid: int
    methods: list[str]


# daemon.status
@attrs.frozen
class ControlStatus:
    clients: int
    subscriptions: int


@attrs.frozen
class JournalStatus:
    last_cursor: int  # the cursor of the newest message received (0: none yet)
    oldest_cursor: int  # the oldest cursor still kept (`listen --since` cannot go further back)


@attrs.frozen
class StatusResult:
    daemon: str
    version: str
    protocol: int
    pid: int
    started_at: int  # ms since the epoch
    uptime_s: float
    pk: str
    home: str | None
    state_dir: str
    config_file: str
    socket: str
    control: ControlStatus
    journal: JournalStatus
    services: dict[str, dict[str, Any]]  # each service's own status document, by service name


@attrs.frozen
class StopResult:
    stopping: bool
    pid: int


# identity.show
@attrs.frozen
class IdentityResult:
    pk: str  # Ed25519 public key, base64url: this daemon's address
    x25519_pk: str
    identity_path: str


# relay.connect
@attrs.frozen
class RelayConnectParams:
    url: str  # ws://host:port/ws or wss://...


@attrs.frozen
class RelayConnectResult:
    url: str
    state: str  # "connected" | "connecting"


# invite.create
@attrs.frozen
class InviteCreateParams:
    relay: str | None = None  # relay URL embedded in the invite; default: the configured/connected relay
    ttl_ms: int | None = None  # default: [client] invite_ttl_s
    compat: str | None = None  # "v2": the reference's protocol, for a TypeScript peer; default: v3


@attrs.frozen
class InviteCreateResult:
    url: str  # agentroom://invite/...
    invite_id: str
    expires_at: int  # ms since the epoch
    relay: str
    protocol: int = 3  # 3 between our own peers; 2 with compat "v2"


# invite.accept
@attrs.frozen
class InviteAcceptParams:
    url: str
    alias: str | None = None  # a local name for the new peer


@attrs.frozen
class InviteAcceptResult:
    peer: str  # the inviter's public key
    relay: str
    answered: bool = True  # the inviter's daemon answered: messages can be sent (v3 needs its SESSION_ACK)


# peer.list
@attrs.frozen
class PeerInfo:
    pk: str
    alias: str | None
    relay: str
    # "established" | "pending" (our v3 claim waits for the inviter's answer) | "closed" (by either side)
    state: str = "established"


@attrs.frozen
class PeerListResult:
    peers: list[PeerInfo]


# peer.close
@attrs.frozen
class PeerCloseParams:
    peer: str  # a full public key, a unique prefix of one, or a local alias


@attrs.frozen
class PeerCloseResult:
    peer: str  # the full public key PEER resolved to
    status: str  # the CLOSE frame's, as message.send's: "delivered" | "queued" | "pending"
    msg_id: str


# message.send
@attrs.frozen
class MessageSendParams:
    peer: str  # a full public key, a unique prefix of one, or a local alias
    text: str


@attrs.frozen
class MessageSendResult:
    status: str  # "delivered" (relay handed it to the peer) | "queued" (stored at the relay, or in our outbox)
    msg_id: str
    peer: str  # the full public key PEER resolved to


# message.subscribe / message.unsubscribe and their notifications
@attrs.frozen
class SubscribeParams:
    since: int | None = None  # None: only new messages; N: every kept message with cursor > N, then new ones


@attrs.frozen
class SubscribeResult:
    subscription: str
    cursor: int  # the newest cursor at the time of subscribing
    oldest: int  # the oldest cursor still kept; since + 1 < oldest means messages were dropped


@attrs.frozen
class UnsubscribeParams:
    subscription: str


@attrs.frozen
class ReceivedMessage:
    """One received message as subscribers and `agentroomctl listen --json` see it."""

    cursor: int
    from_: str
    text: str
    msg_id: str
    ts: int  # ms since the epoch, when our daemon received it


@attrs.frozen
class ReceivedNotification:
    subscription: str
    message: ReceivedMessage


@attrs.frozen
class SessionClosedNotification:
    """A peer's v3 session was closed while this subscription was live (never journaled, never replayed).

    It comes in order with the messages around it: a message received before the CLOSE is notified first.
    A subscriber that was away learns it from `peer.list` (state "closed").
    """

    subscription: str
    peer: str  # the peer's full public key
    by: str  # "peer" (its authenticated CLOSE arrived) | "us" (`peer.close`)
    ts: int  # ms since the epoch, when our daemon closed it or received the CLOSE


@attrs.frozen
class ClosedNotification:
    """The subscription ended (lagged, shutting down); `error` is a JSON-RPC error object."""

    subscription: str
    error: dict[str, Any]


# rooms and handlers (agentroomd/rooms/)
@attrs.frozen
class RoomOpenParams:
    on_message: str | None = None  # handler command run for every message from the guest; None: no auto-reply
    tunnel: bool = True  # a public URL through the [tunnel] provider (default: a cloudflared quick tunnel)
    name: str | None = None  # a unique name, usable wherever a room id is
    port: int | None = None  # the room relay's port; None: any free one (kept across restarts)
    seed: str | None = None  # first message to the guest, sent once the guest has joined
    max_turns: int = 0  # end the exchange after this many replies of ours (seed included); 0: no limit
    ttl_ms: int | None = None  # the invite's lifetime; default [client] invite_ttl_s
    compat: str | None = None  # "v2": invite a TypeScript agentroom peer (protocol v2); default: v3


@attrs.frozen
class MessageCounts:
    received: int = 0
    sent: int = 0


@attrs.frozen
class HandlerInfo:
    """An auto-reply handler attached to a room or a peer, and what it did so far."""

    command: str
    max_turns: int = 0
    turns: int = 0  # our replies to the peer so far, the seed included
    ended: str | None = None  # why the exchange ended: "max_turns" | "peer_ended" | "room_closed"
    runs: int = 0
    replies: int = 0
    no_reply: int = 0
    failures: int = 0  # non-zero exit, killed, could not start
    timeouts: int = 0
    truncated: int = 0  # replies cut at the stdout cap or the message size limit
    send_failures: int = 0
    skipped: int = 0  # messages not handled: loop guard, queue full, after the end
    queued: int = 0  # messages waiting for (or in) a run now


@attrs.frozen
class TunnelInfo:
    provider: str  # "cloudflared" | "command" | "fixed"
    state: str  # "starting" | "running" | "backoff" | "fatal"
    url: str | None = None  # the relay URL for guests (wss://.../ws), when running
    public_url: str | None = None
    restarts: int = 0
    last_error: str | None = None


@attrs.frozen
class RoomInfo:
    room_id: str
    name: str | None
    state: str  # "starting" | "waiting" (for the guest) | "connected" | "ended" | "expired" | "failed"
    relay_url: str | None  # the room relay on this machine: ws://HOST:PORT/ws
    public_url: str | None  # the relay URL guests use when tunnelled (wss://.../ws)
    invite_url: str | None  # agentroom://invite/... (single use)
    port: int = 0
    invite_expires_at: int | None = None  # ms since the epoch
    peer: str | None = None  # the guest's public key, once it joined
    created_at: int = 0
    messages: MessageCounts = MessageCounts()
    handler: HandlerInfo | None = None
    tunnel: TunnelInfo | None = None
    last_error: str | None = None


@attrs.frozen
class RoomRef:
    room_id: str | None = None  # a room id or name; None: the only room, if there is exactly one


@attrs.frozen
class RoomListResult:
    rooms: list[RoomInfo]


@attrs.frozen
class RoomStopParams:
    room_id: str | None = None
    all: bool = False


@attrs.frozen
class RoomStopResult:
    stopped: list[str]


# handler.attach / handler.detach: a handler for one peer, kept across restarts (the guest side of a room)
@attrs.frozen
class HandlerAttachParams:
    peer: str  # a full public key, a unique prefix of one, or a local alias
    on_message: str
    max_turns: int = 0
    seed: str | None = None  # sent to the peer right after attaching (counts as turn 1)
    since: int | None = None  # also handle kept messages with a cursor above this; None: only new ones


@attrs.frozen
class HandlerAttachResult:
    peer: str
    handler: HandlerInfo
    seed: MessageSendResult | None = None


@attrs.frozen
class HandlerDetachParams:
    peer: str


# handler.serve: a handler for every peer without one, for as long as this control connection stays open
@attrs.frozen
class ServeParams:
    on_message: str
    seed: str | None = None  # needs `to`
    to: str | None = None
    max_turns: int = 0  # the serve ends once an exchange reaches this many replies of ours


@attrs.frozen
class ServeResult:
    serve: str  # names this serve in its notifications
    pk: str  # our public key
    cursor: int  # messages with a cursor above this are handled
    seed: MessageSendResult | None = None


DAEMON_HELLO = MethodSpec("daemon.hello", HelloParams, HelloResult, "what this daemon is and speaks")
DAEMON_STATUS = MethodSpec("daemon.status", Empty, StatusResult, "process, identity, journal and service status")
DAEMON_STOP = MethodSpec("daemon.stop", Empty, StopResult, "graceful shutdown, after answering")
IDENTITY_SHOW = MethodSpec("identity.show", Empty, IdentityResult, "this daemon's public keys")
RELAY_CONNECT = MethodSpec("relay.connect", RelayConnectParams, RelayConnectResult, "connect to a relay")
INVITE_CREATE = MethodSpec("invite.create", InviteCreateParams, InviteCreateResult, "a single-use invite URL")
INVITE_ACCEPT = MethodSpec("invite.accept", InviteAcceptParams, InviteAcceptResult, "redeem an invite")
PEER_LIST = MethodSpec("peer.list", Empty, PeerListResult, "peers with a session")
PEER_CLOSE = MethodSpec("peer.close", PeerCloseParams, PeerCloseResult, "end a v3 session, telling the peer")
MESSAGE_SEND = MethodSpec("message.send", MessageSendParams, MessageSendResult, "encrypt and send; answers on ACK")
MESSAGE_SUBSCRIBE = MethodSpec("message.subscribe", SubscribeParams, SubscribeResult, "stream received messages")
MESSAGE_UNSUBSCRIBE = MethodSpec("message.unsubscribe", UnsubscribeParams, Empty, "end a subscription")
ROOM_OPEN = MethodSpec("room.open", RoomOpenParams, RoomInfo, "host a relay + tunnel + handler")
ROOM_LIST = MethodSpec("room.list", Empty, RoomListResult, "rooms this daemon hosts")
ROOM_STATUS = MethodSpec("room.status", RoomRef, RoomInfo, "one room in detail")
ROOM_STOP = MethodSpec("room.stop", RoomStopParams, RoomStopResult, "stop one room or all")
HANDLER_ATTACH = MethodSpec("handler.attach", HandlerAttachParams, HandlerAttachResult, "auto-reply to one peer")
HANDLER_DETACH = MethodSpec("handler.detach", HandlerDetachParams, Empty, "stop auto-replying to one peer")
HANDLER_SERVE = MethodSpec("handler.serve", ServeParams, ServeResult, "auto-reply while this connection is open")

ALL_METHODS: tuple[MethodSpec[Any, Any], ...] = (
    DAEMON_HELLO,
    DAEMON_STATUS,
    DAEMON_STOP,
    IDENTITY_SHOW,
    RELAY_CONNECT,
    INVITE_CREATE,
    INVITE_ACCEPT,
    PEER_LIST,
    PEER_CLOSE,
    MESSAGE_SEND,
    MESSAGE_SUBSCRIBE,
    MESSAGE_UNSUBSCRIBE,
    ROOM_OPEN,
    ROOM_LIST,
    ROOM_STATUS,
    ROOM_STOP,
    HANDLER_ATTACH,
    HANDLER_DETACH,
    HANDLER_SERVE,
)

# Notifications (server -> client, no id)
MESSAGE_RECEIVED = "message.received"
MESSAGE_CLOSED = "message.closed"
SESSION_CLOSED = "session.closed"  # on every live message.subscribe stream: SessionClosedNotification
# handler.serve: {"serve", "event": {"type": ..., "ts": ms, ...}}; the serve ended: {"serve", "error"|"done"}
HANDLER_EVENT = "handler.event"
HANDLER_CLOSED = "handler.closed"


# ------------------------------------------------------------------------------------------- converters


def _make_converter(*, strict: bool) -> cattrs.Converter:
    """Converter that renames `from_` <-> "from"; strict ones refuse unknown keys (params), lenient ones ignore them."""
    converter = cattrs.Converter(forbid_extra_keys=strict)

    def renames(cls: type) -> dict[str, Any]:
        return {f.name: override(rename=f.name[:-1]) for f in attrs.fields(cls) if f.name.endswith("_")}

    converter.register_structure_hook_factory(
        attrs.has, lambda cls: make_dict_structure_fn(cls, converter, **renames(cls))
    )
    converter.register_unstructure_hook_factory(
        attrs.has, lambda cls: make_dict_unstructure_fn(cls, converter, **renames(cls))
    )
    if strict:
        for kind, label in ((str, "a string"), (int, "an integer"), (float, "a number"), (bool, "true or false")):
            converter.register_structure_hook(kind, _exact(kind, label))
    return converter


def _exact(kind: type, label: str) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {label}, got {value!r}")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {label}, got {type(value).__name__}")
        return value

    return structure


params_converter = _make_converter(strict=True)
results_converter = _make_converter(strict=False)


def param_errors(exc: Exception) -> list[str]:
    """Readable problems of a failed params structuring: ['peer: required key missing', ...]."""
    if not isinstance(exc, cattrs.BaseValidationError):
        return [str(exc)]

    def describe(error: BaseException, _type: Any) -> str:
        if isinstance(error, cattrs.ForbiddenExtraKeysError):
            return f"unknown key(s) {', '.join(sorted(error.extra_fields))}"
        if isinstance(error, KeyError):
            return "required key missing"
        return str(error)

    problems = []
    for line in cattrs.transform_error(exc, format_exception=describe):
        text, _, path = line.rpartition(" @ ")
        where = path.removeprefix("$").lstrip(".")
        problems.append(f"{where}: {text}" if where else text)
    return problems
