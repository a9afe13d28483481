"""Defects found by reading rooms, handlers and the tunnel supervisor against their docs; one test each."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio
from support.env import AGENTROOMCTL
from support.fake_cloudflared import install_fake_cloudflared
from support.handlers import ECHO
from support.home import homes
from support.raw_control import RawClient
from support.waiting import eventually

from agentroomd.handlers import HandlerLimits, HandlerOutcome, run_handler

FAST_TUNNEL = "[tunnel]\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.1\nkill_grace_s = 0.5\n"
ENV = {"AGENTROOM_FROM": "peerPK", "AGENTROOM_ROOM": "room1", "AGENTROOM_MSG_ID": "m-1", "AGENTROOM_TURN": "1"}


async def test_a_handler_whose_child_left_its_group_still_replies_at_once(scratch: Path) -> None:
    # The child starts its own session (setsid, as a helper server or `setsid cmd &` would) and keeps the
    # handler's stdout: no group kill reaches it, and waiting for EOF used to last until the timeout,
    # which then threw the reply away.
    pidfile = scratch / "detached.pid"
    detach = f"import os, time; os.setsid(); open('{pidfile}', 'w').write(str(os.getpid())); time.sleep(60)"
    cmd = f'{sys.executable} -c "{detach}" & while [ ! -s {pidfile} ]; do sleep 0.02; done; echo quick'
    try:
        result = await run_handler(cmd, "hi", ENV, HandlerLimits(timeout_s=8.0, kill_grace_s=0.2))
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert (result.outcome, result.reply, result.exit_code) == (HandlerOutcome.REPLY, "quick", 0)
    assert not result.timed_out
    assert result.duration_s < 4



async def test_a_handler_whose_detached_child_holds_an_unread_message_on_stdin_still_finishes(scratch: Path) -> None:
    # A Python handler that starts a helper in a session of its own (Popen(start_new_session=True) inherits
    # stdin) and replies without reading a long message: feeding the rest of the message used to wait for
    # that helper forever, past any timeout, and the peer's later messages were never handled.
    pidfile = scratch / "helper.pid"
    helper = (f"import subprocess; p = subprocess.Popen(['sleep', '60'], start_new_session=True); "
              f"open('{pidfile}', 'w').write(str(p.pid)); print('hi')")
    try:
        with trio.fail_after(8):
            result = await run_handler(f'{sys.executable} -c "{helper}"', "x" * (1 << 20), ENV,
                                       HandlerLimits(timeout_s=4.0, kill_grace_s=0.2))
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert (result.outcome, result.reply, result.exit_code) == (HandlerOutcome.REPLY, "hi", 0)
    assert result.duration_s < 4

def test_a_saved_room_or_handler_with_an_impossible_value_is_reported_and_the_daemon_still_starts() -> None:
    with homes("") as (host,):
        host.start()
        bad = host.json("room", "open", "--no-tunnel", "--on-message", ECHO)
        good = host.json("room", "open", "--no-tunnel", "--name", "good")
        assert host.stop() == 0
        room_file = host.path / "rooms" / bad["room_id"] / "room.json"
        record = json.loads(room_file.read_text())
        room_file.write_text(json.dumps({**record, "max_turns": -1}))  # valid JSON, but no room has it
        attached = host.path / "handlers" / f"{'A' * 43}.json"
        blank_command = {"peer": "A" * 43, "on_message": "  ", "max_turns": 0, "seed": None, "created_at": 1}
        attached.write_text(json.dumps({**blank_command, "version": 1}))
        host.start()  # used to crash: "ValueError('max_turns must be >= 0, got -1')"
        rooms = {r["room_id"]: r for r in host.json("room", "list")["rooms"]}
        assert rooms[good["room_id"]]["state"] == "waiting"
        broken = rooms[bad["room_id"]]
        assert broken["state"] == "failed"
        assert str(room_file) in broken["last_error"] and "max_turns" in broken["last_error"]
        [unreadable] = host.events("handler_unreadable")
        assert str(attached) in unreadable["error"] and "empty" in unreadable["error"]
        assert host.json("status")["services"]["rooms"]["handlers"] == []
        assert host.json("room", "stop", bad["room_id"]) == {"stopped": [bad["room_id"]]}


def test_a_room_whose_tunnel_cannot_start_after_a_restart_says_so_in_its_last_error(tmp_path: Path) -> None:
    # e.g. the daemon now runs under systemd with another PATH: the saved invite names a dead quick-tunnel URL,
    # and retrying cannot help (FATAL). `last_error` ("what is wrong now") used to stay null.
    fake = install_fake_cloudflared(tmp_path)
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake.binary)) as (host,):
        host.start()
        room = host.json("room", "open")
        assert room["last_error"] is None
        assert host.stop() == 0
        host.start(extra_env={"AGENTROOM_CLOUDFLARED": str(tmp_path / "gone")})
        status = eventually(lambda: (r := host.room())["tunnel"]["state"] == "fatal" and r, what="the fatal tunnel")
        assert status["last_error"] is not None
        assert "is not an executable file" in status["last_error"] and "install cloudflared" in status["last_error"]
    fake.assert_none_left()


def test_stopping_a_room_that_is_still_opening_ends_the_open_at_once(tmp_path: Path) -> None:
    # The tunnel is slow to give a URL, so `room open` waits (up to 30 s + 2 x url_timeout_s); meanwhile
    # `room stop --all` (a script cleaning up, another terminal) stops that room. The open used to wait out
    # its whole timeout for an invite that could no longer come, then blame the tunnel.
    fake = install_fake_cloudflared(tmp_path)
    fake.set_mode("silent")
    config = FAST_TUNNEL + "url_timeout_s = 20.0\n"
    with homes(config, AGENTROOM_CLOUDFLARED=str(fake.binary)) as (host,):
        host.start()
        opener = subprocess.Popen([AGENTROOMCTL, "--home", str(host.path), "--no-autostart", "--json", "room", "open"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=host.env)
        try:
            [room] = eventually(lambda: (rooms := host.json("room", "list")["rooms"]) and fake.running() and rooms,
                                what="the room to be opening, its tunnel started")
            assert room["state"] == "starting"
            assert host.json("room", "stop", "--all") == {"stopped": [room["room_id"]]}
            out, _ = opener.communicate(timeout=8)
        finally:
            if opener.poll() is None:
                opener.kill()
                opener.communicate()
        error = json.loads(out)["error"]
        assert opener.returncode != 0 and "stopped" in error["message"]
        assert host.json("room", "list") == {"rooms": []}
    fake.assert_none_left()


def test_a_room_invite_lifetime_past_a_safe_expiry_is_invalid_params() -> None:
    # agentroomctl refuses it itself; over the socket it used to fail late, as InvalidState with a traceback
    with homes("") as (host,):
        host.start()
        client = RawClient(host.path / "agentroomd.sock")
        try:
            error = client.call("room.open", {"tunnel": False, "ttl_ms": 2**53})["error"]
        finally:
            client.close()
        assert error["data"]["type"] == "jsonrpc.InvalidParams", error
        assert error["data"]["errors"] == ["ttl_ms: too long, the invite's expiry must stay below 2**53 ms"]
        assert host.json("room", "list")["rooms"] == []
        assert "Traceback" not in host.log()


def test_a_copied_room_directory_is_reported_and_the_original_room_keeps_working() -> None:
    # Two directories naming one room: both were hosted, the copy hid the original in the daemon's table
    # (one of them failed on the port for ever and `room stop` could not reach it).
    with homes("") as (host,):
        host.start()
        room = host.json("room", "open", "--no-tunnel")
        assert host.stop() == 0
        rooms_dir = host.path / "rooms"
        shutil.copytree(rooms_dir / room["room_id"], rooms_dir / "copy-of-room")
        host.start()
        listed = {r["room_id"]: r for r in host.json("room", "list")["rooms"]}
        assert set(listed) == {room["room_id"], "copy-of-room"}
        assert listed[room["room_id"]]["state"] == "waiting" and listed[room["room_id"]]["port"] == room["port"]
        copy = listed["copy-of-room"]
        assert copy["state"] == "failed" and f"names room {room['room_id']!r}" in copy["last_error"]
        host.json("room", "stop", "copy-of-room")
        assert not (rooms_dir / "copy-of-room").exists()
        assert [r["room_id"] for r in host.json("room", "list")["rooms"]] == [room["room_id"]]


def test_a_cloudflared_this_machine_cannot_run_fails_the_room_at_once(tmp_path: Path) -> None:
    # A binary for another machine (or a script without its #! line) fails to start every time: the room
    # used to retry it in BACKOFF until `room open` timed out (30 s plus twice url_timeout_s).
    foreign = tmp_path / "cloudflared"
    foreign.write_bytes(b"\x7fELF\x02\x01\x01 built for some other machine")
    foreign.chmod(0o755)
    with homes("", AGENTROOM_CLOUDFLARED=str(foreign)) as (host,):
        host.start()
        started = time.monotonic()
        refused = host.ctl("--json", "room", "open", check=False)
        assert time.monotonic() - started < 15
        error = json.loads(refused.stdout)["error"]
        assert (refused.returncode, error["type"]) == (1, "agentroom.TunnelUnavailable")
        assert "Exec format error" in error["message"] and "not a program this machine can run" in error["message"]
        assert host.json("room", "list") == {"rooms": []}


async def test_a_handler_stopped_at_its_timeout_gets_its_grace_even_behind_a_shell(scratch: Path) -> None:
    # `sh -c "prog; echo"` keeps the shell as the group's leader, and the shell dies at once on SIGTERM;
    # the SIGKILL of the rest of the group used to follow right away, so `prog`'s own cleanup (here, a
    # TERM handler that takes 0.3 s) never ran: kill_grace_s covered the shell only.
    cleaned = scratch / "cleaned"
    prog = (
        "import signal, sys, time\n"
        "def done(*_):\n"
        f"    time.sleep(0.3); open({str(cleaned)!r}, 'w').write('ok'); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, done)\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    script = scratch / "slow_cleanup.py"
    script.write_text(prog)
    limits = HandlerLimits(timeout_s=1.0, kill_grace_s=5.0)
    result = await run_handler(f"{sys.executable} {script}; echo after", "hi", ENV, limits)
    assert result.timed_out
    assert cleaned.read_text() == "ok"
    assert result.duration_s < 4  # the group was gone after the cleanup: no need to wait out the grace
