"""How much the handler path adds to the process spawn it cannot avoid.

`agentroomd.handlers.run_handler("cat", text, ...)` runs once per message: `/bin/sh -c cat` in its own
process group, the message on stdin, stdout and stderr read under caps, a deadline, and a sweep of
the group when the child exits. The floor is bare `trio.run_process` of the same command line with
the same stdin, capturing stdout and stderr: the spawn, the pipes and the reap, nothing else.

Both run one message at a time and, separately, ``--concurrency`` at once (the runner's default
`max_concurrent` is 4), alternating ours and the floor round by round so machine noise hits both.
Target: messages/s at least 0.8x the floor.

    .venv/bin/python -m bench.handlers [--messages 100] [--rounds 5] [--concurrency 4] [--size 256]

Exit status 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from agentroomd.handlers import SHELL, HandlerLimits, HandlerOutcome, run_handler
from bench.harness import finish, result, row

TARGET = 0.8
COMMAND = "cat"


async def ours(text: str) -> None:
    outcome = await run_handler(COMMAND, text, {"AGENTROOM_FROM": "bench", "AGENTROOM_TURN": "1"}, HandlerLimits())
    if outcome.outcome is not HandlerOutcome.REPLY or outcome.reply != text.strip():
        raise RuntimeError(f"handler run failed: {outcome}")


async def floor(text: str) -> None:
    done = await trio.run_process(
        [SHELL, "-c", COMMAND], stdin=text.encode(), capture_stdout=True, capture_stderr=True, check=False
    )
    if done.returncode != 0 or done.stdout.decode() != text:
        raise RuntimeError(f"bare run failed: {done.returncode}")


async def rate(job: Callable[[str], Awaitable[None]], text: str, messages: int, concurrency: int) -> float:
    """Messages per second through ``job``, ``concurrency`` at a time."""
    limiter = trio.CapacityLimiter(concurrency)

    async def one() -> None:
        async with limiter:
            await job(text)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(messages):
            nursery.start_soon(one)
    return messages / (time.perf_counter() - started)


async def run(messages: int = 100, rounds: int = 5, concurrency: int = 4, size: int = 256) -> dict[str, Any]:
    text = "m" * size
    best: dict[tuple[str, int], float] = {}
    await rate(ours, text, 10, 1)  # warm-up: imports, page cache of /bin/sh and cat
    await rate(floor, text, 10, 1)
    for _ in range(rounds):
        for width in (1, concurrency):
            for name, job in (("ours", ours), ("floor", floor)):
                measured = await rate(job, text, messages, width)
                best[(name, width)] = max(best.get((name, width), 0.0), measured)
    rows = [
        row("handlers", f"cat via run_handler, {width} at a time", "msg/s", best[("ours", width)],
            best[("floor", width)], ratio_at_least=TARGET, baseline_label="bare trio.run_process")
        for width in (1, concurrency)
    ]
    overhead_us = (1 / best[("ours", 1)] - 1 / best[("floor", 1)]) * 1e6
    notes = [f"run_handler adds {overhead_us:.0f} us per message, one at a time"]
    return result("handlers", rows, notes=notes, messages=messages, rounds=rounds, concurrency=concurrency,
                  overhead_us_per_message=overhead_us, cpus=os.cpu_count())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.handlers", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100, help="messages per round (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best of each counts (default 5)")
    parser.add_argument("--concurrency", type=int, default=4, help="handlers at once in the wide run (default 4)")
    parser.add_argument("--size", type=int, default=256, help="message characters (default 256)")
    args = parser.parse_args(argv)
    outcome = trio.run(lambda: run(args.messages, args.rounds, args.concurrency, args.size))
    title = f"handlers: `{COMMAND}` once per message, best of {args.rounds} rounds x {args.messages} messages"
    return finish(title, outcome)


if __name__ == "__main__":
    sys.exit(main())
