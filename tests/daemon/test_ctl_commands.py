"""agentroomctl against real daemons: JSON shapes, autostart, exit codes, stop."""

import concurrent.futures
import os
import signal
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ctl import ctl, json_out
from support.env import AGENTROOMCTL, isolated_env
from support.processes import home_dir, lock_holder
from support.waiting import wait_pid_exit

from agentroomd.config import resolve_paths

B64U_KEY_CHARS = 43  # 32 bytes in unpadded base64url


@pytest.fixture
def home() -> Iterator[Path]:
    with home_dir() as path:
        yield path


def test_first_command_autostarts_a_daemon_and_reports_status_and_identity(home: Path) -> None:
    status = ctl(home, "--json", "status")
    assert status.returncode == 0, status.stderr
    document = json_out(status)
    assert document["daemon"] == "agentroomd"
    assert document["protocol"] == 1
    assert document["home"] == str(home)
    assert document["socket"] == str(home / "agentroomd.sock")
    assert document["journal"] == {"last_cursor": 0, "oldest_cursor": 1}
    assert isinstance(document["pid"], int) and document["pid"] == lock_holder(home)

    # Global flags after the command word work the same way, and the same daemon answers.
    whoami = ctl(None, "whoami", "--home", str(home), "--json")
    assert whoami.returncode == 0, whoami.stderr
    identity = json_out(whoami)
    assert identity["pk"] == document["pk"] and len(identity["pk"]) == B64U_KEY_CHARS
    assert identity["identity_path"] == str(home / "identity.json")
    assert json_out(ctl(home, "status", "--json"))["pid"] == document["pid"]

    human = ctl(home, "whoami")
    assert human.stdout.strip() == identity["pk"]
    text = ctl(home, "status").stdout  # for people: words, not Python's reprs of the JSON
    assert "  sessions peers=0  relays=none  counters=received 0, sent 0," in text
    assert "  rooms    rooms=0  handlers=none  serving=no" in text
    assert not any(mark in text for mark in ("{'", "[]", "False", "None"))

    assert stat.S_IMODE((home / "identity.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "agentroomd.sock").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert '"event":"ready"' in (home / "agentroomd.log").read_text()  # the autostarted daemon logs there


def test_no_autostart_refuses_and_says_how_to_start(home: Path) -> None:
    result = ctl(home, "--no-autostart", "status")
    assert result.returncode == 3
    assert f"agentroomd run --home {home}" in result.stderr
    assert not (home / "identity.json").exists()  # nothing was started
    as_json = json_out(ctl(home, "status", "--no-autostart", "--json"))
    assert as_json["error"]["type"] == "agentroomctl.DaemonUnreachable" and as_json["error"]["exit_code"] == 3


def test_concurrent_autostarts_end_with_one_daemon(home: Path) -> None:
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: ctl(home, "--json", "status"), range(3)))
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    assert len({json_out(r)["pid"] for r in results}) == 1


def test_room_commands_on_a_daemon_without_rooms(home: Path) -> None:
    listed = ctl(home, "--json", "room", "list")
    assert listed.returncode == 0 and json_out(listed) == {"rooms": []}
    stopped = ctl(home, "--json", "room", "stop", "--all")
    assert stopped.returncode == 0 and json_out(stopped) == {"stopped": []}
    missing = ctl(home, "--json", "room", "status", "nosuchroom")
    assert missing.returncode == 4


def test_session_commands_fail_with_the_exit_code_scripts_rely_on(home: Path) -> None:
    dead_relay = ctl(home, "--json", "invite", "create", "--ttl", "2h", "--relay", "ws://127.0.0.1:9/ws")
    assert dead_relay.returncode == 6
    assert json_out(dead_relay)["error"]["type"] == "agentroom.RelayUnreachable"
    sent = ctl(home, "send", "somepeer", "-", stdin="hello\n")
    assert sent.returncode == 4 and "no peer 'somepeer'" in sent.stderr
    assert ctl(home, "invite", "accept", "agentroom://invite/x").returncode == 7
    peers = ctl(home, "--json", "peers")
    assert peers.returncode == 0 and json_out(peers) == {"peers": []}


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["invite", "create", "--ttl", "soon"],
        ["invite", "create", "--ttl", "0s"],
        ["listen", "--count", "0"],
        ["listen", "--since", "-1"],
        ["listen", "--timeout", "nan"],
        ["send", "onlypeer"],
        [],
    ],
)
def test_bad_arguments_exit_2_without_starting_a_daemon(home: Path, argv: list[str]) -> None:
    result = ctl(home, *argv)
    assert result.returncode == 2, result.stderr
    assert "agentroomctl" in result.stderr or "usage" in result.stderr
    assert lock_holder(home) is None


def test_send_rejects_an_empty_message_and_non_utf8_stdin(home: Path) -> None:
    assert ctl(home, "send", "peer", "-", stdin="").returncode == 2
    result = ctl(home, "send", "peer", "")
    assert result.returncode == 2 and "empty" in result.stderr
    binary = subprocess.run(
        [AGENTROOMCTL, "--home", str(home), "send", "peer", "-"],
        input=b"caf\xe9\n", capture_output=True, env=isolated_env(), timeout=30, check=False,
    )
    assert binary.returncode == 2 and b"not UTF-8" in binary.stderr


def test_listen_timeout_exits_0_and_a_missed_count_exits_5(home: Path) -> None:
    quiet = ctl(home, "listen", "--json", "--timeout", "0.2")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == ""
    short = ctl(home, "listen", "--count", "2", "--timeout", "0.2", "--since", "0")
    assert short.returncode == 5
    assert "received 0 of 2 messages" in short.stderr


def test_stop_waits_until_the_daemon_is_gone(home: Path) -> None:
    pid = json_out(ctl(home, "--json", "status"))["pid"]
    stopped = ctl(home, "--json", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert json_out(stopped) == {"stopped": True, "running": False, "pid": pid}
    assert wait_pid_exit(pid, 0)  # already gone when stop returned
    assert not (home / "agentroomd.sock").exists()
    assert lock_holder(home) is None
    again = ctl(home, "--json", "stop")
    assert again.returncode == 0 and json_out(again) == {"stopped": False, "running": False}
    assert lock_holder(home) is None  # stop never autostarts


def test_autostart_failure_shows_the_daemons_error_and_log_file(home: Path) -> None:
    (home / "identity.json").write_text('{"ed25519_pk": "trunc')
    result = ctl(home, "status")
    assert result.returncode == 3
    assert "corrupt identity file" in result.stderr and str(home / "identity.json") in result.stderr
    assert str(home / "agentroomd.log") in result.stderr
    assert (home / "identity.json").read_text() == '{"ed25519_pk": "trunc'


def test_bad_config_stops_autostart_with_the_file_and_key(home: Path) -> None:
    (home / "agentroom.toml").write_text("[daemon]\nsubscriber_buffer = 'lots'\n")
    result = ctl(home, "status")
    assert result.returncode == 3
    assert f"{home / 'agentroom.toml'}: [daemon] subscriber_buffer" in result.stderr


def test_a_home_too_long_for_sun_path_uses_a_short_socket_both_sides_agree_on() -> None:
    with home_dir() as base:
        home = base / ("h" * 60) / ("o" * 60)
        result = ctl(home, "--json", "status")
        assert result.returncode == 0, result.stderr
        socket_path = Path(json_out(result)["socket"])
        assert socket_path == resolve_paths(home, env={}).socket_path
        assert socket_path.parent == Path(f"/tmp/agentroom-{os.getuid()}")
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        assert ctl(home, "--json", "stop").returncode == 0
        assert not socket_path.exists()


def test_after_the_daemon_is_killed_the_next_command_starts_a_fresh_one(home: Path) -> None:
    first = json_out(ctl(home, "--json", "status"))
    os.kill(first["pid"], signal.SIGKILL)
    assert wait_pid_exit(first["pid"], 10)
    second = ctl(home, "--json", "status")
    assert second.returncode == 0, second.stderr
    assert json_out(second)["pid"] != first["pid"]
    assert json_out(second)["pk"] == first["pk"]


def test_a_public_key_starting_with_a_dash_is_a_peer_not_an_option(home: Path) -> None:
    dashed = "-" + "A" * 42  # about 1 in 32 real keys starts with "-"
    sent = ctl(home, "--json", "send", dashed, "hi")
    assert sent.returncode == 4, sent.stderr  # reached the daemon: unknown peer, not a usage error
    assert dashed in json_out(sent)["error"]["message"]
