"""What the end-to-end benches share: real relay and daemon processes, a trio control client, the table.

Every bench here measures real processes the way a user runs them: `agentroomd relay` and
`agentroomd run --home DIR` as subprocesses (the daemon reports readiness on `--ready-fd`, as it
does for an autostarting `agentroomctl`), driven over their Unix control sockets with the same
NDJSON JSON-RPC framing the CLI uses (`agentroomd.control.framing`). The control client is async
(trio) so that one bench process can hold many connections and time arrivals without threads.

`Row` is one line of a bench's table: ours, the baseline measured in the same run, their ratio and
the target; every bench returns ``{"bench": name, "rows": [row dicts], "ok": bool, ...}``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio

from agentroomd.config import resolve_paths
from agentroomd.control import api
from agentroomd.control.framing import MAX_LINE_BYTES, LineBuffer, decode, encode

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0

# A daemon that reconnects quickly and gives up waiting for an ACK soon: benches and the soak kill relays.
FAST_CLIENT_TOML = """\
[daemon]
log_level = "warn"

[client]
reconnect_initial_s = 0.05
reconnect_max_s = 0.5
ack_timeout_s = {ack_timeout_s}
"""


# ---------------------------------------------------------------------------------------------- the table


@attrs.frozen
class Row:
    """One measurement beside its baseline. ``ratio`` is ours/baseline; ``ok`` is None when there is no target."""

    bench: str
    name: str
    unit: str
    ours: float
    baseline: float | None
    ratio: float | None
    target: str
    ok: bool | None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def row(
    bench: str,
    name: str,
    unit: str,
    ours: float,
    baseline: float | None = None,
    *,
    ratio_at_least: float | None = None,
    ratio_at_most: float | None = None,
    below: float | None = None,
    baseline_label: str = "",
) -> Row:
    """A row with its verdict: the target applies to the ratio (at least / at most) or to ``ours`` (below)."""
    ratio = ours / baseline if baseline else None
    target, ok = "", None
    if ratio_at_least is not None:
        target, ok = f"ratio >= {ratio_at_least:g}", ratio is not None and ratio >= ratio_at_least
    elif ratio_at_most is not None:
        target, ok = f"ratio <= {ratio_at_most:g}", ratio is not None and ratio <= ratio_at_most
    elif below is not None:
        target, ok = f"< {below:g} {unit}", ours < below
    if baseline_label:
        name = f"{name} [vs {baseline_label}]"
    return Row(bench, name, unit, ours, baseline, ratio, target, ok)


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def table_lines(rows: list[Row] | list[dict[str, Any]], *, bench_column: bool = True) -> list[str]:
    """A header and one aligned line per row: (bench,) measurement, ours, baseline, ratio, target, verdict."""
    dicts = [r.as_dict() if isinstance(r, Row) else r for r in rows]
    width = max([len(f"{d['name']} ({d['unit']})") for d in dicts] + [11])

    def line(bench: str, *cells: str) -> str:
        name, ours, baseline, ratio, target, verdict = cells
        text = f"{name:{width}} {ours:>11} {baseline:>11} {ratio:>7}  {target:15} {verdict}".rstrip()
        return f"{bench:10} {text}" if bench_column else text

    lines = [line("bench", "measurement", "ours", "baseline", "ratio", "target", "verdict")]
    for d in dicts:
        verdict = "" if d["ok"] is None else ("ok" if d["ok"] else "MISSED")
        ratio = "-" if d["ratio"] is None else f"{d['ratio']:.2f}"
        lines.append(line(d["bench"], f"{d['name']} ({d['unit']})", _number(d["ours"]), _number(d["baseline"]), ratio,
                          d["target"] or "-", verdict))
    return lines


def print_rows(rows: list[Row] | list[dict[str, Any]], notes: list[str] | None = None) -> None:
    """The table, then the notes (skipped columns, what a number means)."""
    for line in table_lines(rows):
        print(line, flush=True)
    for note in notes or []:
        print(f"  note: {note}")


def result(bench: str, rows: list[Row], **extra: Any) -> dict[str, Any]:
    """The dict every bench returns: its rows, whether every target was met, and bench-specific details."""
    return {"bench": bench, "rows": [r.as_dict() for r in rows], "ok": all(r.ok is not False for r in rows), **extra}


RESULTS_ENV = "BENCH_RESULTS_FILE"


def finish(title: str, outcome: dict[str, Any]) -> int:
    """A bench's `main` ending: print its table, hand its dict to `python -m bench`, exit 1 on a missed target.

    `python -m bench` runs each bench in its own process and names a file in ``$BENCH_RESULTS_FILE``;
    the dict goes there as JSON, so the summary and bench/results.json carry every row.
    """
    print(title)
    print_rows(outcome["rows"], outcome.get("notes"))
    target = os.environ.get(RESULTS_ENV)
    if target:
        Path(target).write_text(json.dumps(outcome, indent=2, default=str))
    return 0 if outcome["ok"] else 1


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(len(ordered) * fraction) - 1)]


# --------------------------------------------------------------------------------------------- /proc


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_targets(pid: int) -> list[str]:
    """What each open fd of ``pid`` points at (sockets and pipes by kind only), sorted: to name a leak."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        found.append(target.split(":")[0] if target.startswith(("socket:", "pipe:", "anon_inode:")) else target)
    return sorted(found)


def short_dir(prefix: str) -> Path:
    """A directory under /tmp with a short path: Unix socket paths must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def isolated_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTROOM_", "XDG_"))}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    env.update(extra)
    return env


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """One line (b"" at EOF); the caller bounds the wait."""
    line = b""
    while not line.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        line += chunk
    return line


async def _reap(process: trio.Process, grace_s: float = 10) -> None:
    with trio.move_on_after(grace_s) as waited:
        await process.wait()
    if waited.cancelled_caught:
        process.kill()
        await process.wait()


# --------------------------------------------------------------------------------------------- relay


class Measured:
    """A process that may run under `bench._profiled`: a profiler switched on and off by signals, what-ifs by env."""

    process: trio.Process | None
    profile: Path | None
    what_if: dict[str, str]
    log_path: Path  # where the process's stderr goes

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    async def kill(self) -> None:
        """SIGKILL: what a crash looks like to its peers and to its database."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self._close_pipes()

    async def _close_pipes(self) -> None:
        """Close what we read from the process (nothing, unless a subclass pipes its output)."""

    def command(self, module: str) -> list[str]:
        if self.profile is None and not self.what_if:
            return [sys.executable, "-m", module]
        return [sys.executable, "-m", "bench._profiled", module]

    def env(self, **extra: str) -> dict[str, str]:
        if self.profile is not None:
            extra["BENCH_PROFILE_OUT"] = str(self.profile)
        return isolated_env(**extra, **self.what_if)

    def profile_start(self) -> None:
        if self.profile is not None and self.process is not None:
            self.process.send_signal(signal.SIGUSR1)

    async def profile_stop(self) -> None:
        """Stop the profiler and wait for its dump."""
        if self.profile is None or self.process is None:
            return
        self.profile.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR2)
        with trio.fail_after(30):
            while not self.profile.exists():  # noqa: ASYNC110 (another process's file: nothing to await)
                await trio.sleep(0.05)


class RelayProcess(Measured):
    """`agentroomd relay` as a subprocess; `kill()` is SIGKILL, `start()` again reuses its port and database."""

    def __init__(self, workdir: Path, *, profile: Path | None = None) -> None:
        self.workdir = workdir
        self.profile = profile
        self.what_if = {}
        self.db = workdir / "relay.db"
        self.log_path = workdir / "relay.log"
        self.port = 0
        self.url = ""
        self.process: trio.Process | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> RelayProcess:
        command = [*self.command("agentroomd"), "relay", "--port", str(self.port), "--db", str(self.db),
                   "--home", str(self.workdir)]
        with self.log_path.open("ab") as log:
            self.process = await trio.lowlevel.open_process(
                command, stdout=subprocess.PIPE, stderr=log, cwd=self.workdir,
                env=self.env(RATE_LIMIT_DISABLED="1", LOG_LEVEL="warn"),
            )
        assert self.process.stdout is not None
        with trio.fail_after(START_TIMEOUT_S):
            line = await _read_line(self.process.stdout)
        if not line:
            raise RuntimeError(f"relay exited before it was ready: {self.log_tail()}")
        ready = json.loads(line)
        self.port, self.url = int(ready["port"]), str(ready["url"])
        self.starts += 1
        return self

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await _reap(self.process)
        await self._close_pipes()

    async def _close_pipes(self) -> None:
        assert self.process is not None
        if self.process.stdout is not None:
            await self.process.stdout.aclose()


# -------------------------------------------------------------------------------------------- daemons


class DaemonProcess(Measured):
    """`agentroomd run --home DIR` as a subprocess, ready when it writes "ready" to the --ready-fd pipe."""

    def __init__(
        self,
        home: Path,
        *,
        ack_timeout_s: float = 10.0,
        config: str | None = None,
        profile: Path | None = None,
        what_if: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.profile = profile
        self.what_if = what_if or {}
        home.mkdir(parents=True, exist_ok=True)
        text = config if config is not None else FAST_CLIENT_TOML.format(ack_timeout_s=ack_timeout_s)
        (home / "agentroom.toml").write_text(text)
        self.socket = resolve_paths(home, env={}).socket_path
        self.log_path = home / "agentroomd.log"
        self.process: trio.Process | None = None
        self.ready_s = 0.0  # seconds from spawn to "ready" of the last start
        self.starts = 0
        self.pk = ""

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> DaemonProcess:
        ready_read, ready_write = os.pipe()
        command = [*self.command("agentroomd"), "run", "--home", str(self.home), "--ready-fd", str(ready_write)]
        started = time.perf_counter()
        try:
            with self.log_path.open("ab") as log:
                self.process = await trio.lowlevel.open_process(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_write,),
                    cwd=self.home, env=self.env(),
                )
        finally:
            os.close(ready_write)
        async with trio.lowlevel.FdStream(ready_read) as ready:
            with trio.fail_after(START_TIMEOUT_S):
                line = await _read_line(ready)
        if b"ready" not in line:
            raise RuntimeError(f"agentroomd in {self.home} did not become ready: {self.log_tail()}")
        self.ready_s = time.perf_counter() - started
        self.starts += 1
        return self

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await _reap(self.process, 20)


async def stop_all(daemons: Iterable[DaemonProcess], relay: RelayProcess) -> None:
    """Teardown of a bench's processes, shielded: it runs in a `finally` that may be cancelled."""
    with trio.CancelScope(shield=True):
        for daemon in daemons:
            await daemon.stop()
        await relay.stop()


# ---------------------------------------------------------------------------------------- control client


class ControlGone(Exception):
    """The daemon closed the control connection (or died) before answering."""


@attrs.define
class _Pending:
    done: trio.Event = attrs.Factory(trio.Event)
    reply: dict[str, Any] | None = None


class Control:
    """One JSON-RPC connection to a daemon's control socket; replies by id, notifications on a channel.

    Use through `open_control`, which runs the reader task. The daemon answers the requests of one
    connection in order, so concurrent senders each want their own connection.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._send_lock = trio.Lock()
        self._notify_send, self.notifications = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.closed = False

    async def call(self, spec: api.MethodSpec[Any, Any], params: Any = None) -> Any:
        """Call ``spec``; the structured result, or api.RpcError / ControlGone."""
        raw = api.params_converter.unstructure(params if params is not None else spec.params())
        return api.results_converter.structure(await self.request(spec.name, raw), spec.result)

    async def request(self, method: str, params: dict[str, Any]) -> Any:
        if self.closed:
            raise ControlGone("control connection closed")
        request_id = next(self._ids)
        pending = self._pending[request_id] = _Pending()
        try:
            async with self._send_lock:
                await self._stream.send_all(
                    encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
                )
            await pending.done.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ControlGone(str(exc)) from exc
        finally:
            self._pending.pop(request_id, None)
        reply = pending.reply
        if reply is None:
            raise ControlGone(f"daemon went away before answering {method}")
        if "error" in reply:
            raise api.RpcError.from_json(reply["error"])
        return reply.get("result")

    async def _read(self) -> None:
        buffer = LineBuffer(MAX_LINE_BYTES)
        try:
            while True:
                line = buffer.next_line()
                if line is None:
                    data = await self._stream.receive_some(65_536)
                    if not data:
                        return
                    buffer.feed(data)
                    continue
                message = decode(line)
                if "id" not in message:
                    self._notify_send.send_nowait(message)
                    continue
                pending = self._pending.get(message["id"])
                if pending is not None:
                    pending.reply = message
                    pending.done.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return  # the daemon died: pending calls fail below
        finally:
            self.closed = True
            self._notify_send.close()
            for pending in self._pending.values():
                pending.done.set()


@asynccontextmanager
async def open_control(path: Path) -> AsyncIterator[Control]:
    stream = await trio.open_unix_socket(str(path))
    control = Control(stream)
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(control._read)
        try:
            yield control
        finally:
            nursery.cancel_scope.cancel()


async def whoami(daemon: DaemonProcess) -> str:
    async with open_control(daemon.socket) as control:
        daemon.pk = (await control.call(api.IDENTITY_SHOW)).pk
    return daemon.pk


async def pair(host: DaemonProcess, guest: DaemonProcess, relay_url: str) -> None:
    """An invite from ``host`` accepted by ``guest`` through ``relay_url``: a session both ways."""
    async with open_control(host.socket) as h, open_control(guest.socket) as g:
        invite = await h.call(api.INVITE_CREATE, api.InviteCreateParams(relay=relay_url))
        accepted = await g.call(api.INVITE_ACCEPT, api.InviteAcceptParams(url=invite.url))
    if not host.pk:
        await whoami(host)
    if accepted.peer != host.pk:
        raise RuntimeError(f"invite accepted for {accepted.peer}, expected {host.pk}")


@asynccontextmanager
async def processes(cleanup: list[Callable[[], Any]]) -> AsyncIterator[None]:
    """Run the async stop functions in ``cleanup`` (last first) on the way out, shielded from cancellation."""
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            for stop in reversed(cleanup):
                await stop()


def measure_run_time(command: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    """Wall seconds of ``command`` run to completion ``runs`` times (blocking; for short CLI processes)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env or isolated_env(), timeout=60)
        times.append(time.perf_counter() - started)
    return times


# -------------------------------------------------------------------------------------------- profiles

# Where CPU time goes, by who owns the code: ours, or a library's (for "what is ours, what is the library's").
_OWNERS = (  # first match wins: hypercorn/trio/... is hypercorn's
    ("ours", ("/agentroomd/", "/ratchet/", "/agentroomctl/")),
    ("hypercorn", ("/hypercorn/",)),
    ("trio", ("/trio/", "/outcome/", "/sniffio/")),
    ("wsproto+h11+h2", ("/wsproto/", "/h11/", "/h2/", "/hpack/", "/priority/")),
    ("trio-websocket", ("/trio_websocket/",)),
    ("attrs+cattrs", ("/attr/", "/attrs/", "/cattrs/", "<attrs generated")),
    ("pynacl", ("/nacl/",)),
)


def _owner(filename: str, function: str) -> str:
    if filename == "~":  # a builtin: name it by what it is a method of
        if "epoll" in function or "'poll'" in function or "select" in function:
            return "idle (epoll wait)"
        if "sqlite3" in function:
            return "sqlite3"
        if "_sodium" in function or "nacl" in function or "crypto_" in function:
            return "pynacl"
        if "socket" in function or "'send'" in function or "'recv" in function:
            return "socket syscalls"
        return "builtins"
    if "importlib" in filename or function == "<module>":
        return "idle (startup imports)"
    for owner, markers in _OWNERS:
        if any(marker in filename for marker in markers):
            return owner
    if "/json/" in filename:
        return "json"
    if "sqlite3" in filename:
        return "sqlite3"
    return "stdlib/other"


def profile_report(path: Path, top: int = 12) -> dict[str, Any]:
    """CPU seconds of a cProfile dump by owner (idle and startup excluded from busy) and its hottest functions.

    cProfile sees the main thread only: work in `trio.to_thread` workers (SQLite commits and their
    fsyncs) appears as the time the event loop waits for them, inside "idle (epoll wait)".
    """
    import pstats

    stats: dict[Any, Any] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    owners: dict[str, float] = {}
    functions = []
    for (filename, line, function), (_cc, calls, tottime, cumtime, _callers) in stats.items():
        owner = _owner(filename, function)
        owners[owner] = owners.get(owner, 0.0) + tottime
        where = function if filename == "~" else f"{Path(filename).parent.name}/{Path(filename).name}:{line} {function}"
        functions.append((tottime, calls, cumtime, owner, where))
    busy = sum(seconds for owner, seconds in owners.items() if not owner.startswith("idle"))
    functions.sort(reverse=True)

    def entries(rows: list[tuple[float, int, float, str, str]]) -> list[dict[str, Any]]:
        return [{"tottime_s": t, "calls": n, "cumtime_s": c, "owner": o, "function": w} for t, n, c, o, w in rows]

    return {
        "busy_s": busy,
        "owners": dict(sorted(owners.items(), key=lambda item: -item[1])),
        "top": entries([f for f in functions if not f[3].startswith("idle")][:top]),
        "top_ours": entries([f for f in functions if f[3] == "ours"][:top]),
    }


def print_profile(label: str, report: dict[str, Any], per: int = 1, unit: str = "") -> None:
    """The owners' shares of busy CPU, and the hottest functions; ``per`` divides seconds (e.g. per message)."""
    scale = 1e6 / per
    suffix = f" us/{unit}" if unit else " us"
    print(f"profile of {label}: busy {report['busy_s'] * scale:,.0f}{suffix}")
    for owner, seconds in report["owners"].items():
        if not owner.startswith("idle"):
            print(f"    {owner:18} {seconds * scale:10,.1f}{suffix}  {seconds / report['busy_s']:6.1%}")
    for title, key in (("hottest functions (own time)", "top"), ("hottest of ours (own time)", "top_ours")):
        print(f"  {title}:")
        for entry in report[key]:
            print(f"    {entry['tottime_s'] * scale:9,.1f}{suffix}  {entry['owner']:16} {entry['function']}")
