"""Tunnelled rooms with a fake `cloudflared` that prints the real log lines, dies on command and moves."""

import json
from pathlib import Path

from support.fake_cloudflared import install_fake_cloudflared
from support.handlers import ECHO
from support.home import homes
from support.waiting import eventually, wait_pid_exit

from ratchet.v3 import parse_invite_url

FAST_TUNNEL = "[tunnel]\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.1\nkill_grace_s = 0.5\n"


def invite_relay(room: dict[str, object]) -> str:
    return parse_invite_url(str(room["invite_url"]), int(str(room["created_at"]))).server_url


def test_the_public_url_goes_into_the_invite_and_every_tunnel_change_is_published(tmp_path: Path) -> None:
    fake = install_fake_cloudflared(tmp_path)
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


def test_a_tunnelled_room_reopens_after_a_restart_and_publishes_its_new_url(tmp_path: Path) -> None:
    fake = install_fake_cloudflared(tmp_path)
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake.binary)) as (host,):
        host.start()
        room = host.json("room", "open")
        assert host.stop() == 0
        assert wait_pid_exit(fake.pid(1), 5)
        host.start()
        again = eventually(lambda: (r := host.room())["public_url"] == "wss://fake-run-2.trycloudflare.com/ws" and r,
                           what="the reopened room's tunnel")
        assert (again["room_id"], again["port"]) == (room["room_id"], room["port"])
        assert invite_relay(again) == again["public_url"]  # nobody joined yet: the invite follows the URL


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
