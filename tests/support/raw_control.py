"""A blocking line-oriented client for a daemon's control socket, able to send anything, valid or not.

`agentroomctl.client.ControlClient` only speaks correct JSON-RPC; these tests need to send garbage,
half lines and oversized lines, and to see exactly when the daemon closes the connection.
"""

import json
import socket
from pathlib import Path
from typing import Any


class RawClient:
    """One Unix-socket connection; every read is bounded by a 10 s socket timeout."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self._buffer = b""

    def send_line(self, data: bytes) -> None:
        self.sock.sendall(data + b"\n")

    def send_json(self, message: dict[str, Any]) -> None:
        self.send_line(json.dumps(message).encode())

    def call(self, method: str, params: dict[str, Any] | None = None, request_id: int | str = 1) -> dict[str, Any]:
        self.send_json({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        return self.read()

    def read(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("the daemon closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        message: dict[str, Any] = json.loads(line)
        return message

    def at_eof(self) -> bool:
        """True once the daemon has closed its end (after any buffered lines were read)."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return True
            self._buffer += chunk

    def close(self) -> None:
        self.sock.close()
