"""Real processes for end-to-end tests: a relay, daemons driven through agentroomctl, kill -9 and restart."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentroomctl.client import ControlClient
from agentroomd.config import resolve_paths
from agentroomd.control import api

BIN = Path(sys.executable).parent


def isolated_env(**extra: str) -> dict[str, str]:
    """The test's environment without anything that would point a process at a real home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTROOM_", "XDG_"))}
    env.update(extra)
    return env


def short_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


class Relay:
    """`agentroomd relay` as a subprocess; `kill()` is SIGKILL, `start()` again reuses the port and database."""

    def __init__(self, workdir: Path, port: int = 0) -> None:
        self.workdir = workdir
        self.db = workdir / "relay.db"
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> "Relay":
        with (self.workdir / "relay.log").open("a") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [str(BIN / "agentroomd"), "relay", "--port", str(self.port), "--db", str(self.db),
                 "--home", str(self.workdir)],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env=isolated_env(RATE_LIMIT_DISABLED="1", LOG_LEVEL="warn"),
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, (self.workdir / "relay.log").read_text()[-3000:]
        ready = json.loads(line)
        self.port, self.url = ready["port"], ready["url"]
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


class Agent:
    """One daemon home, driven through agentroomctl (which starts the daemon on demand)."""

    def __init__(self, home: Path, config: str = "") -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        if config:
            (home / "agentroom.toml").write_text(config)
        self.socket = resolve_paths(home, env={}).socket_path

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> Any:
        done = subprocess.run(
            [str(BIN / "agentroomctl"), "--home", str(self.home), "--json", *args],
            capture_output=True, text=True, timeout=timeout, check=False, env=isolated_env(),
        )
        if check and done.returncode != 0:
            raise AssertionError(f"agentroomctl {args} exited {done.returncode}: {done.stderr}")
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        return lines if len(lines) != 1 else lines[0]

    @property
    def pk(self) -> str:
        return str(self.ctl("whoami")["pk"])

    def pid(self) -> int:
        return int(self.ctl("status")["pid"])

    def kill(self) -> None:
        """SIGKILL the daemon and wait until it is gone."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.01)
        raise AssertionError(f"daemon {pid} did not die")

    def client(self) -> ControlClient:
        return ControlClient.connect(self.socket)

    def send(self, client: ControlClient, peer: str, text: str) -> str:
        result = client.call(api.MESSAGE_SEND, api.MessageSendParams(peer=peer, text=text), timeout=60)
        return result.status

    def stop(self) -> None:
        subprocess.run([str(BIN / "agentroomctl"), "--home", str(self.home), "--no-autostart", "stop"],
                       capture_output=True, timeout=30, check=False, env=isolated_env())


def pair(host: Agent, guest: Agent, relay_url: str) -> None:
    invite = host.ctl("invite", "create", "--relay", relay_url)
    accepted = guest.ctl("invite", "accept", invite["url"])
    assert accepted["peer"] == host.pk
