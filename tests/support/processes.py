"""`agentroomd relay` and `agentroomd run` as children of the test, each ready only once it said so.

A relay prints one JSON line ({"port", "url"}) on stdout when it listens; a daemon writes "ready" on
the pipe given as ``--ready-fd``. Both waits are bounded. Their logs go to files beside their state,
so a failure message can quote them and tests can read the daemon's NDJSON events afterwards.
"""

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from support.env import AGENTROOMD, isolated_env, short_dir
from support.waiting import wait_pid_exit

RELAY_READY_TIMEOUT_S = 30.0
DAEMON_READY_TIMEOUT_S = 15.0
# Beyond the daemon's own shutdown grace (10 s by default), for a busy machine.
STOP_TIMEOUT_S = 20.0
LOG_TAIL_CHARS = 3000


class RelayProcess:
    """`agentroomd relay` as a subprocess; `kill()` is SIGKILL, `start()` again reuses the port and database."""

    def __init__(self, workdir: Path, port: int = 0) -> None:
        self.workdir = workdir
        self.db = workdir / "relay.db"
        self.log_path = workdir / "relay.log"
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> "RelayProcess":
        """Spawn the relay and wait for its ready line; rate limits off (tests send fast), warnings only."""
        with self.log_path.open("a") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [AGENTROOMD, "relay", "--port", str(self.port), "--db", str(self.db), "--home", str(self.workdir)],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env=isolated_env(RATE_LIMIT_DISABLED="1", LOG_LEVEL="warn"),
            )
        assert self.proc.stdout is not None
        readable, _, _ = select.select([self.proc.stdout], [], [], RELAY_READY_TIMEOUT_S)
        line = self.proc.stdout.readline() if readable else ""
        assert line, f"relay not ready (exit {self.proc.poll()}): {self.log_tail()}"
        ready = json.loads(line)
        self.port, self.url = ready["port"], ready["url"]
        return self

    def log_tail(self) -> str:
        return self.log_path.read_text()[-LOG_TAIL_CHARS:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: what a crash looks like to the daemons and to the database."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        """Teardown: SIGTERM (SIGKILL if it lingers), and the stdout pipe closed so nothing leaks."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class DaemonProcess:
    """`agentroomd run --home HOME` as our child (so a test can signal it), its stderr in ``HOME/daemon.stderr``.

    Spawning does not wait: a test of a daemon that must refuse to start calls `wait_exit`, every
    other one `wait_ready`. ``argv_prefix`` and ``pass_fds`` let a test stand in for systemd (socket
    activation execs the daemon with the listening socket already open).
    """

    def __init__(
        self,
        home: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        argv_prefix: Sequence[str] = (),
        pass_fds: tuple[int, ...] = (),
        ready_timeout_s: float = DAEMON_READY_TIMEOUT_S,
    ) -> None:
        self.home = home
        self.stderr_path = home / "daemon.stderr"
        self.ready_timeout_s = ready_timeout_s
        read_fd, write_fd = os.pipe()
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [*argv_prefix, AGENTROOMD, "run", "--home", str(home), "--ready-fd", str(write_fd), *extra],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(write_fd, *pass_fds),
                env=env if env is not None else isolated_env(),
            )
        os.close(write_fd)
        self._ready_fd: int | None = read_fd

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self) -> "DaemonProcess":
        """Block until the daemon wrote "ready" (bounded by ``ready_timeout_s``); the test fails otherwise."""
        assert self._ready_fd is not None
        try:
            readable, _, _ = select.select([self._ready_fd], [], [], self.ready_timeout_s)
            data = os.read(self._ready_fd, 64) if readable else b""
        finally:
            self._close_ready_fd()
        assert data == b"ready\n", f"daemon not ready (exit {self.process.poll()}): {self.stderr()[-LOG_TAIL_CHARS:]}"
        return self

    def _close_ready_fd(self) -> None:
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None

    def wait_exit(self, timeout: float = 10) -> int:
        self._close_ready_fd()
        return self.process.wait(timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL, as a crash would; returns once the process is reaped."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> int:
        """Graceful stop (SIGTERM); the exit code."""
        self.process.terminate()
        return self.process.wait(timeout=30)

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """Every stderr line parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def events(self, name: str) -> list[dict[str, Any]]:
        return [event for event in self.log_events() if event.get("event") == name]

    def close(self, *, graceful: bool = False) -> None:
        """Teardown: kill whatever is still running and reap it.

        ``graceful`` stops it as a service manager would first (SIGTERM, then SIGKILL only if it has not
        exited within ``STOP_TIMEOUT_S``): a daemon running tunnels must end them, since they live in
        sessions of their own and a SIGKILL leaves them running. (It costs about a second per daemon.)
        """
        self._close_ready_fd()
        if self.process.poll() is None and graceful:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT_S)
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@contextlib.contextmanager
def running_daemon(home: Path, *extra: str) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(home, *extra).wait_ready()
    try:
        yield daemon
    finally:
        daemon.close()


def lock_holder(home: Path) -> int | None:
    """The pid written in the home's lock file while a daemon holds it."""
    try:
        text = (home / "agentroomd.lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def stop_daemon_of(home: Path) -> None:
    """Teardown: end whatever daemon still holds ``home`` (autostarted ones are not our children)."""
    pid = lock_holder(home)
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not wait_pid_exit(pid, 10):
            os.kill(pid, signal.SIGKILL)
            wait_pid_exit(pid, 5)


@contextlib.contextmanager
def home_dir() -> Iterator[Path]:
    """A short, empty home; afterwards any daemon that holds it is stopped and the directory removed."""
    home = short_dir()
    try:
        yield home
    finally:
        stop_daemon_of(home)
        shutil.rmtree(home, ignore_errors=True)
