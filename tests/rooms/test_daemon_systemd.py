"""agentroomd under systemd: READY/STATUS/STOPPING and WATCHDOG datagrams, socket activation, install-service."""

import socket
import subprocess
import sys
from pathlib import Path

from support.env import AGENTROOMD
from support.home import homes

ACTIVATE = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); "
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='control'); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def datagrams(sock: socket.socket, until: str) -> list[str]:
    """Every notification until one contains ``until`` (a real datagram socket stands in for systemd)."""
    seen: list[str] = []
    while not any(until in message for message in seen):
        seen.append(sock.recv(4096).decode())
    return seen


def test_the_daemon_tells_systemd_it_is_ready_alive_and_stopping(scratch: Path) -> None:
    directory = scratch
    with homes("") as (home,), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(directory / "notify"))
        notify.settimeout(10)
        home.start(extra_env={"NOTIFY_SOCKET": str(directory / "notify"), "WATCHDOG_USEC": "200000"})
        started = datagrams(notify, "READY=1")
        ready = next(message for message in started if "READY=1" in message)
        assert ready == f"READY=1\nSTATUS=ready: 0 room(s); control socket {home.path / 'agentroomd.sock'}"
        assert "WATCHDOG=1" in datagrams(notify, "WATCHDOG=1")  # pinged every half WATCHDOG_USEC
        home.json("room", "open", "--no-tunnel")
        assert home.stop() == 0
        stopping = [m for m in datagrams(notify, "STOPPING=1") if "STOPPING=1" in m]
        assert stopping == ["STOPPING=1\nSTATUS=stopping (SIGTERM)"]


def test_a_socket_activated_daemon_serves_the_socket_systemd_bound_and_leaves_it_in_place() -> None:
    with homes("") as (home,), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        path = home.path / "agentroomd.sock"
        listener.bind(str(path))
        listener.listen(16)
        home.start(argv_prefix=[sys.executable, "-c", ACTIVATE, str(listener.fileno())],
                   pass_fds=(listener.fileno(),))
        assert home.json("status")["pid"] == home.pid
        [listening] = home.events("control_listening")
        assert listening["activated"] is True and listening["socket"] == str(path)
        assert home.stop() == 0
        assert path.is_socket()  # systemd's socket: never unlinked by the daemon


def test_install_service_writes_the_unit_and_prints_the_commands(scratch: Path) -> None:
    target = scratch
    home = Path("/tmp/ar-some-home")
    result = subprocess.run(
        [AGENTROOMD, "install-service", "--unit-dir", str(target), "--home", str(home), "--socket"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "systemctl --user daemon-reload" in result.stdout.splitlines()
    assert "systemctl --user enable --now agentroomd.socket" in result.stdout.splitlines()
    unit = (target / "agentroomd.service").read_text()
    assert "Type=notify" in unit
    assert f"ExecStart={sys.executable} -m agentroomd run --home {home}" in unit.splitlines()
    assert f"ListenStream={home}/agentroomd.sock" in (target / "agentroomd.socket").read_text().splitlines()
