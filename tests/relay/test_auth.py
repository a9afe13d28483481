"""Authentication: challenge + HELLO, session tokens (Bearer and ?token=), rotation, failures and their limits."""

from pathlib import Path

import attrs
import trio
from relay_support import (
    TEST_SECRET,
    Agent,
    LogCapture,
    authenticated,
    connect,
    fetch_challenge,
    http_request,
    make_config,
    metrics,
    now_ms,
    ping,
    quiet_log,
    start_relay,
)

from agentroomd.relay.auth import mint_token, verify_token
from agentroomd.relay.server import RelayHandle
from ratchet.frames import Delivery, Error, HelloAck, Pong


async def test_hello_returns_a_session_token_for_the_key(relay: RelayHandle) -> None:
    agent = Agent()
    async with authenticated(relay, agent) as (_client, ack):
        claims = verify_token(ack.session_token, [TEST_SECRET], now_ms())
        assert claims is not None and claims.ed25519_pk == agent.pk
        assert len(claims.jti) == 11
        assert ack.acks_deliveries is False
        body = await metrics(relay)
        assert (body["ws_connections"], body["hello_success_total"]) == (1, 1)


async def test_hello_ack_confirms_acks_deliveries_when_asked(relay: RelayHandle) -> None:
    agent = Agent()
    async with connect(relay) as client:
        await client.send(agent.hello(await fetch_challenge(relay), acks_deliveries=True))
        text = await client.recv_text()
        assert text.startswith('{"v":2,"type":"HELLO_ACK",') and text.endswith(',"acks_deliveries":true}')


async def test_a_challenge_works_once(relay: RelayHandle) -> None:
    agent = Agent()
    challenge = await fetch_challenge(relay)
    async with connect(relay) as client:
        await client.send(agent.hello(challenge))
        await client.expect(HelloAck)
    async with connect(relay) as client:
        replay = agent.hello(challenge)
        await client.send(replay)
        error = await client.expect_error("INVALID_CHALLENGE", replay.msg_id)
        assert error.message == "challenge expired or unknown"
        assert (await client.expect_close()).code == 1000


async def test_an_unknown_challenge_is_refused(relay: RelayHandle) -> None:
    agent = Agent()
    async with connect(relay) as client:
        await client.send(agent.hello("made-up-challenge-made-up-challen"))
        await client.expect_error("INVALID_CHALLENGE")
        assert (await client.expect_close()).code == 1000
    assert (await metrics(relay))["errors_total"] == {"INVALID_CHALLENGE": 1}


async def test_a_bad_signature_is_refused_counted_and_logged_without_the_key(
    relay: RelayHandle, relay_log: LogCapture
) -> None:
    agent, impostor = Agent(), Agent()
    challenge = await fetch_challenge(relay)
    async with connect(relay) as client:
        hello = agent.hello(challenge)
        forged = impostor.hello(challenge)
        await client.send(attrs.evolve(hello, sig=forged.sig))
        error = await client.expect_error("INVALID_SIG", hello.msg_id)
        assert error.message == "signature verification failed"
        assert (await client.expect_close()).code == 1000
    body = await metrics(relay)
    assert body["hello_failures"] == 1 and body["ws_connections"] == 0
    failures = [r for r in relay_log.records() if r["event"] == "hello.fail"]
    assert failures == [{**failures[0], "pk": agent.pk[:8], "ip": "127.0.0.1"}]
    assert agent.pk not in relay_log.getvalue()


async def test_repeated_hello_failures_close_with_1008(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, rate_limit_disabled=False, hello_failures_per_min=2))
    agent, impostor = Agent(), Agent()
    codes = []
    for _ in range(3):
        challenge = await fetch_challenge(relay)
        async with connect(relay) as client:
            hello = agent.hello(challenge)
            await client.send(attrs.evolve(hello, sig=impostor.hello(challenge).sig))
            error = await client.expect(Error)
            closed = await client.expect_close()
            codes.append((error.code, closed.code, closed.reason))
    assert codes == [
        ("INVALID_SIG", 1000, "INVALID_SIG"),
        ("INVALID_SIG", 1000, "INVALID_SIG"),
        ("RATE_LIMIT", 1008, "RATE_LIMIT"),
    ]
    body = await metrics(relay)
    assert body["hello_failures"] == 3 and body["rate_limit_hits"] == 1


async def test_frames_before_hello_get_unauth_and_the_socket_stays_usable(relay: RelayHandle) -> None:
    agent, other = Agent(), Agent()
    async with connect(relay) as client:
        frame = agent.msg(other.pk)
        await client.send(frame)
        error = await client.expect_error("UNAUTH", frame.msg_id)
        assert error.message == "authenticate first with HELLO"
        probe = ping()
        await client.send(probe)
        assert (await client.expect(Pong)).msg_id == probe.msg_id
        await client.send(agent.hello(await fetch_challenge(relay)))
        await client.expect(HelloAck)
        await client.send(frame)
        await client.expect_ack(frame.msg_id, "queued")


async def _token_for(relay: RelayHandle, agent: Agent) -> str:
    async with authenticated(relay, agent) as (_client, ack):
        return ack.session_token


async def test_token_resume_by_bearer_header(relay: RelayHandle) -> None:
    agent, sender = Agent(), Agent()
    token = await _token_for(relay, agent)
    async with connect(relay, headers=[("Authorization", f"Bearer {token}")]) as client:
        probe = ping()
        await client.send(probe)
        assert (await client.expect(Pong)).msg_id == probe.msg_id  # a PONG, not an ERROR: resumed
        async with authenticated(relay, sender) as (other, _):
            frame = sender.msg(agent.pk)
            await other.send(frame)
            await other.expect_ack(frame.msg_id, "delivered")
        assert (await client.expect(Delivery)).routed.msg_id == frame.msg_id
    assert (await metrics(relay))["token_resumes_total"] == 1


async def test_token_resume_by_legacy_query_parameter(relay: RelayHandle) -> None:
    agent = Agent()
    token = await _token_for(relay, agent)
    async with connect(relay, path=f"/ws?token={token}") as client:
        await client.round_trip()
        assert (await metrics(relay))["ws_connections"] == 1


async def test_invalid_or_expired_tokens_get_unauth_and_can_still_hello(relay: RelayHandle) -> None:
    agent = Agent()
    expired = mint_token(TEST_SECRET, agent.pk, now_ms() - 2 * 3_600_000)
    forged = mint_token("another-secret-" + "y" * 40, agent.pk, now_ms())
    for token in (expired, forged, "garbage", "a.b.c", "."):
        async with connect(relay, headers=[("Authorization", f"Bearer {token}")]) as client:
            error = await client.expect_error("UNAUTH")
            assert error.message == "invalid or expired session token" and error.ref_msg_id is None
            await client.send(agent.hello(await fetch_challenge(relay)))
            await client.expect(HelloAck)
    assert (await metrics(relay))["token_failures_total"] == 5


async def test_previous_secret_is_accepted_during_rotation(nursery: trio.Nursery, tmp_path: Path) -> None:
    old, new = "old-secret-" + "o" * 40, "new-secret-" + "n" * 40
    agent = Agent()
    old_token = mint_token(old, agent.pk, now_ms())
    rotating = await start_relay(nursery, make_config(tmp_path / "a", hmac_secret=new, hmac_secret_previous=old))
    rotated = await start_relay(nursery, make_config(tmp_path / "b", hmac_secret=new))
    async with connect(rotating, headers=[("Authorization", f"Bearer {old_token}")]) as client:
        await client.round_trip()
        assert (await metrics(rotating))["token_resumes_total"] == 1
    async with connect(rotated, headers=[("Authorization", f"Bearer {old_token}")]) as client:
        await client.expect_error("UNAUTH")
    async with authenticated(rotating, agent) as (_client, ack):
        assert verify_token(ack.session_token, [new], now_ms()) is not None  # new tokens use the new secret


async def test_a_second_connection_of_the_same_key_replaces_the_first(relay: RelayHandle) -> None:
    agent, sender = Agent(), Agent()
    async with authenticated(relay, agent) as (first, ack):
        async with authenticated(relay, agent) as (second, _):
            closed = await first.expect_close()
            assert (closed.code, closed.reason) == (1000, "replaced by new connection")
            async with authenticated(relay, sender) as (other, _):
                frame = sender.msg(agent.pk)
                await other.send(frame)
                await other.expect_ack(frame.msg_id, "delivered")
            assert (await second.expect(Delivery)).routed.msg_id == frame.msg_id
        # a token resume replaces an older socket too (the reference left a ghost)
        async with authenticated(relay, agent) as (third, _):
            async with connect(relay, headers=[("Authorization", f"Bearer {ack.session_token}")]) as fourth:
                assert (await third.expect_close()).reason == "replaced by new connection"
                await fourth.round_trip()


async def test_hello_again_on_an_authenticated_socket(relay: RelayHandle) -> None:
    agent, stranger = Agent(), Agent()
    async with authenticated(relay, agent) as (client, _):
        await client.send(agent.hello(await fetch_challenge(relay)))
        again = await client.expect(HelloAck)
        assert verify_token(again.session_token, [TEST_SECRET], now_ms()) is not None
        other = stranger.hello(await fetch_challenge(relay))
        await client.send(other)
        await client.expect_error("UNAUTH", other.msg_id)
        await client.round_trip()


async def test_unauthenticated_sockets_time_out(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, auth_timeout_s=0.2))
    async with connect(relay) as client:
        closed = await client.expect_close()
        assert (closed.code, closed.reason) == (1008, "authentication timeout")
    async with authenticated(relay, Agent()) as (client, _):
        with trio.move_on_after(0.4):  # authenticated sockets are not timed out
            await client.expect_close()
            raise AssertionError("an authenticated socket was closed")
    assert (await metrics(relay))["auth_timeouts_total"] == 1


async def test_logs_never_contain_tokens_or_keys(nursery: trio.Nursery, tmp_path: Path) -> None:
    log, capture = quiet_log()
    relay = await start_relay(nursery, make_config(tmp_path), log=log)
    agent, peer = Agent(), Agent()
    async with authenticated(relay, agent) as (client, ack):
        frame = agent.msg(peer.pk, "secret body")
        await client.send(frame)
        await client.expect_ack(frame.msg_id, "queued")
    async with connect(relay, headers=[("Authorization", f"Bearer {ack.session_token}")]) as client:
        await client.round_trip()
    text = capture.getvalue()
    assert "hello.success" in text and "token.resume" in text
    for secret in (ack.session_token, TEST_SECRET, agent.pk, peer.pk, frame.ciphertext, frame.sig, frame.nonce):
        assert secret not in text


async def test_websocket_on_another_path_is_404(relay: RelayHandle) -> None:
    assert (await http_request(relay, "/other", upgrade=True)).status == 404
    assert (await http_request(relay, "/ws", upgrade=True)).status == 101
