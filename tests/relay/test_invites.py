"""Invites: publish (quota, 7-day clamp), claim (single use, also under concurrency), and the real handshake."""

import sqlite3
from pathlib import Path

import attrs
import trio
from relay_support import (
    Agent,
    authenticated,
    make_config,
    metrics,
    new_id,
    now_ms,
    start_relay,
)

from agentroomd.relay.server import RelayHandle
from agentroomd.relay.wire import routed_text
from ratchet.frames import (
    Ack,
    Delivery,
    Error,
    InviteClaim,
    SessionAck,
    SessionInit,
    parse_frame,
    routed_from_claim,
    serialize_frame,
)
from ratchet.handshake import accept_invite, check_session_ack, handle_session_init
from ratchet.invite import create_invite, parse_invite_url
from ratchet.rand import SYSTEM_RANDOM

DAY_MS = 86_400_000


class WallClock:
    """The relay's wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = now_ms()

    def __call__(self) -> int:
        return self.now


def invite_row(db: Path, invite_id: str) -> tuple[str, str, int, int | None]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT blob, inviter_pk, expires_at, claimed_at FROM invites WHERE invite_id = ?", (invite_id,)
        ).fetchone()
    return row  # type: ignore[no-any-return]


async def test_the_whole_handshake_through_the_relay(relay: RelayHandle) -> None:
    """A real invite, claim, SESSION_INIT and SESSION_ACK, built and checked by ratchet."""
    alice, bob = Agent(), Agent()
    invite = create_invite(alice.keys, relay.url, now_ms(), SYSTEM_RANDOM)
    async with authenticated(relay, alice) as (a, _), authenticated(relay, bob) as (b, _):
        publish = alice.publish(invite.invite_id, invite.payload_b64u, invite.expires_at)
        await a.send(publish)
        await a.expect_ack(publish.msg_id, "delivered")

        parsed = parse_invite_url(invite.url, now_ms())
        fields, bob_session = accept_invite(bob.keys, parsed, now_ms())
        claim = InviteClaim(
            msg_id=new_id(),
            ts=now_ms(),
            invite_id=fields.invite_id,
            from_=fields.from_pk,
            ciphertext=fields.ciphertext,
            nonce=fields.nonce,
            sig=fields.sig,
        )
        await b.send(claim)
        await b.expect_ack(claim.msg_id, "queued")  # the reference always answers a claim with "queued"

        text = await a.recv_text()
        init = _as_delivery(text).routed
        assert isinstance(init, SessionInit)
        assert routed_text(init) == serialize_frame(routed_from_claim(claim, alice.pk))
        assert text.endswith(f',"routed":{serialize_frame(routed_from_claim(claim, alice.pk))}}}')

        ack_fields, _alice_session, nonce_seen = handle_session_init(
            alice.keys, init.from_, init.ciphertext, now_ms(), SYSTEM_RANDOM
        )
        assert nonce_seen == invite.blob.nonce
        session_ack = SessionAck(
            msg_id=new_id(),
            ts=now_ms(),
            from_=ack_fields.from_pk,
            to=ack_fields.to,
            ciphertext=ack_fields.ciphertext,
            nonce=ack_fields.nonce,
            sig=ack_fields.sig,
            seq=0,
        )
        await a.send(session_ack)
        await a.expect_ack(session_ack.msg_id, "delivered")
        got = (await b.expect(Delivery)).routed
        assert got == session_ack
        assert check_session_ack(bob_session.recv_chain_key, invite.blob.nonce, got.ciphertext, got.nonce)
    body = await metrics(relay)
    assert (body["invites_published_total"], body["invites_claimed_total"]) == (1, 1)


def _as_delivery(text: str) -> Delivery:
    frame = parse_frame(text)
    assert isinstance(frame, Delivery)
    return frame


async def test_publish_is_stored_for_the_publisher_with_expiry_clamped_to_7_days(relay: RelayHandle) -> None:
    alice = Agent()
    async with authenticated(relay, alice) as (a, _):
        invite_id = new_id()
        before = now_ms()
        publish = alice.publish(invite_id, "blob-text", before + 30 * DAY_MS)
        await a.send(publish)
        await a.expect_ack(publish.msg_id, "delivered")
        again = alice.publish(invite_id, "another-blob", before + DAY_MS)  # duplicate id: first one kept, ACKed
        await a.send(again)
        await a.expect_ack(again.msg_id, "delivered")
    blob, inviter, expires_at, claimed_at = invite_row(Path(relay.app.config.db), invite_id)
    assert (blob, inviter, claimed_at) == ("blob-text", alice.pk, None)
    assert before + 7 * DAY_MS <= expires_at <= now_ms() + 7 * DAY_MS


async def test_unclaimed_invite_quota(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, max_invites_per_pk=2))
    alice, bob = Agent(), Agent()
    async with authenticated(relay, alice) as (a, _), authenticated(relay, bob) as (b, _):
        ids = [new_id() for _ in range(3)]
        for invite_id in ids[:2]:
            publish = alice.publish(invite_id, "blob", now_ms() + DAY_MS)
            await a.send(publish)
            await a.expect_ack(publish.msg_id, "delivered")
        over = alice.publish(ids[2], "blob", now_ms() + DAY_MS)
        await a.send(over)
        error = await a.expect_error("INVITE_QUOTA", over.msg_id)
        assert error.message == "too many unclaimed invites"

        claim = bob.claim(ids[0], alice.pk)
        await b.send(claim)
        await b.expect_ack(claim.msg_id, "queued")
        await a.expect(Delivery)
        await a.send(over)  # a claimed invite no longer counts
        await a.expect_ack(over.msg_id, "delivered")


async def test_claim_errors_not_found_already_claimed_expired_bad_signature(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    clock = WallClock()
    relay = await start_relay(nursery, make_config(tmp_path), wall_ms=clock)
    alice, bob, carol = Agent(), Agent(), Agent()
    async with authenticated(relay, alice) as (a, _), authenticated(relay, bob) as (b, _):
        live, short = new_id(), new_id()
        for invite_id, expires in ((live, clock.now + DAY_MS), (short, clock.now + 1000)):
            publish = alice.publish(invite_id, "blob", expires)
            await a.send(publish)
            await a.expect_ack(publish.msg_id, "delivered")

        unknown = bob.claim(new_id(), alice.pk)
        await b.send(unknown)
        assert (await b.expect_error("NOT_FOUND", unknown.msg_id)).message == "invite not found"

        forged = bob.claim(live, alice.pk, sign_with=carol.keys)
        await b.send(forged)
        error = await b.expect_error("INVALID_SIG", forged.msg_id)
        assert error.message == "INVITE_CLAIM signature verification failed"
        wrong_to = bob.claim(live, carol.pk)  # signed for another inviter
        await b.send(wrong_to)
        await b.expect_error("INVALID_SIG", wrong_to.msg_id)

        first = bob.claim(live, alice.pk)  # the bad claims did not use the invite up
        await b.send(first)
        await b.expect_ack(first.msg_id, "queued")
        second = bob.claim(live, alice.pk)
        await b.send(second)
        assert (await b.expect_error("ALREADY_CLAIMED", second.msg_id)).message == "invite already used"

        clock.now += 1000  # expires_at <= now: expired, no grace
        late = bob.claim(short, alice.pk)
        await b.send(late)
        assert (await b.expect_error("EXPIRED", late.msg_id)).message == "invite expired"

        forged_from = attrs.evolve(bob.claim(live, alice.pk), from_=carol.pk)
        await b.send(forged_from)
        assert (await b.expect_error("UNAUTH", forged_from.msg_id)).message == "from mismatch"

        inits = await a.deliveries(1)
        assert inits[0].routed.msg_id == first.msg_id
        await a.round_trip()  # exactly one SESSION_INIT reached alice
    body = await metrics(relay)
    assert body["errors_total"] == {"NOT_FOUND": 1, "INVALID_SIG": 2, "ALREADY_CLAIMED": 1, "EXPIRED": 1, "UNAUTH": 1}


async def test_concurrent_claims_of_one_invite_exactly_one_wins(relay: RelayHandle) -> None:
    alice = Agent()
    claimers = [Agent() for _ in range(8)]
    invite_id = new_id()
    outcomes: list[str] = []
    async with authenticated(relay, alice) as (a, _):
        publish = alice.publish(invite_id, "blob", now_ms() + DAY_MS)
        await a.send(publish)
        await a.expect_ack(publish.msg_id, "delivered")

        async def claim(agent: Agent, ready: trio.Event, go: trio.Event) -> None:
            async with authenticated(relay, agent) as (client, _):
                frame = agent.claim(invite_id, alice.pk)
                ready.set()
                await go.wait()
                await client.send(frame)
                reply = await client.recv()
                assert reply.TYPE in ("ACK", "ERROR")
                if isinstance(reply, Ack):
                    outcomes.append(reply.status)
                else:
                    assert isinstance(reply, Error)
                    outcomes.append(reply.code)

        go = trio.Event()
        async with trio.open_nursery() as nursery:
            for agent in claimers:
                ready = trio.Event()
                nursery.start_soon(claim, agent, ready, go)
                await ready.wait()
            go.set()
        assert sorted(outcomes) == ["ALREADY_CLAIMED"] * 7 + ["queued"]
        await a.deliveries(1)
        await a.round_trip()
    assert (await metrics(relay))["invites_claimed_total"] == 1


async def test_a_claim_for_an_inviter_with_a_full_queue_leaves_the_invite_unclaimed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, max_pending_msgs=1))
    alice, bob, carol = Agent(), Agent(), Agent()
    invite_id = new_id()
    async with authenticated(relay, alice) as (a, _):
        publish = alice.publish(invite_id, "blob", now_ms() + DAY_MS)
        await a.send(publish)
        await a.expect_ack(publish.msg_id, "delivered")
    async with authenticated(relay, carol) as (c, _):
        filler = carol.msg(alice.pk)
        await c.send(filler)
        await c.expect_ack(filler.msg_id, "queued")
    async with authenticated(relay, bob) as (b, _):
        claim = bob.claim(invite_id, alice.pk)
        await b.send(claim)
        ack = await b.expect_ack(claim.msg_id, "error")
        assert ack.error == "recipient queue full"
        assert invite_row(Path(relay.app.config.db), invite_id)[3] is None
        async with authenticated(relay, alice) as (a, _):
            await a.deliveries(1)
            await a.round_trip()
            await relay.app.store.flush_discards()
            retry = bob.claim(invite_id, alice.pk)
            await b.send(retry)
            await b.expect_ack(retry.msg_id, "queued")
            assert isinstance((await a.expect(Delivery)).routed, SessionInit)
