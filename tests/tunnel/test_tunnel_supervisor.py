"""The tunnel supervisor against a fake `cloudflared` that prints the real log lines, dies and moves."""

import os
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
from support.fake_cloudflared import FakeCloudflared, install_fake_cloudflared
from support.waiting import wait_gone

from agentroomd.orphans import CHILD_RECORD_FILE, read_child_record, still_running
from agentroomd.tunnel import (
    TunnelConfig,
    TunnelError,
    TunnelState,
    TunnelStatus,
    TunnelSupervisor,
)

FAKE_SSH = r'''#!{python}
"""Fake `ssh -R` tunnel service: an optional banner with an unrelated URL, then the tunnel's URL."""
import sys, time
if sys.argv[2:] == ["banner"]:
    print("Welcome! docs at https://docs.example.org/tunnels", flush=True)
print(f"Forwarding HTTP traffic from https://p{{sys.argv[1]}}.lhr.life to localhost:{{sys.argv[1]}}", flush=True)
time.sleep(3600)
'''


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeCloudflared]:
    fake = install_fake_cloudflared(tmp_path)
    yield fake
    fake.assert_none_left()  # every test here stops what it started


def quick_config(fake: FakeCloudflared, **overrides: float) -> TunnelConfig:
    """Tiny backoff so restarts take milliseconds; the fake is a real process, so the clock is real."""
    settings = {"backoff_initial_s": 0.01, "backoff_max_s": 0.05, "url_timeout_s": 10.0, "kill_grace_s": 1.0}
    return TunnelConfig(cloudflared=str(fake.binary), **{**settings, **overrides})  # type: ignore[arg-type]


async def record_states(supervisor: TunnelSupervisor, into: list[TunnelStatus]) -> None:
    version = -1
    while True:
        version, status = await supervisor.status.wait_change(version)
        into.append(status)


Supervise = Callable[..., Awaitable[TunnelSupervisor]]


@pytest.fixture
async def supervise(nursery: trio.Nursery) -> AsyncIterator[Supervise]:
    """Start supervisors in the test's nursery (cancelled, with their processes, when the test ends)."""

    async def start(config: TunnelConfig, port: int = 8787) -> TunnelSupervisor:
        environ = {**os.environ, "NOTIFY_SOCKET": "/run/user/1000/systemd/notify"}
        supervisor = TunnelSupervisor(config, port, environ=environ, rng=random.Random(7))
        await nursery.start(supervisor.run)
        return supervisor

    yield start


async def test_quick_tunnel_url_is_parsed_and_published_as_wss(fake: FakeCloudflared) -> None:
    supervisor = TunnelSupervisor(quick_config(fake), 8787, environ={**os.environ, "NOTIFY_SOCKET": "/x"})
    async with trio.open_nursery() as nursery:
        assert await nursery.start(supervisor.run) is supervisor
        assert supervisor.status.value.state is TunnelState.STARTING  # started reported before any URL
        with trio.fail_after(10):
            assert await supervisor.wait_url() == "wss://fake-run-1.trycloudflare.com/ws"
        status = supervisor.status.value
        assert (status.state, status.public_url, status.restarts) == (
            TunnelState.RUNNING,
            "https://fake-run-1.trycloudflare.com",
            0,
        )
        assert fake.calls() == [
            {"argv": ["tunnel", "--url", "http://127.0.0.1:8787", "--no-autoupdate"], "notify": None}
        ]
        nursery.cancel_scope.cancel()
    await wait_gone(fake.pid(1))  # cancellation stopped the process


async def test_death_restarts_with_backoff_and_publishes_the_new_url(
    fake: FakeCloudflared, supervise: Supervise
) -> None:
    supervisor = await supervise(quick_config(fake))
    seen: list[TunnelStatus] = []
    async with trio.open_nursery() as watchers:
        watchers.start_soon(record_states, supervisor, seen)
        with trio.fail_after(10):
            await supervisor.wait_url()
            fake.control("die")
            status = await supervisor.status.wait_for(lambda s: s.url == "wss://fake-run-2.trycloudflare.com/ws")
        watchers.cancel_scope.cancel()
    assert status.restarts == 1
    assert status.last_error is None
    states = [s.state for s in seen]
    assert states[states.index(TunnelState.RUNNING) :] == [
        TunnelState.RUNNING,
        TunnelState.BACKOFF,
        TunnelState.STARTING,
        TunnelState.RUNNING,
    ]
    backoff = next(s for s in seen if s.state is TunnelState.BACKOFF)
    assert backoff.url is None  # a dead quick tunnel's URL is never handed out
    assert backoff.last_error is not None
    assert backoff.last_error.startswith("cloudflared exited with status 1; last output:")
    assert "connection with edge closed" in backoff.last_error
    await wait_gone(fake.pid(1))


async def test_url_change_without_restart_is_published(fake: FakeCloudflared, supervise: Supervise) -> None:
    supervisor = await supervise(quick_config(fake))
    with trio.fail_after(10):
        await supervisor.wait_url()
        fake.control("url brand-new-words")
        status = await supervisor.status.wait_for(lambda s: s.url != "wss://fake-run-1.trycloudflare.com/ws")
    assert status.url == "wss://brand-new-words.trycloudflare.com/ws"
    assert (status.state, status.restarts) == (TunnelState.RUNNING, 0)


async def test_crash_loop_keeps_retrying_and_never_takes_the_api_host(
    fake: FakeCloudflared, supervise: Supervise
) -> None:
    fake.set_mode("fail")
    supervisor = await supervise(quick_config(fake))
    with trio.fail_after(20):
        status = await supervisor.status.wait_for(lambda s: s.consecutive_failures >= 4)
    assert status.state in (TunnelState.BACKOFF, TunnelState.STARTING)
    assert status.url is None
    assert status.restarts >= 3
    assert status.last_error is not None
    assert "failed to request quick Tunnel" in status.last_error


async def test_a_stable_run_resets_the_backoff(fake: FakeCloudflared, supervise: Supervise) -> None:
    supervisor = await supervise(quick_config(fake, stable_after_s=0.05))
    with trio.fail_after(10):
        for run in (1, 2):
            url = f"wss://fake-run-{run}.trycloudflare.com/ws"
            await supervisor.status.wait_for(lambda s, url=url: s.url == url)  # type: ignore[misc]
            await trio.sleep(0.1)  # let the run become "stable" (real time, it is a real process)
            fake.control("die")
            status = await supervisor.status.wait_for(lambda s: s.state is TunnelState.BACKOFF)
            assert status.consecutive_failures == 1


async def test_no_url_in_time_stops_the_process_and_backs_off(fake: FakeCloudflared, supervise: Supervise) -> None:
    fake.set_mode("silent")
    supervisor = await supervise(quick_config(fake, url_timeout_s=0.3))
    with trio.fail_after(10):
        status = await supervisor.status.wait_for(lambda s: s.state is TunnelState.BACKOFF)
    assert status.last_error is not None
    assert status.last_error.startswith("cloudflared printed no public URL within 0.3s")
    await wait_gone(fake.pid(1))


async def test_missing_cloudflared_is_fatal_with_install_options(tmp_path: Path) -> None:
    supervisor = TunnelSupervisor(TunnelConfig(), 8787, environ={"PATH": str(tmp_path)})
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
    status = supervisor.status.value
    assert status.state is TunnelState.FATAL
    assert status.last_error is not None
    assert status.last_error.startswith("cloudflared not found on PATH: install cloudflared")
    for option in ("brew install cloudflared", "github.com/cloudflare/cloudflared/releases", "AGENTROOM_CLOUDFLARED"):
        assert option in status.last_error
    with pytest.raises(TunnelError, match="cloudflared not found"):
        await supervisor.wait_url()


async def test_fixed_public_url_needs_no_process() -> None:
    supervisor = TunnelSupervisor(TunnelConfig(public_url="https://Chat.Example.com/agentroom/"), 8787, environ={})
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
    assert supervisor.status.value == TunnelStatus(
        provider="fixed",
        state=TunnelState.RUNNING,
        url="wss://chat.example.com/agentroom/ws",
        public_url="https://Chat.Example.com/agentroom/",
    )
    assert await supervisor.wait_url() == "wss://chat.example.com/agentroom/ws"


async def test_generic_command_gets_the_port_and_its_url_is_found(tmp_path: Path, supervise: Supervise) -> None:
    script = tmp_path / "fake_ssh.py"
    script.write_text(FAKE_SSH.format(python=sys.executable))
    plain = await supervise(TunnelConfig(command=f"exec {sys.executable} {script} {{port}}"), port=9123)
    # A banner with another https URL comes first: url_pattern says which URL is the tunnel's.
    banner = TunnelConfig(command=f"exec {sys.executable} {script} {{port}} banner", url_pattern=r"https://\S+\.lhr\.life")
    picky = await supervise(banner, port=9124)
    with trio.fail_after(10):
        assert await plain.wait_url() == "wss://p9123.lhr.life/ws"
        assert await picky.wait_url() == "wss://p9124.lhr.life/ws"
    assert plain.status.value.provider == "command"


async def test_the_running_child_is_recorded_until_it_is_reaped(fake: FakeCloudflared, tmp_path: Path) -> None:
    record = tmp_path / CHILD_RECORD_FILE
    supervisor = TunnelSupervisor(quick_config(fake), 8787, child_record=record)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        with trio.fail_after(10):
            await supervisor.wait_url()
            first = read_child_record(record)
            assert (first.pid, first.program, still_running(first)) == (fake.pid(1), "cloudflared", None)
            fake.control("die")
            await supervisor.status.wait_for(lambda s: s.url == "wss://fake-run-2.trycloudflare.com/ws")
        assert read_child_record(record).pid == fake.pid(2)  # the dead run's record went, the new run's came
        nursery.cancel_scope.cancel()
    assert not record.exists()  # stopped and reaped: nothing for the next start to end


async def test_a_command_that_execs_its_tunnel_is_recorded_as_the_program_it_became(
    tmp_path: Path, supervise: Supervise
) -> None:
    script = tmp_path / "fake_ssh.py"
    script.write_text(FAKE_SSH.format(python=sys.executable))
    record = tmp_path / CHILD_RECORD_FILE
    # The shell is still the shell when the record is first written; the URL comes from what it exec'd.
    config = TunnelConfig(command=f"sleep 0.2; exec {sys.executable} {script} {{port}}")
    supervisor = TunnelSupervisor(config, 9125, child_record=record)
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        with trio.fail_after(10):
            await supervisor.wait_url()
        assert still_running(read_child_record(record)) is None  # rewritten before the URL went out
        nursery.cancel_scope.cancel()
    assert not record.exists()
