"""Rooms survive their daemon: same port after a restart, the guest reconnects, no handler runs twice."""

import os
import signal
import socket

from support.handlers import ECHO, write_script
from support.home import homes
from support.waiting import eventually, port_is_open


def test_after_a_restart_the_room_has_its_port_and_the_guest_carries_on() -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        room = host.json("room", "open", "--no-tunnel", "--on-message", ECHO, "--seed", "welcome")
        guest.json("invite", "accept", room["invite_url"])
        host_pk = host.json("whoami")["pk"]
        [welcome] = guest.listen(1)  # the seed goes out once the guest has joined
        assert welcome["text"] == "welcome"
        guest.ctl("send", "--", host_pk, "one")
        [first] = guest.listen(1, since=welcome["cursor"])
        assert first["text"] == "echo: one"

        assert host.stop() == 0
        assert not port_is_open(room["port"])
        host.start()
        again = host.room()
        assert (again["room_id"], again["port"], again["state"]) == (room["room_id"], room["port"], "connected")
        assert again["handler"]["runs"] == 1  # the counters were saved with the room

        # The guest notices the relay is back by itself (backoff) and the conversation goes on.
        guest.ctl("send", "--", host_pk, "two")
        [second] = guest.listen(1, since=first["cursor"])
        assert second["text"] == "echo: two"  # and no second "welcome": the seed went out once
        after = host.room()
        assert after["messages"] == {"received": 2, "sent": 3} and after["handler"]["runs"] == 2


def test_a_handler_never_runs_twice_for_one_message_across_kill_9() -> None:
    with homes("", "") as (host, guest):
        handler = write_script(host.path / "slow.sh", f"""\
printf '%s\\n' "$AGENTROOM_MSG_ID" >> {host.path}/runs.log
message=$(cat)
if [ "$message" = hang ]; then echo $$ > {host.path}/hang.pid; exec sleep 60; fi
echo "ok $message"
""")
        host.start()
        guest.start()
        room = host.json("room", "open", "--no-tunnel", "--on-message", handler)
        guest.json("invite", "accept", room["invite_url"])
        host_pk = host.json("whoami")["pk"]
        hang = guest.json("send", "--", host_pk, "hang")
        pid_file = host.path / "hang.pid"
        handler_pid = int(eventually(lambda: pid_file.exists() and pid_file.read_text().strip(), what="the handler"))

        host.kill9()  # the daemon dies mid-run; its handler (own process group) outlives it: end that too
        os.killpg(os.getpgid(handler_pid), signal.SIGKILL)
        host.start()
        after = guest.json("send", "--", host_pk, "after")
        [reply] = guest.listen(1)
        assert reply["text"] == "ok after"
        runs = (host.path / "runs.log").read_text().split()
        assert runs == [hang["msg_id"], after["msg_id"]]  # the interrupted message was not handled again
        assert host.room()["port"] == room["port"]


def test_a_room_whose_port_is_taken_at_restart_shows_failed_and_comes_back_when_it_is_free() -> None:
    with homes("") as (host,):
        host.start()
        room = host.json("room", "open", "--no-tunnel")
        assert host.stop() == 0
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", room["port"]))
            squatter.listen(1)
            host.start()  # the daemon starts anyway: one room cannot hold the others hostage
            failed = eventually(lambda: (r := host.room())["state"] == "failed" and r, what="the failure")
            assert "in use" in failed["last_error"]
        back = eventually(lambda: (r := host.room())["state"] == "waiting" and r, what="the room to come back")
        assert back["port"] == room["port"] and back["last_error"] is None


def test_a_stopped_room_is_not_reconnected_to_after_a_restart() -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        room = host.json("room", "open", "--no-tunnel")
        guest.json("invite", "accept", room["invite_url"])
        host.json("room", "stop")
        assert host.stop() == 0
        host.start()
        relays = [r["url"] for r in host.json("status")["services"]["sessions"]["relays"]]
        assert room["relay_url"] not in relays  # its guest's session stays, its relay is gone for good
        assert [p["relay"] for p in host.json("peers")["peers"]] == [room["relay_url"]]
