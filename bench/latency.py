"""Turn latency: `message.send` on daemon A until `message.received` on daemon B's subscription.

Real processes on loopback: `agentroomd relay`, two `agentroomd run` daemons paired through it, and
this bench driving both over their control sockets. One message at a time: the clock starts when
the `message.send` request is written to A's socket and stops when B's notification for that
message is read, so the number is what an agent waiting for its peer's turn sees (A's encrypt,
sign, SQLite commit, the relay's routing, B's verify, decrypt, SQLite commit, the subscription).

The ceiling, measured in the same run and interleaved block by block with ours so machine noise
hits both alike: the same payload through a bare WebSocket echo on the same stack (the relay's
hypercorn transport + trio-websocket; bench.relay's bare forwarder with the client as its own peer).
Target: p50 at most 3x.

Two more rows, measured in the same blocks, say where a turn's floor lies beyond that echo: a control
socket round trip (``identity.show`` on A: a turn crosses a control socket twice, into A and out of
B) and one fdatasync on the daemons' disk (a turn waits for one: the sender's, before its frame
leaves; the receiver's flush comes after the subscriber has the message). A last row sets the turn
against the sum of what it cannot avoid: that echo (the hop A -> relay -> B is one), the control
round trip, the fdatasync, and v3's cryptography for one message (seal, sign, verify, open: timed in
this process, bench.ratchet's v3 line). No target: it says how much of a turn is ours.

    .venv/bin/python -m bench.latency [--messages 1000] [--size 256] [--blocks 10]
                                      [--profile DIR] [--what-if-no-flush]

``--profile DIR`` runs the relay and both daemons under cProfile over the timed turns only and prints
where their time goes per turn, by owner (ours, trio, hypercorn, wsproto, ...), with the hottest
functions. ``--what-if-no-flush`` runs the daemons' client store without the fdatasync of its flushes:
the difference prices the one flush on a turn's path (the sender's, before its frame leaves; the
receiver's comes after the subscriber has the message, before the DELIVERY_ACK).

Exit status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from bench.harness import (
    Control,
    DaemonProcess,
    RelayProcess,
    finish,
    open_control,
    pair,
    percentile,
    print_profile,
    profile_report,
    result,
    row,
    short_dir,
    stop_all,
    whoami,
)
from bench.relay import server_process

P50_TARGET = 3.0


class Turns:
    """Sends on A and times each message until B's subscription reports it."""

    def __init__(self, sender: Control, receiver: Control, peer: str, size: int) -> None:
        self.sender, self.receiver, self.peer = sender, receiver, peer
        self.pad = "x" * size
        self.arrived: dict[str, trio.Event] = {}
        self.arrival_ns: dict[str, int] = {}

    async def listen(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from agentroomd.control import api

        await self.receiver.call(api.MESSAGE_SUBSCRIBE, api.SubscribeParams())
        task_status.started()
        async for note in self.receiver.notifications:
            if note.get("method") != api.MESSAGE_RECEIVED:
                continue
            key = note["params"]["message"]["text"][:40]
            self.arrival_ns[key] = time.perf_counter_ns()
            event = self.arrived.get(key)
            if event is not None:
                event.set()

    async def turn(self, index: int) -> tuple[float, float]:
        """(ms until B got it, ms until A's message.send answered)."""
        from agentroomd.control import api

        key = f"{index:08d}-{uuid.uuid4().hex}"[:40]
        event = self.arrived[key] = trio.Event()
        started = time.perf_counter_ns()
        reply = await self.sender.call(api.MESSAGE_SEND, api.MessageSendParams(peer=self.peer, text=key + self.pad))
        answered = time.perf_counter_ns()
        if reply.status != "delivered":
            raise RuntimeError(f"message.send answered {reply.status!r}: the peer should be online")
        with trio.fail_after(30):
            await event.wait()
        del self.arrived[key]
        return (self.arrival_ns.pop(key) - started) / 1e6, (answered - started) / 1e6


async def echo_round_trips(port: int, payload: str, count: int) -> list[float]:
    """ms per round trip of ``payload`` through the bare forwarder, the client being its own peer."""
    name = uuid.uuid4().hex
    samples = []
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws", max_message_size=2**22) as ws:
        await ws.send_message(name)
        assert await ws.get_message() == "ok"
        message = f"{name}|{payload}"
        for _ in range(count):
            started = time.perf_counter_ns()
            await ws.send_message(message)
            await ws.get_message()
            samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


async def control_round_trips(control: Control, count: int) -> list[float]:
    """ms per `identity.show` round trip on an idle control connection (framing, dispatch, one reply)."""
    from agentroomd.control import api

    samples = []
    for _ in range(count):
        started = time.perf_counter_ns()
        await control.call(api.IDENTITY_SHOW)
        samples.append((time.perf_counter_ns() - started) / 1e6)
    return samples


def crypto_ms(size: int, count: int = 300, rounds: int = 5) -> float:
    """ms of v3 encrypt + sign and verify + decrypt for one message of ``size`` bytes (best round, CPU)."""
    from bench.ratchet import Fixture, v3_ours_receive, v3_ours_send

    fixture = Fixture(count, size)
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        v3_ours_send(fixture)
        v3_ours_receive(fixture)
        best = min(best, time.process_time() - started)
    return best / count * 1000


def fdatasync_times(directory: Path, count: int) -> list[float]:
    """ms per fdatasync of a freshly appended 4 KiB block in ``directory`` (the daemons' filesystem)."""
    path = directory / "fdatasync.probe"
    samples = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            started = time.perf_counter_ns()
            os.fdatasync(fd)
            samples.append((time.perf_counter_ns() - started) / 1e6)
    finally:
        os.close(fd)
        path.unlink()
    return samples


async def run(
    messages: int = 1000,
    size: int = 256,
    blocks: int = 10,
    warmup: int = 50,
    profile_dir: Path | None = None,
    what_if: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Time ``messages`` turns beside as many echoes.

    With ``profile_dir``, relay and daemons run under `bench._profiled`, profiled over the timed turns
    only (dumps: sender.prof, relay.prof, receiver.prof). ``what_if`` goes to the daemons' environment.
    """
    root = short_dir("ar-lat-")

    def profile(name: str) -> Path | None:
        return None if profile_dir is None else profile_dir / f"{name}.prof"

    relay = RelayProcess(root / "relay", profile=profile("relay"))
    relay.workdir.mkdir()
    alice = DaemonProcess(root / "a", profile=profile("sender"), what_if=what_if)
    bob = DaemonProcess(root / "b", profile=profile("receiver"), what_if=what_if)
    measured = (alice, relay, bob)
    ours: list[float] = []
    send_answer: list[float] = []
    echo: list[float] = []
    control_rt: list[float] = []
    disk: list[float] = []
    per_block = max(1, messages // blocks)
    payload = "x" * (40 + size)
    try:
        await relay.start()
        await alice.start()
        await bob.start()
        await pair(bob, alice, relay.url)
        bob_pk = await whoami(bob)
        workdir = root / "bare"
        workdir.mkdir()
        async with (
            server_process("bare", workdir) as bare,
            open_control(alice.socket) as sender,
            open_control(bob.socket) as receiver,
            trio.open_nursery() as nursery,
        ):
            turns = Turns(sender, receiver, bob_pk, size)
            await nursery.start(turns.listen)
            for i in range(warmup):
                await turns.turn(-1 - i)
            await echo_round_trips(bare.port, payload, warmup)
            for process in measured:
                process.profile_start()
            done = 0
            while done < messages:
                count = min(per_block, messages - done)
                for i in range(done, done + count):
                    to_b, answered = await turns.turn(i)
                    ours.append(to_b)
                    send_answer.append(answered)
                echo += await echo_round_trips(bare.port, payload, count)
                control_rt += await control_round_trips(sender, count)
                disk += await trio.to_thread.run_sync(fdatasync_times, alice.home, count)
                done += count
            for process in measured:
                await process.profile_stop()
            nursery.cancel_scope.cancel()
    finally:
        await stop_all((alice, bob), relay)
    shutil.rmtree(root, ignore_errors=True)  # kept when something failed: the logs are there

    crypto = crypto_ms(len(payload))
    floor = statistics.median(echo) + statistics.median(control_rt) + statistics.median(disk) + crypto
    rows = [
        row("latency", f"turn p50, {size} B text", "ms", statistics.median(ours), statistics.median(echo),
            ratio_at_most=P50_TARGET, baseline_label="bare WS echo p50"),
        row("latency", f"turn p99, {size} B text", "ms", percentile(ours, 0.99), percentile(echo, 0.99),
            baseline_label="bare WS echo p99"),
        row("latency", "message.send answered (relay ACK) p50", "ms", statistics.median(send_answer),
            statistics.median(echo), baseline_label="bare WS echo p50"),
        row("latency", "control socket round trip (identity.show) p50", "ms", statistics.median(control_rt),
            statistics.median(echo), baseline_label="bare WS echo p50"),
        row("latency", "one fdatasync on the daemons' disk p50", "ms", statistics.median(disk),
            statistics.median(echo), baseline_label="bare WS echo p50"),
        row("latency", "turn p50", "ms", statistics.median(ours), floor,
            baseline_label=f"its floor: echo + control RT + fdatasync + crypto {crypto * 1000:.0f} us"),
    ]
    return result(
        "latency", rows, messages=messages, size=size,
        turn_ms={"p50": statistics.median(ours), "p99": percentile(ours, 0.99), "max": max(ours)},
        send_answer_ms={"p50": statistics.median(send_answer), "p99": percentile(send_answer, 0.99)},
        echo_ms={"p50": statistics.median(echo), "p99": percentile(echo, 0.99), "max": max(echo)},
        control_ms={"p50": statistics.median(control_rt), "p99": percentile(control_rt, 0.99)},
        fdatasync_ms={"p50": statistics.median(disk), "p99": percentile(disk, 0.99)},
        crypto_ms=crypto, floor_ms=floor,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="timed turns (default 1000)")
    parser.add_argument("--size", type=int, default=256, help="characters of text per message (default 256)")
    parser.add_argument("--blocks", type=int, default=10, help="alternate ours/echo in this many blocks")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="run relay and daemons under cProfile, keep the dumps in DIR, print where CPU goes")
    parser.add_argument("--what-if-no-flush", action="store_true",
                        help="what-if: the daemons' client store skips the fdatasync of its flushes")
    args = parser.parse_args(argv)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    what_if = {"BENCH_CLIENT_NO_FLUSH": "1"} if args.what_if_no_flush else None
    outcome = trio.run(lambda: run(args.messages, args.size, args.blocks, profile_dir=args.profile, what_if=what_if))
    if args.profile is not None:
        for name in ("sender", "relay", "receiver"):
            print_profile(f"{name}, timed turns only", profile_report(args.profile / f"{name}.prof"),
                          per=args.messages, unit="turn")
    return finish(f"turn latency: {args.messages} messages, one at a time, relay + 2 daemons on loopback", outcome)


if __name__ == "__main__":
    sys.exit(main())
