"""Ending a v3 conversation: `SessionManager.close_peer` seals the authenticated CLOSE, the peer learns it.

Two session managers in one process through a real relay (the helpers of test_client_sessions): the
close takes the path of a message (saved with the session, sent from the outbox), so it also survives
a dead relay and a restart of the closing side; afterwards neither side can send, and says why.
"""

import io
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from test_client_sessions import Agent, RelayProc, pair, start_agent, start_relay, start_relay_again, world

from agentroomd.client.manager import ClientError
from agentroomd.client.service import rpc_error
from agentroomd.control import api
from agentroomd.log import Logger

__all__ = ["world"]  # the fixture, imported to be used here

WAIT_S = 20.0  # generous: the machine running the suite is small and busy


class LogWatch(io.StringIO):
    """A Logger stream that keeps every NDJSON event and wakes whoever waits for one."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self._changed = trio.Event()

    def write(self, text: str) -> int:
        self.events.extend(json.loads(line) for line in text.splitlines() if line.strip())
        self._changed.set()
        self._changed = trio.Event()
        return len(text)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.events if record["event"] == event]

    async def wait_for(self, event: str) -> dict[str, Any]:
        with trio.fail_after(WAIT_S):
            while not self.named(event):
                await self._changed.wait()
        return self.named(event)[0]


def watch_log(agent: Agent) -> LogWatch:
    watch = LogWatch()
    agent.manager.log = Logger(agent.manager.pk[:8], level="info", stream=watch)
    return watch


async def refused(call: Any, kind: str) -> str:
    """The ClientError ``call`` must raise, checked to be of ``kind``; its message, for the user."""
    with pytest.raises(ClientError) as info:
        await call
    assert info.value.kind == kind, info.value
    return str(info.value)


async def test_a_close_reaches_the_peer_and_ends_the_conversation_on_both_sides(
    world: tuple[RelayProc, Agent, Agent],
) -> None:
    relay, alice, bob = world
    bob_log = watch_log(bob)
    await pair(alice, bob, relay.url)
    await alice.manager.send_message(bob.pk, "hi")
    assert (await bob.next_message()).text == "hi"
    await bob.manager.send_message(alice.pk, "hello")
    assert (await alice.next_message()).text == "hello"
    assert alice.manager.peer_state(bob.pk) == bob.manager.peer_state(alice.pk) == "established"

    await alice.manager.send_message(bob.pk, "bye", timeout_s=0)  # still in the outbox when the close is sealed
    status, msg_id, peer = await alice.manager.close_peer(bob.pk[:10])  # a prefix works as for message.send
    assert (status, peer) == ("delivered", bob.pk) and msg_id
    assert alice.manager.peer_state(bob.pk) == "closed"
    stored = alice.store.peer(bob.pk)
    assert stored is not None and stored.handshake == "closed"
    assert alice.store.count_messages(bob.pk) == {"in": 1, "out": 2}  # the close is no message in the journal

    # bob opens the last message, then learns the conversation ended there
    assert (await bob.next_message()).text == "bye"
    closed = await bob_log.wait_for("session.closed_by_peer")
    assert closed["peer"] == alice.pk[:8]
    assert bob.manager.peer_state(alice.pk) == "closed"
    assert bob.manager.counters.received == 2 and bob.manager.counters.undecryptable == 0
    stored = bob.store.peer(alice.pk)
    assert stored is not None and stored.handshake == "closed"
    with pytest.raises(trio.WouldBlock):
        bob.inbox.receive_nowait()  # a close is not delivered to subscribers as a message

    # neither side can send now, and each is told why, and who closed it
    message = await refused(bob.manager.send_message(alice.pk, "still there?"), "session_closed")
    assert message.startswith(f"{alice.pk[:8]} closed the session") and "new invite" in message
    message = await refused(alice.manager.send_message(bob.pk, "one more thing"), "session_closed")
    assert message.startswith("you closed the session") and "new invite" in message
    assert rpc_error(ClientError("session_closed", message)).type == api.INVALID_STATE.type
    assert bob.manager.counters.sent == 1 and alice.manager.counters.sent == 2

    # closing again, from either side, is a clear error too, and sends nothing
    message = await refused(alice.manager.close_peer(bob.pk), "session_closed")
    assert message.startswith("you closed the session") and "nothing left to close" in message
    message = await refused(bob.manager.close_peer(alice.pk), "session_closed")
    assert message.startswith(f"{alice.pk[:8]} closed the session")
    assert alice.store.outbox(relay.url) == [] and bob.store.outbox(relay.url) == []


async def test_a_close_waits_out_a_dead_relay_and_a_restart_of_the_closing_side(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    relay = await start_relay(nursery, tmp_path / "relay.db")
    alice = await start_agent(nursery, tmp_path / "alice", "alice")
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    bob_log = watch_log(bob)
    await pair(alice, bob, relay.url)
    await alice.manager.send_message(bob.pk, "hi")
    assert (await bob.next_message()).text == "hi"

    relay.scope.cancel()
    status, _, _ = await alice.manager.close_peer(bob.pk, timeout_s=0.5)
    assert status == "pending"  # sealed and saved: it waits in the outbox
    alice.scope.cancel()
    alice = await start_agent(nursery, tmp_path / "alice", "alice", alice.manager.identity)  # same home and store

    assert alice.manager.peer_state(bob.pk) == "closed"
    message = await refused(alice.manager.send_message(bob.pk, "after the restart"), "session_closed")
    assert message.startswith("you closed the session")
    await refused(alice.manager.close_peer(bob.pk), "session_closed")
    assert len(alice.store.outbox(relay.url)) == 1  # the first close, and only it

    await start_relay_again(nursery, relay)
    await bob_log.wait_for("session.closed_by_peer")  # the saved close went out by itself
    assert bob.manager.peer_state(alice.pk) == "closed"
    await refused(bob.manager.send_message(alice.pk, "hello?"), "session_closed")


async def test_a_v2_peer_cannot_be_closed_and_the_conversation_goes_on(world: tuple[RelayProc, Agent, Agent]) -> None:
    relay, alice, bob = world
    await pair(alice, bob, relay.url, version=2)
    message = await refused(alice.manager.close_peer(bob.pk), "close_unsupported")
    assert "protocol v2" in message and "Tell the peer in a message" in message
    assert rpc_error(ClientError("close_unsupported", message)).type == api.INVALID_STATE.type
    assert alice.manager.peer_state(bob.pk) == "established"
    assert alice.store.outbox(relay.url) == []
    status, _, _ = await alice.manager.send_message(bob.pk, "still talking")
    assert status == "delivered" and (await bob.next_message()).text == "still talking"


async def test_an_unknown_peer_or_an_unanswered_claim_cannot_be_closed(tmp_path: Path, nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery, tmp_path / "relay.db")
    alice = await start_agent(nursery, tmp_path / "alice", "alice")
    bob = await start_agent(nursery, tmp_path / "bob", "bob")
    message = await refused(bob.manager.close_peer("nosuchpeer"), "unknown_peer")
    assert rpc_error(ClientError("unknown_peer", message)).type == api.UNKNOWN_PEER.type

    invite = await alice.manager.create_invite(relay.url, ttl_ms=3_600_000)
    alice.scope.cancel()  # the inviter goes offline: bob's claim stays unanswered
    _, _, answered = await bob.manager.accept_invite(invite.url, wait_ack_s=0.5)
    assert not answered
    assert bob.manager.peer_state(alice.pk) == "pending"
    message = await refused(bob.manager.close_peer(alice.pk), "handshake_pending")
    assert "no session to close" in message
    assert rpc_error(ClientError("handshake_pending", message)).type == api.INVALID_STATE.type
    assert bob.store.outbox(relay.url) == []
