"""Two real daemons driven by agentroomctl: a host opens a room, a guest accepts, the agents talk by themselves."""

import json

from support.handlers import ECHO, END_PREFIX, write_script
from support.home import homes
from support.waiting import eventually, port_is_open

from agentroomd.client.manager import MAX_PLAINTEXT_BYTES
from ratchet.v3 import parse_invite_url


def test_a_conversation_runs_to_max_turns_by_itself_then_the_room_stops_cleanly() -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        room = host.json("room", "open", "--no-tunnel", "--on-message", ECHO, "--name", "lobby")
        assert room["state"] == "waiting" and room["name"] == "lobby" and room["room_id"].startswith("room-")
        assert room["relay_url"] == f"ws://127.0.0.1:{room['port']}/ws" and room["public_url"] is None
        invite = parse_invite_url(room["invite_url"], room["created_at"])
        assert invite.server_url == room["relay_url"]  # no tunnel: the invite names the local relay
        assert invite.expires_at == room["invite_expires_at"]

        accepted = guest.json("invite", "accept", room["invite_url"], "--on-message", ECHO, "--seed", "hello",
                              "--max-turns", "3")
        host_pk = host.json("whoami")["pk"]
        guest_pk = guest.json("whoami")["pk"]
        assert accepted["peer"] == host_pk
        assert accepted["seed"]["status"] in ("delivered", "queued")
        assert accepted["handler"]["max_turns"] == 3 and accepted["handler"]["turns"] == 1  # the seed is turn 1

        # guest: seed, reply, reply (3 turns) then the end notice; the host echoes each of the three.
        heard_by_guest = [m["text"] for m in guest.listen(3)]
        assert heard_by_guest == ["echo: hello", "echo: echo: echo: hello", "echo: echo: echo: echo: echo: hello"]
        heard_by_host = [m["text"] for m in host.listen(4)]
        assert heard_by_host[:3] == ["hello", "echo: echo: hello", "echo: echo: echo: echo: hello"]
        assert heard_by_host[3].startswith(END_PREFIX)

        status = eventually(lambda: (s := host.room("lobby"))["state"] == "ended" and s, what="the room to end")
        assert status["peer"] == guest_pk
        assert status["messages"] == {"received": 4, "sent": 3}
        handler = status["handler"]
        assert (handler["runs"], handler["replies"], handler["failures"], handler["ended"]) == (3, 3, 0, "peer_ended")
        [guest_handler] = guest.json("status")["services"]["rooms"]["handlers"]
        assert guest_handler["peer"] == host_pk
        assert (guest_handler["turns"], guest_handler["runs"], guest_handler["ended"]) == (3, 2, "max_turns")

        # The end is final on both sides: a late message is not handed to the guest's handler.
        host.ctl("send", "--", guest_pk[:10], "anyone there?")
        late = eventually(lambda: (h := guest.json("status")["services"]["rooms"]["handlers"][0])["skipped"] == 2
                          and h, what="the late message to be skipped")  # the host's third echo, and this one
        assert late["runs"] == 2

        listed = host.json("room", "list")["rooms"]
        assert [r["room_id"] for r in listed] == [room["room_id"]]
        assert host.json("room", "stop", "lobby") == {"stopped": [room["room_id"]]}
        assert host.json("room", "list") == {"rooms": []}
        assert not port_is_open(room["port"])
        assert not (host.path / "rooms" / room["room_id"]).exists()
        assert host.json("status")["pid"] == host.pid  # nothing else was stopped


def test_handlers_that_fail_hang_babble_or_ignore_stdin_are_counted_and_the_conversation_goes_on() -> None:
    config = "[handlers]\ntimeout_s = 1.0\nkill_grace_s = 0.2\n"
    with homes(config, "") as (host, guest):
        handler = write_script(host.path / "moody.sh", """\
case "$(head -c 4)" in
  cras)  echo "about to fail" >&2; exit 3 ;;
  hang)  exec sleep 30 ;;
  huge)  exec python3 -c "import sys; sys.stdout.write('x' * 2_000_000)" ;;
  mute)  echo muted ;;
  *)     echo "fine" ;;
esac
""")
        # `mute` never reads the rest of its stdin (a 100 KB message): the runner must not care.
        host.start()
        guest.start()
        room = host.json("room", "open", "--no-tunnel", "--on-message", handler)
        guest.json("invite", "accept", room["invite_url"])
        host_pk = host.json("whoami")["pk"]
        for text in ("crash", "hang", "huge", "mute" + "m" * 100_000, "ok"):
            guest.ctl("send", "--", host_pk, "-", stdin=text)
        replies = [m["text"] for m in guest.listen(3, timeout=30)]
        assert len(replies[0]) <= MAX_PLAINTEXT_BYTES and set(replies[0]) == {"x"}  # cut to one message's limit
        assert replies[1:] == ["muted", "fine"]

        handler_stats = eventually(lambda: (h := host.room()["handler"])["runs"] == 5 and h, what="five runs")
        assert handler_stats["failures"] == 1
        assert handler_stats["timeouts"] == 1
        assert handler_stats["truncated"] == 1
        assert handler_stats["replies"] == 3
        ran = host.events("handler_ran")
        assert [e["outcome"] for e in ran] == ["failed", "timed_out", "reply", "reply", "reply"]
        assert ran[0]["exit_code"] == 3 and "about to fail" in ran[0]["stderr"]
        assert "crash" not in json.dumps(host.events("handler_ran"))  # message bodies stay out of the log


def test_bad_room_requests_get_clear_errors_and_change_nothing() -> None:
    with homes("") as (host,):
        host.start()
        usage = host.ctl("room", "open", "--no-tunnel", "--max-turns", "2", check=False)
        assert usage.returncode == 2 and "--max-turns needs --on-message" in usage.stderr
        room = host.json("room", "open", "--no-tunnel", "--name", "one")
        taken = host.ctl("--json", "room", "open", "--no-tunnel", "--port", str(room["port"]), check=False)
        assert taken.returncode == 1
        assert f"cannot start the room relay on port {room['port']}" in json.loads(taken.stdout)["error"]["message"]
        twice = host.ctl("--json", "room", "open", "--no-tunnel", "--name", "one", check=False)
        assert json.loads(twice.stdout)["error"]["type"] == "agentroom.AlreadyExists"
        missing = host.ctl("--json", "room", "status", "nope", check=False)
        assert missing.returncode == 4 and json.loads(missing.stdout)["error"]["type"] == "agentroom.NotFound"
        bad_name = host.ctl("room", "open", "--no-tunnel", "--name", "has space", check=False)
        assert bad_name.returncode == 2
        assert [r["room_id"] for r in host.json("room", "list")["rooms"]] == [room["room_id"]]
        attach = host.ctl("--json", "invite", "accept", "agentroom://invite/x", "--on-message", ECHO, check=False)
        assert attach.returncode == 7  # the invite is checked before any handler is attached
        serve = host.ctl("serve", "--on-message", ECHO, "--seed", "hi", check=False)
        assert serve.returncode == 2 and "--seed needs --to PEER" in serve.stderr
        assert host.json("room", "stop", "--all") == {"stopped": [room["room_id"]]}
        assert host.json("room", "stop") == {"stopped": []}


def test_a_corrupt_room_file_is_reported_by_name_and_never_replaced() -> None:
    with homes("") as (host,):
        host.start()
        room = host.json("room", "open", "--no-tunnel")
        host.stop()
        room_file = host.path / "rooms" / room["room_id"] / "room.json"
        room_file.write_text("{ not json")
        host.start()
        [broken] = host.json("room", "list")["rooms"]
        assert broken["state"] == "failed" and str(room_file) in broken["last_error"]
        assert room_file.read_text() == "{ not json"
        assert host.json("room", "stop", room["room_id"]) == {"stopped": [room["room_id"]]}
        assert not room_file.exists()


def test_a_guest_that_closes_the_session_ends_the_room_and_its_own_handler() -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        room = host.json("room", "open", "--no-tunnel", "--on-message", ECHO)
        accepted = guest.json("invite", "accept", room["invite_url"], "--on-message", ECHO, "--seed", "hello")
        host_pk = accepted["peer"]
        assert [m["text"] for m in guest.listen(1)] == ["echo: hello"]

        closed = guest.json("close", host_pk[:12])
        assert closed["peer"] == host_pk and closed["status"] in ("delivered", "queued")
        # our side: the attached handler's exchange ends at once, and says why
        [guest_handler] = guest.json("status")["services"]["rooms"]["handlers"]
        assert guest_handler["ended"] == "closed"
        # the host's room learns it from the authenticated CLOSE: the room ends, its handler says why
        status = eventually(lambda: (s := host.room())["state"] == "ended" and s, what="the room to end")
        assert status["handler"]["ended"] == "peer_closed"
        assert [e["reason"] for e in host.events("conversation_ended")] == ["peer_closed"]
