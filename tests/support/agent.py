"""A home driven only through agentroomctl, the way a user (or an agent's shell) drives it.

agentroomctl starts the daemon on first use, so the daemon is not our child: `kill` finds it through
`agentroomctl status` and `stop` asks it to go. Reads are what a user sees (`--json` output); sending
may go over the control socket directly, the call `agentroomctl send` makes, to spare a Python
start-up per message when a test sends hundreds.
"""

import os
import signal
from pathlib import Path
from typing import Any

from agentroomctl.client import ControlClient
from agentroomd.config import resolve_paths
from agentroomd.control import api
from support.ctl import ctl, json_lines, require_success
from support.waiting import wait_pid_exit

CTL_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 2000


class Agent:
    """One daemon home (blocking calls: trio tests run them in worker threads)."""

    def __init__(self, home: Path, config: str = "", *, name: str = "") -> None:
        self.home = home
        self.name = name or home.name
        home.mkdir(parents=True, exist_ok=True)
        if config:
            (home / "agentroom.toml").write_text(config)
        self.socket = resolve_paths(home, env={}).socket_path
        self._pk: str | None = None

    def lines(self, *args: str, timeout: float = CTL_TIMEOUT_S, check: bool = True) -> list[Any]:
        """``agentroomctl --json ARGS``: every line of output parsed; a failure fails the test unless not ``check``."""
        result = ctl(self.home, "--json", *args, timeout=timeout)
        if check:
            require_success(result, args, self._log_tail())
        return json_lines(result)

    def ctl(self, *args: str, timeout: float = CTL_TIMEOUT_S, check: bool = True) -> Any:
        """Like `lines`, but a single line of output comes back as that document (the usual case)."""
        lines = self.lines(*args, timeout=timeout, check=check)
        return lines if len(lines) != 1 else lines[0]

    def one(self, *args: str) -> dict[str, Any]:
        """The one document a command must print."""
        lines = self.lines(*args)
        assert len(lines) == 1, lines
        document: dict[str, Any] = lines[0]
        return document

    def start(self) -> str:
        """Start the daemon (agentroomctl does on first use) and learn its public key."""
        return self.pk

    @property
    def pk(self) -> str:
        """The daemon's Ed25519 key; the first read asks it (autostarting it), later ones start nothing."""
        if self._pk is None:
            self._pk = str(self.one("whoami")["pk"])
        return self._pk

    def status(self) -> dict[str, Any]:
        return self.one("status")

    def pid(self) -> int:
        return int(self.status()["pid"])

    def peers(self) -> list[str]:
        return [peer["pk"] for peer in self.one("peers")["peers"]]

    def inbox(self, count: int, timeout_s: float) -> list[dict[str, Any]]:
        """Every message kept by the daemon, oldest first, exactly ``count`` of them (as `listen` prints them)."""
        return self.lines("listen", "--since", "0", "--count", str(count), "--timeout", str(timeout_s))

    def client(self) -> ControlClient:
        return ControlClient.connect(self.socket)

    def send(
        self, peer: str, text: str, *, client: ControlClient | None = None, timeout: float = CTL_TIMEOUT_S
    ) -> api.MessageSendResult:
        """`message.send` over ``client`` (one connection for a stream of messages) or a fresh connection."""
        params = api.MessageSendParams(peer=peer, text=text)
        if client is not None:
            return client.call(api.MESSAGE_SEND, params, timeout=timeout)
        with self.client() as fresh:
            return fresh.call(api.MESSAGE_SEND, params, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the daemon and wait until it is gone."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        if not wait_pid_exit(pid, 10):
            raise AssertionError(f"daemon {pid} did not die")

    def stop(self) -> None:
        """Teardown: ask the daemon to stop, if one runs; never starts one."""
        ctl(self.home, "--no-autostart", "stop", timeout=30)

    def _log_tail(self) -> str:
        log = self.home / "agentroomd.log"  # an autostarted daemon logs there
        tail = log.read_text()[-LOG_TAIL_CHARS:] if log.exists() else ""
        return f"\n[{self.name}] {log}:\n{tail}"


def pair(host: Agent, guest: Agent, relay_url: str) -> None:
    """``host`` invites through ``relay_url`` and ``guest`` accepts: each is the other's peer afterwards."""
    invite = host.ctl("invite", "create", "--relay", relay_url)
    accepted = guest.ctl("invite", "accept", invite["url"])
    assert accepted["peer"] == host.pk
