"""Defects found by reading the relay against its documents, each pinned by the test that first failed.

Lone surrogates: JSON may carry `\\udxxx` escapes that decode to a lone surrogate code point, which
the frame parser rightly accepts (PROTOCOL.md §2.2) but which SQLite's UTF-8 cannot hold. The relay
must answer such frames like any other, and never let them reach a place that raises.
"""

import json
import sqlite3
from pathlib import Path

import pytest
import trio
from relay_support import (
    Agent,
    authenticated,
    connect,
    fetch_challenge,
    get_json,
    metrics,
    new_id,
    now_ms,
    pending_rows,
    ping,
    stalled_client,
)

from agentroomd.relay import store as store_module
from agentroomd.relay.connection import PUMP_BATCH
from agentroomd.relay.server import RelayHandle
from ratchet.frames import Ack, Delivery, HelloAck, serialize_frame

LONE = "\\ud800"  # as written inside a JSON string: decodes to the lone surrogate U+D800


def _with_lone_surrogate(frame_text: str, field: str, value: str) -> str:
    """``frame_text`` with ``field`` set to ``value``, where each `{LONE}` in ``value`` is a JSON escape."""
    decoded = json.loads(frame_text)
    decoded[field] = "@@"
    return json.dumps(decoded).replace('"@@"', '"' + value + '"')


async def test_a_lone_surrogate_in_to_is_queued_and_the_relay_keeps_serving(relay: RelayHandle) -> None:
    """Before the fix, `to: "\\ud800"` killed the store's insert task, and with it the whole relay."""
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _), authenticated(relay, bob) as (b, _):
        frame = alice.msg(bob.pk)
        await a.send(_with_lone_surrogate(serialize_frame(frame), "to", bob.pk[:10] + LONE))
        await a.expect_ack(frame.msg_id, "queued")  # as the reference: stored, under U+FFFD
        live = alice.msg(bob.pk)
        await a.send(live)
        await a.expect_ack(live.msg_id, "delivered")
        assert (await b.expect(Delivery)).routed.msg_id == live.msg_id
    health = await get_json(relay, "/health")
    assert health["ok"] is True
    assert [to for to, _ in pending_rows(Path(relay.app.config.db))] == [bob.pk[:10] + "\ufffd"]


async def test_a_lone_surrogate_in_an_invite_blob_is_stored_and_acknowledged(relay: RelayHandle) -> None:
    """Before the fix the publisher's socket died with 1011 "internal error" instead of getting its ACK."""
    alice = Agent()
    async with authenticated(relay, alice) as (a, _):
        frame = alice.publish(new_id(), "blob", now_ms() + 60_000)
        await a.send(_with_lone_surrogate(serialize_frame(frame), "blob", "ab" + LONE + "cd"))
        await a.expect_ack(frame.msg_id, "delivered")
        await a.round_trip()
    with sqlite3.connect(relay.app.config.db) as conn:
        (blob,) = conn.execute("SELECT blob FROM invites WHERE invite_id = ?", (frame.invite_id,)).fetchone()
    assert blob == "ab\ufffdcd"
    assert (await metrics(relay))["errors_total"] == {}


async def test_a_lone_surrogate_in_hello_x25519_pk_still_authenticates(relay: RelayHandle) -> None:
    """The relay only records x25519_pk (the reference keeps it as Node encodes it, U+FFFD); before the fix: 1011."""
    alice = Agent()
    async with connect(relay) as client:
        hello = alice.hello(await fetch_challenge(relay))
        await client.send(_with_lone_surrogate(serialize_frame(hello), "x25519_pk", alice.x25519_pk + LONE))
        await client.expect(HelloAck)
        await client.round_trip()


async def test_a_lone_surrogate_in_hello_ed25519_pk_is_a_bad_frame(relay: RelayHandle) -> None:
    """A key name that no token or database can hold: BAD_FRAME, and the socket can still authenticate.

    Base64url decoding skips foreign characters (as Node's does), so the signature verifies for the
    key with a lone surrogate appended; before the fix, minting its token raised and the socket died (1011).
    """
    alice = Agent()
    async with connect(relay) as client:
        hello = alice.hello(await fetch_challenge(relay))
        await client.send(_with_lone_surrogate(serialize_frame(hello), "ed25519_pk", alice.pk + LONE))
        error = await client.expect_error("BAD_FRAME", hello.msg_id)
        assert "ed25519_pk" in error.message
        await client.send(alice.hello(await fetch_challenge(relay)))
        await client.expect(HelloAck)
        await client.round_trip()


async def test_a_reconnect_gets_its_queue_while_a_batch_of_released_rows_is_not_yet_deleted(
    relay: RelayHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Released rows (acknowledged, or written in reference mode) are hidden until their deletion commits.

    Before the fix, a store pump whose first batch (PUMP_BATCH rows) was all hidden took the empty
    answer for "caught up": the rows behind it were not delivered on that connection at all, and a
    newer frame overtook them. Deletions are gathered for a moment (and retried for as long as the
    database refuses writes, e.g. a full disk); the gathering is stretched here so the window stays open.
    """
    monkeypatch.setattr(store_module, "DISCARD_GATHER_S", 60.0)
    alice, bob = Agent(), Agent()
    released, kept = PUMP_BATCH + 6, 4
    async with authenticated(relay, alice) as (a, _):
        sent = []
        for i in range(released + kept):
            frame = alice.msg(bob.pk, f"queued {i}")
            await a.send(frame)
            await a.expect_ack(frame.msg_id, "queued")
            sent.append(frame)
        async with authenticated(relay, bob, acks_deliveries=True) as (b, _):
            await b.deliveries(released, ack=True)
            await b.deliveries(kept)  # delivered, never acknowledged: due again on the next connection
            await b.round_trip()
        async with authenticated(relay, bob, acks_deliveries=True) as (b, _):
            again = await b.deliveries(kept)
            assert [d.routed for d in again] == sent[released:]
            live = alice.msg(bob.pk, "after the reconnect")
            await a.send(live)
            await a.expect(Ack)
            assert (await b.expect(Delivery)).routed == live


async def test_a_client_that_floods_without_reading_and_then_vanishes_is_let_go(relay: RelayHandle) -> None:
    """Before the fix its connection stayed forever (a slot of max_connections, a socket, two tasks).

    The client sends frames and never reads the answers, so the relay's write of an answer waits for
    room, and hypercorn's queue of received messages for the app fills up. When the client then drops
    its socket, the write fails, and hypercorn reported that inline, from the app's own write, by
    putting "websocket.disconnect" into that full queue: a queue only the blocked task itself could
    empty. (hypercorn's own TCPServer does the same.)
    """
    async with stalled_client(relay, Agent()) as client:
        for _ in range(100_000):
            with trio.move_on_after(0.5) as blocked:
                await client.send(ping())
            if blocked.cancelled_caught:
                break  # the relay has stopped reading: its answers are backed up
        assert blocked.cancelled_caught
        assert len(relay.app.connections) == 1
    with trio.fail_after(5):
        await relay.app._all_closed.wait()  # every socket gone
    health = await get_json(relay, "/health")
    assert health["connections"] == 0


async def test_a_client_that_stops_reading_is_cut_off_after_the_write_stall_limit(
    relay: RelayHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that floods and never reads, but keeps its socket open, used to hold its connection (a
    slot of max_connections) for ever: the relay's answer waited in a shielded write, and every close
    (auth timeout, "replaced", shutdown) queued behind it. Now a write that makes no headway for
    `WRITE_STALL_S` ends the connection."""
    from agentroomd.relay import transport

    monkeypatch.setattr(transport, "WRITE_STALL_S", 0.5)
    async with stalled_client(relay, Agent()) as client:
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):  # reset by the relay, not by us
            for _ in range(100_000):
                await client.send(ping())  # until the relay, tired of waiting to answer, cuts the line
        with trio.fail_after(10):
            await relay.app._all_closed.wait()  # cut off while the client still holds its socket open
        health = await get_json(relay, "/health")
        assert health["connections"] == 0
