"""systemd integration by hand: readiness and watchdog (sd_notify), socket activation, the user unit.

Why by hand: the protocol is a few lines (sd_notify(3), sd_listen_fds(3)) and the packages either
need libsystemd headers to build or are unmaintained. Everything here is a no-op outside systemd.

* `notify` sends one AF_UNIX datagram of newline-separated ``KEY=VALUE`` to ``$NOTIFY_SOCKET``
  (a leading ``@`` means the abstract namespace). It never raises for a missing or broken socket:
  losing a STATUS line must not take the daemon down; it returns whether the datagram went out.
* Send READY=1 once the control socket and the relays listen (not after the tunnel: the network may
  be down), STATUS= on tunnel changes, STOPPING=1 when shutdown starts, WATCHDOG=1 from
  `run_watchdog` every half ``$WATCHDOG_USEC`` (only when ``$WATCHDOG_PID`` is unset or is us).
* `listen_fds` / `activated_control_socket`: with socket activation, systemd passes the listening
  control socket as fd 3 (``$LISTEN_PID`` must be us). We take it, mark it close-on-exec and unset
  the ``LISTEN_*`` variables so no child thinks the fds are its own. Never unlink or shut down an
  inherited socket: systemd keeps its own copy.
* Children (handlers, tunnels) get `scrubbed_environment`: without our per-service variables, a
  handler cannot send READY=1 for us or adopt our fds.
* `install_service` writes ``agentroomd.service`` to ``~/.config/systemd/user/`` and returns the
  ``systemctl --user`` commands to print. The unit carries the current PATH, because user managers
  start services with a minimal PATH and handlers (``claude``, ``codex``, ...) must be found.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path

import trio

from agentroomd.files import atomic_write
from agentroomd.log import Logger

#: Variables systemd sets for *our* service only.
SERVICE_VARIABLES = frozenset(
    {
        "NOTIFY_SOCKET",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "JOURNAL_STREAM",
        "INVOCATION_ID",
    }
)
SD_LISTEN_FDS_START = 3
UNIT_NAME = "agentroomd.service"
SOCKET_UNIT_NAME = "agentroomd.socket"

_log = Logger("systemd")


class SystemdError(Exception):
    """systemd handed us something unusable (malformed LISTEN_* values, a socket of the wrong kind)."""


def scrubbed_environment(
    extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """``base`` (default: our environment) minus systemd's per-service variables, plus ``extra``."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in SERVICE_VARIABLES}
    env.update(extra or {})
    return env


# ------------------------------------------------------------------------------------------- notify


def notify(*fields: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram; False when not sent."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        _log.warn("notify_unsupported_socket", socket=address)
        return False
    payload = "\n".join(fields).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)  # a stuck manager must not stall the event loop
            sock.connect(address)
            sock.send(payload)
    except OSError as exc:
        _log.warn("notify_failed", error=str(exc), fields=[f.split("=", 1)[0] for f in fields])
        return False
    return True


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def notify_ready(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    fields = ["READY=1"]
    if status is not None:
        fields.append(f"STATUS={_one_line(status)}")
    return notify(*fields, environ=environ)


def notify_status(status: str, *, environ: Mapping[str, str] | None = None) -> bool:
    return notify(f"STATUS={_one_line(status)}", environ=environ)


def notify_stopping(status: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    fields = ["STOPPING=1"] + ([f"STATUS={_one_line(status)}"] if status is not None else [])
    return notify(*fields, environ=environ)


def notify_watchdog(*, environ: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", environ=environ)


# ----------------------------------------------------------------------------------------- watchdog


def watchdog_period(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is asked."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    try:
        value = int(usec)
    except ValueError:
        raise SystemdError(f"WATCHDOG_USEC={usec!r} is not a number of microseconds") from None
    if value <= 0:
        raise SystemdError(f"WATCHDOG_USEC={usec!r} must be positive")
    return value / 2 / 1_000_000


async def run_watchdog(
    period: float,
    *,
    ping: Callable[[], bool] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping systemd every ``period`` seconds until cancelled; a wedged event loop stops the pings."""
    send = ping or notify_watchdog
    task_status.started()
    while True:
        send()
        await trio.sleep(period)


# -------------------------------------------------------------------------------- socket activation


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, pid: int | None = None, unset: bool = True
) -> list[int]:
    """The fds systemd passed us (3, 4, ...), marked close-on-exec; [] when not socket-activated."""
    env = os.environ if environ is None else environ
    count, owner = env.get("LISTEN_FDS", ""), env.get("LISTEN_PID", "")
    try:
        if not count or not owner or int(owner) != (os.getpid() if pid is None else pid):
            return []
        n = int(count)
    except ValueError:
        raise SystemdError(f"malformed socket activation: LISTEN_PID={owner!r} LISTEN_FDS={count!r}") from None
    if n < 0:
        raise SystemdError(f"malformed socket activation: LISTEN_FDS={count!r}")
    if unset:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(name, None)
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + n))
    for fd in fds:
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            raise SystemdError(f"socket activation passed fd {fd}, but it is not open: {exc}") from None
    return fds


def activated_control_socket(environ: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The socket-activated control listener (a listening AF_UNIX stream socket), or None."""
    fds = listen_fds(environ)
    if not fds:
        return None
    try:
        sock = socket.socket(fileno=fds[0])  # family and type are read from the fd
    except OSError as exc:
        raise SystemdError(f"socket-activated fd {fds[0]} is not a socket: {exc}") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise SystemdError(f"socket-activated fd {fds[0]} is not a Unix stream socket; check ListenStream= in the unit")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise SystemdError(f"socket-activated fd {fds[0]} is not listening")
    return sock


# --------------------------------------------------------------------------------------------- units


def _unit_quote(word: str, *, dollars: bool) -> str:
    """One unit-file word in systemd's double-quote syntax; ``%`` (and in ExecStart= ``$``) escaped."""
    escaped = word.replace("%", "%%")
    if dollars:
        escaped = escaped.replace("$", "$$")
    if escaped and not any(c in escaped for c in " \t\n\"\\'"):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_service_unit(
    exec_start: Sequence[str] = ("%h/.local/bin/agentroomd", "run"),
    environment: Mapping[str, str] | None = None,
) -> str:
    """The user unit's text. Words of ``exec_start`` starting with ``%h`` keep their specifier."""
    command = " ".join(word if word.startswith("%h/") else _unit_quote(word, dollars=True) for word in exec_start)
    env_lines = "".join(
        f"Environment={_unit_quote(f'{k}={v}', dollars=False)}\n" for k, v in (environment or {}).items()
    )
    return f"""\
[Unit]
Description=agentroom daemon (end-to-end encrypted agent rooms: relays, tunnels, handlers)
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
ExecStart={command}
Restart=on-failure
RestartSec=2
# A bad configuration (2) or a daemon already running on the home (3) is not cured by a restart.
RestartPreventExitStatus=2 3
TimeoutStartSec=60
# Longer than the daemon's own shutdown grace: rooms close their sockets before the unit is killed.
TimeoutStopSec=30
WatchdogSec=60
Environment=PYTHONUNBUFFERED=1
{env_lines}SyslogIdentifier=agentroomd
UMask=0077
# Hardening that works in user units without namespaces. Handlers inherit it, so nothing here
# hides $HOME or the filesystem: agent CLIs must keep working (contrib/systemd/README.md: opt-in drop-ins).
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# A cheap guard against fork bombs from handlers (needs the pids controller, usually delegated).
TasksMax=512

[Install]
WantedBy=default.target
"""


def render_socket_unit(socket_path: str = "%t/agentroom/agentroomd.sock") -> str:
    """The optional socket unit: the control socket, so `agentroomctl` can start the daemon on demand.

    The default is where `agentroomd.config` puts the socket without a home; the service unit must not
    declare ``RuntimeDirectory=agentroom``, or stopping the service would delete the socket's directory.
    """
    listen = socket_path if socket_path.startswith("%t/") else _unit_quote(socket_path, dollars=False)
    return f"""\
[Unit]
Description=agentroom daemon control socket

[Socket]
ListenStream={listen}
SocketMode=0600
DirectoryMode=0700

[Install]
WantedBy=sockets.target
"""


def user_unit_dir(home: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (default ``~/.config``); with ``home``, under that home."""
    env = os.environ if environ is None else environ
    if home is not None:
        return home / ".config" / "systemd" / "user"
    config = env.get("XDG_CONFIG_HOME", "")
    base = Path(config) if config and Path(config).is_absolute() else Path.home() / ".config"
    return base / "systemd" / "user"


def default_exec_start() -> list[str]:
    """This very interpreter and package, so the unit runs the install that wrote it."""
    return [sys.executable, "-m", "agentroomd", "run"]


def install_service(
    home: Path | None = None,
    *,
    unit_dir: Path | None = None,
    exec_start: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    with_socket: bool = False,
    socket_path: Path | None = None,
) -> str:
    """Write the user unit (and optionally the socket unit); return the commands the user should run.

    ``home`` is the user's home directory (default: ours); ``unit_dir`` overrides the directory outright.
    ``socket_path`` (with ``with_socket``) must be the control socket the daemon and `agentroomctl` use.
    The unit gets PATH (and AGENTROOM_HOME when set) from ``environ``, so handlers resolve as in a shell.
    """
    env = os.environ if environ is None else environ
    target = unit_dir or user_unit_dir(home, env)
    target.mkdir(parents=True, exist_ok=True)
    unit_env = {key: env[key] for key in ("PATH", "AGENTROOM_HOME") if env.get(key)}
    unit = render_service_unit(exec_start or default_exec_start(), unit_env)
    atomic_write(target / UNIT_NAME, unit.encode(), mode=0o644)
    enable = [SOCKET_UNIT_NAME] if with_socket else [UNIT_NAME]
    if with_socket:
        socket_unit = render_socket_unit(str(socket_path)) if socket_path else render_socket_unit()
        atomic_write(target / SOCKET_UNIT_NAME, socket_unit.encode(), mode=0o644)
    lines = [
        f"# wrote {target / UNIT_NAME}" + (f" and {target / SOCKET_UNIT_NAME}" if with_socket else ""),
        "systemctl --user daemon-reload",
        f"systemctl --user enable --now {' '.join(enable)}",
        "# keep it running after you log out:",
        "loginctl enable-linger " + (shlex.quote(env["USER"]) if env.get("USER") else '"$USER"'),
        "# follow its log:",
        "journalctl --user -u agentroomd -f",
    ]
    return "\n".join(lines) + "\n"
