"""A small blocking JSON-RPC client for the control socket.

Blocking on purpose: a CLI command is one conversation with one daemon, and plain sockets with
timeouts say that directly. It shares the framing and the API classes with the daemon
(`agentroomd.control.framing`, `agentroomd.control.api`), never its internals. Notifications that
arrive while waiting for a reply are kept, in order, for `next_notification`.
"""

import collections
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any, TypeVar

from agentroomd.control import api
from agentroomd.control.framing import MAX_LINE_BYTES, LineBuffer, LineTooLongError, decode, encode

R = TypeVar("R")

CONNECT_TIMEOUT_S = 5.0
MAX_WAIT_SLICE_S = 86400.0


class DaemonUnreachableError(Exception):
    """No daemon answers on the socket, or the connection broke; the message says what to do."""


class ControlClient:
    def __init__(self, sock: socket.socket, path: Path) -> None:
        self._sock = sock
        self.path = path
        self._buffer = LineBuffer(MAX_LINE_BYTES)
        self._ids = itertools.count(1)
        self._notifications: collections.deque[dict[str, Any]] = collections.deque()

    @classmethod
    def connect(cls, path: Path) -> "ControlClient":
        """Connect to ``path``; raises FileNotFoundError / ConnectionRefusedError when no daemon listens."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(os.fspath(path))
        except BaseException:
            sock.close()
            raise
        return cls(sock, path)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, spec: api.MethodSpec[Any, R], params: Any = None, timeout: float | None = None) -> R:
        """Call ``spec`` with an attrs params object (None: defaults); returns the result object or raises RpcError."""
        raw_params = api.params_converter.unstructure(params if params is not None else spec.params())
        raw = self.request(spec.name, raw_params, timeout)
        return api.results_converter.structure(raw, spec.result)

    def request(self, method: str, params: dict[str, Any], timeout: float | None = None) -> Any:
        request_id = next(self._ids)
        line = encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        if len(line) > MAX_LINE_BYTES + 1:  # the newline does not count
            # The daemon would end the connection mid-send (framing is lost): say what is wrong instead.
            raise api.RpcError(
                api.LIMIT_EXCEEDED,
                f"{method}: the request is too large ({len(line) - 1} bytes; the control socket takes lines of at most "
                f"{MAX_LINE_BYTES} bytes)",
            )
        self._send(line)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message is None:
                raise api.RpcError(api.TIMEOUT, f"agentroomd did not answer {method} within {timeout:g} s")
            if "method" in message and "id" not in message:
                self._notifications.append(message)
                continue
            if message.get("id") not in (request_id, None):
                continue  # an answer to something we no longer wait for
            if "error" in message:
                raise api.RpcError.from_json(message["error"])
            if message.get("id") == request_id:
                return message.get("result")

    def next_notification(self, timeout: float | None) -> dict[str, Any] | None:
        """The next notification, or None when ``timeout`` seconds pass first."""
        if self._notifications:
            return self._notifications.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            message = self._receive(deadline)
            if message is None:
                return None
            if "method" in message and "id" not in message:
                return message

    def _send(self, line: bytes) -> None:
        try:
            self._sock.settimeout(CONNECT_TIMEOUT_S)
            self._sock.sendall(line)
        except OSError as exc:
            raise DaemonUnreachableError(f"lost the connection to agentroomd at {self.path}: {exc}") from exc

    def _receive(self, deadline: float | None) -> dict[str, Any] | None:
        while True:
            try:
                line = self._buffer.next_line()
            except LineTooLongError as exc:
                raise DaemonUnreachableError(f"agentroomd sent an oversized line: {exc}") from exc
            if line is not None:
                try:
                    message = decode(line)
                except ValueError as exc:
                    raise DaemonUnreachableError(f"agentroomd sent something that is not JSON: {exc}") from exc
                if isinstance(message, dict):
                    return message
                continue
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            # A socket timeout must fit a time_t (`listen --timeout 1e20`): wait in slices, the deadline decides.
            self._sock.settimeout(None if remaining is None else min(remaining, MAX_WAIT_SLICE_S))
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise DaemonUnreachableError(f"lost the connection to agentroomd at {self.path}: {exc}") from exc
            if not data:
                raise DaemonUnreachableError(f"agentroomd closed the connection ({self.path})")
            self._buffer.feed(data)
