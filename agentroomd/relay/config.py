"""The relay's settings: the `[relay]` table of agentroom.toml, overridden by the reference's environment.

Precedence, lowest first: built-in defaults (the reference's), the `[relay]` table, the environment
variables the reference reads (`PORT`, `AGENTROOM_DB`, `HMAC_SECRET`, ...), then explicit overrides
(command-line flags). So a relay configured for the TypeScript reference behaves the same here.

The HMAC secret that signs session tokens is the one secret the relay holds. When none (or a short
one) is configured for a relay with a database file, `ensure_hmac_secret` generates one once and keeps
it beside the database (mode 0600, atomic write), so tokens survive a restart; it is never printed.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from agentroomd.files import PRIVATE_DIR, atomic_write

MIN_SECRET_CHARS = 32
SECRET_FILE_NAME = "relay-hmac-secret"
MEMORY_DB = ":memory:"
DEFAULT_DB_NAME = "relay.db"


class RelayConfigError(Exception):
    """A relay setting is missing, malformed or out of range; the message names the key and its source."""


def _default_db() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "agentroom" / DEFAULT_DB_NAME)


@attrs.frozen
class RelayConfig:
    """Everything the relay needs to run. Defaults are the reference's (agentroom-reference.md §3.1, §3.5)."""

    host: str = "127.0.0.1"
    port: int = 8787
    db: str = attrs.field(factory=_default_db)  # SQLite path, or ":memory:" for a throwaway relay
    max_pending_msgs: int = 500  # per recipient
    pending_ttl_days: float = 7
    trust_proxy: bool = False  # key the challenge rate limit on the first X-Forwarded-For entry
    rate_limit_disabled: bool = False  # token buckets off (tests, benchmarks); caps and quotas stay
    log_level: str = "info"
    ws_max_payload: int = 262_144  # bytes of one inbound WebSocket message; more closes with 1009
    max_connections: int = 500  # concurrent WebSocket connections, authenticated or not
    max_invites_per_pk: int = 20  # unclaimed, unexpired invites per inviter
    hmac_secret: str | None = attrs.field(default=None, repr=False)
    hmac_secret_previous: str | None = attrs.field(default=None, repr=False)
    state_dir: str | None = None  # where a generated HMAC secret is kept; default: the database's directory
    tunnel: bool = False  # ask for a cloudflared tunnel (agentroomd/tunnel.py)
    # Limits the reference hard-codes; settable here so tests can make them small.
    challenge_per_min: float = 10  # GET /auth/challenge per IP (bucket capacity = per-minute count)
    hello_failures_per_min: float = 5  # failed HELLO signatures per IP, then close 1008
    frame_burst: int = 120  # frames per key, burst
    frames_per_min: float = 60  # frames per key, sustained
    challenge_ttl_s: float = 60
    token_ttl_s: float = 3600
    invite_max_ttl_days: float = 7  # INVITE_PUBLISH expires_at is clamped to now + this
    backpressure_bytes: int = 1_048_576  # frames buffered for one socket before deliveries go to the store
    auth_timeout_s: float = 60  # an unauthenticated socket is closed (1008) after this long
    ping_interval_s: float | None = 30  # WebSocket protocol pings; None disables them
    shutdown_grace_s: float = 3  # how long shutdown waits for sockets to close with 1001
    prune_interval_s: float = 3600
    max_outstanding_challenges: int = 100_000

    def problems(self) -> list[str]:
        """Every invalid value, as `key: reason`; empty when the config is usable."""
        found: list[str] = []
        if not 0 <= self.port <= 65_535:
            found.append("port: must be 0..65535")
        positive = (
            "max_pending_msgs", "pending_ttl_days", "ws_max_payload", "max_connections", "max_invites_per_pk",
            "challenge_per_min", "hello_failures_per_min", "frame_burst", "frames_per_min", "challenge_ttl_s",
            "token_ttl_s", "invite_max_ttl_days", "backpressure_bytes", "auth_timeout_s", "shutdown_grace_s",
            "prune_interval_s", "max_outstanding_challenges",
        )  # fmt: skip
        # `not > 0`, not `<= 0`: a NaN (TOML `nan`, or "nan" in the environment) is no duration either
        found += [f"{key}: must be greater than 0" for key in positive if not getattr(self, key) > 0]
        if self.ping_interval_s is not None and not self.ping_interval_s > 0:
            found.append("ping_interval_s: must be greater than 0 (or absent)")
        if self.log_level not in ("debug", "info", "warn", "error"):
            found.append("log_level: must be one of debug, info, warn, error")
        if not self.db:
            found.append("db: must not be empty")
        return found

    @property
    def persistent(self) -> bool:
        return self.db != MEMORY_DB

    @property
    def secret_dir(self) -> Path:
        if self.state_dir is not None:
            return Path(self.state_dir)
        return Path(self.db).expanduser().resolve().parent


# env variable -> (field, kind). Booleans follow the reference ("true" / "1"), leniently.
ENV_OVERRIDES: dict[str, tuple[str, type]] = {
    "PORT": ("port", int),
    "AGENTROOM_DB": ("db", str),
    "MAX_PENDING_MSGS": ("max_pending_msgs", int),
    "PENDING_TTL_DAYS": ("pending_ttl_days", float),
    "TRUST_PROXY": ("trust_proxy", bool),
    "RATE_LIMIT_DISABLED": ("rate_limit_disabled", bool),
    "LOG_LEVEL": ("log_level", str),
    "WS_MAX_PAYLOAD": ("ws_max_payload", int),
    "MAX_CONNECTIONS": ("max_connections", int),
    "MAX_INVITES_PER_PK": ("max_invites_per_pk", int),
    "HMAC_SECRET": ("hmac_secret", str),
    "HMAC_SECRET_PREVIOUS": ("hmac_secret_previous", str),
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_FIELD_TYPES = {f.name: f.type for f in attrs.fields(RelayConfig)}
_SECRET_KEYS = {"hmac_secret", "hmac_secret_previous"}


def _coerce(key: str, value: Any, source: str) -> Any:
    """The value of ``key`` from ``source`` in the field's type; a clear error otherwise (never echoing secrets)."""
    kind = _FIELD_TYPES[key]
    shown = "<hidden>" if key in _SECRET_KEYS else repr(value)
    text_kind = str(kind)
    if value is None and "None" in text_kind:
        return None
    if "bool" in text_kind:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise RelayConfigError(f"{key} ({source}): expected true or false, got {shown}")
    if "int" in text_kind and "float" not in text_kind:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise RelayConfigError(f"{key} ({source}): expected an integer, got {shown}")
    if "float" in text_kind:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise RelayConfigError(f"{key} ({source}): expected a number, got {shown}")
    if isinstance(value, str):
        return value.strip() if key == "log_level" else value
    raise RelayConfigError(f"{key} ({source}): expected a string, got {shown}")


def relay_config_from(
    table: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> RelayConfig:
    """Build a `RelayConfig` from the `[relay]` table, the environment, then explicit ``overrides``.

    ``env`` defaults to ``os.environ``; pass ``{}`` to ignore the environment. ``state_dir`` is the
    daemon's state directory: the default database lives there. Unknown keys are an error, so a typo
    in agentroom.toml does not silently fall back to a default.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    if state_dir is not None:
        values["db"] = str(Path(state_dir) / DEFAULT_DB_NAME)
        values["state_dir"] = str(state_dir)
    for key, value in (table or {}).items():
        if key not in _FIELD_TYPES:
            raise RelayConfigError(f"[relay] {key}: unknown setting")
        values[key] = _coerce(key, value, "[relay] table")
    for name, (key, _kind) in ENV_OVERRIDES.items():
        if name in env:
            values[key] = _coerce(key, env[name], f"environment {name}")
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in _FIELD_TYPES:
            raise RelayConfigError(f"{key}: unknown setting")
        values[key] = _coerce(key, value, "command line")
    for key in ("hmac_secret", "hmac_secret_previous"):
        if values.get(key) == "":
            values[key] = None
    config = RelayConfig(**values)
    problems = config.problems()
    if problems:
        raise RelayConfigError("invalid relay settings: " + "; ".join(problems))
    return config


def ensure_hmac_secret(config: RelayConfig) -> RelayConfig:
    """``config`` with a usable HMAC secret (≥ 32 chars), generating and keeping one if needed.

    A configured secret of 32 or more characters is used as is. Otherwise a relay with a database
    file reads (or creates once) `<state dir>/relay-hmac-secret`, 0600; an in-memory relay gets a
    fresh secret for its lifetime. A previous secret shorter than 32 characters is ignored, as the
    reference ignores it.
    """
    previous = config.hmac_secret_previous
    if previous is not None and len(previous) < MIN_SECRET_CHARS:
        previous = None
    secret = config.hmac_secret
    if secret is None or len(secret) < MIN_SECRET_CHARS:
        secret = _stored_secret(config.secret_dir) if config.persistent else secrets.token_urlsafe(32)
    return attrs.evolve(config, hmac_secret=secret, hmac_secret_previous=previous)


def _stored_secret(directory: Path) -> str:
    path = directory / SECRET_FILE_NAME
    try:
        text = path.read_text("ascii").strip()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise RelayConfigError(f"cannot read the relay's HMAC secret file {path}: {exc.__class__.__name__}") from exc
    if len(text) >= MIN_SECRET_CHARS:
        return text
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)  # never chmod a directory we did not make
    text = secrets.token_urlsafe(32)  # 43 characters, 256 bits
    atomic_write(path, (text + "\n").encode("ascii"))
    return text
