"""Routing: live delivery, store-and-forward, ordering, caps, backpressure, restart durability, PING/PONG."""

import json
from pathlib import Path

import attrs
import trio
from relay_support import (
    Agent,
    authenticated,
    get_json,
    make_config,
    metrics,
    new_id,
    now_ms,
    pending_rows,
    running_relay,
    stalled_client,
    start_relay,
)

from agentroomd.relay.server import RelayHandle
from ratchet.frames import Ack, Delivery, Msg, Ping, Pong, SessionAck, as_forwarded, parse_frame, serialize_frame


async def test_live_delivery_forwards_the_parsed_frame(relay: RelayHandle) -> None:
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _), authenticated(relay, bob) as (b, _):
        frame = alice.msg(bob.pk, "hello bob")
        # An unknown field is dropped, as the reference's zod parse drops it.
        raw = json.loads(serialize_frame(frame))
        raw["extra"] = "dropped"
        await a.send(json.dumps(raw))
        await a.expect_ack(frame.msg_id, "delivered")
        text = await b.recv_text()
        delivery = parse_frame(text)
        assert isinstance(delivery, Delivery) and delivery.routed == frame
        expected_routed = serialize_frame(as_forwarded(frame))
        assert text == (
            f'{{"v":2,"type":"DELIVERY","msg_id":"{delivery.msg_id}","ts":{delivery.ts},"routed":{expected_routed}}}'
        )
        assert expected_routed.startswith('{"v":2,"msg_id":')  # zod's key order
        assert "extra" not in text
        assert delivery.msg_id != frame.msg_id
    body = await metrics(relay)
    assert (body["messages_routed_total"], body["messages_delivered_total"], body["messages_queued_total"]) == (1, 1, 0)
    assert pending_rows(Path(relay.app.config.db)) == []


async def test_every_routed_type_is_routed_and_a_key_may_write_to_itself(relay: RelayHandle) -> None:
    alice = Agent()
    async with authenticated(relay, alice) as (a, _):
        msg = alice.msg(alice.pk)
        ack = SessionAck(**{**_fields(msg), "msg_id": new_id()})
        for frame in (msg, ack):
            await a.send(frame)
            seen = [await a.recv(), await a.recv()]
            acks = [f for f in seen if isinstance(f, Ack)]
            deliveries = [f for f in seen if isinstance(f, Delivery)]
            assert acks[0].ref_msg_id == frame.msg_id and acks[0].status == "delivered"
            assert deliveries[0].routed == frame and deliveries[0].routed.TYPE == frame.TYPE


def _fields(frame: Msg) -> dict[str, object]:
    return {f.name: getattr(frame, f.name) for f in attrs.fields(type(frame)) if f.init}


async def test_frames_for_an_absent_agent_are_queued_and_delivered_oldest_first(relay: RelayHandle) -> None:
    alice, bob = Agent(), Agent()
    sent = []
    async with authenticated(relay, alice) as (a, _):
        for i in range(5):
            frame = alice.msg(bob.pk, f"m{i}")
            sent.append(frame)
            await a.send(frame)
            await a.expect_ack(frame.msg_id, "queued")
    db = Path(relay.app.config.db)
    assert [json.loads(envelope)["msg_id"] for _, envelope in pending_rows(db, bob.pk)] == [f.msg_id for f in sent]
    async with authenticated(relay, bob) as (b, _):
        got = await b.deliveries(5)
        assert [d.routed for d in got] == sent
        assert [d.msg_id for d in got] != [f.msg_id for f in sent]
        await b.round_trip()
    await relay.app.store.flush_discards()
    assert pending_rows(db) == []  # a reference client does not acknowledge: written to its socket = done
    body = await metrics(relay)
    assert (body["messages_queued_total"], body["deliveries_total"]) == (5, 5)


async def test_queued_frames_are_delivered_before_newer_live_ones(relay: RelayHandle) -> None:
    """The reference let live frames overtake a backlog; here a recipient sees exactly the send order."""
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _):
        for i in range(40):
            await a.send(alice.msg(bob.pk, f"queued {i}"))
        for _ in range(40):
            assert (await a.expect(Ack)).status == "queued"
        async with authenticated(relay, bob) as (b, _):
            # Straight after HELLO_ACK, while the backlog is being flushed, more frames arrive.
            for i in range(40):
                await a.send(alice.msg(bob.pk, f"live {i}"))
            got = await b.deliveries(80)
            assert [d.routed.seq for d in got] == list(range(80))
            statuses = {(await a.expect(Ack)).status for _ in range(40)}
            assert statuses <= {"queued", "delivered"}


async def test_forged_from_is_refused_and_nothing_is_stored(relay: RelayHandle) -> None:
    alice, bob, mallory = Agent(), Agent(), Agent()
    async with authenticated(relay, mallory) as (m, _), authenticated(relay, bob) as (b, _):
        forged = mallory.msg(bob.pk, from_=alice.pk)
        await m.send(forged)
        error = await m.expect_error("UNAUTH", forged.msg_id)
        assert error.message == "from mismatch"
        probe = Ping(msg_id=new_id(), ts=now_ms())
        await b.send(probe)
        assert (await b.expect(Pong)).msg_id == probe.msg_id  # bob got nothing before the PONG
    assert pending_rows(Path(relay.app.config.db)) == []
    assert (await metrics(relay))["errors_total"] == {"UNAUTH": 1}


async def test_a_full_queue_refuses_with_ack_error(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, max_pending_msgs=3))
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _):
        statuses = []
        for _ in range(4):
            frame = alice.msg(bob.pk)
            await a.send(frame)
            ack = await a.expect(Ack)
            statuses.append((ack.status, ack.error))
    assert statuses == [("queued", None)] * 3 + [("error", "recipient queue full")]
    body = await metrics(relay)
    assert (body["queue_full_total"], body["messages_routed_total"]) == (1, 3)
    assert len(pending_rows(tmp_path / "relay.db", bob.pk)) == 3


async def test_restart_keeps_every_frame_acknowledged_as_queued(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    alice, bob = Agent(), Agent()
    sent = []
    async with running_relay(config) as relay, authenticated(relay, alice) as (a, _):
        for i in range(10):
            frame = alice.msg(bob.pk, f"before restart {i}")
            await a.send(frame)
            await a.expect_ack(frame.msg_id, "queued")
            sent.append(frame)
    async with running_relay(config) as relay:
        assert (await relay_health(relay))["pending"] == 10
        async with authenticated(relay, bob) as (b, _):
            assert [d.routed for d in await b.deliveries(10)] == sent


async def relay_health(relay: RelayHandle) -> dict[str, object]:
    result: dict[str, object] = await get_json(relay, "/health")
    return result


async def test_ping_is_echoed_as_pong_with_the_same_id_and_ts(relay: RelayHandle) -> None:
    alice = Agent()
    async with authenticated(relay, alice) as (a, _):
        probe = Ping(v=1, msg_id=new_id(), ts=12345)
        await a.send(probe)
        assert await a.recv_text() == f'{{"v":1,"msg_id":"{probe.msg_id}","ts":12345,"type":"PONG"}}'


async def test_a_slow_recipient_makes_the_relay_queue_instead_of_buffering(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, backpressure_bytes=65_536))
    alice, bob = Agent(), Agent()
    body = "x" * 30_000
    async with authenticated(relay, alice) as (a, _), stalled_client(relay, bob) as b:
        sent, statuses = [], []
        while "queued" not in statuses:
            assert len(sent) < 1000, "the relay never pushed back"
            frame = alice.msg(bob.pk, body)
            await a.send(frame)
            ack = await a.expect(Ack)
            assert ack.ref_msg_id == frame.msg_id
            statuses.append(ack.status)
            sent.append(frame)
        for _ in range(5):  # once queued, later frames queue too (they may not overtake)
            frame = alice.msg(bob.pk, body)
            await a.send(frame)
            statuses.append((await a.expect(Ack)).status)
            sent.append(frame)
        assert statuses[-5:] == ["queued"] * 5
        assert relay.app.hub.agents[bob.pk].outbox.buffered_bytes <= 65_536 + 50_000
        received = [(await b.expect(Delivery)).routed for _ in sent]  # bob reads again
        assert received == sent
    assert (await metrics(relay))["messages_queued_total"] >= 6
