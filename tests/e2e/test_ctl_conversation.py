"""The user's path, only through agentroomctl: invite, accept, send both ways, listen, peers, close, stop."""

from collections.abc import Iterator

import pytest
from support.agent import Agent
from support.ctl import ctl
from support.env import short_dir
from support.processes import RelayProcess
from support.waiting import eventually


@pytest.fixture
def world() -> Iterator[tuple[RelayProcess, Agent, Agent]]:
    root = short_dir("ar-ctl-")
    relay = RelayProcess(root).start()
    alice, bob = Agent(root / "a"), Agent(root / "b")
    try:
        yield relay, alice, bob
    finally:
        alice.stop()
        bob.stop()
        relay.stop()


@pytest.mark.parametrize(("compat", "prefix", "protocol"), [
    ((), "agentroom://invite3/", 3),
    (("--compat", "v2"), "agentroom://invite/", 2),
])
def test_conversation_through_agentroomctl_with_stable_json_shapes(
    world: tuple[RelayProcess, Agent, Agent], compat: tuple[str, ...], prefix: str, protocol: int
) -> None:
    relay, alice, bob = world
    invite = alice.ctl("invite", "create", "--relay", relay.url, "--ttl", "1h", *compat)
    assert invite["url"].startswith(prefix) and invite["protocol"] == protocol
    assert {"url", "invite_id", "expires_at"} <= invite.keys()
    accepted = bob.ctl("invite", "accept", invite["url"], "--alias", "alice")
    assert accepted["peer"] == alice.pk and accepted["answered"] is True

    sent = bob.ctl("send", "alice", "hello from bob")  # a local alias works wherever a key does
    assert sent["status"] in ("delivered", "queued") and sent["msg_id"]
    first = alice.ctl("listen", "--since", "0", "--count", "1", "--timeout", "20")
    assert first["from"] == bob.pk and first["text"] == "hello from bob" and first["msg_id"] == sent["msg_id"]
    assert isinstance(first["ts"], int) and first["cursor"] >= 1

    # so does a unique prefix (one that starts with "-" needs the "--" first, as README says: 1 key in 64)
    dashes = ("--",) if bob.pk.startswith("-") else ()
    reply = alice.ctl("send", *dashes, bob.pk[:10], "hi bob, multi\nline ✓")
    assert reply["status"] in ("delivered", "queued")
    got = bob.ctl("listen", "--since", "0", "--count", "1", "--timeout", "20")
    assert got["text"] == "hi bob, multi\nline ✓"

    again = alice.ctl("listen", "--since", str(first["cursor"]), "--count", "1", "--timeout", "0.5", check=False)
    assert again["error"]["exit_code"] == 5  # nothing new after that cursor: the bounded wait ends
    assert alice.ctl("peers") == {"peers": [{"pk": bob.pk, "alias": None, "relay": relay.url, "state": "established"}]}

    again_bob = bob.ctl("invite", "accept", invite["url"], check=False)
    assert again_bob["error"]["type"] == "agentroom.AlreadyExists"
    carol = Agent(alice.home.parent / "c")
    try:
        reused = carol.ctl("invite", "accept", invite["url"], check=False)
        assert reused["error"]["exit_code"] == 7 and reused["error"]["type"] == "agentroom.InviteUsed"
        assert carol.ctl("peers") == {"peers": []}
    finally:
        carol.stop()


def test_close_ends_the_conversation_on_both_sides(world: tuple[RelayProcess, Agent, Agent]) -> None:
    relay, alice, bob = world
    invite = alice.ctl("invite", "create", "--relay", relay.url)
    bob.ctl("invite", "accept", invite["url"], "--alias", "alice")
    bob.ctl("send", "alice", "hello")
    assert alice.ctl("listen", "--since", "0", "--count", "1", "--timeout", "20")["text"] == "hello"

    closed = ctl(alice.home, "close", bob.pk)  # what a user reads
    assert closed.returncode == 0, closed.stderr
    said = {f"Closed the session with {bob.pk} (relay: {status})\n" for status in ("delivered", "queued")}
    assert closed.stdout in said
    assert alice.ctl("peers")["peers"][0]["state"] == "closed"
    eventually(lambda: bob.ctl("peers")["peers"][0]["state"] == "closed", timeout=30,
               what="bob to learn of the close")

    for sender, peer in ((bob, "alice"), (alice, bob.pk)):
        refused = sender.ctl("send", peer, "still there?", check=False)["error"]
        assert (refused["exit_code"], refused["type"]) == (1, "agentroom.InvalidState")
        assert "closed the session" in refused["message"]
    again = bob.ctl("close", "alice", check=False)["error"]
    assert (again["exit_code"], again["type"]) == (1, "agentroom.InvalidState")
    assert bob.ctl("close", "nosuchpeer", check=False)["error"]["exit_code"] == 4
