"""Where a home's files live, and what its `agentroom.toml` says.

Two jobs that belong together because `agentroomctl` must find the same control socket the daemon
binds, from nothing but the same `--home` (or `AGENTROOM_HOME`) and environment: `resolve_paths` is
pure (no file is touched), so the CLI can call it without reading any daemon state.

Layout with a home (`--home DIR` or `AGENTROOM_HOME=DIR`): everything under DIR (`DIR/agentroom.toml`,
`DIR/identity.json`, `DIR/agentroomd.sock`, ...), the same layout the reference uses for `--home`.
Without one: config in `$XDG_CONFIG_HOME/agentroom/agentroom.toml` (~/.config), state in
`$XDG_DATA_HOME/agentroom/` (~/.local/share), socket in `$XDG_RUNTIME_DIR/agentroom/agentroomd.sock`
(or in the state directory when there is no runtime directory). A socket path longer than `sun_path`
allows moves to `/tmp/agentroom-$UID/<hash of the state directory>.sock`, computed identically on both
sides. `AGENTROOM_SOCKET` overrides the socket path outright.

The config file is optional; every key has a default (see `agentroom.toml.example`). Sections this
module does not own (`[relay]`, `[handlers]`, `[tunnel]`) are handed over as plain tables for their
owners to structure. Environment variables `AGENTROOM_<SECTION>_<KEY>` override single keys; their
values are read as TOML values (`5`, `true`, `"x"`, `[1, 2]`) and fall back to plain strings.
"""

import hashlib
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import cattrs
import tomli_w

from agentroomd.files import atomic_write, ensure_private_dir

CONFIG_FILE_NAME = "agentroom.toml"
SOCKET_NAME = "agentroomd.sock"
LOCK_NAME = "agentroomd.lock"
IDENTITY_NAME = "identity.json"
LOG_NAME = "agentroomd.log"
# sun_path is 108 bytes on Linux, including the terminating NUL.
SUN_PATH_MAX = 107
ENV_HOME = "AGENTROOM_HOME"
ENV_SOCKET = "AGENTROOM_SOCKET"
ENV_PREFIX = "AGENTROOM_"


class ConfigError(Exception):
    """The configuration (file, environment or paths) cannot be used; the message names what and where."""


# ---------------------------------------------------------------------------------------------- paths


@attrs.frozen
class Paths:
    """Every file and directory of one home. Pure data: building it touches nothing on disk."""

    home: Path | None  # the --home / AGENTROOM_HOME directory, resolved; None for the XDG layout
    config_file: Path
    state_dir: Path  # identity, sessions, journal, relay db, lock, daemon log
    socket_path: Path

    @property
    def socket_dir(self) -> Path:
        return self.socket_path.parent

    @property
    def lock_file(self) -> Path:
        return self.state_dir / LOCK_NAME

    @property
    def identity_file(self) -> Path:
        return self.state_dir / IDENTITY_NAME

    @property
    def log_file(self) -> Path:
        """Where an autostarted daemon's stderr goes."""
        return self.state_dir / LOG_NAME


def resolve_paths(
    home: str | os.PathLike[str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Paths:
    """The paths for ``home`` (else ``$AGENTROOM_HOME``, else the XDG layout); ``config_file`` overrides the file."""
    env = os.environ if env is None else env
    home_text = os.fspath(home) if home is not None else env.get(ENV_HOME) or None
    if home_text is not None:
        home_dir = _absolute(home_text)
        config = home_dir / CONFIG_FILE_NAME
        state = home_dir
        socket_dir = home_dir
    else:
        home_dir = None
        user_home = Path(env.get("HOME") or Path.home())
        config = _xdg(env, "XDG_CONFIG_HOME", user_home / ".config") / "agentroom" / CONFIG_FILE_NAME
        state = _xdg(env, "XDG_DATA_HOME", user_home / ".local" / "share") / "agentroom"
        runtime = env.get("XDG_RUNTIME_DIR")
        socket_dir = Path(runtime) / "agentroom" if runtime and Path(runtime).is_absolute() else state
    if config_file is not None:
        config = _absolute(os.fspath(config_file))
    override = env.get(ENV_SOCKET)
    if override:
        socket = _absolute(override)
    else:
        socket = socket_dir / SOCKET_NAME
        if len(os.fsencode(socket)) > SUN_PATH_MAX:
            socket = short_socket_path(state)
    return Paths(home=home_dir, config_file=config, state_dir=state, socket_path=socket)


def short_socket_path(state_dir: Path, uid: int | None = None) -> Path:
    """A socket path that fits `sun_path`, unique per state directory: /tmp/agentroom-$UID/<hash>.sock."""
    uid = os.getuid() if uid is None else uid
    digest = hashlib.sha256(os.fsencode(state_dir)).hexdigest()[:24]
    return Path(f"/tmp/agentroom-{uid}") / f"{digest}.sock"


def prepare_dirs(paths: Paths) -> None:
    """Create the state and socket directories (0700); refuse a shared /tmp directory we do not own.

    A shared directory (sticky and world-writable, like /tmp itself) is never chmod-ed: as root that
    would lock every other user out of it. It cannot be a home (the keys need a private directory);
    it may hold the socket (`AGENTROOM_SOCKET=/tmp/x.sock`), which is 0600 and checks its peers.
    """
    refuse_shared_home(paths)
    try:
        ensure_private_dir(paths.state_dir)
        if is_shared_dir(paths.socket_dir):
            pass  # left as it is (see above): the socket itself is 0600
        elif paths.socket_dir.parent == Path("/tmp"):
            ensure_own_tmp_dir(paths.socket_dir)
        else:
            ensure_private_dir(paths.socket_dir)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {exc.filename or paths.state_dir}: {exc.strerror or exc}") from exc


def refuse_shared_home(paths: Paths) -> None:
    """ConfigError when the home's state directory is a shared one such as /tmp itself."""
    if is_shared_dir(paths.state_dir):
        raise ConfigError(
            f"{paths.state_dir} is a shared directory (world-writable and sticky, like /tmp): it cannot hold "
            "this home's keys; use a directory of its own, e.g. a new one inside it"
        )


def is_shared_dir(path: Path) -> bool:
    """True for an existing directory every user may create files in, protected by the sticky bit (/tmp)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & stat.S_ISVTX) and bool(mode & stat.S_IWOTH)


def ensure_own_tmp_dir(path: Path) -> None:
    """The i3 rule for a directory in /tmp: it must be ours, 0700 and not a symlink, else someone planted it."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{path} is not a directory (a symlink or file is in the way); remove it and retry")
    if info.st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to uid {info.st_uid}, not to you; remove it or set AGENTROOM_SOCKET")
    if info.st_mode & 0o077:
        path.chmod(0o700)


def _absolute(text: str) -> Path:
    return Path(text).expanduser().resolve()


def _xdg(env: Mapping[str, str], name: str, default: Path) -> Path:
    value = env.get(name)
    return Path(value) if value and Path(value).is_absolute() else default


# --------------------------------------------------------------------------------------------- config

LOG_LEVELS = ("debug", "info", "warn", "error")


@attrs.frozen
class DaemonSettings:
    """[daemon]: the process itself and its control socket."""

    log_level: str = "info"
    shutdown_grace_s: float = 10.0  # graceful phase after SIGTERM before everything is cancelled
    max_control_clients: int = 64  # concurrent control connections; more are refused
    subscriber_buffer: int = 256  # notifications queued per subscriber before it is declared lagged
    journal_keep: int = 10_000  # received messages kept for `listen --since`

    def problems(self) -> list[tuple[str, str]]:
        found = [] if self.log_level in LOG_LEVELS else [("log_level", f"must be one of {', '.join(LOG_LEVELS)}")]
        for key in ("shutdown_grace_s", "max_control_clients", "subscriber_buffer", "journal_keep"):
            if not getattr(self, key) > 0:  # `not >` so that NaN (TOML `nan`) is refused too
                found.append((key, "must be greater than 0"))
        return found


@attrs.frozen
class ClientSettings:
    """[client]: the daemon's connections to relays (consumed by the client sessions)."""

    relays: list[str] = attrs.Factory(list)  # relay URLs (ws:// or wss://) to connect to at start
    reconnect_initial_s: float = 1.0  # first backoff delay after a lost connection
    reconnect_max_s: float = 60.0  # backoff cap
    ack_timeout_s: float = 10.0  # how long message.send waits for the relay's ACK
    ping_interval_s: float = 30.0  # PING this often; nothing received for one interval after a PING: reconnect
    invite_ttl_s: int = 86_400  # default lifetime of `invite create`

    def problems(self) -> list[tuple[str, str]]:
        found = [
            (key, "must be greater than 0")
            for key in ("reconnect_initial_s", "reconnect_max_s", "ack_timeout_s", "ping_interval_s", "invite_ttl_s")
            if not getattr(self, key) > 0  # NaN too
        ]
        found += [
            ("relays", f"{url!r} is not a ws:// or wss:// URL")
            for url in self.relays
            if not url.startswith(("ws://", "wss://"))
        ]
        return found


@attrs.frozen
class Config:
    """The whole file. Owned sections are typed; the others stay tables for the modules that own them."""

    daemon: DaemonSettings = attrs.Factory(DaemonSettings)
    client: ClientSettings = attrs.Factory(ClientSettings)
    relay: dict[str, Any] = attrs.Factory(dict)  # structured by agentroomd/relay/config.py
    handlers: dict[str, Any] = attrs.Factory(dict)  # structured by agentroomd/handlers.py
    tunnel: dict[str, Any] = attrs.Factory(dict)  # structured by agentroomd/tunnel.py


SECTIONS = tuple(field.name for field in attrs.fields(Config))


def _strict(kind: type, label: str) -> Any:
    def structure(value: Any, _type: Any) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {label}, got {_describe(value)}")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {label}, got {_describe(value)}")
        return value

    return structure


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"{type(value).__name__} {value!r}"


def _make_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook(str, _strict(str, "a string"))
    converter.register_structure_hook(int, _strict(int, "an integer"))
    converter.register_structure_hook(float, _strict(float, "a number"))
    converter.register_structure_hook(bool, _strict(bool, "true or false"))
    items = converter.get_structure_hook(list[str])

    def structure_list(value: Any, kind: Any) -> Any:
        # cattrs would iterate a string (or a table) and judge it character by character.
        if not isinstance(value, list):
            raise TypeError(f"expected an array, got {_describe(value)}")
        return items(value, kind)

    converter.register_structure_hook_func(lambda kind: kind == list[str], structure_list)
    return converter


_converter = _make_converter()


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (a missing file means all defaults), apply environment overrides, check every key.

    Raises ConfigError naming the file (or the environment variable) and the key.
    """
    env = os.environ if env is None else env
    raw = read_toml(path)
    sources = _apply_env_overrides(raw, env)
    where = str(path)
    unknown = [name for name in raw if name not in SECTIONS]
    if unknown:
        raise ConfigError(f"{where}: unknown section [{unknown[0]}]; known sections: {', '.join(SECTIONS)}")
    for name, table in raw.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: {name} must be a table ([{name}]), got {_describe(table)}")
    try:
        config = _converter.structure(raw, Config)
    except cattrs.ClassValidationError as exc:
        messages = cattrs.transform_error(exc, format_exception=_format_exception)
        raise ConfigError("; ".join(_locate(message, where, sources) for message in messages)) from exc
    problems = [(name, key, text) for name in ("daemon", "client") for key, text in getattr(config, name).problems()]
    if problems:
        raise ConfigError(
            "; ".join(f"{sources.get((name, key), where)}: [{name}] {key}: {text}" for name, key, text in problems)
        )
    return config


def read_toml(path: Path) -> dict[str, Any]:
    """The file's tables, or {} when it does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from exc
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not valid UTF-8 (byte {exc.start})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc


def write_config(path: Path, config: Config) -> None:
    """Write ``config`` back as TOML (atomically, 0600). Comments of a hand-written file are not kept."""
    document = _converter.unstructure(config)
    atomic_write(path, tomli_w.dumps(document).encode("utf-8"))


def env_overrides(env: Mapping[str, str]) -> dict[tuple[str, str], tuple[str, Any]]:
    """`AGENTROOM_<SECTION>_<KEY>=value` -> {(section, key): (variable name, TOML-parsed value)}."""
    found: dict[tuple[str, str], tuple[str, Any]] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        for section in SECTIONS:
            if rest.startswith(section + "_") and len(rest) > len(section) + 1:
                found[(section, rest[len(section) + 1 :])] = (name, _parse_env_value(text))
    return found


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, str], str]:
    sources: dict[tuple[str, str], str] = {}
    typed: dict[str, type] = {
        field.name: field.type for field in attrs.fields(Config) if field.type is not None and attrs.has(field.type)
    }
    for (section, key), (variable, value) in env_overrides(env).items():
        settings = typed.get(section)
        if settings is not None and key not in attrs.fields_dict(settings):
            known = ", ".join(attrs.fields_dict(settings))
            raise ConfigError(f"environment variable {variable}: [{section}] has no key {key!r}; known keys: {known}")
        table = raw.setdefault(section, {})
        if isinstance(table, dict):
            table[key] = value
            sources[(section, key)] = f"environment variable {variable}"
    return sources


def _parse_env_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _format_exception(exc: BaseException, _type: Any) -> str:
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key{'s' if len(exc.extra_fields) > 1 else ''} {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, TypeError | ValueError):
        return str(exc)
    return f"invalid value ({type(exc).__name__})"


def _locate(message: str, where: str, sources: Mapping[tuple[str, str], str]) -> str:
    """'expected an integer, got ... @ $.daemon.x' -> '<file or env var>: [daemon] x: expected an integer ...'."""
    text, _, path = message.rpartition(" @ ")
    parts = path.removeprefix("$").lstrip(".").split(".") if path else []
    if len(parts) >= 2:
        section, key = parts[0], ".".join(parts[1:])
        return f"{sources.get((section, parts[1]), where)}: [{section}] {key}: {text}"
    if len(parts) == 1 and parts[0]:
        return f"{where}: [{parts[0]}] {text}"
    return f"{where}: {text or message}"
