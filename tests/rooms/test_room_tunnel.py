"""Tunnelled rooms with a fake `cloudflared` that prints the real log lines, dies on command and moves."""

import json
import sys
from pathlib import Path

from rooms_support import ECHO, eventually, homes, wait_pid_exit

from ratchet.v3 import parse_invite_url

FAKE_CLOUDFLARED = r'''#!{python}
"""Fake cloudflared: logs like the real one (on stderr), obeys ./control ("die", "url NAME")."""
import os, sys, time
from pathlib import Path

here = Path(__file__).resolve().parent
runs = here / "runs.log"
with runs.open("a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
run = len(runs.read_text().splitlines())
(here / f"pid-{{run}}").write_text(str(os.getpid()))

def log(level, msg):
    sys.stderr.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f" {{level}} {{msg}}\n")
    sys.stderr.flush()

def box(url):
    lines = ["Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):", url]
    width = max(map(len, lines))
    log("INF", "+" + "-" * (width + 4) + "+")
    for line in lines:
        log("INF", "|  " + line + " " * (width - len(line)) + "  |")
    log("INF", "+" + "-" * (width + 4) + "+")

log("INF", "Thank you for trying Cloudflare Tunnel. ... Terms of Use (https://www.cloudflare.com/website-terms/)")
log("INF", "Requesting new quick Tunnel on trycloudflare.com...")
box(f"https://fake-run-{{run}}.trycloudflare.com")
log("INF", "Registered tunnel connection connIndex=0 connection=0e5b7c2a event=0 ip=198.41.200.13 location=ams01")
control = here / "control"
while True:
    if control.exists():
        command = control.read_text().strip()
        control.unlink()
        if command == "die":
            log("ERR", 'Serve tunnel error error="connection with edge closed" connIndex=0')
            sys.exit(1)
        if command.startswith("url "):
            box("https://" + command[4:] + ".trycloudflare.com")
    time.sleep(0.02)
'''
FAST_TUNNEL = "[tunnel]\nbackoff_initial_s = 0.05\nbackoff_max_s = 0.1\nkill_grace_s = 0.5\n"


def make_fake(directory: Path) -> Path:
    binary = directory / "cloudflared"
    binary.write_text(FAKE_CLOUDFLARED.format(python=sys.executable))
    binary.chmod(0o755)
    return binary


def command(directory: Path, text: str) -> None:
    (directory / "control.tmp").write_text(text)
    (directory / "control.tmp").rename(directory / "control")


def invite_relay(room: dict[str, object]) -> str:
    return parse_invite_url(str(room["invite_url"]), int(str(room["created_at"]))).server_url


def test_the_public_url_goes_into_the_invite_and_every_tunnel_change_is_published(tmp_path: Path) -> None:
    fake = make_fake(tmp_path)
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake)) as (host,):
        host.start()
        room = host.json("room", "open", "--on-message", ECHO)
        assert room["public_url"] == "wss://fake-run-1.trycloudflare.com/ws"
        assert invite_relay(room) == room["public_url"]  # guests get the public URL ...
        assert room["relay_url"] == f"ws://127.0.0.1:{room['port']}/ws"  # ... while we talk on loopback
        assert room["tunnel"]["state"] == "running" and room["tunnel"]["restarts"] == 0
        assert (tmp_path / "runs.log").read_text().split() == [
            "tunnel", "--url", f"http://127.0.0.1:{room['port']}", "--no-autoupdate"
        ]

        command(tmp_path, "die")  # the tunnel dies: restarted, new URL, fresh invite (nobody joined yet)
        moved = eventually(lambda: (r := host.room())["public_url"] == "wss://fake-run-2.trycloudflare.com/ws" and r,
                           what="the restarted tunnel's URL")
        assert moved["tunnel"]["restarts"] == 1
        assert moved["invite_url"] != room["invite_url"] and invite_relay(moved) == moved["public_url"]

        command(tmp_path, "url brand-new-words")  # the provider moves us without a restart
        renamed = eventually(lambda: (r := host.room())["public_url"] == "wss://brand-new-words.trycloudflare.com/ws"
                             and r, what="the new URL")
        assert renamed["tunnel"]["restarts"] == 1 and invite_relay(renamed) == renamed["public_url"]
        assert [e["url"] for e in host.events("tunnel_status") if e["state"] == "running"] == [
            "wss://fake-run-1.trycloudflare.com/ws",
            "wss://fake-run-2.trycloudflare.com/ws",
            "wss://brand-new-words.trycloudflare.com/ws",
        ]

        host.json("room", "stop")
        assert wait_pid_exit(int((tmp_path / "pid-2").read_text()), 5)  # the tunnel went with the room


def test_a_tunnelled_room_reopens_after_a_restart_and_publishes_its_new_url(tmp_path: Path) -> None:
    fake = make_fake(tmp_path)
    with homes(FAST_TUNNEL, AGENTROOM_CLOUDFLARED=str(fake)) as (host,):
        host.start()
        room = host.json("room", "open")
        assert host.stop() == 0
        assert wait_pid_exit(int((tmp_path / "pid-1").read_text()), 5)
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
