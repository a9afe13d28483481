"""A peer's session closing reaches every live `message.subscribe` stream (`session.closed`), in order.

Real daemons (our children) and a standalone relay: alice invites bob and carol. Bob writes a last
message and closes; alice's live subscribers see that message, then `session.closed` by the peer,
bob's see `session.closed` by us. `agentroomctl listen` prints the event without counting it and
goes on (carol still writes). The event is live only: a replay (`since: 0`) and an unsubscribed
subscription never get it. The close travels through each subscriber's bounded buffer with the
messages (checked in-process): a full buffer ends the subscriber as lagged, as a message would.
"""

import json
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.env import AGENTROOMCTL, short_dir
from support.home import Home, homes
from support.processes import RelayProcess
from support.waiting import eventually

from agentroomctl.client import ControlClient
from agentroomd.config import resolve_paths
from agentroomd.control import api
from agentroomd.control.api import ReceivedMessage
from agentroomd.control.inbox import InboundMessage, Inbox, MemoryJournal, SessionClosed

WAIT_S = 20.0  # generous bounds: the suite runs on two busy cores


@pytest.fixture
def relay() -> Iterator[RelayProcess]:
    workdir = short_dir()
    process = RelayProcess(workdir)
    try:
        yield process.start()
    finally:
        process.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def connect(home: Home) -> ControlClient:
    return ControlClient.connect(resolve_paths(home.path, env={}).socket_path)


def subscribe(client: ControlClient, since: int | None = None) -> str:
    return client.call(api.MESSAGE_SUBSCRIBE, api.SubscribeParams(since=since)).subscription


def notifications(client: ControlClient, count: int) -> list[dict[str, Any]]:
    """The next ``count`` notifications of ``client`` (method and params), each within WAIT_S."""
    seen = []
    for _ in range(count):
        note = client.next_notification(WAIT_S)
        assert note is not None, f"only {len(seen)} of {count} notifications: {seen}"
        seen.append({"method": note["method"], **note["params"]})
    return seen


def received(subscription: str, text: str, sender: str) -> dict[str, Any]:
    """What a `message.received` of ``text`` from ``sender`` must look like (cursor, msg_id and ts vary)."""
    return {"method": api.MESSAGE_RECEIVED, "subscription": subscription, "from": sender, "text": text}


def shape(note: dict[str, Any]) -> dict[str, Any]:
    if note["method"] == api.MESSAGE_RECEIVED:
        message = note["message"]
        return {"method": note["method"], "subscription": note["subscription"], "from": message["from"],
                "text": message["text"]}
    return note


def listen(home: Home, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [AGENTROOMCTL, "--home", str(home.path), "--no-autostart", "listen", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=home.env,
    )


def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], WAIT_S)
    assert readable, "nothing printed in time"
    return process.stdout.readline()


def wait_subscribers(client: ControlClient, count: int) -> None:
    eventually(lambda: client.call(api.DAEMON_STATUS).control.subscriptions == count, timeout=WAIT_S,
               what=f"{count} subscribers")


def test_a_close_reaches_live_subscribers_in_order_and_is_never_replayed(relay: RelayProcess) -> None:
    with homes("", "", "") as (alice, bob, carol):
        for home in (alice, bob, carol):
            home.start()
        alice_pk = alice.json("whoami")["pk"]
        for guest in (bob, carol):
            invite = alice.json("invite", "create", "--relay", relay.url)
            assert guest.json("invite", "accept", invite["url"])["answered"]
        bob_pk, carol_pk = bob.json("whoami")["pk"], carol.json("whoami")["pk"]

        with connect(alice) as watcher, connect(alice) as replayer, connect(bob) as bob_watcher:
            gone = subscribe(watcher)
            watcher.call(api.MESSAGE_UNSUBSCRIBE, api.UnsubscribeParams(subscription=gone))
            live = subscribe(watcher)
            bob_live = subscribe(bob_watcher)
            as_json = listen(alice, "--json", "--count", "2", "--timeout", str(WAIT_S))
            as_text = listen(alice, "--count", "2", "--timeout", str(WAIT_S))
            bob_text = listen(bob, "--timeout", str(WAIT_S))
            try:
                wait_subscribers(watcher, 3)
                wait_subscribers(bob_watcher, 2)
                bob.ctl("send", alice_pk, "last words")
                before_close = int(time.time() * 1000)
                closed = bob.json("close", alice_pk)
                assert closed["peer"] == alice_pk

                # (a) the peer closed: its last message first, then the close, by the peer
                message, event = notifications(watcher, 2)
                assert shape(message) == received(live, "last words", bob_pk)
                assert event == {"method": api.SESSION_CLOSED, "subscription": live, "peer": bob_pk, "by": "peer",
                                 "ts": event["ts"]}
                assert before_close <= event["ts"] <= int(time.time() * 1000)
                # (b) we closed: bob's own subscriber hears it, by us; and `listen` says so in words
                [ours] = notifications(bob_watcher, 1)
                assert ours == {"method": api.SESSION_CLOSED, "subscription": bob_live, "peer": alice_pk, "by": "us",
                                "ts": ours["ts"]}
                assert first_line(bob_text).endswith(f"] {alice_pk[:12]}…  session closed by us\n")

                # (d) a subscriber arriving after the close, replaying everything kept, gets the messages only
                replay = subscribe(replayer, since=0)
                [replayed] = notifications(replayer, 1)
                assert shape(replayed) == received(replay, "last words", bob_pk)
                # other peers still write: carol's message comes next on every stream, with no close before it
                carol.ctl("send", alice_pk, "still here")
                [after] = notifications(replayer, 1)
                assert shape(after) == received(replay, "still here", carol_pk)
                [later] = notifications(watcher, 1)  # nothing for the unsubscribed one came in between
                assert shape(later) == received(live, "still here", carol_pk)

                # (c) listen prints the close without counting it: two messages end it, not the close
                out, err = as_json.communicate(timeout=WAIT_S)
                assert as_json.returncode == 0, err
                documents = [json.loads(line) for line in out.splitlines()]
                assert [d.get("text") for d in documents] == ["last words", None, "still here"]
                assert documents[1] == {"event": "session_closed", "peer": bob_pk, "by": "peer",
                                        "ts": event["ts"]}
                out, err = as_text.communicate(timeout=WAIT_S)
                assert as_text.returncode == 0, err
                assert [line.partition("] ")[2] for line in out.splitlines()] == [
                    f"{bob_pk[:12]}…  last words", f"{bob_pk[:12]}…  closed the session",
                    f"{carol_pk[:12]}…  still here",
                ]
                bob_text.send_signal(signal.SIGTERM)
                assert bob_text.wait(timeout=WAIT_S) == 0
            finally:
                for process in (as_json, as_text, bob_text):
                    if process.poll() is None:
                        process.kill()
                    process.communicate(timeout=WAIT_S)


async def test_the_close_shares_the_message_buffer_so_a_full_one_ends_the_subscriber_as_lagged() -> None:
    inbox = Inbox(MemoryJournal(keep=10), buffer=2)
    watcher = inbox.subscribe(None, session_events=True)
    handler = inbox.subscribe(None)  # the rooms' handlers never asked for session events
    await inbox.publish(InboundMessage(from_="bob", text="last words", msg_id="m1", ts=1))
    inbox.session_closed("bob", "peer", 2)
    assert [await watcher.next_item(), await watcher.next_item()] == [
        ReceivedMessage(cursor=1, from_="bob", text="last words", msg_id="m1", ts=1),
        SessionClosed(peer="bob", by="peer", ts=2),
    ]
    assert (await handler.next_item()) == ReceivedMessage(cursor=1, from_="bob", text="last words", msg_id="m1", ts=1)

    await inbox.publish(InboundMessage(from_="carol", text="one", msg_id="m2", ts=3))
    await inbox.publish(InboundMessage(from_="carol", text="two", msg_id="m3", ts=4))
    inbox.session_closed("carol", "us", 5)  # a third item for a buffer of two
    assert watcher.end is not None and watcher.end.kind == api.LAGGED
    assert [record.text async for record in watcher] == ["one", "two"]
    assert watcher.resume_from == 3  # resubscribing from there repeats neither message nor close
    assert handler.end is None
