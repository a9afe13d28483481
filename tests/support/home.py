"""A home whose daemon is our child: started and awaited here, killed with -9, restarted on the same state.

Every agentroomctl run says ``--no-autostart``: the daemon under test is the one we started, and a
command must never quietly start another. The home is a short directory of its own, removed on close.
"""

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

from agentroomd.orphans import CHILD_RECORD_FILE
from support.ctl import ctl, require_success
from support.env import AGENTROOMCTL, isolated_env, short_dir
from support.processes import DaemonProcess

# Rooms tests restart daemons that reopen their rooms (relays, tunnels) before reporting ready: a longer bound
# than `DaemonProcess`'s default, as these tests always had.
READY_TIMEOUT_S = 20.0


class Home:
    """One agentroomd home; `start()` runs the daemon as our child so tests can kill -9 it."""

    def __init__(self, config: str = "", **env: str) -> None:
        self.path = short_dir()
        # Rooms run their relay inside the daemon: rate limits off there too (tests talk fast).
        self.env = isolated_env(**{"RATE_LIMIT_DISABLED": "1", **env})
        if config:
            (self.path / "agentroom.toml").write_text(config)
        self.daemon: DaemonProcess | None = None

    def start(
        self,
        extra_env: dict[str, str] | None = None,
        argv_prefix: Sequence[str] = (),
        pass_fds: tuple[int, ...] = (),
    ) -> "Home":
        """Run the daemon and return once it is ready (or fail the test with its log)."""
        self.daemon = DaemonProcess(
            self.path,
            env={**self.env, **(extra_env or {})},
            argv_prefix=argv_prefix,
            pass_fds=pass_fds,
            ready_timeout_s=READY_TIMEOUT_S,
        ).wait_ready()
        return self

    def _running(self) -> DaemonProcess:
        assert self.daemon is not None, "start() the daemon first"
        return self.daemon

    @property
    def pid(self) -> int:
        return self._running().pid

    def kill9(self) -> None:
        self._running().kill9()

    def stop(self) -> int:
        """Graceful stop (SIGTERM); returns the exit code."""
        return self._running().terminate()

    def log(self) -> str:
        return self.daemon.stderr() if self.daemon is not None else ""

    def events(self, name: str) -> list[dict[str, Any]]:
        return self.daemon.events(name) if self.daemon is not None else []

    def ctl(self, *args: str, check: bool = True, timeout: float = 60,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        result = ctl(self.path, "--no-autostart", *args, stdin=stdin, timeout=timeout, env=self.env)
        if check:
            require_success(result, args)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ctl("--json", *args).stdout)

    def room(self, room_id: str | None = None) -> dict[str, Any]:
        return self.json("room", "status", *([room_id] if room_id else []))

    def listen(self, count: int, since: int = 0, timeout: float = 20) -> list[dict[str, Any]]:
        result = self.ctl("--json", "listen", "--since", str(since), "--count", str(count), "--timeout", str(timeout),
                          timeout=timeout + 10)
        return [json.loads(line) for line in result.stdout.splitlines()]

    @contextlib.contextmanager
    def serving(self, *args: str) -> Iterator[subprocess.Popen[str]]:
        """`agentroomctl serve --json ARGS` in the background (its events on stdout, a line each).

        Afterwards it is killed if it still runs, and reaped: a test that wants it to end cleanly
        sends SIGTERM and checks the exit code itself.
        """
        serve = subprocess.Popen(
            [AGENTROOMCTL, "--home", str(self.path), "--no-autostart", "serve", "--json", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env,
        )
        try:
            yield serve
        finally:
            if serve.poll() is None:
                serve.kill()
            serve.communicate(timeout=10)

    def close(self) -> None:
        """Kill the daemon, or stop it gracefully while it runs tunnels (they would outlive a SIGKILL)."""
        if self.daemon is not None:
            self.daemon.close(graceful=self.runs_tunnels())
        shutil.rmtree(self.path, ignore_errors=True)

    def runs_tunnels(self) -> bool:
        """Whether a room's tunnel is running (each one is recorded beside its room until it is reaped)."""
        return any(self.path.glob(f"rooms/*/{CHILD_RECORD_FILE}"))


@contextlib.contextmanager
def homes(*configs: str, **env: str) -> Iterator[list[Home]]:
    """One `Home` per config (sharing ``env``), all closed (daemons ended, directories removed) afterwards."""
    made = [Home(config, **env) for config in configs]
    try:
        yield made
    finally:
        for home in made:
            home.close()
