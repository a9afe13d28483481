"""JSON-RPC 2.0 dispatch: one parsed message in, one response object (or None for a notification) out.

Modules plug methods in with `MethodRegistry.register(spec, handler)`; a handler is
`async def handler(params: <spec.params>, caller: Caller) -> <spec.result>` and signals failure by
raising `RpcError`. Params are structured strictly from the request (unknown keys refused) before the
handler runs, so handlers see typed values only. Anything else a handler raises is a bug: it is
logged with its traceback and the client gets -32603 without the details.

Deviations from JSON-RPC 2.0 (documented in docs/control-protocol.md): no batches, params by name only.
"""

import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import cattrs

from agentroomd.control import api
from agentroomd.control.api import ErrorKind, MethodSpec, RpcError
from agentroomd.log import Logger
from ratchet.jsjson import json_type_name

# Methods that still answer while the daemon shuts down (so `agentroomctl status/stop` keep working).
ALLOWED_WHILE_CLOSING = frozenset({api.DAEMON_HELLO.name, api.DAEMON_STATUS.name, api.DAEMON_STOP.name})


class Caller(Protocol):
    """The connection a call arrived on, as handlers see it (subscriptions need more: see control.connection)."""

    @property
    def connection_id(self) -> int: ...

    def after_reply(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Start ``fn`` as a task of this connection once the reply to the current call has been written."""
        ...

    def drop_deferred(self) -> None:
        """The call failed: forget what it registered with `after_reply`."""
        ...


Handler = Callable[[Any, Caller], Awaitable[Any]]


@attrs.define
class Registered:
    spec: MethodSpec[Any, Any]
    handler: Handler
    implemented: bool


def error_response(request_id: Any, kind: ErrorKind, message: str, **data: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": RpcError(kind, message, **data).to_json()}


class MethodRegistry:
    """Name -> handler. The daemon's services add their methods here before the control socket opens."""

    def __init__(self, log: Logger) -> None:
        self._methods: dict[str, Registered] = {}
        self._log = log
        self.closing = False  # set when shutdown begins: new work is refused with ShuttingDown
        self.internal_errors = 0

    def register(self, spec: MethodSpec[Any, Any], handler: Handler) -> None:
        """Add a method; replacing a not-implemented stub is allowed, replacing a real handler is a bug."""
        existing = self._methods.get(spec.name)
        if existing is not None and existing.implemented:
            raise ValueError(f"method {spec.name} is already registered")
        self._methods[spec.name] = Registered(spec, handler, implemented=True)

    def register_stub(self, spec: MethodSpec[Any, Any], feature: str) -> None:
        """Reserve a method whose implementation comes later: it validates params, then answers NotImplemented."""

        async def not_implemented(params: Any, caller: Caller) -> Any:
            raise RpcError(
                api.NOT_IMPLEMENTED,
                f"{spec.name} is not implemented yet in this agentroomd ({feature})",
                method=spec.name,
            )

        if spec.name not in self._methods:
            self._methods[spec.name] = Registered(spec, not_implemented, implemented=False)

    def names(self) -> list[str]:
        return sorted(self._methods)

    def implemented(self) -> list[str]:
        return sorted(name for name, entry in self._methods.items() if entry.implemented)

    async def dispatch(self, message: Any, caller: Caller) -> dict[str, Any] | None:
        """Answer one decoded JSON value; None when it was a valid notification (no id)."""
        if isinstance(message, list):
            return error_response(None, api.INVALID_REQUEST, "batch requests are not supported; send one per line")
        if not isinstance(message, dict):
            return error_response(None, api.INVALID_REQUEST, "a request must be a JSON object")
        has_id = "id" in message
        request_id = message.get("id")
        if has_id and not _valid_id(request_id):
            return error_response(None, api.INVALID_REQUEST, '"id" must be a string, an integer or null')
        if message.get("jsonrpc") != "2.0":
            return error_response(request_id, api.INVALID_REQUEST, 'a request needs "jsonrpc": "2.0"')
        method = message.get("method")
        if not isinstance(method, str):
            return error_response(request_id, api.INVALID_REQUEST, 'a request needs a "method" string')
        try:
            result = await self.call(method, message.get("params", {}), caller)
        except RpcError as exc:
            return {"jsonrpc": "2.0", "id": request_id, "error": exc.to_json()} if has_id else None
        return {"jsonrpc": "2.0", "id": request_id, "result": result} if has_id else None

    async def call(self, method: str, params: Any, caller: Caller) -> Any:
        """Run one method; returns the JSON-ready result or raises RpcError."""
        entry = self._methods.get(method)
        if entry is None:
            raise RpcError(api.METHOD_NOT_FOUND, f"unknown method {method!r}; daemon.hello lists the methods")
        if self.closing and method not in ALLOWED_WHILE_CLOSING:
            raise RpcError(api.SHUTTING_DOWN, "agentroomd is shutting down; retry once it has been restarted")
        if not isinstance(params, dict):
            raise RpcError(api.INVALID_PARAMS, f"params must be an object (by name), not {json_type_name(params)}")
        try:
            typed = api.params_converter.structure(params, entry.spec.params)
        except (cattrs.BaseValidationError, TypeError, ValueError) as exc:
            problems = api.param_errors(exc)
            raise RpcError(
                api.INVALID_PARAMS, f"invalid params for {method}: {'; '.join(problems)}", errors=problems
            ) from exc
        try:
            result = await entry.handler(typed, caller)
        except RpcError:
            caller.drop_deferred()
            raise
        except Exception as exc:  # a bug in a handler: log it fully, tell the client only that it happened
            caller.drop_deferred()
            self.internal_errors += 1
            self._log.error(
                "control_method_failed",
                method=method,
                error=type(exc).__name__,
                traceback="".join(traceback.format_exception(exc)),
            )
            message = f"{method} failed inside agentroomd; the daemon log has details"
            raise RpcError(api.INTERNAL_ERROR, message) from exc
        return api.params_converter.unstructure(result)


def _valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
