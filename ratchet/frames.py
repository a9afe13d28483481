"""The v2 wire frames: typed values, a strict parser and a byte-faithful serialiser.

Every WebSocket text message between a client and the relay is one JSON object with ``v``,
``type``, ``msg_id`` and ``ts`` plus the fields of its type. The reference validates frames with a
zod ``discriminatedUnion``; ``parse_frame`` gives the same verdicts (README "Frames" and
frames.json), so a frame one side accepts the other accepts too:

* ``v`` is 1 or 2; ``msg_id``/``invite_id``/``ref_msg_id`` are RFC 9562 UUID strings as zod 4's
  ``z.uuid()`` accepts them (version 1-8, variant 8/9/a/b, any case, plus nil and max);
* ``ts``/``expires_at`` are positive safe integers, ``seq`` a non-negative one; a JSON number
  such as ``1.0`` or ``1e3`` is an integer, because ``JSON.parse`` makes no difference;
* base64url fields only need to be non-empty (no alphabet check); ``ratchet_pk`` may be absent
  but not null; unknown keys are dropped.

One deliberate strictness: the length bounds PROTOCOL.md documents (keys, signatures and nonces
<= 512 characters, invite blob <= 16 KiB, ciphertext <= 192 KiB, challenge <= 256, error texts
<= 1 KiB, code <= 64, session token <= 512) are enforced. The reference schema the vectors were
made with has none, so frames.json shows it accepting over-long values that we reject. Lengths
are counted in UTF-16 code units, as zod's ``.max()`` counts them.

Our extensions ride in fields the reference strips as unknown: ``acks_deliveries`` on HELLO and
HELLO_ACK, ``ref_msg_id`` on ERROR, and the new client->relay type DELIVERY_ACK.

Key order. ``serialize_frame`` writes compact JSON in one of two layouts, so that what we emit is
byte-identical to what the reference emits in the same situation:

* ``KeyLayout.WIRE`` (``v, type, msg_id, ts, ...``): a frame built in code; what every sender
  writes. Frames we construct use it.
* ``KeyLayout.PARSED`` (``v, msg_id, ts, type, ...``): zod's output order. The reference relay
  forwards the *parsed* object, so routed frames inside DELIVERY and PONG echoes look like this.

``parse_frame`` remembers which layout the text used, so re-serialising a parsed frame gives back
its text (minus unknown keys). The layout is not part of a frame's equality. The relay turns a
client's frame into what the reference would forward with ``as_forwarded``; ``routed_from_claim``
builds SESSION_INIT in the WIRE layout, as the reference builds that one literally.

Every failure is a ``FrameError`` carrying a ``code`` (BAD_JSON, BAD_FRAME, UNKNOWN_TYPE), the
list of issues (path + zod-style issue code) and, when the text was a JSON object, the frame's
``msg_id`` (if it is a valid UUID) and ``frame_type`` (if it is a known type), so the relay can
answer with an ERROR that names the frame it rejects. Messages never quote the input.
"""

import enum
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Literal, TypeAlias, TypeVar, cast

import attrs

from ratchet.errors import EncodingError, RatchetError
from ratchet.jsjson import js_stringify, parse_json
from ratchet.rand import RandomSource

__all__ = [
    "FRAME_TYPES",
    "MAX_BLOB",
    "MAX_CHALLENGE",
    "MAX_CIPHERTEXT",
    "MAX_ERROR_CODE",
    "MAX_ERROR_TEXT",
    "MAX_KEY",
    "MAX_SAFE_INTEGER",
    "MAX_SESSION_TOKEN",
    "PROTOCOL_VERSION",
    "Ack",
    "AckStatus",
    "Delivery",
    "DeliveryAck",
    "Error",
    "Frame",
    "FrameError",
    "FrameErrorCode",
    "FrameIssue",
    "Hello",
    "HelloAck",
    "InviteClaim",
    "InvitePublish",
    "KeyLayout",
    "Msg",
    "Ping",
    "Pong",
    "Routed",
    "RoutedFrame",
    "SessionAck",
    "SessionInit",
    "as_forwarded",
    "make_ack",
    "make_delivery",
    "make_delivery_ack",
    "make_error",
    "make_hello_ack",
    "make_ping",
    "new_msg_id",
    "parse_frame",
    "pong_for",
    "routed_from_claim",
    "serialize_frame",
]

PROTOCOL_VERSION: Final = 2
MAX_SAFE_INTEGER: Final = 2**53 - 1

# Field bounds (PROTOCOL.md), in UTF-16 code units.
MAX_KEY = 512  # keys, signatures, nonces, ratchet_pk: zod alias "b64"
MAX_BLOB = 16_384  # INVITE_PUBLISH blob: "b64Blob"
MAX_CIPHERTEXT = 196_608  # "b64Cipher"
MAX_CHALLENGE = 256
MAX_SESSION_TOKEN = 512
MAX_ERROR_CODE = 64
MAX_ERROR_TEXT = 1024  # ERROR message, ACK error
MAX_FRAME_ERROR_MESSAGE = 1024

FrameErrorCode: TypeAlias = Literal["BAD_JSON", "BAD_FRAME", "UNKNOWN_TYPE"]
AckStatus: TypeAlias = Literal["delivered", "queued", "error"]
_ACK_STATUSES: Final = ("delivered", "queued", "error")

_UUID = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[1-8][0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
    r"|00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff"
)
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class KeyLayout(enum.Enum):
    """Where ``type`` sits among a frame's keys when it is written out (see the module docstring)."""

    WIRE = "wire"  # v, type, msg_id, ts, ...: as senders build frames
    PARSED = "parsed"  # v, msg_id, ts, type, ...: zod's output, as the reference relay forwards


# --------------------------------------------------------------------------------------------
# Errors


@attrs.frozen
class FrameIssue:
    """One reason a frame was rejected: where (JSON path), what kind (zod's issue code), and why."""

    path: tuple[str, ...]
    code: str
    message: str

    def describe(self) -> str:
        where = ".".join(self.path) if self.path else "frame"
        return f"{where}: {self.message}"


class FrameError(RatchetError):
    """A frame that is not valid JSON, not a valid frame, or of a type we do not know.

    ``code`` is the ERROR code the relay answers with (the reference answers UNKNOWN_TYPE parse
    failures with BAD_FRAME too; it keeps UNKNOWN_TYPE for valid frames sent the wrong way).
    ``str(error)`` is at most 1024 characters and never contains the input itself.
    """

    def __init__(
        self,
        code: FrameErrorCode,
        message: str,
        *,
        issues: tuple[FrameIssue, ...] = (),
        msg_id: str | None = None,
        frame_type: str | None = None,
    ) -> None:
        if len(message) > MAX_FRAME_ERROR_MESSAGE:
            message = message[: MAX_FRAME_ERROR_MESSAGE - 1] + "…"
        super().__init__(message)
        self.code: FrameErrorCode = code
        self.message = message
        self.issues = issues
        self.msg_id = msg_id
        self.frame_type = frame_type


class _Invalid(Exception):
    """Raised by a field check; turned into a FrameIssue by whoever collects them."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _json_type(value: object) -> str:
    """The name zod uses for what it received; never the value itself."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _js_length(text: str) -> int:
    """Length in UTF-16 code units, as JavaScript (and so zod's min/max) counts it."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


# --------------------------------------------------------------------------------------------
# Field checks: each takes a decoded JSON value and returns the normalised field value, or
# raises _Invalid. The same checks validate parsed input and frames constructed in code.

_Check: TypeAlias = Callable[[object], object]


def _string(min_len: int, max_len: int) -> _Check:
    def check(value: object) -> object:
        if not isinstance(value, str):
            raise _Invalid("invalid_type", f"expected string, received {_json_type(value)}")
        length = _js_length(value)
        if length < min_len:
            raise _Invalid("too_small", f"expected string to have >={min_len} characters")
        if length > max_len:
            raise _Invalid("too_big", f"expected string to have <={max_len} characters, got {length}")
        return value

    return check


def _uuid(value: object) -> object:
    if not isinstance(value, str):
        raise _Invalid("invalid_type", f"expected string, received {_json_type(value)}")
    if _UUID.fullmatch(value) is None:
        raise _Invalid("invalid_format", "invalid UUID")
    return value


def _safe_int(minimum: int) -> _Check:
    """An integer >= minimum and <= 2**53-1; integral floats (1.0, 1e3) count as integers."""

    def check(value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid("invalid_type", f"expected number, received {_json_type(value)}")
        number: int
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _Invalid("invalid_type", "expected number, received a non-finite number")
            if not value.is_integer():
                raise _Invalid("invalid_type", "expected int, received number")
            number = int(value)
        else:
            number = value
        if number > MAX_SAFE_INTEGER:
            raise _Invalid("too_big", f"expected int to be <={MAX_SAFE_INTEGER}")
        if number < minimum:
            relation = ">0" if minimum == 1 else f">={minimum}"
            raise _Invalid("too_small", f"expected number to be {relation}")
        return number if isinstance(value, float) else value

    return check


def _version(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float) or value not in (1, 2):
        raise _Invalid("invalid_union", "expected protocol version 1 or 2")
    return int(value) if isinstance(value, float) else value


def _ack_status(value: object) -> object:
    if value not in _ACK_STATUSES:  # only str can compare equal to the str options
        raise _Invalid("invalid_value", 'expected one of "delivered"|"queued"|"error"')
    return value


def _boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise _Invalid("invalid_type", f"expected boolean, received {_json_type(value)}")
    return value


_key = _string(1, MAX_KEY)
_ciphertext = _string(1, MAX_CIPHERTEXT)
_blob = _string(1, MAX_BLOB)
_challenge = _string(1, MAX_CHALLENGE)
_session_token = _string(1, MAX_SESSION_TOKEN)
_error_code = _string(0, MAX_ERROR_CODE)
_error_text = _string(0, MAX_ERROR_TEXT)
_positive = _safe_int(1)
_non_negative = _safe_int(0)


@attrs.frozen
class _Checked:
    """An attrs validator that runs a field check on a value set in code (which must already be normal).

    It also carries the check, so that the parser's field table comes out of the class definitions
    and every field is declared exactly once.
    """

    check: _Check
    optional: bool = False  # None allowed: the field may be absent on the wire

    def __call__(self, _instance: object, attribute: "attrs.Attribute[Any]", value: object) -> None:
        if value is None and self.optional:
            return
        try:
            normal = self.check(value)
        except _Invalid as exc:
            issue = FrameIssue((attribute.name,), exc.code, exc.message)
            raise FrameError("BAD_FRAME", issue.describe(), issues=(issue,)) from None
        if normal is not value and type(normal) is not type(value):
            wanted = type(normal).__name__
            issue = FrameIssue((attribute.name,), "invalid_type", f"expected {wanted}, got {type(value).__name__}")
            raise FrameError("BAD_FRAME", issue.describe(), issues=(issue,))


_MAYBE: Final = {"optional": True}  # attrs metadata: may be absent on the wire (None / False when absent)
_FROM: Final = {"wire": "from"}  # attrs metadata: the JSON name of ``from_``


@attrs.frozen
class _Field:
    """How one attribute appears on the wire: its JSON name, its check, and when it is left out."""

    attr: str
    wire: str
    check: _Check
    optional: bool
    omit: object  # an optional field whose value is this object (its default) is not written


_NEVER: Final = object()


def _wire_fields(cls: type) -> tuple[_Field, ...]:
    """The wire fields of a frame class in declaration order, which is the reference's key order."""
    table: list[_Field] = []
    for attribute in attrs.fields(cls):
        validator = attribute.validator
        if not isinstance(validator, _Checked):
            continue  # key_layout (not on the wire) and DELIVERY.routed (a nested frame)
        optional = bool(attribute.metadata.get("optional", False))
        table.append(
            _Field(
                attr=attribute.name,
                wire=str(attribute.metadata.get("wire", attribute.name)),
                check=validator.check,
                optional=optional,
                omit=attribute.default if optional else _NEVER,
            )
        )
    return tuple(table)


# --------------------------------------------------------------------------------------------
# Frame types. Attribute order = the reference's key order after v, type, msg_id, ts.


@attrs.frozen(kw_only=True)
class _FrameBase:
    """The envelope every frame carries."""

    TYPE: ClassVar[str]

    v: int = attrs.field(default=PROTOCOL_VERSION, validator=_Checked(_version))
    msg_id: str = attrs.field(validator=_Checked(_uuid))
    ts: int = attrs.field(validator=_Checked(_positive))
    key_layout: KeyLayout = attrs.field(default=KeyLayout.WIRE, eq=False, repr=False)
    """Key order when written out; not part of equality (see the module docstring)."""


@attrs.frozen(kw_only=True)
class Hello(_FrameBase):
    """Client -> relay: authenticate by signing the relay's challenge."""

    TYPE: ClassVar[Literal["HELLO"]] = "HELLO"

    ed25519_pk: str = attrs.field(validator=_Checked(_key))
    x25519_pk: str = attrs.field(validator=_Checked(_key))
    sig: str = attrs.field(validator=_Checked(_key))
    challenge: str = attrs.field(validator=_Checked(_challenge))
    acks_deliveries: bool = attrs.field(default=False, validator=_Checked(_boolean), metadata=_MAYBE)
    """Extension: this client sends DELIVERY_ACK once it has stored a DELIVERY."""


@attrs.frozen(kw_only=True)
class HelloAck(_FrameBase):
    """Relay -> client: authenticated; the token lets a reconnect skip the challenge."""

    TYPE: ClassVar[Literal["HELLO_ACK"]] = "HELLO_ACK"

    session_token: str = attrs.field(validator=_Checked(_session_token))
    acks_deliveries: bool = attrs.field(default=False, validator=_Checked(_boolean), metadata=_MAYBE)
    """Extension: the relay keeps queued rows until the client's DELIVERY_ACK."""


@attrs.frozen(kw_only=True)
class InvitePublish(_FrameBase):
    """Client -> relay: register an invite so that it can be claimed."""

    TYPE: ClassVar[Literal["INVITE_PUBLISH"]] = "INVITE_PUBLISH"

    invite_id: str = attrs.field(validator=_Checked(_uuid))
    blob: str = attrs.field(validator=_Checked(_blob))
    expires_at: int = attrs.field(validator=_Checked(_positive))


@attrs.frozen(kw_only=True)
class InviteClaim(_FrameBase):
    """Client -> relay: claim an invite; the relay turns it into SESSION_INIT for the inviter."""

    TYPE: ClassVar[Literal["INVITE_CLAIM"]] = "INVITE_CLAIM"

    invite_id: str = attrs.field(validator=_Checked(_uuid))
    from_: str = attrs.field(validator=_Checked(_key), metadata=_FROM)
    ciphertext: str = attrs.field(validator=_Checked(_ciphertext))
    nonce: str = attrs.field(validator=_Checked(_key))
    sig: str = attrs.field(validator=_Checked(_key))


@attrs.frozen(kw_only=True)
class RoutedFrame(_FrameBase):
    """The fields MSG, SESSION_INIT and SESSION_ACK share: what the relay routes from one pk to another."""

    from_: str = attrs.field(validator=_Checked(_key), metadata=_FROM)
    to: str = attrs.field(validator=_Checked(_key))
    ciphertext: str = attrs.field(validator=_Checked(_ciphertext))
    nonce: str = attrs.field(validator=_Checked(_key))
    sig: str = attrs.field(validator=_Checked(_key))
    seq: int = attrs.field(validator=_Checked(_non_negative))
    ratchet_pk: str | None = attrs.field(default=None, validator=_Checked(_key, optional=True), metadata=_MAYBE)


@attrs.frozen(kw_only=True)
class Msg(RoutedFrame):
    """An encrypted message of the Double Ratchet."""

    TYPE: ClassVar[Literal["MSG"]] = "MSG"


@attrs.frozen(kw_only=True)
class SessionInit(RoutedFrame):
    """The invitee's handshake, as the relay delivers it to the inviter."""

    TYPE: ClassVar[Literal["SESSION_INIT"]] = "SESSION_INIT"


@attrs.frozen(kw_only=True)
class SessionAck(RoutedFrame):
    """The inviter's answer to SESSION_INIT."""

    TYPE: ClassVar[Literal["SESSION_ACK"]] = "SESSION_ACK"


Routed: TypeAlias = Msg | SessionInit | SessionAck
_F = TypeVar("_F", bound=_FrameBase)


@attrs.frozen(kw_only=True)
class Ack(_FrameBase):
    """Relay -> client: what became of the client frame ``ref_msg_id``."""

    TYPE: ClassVar[Literal["ACK"]] = "ACK"

    ref_msg_id: str = attrs.field(validator=_Checked(_uuid))
    status: AckStatus = attrs.field(validator=_Checked(_ack_status))
    error: str | None = attrs.field(default=None, validator=_Checked(_error_text, optional=True), metadata=_MAYBE)


def _routed_instance(_instance: object, _attribute: "attrs.Attribute[Any]", value: object) -> None:
    if not isinstance(value, Msg | SessionInit | SessionAck):
        issue = FrameIssue(("routed",), "invalid_type", "expected a MSG, SESSION_INIT or SESSION_ACK frame")
        raise FrameError("BAD_FRAME", issue.describe(), issues=(issue,))


@attrs.frozen(kw_only=True)
class Delivery(_FrameBase):
    """Relay -> client: a routed frame for this client (fresh msg_id/ts outside, the original inside)."""

    TYPE: ClassVar[Literal["DELIVERY"]] = "DELIVERY"

    routed: Routed = attrs.field(validator=_routed_instance)


@attrs.frozen(kw_only=True)
class Error(_FrameBase):
    """Relay -> client: a request was refused."""

    TYPE: ClassVar[Literal["ERROR"]] = "ERROR"

    code: str = attrs.field(validator=_Checked(_error_code))
    message: str = attrs.field(validator=_Checked(_error_text))
    ref_msg_id: str | None = attrs.field(default=None, validator=_Checked(_uuid, optional=True), metadata=_MAYBE)
    """Extension: the msg_id of the frame this ERROR answers, when the relay could read one."""


@attrs.frozen(kw_only=True)
class Ping(_FrameBase):
    """Application-level keepalive; answered with a PONG carrying the same msg_id and ts."""

    TYPE: ClassVar[Literal["PING"]] = "PING"


@attrs.frozen(kw_only=True)
class Pong(_FrameBase):
    """The echo of a PING."""

    TYPE: ClassVar[Literal["PONG"]] = "PONG"


@attrs.frozen(kw_only=True)
class DeliveryAck(_FrameBase):
    """Extension, client -> relay: the DELIVERY ``ref_msg_id`` is stored, so the relay may drop its row."""

    TYPE: ClassVar[Literal["DELIVERY_ACK"]] = "DELIVERY_ACK"

    ref_msg_id: str = attrs.field(validator=_Checked(_uuid))


Frame: TypeAlias = (
    Hello
    | HelloAck
    | InvitePublish
    | InviteClaim
    | Msg
    | SessionInit
    | SessionAck
    | Ack
    | Delivery
    | Error
    | Ping
    | Pong
    | DeliveryAck
)

_CLASSES: Final[tuple[type[Frame], ...]] = (
    Hello,
    HelloAck,
    InvitePublish,
    InviteClaim,
    Msg,
    SessionInit,
    SessionAck,
    Ack,
    Delivery,
    Error,
    Ping,
    Pong,
    DeliveryAck,
)
_BY_TYPE: Final[Mapping[str, type[Frame]]] = {cls.TYPE: cls for cls in _CLASSES}
_ROUTED_BY_TYPE: Final[Mapping[str, type[Routed]]] = {cls.TYPE: cls for cls in (Msg, SessionInit, SessionAck)}
_FIELDS: Final[Mapping[type, tuple[_Field, ...]]] = {cls: _wire_fields(cls) for cls in _CLASSES}
_BASE_COUNT: Final = 3  # v, msg_id, ts lead every table
FRAME_TYPES: Final[tuple[str, ...]] = tuple(cls.TYPE for cls in _CLASSES)
"""Every type ``parse_frame`` accepts: the reference's twelve and our DELIVERY_ACK."""


# --------------------------------------------------------------------------------------------
# Parsing


def parse_frame(data: str | bytes | bytearray) -> Frame:
    """Decode and validate one frame; raises ``FrameError`` and nothing else on bad input.

    Bytes must be UTF-8. A ``str`` must be real Unicode text (no surrogate code points: text that
    came off a WebSocket never has them); surrogates escaped as ``\\udXXX`` inside JSON strings are
    fine, as in JavaScript.
    """
    text = _text_of(data)
    try:
        value = parse_json(text)
    except EncodingError as exc:
        raise FrameError("BAD_JSON", str(exc)) from None
    return _frame_from_value(value)


def _text_of(data: str | bytes | bytearray) -> str:
    if isinstance(data, str):
        if not data.isascii() and _SURROGATE.search(data) is not None:
            raise FrameError("BAD_JSON", "invalid text: surrogate code points are not Unicode text")
        return data
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("BAD_JSON", f"invalid UTF-8 at byte {exc.start}") from None


def _layout_of(obj: Mapping[str, object]) -> KeyLayout:
    """PARSED when msg_id comes before type (zod's output order), else WIRE."""
    keys = list(obj)
    if "msg_id" in obj and "type" in obj and keys.index("msg_id") < keys.index("type"):
        return KeyLayout.PARSED
    return KeyLayout.WIRE


def _check_fields(
    obj: Mapping[str, object], fields: tuple[_Field, ...], prefix: tuple[str, ...], issues: list[FrameIssue]
) -> dict[str, object]:
    values: dict[str, object] = {}
    for field in fields:
        if field.wire not in obj:
            if not field.optional:
                expected = _MISSING_EXPECTATION.get(field.check, "string")
                issues.append(
                    FrameIssue((*prefix, field.wire), "invalid_type", f"expected {expected}, received undefined")
                )
            continue
        try:
            values[field.attr] = field.check(obj[field.wire])
        except _Invalid as exc:
            issues.append(FrameIssue((*prefix, field.wire), exc.code, exc.message))
    return values


_MISSING_EXPECTATION: Final[dict[_Check, str]] = {
    _positive: "number",
    _non_negative: "number",
    _version: "1 | 2",
    _boolean: "boolean",
    _ack_status: '"delivered"|"queued"|"error"',
}


def _peek_ids(obj: Mapping[str, object]) -> tuple[str | None, str | None]:
    msg_id = obj.get("msg_id")
    frame_type = obj.get("type")
    return (
        msg_id if isinstance(msg_id, str) and _UUID.fullmatch(msg_id) else None,
        frame_type if isinstance(frame_type, str) and frame_type in _BY_TYPE else None,
    )


def _bad_frame(issues: list[FrameIssue], obj: Mapping[str, object]) -> FrameError:
    msg_id, frame_type = _peek_ids(obj)
    text = "invalid frame: " + "; ".join(issue.describe() for issue in issues)
    return FrameError("BAD_FRAME", text, issues=tuple(issues), msg_id=msg_id, frame_type=frame_type)


def _frame_from_value(value: object) -> Frame:
    if not isinstance(value, dict):
        issue = FrameIssue((), "invalid_type", f"expected object, received {_json_type(value)}")
        raise FrameError("BAD_FRAME", f"invalid frame: {issue.message}", issues=(issue,))
    frame_type = value.get("type")
    factory = _BY_TYPE.get(frame_type) if isinstance(frame_type, str) else None
    if factory is None:
        msg_id, _ = _peek_ids(value)
        if isinstance(frame_type, str):
            issue = FrameIssue(("type",), "invalid_union", "unknown frame type")
            raise FrameError("UNKNOWN_TYPE", "unknown frame type", issues=(issue,), msg_id=msg_id)
        received = "undefined" if "type" not in value else _json_type(frame_type)
        issue = FrameIssue(("type",), "invalid_union", f"expected a frame type string, received {received}")
        raise FrameError("BAD_FRAME", f"invalid frame: {issue.describe()}", issues=(issue,), msg_id=msg_id)

    issues: list[FrameIssue] = []
    values = _check_fields(value, _FIELDS[factory], (), issues)
    if factory is Delivery:
        routed = _routed_from_value(value.get("routed", _ABSENT), issues)
        if routed is not None:
            values["routed"] = routed
    if issues:
        raise _bad_frame(issues, value)
    return _construct(factory, values, _layout_of(value))


def _construct(cls: type[_F], values: dict[str, object], layout: KeyLayout) -> _F:
    """Build a frame from checked values (its attrs validators run once more, which is cheap)."""
    return cast(Callable[..., _F], cls)(**values, key_layout=layout)


_ABSENT: Final = object()


def _routed_from_value(value: object, issues: list[FrameIssue]) -> Routed | None:
    """DELIVERY.routed: an object with a routed type and the routed fields, all checked (as zod does)."""
    if value is _ABSENT or not isinstance(value, dict):
        received = "undefined" if value is _ABSENT else _json_type(value)
        issues.append(FrameIssue(("routed",), "invalid_type", f"expected object, received {received}"))
        return None
    before = len(issues)
    table = _FIELDS[Msg]  # the three routed types share their fields
    values = _check_fields(value, table[:_BASE_COUNT], ("routed",), issues)
    routed_type = value.get("type")
    routed_cls = _ROUTED_BY_TYPE.get(routed_type) if isinstance(routed_type, str) else None
    if routed_cls is None:  # zod checks the enum where "type" sits in the schema: after ts
        issues.append(
            FrameIssue(("routed", "type"), "invalid_value", 'expected one of "MSG"|"SESSION_INIT"|"SESSION_ACK"')
        )
    values.update(_check_fields(value, table[_BASE_COUNT:], ("routed",), issues))
    if routed_cls is None or len(issues) > before:
        return None
    return _construct(routed_cls, values, _layout_of(value))


# --------------------------------------------------------------------------------------------
# Serialising


def _frame_value(frame: _FrameBase) -> dict[str, object]:
    """The frame as a JSON object in its key layout; optional fields are left out, not null."""
    out: dict[str, object] = {"v": frame.v}
    if frame.key_layout is KeyLayout.WIRE:
        out["type"] = frame.TYPE
        out["msg_id"] = frame.msg_id
        out["ts"] = frame.ts
    else:
        out["msg_id"] = frame.msg_id
        out["ts"] = frame.ts
        out["type"] = frame.TYPE
    for field in _FIELDS[type(frame)][_BASE_COUNT:]:
        item = getattr(frame, field.attr)
        if item is not field.omit:
            out[field.wire] = item
    if isinstance(frame, Delivery):
        out["routed"] = _frame_value(frame.routed)
    return out


def serialize_frame(frame: Frame) -> str:
    """Compact JSON exactly as the reference writes the same frame (JS escaping, key layout kept)."""
    return js_stringify(_frame_value(frame))


# --------------------------------------------------------------------------------------------
# Building frames


def new_msg_id(rng: RandomSource) -> str:
    """A fresh frame id: a random version-4 UUID, as the reference draws with ``crypto.randomUUID``."""
    return rng.uuid4()


def as_forwarded(frame: _F) -> _F:
    """The frame as the reference relay passes it on: its zod-parsed form, keys in PARSED layout.

    Use it for a client's routed frame before wrapping it in DELIVERY or storing it for later.
    A DELIVERY's routed frame is re-laid-out too, as zod's output is parsed all the way down.
    """
    if isinstance(frame, Delivery):
        return attrs.evolve(frame, key_layout=KeyLayout.PARSED, routed=as_forwarded(frame.routed))
    return attrs.evolve(frame, key_layout=KeyLayout.PARSED)


def make_delivery(rng: RandomSource, now_ms: int, routed: Routed) -> Delivery:
    """DELIVERY around a routed frame, with a fresh msg_id and the relay's clock; ``routed`` as given."""
    return Delivery(msg_id=new_msg_id(rng), ts=now_ms, routed=routed)


def routed_from_claim(claim: InviteClaim, inviter_pk: str) -> SessionInit:
    """SESSION_INIT for the inviter, built from an INVITE_CLAIM exactly as the reference relay builds it.

    Same msg_id, ts, from, ciphertext, nonce and sig; ``to`` = the inviter (the pk that published
    the invite); seq 0; no ratchet_pk; v 2; WIRE layout (the reference writes an object literal).
    """
    return SessionInit(
        v=PROTOCOL_VERSION,
        msg_id=claim.msg_id,
        ts=claim.ts,
        from_=claim.from_,
        to=inviter_pk,
        ciphertext=claim.ciphertext,
        nonce=claim.nonce,
        sig=claim.sig,
        seq=0,
    )


def make_ping(rng: RandomSource, now_ms: int) -> Ping:
    return Ping(msg_id=new_msg_id(rng), ts=now_ms)


def pong_for(ping: Ping) -> Pong:
    """The reference's answer to PING: the same frame with type PONG (``{...parsed, type: "PONG"}``)."""
    return Pong(v=ping.v, msg_id=ping.msg_id, ts=ping.ts, key_layout=KeyLayout.PARSED)


def make_hello_ack(rng: RandomSource, now_ms: int, session_token: str, *, acks_deliveries: bool = False) -> HelloAck:
    return HelloAck(msg_id=new_msg_id(rng), ts=now_ms, session_token=session_token, acks_deliveries=acks_deliveries)


def make_ack(rng: RandomSource, now_ms: int, ref_msg_id: str, status: AckStatus, *, error: str | None = None) -> Ack:
    """ACK for ``ref_msg_id``; an over-long error text is cut to the 1 KiB bound rather than refused."""
    text = None if error is None else _truncate_js(error, MAX_ERROR_TEXT)
    return Ack(msg_id=new_msg_id(rng), ts=now_ms, ref_msg_id=ref_msg_id, status=status, error=text)


def make_error(rng: RandomSource, now_ms: int, code: str, message: str, *, ref_msg_id: str | None = None) -> Error:
    """ERROR; code and message are cut to their bounds (64 / 1024) so that building one never fails."""
    return Error(
        msg_id=new_msg_id(rng),
        ts=now_ms,
        code=_truncate_js(code, MAX_ERROR_CODE),
        message=_truncate_js(message, MAX_ERROR_TEXT),
        ref_msg_id=ref_msg_id,
    )


def make_delivery_ack(rng: RandomSource, now_ms: int, ref_msg_id: str) -> DeliveryAck:
    return DeliveryAck(msg_id=new_msg_id(rng), ts=now_ms, ref_msg_id=ref_msg_id)


def _truncate_js(text: str, limit: int) -> str:
    """At most ``limit`` UTF-16 code units, never splitting a character."""
    if _js_length(text) <= limit:
        return text
    units = 0
    for index, char in enumerate(text):
        units += 2 if ord(char) > 0xFFFF else 1
        if units > limit:
            return text[:index]
    return text  # pragma: no cover - unreachable: the length check above said it is too long
