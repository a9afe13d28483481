"""NDJSON logging on stderr: one JSON object per line, `{"ts", "level", "event", ...fields}`.

Callers pass only routing metadata (short key prefixes, ids, sizes, counts). Never pass a key, a
token, a ciphertext or a message body: the log is meant to be safe to paste into a bug report.
"""

import json
import os
import sys
import time
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}


def short_pk(pk: str) -> str:
    """The first 8 characters of a base64url public key: enough to tell peers apart in a log."""
    return pk[:8]


class Logger:
    """A tiny structured logger; ``component`` is added to every line so daemons can share stderr."""

    def __init__(self, component: str, level: str | None = None, stream: TextIO | None = None) -> None:
        self.component = component
        self.threshold = LEVELS.get((level or os.environ.get("LOG_LEVEL", "info")).lower(), 20)
        self.stream = stream

    def _emit(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.threshold:
            return
        record = {"ts": int(time.time() * 1000), "level": level, "component": self.component, "event": event}
        record.update(fields)
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str)
        stream = self.stream or sys.stderr
        try:
            stream.write(line + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full stderr must never take the daemon down

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warn(self, event: str, **fields: Any) -> None:
        self._emit("warn", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)
