"""Defects found in the daemon's lifecycle, configuration and packaging, each pinned by the test that found it."""

import os
import shlex
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.ctl import ctl, json_out
from support.env import isolated_env
from support.home import homes
from support.processes import DaemonProcess, home_dir

from agentroomd.config import ConfigError, load_config, resolve_paths
from agentroomd.daemon import check_service_tables
from agentroomd.files import atomic_write
from agentroomd.handlers import HandlerLimits, HandlerOutcome, run_handler

CONTRIB_HANDLERS = Path(__file__).resolve().parents[2] / "contrib" / "handlers"


@pytest.fixture
def home() -> Iterator[Path]:
    with home_dir() as path:
        yield path


# ------------------------------------------------------------------------------- shared directories


def test_a_control_socket_in_a_shared_sticky_directory_leaves_that_directory_alone(home: Path, scratch: Path) -> None:
    # AGENTROOM_SOCKET=/tmp/agentroom.sock: /tmp is shared (1777). The daemon used to chmod it to 0700,
    # which as root locks every other user out of /tmp (and as a user fails the start). A stand-in for /tmp:
    shared = scratch / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    socket_path = shared / "ar.sock"
    env = isolated_env(AGENTROOM_SOCKET=str(socket_path))
    daemon = DaemonProcess(home, env=env).wait_ready()
    try:
        assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600  # the socket itself stays private
        assert json_out(ctl(home, "--json", "--no-autostart", "status", env=env))["pid"] == daemon.pid
    finally:
        daemon.close(graceful=True)
    assert daemon.process.returncode == 0


def test_a_home_that_is_a_shared_sticky_directory_is_refused_and_left_alone(scratch: Path) -> None:
    shared = scratch / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    daemon = DaemonProcess(shared)
    try:
        assert daemon.wait_exit() == 2
    finally:
        daemon.close()
    error = daemon.log_events()[-1]
    assert error["event"] == "config_invalid" and str(shared) in error["error"] and "shared" in error["error"]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert not (shared / "identity.json").exists()


def test_agentroomctl_refuses_a_shared_home_before_writing_anything_there(scratch: Path) -> None:
    # The daemon refused it, but autostart had already created its log file there (in /tmp itself, say).
    shared = scratch / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    result = ctl(shared, "--json", "whoami")
    assert result.returncode == 2
    error = json_out(result)["error"]
    assert error["type"] == "agentroomctl.Config" and "shared directory" in error["message"]
    assert list(shared.iterdir()) == []


# ------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("text", "env", "where"),
    [
        ("[daemon]\nshutdown_grace_s = nan\n", {}, "[daemon] shutdown_grace_s"),
        ("[client]\nack_timeout_s = nan\n", {}, "[client] ack_timeout_s"),
        ("[client]\nreconnect_initial_s = -nan\n", {}, "[client] reconnect_initial_s"),
        ("", {"AGENTROOM_DAEMON_SHUTDOWN_GRACE_S": "nan"}, "AGENTROOM_DAEMON_SHUTDOWN_GRACE_S"),
    ],
)
def test_nan_durations_are_refused_at_start(scratch: Path, text: str, env: dict[str, str], where: str) -> None:
    # A NaN grace passed every check and crashed the daemon on SIGTERM (trio refuses NaN timeouts),
    # skipping the graceful shutdown; a NaN ack timeout failed every send.
    path = scratch / "agentroom.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must be greater than 0") as caught:
        load_config(path, env=env)
    assert where in str(caught.value)


def test_the_daemon_refuses_a_nan_grace_instead_of_crashing_on_sigterm(home: Path) -> None:
    (home / "agentroom.toml").write_text("[daemon]\nshutdown_grace_s = nan\n")
    daemon = DaemonProcess(home)
    try:
        assert daemon.wait_exit() == 2
    finally:
        daemon.close()
    assert "shutdown_grace_s" in daemon.log_events()[-1]["error"]


@pytest.mark.parametrize(
    ("text", "env", "source"),
    [
        ('[client]\nrelays = "ws://127.0.0.1:8787/ws"\n', {}, "agentroom.toml"),
        ("", {"AGENTROOM_CLIENT_RELAYS": "ws://127.0.0.1:8787/ws"}, "environment variable AGENTROOM_CLIENT_RELAYS"),
    ],
)
def test_relays_given_as_one_string_is_one_clear_error(
    scratch: Path, text: str, env: dict[str, str], source: str
) -> None:
    # It used to be read character by character: "'w' is not a ws:// or wss:// URL; 's' is not ...".
    path = scratch / "agentroom.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    message = str(caught.value)
    assert source in message and "[client] relays" in message
    assert "expected an array" in message and "'ws://127.0.0.1:8787/ws'" in message
    assert "'w' is not" not in message and message.count(";") == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [("AGENTROOM_RELAY_PORT", "abc"), ("AGENTROOM_HANDLERS_TIMEOUT_S", "soon"), ("AGENTROOM_TUNNEL_KILL_GRACE", "1")],
)
def test_a_bad_environment_override_of_a_service_table_names_the_variable(
    scratch: Path, variable: str, value: str
) -> None:
    # The error named only agentroom.toml, which does not hold the bad value: the user searched the wrong place.
    paths = resolve_paths(scratch, env={})
    env = {variable: value}
    config = load_config(paths.config_file, env=env)
    with pytest.raises(ConfigError) as caught:
        check_service_tables(paths, config, env)
    assert f"environment variable {variable}" in str(caught.value)


def test_the_daemon_names_a_bad_environment_override_of_the_relay_table(home: Path) -> None:
    daemon = DaemonProcess(home, env=isolated_env(AGENTROOM_RELAY_PORT="abc"))
    try:
        assert daemon.wait_exit() == 2
    finally:
        daemon.close()
    error = daemon.log_events()[-1]
    assert error["event"] == "config_invalid" and "environment variable AGENTROOM_RELAY_PORT" in error["error"]


# ---------------------------------------------------------------------------------------- signals


def test_sighup_stops_the_daemon_gracefully(home: Path) -> None:
    # `agentroomd run` in a terminal that closes (an ssh session that drops) gets SIGHUP. It used to die at
    # once: no shutdown, the socket left behind, a room's tunnel left running until the next start.
    daemon = DaemonProcess(home).wait_ready()
    try:
        daemon.process.send_signal(signal.SIGHUP)
        assert daemon.wait_exit() == 0
    finally:
        daemon.close()
    assert not (home / "agentroomd.sock").exists()
    assert daemon.events("stopping")[0]["reason"] == "SIGHUP"
    assert daemon.events("stopped")


# ------------------------------------------------------------------------------------------- files


def test_state_files_are_private_whatever_umask_started_the_daemon(home: Path) -> None:
    # README: "Keys and state live in the home, 0600". client.db holds the ratchet sessions; started from a
    # shell with umask 022 (agentroomctl autostart) it was 0644.
    daemon = DaemonProcess(home, argv_prefix=["/bin/sh", "-c", 'umask 022; exec "$0" "$@"']).wait_ready()
    try:
        db_files = sorted(home.glob("client.db*"))
        assert db_files
        for path in db_files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    finally:
        daemon.close(graceful=True)


def test_handlers_create_files_with_the_umask_the_daemon_was_started_with(scratch: Path) -> None:
    # The daemon's own files are private (umask 077), but a handler is the user's agent working on the
    # user's files: what it creates gets the umask the daemon was started with (022 here), not 077.
    made = scratch / "made-by-handler"
    with homes("", "") as (host, guest):
        host.start(argv_prefix=["/bin/sh", "-c", 'umask 022; exec "$0" "$@"'])
        guest.start()
        room = host.json("room", "open", "--no-tunnel", "--on-message", f"touch {made}; echo made")
        guest.json("invite", "accept", room["invite_url"], "--seed", "make a file")
        [reply] = guest.listen(1)
        assert reply["text"] == "made"
        assert stat.S_IMODE(made.stat().st_mode) == 0o644
        assert stat.S_IMODE((host.path / "client.db").stat().st_mode) == 0o600  # ours stay private


def test_concurrent_atomic_writes_of_one_file_neither_fail_nor_tear(scratch: Path) -> None:
    # Rooms write their files from worker threads; two writers of one path shared one temporary name
    # (".NAME.tmp-PID"): one writer's rename failed with FileNotFoundError and the file could end up torn.
    target = scratch / "state.json"
    contents = {b"a" * 65536, b"b" * 17}
    errors: list[BaseException] = []
    torn: list[int] = []

    def writer(data: bytes) -> None:
        for _ in range(150):
            try:
                atomic_write(target, data)
            except OSError as exc:
                errors.append(exc)
            current = target.read_bytes()
            if current not in contents:
                torn.append(len(current))

    threads = [threading.Thread(target=writer, args=(data,)) for data in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and torn == []
    assert [path.name for path in scratch.iterdir()] == ["state.json"]  # no temporary file left behind


# -------------------------------------------------------------------------------------------- demo


def test_the_demo_ignores_the_users_agentroom_settings(scratch: Path) -> None:
    # With AGENTROOM_SOCKET set (a documented override), both demo daemons resolved to one socket: "bob" was
    # alice's daemon, and the demo failed with "this invite was created by our own identity".
    env = isolated_env(AGENTROOM_SOCKET=str(scratch / "mine.sock"), AGENTROOM_CLIENT_RELAYS='["ws://127.0.0.1:9/ws"]')
    done = subprocess.run(
        [sys.executable, "-m", "agentroomd.demo"], capture_output=True, text=True, timeout=120, check=False, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "plaintext found in them: 0 of 6 messages" in done.stdout
    assert not (scratch / "mine.sock").exists()
    assert os.listdir(scratch) == []


# ---------------------------------------------------------------------------------------- handlers


async def test_a_codex_handler_stopped_at_its_timeout_leaves_no_file_behind(scratch: Path) -> None:
    # The daemon ends a handler past `[handlers] timeout_s` with SIGTERM and SIGKILL to its group; codex.sh's
    # EXIT trap never ran then, so every timed-out run left an agentroom-codex.* file in $TMPDIR for good.
    fakes, tmp, state = scratch / "bin", scratch / "tmp", scratch / "state"
    fakes.mkdir()
    tmp.mkdir()
    (fakes / "codex").write_text(
        '#!/bin/sh\ncat >/dev/null\n[ -n "$FAKE_HANG" ] && exec sleep 30\n'
        'while [ "$1" != -o ]; do shift; done; echo "codex answer" >"$2"\n'
    )
    (fakes / "codex").chmod(0o755)
    env = {"PATH": f"{fakes}:/usr/bin:/bin", "HOME": str(scratch), "TMPDIR": str(tmp),
           "AGENTROOM_HANDLER_STATE": str(state)}  # fmt: skip
    command = shlex.quote(str(CONTRIB_HANDLERS / "codex.sh"))
    limits = HandlerLimits(timeout_s=1.0, kill_grace_s=5.0)
    extra = {"AGENTROOM_FROM": "peer"}
    hung = await run_handler(command, "hello", extra, limits, base_env={**env, "FAKE_HANG": "1"})
    assert hung.outcome is HandlerOutcome.TIMED_OUT
    assert os.listdir(tmp) == []
    answered = await run_handler(command, "again", extra, limits, base_env=env)
    assert answered.reply == "codex answer"
    assert os.listdir(tmp) == [] and os.listdir(state / "codex") == ["peer.txt"]  # the transcript only
