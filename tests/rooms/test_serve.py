"""`agentroomctl serve`: a handler for any session, for as long as the command runs, with NDJSON events."""

import json
import signal

from support.handlers import ECHO, END_PREFIX
from support.home import homes


def test_serve_seeds_answers_and_ends_at_max_turns_telling_both_sides() -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        room = host.json("room", "open", "--no-tunnel")  # a room without a handler: serve answers its guest
        guest.json("invite", "accept", room["invite_url"], "--on-message", ECHO, "--max-turns", "2")
        guest_pk = guest.json("whoami")["pk"]
        served = host.ctl("--json", "serve", "--on-message", ECHO, "--seed", "hi", f"--to={guest_pk[:12]}",
                          "--max-turns", "2", timeout=30)
        events = [json.loads(line) for line in served.stdout.splitlines()]
        assert [e["type"] for e in events] == ["serving", "replied", "received", "replied", "done"]
        serving, seed, received, reply, done = events
        assert serving["pk"] == host.json("whoami")["pk"]
        assert (seed["to"], seed["text"], seed["turn"], seed["seed"]) == (guest_pk, "hi", 1, True)
        assert (received["from"], received["text"]) == (guest_pk, "echo: hi")
        assert (reply["text"], reply["turn"]) == ("echo: echo: hi", 2)
        assert (done["peer"], done["reason"], done["replies"]) == (guest_pk, "max_turns", 2)
        assert all(isinstance(e["ts"], int) for e in events)
        # The guest was told: the notice is the last thing it got from us.
        heard = [m["text"] for m in guest.listen(3)]
        assert heard[:2] == ["hi", "echo: echo: hi"] and heard[2].startswith(END_PREFIX)


def test_serve_runs_until_interrupted_and_only_one_runs_at_a_time() -> None:
    with homes("") as (host,):
        host.start()
        with host.serving("--on-message", ECHO) as serve:
            assert serve.stdout is not None
            assert json.loads(serve.stdout.readline())["type"] == "serving"
            assert host.json("status")["services"]["rooms"]["serving"] is True
            second = host.ctl("--json", "serve", "--on-message", ECHO, check=False)
            assert json.loads(second.stdout)["error"]["type"] == "agentroom.AlreadyExists"
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=10) == 0
        assert host.json("status")["pid"] == host.pid
