"""The tunnel's small parts: URL parsing and conversion, backoff, binary resolution, config, observables."""

import random
from pathlib import Path

import pytest
import trio
import trio.testing

from agentroomd.tunnel import (
    MAX_LINE,
    QUICK_TUNNEL_URL,
    ObservableValue,
    TunnelConfig,
    TunnelError,
    backoff_delay,
    output_lines,
    relay_url,
    resolve_cloudflared,
)

REAL_LINES = {
    # the box cloudflared prints (AsciiBox in cmd/cloudflared/tunnel/quick_tunnel.go)
    "2026-05-13T07:00:00Z INF |  https://gentle-river-1234-foo.trycloudflare.com"
    "                                            |": "https://gentle-river-1234-foo.trycloudflare.com",
    "2026-05-13T07:00:00Z INF |  Your quick Tunnel has been created! Visit it at (it may take some time to be "
    "reachable):  |": None,
    "2026-05-13T07:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...": None,
    "2026-05-13T07:00:00Z INF Thank you for trying Cloudflare Tunnel. ... Terms of Use "
    "(https://www.cloudflare.com/website-terms/) ... https://developers.cloudflare.com/cloudflare-one/": None,
    '2026-05-13T07:00:00Z ERR failed to request quick Tunnel: Post "https://api.trycloudflare.com/tunnel": '
    "dial tcp: i/o timeout": None,
    "2026-05-13T07:00:01Z INF Registered tunnel connection connIndex=0 connection=0e5b7c2a event=0 "
    "ip=198.41.200.13 location=ams01 protocol=quic": None,
}


@pytest.mark.parametrize(("line", "expected"), REAL_LINES.items())
def test_quick_tunnel_url_only_from_the_box_line(line: str, expected: str | None) -> None:
    match = QUICK_TUNNEL_URL.search(line)
    assert (match.group(0) if match else None) == expected


@pytest.mark.parametrize(
    ("public", "relay"),
    [
        ("https://gentle-river.trycloudflare.com", "wss://gentle-river.trycloudflare.com/ws"),
        ("https://chat.example.com/", "wss://chat.example.com/ws"),
        ("https://chat.example.com/agentroom", "wss://chat.example.com/agentroom/ws"),
        ("wss://chat.example.com/ws", "wss://chat.example.com/ws"),
        ("http://10.0.0.2:8787", "ws://10.0.0.2:8787/ws"),
        ("  HTTPS://Chat.Example.COM:8443  ", "wss://chat.example.com:8443/ws"),
    ],
)
def test_relay_url_from_public_url(public: str, relay: str) -> None:
    assert relay_url(public) == relay


@pytest.mark.parametrize(
    "bad", ["", "chat.example.com", "ftp://x.org", "https://", "https://u:p@x.org", "https://x.org/?q=1", "https://x#f"]
)
def test_unusable_public_urls_are_rejected_clearly(bad: str) -> None:
    with pytest.raises(TunnelError, match="not a usable public URL"):
        relay_url(bad)


class EdgeRandom(random.Random):
    """uniform() returns one end of the range, to pin the jitter bounds."""

    def __init__(self, end: int) -> None:
        super().__init__(0)
        self.end = end

    def uniform(self, a: float, b: float) -> float:
        return (a, b)[self.end]


def test_backoff_doubles_up_to_the_cap_with_half_to_full_jitter() -> None:
    full, half = EdgeRandom(1), EdgeRandom(0)
    assert [backoff_delay(n, 1.0, 60.0, full) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert [backoff_delay(n, 1.0, 60.0, half) for n in (1, 2, 7)] == [0.5, 1, 30]
    assert backoff_delay(10_000, 1.0, 60.0, full) == 60  # no overflow after a long outage
    rng = random.Random(1)
    delays = [backoff_delay(3, 1.0, 60.0, rng) for _ in range(50)]
    assert all(2.0 <= d <= 4.0 for d in delays) and len(set(delays)) > 1


def executable(path: Path) -> Path:
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_cloudflared_from_config_then_env_then_path(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    on_path = executable(tmp_path / "bin" / "cloudflared")
    from_env = executable(tmp_path / "env-cloudflared")
    from_config = executable(tmp_path / "config-cloudflared")
    env = {"PATH": str(tmp_path / "bin")}
    assert resolve_cloudflared(None, env) == str(on_path)
    assert resolve_cloudflared(None, {**env, "AGENTROOM_CLOUDFLARED": str(from_env)}) == str(from_env)
    assert resolve_cloudflared(str(from_config), {**env, "AGENTROOM_CLOUDFLARED": str(from_env)}) == str(from_config)
    assert resolve_cloudflared("cloudflared", env) == str(on_path)  # a bare name is looked up on PATH


def test_cloudflared_that_is_not_executable_is_named_in_the_error(tmp_path: Path) -> None:
    plain = tmp_path / "cloudflared"
    plain.write_text("not a program")
    with pytest.raises(TunnelError, match=f"^AGENTROOM_CLOUDFLARED={plain} is not an executable file; install"):
        resolve_cloudflared(None, {"PATH": "", "AGENTROOM_CLOUDFLARED": str(plain)})
    with pytest.raises(TunnelError, match=r"^\[tunnel\] cloudflared=/nope/cloudflared is not an executable file"):
        resolve_cloudflared("/nope/cloudflared", {"PATH": ""})
    with pytest.raises(TunnelError, match=r"^cloudflared not found on PATH: install cloudflared"):
        resolve_cloudflared(None, {"PATH": str(tmp_path / "empty")})


def test_config_from_table_and_its_errors() -> None:
    config = TunnelConfig.from_table({"public_url": "https://chat.example.com", "backoff_max_s": 30})
    assert (config.provider, config.backoff_max_s) == ("fixed", 30.0)
    assert TunnelConfig.from_table({"command": "ssh -R 80:127.0.0.1:{port} x"}).provider == "command"
    assert TunnelConfig.from_table({}).provider == "cloudflared"
    with pytest.raises(TunnelError, match=r"\[tunnel\] unknown key 'url'"):
        TunnelConfig.from_table({"url": "https://x"})
    with pytest.raises(TunnelError, match=r"\[tunnel\] backoff_max_s: expected a number, got 'soon'"):
        TunnelConfig.from_table({"backoff_max_s": "soon"})
    with pytest.raises(TunnelError, match=r"\[tunnel\] command: expected a string, got 5"):
        TunnelConfig.from_table({"command": 5})
    with pytest.raises(TunnelError, match=r"\[tunnel\] 'url_timeout_s' must be > 0"):
        TunnelConfig.from_table({"url_timeout_s": 0})
    with pytest.raises(TunnelError, match=r"either public_url .* or command, not both"):
        TunnelConfig(public_url="https://x.org", command="ssh")
    with pytest.raises(TunnelError, match="not a usable public URL"):
        TunnelConfig(public_url="x.org")
    with pytest.raises(TunnelError, match="url_pattern is not a regular expression"):
        TunnelConfig(command="ssh", url_pattern="https://(")
    with pytest.raises(TunnelError, match="command is empty"):
        TunnelConfig(command=" ")


async def test_observable_value_wakes_waiters_on_change_only() -> None:
    value = ObservableValue("a")
    value.set("a")
    assert value.version == 0  # setting the same value is not a change
    seen: list[tuple[int, str]] = []

    async def follow() -> None:
        version = 0
        for _ in range(2):
            version, current = await value.wait_change(version)
            seen.append((version, current))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        value.set("b")
        await trio.testing.wait_all_tasks_blocked()
        value.set("c")
    assert seen == [(1, "b"), (2, "c")]
    with trio.fail_after(1):
        assert await value.wait_for(lambda v: v == "c") == "c"


async def test_output_lines_are_split_and_an_endless_line_is_capped() -> None:
    send, receive = trio.testing.memory_stream_one_way_pair()
    await send.send_all(b"first\r\nsec")
    await send.send_all(b"ond\n" + b"x" * (MAX_LINE * 3) + b"\nafter\n\xff tail")
    await send.aclose()
    lines = [line async for line in output_lines(receive)]
    assert lines == ["first", "second", "x" * MAX_LINE, "after", "\ufffd tail"]

