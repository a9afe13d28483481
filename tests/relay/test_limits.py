"""Limits: frame rate (burst + sustained), message size (1009), connection cap (503), all counted."""

from pathlib import Path

import trio
from relay_support import Agent, authenticated, connect, http_request, make_config, metrics, ping, start_relay

from ratchet.frames import Ack, Error, Pong


async def test_frame_flood_gets_rate_limit_errors_and_no_acks(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(
        nursery, make_config(tmp_path, rate_limit_disabled=False, frame_burst=3, frames_per_min=0.001)
    )
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _), authenticated(relay, bob) as (b, _):
        pings = [ping() for _ in range(3)]
        for frame in pings:
            await a.send(frame)
        for frame in pings:
            assert (await a.expect(Pong)).msg_id == frame.msg_id  # PING/PONG count too
        dropped = alice.msg(bob.pk)
        await a.send(dropped)
        error = await a.expect_error("RATE_LIMIT", dropped.msg_id)
        assert error.message == "too many frames"
        await a.send("not even json")  # a flood of garbage is limited the same way
        await a.expect_error("RATE_LIMIT")
        # bob has his own bucket, and got nothing from alice
        await b.send(ping())
        assert isinstance(await b.recv(), Pong)
    body = await metrics(relay)
    assert body["rate_limit_hits"] == 2 and body["messages_routed_total"] == 0
    assert body["errors_total"] == {"RATE_LIMIT": 2}


async def test_unauthenticated_floods_are_limited_per_connection(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(
        nursery, make_config(tmp_path, rate_limit_disabled=False, frame_burst=2, frames_per_min=0.001)
    )
    async with connect(relay) as client:
        for _ in range(2):
            await client.send(ping())
            await client.expect(Pong)
        await client.send(ping())
        await client.expect_error("RATE_LIMIT")
    async with connect(relay) as client:  # another connection has its own budget
        await client.send(ping())
        await client.expect(Pong)


async def test_oversize_messages_close_with_1009_and_others_are_unaffected(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, ws_max_payload=4096))
    alice, bob = Agent(), Agent()
    async with authenticated(relay, bob) as (b, _):
        for payload in ("x" * 4097, "é" * 2049, "y" * 200_000):  # bytes, not characters, count (as in ws)
            async with authenticated(relay, alice) as (a, _):
                await a.send(payload)
                closed = await a.expect_close()
                assert closed.code == 1009
            await b.round_trip()
        async with authenticated(relay, alice) as (a, _):
            await a.send('{"pad":"' + "z" * 4000 + '"}')  # 4096 bytes or fewer: parsed (and refused as a frame)
            await a.expect_error("BAD_FRAME")
    body = await metrics(relay)
    assert body["oversize_frames_total"] == 2  # the largest one is cut by hypercorn's own guard, uncounted
    assert body["errors_total"]["MESSAGE_TOO_BIG"] == body["oversize_frames_total"]


async def test_connection_cap_answers_503(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, max_connections=2))
    async with connect(relay) as first, connect(relay) as second:
        await first.round_trip()
        await second.round_trip()
        refused = await http_request(relay, "/ws", upgrade=True)
        assert refused.status == 503
        assert refused.headers.get("connection", "").lower() == "close"
        health = await http_request(relay, "/health")  # plain HTTP is not capped
        assert health.status == 200
    async with connect(relay) as third:  # slots are given back
        await third.round_trip()
    body = await metrics(relay)
    assert body["connections_refused_total"] == 1 and body["connections_total"] == 3


async def test_a_refused_frame_never_gets_an_ack(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(
        nursery, make_config(tmp_path, rate_limit_disabled=False, frame_burst=1, frames_per_min=0.001)
    )
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _):
        accepted, refused = alice.msg(bob.pk), alice.msg(bob.pk)
        await a.send(accepted)
        await a.send(refused)
        replies = [await a.recv(), await a.recv()]
        assert isinstance(replies[0], Ack) and replies[0].ref_msg_id == accepted.msg_id
        assert isinstance(replies[1], Error) and replies[1].ref_msg_id == refused.msg_id
