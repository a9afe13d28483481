"""`agentroomd relay` as a real process: ready line, HTTP, SIGTERM -> clean exit, SIGKILL loses nothing queued."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from functools import partial
from pathlib import Path

import attrs
import trio
from relay_support import Agent, authenticated, http_request

from agentroomd.relay.config import ENV_OVERRIDES, SECRET_FILE_NAME
from agentroomd.relay.server import RelayHandle

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def relay_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES and not k.startswith("AGENTROOM_")}
    env.update(AGENTROOM_HOME=str(home), PYTHONPATH=str(PROJECT_ROOT), RATE_LIMIT_DISABLED="1", **extra)
    return env


@attrs.define
class RelayProcess:
    process: trio.Process
    ready: dict[str, object]
    stdout_line: bytes
    stderr: bytearray

    @property
    def handle(self) -> RelayHandle:
        """Enough of a handle for the test helpers (they only use the port)."""
        port = int(str(self.ready["port"]))
        return RelayHandle("127.0.0.1", port, str(self.ready["url"]), str(self.ready["http_url"]), None)  # type: ignore[arg-type]


@asynccontextmanager
async def relay_process(home: Path, *args: str) -> AsyncIterator[RelayProcess]:
    command = [sys.executable, "-m", "agentroomd", "relay", "--port", "0", *args]
    stderr = bytearray()
    async with trio.open_nursery() as nursery:
        proc: trio.Process = await nursery.start(
            partial(
                trio.run_process, command, env=relay_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=home.parent, check=False,
            )
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        stderr_stream = proc.stderr

        async def drain_stderr() -> None:
            while chunk := await stderr_stream.receive_some(65_536):
                stderr.extend(chunk)

        nursery.start_soon(drain_stderr)
        line = b""
        with trio.fail_after(15):
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(1)
        try:
            yield RelayProcess(proc, json.loads(line), line, stderr)
        finally:
            if proc.returncode is None:
                proc.kill()


async def test_relay_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with relay_process(home) as relay:
        ready = relay.ready
        assert ready["event"] == "ready" and ready["url"] == f"ws://127.0.0.1:{ready['port']}/ws"
        health = await http_request(relay.handle, "/health")
        assert health.status == 200 and health.json()["db"] == "ok"
        relay.process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await relay.process.wait() == 0
    log = [json.loads(text) for text in relay.stderr.decode().splitlines()]
    events = [record["event"] for record in log]
    assert "server.start" in events and events[-1] == "shutdown.done"
    secret = (home / SECRET_FILE_NAME).read_text().strip()
    assert len(secret) >= 32 and secret not in relay.stderr.decode() and secret not in relay.stdout_line.decode()
    assert (home / "relay.db").exists()


async def test_sigkill_loses_nothing_acknowledged_as_queued(tmp_path: Path) -> None:
    home, db = tmp_path / "home", tmp_path / "relay.db"
    alice, bob = Agent(), Agent()
    sent = []
    async with relay_process(home, "--db", str(db)) as relay:
        async with authenticated(relay.handle, alice) as (a, _):
            for i in range(5):
                frame = alice.msg(bob.pk, f"survives kill -9 ({i})")
                await a.send(frame)
                await a.expect_ack(frame.msg_id, "queued")
                sent.append(frame)
            relay.process.kill()  # no shutdown, no flush, no checkpoint
            with trio.fail_after(15):
                assert await relay.process.wait() == -signal.SIGKILL
            await a.expect_close()
    async with relay_process(home, "--db", str(db)) as relay:
        async with authenticated(relay.handle, bob) as (b, _):
            assert [d.routed for d in await b.deliveries(5)] == sent
        relay.process.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await relay.process.wait() == 0


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args, env, message in (
        ([], {"PORT": "eighty"}, "port (environment PORT): expected an integer"),
    ):
        result = await trio.run_process(
            [sys.executable, "-m", "agentroomd", "relay", "--db", ":memory:", *args],
            env=relay_env(tmp_path, **env),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 2
        assert message in result.stderr.decode()


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[dict[str, object]]:
    buffer = b""
    while chunk := await stream.receive_some(65_536):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


async def test_tunnel_publishes_the_relay_and_ends_with_it(tmp_path: Path) -> None:
    from support.fake_cloudflared import install_fake_cloudflared

    fake = install_fake_cloudflared(tmp_path)
    env = relay_env(tmp_path / "home", AGENTROOM_CLOUDFLARED=str(fake.binary))
    command = [sys.executable, "-m", "agentroomd", "relay", "--port", "0", "--db", ":memory:", "--tunnel"]
    proc = await trio.lowlevel.open_process(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        with trio.fail_after(20):
            async with aclosing(_lines(proc.stdout)) as events:
                ready = await anext(events)
                assert ready["event"] == "ready"
                tunnel = await anext(events)
                while tunnel["url"] is None:  # starting, then running with its URL
                    tunnel = await anext(events)
        assert (tunnel["event"], tunnel["state"]) == ("tunnel", "running")
        assert tunnel["url"] == "wss://fake-run-1.trycloudflare.com/ws"
        assert [call["argv"] for call in fake.calls()] == [
            ["tunnel", "--url", f"http://127.0.0.1:{ready['port']}", "--no-autoupdate"]
        ]
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    fake.assert_none_left()


async def test_tunnel_without_cloudflared_stops_the_relay_saying_why(tmp_path: Path) -> None:
    env = relay_env(tmp_path / "home", PATH=str(tmp_path))  # nothing to run there
    command = [sys.executable, "-m", "agentroomd", "relay", "--port", "0", "--db", ":memory:", "--tunnel"]
    with trio.fail_after(20):
        result = await trio.run_process(command, env=env, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [e["event"] for e in events] == ["ready", "tunnel"]
    assert events[1]["state"] == "fatal" and "cloudflared not found" in str(events[1]["last_error"])
    assert "cloudflared not found" in result.stderr.decode()
