"""`agentroomd relay` as a real process: ready line, HTTP, SIGTERM -> clean exit; usage errors exit 2."""

import json
import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio
from relay_support import http_request

from agentroomd.relay.config import ENV_OVERRIDES, SECRET_FILE_NAME

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def relay_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES and not k.startswith("AGENTROOM_")}
    env.update(AGENTROOM_HOME=str(home), PYTHONPATH=str(PROJECT_ROOT), **extra)
    return env


async def test_relay_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    home = tmp_path / "home"
    command = [sys.executable, "-m", "agentroomd", "relay", "--port", "0"]
    stderr = bytearray()
    line = b""
    async with trio.open_nursery() as nursery:
        proc = await nursery.start(
            partial(
                trio.run_process, command, env=relay_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=tmp_path, check=False,
            )
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None

        async def drain_stderr() -> None:
            while chunk := await proc.stderr.receive_some(65_536):
                stderr.extend(chunk)

        nursery.start_soon(drain_stderr)
        with trio.fail_after(15):
            while not line.endswith(b"\n"):
                line += await proc.stdout.receive_some(1)
        ready = json.loads(line)
        assert ready["event"] == "ready" and ready["url"] == f"ws://127.0.0.1:{ready['port']}/ws"
        health = await http_request(ready["port"], "/health")
        assert health.status == 200 and health.json()["db"] == "ok"
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0
    log = [json.loads(text) for text in stderr.decode().splitlines()]
    events = [record["event"] for record in log]
    assert "server.start" in events and events[-1] == "shutdown.done"
    secret = (home / SECRET_FILE_NAME).read_text().strip()
    assert len(secret) >= 32 and secret not in stderr.decode() and secret not in line.decode()
    assert (home / "relay.db").exists()


async def test_usage_errors_exit_2(tmp_path: Path) -> None:
    for args, env, message in (
        (["--tunnel"], {}, "--tunnel is not available yet"),
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
