"""Helpers for the daemon tests: short homes, real `agentroomd` / `agentroomctl` subprocesses, raw socket clients."""

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
AGENTROOMD = str(BIN / "agentroomd")
AGENTROOMCTL = str(BIN / "agentroomctl")
READY_TIMEOUT_S = 15.0


def isolated_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any AGENTROOM_* variable (a developer's settings must not leak in)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AGENTROOM_")}
    env.update(extra)
    return env


def make_home() -> Path:
    """A short home directory: Unix socket paths must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))


def lock_holder(home: Path) -> int | None:
    """The pid written in the home's lock file while a daemon holds it."""
    try:
        text = (home / "agentroomd.lock").read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def wait_pid_exit(pid: int, timeout: float) -> bool:
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)


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
    home = make_home()
    try:
        yield home
    finally:
        stop_daemon_of(home)
        shutil.rmtree(home, ignore_errors=True)


def ctl(
    home: Path | None, *args: str, stdin: str | None = None, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run agentroomctl (with ``--home home`` first, unless home is None) and capture everything."""
    argv = [AGENTROOMCTL, *(["--home", str(home)] if home is not None else []), *args]
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=timeout, env=isolated_env(**env), check=False
    )


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.stdout.strip(), f"no stdout; stderr: {result.stderr}"
    return json.loads(result.stdout)


class Daemon:
    """`agentroomd run --home HOME` as a child process, ready once it wrote "ready" on its notification fd."""

    def __init__(self, home: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.stderr_path = home / "test-daemon.stderr"
        read_fd, write_fd = os.pipe()
        with self.stderr_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [AGENTROOMD, "run", "--home", str(home), "--ready-fd", str(write_fd), *extra],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(write_fd,),
                env=env or isolated_env(),
            )
        os.close(write_fd)
        self._ready_fd: int | None = read_fd

    def wait_ready(self) -> "Daemon":
        assert self._ready_fd is not None
        try:
            readable, _, _ = select.select([self._ready_fd], [], [], READY_TIMEOUT_S)
            data = os.read(self._ready_fd, 64) if readable else b""
        finally:
            self._close_ready_fd()
        assert data == b"ready\n", f"daemon not ready (exit {self.process.poll()}): {self.stderr()}"
        return self

    def _close_ready_fd(self) -> None:
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None

    def wait_exit(self, timeout: float = 10) -> int:
        self._close_ready_fd()
        return self.process.wait(timeout=timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def log_events(self) -> list[dict[str, Any]]:
        """Every stderr line parsed as JSON (a line that is not JSON fails the test)."""
        return [json.loads(line) for line in self.stderr().splitlines() if line.strip()]

    def close(self) -> None:
        self._close_ready_fd()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@contextlib.contextmanager
def running_daemon(home: Path, *extra: str) -> Iterator[Daemon]:
    daemon = Daemon(home, *extra).wait_ready()
    try:
        yield daemon
    finally:
        daemon.close()


class RawClient:
    """A blocking line-oriented client for poking the control socket with anything, valid or not."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self._buffer = b""

    def send_line(self, data: bytes) -> None:
        self.sock.sendall(data + b"\n")

    def send_json(self, message: dict[str, Any]) -> None:
        self.send_line(json.dumps(message).encode())

    def call(self, method: str, params: dict[str, Any] | None = None, request_id: int = 1) -> dict[str, Any]:
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
