"""Our extension: a client that acknowledges deliveries keeps every row until its DELIVERY_ACK."""

from pathlib import Path

import trio
from relay_support import (
    Agent,
    authenticated,
    connect,
    make_config,
    metrics,
    new_id,
    now_ms,
    pending_rows,
    running_relay,
)

from agentroomd.relay.server import RelayHandle
from agentroomd.relay.wire import routed_text
from ratchet.frames import Delivery, DeliveryAck, as_forwarded


async def test_unacknowledged_deliveries_come_back_in_order_on_reconnect(relay: RelayHandle) -> None:
    alice, bob = Agent(), Agent()
    db = Path(relay.app.config.db)
    async with authenticated(relay, alice) as (a, _):
        sent = []
        for i in range(3):
            frame = alice.msg(bob.pk, f"queued {i}")
            await a.send(frame)
            await a.expect_ack(frame.msg_id, "queued")
            sent.append(frame)
        async with authenticated(relay, bob, acks_deliveries=True) as (b, _):
            first = await b.deliveries(3)
            # "delivered" needs bob's store pump to have caught up (an empty fetch after the backlog);
            # until then a new frame is stored and pumped behind the backlog ("queued").
            with trio.fail_after(5):
                await relay.app.hub.agents[bob.pk].caught_up_once.wait()
            live = alice.msg(bob.pk, "live")
            await a.send(live)
            await a.expect_ack(live.msg_id, "delivered")
            first += await b.deliveries(1)
            sent.append(live)
            assert [d.routed for d in first] == sent
            await b.round_trip()
        await relay.app.store.flush_discards()
        assert len(pending_rows(db, bob.pk)) == 4  # nothing acknowledged: every row stays, the live one too

        async with authenticated(relay, bob, acks_deliveries=True) as (b, _):
            again = await b.deliveries(4)
            assert [d.routed for d in again] == sent
            assert [d.msg_id for d in again] == [d.msg_id for d in first]  # same DELIVERY ids: dedupe-able
            for delivery in again[:2]:
                await b.send(DeliveryAck(msg_id=new_id(), ts=now_ms(), ref_msg_id=delivery.msg_id))
            await b.round_trip()
        await relay.app.store.flush_discards()
        assert [envelope for _, envelope in pending_rows(db, bob.pk)] == [_envelope(d) for d in again[2:]]

        async with authenticated(relay, bob, acks_deliveries=True) as (b, _):
            rest = await b.deliveries(2, ack=True)
            assert [d.routed for d in rest] == sent[2:]
            await b.round_trip()
    await relay.app.store.flush_discards()
    assert pending_rows(db) == []
    assert (await metrics(relay))["deliveries_acked_total"] == 4


def _envelope(delivery: Delivery) -> str:
    return routed_text(as_forwarded(delivery.routed))


async def test_a_restart_between_delivery_and_ack_loses_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    alice, bob = Agent(), Agent()
    async with running_relay(config) as relay:
        async with authenticated(relay, alice) as (a, _), authenticated(relay, bob, acks_deliveries=True) as (b, _):
            frame = alice.msg(bob.pk, "durable even when delivered live")
            await a.send(frame)
            await a.expect_ack(frame.msg_id, "delivered")
            delivered = await b.deliveries(1)
    async with running_relay(config) as relay, authenticated(relay, bob, acks_deliveries=True) as (b, _):
        again = await b.deliveries(1, ack=True)
        assert again[0].routed == frame and again[0].msg_id == delivered[0].msg_id
        await b.round_trip()
        await relay.app.store.flush_discards()
        assert pending_rows(tmp_path / "relay.db") == []


async def test_a_token_resume_keeps_the_delivery_mode(relay: RelayHandle) -> None:
    alice, bob = Agent(), Agent()
    async with authenticated(relay, bob, acks_deliveries=True) as (_b, hello_ack):
        token = hello_ack.session_token
    async with authenticated(relay, alice) as (a, _):
        frame = alice.msg(bob.pk)
        await a.send(frame)
        await a.expect_ack(frame.msg_id, "queued")
    for _ in range(2):  # not acknowledged the first time: delivered again
        async with connect(relay, headers=[("Authorization", f"Bearer {token}")]) as b:
            assert (await b.deliveries(1))[0].routed == frame
            await b.round_trip()
    await relay.app.store.flush_discards()
    assert len(pending_rows(Path(relay.app.config.db))) == 1


async def test_an_agent_cannot_release_another_agents_rows(relay: RelayHandle) -> None:
    alice, bob, mallory = Agent(), Agent(), Agent()
    async with authenticated(relay, bob, acks_deliveries=True) as (b, _):
        async with authenticated(relay, alice) as (a, _):
            frame = alice.msg(bob.pk)
            await a.send(frame)
            await a.expect_ack(frame.msg_id, "delivered")
        delivery = (await b.deliveries(1))[0]
    async with authenticated(relay, mallory, acks_deliveries=True) as (m, _):
        await m.send(DeliveryAck(msg_id=new_id(), ts=now_ms(), ref_msg_id=delivery.msg_id))
        await m.round_trip()
    await relay.app.store.flush_discards()
    assert len(pending_rows(Path(relay.app.config.db), bob.pk)) == 1


async def test_acks_are_not_charged_to_the_frame_rate_limit(tmp_path: Path) -> None:
    config = make_config(tmp_path, rate_limit_disabled=False, frame_burst=5, frames_per_min=0.001)
    alice, bob = Agent(), Agent()
    async with running_relay(config) as relay:
        async with authenticated(relay, alice) as (a, _):
            for _ in range(5):
                frame = alice.msg(bob.pk)
                await a.send(frame)
                await a.expect_ack(frame.msg_id, "queued")
        async with authenticated(relay, bob, acks_deliveries=True) as (b, _):
            await b.deliveries(5, ack=True)
            await b.round_trip()  # bob's 6th frame, over a burst of 5 unless the acks were free
            assert (await metrics(relay))["rate_limit_hits"] == 0
