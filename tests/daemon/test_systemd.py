"""systemd integration against real sockets: notify datagrams, watchdog pings, socket activation, units."""

import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from agentroomd import systemd
from agentroomd.systemd import SystemdError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONTRIB = PROJECT_ROOT / "contrib" / "systemd"


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, dict[str, str]]]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET, and an environment pointing at it."""
    directory = tempfile.mkdtemp(prefix="ar-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, {"NOTIFY_SOCKET": path}
    sock.close()
    shutil.rmtree(directory)


def test_ready_status_and_stopping_reach_the_manager(notify_socket: tuple[socket.socket, dict[str, str]]) -> None:
    sock, env = notify_socket
    assert systemd.notify_ready("relay listening on 8787", environ=env)
    assert sock.recv(4096) == b"READY=1\nSTATUS=relay listening on 8787"
    assert systemd.notify_status("tunnel up:\nhttps://a-b.trycloudflare.com", environ=env)
    assert sock.recv(4096) == b"STATUS=tunnel up: https://a-b.trycloudflare.com"  # one line, one field
    assert systemd.notify_stopping(environ=env)
    assert sock.recv(4096) == b"STOPPING=1"
    assert systemd.notify_watchdog(environ=env)
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_namespace_socket() -> None:
    name = f"agentroom-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert systemd.notify("READY=1", "STATUS=ünïcode ok", environ={"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(4096) == "READY=1\nSTATUS=ünïcode ok".encode()


def test_notify_outside_systemd_or_to_a_dead_socket_is_a_quiet_no() -> None:
    assert not systemd.notify("READY=1", environ={})
    assert not systemd.notify("READY=1", environ={"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert not systemd.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"})


def test_watchdog_period_follows_the_environment() -> None:
    pid = os.getpid()
    assert systemd.watchdog_period({}) is None
    assert systemd.watchdog_period({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert systemd.watchdog_period({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(pid)}) == 30.0
    assert systemd.watchdog_period({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(pid + 1)}) is None
    with pytest.raises(SystemdError, match="WATCHDOG_USEC='soon' is not a number"):
        systemd.watchdog_period({"WATCHDOG_USEC": "soon"})
    with pytest.raises(SystemdError, match="must be positive"):
        systemd.watchdog_period({"WATCHDOG_USEC": "0"})


async def test_watchdog_pings_every_half_period(autojump_clock: trio.testing.MockClock) -> None:
    directory = tempfile.mkdtemp(prefix="ar-", dir="/tmp")
    path = os.path.join(directory, "notify")
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000000"}
    period = systemd.watchdog_period(env)
    assert period == 10.0
    with trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        await receiver.bind(path)
        async with trio.open_nursery() as nursery:
            ping = partial(systemd.notify_watchdog, environ=env)
            await nursery.start(partial(systemd.run_watchdog, period, ping=ping))
            seen = []
            for _ in range(3):
                with trio.fail_after(60):
                    assert await receiver.recv(4096) == b"WATCHDOG=1"
                seen.append(trio.current_time())
            nursery.cancel_scope.cancel()
    assert [round(b - a, 3) for a, b in itertools.pairwise(seen)] == [10.0, 10.0]
    shutil.rmtree(directory)


def test_listen_fds_only_for_us_and_malformed_values_are_errors() -> None:
    pid = os.getpid()
    assert systemd.listen_fds({}) == []
    other = {"LISTEN_FDS": "1", "LISTEN_PID": str(pid + 1)}
    assert systemd.listen_fds(other) == []
    assert other == {"LISTEN_FDS": "1", "LISTEN_PID": str(pid + 1)}  # not ours: left alone
    none = {"LISTEN_FDS": "0", "LISTEN_PID": str(pid), "LISTEN_FDNAMES": ""}
    assert systemd.listen_fds(none) == []
    assert none == {}  # ours: consumed so children do not see it
    with pytest.raises(SystemdError, match="malformed socket activation"):
        systemd.listen_fds({"LISTEN_FDS": "one", "LISTEN_PID": str(pid)})
    with pytest.raises(SystemdError, match="malformed socket activation"):
        systemd.listen_fds({"LISTEN_FDS": "-1", "LISTEN_PID": str(pid)})


# What systemd does before exec: the socket as fd 3, LISTEN_PID = the exec'd process, LISTEN_FDS=1.
SYSTEMD_EXEC = """
import os, sys
os.dup2(int(sys.argv[1]), 3)
os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="agentroomd.socket")
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2], sys.argv[3]])
"""


def socket_activated(fd: int, code: str) -> list[str]:
    return [sys.executable, "-c", SYSTEMD_EXEC, str(fd), code, str(PROJECT_ROOT)]


CHILD = """
import os, sys
sys.path.insert(0, sys.argv[1])
from agentroomd.systemd import activated_control_socket
sock = activated_control_socket()
conn, _ = sock.accept()
leftover = sorted(k for k in os.environ if k.startswith("LISTEN_"))
conn.sendall(f"activated family={sock.family.name} inheritable={os.get_inheritable(3)} env={leftover}".encode())
conn.close()
"""


def test_socket_activation_hands_over_the_listening_control_socket() -> None:
    directory = tempfile.mkdtemp(prefix="ar-", dir="/tmp")
    path = os.path.join(directory, "ctl.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen()
        fd = listener.fileno()
        child = subprocess.Popen(socket_activated(fd, CHILD), pass_fds=(fd,))
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.settimeout(10)
                client.connect(path)
                answer = client.recv(4096).decode()
            assert child.wait(timeout=10) == 0
        finally:
            child.kill()
            child.wait()
    assert answer == "activated family=AF_UNIX inheritable=False env=[]"
    shutil.rmtree(directory)


def test_socket_activation_of_the_wrong_kind_of_socket_is_an_error() -> None:
    # fd 3 of a child that gets a datagram socket there instead of a listening stream socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
        code = (
            "import sys; sys.path.insert(0, sys.argv[1])\n"
            "from agentroomd.systemd import activated_control_socket, SystemdError\n"
            "try:\n    activated_control_socket()\nexcept SystemdError as exc:\n    print(exc)\n"
        )
        fd = dgram.fileno()
        out = subprocess.run(socket_activated(fd, code), pass_fds=(fd,), capture_output=True, text=True, timeout=10)
    assert out.stdout.strip() == "socket-activated fd 3 is not a Unix stream socket; check ListenStream= in the unit"


# ----------------------------------------------------------------------------------------------- units


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as sections of repeated keys; fails on anything that is not INI-like."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"line {number}: key outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep and key.strip() and key.strip().replace("-", "").isalnum(), f"line {number}: not KEY=VALUE: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_bundled_units_are_the_rendered_ones() -> None:
    assert (CONTRIB / "agentroomd.service").read_text() == systemd.render_service_unit()
    assert (CONTRIB / "agentroomd.socket").read_text() == systemd.render_socket_unit()


def test_service_unit_has_the_required_keys_and_only_user_safe_hardening() -> None:
    unit = parse_unit((CONTRIB / "agentroomd.service").read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    for key, value in {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "RestartPreventExitStatus": "2 3",  # bad config, already running: restarting cannot help
        "WatchdogSec": "60",
        "ExecStart": "%h/.local/bin/agentroomd run",
        "NoNewPrivileges": "yes",
        "UMask": "0077",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
    }.items():
        assert service[key] == [value], key
    assert "AF_NETLINK" in service["RestrictAddressFamilies"][0].split()  # cloudflared enumerates interfaces
    # These need mount/user namespaces in user units and would break agent CLIs writing under $HOME.
    assert not {"ProtectHome", "ProtectSystem", "PrivateTmp", "PrivateDevices", "RuntimeDirectory"} & service.keys()
    assert unit["Install"]["WantedBy"] == ["default.target"]
    sock = parse_unit((CONTRIB / "agentroomd.socket").read_text())
    assert sock["Socket"]["ListenStream"] == ["%t/agentroom/agentroomd.sock"]
    assert sock["Socket"]["SocketMode"] == ["0600"]
    assert sock["Install"]["WantedBy"] == ["sockets.target"]


def test_install_service_writes_the_unit_and_prints_the_commands(tmp_path: Path) -> None:
    env = {"PATH": "/opt/my tools/bin:/usr/bin", "AGENTROOM_HOME": "/srv/agentroom 100%", "USER": "ada"}
    commands = systemd.install_service(tmp_path, environ=env)
    unit_path = tmp_path / ".config" / "systemd" / "user" / "agentroomd.service"
    unit = parse_unit(unit_path.read_text())
    assert unit["Service"]["ExecStart"] == [f"{sys.executable} -m agentroomd run"]
    assert unit["Service"]["Environment"] == [
        "PYTHONUNBUFFERED=1",
        '"PATH=/opt/my tools/bin:/usr/bin"',
        '"AGENTROOM_HOME=/srv/agentroom 100%%"',
    ]
    assert oct(unit_path.stat().st_mode & 0o777) == "0o644"
    assert commands.splitlines()[1:3] == [
        "systemctl --user daemon-reload",
        "systemctl --user enable --now agentroomd.service",
    ]
    assert "loginctl enable-linger ada" in commands
    assert not (unit_path.parent / "agentroomd.socket").exists()


def test_install_service_with_socket_activation_into_a_given_dir(tmp_path: Path) -> None:
    commands = systemd.install_service(
        unit_dir=tmp_path, environ={"PATH": "/usr/bin"}, with_socket=True, socket_path=Path("/run/me/ar.sock")
    )
    assert parse_unit((tmp_path / "agentroomd.socket").read_text())["Socket"]["ListenStream"] == ["/run/me/ar.sock"]
    assert "systemctl --user enable --now agentroomd.socket" in commands
    assert (tmp_path / "agentroomd.service").exists()
    # no USER known: the printed command must still work when pasted into a shell ('$USER' would not expand)
    [linger] = [line for line in commands.splitlines() if line.startswith("loginctl")]
    expanded = subprocess.run(["/bin/sh", "-c", f"set -- {linger}; echo $3"], env={"USER": "ada"},
                              capture_output=True, text=True, check=True)
    assert expanded.stdout.strip() == "ada"


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    units = [CONTRIB / "agentroomd.service", CONTRIB / "agentroomd.socket"]
    installed = tmp_path / "installed"
    systemd.install_service(unit_dir=installed, environ={"PATH": os.environ["PATH"]}, with_socket=True)
    analyzer = shutil.which("systemd-analyze")
    if analyzer is None:
        # No systemd here: the units must at least be well-formed INI with their sections.
        for unit in [*units, installed / "agentroomd.service", installed / "agentroomd.socket"]:
            assert {"Unit", "Install"} <= parse_unit(unit.read_text()).keys()
        return
    home = tmp_path / "home"
    (home / ".local" / "bin").mkdir(parents=True)
    fake = home / ".local" / "bin" / "agentroomd"  # %h/.local/bin/agentroomd must exist for verify
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    (tmp_path / "run").mkdir()
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    for group in (units, [installed / "agentroomd.service", installed / "agentroomd.socket"]):
        out = subprocess.run(
            [analyzer, "verify", "--user", *map(str, group)], env=env, capture_output=True, text=True, timeout=30
        )
        # verify exits 0 even for unknown keys or bad values: it only warns, so no output is the bar.
        assert (out.returncode, out.stderr, out.stdout) == (0, "", "")


def test_install_service_refuses_a_home_the_daemon_would_refuse(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    units = tmp_path / "units"
    result = subprocess.run(
        [sys.executable, "-m", "agentroomd", "install-service", "--home", str(shared), "--unit-dir", str(units)],
        capture_output=True, text=True, check=False, timeout=30,
    )
    assert result.returncode == 2 and "shared directory" in result.stderr
    assert not units.exists()
