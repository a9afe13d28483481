"""The daemon's own costs: resident memory when idle, time to READY, and a status round trip.

* **idle RSS**: a fresh `agentroomd run` with nothing to do, and one paired with a peer through a
  relay after it has carried some messages (connected, sessions loaded, SQLite warm). Baseline: a
  bare trio program sleeping (`python -c "import trio; trio.run(trio.sleep_forever)"`), the floor
  for any trio process on this interpreter. Target: under 60 MiB.
* **start to READY**: from spawning `agentroomd run --ready-fd N` until it writes "ready" (its
  control socket answers, every service started). Baseline: `python -c "import trio"` run to
  completion. Target: under 1 s.
* **status round trip**: `agentroomctl status` as a user runs it (a new process: interpreter, imports,
  connect, hello, status), against `python -c pass`; and `daemon.status` on an open control
  connection against `daemon.hello`, the cheapest call through the same RPC stack.

    .venv/bin/python -m bench.daemon [--starts 5] [--calls 500]

Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from typing import Any

import trio

from bench.harness import (
    DaemonProcess,
    RelayProcess,
    finish,
    isolated_env,
    measure_run_time,
    open_control,
    pair,
    result,
    row,
    rss_kib,
    short_dir,
    stop_all,
    whoami,
)

RSS_TARGET_MIB = 60
READY_TARGET_S = 1.0
SETTLE_S = 1.0


async def _bare_trio_rss(settle_s: float) -> float:
    """MiB of a trio program doing nothing, measured like the daemon's."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", "import sys, trio; print('up', flush=True); trio.run(trio.sleep_forever)"],
        stdout=-1, env=isolated_env(),
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(30):
            await process.stdout.receive_some(16)
        await trio.sleep(settle_s)
        return rss_kib(process.pid) / 1024
    finally:
        process.kill()
        await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()


async def _call_times(path: Any, spec: Any, calls: int) -> list[float]:
    times = []
    async with open_control(path) as control:
        for _ in range(calls):
            started = time.perf_counter()
            await control.call(spec)
            times.append((time.perf_counter() - started) * 1000)
    return times


async def run(
    starts: int = 5, calls: int = 500, messages: int = 200, cli_runs: int = 5, settle_s: float = SETTLE_S
) -> dict[str, Any]:
    from agentroomd.control import api

    root = short_dir("ar-dmn-")
    ready: list[float] = []
    # start to READY: a fresh home each time (identity creation included once, in the first)
    for i in range(starts):
        daemon = DaemonProcess(root / f"s{i}")
        try:
            await daemon.start()
            ready.append(daemon.ready_s)
        finally:
            await daemon.stop()
    floor_import = await trio.to_thread.run_sync(
        measure_run_time, [sys.executable, "-c", "import trio"], max(3, starts)
    )
    floor_rss = await _bare_trio_rss(settle_s)

    relay = RelayProcess(root / "relay")
    relay.workdir.mkdir()
    alice, bob = DaemonProcess(root / "a"), DaemonProcess(root / "b")
    try:
        await alice.start()
        await trio.sleep(settle_s)
        fresh_rss = rss_kib(alice.pid) / 1024
        await relay.start()
        await bob.start()
        await pair(alice, bob, relay.url)
        alice_pk = await whoami(alice)
        async with open_control(bob.socket) as control:
            for i in range(messages):
                await control.call(api.MESSAGE_SEND, api.MessageSendParams(peer=alice_pk, text=f"warm {i}"))
        await trio.sleep(settle_s)
        paired_rss = rss_kib(alice.pid) / 1024
        status_ms = await _call_times(alice.socket, api.DAEMON_STATUS, calls)
        hello_ms = await _call_times(alice.socket, api.DAEMON_HELLO, calls)
        ctl = [sys.executable, "-m", "agentroomctl", "--home", str(alice.home), "--no-autostart", "status"]
        cli = await trio.to_thread.run_sync(measure_run_time, ctl, cli_runs)
        bare_python = await trio.to_thread.run_sync(measure_run_time, [sys.executable, "-c", "pass"], cli_runs)
    finally:
        await stop_all((alice, bob), relay)
    shutil.rmtree(root, ignore_errors=True)  # kept when something failed: the logs are there

    rows = [
        row("daemon", "idle RSS, fresh", "MiB", fresh_rss, floor_rss, below=RSS_TARGET_MIB,
            baseline_label="python+trio idle"),
        row("daemon", f"idle RSS, paired, after {messages} msgs", "MiB", paired_rss, floor_rss, below=RSS_TARGET_MIB,
            baseline_label="python+trio idle"),
        row("daemon", "start to READY, median", "s", statistics.median(ready), statistics.median(floor_import),
            below=READY_TARGET_S, baseline_label="python -c 'import trio'"),
        row("daemon", "start to READY, worst", "s", max(ready), max(floor_import), below=READY_TARGET_S,
            baseline_label="python -c 'import trio'"),
        row("daemon", "agentroomctl status (new process)", "ms", statistics.median(cli) * 1000,
            statistics.median(bare_python) * 1000, baseline_label="python -c pass"),
        row("daemon", "daemon.status on an open connection", "ms", statistics.median(status_ms),
            statistics.median(hello_ms), baseline_label="daemon.hello"),
    ]
    return result(
        "daemon", rows, ready_s=ready, fresh_rss_mib=fresh_rss, paired_rss_mib=paired_rss,
        floor_rss_mib=floor_rss, cli_status_s=cli, status_ms_p50=statistics.median(status_ms),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.daemon", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="daemon starts timed (default 5)")
    parser.add_argument("--calls", type=int, default=500, help="daemon.status calls timed (default 500)")
    parser.add_argument("--messages", type=int, default=200, help="messages before the paired RSS (default 200)")
    args = parser.parse_args(argv)
    outcome = trio.run(lambda: run(args.starts, args.calls, args.messages))
    return finish("daemon: memory, startup, status", outcome)


if __name__ == "__main__":
    sys.exit(main())
