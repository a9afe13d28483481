"""Real daemons for the rooms tests: short homes, `agentroomd` children we can kill -9, `agentroomctl` runs."""

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
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BIN = Path(sys.executable).parent
AGENTROOMD = str(BIN / "agentroomd")
AGENTROOMCTL = str(BIN / "agentroomctl")
ECHO = str(Path(__file__).resolve().parents[2] / "contrib" / "handlers" / "echo.sh")
READY_TIMEOUT_S = 20.0
END_PREFIX = "[agentroom] conversation ended"


def isolated_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that points at a real home; relays without rate limits."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTROOM_", "XDG_", "NOTIFY_", "LISTEN_"))}
    env.pop("WATCHDOG_USEC", None)
    env["RATE_LIMIT_DISABLED"] = "1"
    env.update(extra)
    return env


def short_dir(prefix: str = "ar-") -> Path:
    """Unix socket paths must fit in 108 bytes: homes live directly under /tmp."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


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


def eventually(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll another process's state (there is no event to wait on across processes), bounded."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


class Home:
    """One agentroomd home; `start()` runs the daemon as our child so tests can kill -9 it."""

    def __init__(self, config: str = "", **env: str) -> None:
        self.path = short_dir()
        self.env = isolated_env(**env)
        if config:
            (self.path / "agentroom.toml").write_text(config)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, extra_env: dict[str, str] | None = None, argv_prefix: list[str] | None = None,
              pass_fds: tuple[int, ...] = ()) -> "Home":
        read_fd, write_fd = os.pipe()
        with (self.path / "daemon.stderr").open("ab") as stderr:
            self.process = subprocess.Popen(
                [*(argv_prefix or []), AGENTROOMD, "run", "--home", str(self.path), "--ready-fd", str(write_fd)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                pass_fds=(write_fd, *pass_fds), env={**self.env, **(extra_env or {})},
            )
        os.close(write_fd)
        try:
            readable, _, _ = select.select([read_fd], [], [], READY_TIMEOUT_S)
            data = os.read(read_fd, 64) if readable else b""
        finally:
            os.close(read_fd)
        assert data == b"ready\n", f"daemon not ready (exit {self.process.poll()}): {self.log()[-3000:]}"
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout=30)

    def log(self) -> str:
        path = self.path / "daemon.stderr"
        return path.read_text() if path.exists() else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in map(json.loads, filter(None, self.log().splitlines())) if e.get("event") == name]

    def ctl(self, *args: str, check: bool = True, timeout: float = 60,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [AGENTROOMCTL, "--home", str(self.path), "--no-autostart", *args],
            input=stdin, capture_output=True, text=True, timeout=timeout, env=self.env, check=False,
        )
        if check:
            assert result.returncode == 0, f"agentroomctl {' '.join(args)} -> {result.returncode}: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        result = self.ctl("--json", *args)
        return json.loads(result.stdout)

    def room(self, room_id: str | None = None) -> dict[str, Any]:
        return self.json("room", "status", *([room_id] if room_id else []))

    def listen(self, count: int, since: int = 0, timeout: float = 20) -> list[dict[str, Any]]:
        result = self.ctl("--json", "listen", "--since", str(since), "--count", str(count), "--timeout", str(timeout),
                          timeout=timeout + 10)
        return [json.loads(line) for line in result.stdout.splitlines()]

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def homes(*configs: str, **env: str) -> Iterator[list[Home]]:
    made = [Home(config, **env) for config in configs]
    try:
        yield made
    finally:
        for home in made:
            home.close()


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def write_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)
