"""Tunnelled rooms with a fake `cloudflared` that prints the real log lines, dies on command and moves.

Every test here fails if it leaves a fake cloudflared running (the `fake` fixture checks at teardown).
"""

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fake_cloudflared import FakeCloudflared, install_fake_cloudflared
from support.handlers import ECHO
from support.home import homes
from support.raw_control import RawClient
from support.waiting import eventually, wait_pid_exit

from agentroomd.orphans import CHILD_RECORD_FILE
from ratchet.v3 import parse_invite_url

FAST_TUNNEL = "[tunnel]\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.1\nkill_grace_s = 0.5\n"


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeCloudflared]:
    fake = install_fake_cloudflared(tmp_path)
    yield fake
    fake.assert_none_left()


def invite_relay(room: dict[str, object]) -> str:
    return parse_invite_url(str(room["invite_url"]), int(str(room["created_at"]))).server_url


def test_the_public_url_goes_into_the_invite_and_every_tunnel_change_is_published(fake: FakeCloudflared) -> None:
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake.binary)) as (host,):
        host.start()
        room = host.json("room", "open", "--on-message", ECHO)
        assert room["public_url"] == "wss://fake-run-1.trycloudflare.com/ws"
        assert invite_relay(room) == room["public_url"]  # guests get the public URL ...
        assert room["relay_url"] == f"ws://127.0.0.1:{room['port']}/ws"  # ... while we talk on loopback
        assert room["tunnel"]["state"] == "running" and room["tunnel"]["restarts"] == 0
        assert [call["argv"] for call in fake.calls()] == [
            ["tunnel", "--url", f"http://127.0.0.1:{room['port']}", "--no-autoupdate"]
        ]

        fake.control("die")  # the tunnel dies: restarted, new URL, fresh invite (nobody joined yet)
        moved = eventually(lambda: (r := host.room())["public_url"] == "wss://fake-run-2.trycloudflare.com/ws" and r,
                           what="the restarted tunnel's URL")
        assert moved["tunnel"]["restarts"] == 1
        assert moved["invite_url"] != room["invite_url"] and invite_relay(moved) == moved["public_url"]

        fake.control("url brand-new-words")  # the provider moves us without a restart
        renamed = eventually(lambda: (r := host.room())["public_url"] == "wss://brand-new-words.trycloudflare.com/ws"
                             and r, what="the new URL")
        assert renamed["tunnel"]["restarts"] == 1 and invite_relay(renamed) == renamed["public_url"]
        assert [e["url"] for e in host.events("tunnel_status") if e["state"] == "running"] == [
            "wss://fake-run-1.trycloudflare.com/ws",
            "wss://fake-run-2.trycloudflare.com/ws",
            "wss://brand-new-words.trycloudflare.com/ws",
        ]

        host.json("room", "stop")
        assert wait_pid_exit(fake.pid(2), 5)  # the tunnel went with the room


def test_room_status_never_shows_a_new_tunnel_url_beside_the_old_invite(fake: FakeCloudflared) -> None:
    """A script reads `public_url` and `invite_url` from one status: they must name the same relay.

    The invite for a new URL takes a relay round trip to publish; until it is out, status keeps
    showing the URL the current invite names (polled as fast as the socket answers, so a window of
    even a millisecond is seen).
    """
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake.binary)) as (host,):
        host.start()
        room = host.json("room", "open")
        control = RawClient(host.path / "agentroomd.sock")
        try:
            fake.control("url moved-words")
            seen = set()
            deadline = time.monotonic() + 20
            while True:
                status = control.call("room.status", {"room_id": room["room_id"]})["result"]
                seen.add(status["public_url"])
                assert invite_relay(status) == status["public_url"], "a new URL beside the old invite"
                if status["public_url"] == "wss://moved-words.trycloudflare.com/ws":
                    break
                assert time.monotonic() < deadline, "the new URL never showed"
            assert seen == {room["public_url"], "wss://moved-words.trycloudflare.com/ws"}
        finally:
            control.close()
        host.json("room", "stop")


def test_a_tunnelled_room_reopens_after_a_restart_and_publishes_its_new_url(fake: FakeCloudflared) -> None:
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake.binary)) as (host,):
        host.start()
        room = host.json("room", "open")
        assert host.stop() == 0
        assert wait_pid_exit(fake.pid(1), 5)
        host.start()
        # Nobody joined yet, so the invite follows the new URL: a fresh one is published right after the
        # tunnel reports it (a relay round trip later), so wait for both.
        again = eventually(lambda: (r := host.room())["public_url"] == "wss://fake-run-2.trycloudflare.com/ws"
                           and invite_relay(r) == r["public_url"] and r, what="the reopened room's tunnel and invite")
        assert (again["room_id"], again["port"]) == (room["room_id"], room["port"])


def test_a_tunnel_left_running_by_a_killed_daemon_is_ended_when_the_daemon_restarts(fake: FakeCloudflared) -> None:
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake.binary)) as (host,):
        host.start()
        room = host.json("room", "open")
        record = host.path / "rooms" / room["room_id"] / CHILD_RECORD_FILE
        assert json.loads(record.read_text())["pid"] == fake.pid(1)  # written down while it runs
        host.kill9()  # no cleanup at all: the tunnel lives on in its own session
        assert fake.running() == [fake.pid(1)]

        host.start()
        assert wait_pid_exit(fake.pid(1), 10)
        again = eventually(lambda: (r := host.room())["public_url"] == "wss://fake-run-2.trycloudflare.com/ws" and r,
                           what="the reopened room's new tunnel")
        assert invite_relay(again) == again["public_url"]
        assert fake.running() == [fake.pid(2)]  # exactly one tunnel for the room
        assert json.loads(record.read_text())["pid"] == fake.pid(2)
        events = [json.loads(line)["event"] for line in host.log().splitlines() if line.strip()]
        assert events.index("tunnel_orphan_killed") < events.index("room_reopened")  # before the room came back
        (killed,) = host.events("tunnel_orphan_killed")
        assert {key: killed[key] for key in ("room", "pid", "program")} == {
            "room": room["room_id"], "pid": fake.pid(1), "program": "cloudflared"
        }
        assert str(fake.binary) not in json.dumps(killed) and "--url" not in json.dumps(killed)

        host.json("room", "stop")
        assert wait_pid_exit(fake.pid(2), 10)
        assert not record.exists()  # reaped: nothing left to end at the next start


def test_a_recorded_pid_that_now_belongs_to_another_process_is_left_alone(fake: FakeCloudflared) -> None:
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake.binary)) as (host,):
        host.start()
        room = host.json("room", "open")
        host.kill9()
        os.killpg(fake.pid(1), signal.SIGKILL)  # the old tunnel died meanwhile ...
        assert wait_pid_exit(fake.pid(1), 10)
        record = host.path / "rooms" / room["room_id"] / CHILD_RECORD_FILE
        stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)  # ... and its pid taken (simulated)
        try:
            saved = json.loads(record.read_text())
            record.write_text(json.dumps({**saved, "pid": stranger.pid}))
            host.start()
            eventually(lambda: host.room()["public_url"] == "wss://fake-run-2.trycloudflare.com/ws",
                       what="the reopened room's tunnel")
            assert stranger.poll() is None  # not ours: its start time does not match the record
            (left,) = host.events("tunnel_orphan_left_alone")
            assert (left["pid"], left["reason"]) == (stranger.pid, "pid now belongs to another process")
            assert not host.events("tunnel_orphan_killed")
        finally:
            stranger.kill()
            stranger.wait()


def test_without_cloudflared_a_tunnelled_room_is_refused_with_the_ways_to_install_it(tmp_path: Path) -> None:
    with homes("", PATH=str(tmp_path)) as (host,):
        host.start()
        refused = host.ctl("--json", "room", "open", check=False)
        assert refused.returncode == 1
        error = json.loads(refused.stdout)["error"]
        assert error["type"] == "agentroom.TunnelUnavailable"
        assert "cloudflared not found" in error["message"] and "--no-tunnel" in error["message"]
        assert host.json("room", "list") == {"rooms": []}
        assert not list((host.path / "rooms").iterdir())  # nothing half-made is left behind
