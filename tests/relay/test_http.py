"""The relay's HTTP side: /health, /metrics (JSON and Prometheus), /auth/challenge, 404s, 503 on a broken DB."""

import sqlite3
from pathlib import Path

import trio
from relay_support import Agent, authenticated, http_request, make_config, metrics, start_relay

from agentroomd.relay.server import RelayHandle

REFERENCE_METRICS = (
    "ws_connections",
    "challenges_issued",
    "hello_failures",
    "messages_routed_total",
    "rate_limit_hits",
)


async def test_health_reports_store_counts(relay: RelayHandle) -> None:
    response = await http_request(relay, "/health")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["ok"] is True and body["db"] == "ok"
    assert (body["agents"], body["pending"], body["invites"]) == (0, 0, 0)
    assert isinstance(body["uptime_s"], int)

    sender, absent = Agent(), Agent()
    async with authenticated(relay, sender) as (client, _):
        frame = sender.msg(absent.pk)
        await client.send(frame)
        await client.expect_ack(frame.msg_id, "queued")
    body = (await http_request(relay, "/health")).json()
    assert (body["agents"], body["pending"]) == (1, 1)


async def test_health_is_503_when_the_database_fails(relay: RelayHandle, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "relay.db") as conn:
        conn.execute("DROP TABLE agents")
    response = await http_request(relay, "/health")
    assert response.status == 503
    assert response.json()["ok"] is False and response.json()["db"] == "error"
    assert (await metrics(relay))["store_errors_total"] == 1


async def test_metrics_json_has_the_reference_keys_and_ours(relay: RelayHandle) -> None:
    body = await metrics(relay)
    for key in REFERENCE_METRICS:
        assert body[key] == 0
    for key in ("messages_queued_total", "invites_published_total", "invites_claimed_total", "connections_open"):
        assert key in body
    assert body["errors_total"] == {}


async def test_metrics_in_prometheus_text_by_accept_header_or_query(relay: RelayHandle) -> None:
    await http_request(relay, "/auth/challenge")
    by_query = await http_request(relay, "/metrics?format=prometheus")
    by_accept = await http_request(relay, "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    for response in (by_query, by_accept):
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.body.decode()
        assert "# TYPE agentroom_relay_challenges_issued_total counter" in text
        assert "\nagentroom_relay_challenges_issued_total 1\n" in text
        assert "\nagentroom_relay_ws_connections 0\n" in text


async def test_challenges_are_fresh_32_char_base64url(relay: RelayHandle) -> None:
    seen = set()
    for _ in range(5):
        response = await http_request(relay, "/auth/challenge")
        assert response.status == 200
        challenge = response.json()["challenge"]
        assert len(challenge) == 32 and set(challenge) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )
        seen.add(challenge)
    assert len(seen) == 5
    assert (await metrics(relay))["challenges_issued"] == 5


async def test_unknown_paths_and_methods_are_404(relay: RelayHandle) -> None:
    for method, path in (("GET", "/"), ("GET", "/nope"), ("POST", "/health"), ("DELETE", "/auth/challenge")):
        response = await http_request(relay, path, method=method)
        assert response.status == 404
        assert response.json() == {"error": "not found"}


async def test_challenge_rate_limit_per_ip(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start_relay(nursery, make_config(tmp_path, rate_limit_disabled=False, challenge_per_min=3))
    statuses = [(await http_request(relay, "/auth/challenge")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    response = await http_request(relay, "/auth/challenge")
    assert response.json() == {"error": "too many requests"}
    body = await metrics(relay)
    assert body["rate_limit_hits"] == 2 and body["challenges_issued"] == 3


async def test_forwarded_for_keys_the_challenge_limit_only_with_trust_proxy(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    trusted = await start_relay(
        nursery, make_config(tmp_path / "a", rate_limit_disabled=False, challenge_per_min=1, trust_proxy=True)
    )
    untrusted = await start_relay(
        nursery, make_config(tmp_path / "b", rate_limit_disabled=False, challenge_per_min=1, trust_proxy=False)
    )

    async def statuses(relay: RelayHandle) -> list[int]:
        results = []
        for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.1"):
            headers = {"X-Forwarded-For": f"{ip}, 10.0.0.1"}
            results.append((await http_request(relay, "/auth/challenge", headers=headers)).status)
        return results

    assert await statuses(trusted) == [200, 200, 429]  # one bucket per forwarded client
    assert await statuses(untrusted) == [200, 429, 429]  # everyone is 127.0.0.1
