"""The tunnel supervisor: gives a room's local relay a public URL and keeps it up.

Three providers, chosen by the ``[tunnel]`` table:
* ``cloudflared`` (default): a Cloudflare quick tunnel, ``cloudflared tunnel --url
  http://127.0.0.1:PORT --no-autoupdate``. The binary comes from ``[tunnel] cloudflared``, then
  ``$AGENTROOM_CLOUDFLARED``, then PATH; when there is none, the status is FATAL with an error that
  names the ways to install it. The public URL is read from its log lines (it logs to stderr)::

      2026-05-13T07:00:00Z INF +--------------------------------------------------------------- ... -+
      2026-05-13T07:00:00Z INF |  Your quick Tunnel has been created! Visit it at (it may take some  ...  |
      2026-05-13T07:00:00Z INF |  https://gentle-river-1234-foo.trycloudflare.com                    ...  |

  Only ``https://<name>.trycloudflare.com`` with nothing after the host counts: the disclaimer line
  cites cloudflare.com URLs and a failed request logs ``"https://api.trycloudflare.com/tunnel"``.
* ``command``: any program whose output contains the URL (``ssh -R 80:127.0.0.1:{port} host``);
  ``{port}`` is replaced by the relay port, the command runs through ``/bin/sh -c``, and the URL is the
  first match of ``url_pattern`` in a line (default: any ``https://host[:port]``).
* ``fixed``: ``public_url`` (a named tunnel or a reverse proxy run elsewhere): no process at all.

Every public URL is published as the relay URL an invite carries: ``https://h`` becomes ``wss://h/ws``.

Supervision (the supervisord state machine, kept retrying because network loss is normal on a laptop):
STARTING → RUNNING when a URL appears → BACKOFF when the process exits or prints no URL within
``url_timeout_s`` → sleep ``min(cap, initial·2^(n-1))·uniform(0.5, 1)`` → STARTING again. ``n`` counts
consecutive failures and starts over after a run that lasted ``stable_after_s``. FATAL is reserved for
what retrying cannot fix (no binary, or one the system cannot execute). A later URL line (the provider
moved us) is published too.
Subscribers read `TunnelSupervisor.status`, an `ObservableValue` with the latest state.

The process runs in its own process group; cancelling `run` stops the whole group (TERM, grace, KILL).
With ``child_record``, the running process is written down there (`agentroomd.orphans`) until it has
been reaped, so a daemon restarted after a SIGKILL can end the tunnel its predecessor left running.
Command lines are never logged: a named tunnel's command may carry a token.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import itertools
import os
import random
import re
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio

from agentroomd.log import Logger
from agentroomd.orphans import ChildRecord, forget_child, record_child
from agentroomd.systemd import scrubbed_environment

T = TypeVar("T")

QUICK_TUNNEL_URL = re.compile(r"https://(?!api\.)[a-z0-9-]+\.trycloudflare\.com(?![\w.:/-])")
DEFAULT_COMMAND_URL = r"(?:https|wss)://[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]{1,5})?"
MAX_LINE = 8192
# A spawn that fails this way fails again however often it is retried (a binary for another machine,
# a script without its interpreter, a file that is not executable): FATAL at once, not BACKOFF for ever.
_UNRUNNABLE = frozenset({errno.ENOEXEC, errno.EACCES, errno.ELIBBAD})
CLOUDFLARED_INSTALL_HINT = (
    "install cloudflared (https://developers.cloudflare.com/cloudflare-one/connections/connect-networks/"
    "downloads/: `brew install cloudflared`, the .deb/.rpm or binary from "
    "https://github.com/cloudflare/cloudflared/releases, or your distribution's package), or point to it "
    "with AGENTROOM_CLOUDFLARED=/path/to/cloudflared or `cloudflared = \"/path\"` in [tunnel]; "
    "or open the room without a tunnel (--no-tunnel), with a fixed [tunnel] public_url, or a [tunnel] command"
)


class TunnelError(Exception):
    """The tunnel cannot work as configured (missing binary, bad URL or command); the message says why."""


# ------------------------------------------------------------------------------------------ values


class ObservableValue(Generic[T]):
    """The latest value of something, and a way to wait until it changes (latest-value semantics).

    A slow subscriber may skip intermediate values but always sees the newest one: right for a
    status or a URL, where only the current value matters.
    """

    def __init__(self, value: T) -> None:
        self._value = value
        self._version = 0
        self._changed = trio.Event()

    @property
    def value(self) -> T:
        return self._value

    @property
    def version(self) -> int:
        return self._version

    def set(self, value: T) -> None:
        if value == self._value:
            return
        self._value = value
        self._version += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()

    async def wait_change(self, seen_version: int) -> tuple[int, T]:
        """Wait until the version differs from ``seen_version``; returns (version, value)."""
        while self._version == seen_version:
            await self._changed.wait()
        return self._version, self._value

    async def wait_for(self, predicate: Callable[[T], bool]) -> T:
        """Wait until the value satisfies ``predicate`` (returns at once if it already does)."""
        while not predicate(self._value):
            await self._changed.wait()
        return self._value


class TunnelState(enum.Enum):
    STARTING = "starting"  #: process started, no public URL yet
    RUNNING = "running"  #: a public URL is published
    BACKOFF = "backoff"  #: the process died or never gave a URL; waiting before the next start
    FATAL = "fatal"  #: cannot work until the configuration changes (see last_error)


@attrs.frozen
class TunnelStatus:
    provider: str
    state: TunnelState
    #: The relay URL to hand out (``wss://host/ws``); None when there is no live URL.
    url: str | None = None
    #: The public URL as the provider printed it.
    public_url: str | None = None
    restarts: int = 0
    consecutive_failures: int = 0
    last_error: str | None = None


# ------------------------------------------------------------------------------------------ config


@attrs.frozen
class TunnelConfig:
    """The ``[tunnel]`` table. ``public_url`` selects the fixed provider, ``command`` the generic one."""

    cloudflared: str | None = None
    public_url: str | None = None
    command: str | None = None
    url_pattern: str | None = None
    backoff_initial_s: float = attrs.field(default=1.0, validator=attrs.validators.gt(0.0))
    backoff_max_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0.0))
    stable_after_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0.0))
    url_timeout_s: float = attrs.field(default=30.0, validator=attrs.validators.gt(0.0))
    kill_grace_s: float = attrs.field(default=5.0, validator=attrs.validators.ge(0.0))

    def __attrs_post_init__(self) -> None:
        if self.public_url is not None and self.command is not None:
            raise TunnelError("[tunnel] set either public_url (fixed) or command, not both")
        if self.public_url is not None:
            relay_url(self.public_url)  # raises a clear TunnelError now rather than at room start
        if self.command is not None and not self.command.strip():
            raise TunnelError("[tunnel] command is empty")
        if self.url_pattern is not None:
            try:
                re.compile(self.url_pattern)
            except re.error as exc:
                raise TunnelError(f"[tunnel] url_pattern is not a regular expression: {exc}") from None

    @property
    def provider(self) -> str:
        return "fixed" if self.public_url else "command" if self.command else "cloudflared"

    @classmethod
    def from_table(cls, table: Mapping[str, object]) -> TunnelConfig:
        """Structure the config's ``[tunnel]`` table; TunnelError names the offending key."""
        fields = {field.name: field for field in attrs.fields(cls)}
        values: dict[str, object] = {}
        for key, value in table.items():
            field = fields.get(key)
            if field is None:
                raise TunnelError(f"[tunnel] unknown key {key!r} (known: {', '.join(fields)})")
            wants_str = "str" in str(field.type)
            ok = isinstance(value, str) if wants_str else isinstance(value, int | float) and not isinstance(value, bool)
            if not ok:
                raise TunnelError(f"[tunnel] {key}: expected {'a string' if wants_str else 'a number'}, got {value!r}")
            values[key] = float(value) if isinstance(value, int) else value
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ValueError as exc:
            raise TunnelError(f"[tunnel] {exc}") from None


def relay_url(public_url: str) -> str:
    """The relay URL for a public URL: ``https://h[/p]`` → ``wss://h[/p]/ws`` (``http`` → ``ws``)."""
    parts = urlsplit(public_url.strip())
    scheme = {"https": "wss", "wss": "wss", "http": "ws", "ws": "ws"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname or parts.query or parts.fragment or "@" in parts.netloc:
        raise TunnelError(f"not a usable public URL: {public_url!r} (expected https://host or wss://host/ws)")
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc.lower(), path, "", ""))


def resolve_cloudflared(configured: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The cloudflared to run: ``[tunnel] cloudflared``, else ``$AGENTROOM_CLOUDFLARED``, else PATH."""
    env = os.environ if environ is None else environ
    candidates = (("[tunnel] cloudflared", configured), ("AGENTROOM_CLOUDFLARED", env.get("AGENTROOM_CLOUDFLARED")))
    for origin, value in candidates:
        if value:
            found = value if os.sep in value else shutil.which(value, path=env.get("PATH"))
            if found is None or not os.path.isfile(found) or not os.access(found, os.X_OK):
                raise TunnelError(f"{origin}={value} is not an executable file; {CLOUDFLARED_INSTALL_HINT}")
            return found
    found = shutil.which("cloudflared", path=env.get("PATH"))
    if found is None:
        raise TunnelError(f"cloudflared not found on PATH: {CLOUDFLARED_INSTALL_HINT}")
    return found


def backoff_delay(failures: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Delay before restart number ``failures`` (1-based): exponential, capped, with 50-100% jitter."""
    exponent = min(max(failures - 1, 0), 62)
    return min(max_s, initial_s * 2.0**exponent) * rng.uniform(0.5, 1.0)


# -------------------------------------------------------------------------------------- supervisor


async def _terminate_group(grace_s: float, process: trio.Process) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        if sig is signal.SIGTERM:
            await trio.sleep(grace_s)


async def output_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    """Decoded lines of ``stream``; an overlong line is cut at MAX_LINE bytes and its rest dropped."""
    buffer = bytearray()
    dropping = False
    while chunk := await stream.receive_some(65536):
        buffer += chunk
        while (end := buffer.find(b"\n")) >= 0:
            line, buffer = bytes(buffer[:end]), buffer[end + 1 :]
            if not dropping:
                yield line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r")
            dropping = False
        if len(buffer) > MAX_LINE and not dropping:
            yield bytes(buffer[:MAX_LINE]).decode("utf-8", "replace")
            buffer.clear()
            dropping = True
        elif dropping:
            buffer.clear()
    if buffer and not dropping:
        yield bytes(buffer).decode("utf-8", "replace")


class TunnelSupervisor:
    """Runs one tunnel for the relay on ``port`` and publishes its status; start with ``nursery.start``."""

    def __init__(
        self,
        config: TunnelConfig,
        port: int,
        *,
        environ: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        logger: Logger | None = None,
        label: str = "",
        child_record: Path | None = None,
    ) -> None:
        self.config = config
        self.port = port
        self._environ = dict(os.environ if environ is None else environ)
        self._rng = rng or random.Random()
        self._log = logger or Logger("tunnel")
        self._label = label
        self._child_record = child_record
        self.status = ObservableValue(TunnelStatus(provider=config.provider, state=TunnelState.STARTING))
        self._pattern = (
            QUICK_TUNNEL_URL
            if config.provider == "cloudflared"
            else re.compile(config.url_pattern or DEFAULT_COMMAND_URL)
        )

    def _publish(self, **changes: Any) -> None:
        new = attrs.evolve(self.status.value, **changes)
        if new != self.status.value:
            self._log.info(
                "tunnel_status",
                room=self._label,
                provider=new.provider,
                state=new.state.value,
                url=new.url,
                restarts=new.restarts,
                error=new.last_error,
            )
        self.status.set(new)

    async def wait_url(self) -> str:
        """The relay URL once one is published; TunnelError if the tunnel turns FATAL first."""
        status = await self.status.wait_for(lambda s: s.url is not None or s.state is TunnelState.FATAL)
        if status.url is None:
            raise TunnelError(status.last_error or "tunnel failed")
        return status.url

    async def run(self, *, task_status: trio.TaskStatus[TunnelSupervisor] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise until cancelled (or until FATAL, or at once for a fixed URL). Reports started at once."""
        task_status.started(self)
        if self.config.public_url is not None:
            url = relay_url(self.config.public_url)
            self._publish(state=TunnelState.RUNNING, url=url, public_url=self.config.public_url)
            return
        try:
            argv = self._argv()
        except TunnelError as exc:
            self._publish(state=TunnelState.FATAL, last_error=str(exc))
            return
        failures = 0
        for restarts in itertools.count():
            started_at = trio.current_time()
            self._publish(state=TunnelState.STARTING, url=None, public_url=None, restarts=restarts)
            try:
                error = await self._run_once(argv)
            except TunnelError as exc:  # the binary itself cannot run: retrying changes nothing
                self._log.error("tunnel_fatal", room=self._label, error=str(exc))
                self._publish(state=TunnelState.FATAL, url=None, public_url=None, last_error=str(exc))
                return
            failures = 1 if trio.current_time() - started_at >= self.config.stable_after_s else failures + 1
            delay = backoff_delay(failures, self.config.backoff_initial_s, self.config.backoff_max_s, self._rng)
            self._publish(
                state=TunnelState.BACKOFF, url=None, public_url=None, consecutive_failures=failures, last_error=error
            )
            self._log.warn("tunnel_backoff", room=self._label, delay_s=round(delay, 3), failures=failures)
            await trio.sleep(delay)

    def _argv(self) -> list[str]:
        if self.config.command is not None:
            return ["/bin/sh", "-c", self.config.command.replace("{port}", str(self.port))]
        binary = resolve_cloudflared(self.config.cloudflared, self._environ)
        return [binary, "tunnel", "--url", f"http://127.0.0.1:{self.port}", "--no-autoupdate"]

    @property
    def _name(self) -> str:
        return "cloudflared" if self.config.provider == "cloudflared" else "tunnel command"

    async def _run_once(self, argv: list[str]) -> str:
        """One run of the process; returns why it ended, for ``last_error``."""
        tail: deque[str] = deque(maxlen=3)
        seen_url = trio.Event()
        no_url_in_time = False
        run = partial(
            trio.run_process,
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            start_new_session=True,
            env=scrubbed_environment(base=self._environ),
            deliver_cancel=partial(_terminate_group, self.config.kill_grace_s),
        )

        async def url_deadline(scope: trio.CancelScope) -> None:
            nonlocal no_url_in_time
            with trio.move_on_after(self.config.url_timeout_s):
                await seen_url.wait()
                return
            no_url_in_time = True
            scope.cancel()  # stops the process: it is not going to give us a URL

        process: trio.Process | None = None
        try:
            async with trio.open_nursery() as nursery:
                process = await nursery.start(run)
                recorded = await self._record_child(process.pid, argv[0])
                nursery.start_soon(url_deadline, nursery.cancel_scope)
                assert process.stdout is not None
                async with process.stdout:
                    async for line in output_lines(process.stdout):
                        found = self._url_in(line, tail)
                        if found is None:
                            continue
                        if not seen_url.is_set():
                            # A command's shell has exec'd its program by now: the record names what serves it.
                            recorded = await self._record_child(process.pid, argv[0], recorded)
                            seen_url.set()
                        self._publish(state=TunnelState.RUNNING, url=found[0], public_url=found[1], last_error=None)
                await process.wait()
                nursery.cancel_scope.cancel()  # the deadline task
        except* OSError as group:
            error = group.exceptions[0]
            reason = f"could not start {self._name}: {error}"
            if isinstance(error, OSError) and error.errno in _UNRUNNABLE:
                raise TunnelError(f"{reason} (not a program this machine can run: replace it)") from None
        else:
            if no_url_in_time:
                reason = f"{self._name} printed no public URL within {self.config.url_timeout_s:g}s"
            else:
                reason = f"{self._name} exited with status {process.returncode if process else None}"
            if tail:
                reason += f"; last output: {tail[-1][-300:]}"
        finally:
            if process is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)  # whatever it left in its group
                if process.returncode is not None:  # reaped: its pid may belong to anyone from now on
                    self._forget_child()
        self._log.warn("tunnel_exited", room=self._label, error=reason)
        return reason

    async def _record_child(self, pid: int, program: str, previous: ChildRecord | None = None) -> ChildRecord | None:
        """Write the running child down in ``child_record``; a failed write costs only the cleanup after a crash."""
        if self._child_record is None:
            return None
        try:
            return await trio.to_thread.run_sync(record_child, self._child_record, pid, program, previous)
        except OSError as exc:
            self._log.warn("tunnel_child_not_recorded", room=self._label, error=str(exc))
            return previous

    def _forget_child(self) -> None:
        if self._child_record is None:
            return
        try:
            forget_child(self._child_record)
        except OSError as exc:  # harmless: the next start finds it reaped (or reused) and leaves that pid alone
            self._log.warn("tunnel_child_record_not_removed", room=self._label, error=str(exc))

    def _url_in(self, line: str, tail: deque[str]) -> tuple[str, str] | None:
        """(relay URL, public URL) when ``line`` announces one; every line goes to ``tail`` and the debug log."""
        if not line.strip():
            return None
        tail.append(line.strip())
        self._log.debug("tunnel_output", room=self._label, line=line[:500])
        match = self._pattern.search(line)
        if match is None:
            return None
        try:
            return relay_url(match.group(0)), match.group(0)
        except TunnelError:
            return None
