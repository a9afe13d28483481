"""Two requests at once, each on its own control connection, against real daemons and a real relay.

Every request is written before any answer is read, so the daemon works on both at the same time
(its control connections are served concurrently); the tests check what a user would see afterwards.
"""

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from support.env import short_dir
from support.handlers import ECHO
from support.home import Home, homes
from support.processes import RelayProcess
from support.raw_control import RawClient

LISTEN_TIMEOUT_S = 20.0


@pytest.fixture
def relay() -> Iterator[RelayProcess]:
    workdir = short_dir()
    process = RelayProcess(workdir).start()
    try:
        yield process
    finally:
        process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def at_once(home: Home, *calls: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Send every call on its own connection before reading any answer; the answers, in call order."""
    clients = [RawClient(home.path / "agentroomd.sock") for _ in calls]
    try:
        for client, (method, params) in zip(clients, calls, strict=True):
            client.send_json({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        return [client.read() for client in clients]
    finally:
        for client in clients:
            client.close()


def error_types(answers: list[dict[str, Any]]) -> list[str | None]:
    return [answer["error"]["data"]["type"] if "error" in answer else None for answer in answers]


def test_two_handler_attach_of_one_peer_at_once_attach_one_handler(relay: RelayProcess) -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        invite = host.json("invite", "create", "--relay", relay.url)
        guest.json("invite", "accept", invite["url"])
        host_pk, guest_pk = host.json("whoami")["pk"], guest.json("whoami")["pk"]

        attach = ("handler.attach", {"peer": host_pk, "on_message": ECHO})
        answers = at_once(guest, attach, attach)

        # one handler answers a peer: the second attach is refused, as it is when it comes later
        assert sorted(error_types(answers), key=str) == [None, "agentroom.AlreadyExists"], answers
        assert len(guest.json("status")["services"]["rooms"]["handlers"]) == 1
        host.ctl("send", "--", guest_pk, "ping")
        host.ctl("send", "--", guest_pk, "pong")
        heard = host.listen(2, timeout=LISTEN_TIMEOUT_S)
        if heard[-1]["text"] != "echo: pong":  # a second handler's echo came first: read up to the last one
            heard += host.listen(1, since=heard[-1]["cursor"], timeout=LISTEN_TIMEOUT_S)
        assert [m["text"] for m in heard] == ["echo: ping", "echo: pong"]


def test_two_invite_accept_of_one_invite_at_once_keep_the_session(relay: RelayProcess) -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        invite = host.json("invite", "create", "--relay", relay.url)
        host_pk, guest_pk = host.json("whoami")["pk"], guest.json("whoami")["pk"]

        accept = ("invite.accept", {"url": invite["url"]})
        answers = at_once(guest, accept, accept)

        ok = [answer["result"] for answer in answers if "result" in answer]
        assert len(ok) == 1 and ok[0]["peer"] == host_pk and ok[0]["answered"], answers
        assert error_types(answers).count("agentroom.AlreadyExists") == 1, answers
        # the session both sides hold is usable: the guest's message reaches the host
        assert [(p["pk"], p["state"]) for p in guest.json("peers")["peers"]] == [(host_pk, "established")]
        guest.ctl("send", "--", host_pk, "hello")
        [heard] = host.listen(1, timeout=LISTEN_TIMEOUT_S)
        assert (heard["from"], heard["text"]) == (guest_pk, "hello")


def test_room_stop_during_room_open_says_the_room_was_stopped() -> None:
    with homes("") as (host,):
        host.start()
        opened, stopped = at_once(host, ("room.open", {"tunnel": False, "name": "lobby"}), ("room.stop", {"all": True}))

        if "error" in opened:  # the stop caught the room while it opened: say that, not "the relay cannot start"
            assert opened["error"]["data"]["type"] == "agentroom.InvalidState", opened
            assert opened["error"]["message"] == "the room was stopped before its invite was out", opened
            assert stopped["result"]["stopped"] != [], stopped
        else:  # the stop came first (nothing to stop yet): the room opened
            assert stopped["result"]["stopped"] == [], (opened, stopped)
            host.ctl("room", "stop", "lobby")
        assert host.json("room", "list")["rooms"] == []
        assert list((host.path / "rooms").iterdir()) == []  # a room that failed to open leaves nothing behind


def test_handler_detach_and_attach_of_one_peer_at_once_leave_what_they_said(relay: RelayProcess) -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        invite = host.json("invite", "create", "--relay", relay.url)
        guest.json("invite", "accept", invite["url"])
        host_pk = host.json("whoami")["pk"]
        [first] = at_once(guest, ("handler.attach", {"peer": host_pk, "on_message": ECHO}))
        assert "result" in first, first

        detached, attached = at_once(guest, ("handler.detach", {"peer": host_pk}),
                                     ("handler.attach", {"peer": host_pk, "on_message": ECHO}))

        assert "result" in detached, detached
        if "result" in attached:  # attached after the detach: it answers, and it is saved for the next start
            assert len(guest.json("status")["services"]["rooms"]["handlers"]) == 1
            assert (guest.path / "handlers" / f"{host_pk}.json").exists()
        else:  # refused while the old one was still attached
            assert attached["error"]["data"]["type"] == "agentroom.AlreadyExists", attached
            assert guest.json("status")["services"]["rooms"]["handlers"] == []
