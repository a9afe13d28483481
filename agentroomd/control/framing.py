"""NDJSON framing for the control socket, sans-I/O: bytes in, complete lines out; objects in, bytes out.

Both ends use it (the trio server and the blocking CLI client), so it owns no socket. A line is one
UTF-8 JSON object ending in "\\n" (a trailing "\\r" is tolerated). A peer that sends more than
`MAX_LINE_BYTES` without a newline gets `LineTooLongError`: framing is lost and the connection must
end, but the buffer never grows past the limit. The newline search resumes where it stopped, so a
line arriving in many small pieces costs O(n), not O(n^2) (the h11 receive-buffer trick).
"""

import json
import re
from typing import Any

from ratchet.jsjson import encodes_as_utf8

MAX_LINE_BYTES = 1 << 20


class LineTooLongError(Exception):
    """More than the limit arrived without a newline."""


class LineBuffer:
    """Accumulates received bytes and hands out complete lines (without the newline)."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._data = bytearray()
        self._scanned = 0  # bytes of _data already known to hold no newline

    def feed(self, data: bytes) -> None:
        self._data += data

    def next_line(self) -> bytes | None:
        """The next complete line, or None if more bytes are needed; raises LineTooLongError."""
        index = self._data.find(b"\n", self._scanned)
        if index < 0:
            self._scanned = len(self._data)
            if len(self._data) > self.max_line_bytes:
                raise LineTooLongError(f"line longer than {self.max_line_bytes} bytes")
            return None
        if index > self.max_line_bytes:
            raise LineTooLongError(f"line longer than {self.max_line_bytes} bytes")
        line = bytes(self._data[:index])
        del self._data[: index + 1]
        self._scanned = 0
        return line[:-1] if line.endswith(b"\r") else line

    @property
    def pending(self) -> int:
        """Bytes of an incomplete line held (nonzero at EOF means the peer hung up mid-line)."""
        return len(self._data)


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line. json.dumps never emits a raw newline, so the frame cannot break."""
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# A \uD800-\uDFFF escape: only a line holding one can decode to a string with a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def decode(line: bytes) -> Any:
    """Parse one line; raises ValueError (UnicodeDecodeError and JSONDecodeError are ValueErrors).

    Also ValueError for what json.loads accepts but is not text we can use: a lone surrogate escape
    (no UTF-8 form, so neither an answer nor a state file could carry it) and nesting too deep to parse.
    """
    try:
        value = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if _SURROGATE_ESCAPE.search(line):
        _check_text(value)
    return value


def _check_text(value: Any) -> None:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not encodes_as_utf8(item):
                raise ValueError("a string holds a lone surrogate escape (\\uD800-\\uDFFF without its pair)")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
