"""Endurance: many pairs chatting through one relay while the relay and a daemon are SIGKILLed at random.

`make soak` (`python -m bench.soak`). Real processes: one `agentroomd relay` and D `agentroomd run`
daemons, the smallest number whose pairings give ``--pairs`` sessions (each daemon is one identity
and may be in several pairs: 100 pairs need 15 daemons, not 200). Every pair chats both ways, each
direction a stream of numbered messages sent with `message.send` over its own control connection;
every daemon's messages are read from one `message.subscribe` (resubscribed from the last cursor
after a restart).

Phases: pair everyone; a warm-up without faults; drain, settle and take the baseline (RSS and open
file descriptors of the relay and every daemon); then ``--minutes`` of traffic while, at random
times (about every ``--fault-every`` seconds), either the relay or one chosen daemon is killed
with SIGKILL and restarted (same port, same home); then drain, settle and measure again.

What must hold at the end (exit status 1 otherwise, with the counts printed):
* every message whose `message.send` answered (delivered, queued or pending) was received exactly
  once, and each stream arrived in order. A send whose control connection died with its daemon is
  "uncertain": it may arrive (at most once, in order) or not. A send the daemon refused must not arrive.
* each process's RSS is within 10% of its baseline (a restarted process is compared with the one it
  replaced), and no process holds more file descriptors than at the baseline, once 40 s have passed
  (the relay keeps the socket of a killed daemon in CLOSE-WAIT until its next WebSocket ping, 30 s).

    .venv/bin/python -m bench.soak [--minutes 3] [--pairs 100] [--fault-every 10] [--interval 0.5] [--seed N]
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import shutil
import sys
import time
from collections import Counter
from typing import Any

import attrs
import trio

from agentroomd.control import api
from bench.harness import (
    ControlGone,
    DaemonProcess,
    RelayProcess,
    fd_count,
    fd_targets,
    finish,
    open_control,
    pair,
    result,
    row,
    rss_kib,
    short_dir,
    stop_all,
    whoami,
)

MEMORY_GROWTH_LIMIT = 0.10
DRAIN_TIMEOUT_S = 180.0
SETTLE_S = 2.0
# How long the end measurement waits for fds to come back before calling them leaked: hypercorn closes
# the socket of a peer that vanished only when its WebSocket ping task next wakes (relay ping_interval_s,
# 30 s by default), so a daemon killed just before the end leaves the relay an fd in CLOSE-WAIT that long.
FD_SETTLE_S = 40.0
ACK_TIMEOUT_S = 2.0  # message.send answers "pending" after this while the relay is down


def daemons_for(pairs: int) -> int:
    """The fewest identities whose distinct pairings number at least ``pairs``."""
    return max(2, math.ceil((1 + math.sqrt(1 + 8 * pairs)) / 2))


@attrs.define
class Stream:
    """One direction of one pair: what was sent (by outcome) and what arrived, in arrival order."""

    src: int
    dst: int
    next_seq: int = 0
    confirmed: set[int] = attrs.Factory(set)
    uncertain: set[int] = attrs.Factory(set)
    refused: set[int] = attrs.Factory(set)
    arrived: list[int] = attrs.Factory(list)
    arrived_set: set[int] = attrs.Factory(set)


@attrs.define
class Soak:
    relay: RelayProcess
    daemons: list[DaemonProcess]
    streams: dict[tuple[int, int], Stream]
    interval: float
    rng: random.Random
    up: list[trio.Event] = attrs.Factory(list)
    awaiting: int = 0  # confirmed sends not received yet
    drained: trio.Event = attrs.Factory(trio.Event)
    cursors: dict[int, int] = attrs.Factory(dict)
    by_pk: dict[str, int] = attrs.Factory(dict)
    strays: int = 0  # received messages that belong to no stream
    send_errors: dict[str, int] = attrs.Factory(dict)
    faults: dict[str, int] = attrs.Factory(lambda: {"relay": 0, "daemon": 0})
    resubscribes: int = 0

    # ---------------------------------------------------------------- senders

    async def send_stream(self, stream: Stream, until: float) -> None:
        daemon = self.daemons[stream.src]
        peer = self.daemons[stream.dst].pk
        while trio.current_time() < until:
            await self.up[stream.src].wait()
            try:
                async with open_control(daemon.socket) as control:
                    while trio.current_time() < until:
                        seq = stream.next_seq
                        stream.next_seq += 1
                        text = f"{stream.src}>{stream.dst}#{seq}"
                        try:
                            await control.call(api.MESSAGE_SEND, api.MessageSendParams(peer=peer, text=text))
                        except ControlGone:
                            stream.uncertain.add(seq)
                            break
                        except api.RpcError as exc:
                            stream.refused.add(seq)
                            self.send_errors[exc.type] = self.send_errors.get(exc.type, 0) + 1
                            continue
                        self._confirm(stream, seq)
                        pause = min(self.rng.uniform(0, 2 * self.interval), until - trio.current_time())
                        await trio.sleep(max(0.0, pause))
            except OSError:
                await trio.sleep(0.05)  # the daemon is gone and not marked down yet, or not listening yet

    def _confirm(self, stream: Stream, seq: int) -> None:
        stream.confirmed.add(seq)
        if seq not in stream.arrived_set:
            self.awaiting += 1

    # ---------------------------------------------------------------- receivers

    async def receive(self, index: int) -> None:
        """Follow daemon ``index``'s messages for ever, resubscribing from the last cursor after each loss."""
        daemon = self.daemons[index]
        while True:
            await self.up[index].wait()
            try:
                async with open_control(daemon.socket) as control:
                    since = self.cursors.get(index, 0)
                    await control.call(api.MESSAGE_SUBSCRIBE, api.SubscribeParams(since=since))
                    async for note in control.notifications:
                        if note.get("method") == api.MESSAGE_RECEIVED:
                            self._arrived(index, note["params"]["message"])
                        elif note.get("method") == api.MESSAGE_CLOSED:
                            break
            except (OSError, ControlGone, api.RpcError):
                await trio.sleep(0.05)
            self.resubscribes += 1

    def _arrived(self, index: int, message: dict[str, Any]) -> None:
        self.cursors[index] = max(self.cursors.get(index, 0), int(message["cursor"]))
        head, _, seq_text = message["text"].partition("#")
        src_text, _, dst_text = head.partition(">")
        stream = self.streams.get((int(src_text), int(dst_text))) if src_text.isdigit() and dst_text.isdigit() else None
        if stream is None or int(dst_text) != index or self.by_pk.get(message["from"]) != stream.src:
            self.strays += 1
            return
        seq = int(seq_text)
        stream.arrived.append(seq)
        if seq not in stream.arrived_set:
            stream.arrived_set.add(seq)
            if seq in stream.confirmed:
                self.awaiting -= 1
        if self.awaiting == 0:
            self.drained.set()

    # ---------------------------------------------------------------- faults

    async def faults_until(self, until: float, every_s: float, victim: int) -> None:
        """Kill the relay and the victim daemon in turn (who goes first is random), at random times."""
        relay_next = self.rng.random() < 0.5
        while True:
            await trio.sleep(self.rng.uniform(0.5, 1.5) * every_s)
            downtime = self.rng.uniform(0.0, 1.0)
            if trio.current_time() + downtime + 2 >= until:
                return
            with trio.CancelScope(shield=True):  # a killed process is always started again
                relay_next = not relay_next
                if not relay_next:
                    await self.relay.kill()
                    self.faults["relay"] += 1
                    await trio.sleep(downtime)
                    await self.relay.start()
                else:
                    self.up[victim] = trio.Event()
                    await self.daemons[victim].kill()
                    self.faults["daemon"] += 1
                    await trio.sleep(downtime)
                    await self.daemons[victim].start()
                    self.up[victim].set()

    # ---------------------------------------------------------------- phases

    async def traffic(self, seconds: float, fault_every: float | None, victim: int) -> None:
        until = trio.current_time() + seconds
        async with trio.open_nursery() as nursery:
            for stream in self.streams.values():
                nursery.start_soon(self.send_stream, stream, until)
            if fault_every is not None:
                nursery.start_soon(self.faults_until, until, fault_every, victim)

    async def drain(self) -> bool:
        """Wait until every confirmed message arrived; False on timeout."""
        self.drained = trio.Event()
        if self.awaiting == 0:
            return True
        with trio.move_on_after(DRAIN_TIMEOUT_S):
            await self.drained.wait()
            return True
        return False

    def pids(self) -> dict[str, int]:
        return {"relay": self.relay.pid} | {f"daemon {i}": daemon.pid for i, daemon in enumerate(self.daemons)}

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Per process: (RSS KiB, open fds)."""
        return {name: (rss_kib(pid), fd_count(pid)) for name, pid in self.pids().items()}

    def fd_kinds(self) -> dict[str, Counter[str]]:
        return {name: Counter(fd_targets(pid)) for name, pid in self.pids().items()}


def check_streams(streams: dict[tuple[int, int], Stream]) -> dict[str, int]:
    names = ("sent", "uncertain", "uncertain_received", "refused", "received", "missing", "duplicates",
             "out_of_order", "refused_but_received", "unknown_seq")
    counts = dict.fromkeys(names, 0)
    for stream in streams.values():
        counts["sent"] += len(stream.confirmed)
        counts["uncertain"] += len(stream.uncertain)
        counts["uncertain_received"] += len(stream.uncertain & stream.arrived_set)
        counts["refused"] += len(stream.refused)
        counts["received"] += len(stream.arrived)
        counts["missing"] += len(stream.confirmed - stream.arrived_set)
        counts["duplicates"] += len(stream.arrived) - len(stream.arrived_set)
        counts["out_of_order"] += sum(1 for a, b in itertools.pairwise(stream.arrived) if b <= a)
        counts["refused_but_received"] += len(stream.refused & stream.arrived_set)
        counts["unknown_seq"] += len(stream.arrived_set - stream.confirmed - stream.uncertain - stream.refused)
    return counts


async def run(minutes: float = 3.0, pairs: int = 100, fault_every: float = 10.0, interval: float = 0.5,
              seed: int | None = None, warmup_s: float = 10.0, fd_settle_s: float = FD_SETTLE_S) -> dict[str, Any]:
    seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    count = daemons_for(pairs)
    root = short_dir("ar-soak-")
    relay = RelayProcess(root / "relay")
    relay.workdir.mkdir()
    daemons = [DaemonProcess(root / f"d{i}", ack_timeout_s=ACK_TIMEOUT_S) for i in range(count)]
    chosen = list(itertools.combinations(range(count), 2))[:pairs]
    streams = {(a, b): Stream(a, b) for i, j in chosen for a, b in ((i, j), (j, i))}
    soak = Soak(relay, daemons, streams, interval, rng, up=[trio.Event() for _ in daemons])
    victim = rng.randrange(count)
    started = time.monotonic()
    try:
        await relay.start()
        async with trio.open_nursery() as nursery:
            for daemon in daemons:
                nursery.start_soon(daemon.start)
        for i, daemon in enumerate(daemons):
            soak.by_pk[await whoami(daemon)] = i
            soak.up[i].set()
        limiter = trio.CapacityLimiter(4)

        async def pair_one(i: int, j: int) -> None:
            async with limiter:
                await pair(daemons[i], daemons[j], relay.url)

        async with trio.open_nursery() as nursery:
            for i, j in chosen:
                nursery.start_soon(pair_one, i, j)
        print(f"soak: {count} daemons, {len(chosen)} pairs ({len(streams)} streams), seed {seed},"
              f" victim daemon {victim}; set up in {time.monotonic() - started:.1f} s", flush=True)

        async with trio.open_nursery() as receivers:
            for i in range(count):
                receivers.start_soon(soak.receive, i)
            await soak.traffic(min(warmup_s, max(1.0, minutes * 60 / 4)), None, victim)
            warm_drained = await soak.drain()
            await trio.sleep(SETTLE_S)
            before, kinds_before = soak.snapshot(), soak.fd_kinds()
            print(f"soak: warm-up done ({check_streams(streams)['sent']} messages); faults for {minutes:g} min",
                  flush=True)
            await soak.traffic(minutes * 60, fault_every, victim)
            drained = await soak.drain() and warm_drained
            await trio.sleep(SETTLE_S)
            after = soak.snapshot()
            settle_started = trio.current_time()
            settle_until = settle_started + fd_settle_s
            while any(after[k][1] > before[k][1] for k in before) and trio.current_time() < settle_until:
                await trio.sleep(0.5)  # a reconnect or a closing socket in flight: look again
                after = soak.snapshot()
            fds_back_after_s = trio.current_time() - settle_started
            kinds_after = soak.fd_kinds()
            receivers.cancel_scope.cancel()
    finally:
        await stop_all(daemons, relay)

    counts = check_streams(streams)
    counts.update(strays=soak.strays, relay_kills=soak.faults["relay"], daemon_kills=soak.faults["daemon"],
                  resubscribes=soak.resubscribes, drained=int(drained))
    rows = [
        row("soak", "confirmed sends received exactly once, in order", "msgs", counts["sent"] - counts["missing"],
            counts["sent"], ratio_at_least=1.0, baseline_label="confirmed sends"),
    ]
    for name in ("missing", "duplicates", "out_of_order", "refused_but_received", "unknown_seq", "strays"):
        rows.append(row("soak", name.replace("_", " "), "msgs", counts[name], below=1))
    rss_before = sum(before[k][0] for k in before) / 1024
    rss_after = sum(after[k][0] for k in after) / 1024
    worst = max(before, key=lambda k: after[k][0] / before[k][0])
    rows.append(row("soak", "RSS, all processes", "MiB", rss_after, rss_before,
                    ratio_at_most=1 + MEMORY_GROWTH_LIMIT, baseline_label="start"))
    rows.append(row("soak", f"RSS, worst process ({worst})", "MiB", after[worst][0] / 1024, before[worst][0] / 1024,
                    ratio_at_most=1 + MEMORY_GROWTH_LIMIT, baseline_label="start"))
    leaked = {k: dict(kinds_after[k] - kinds_before[k]) for k in before if after[k][1] > before[k][1]}
    rows.append(row("soak", "open fds, all processes", "fds", sum(a[1] for a in after.values()),
                    sum(b[1] for b in before.values()), ratio_at_most=1.0, baseline_label="start"))
    rows.append(row("soak", "processes holding more fds than at start", "procs", len(leaked), below=1))
    outcome = result("soak", rows, counts=counts, seed=seed, daemons=count, pairs=len(chosen), victim=victim,
                     before={k: {"rss_kib": v[0], "fds": v[1]} for k, v in before.items()},
                     after={k: {"rss_kib": v[0], "fds": v[1]} for k, v in after.items()},
                     fd_leaks=leaked, fds_back_after_s=fds_back_after_s, send_errors=soak.send_errors, minutes=minutes,
                     notes=[])
    if fds_back_after_s > 1:
        outcome["notes"].append(f"fds took {fds_back_after_s:.0f} s to come back after the traffic stopped (hypercorn "
                                "closes a vanished peer's socket only at its next WebSocket ping)")
    if outcome["ok"]:
        shutil.rmtree(root, ignore_errors=True)
    else:
        outcome["notes"].append(f"logs and databases kept in {root} (seed {seed} replays the fault schedule)")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="minutes of traffic under faults (default 3)")
    parser.add_argument("--pairs", type=int, default=100, help="pairs chatting both ways (default 100)")
    parser.add_argument("--fault-every", type=float, default=10.0, help="mean seconds between kills (default 10)")
    parser.add_argument("--interval", type=float, default=0.5, help="mean seconds between a stream's sends")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of traffic before the baseline")
    parser.add_argument("--seed", type=int, help="random seed (printed; reuse it to replay a schedule)")
    args = parser.parse_args(argv)
    outcome = trio.run(lambda: run(args.minutes, args.pairs, args.fault_every, args.interval, args.seed,
                                   args.warmup))
    counts = outcome["counts"]
    print("soak counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if outcome["send_errors"]:
        print(f"soak: sends refused by the daemon: {outcome['send_errors']}")
    if outcome["fd_leaks"]:
        print(f"soak: more fds than at start: {outcome['fd_leaks']}")
    status = finish("soak", outcome)
    print("soak:", "OK" if outcome["ok"] else "VIOLATION")
    return status


if __name__ == "__main__":
    sys.exit(main())
