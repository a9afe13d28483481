"""`invite accept --on-message --seed` with a v3 inviter that is offline: the handler is attached at once and
the seed goes out, exactly once, when the inviter answers (also across a restart of the guest's daemon).

Real daemons driven by agentroomctl, and a standalone relay both use: the inviter's daemon is stopped
after publishing its invite, so the guest's claim waits at the relay until the inviter comes back.
"""

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.handlers import ECHO
from support.home import Home, homes
from support.processes import RelayProcess
from support.raw_control import RawClient
from support.waiting import eventually

from agentroomd.client.manager import MAX_PLAINTEXT_BYTES

# Two busy cores, three processes and a handler run per message: generous bounds.
LISTEN_TIMEOUT_S = 40.0
WAIT_S = 40.0


@pytest.fixture
def relay(scratch: Path) -> Iterator[RelayProcess]:
    process = RelayProcess(scratch).start()
    try:
        yield process
    finally:
        process.stop()


def handlers(home: Home) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = home.json("status")["services"]["rooms"]["handlers"]
    return listed


def invite_from_offline_inviter(host: Home, relay: RelayProcess) -> tuple[str, str]:
    """(invite URL, the inviter's pk) from a host whose daemon is stopped again right after publishing it."""
    invite = host.json("invite", "create", "--relay", relay.url)
    host_pk = host.json("whoami")["pk"]
    assert host.stop() == 0
    return invite["url"], host_pk


def check_seed_arrives_once_and_the_handler_answers(host: Home, guest: Home, host_pk: str) -> None:
    """The inviter comes up: "hi" reaches it once; its next message is answered by the guest's echo handler."""
    host.start()
    [seed] = host.listen(1, timeout=LISTEN_TIMEOUT_S)
    assert seed["text"] == "hi"
    guest_pk = guest.json("whoami")["pk"]
    host.ctl("send", "--", guest_pk, "ping")
    heard = host.listen(2, timeout=LISTEN_TIMEOUT_S)  # from the start: a second seed would come before the echo
    assert [m["text"] for m in heard] == ["hi", "echo: ping"]
    again = host.ctl("--json", "listen", "--since", str(heard[-1]["cursor"]), "--count", "1", "--timeout", "1",
                     check=False)
    assert again.returncode == 5, again.stdout  # nothing after the echo: the seed went out once
    [handler] = eventually(lambda: (h := handlers(guest)) and h[0]["replies"] == 1 and h, timeout=WAIT_S,
                           what="the guest's handler to count its reply")
    assert handler["peer"] == host_pk
    assert (handler["turns"], handler["seed_waiting"], handler["last_error"]) == (2, False, None)  # seed + reply
    assert len(guest.events("seed_sent")) == 1
    assert not guest.events("seed_not_sent")
    assert "hi" not in json.dumps(guest.events("seed_due") + guest.events("seed_sent"))  # no message text in logs


def test_a_seed_for_an_offline_inviter_is_sent_once_it_answers(relay: RelayProcess) -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        url, host_pk = invite_from_offline_inviter(host, relay)

        accepted = guest.json("invite", "accept", url, "--on-message", ECHO, "--seed", "hi")
        assert accepted["peer"] == host_pk and accepted["answered"] is False
        assert accepted["seed"] == {"status": "after_handshake", "msg_id": "", "peer": host_pk}
        assert accepted["handler"]["turns"] == 0
        [handler] = handlers(guest)
        assert handler["peer"] == host_pk and handler["seed_waiting"] is True and handler["last_error"] is None

        check_seed_arrives_once_and_the_handler_answers(host, guest, host_pk)


def test_a_waiting_seed_survives_a_restart_of_the_guest_daemon(relay: RelayProcess) -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        url, host_pk = invite_from_offline_inviter(host, relay)

        accepted = guest.ctl("invite", "accept", url, "--on-message", ECHO, "--seed", "hi")  # as a person types it
        assert f"Invite accepted; waiting for {host_pk} to answer" in accepted.stdout  # not "Session established"
        assert f"Seed: sent once {host_pk} answers the invite (its daemon is offline)" in accepted.stderr
        assert guest.stop() == 0
        guest.start()
        [handler] = handlers(guest)
        assert handler["peer"] == host_pk and handler["seed_waiting"] is True
        assert len(guest.events("seed_waiting")) == 1

        check_seed_arrives_once_and_the_handler_answers(host, guest, host_pk)
        # and a later restart does not send it again: it is saved as sent
        assert guest.stop() == 0
        guest.start()
        [handler] = handlers(guest)
        assert handler["seed_waiting"] is False and handler["turns"] == 2
        assert len(guest.events("seed_waiting")) == 1


def test_a_seed_too_large_for_one_message_is_refused_and_nothing_is_attached(relay: RelayProcess) -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        invite = host.json("invite", "create", "--relay", relay.url)
        host_pk = guest.json("invite", "accept", invite["url"])["peer"]
        # Past the OS's limit for one command-line argument (128 KiB), so through the control socket.
        client = RawClient(guest.path / "agentroomd.sock")
        try:
            for too_large in ("x" * (MAX_PLAINTEXT_BYTES + 1), "é" * (MAX_PLAINTEXT_BYTES // 2 + 1)):
                answer = client.call("handler.attach", {"peer": host_pk, "on_message": ECHO, "seed": too_large})
                error = answer["error"]
                assert error["data"]["type"] == "jsonrpc.InvalidParams", error
                size = len(too_large.encode())
                assert error["data"]["errors"] == [f"seed: {size} bytes; a message holds at most {MAX_PLAINTEXT_BYTES}"]
                assert handlers(guest) == []
                assert not list((guest.path / "handlers").glob("*.json"))
            # the same request with a seed that fits works: nothing was left behind to refuse it
            answer = client.call("handler.attach", {"peer": host_pk, "on_message": ECHO,
                                                    "seed": "x" * MAX_PLAINTEXT_BYTES}, request_id=2)
        finally:
            client.close()
        assert answer["result"]["seed"]["status"] in ("delivered", "queued"), answer
        [handler] = handlers(guest)
        assert handler["peer"] == host_pk and handler["turns"] == 1
        [seed] = host.listen(1, timeout=LISTEN_TIMEOUT_S)
        assert seed["text"] == "x" * MAX_PLAINTEXT_BYTES


def test_a_serve_seed_for_an_offline_inviter_goes_once_it_answers(relay: RelayProcess) -> None:
    with homes("", "") as (host, guest):
        host.start()
        guest.start()
        url, host_pk = invite_from_offline_inviter(host, relay)
        assert guest.json("invite", "accept", url)["answered"] is False
        with guest.serving("--on-message", ECHO, "--seed", "hi", f"--to={host_pk}") as serve:
            assert serve.stdout is not None
            serving = json.loads(serve.stdout.readline())
            assert serving["type"] == "serving" and serving["seed"]["status"] == "after_handshake"
            host.start()
            [seed] = host.listen(1, timeout=LISTEN_TIMEOUT_S)
            assert seed["text"] == "hi"
            replied = json.loads(serve.stdout.readline())
            assert (replied["type"], replied["to"], replied["seed"]) == ("replied", host_pk, True)
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=10) == 0
