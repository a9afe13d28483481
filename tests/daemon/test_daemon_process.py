"""agentroomd as a process: one per home, crash recovery, clean shutdown, refusing bad state."""

import os
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ctl import ctl, json_out
from support.env import AGENTROOMD, isolated_env
from support.processes import DaemonProcess, home_dir, running_daemon
from support.raw_control import RawClient


@pytest.fixture
def home() -> Iterator[Path]:
    with home_dir() as path:
        yield path


def test_a_second_daemon_for_the_same_home_is_refused(home: Path) -> None:
    with running_daemon(home) as first:
        second = DaemonProcess(home)
        assert second.wait_exit() == 3
        refused = [event for event in second.log_events() if event["event"] == "already_running"]
        assert refused and refused[0]["pid"] == first.process.pid
        assert "already running" in refused[0]["error"]
        # The first one is untouched and still answers.
        assert json_out(ctl(home, "--json", "--no-autostart", "status"))["pid"] == first.process.pid


def test_after_kill_9_the_stale_socket_is_replaced_and_the_identity_kept(home: Path) -> None:
    with running_daemon(home) as first:
        pk = json_out(ctl(home, "--json", "whoami"))["pk"]
        first.process.send_signal(signal.SIGKILL)
        first.wait_exit()
    assert stat.S_ISSOCK((home / "agentroomd.sock").lstat().st_mode)  # left behind by the dead daemon
    with running_daemon(home) as second:
        assert any(event["event"] == "control_stale_socket_removed" for event in second.log_events())
        whoami = json_out(ctl(home, "--json", "--no-autostart", "whoami"))
        assert whoami["pk"] == pk


def test_sigterm_ends_subscriptions_removes_the_socket_and_exits_0(home: Path) -> None:
    daemon = DaemonProcess(home).wait_ready()
    listener = RawClient(home / "agentroomd.sock")
    try:
        reply = listener.call("message.subscribe", {"since": 0})
        subscription = reply["result"]["subscription"]
        daemon.process.send_signal(signal.SIGTERM)
        closed = listener.read()
        assert closed["method"] == "message.closed"
        assert closed["params"]["subscription"] == subscription
        assert closed["params"]["error"]["data"]["type"] == "agentroom.ShuttingDown"
        assert closed["params"]["error"]["data"]["resume_from"] == 0
        assert listener.at_eof()
    finally:
        listener.close()
    assert daemon.wait_exit() == 0
    assert not (home / "agentroomd.sock").exists()
    events = [event["event"] for event in daemon.log_events()]  # every line is JSON
    assert events[-2:] == ["shutdown_phase", "stopped"] and "stopping" in events
    assert (home / "agentroomd.lock").read_text() == ""  # released (a restart needs no cleanup)


def test_a_corrupt_identity_file_is_a_clear_error_and_is_left_alone(home: Path) -> None:
    corrupt = b'{"ed25519_pk": "AAAA", "ed25519_sk": "BBBB"}'
    (home / "identity.json").write_bytes(corrupt)
    daemon = DaemonProcess(home)
    assert daemon.wait_exit() == 1
    errors = [event for event in daemon.log_events() if event["level"] == "error"]
    assert errors and str(home / "identity.json") in errors[-1]["error"]
    assert "corrupt identity file" in errors[-1]["error"]
    assert (home / "identity.json").read_bytes() == corrupt
    assert not (home / "agentroomd.sock").exists()


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("[daemon\n", {}, "invalid TOML"),
        ("[daemon]\nmax_control_clients = 'many'\n", {}, "[daemon] max_control_clients: expected an integer"),
        ("[daemon]\nlog_levl = 'debug'\n", {}, "[daemon] unknown key log_levl"),
        ("[deamon]\n", {}, "unknown section [deamon]"),
        ("[relay]\nport = 'x'\n", {}, "port"),
        ("", {"AGENTROOM_DAEMON_SHUTDOWN_GRACE_S": "-1"}, "AGENTROOM_DAEMON_SHUTDOWN_GRACE_S"),
    ],
)
def test_bad_config_stops_the_daemon_naming_where_and_what(
    home: Path, text: str, env: dict[str, str], expected: str
) -> None:
    (home / "agentroom.toml").write_text(text)
    daemon = DaemonProcess(home, env=isolated_env(**env))
    assert daemon.wait_exit() == 2
    error = daemon.log_events()[-1]
    assert error["event"] == "config_invalid" and expected in error["error"]
    if not env:
        assert str(home / "agentroom.toml") in error["error"]
    assert not (home / "identity.json").exists()


def test_config_file_option_and_a_non_socket_in_the_way(home: Path) -> None:
    other = home / "elsewhere.toml"
    other.write_text("[daemon]\njournal_keep = 0\n")
    daemon = DaemonProcess(home, "--config", str(other))
    assert daemon.wait_exit() == 2
    assert str(other) in daemon.log_events()[-1]["error"]

    (home / "agentroomd.sock").write_text("not a socket")
    blocked = DaemonProcess(home)
    assert blocked.wait_exit() == 1
    assert "is not a socket" in blocked.log_events()[-1]["error"]
    assert (home / "agentroomd.sock").read_text() == "not a socket"


def test_usage_errors_exit_2(home: Path) -> None:
    import subprocess

    result = subprocess.run([AGENTROOMD, "launch"], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2 and "invalid choice" in result.stderr
    assert os.listdir(home) == []


def test_daemon_stop_as_a_notification_stops_too(home: Path) -> None:
    daemon = DaemonProcess(home).wait_ready()
    client = RawClient(home / "agentroomd.sock")
    try:
        client.send_line(b'{"jsonrpc": "2.0", "method": "daemon.stop"}')  # no id: no answer, but it acts
        assert daemon.wait_exit() == 0
        assert client.at_eof()
    finally:
        client.close()
        daemon.close()
    assert not (home / "agentroomd.sock").exists()
