"""A conversation driven by `HandlerRunner`: ordering per peer, concurrency across peers, turns, loop guard."""

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from agentroomd.handlers import (
    HandlerEvent,
    HandlerLimits,
    HandlerOutcome,
    HandlerRan,
    HandlerRunner,
    MessageSkipped,
    SkipReason,
    TurnsExhausted,
    limits_from_table,
)


@attrs.define
class Harness:
    """A runner plus what it sent and reported, with a way to await the next N events."""

    runner: HandlerRunner
    sent: list[tuple[str, str, int]]
    events: trio.MemoryReceiveChannel[HandlerEvent]
    send_ok: bool = True

    async def next_events(self, count: int) -> list[HandlerEvent]:
        with trio.fail_after(15):
            return [await self.events.receive() for _ in range(count)]


MakeRunner = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_runner(nursery: trio.Nursery) -> AsyncIterator[MakeRunner]:
    async def make(cmd: str, **kwargs: object) -> Harness:
        send_events, receive_events = trio.open_memory_channel[HandlerEvent](1000)
        sent: list[tuple[str, str, int]] = []

        async def send_reply(peer: str, text: str, turn: int) -> bool:
            sent.append((peer, text, turn))
            return harness.send_ok

        runner = HandlerRunner(cmd, send_reply, room="room-7", on_event=send_events.send_nowait, **kwargs)  # type: ignore[arg-type]
        harness = Harness(runner, sent, receive_events)
        await nursery.start(runner.run)
        return harness

    yield make


async def test_replies_keep_the_order_of_messages_per_peer(make_runner: MakeRunner) -> None:
    # The first message takes longest: a runner that overlapped runs of one peer would reorder replies.
    h = await make_runner('read d; sleep "$d"; echo "slept $d"')
    for i, delay in enumerate(["0.4", "0", "0.1", "0"]):
        assert h.runner.submit("alice", f"m{i}", delay)
    events = await h.next_events(4)
    assert [e.msg_id for e in events if isinstance(e, HandlerRan)] == ["m0", "m1", "m2", "m3"]
    assert h.sent == [
        ("alice", "slept 0.4", 1),
        ("alice", "slept 0", 2),
        ("alice", "slept 0.1", 3),
        ("alice", "slept 0", 4),
    ]


async def test_different_peers_run_concurrently(make_runner: MakeRunner) -> None:
    fifo_dir = tempfile.mkdtemp(prefix="ar-", dir="/tmp")
    fifo = Path(fifo_dir) / "f"
    os.mkfifo(fifo)
    # alice's handler blocks until bob's handler opens the fifo: serialising peers would deadlock.
    cmd = f'if [ "$AGENTROOM_FROM" = alice ]; then cat {fifo}; else echo from-bob > {fifo}; echo bob-done; fi'
    h = await make_runner(cmd, limits=HandlerLimits(timeout_s=10, max_concurrent=2))
    h.runner.submit("alice", "a1", "hi")
    h.runner.submit("bob", "b1", "hi")
    await h.next_events(2)
    assert sorted(h.sent) == [("alice", "from-bob", 1), ("bob", "bob-done", 1)]
    os.unlink(fifo)
    os.rmdir(fifo_dir)


async def test_handler_sees_room_message_id_and_turn(make_runner: MakeRunner) -> None:
    h = await make_runner('echo "$AGENTROOM_ROOM $AGENTROOM_FROM $AGENTROOM_MSG_ID $AGENTROOM_TURN"')
    h.runner.submit("alice", "msg-1", "hi")
    h.runner.submit("alice", "msg-2", "hi")
    await h.next_events(2)
    assert [text for _, text, _ in h.sent] == ["room-7 alice msg-1 1", "room-7 alice msg-2 2"]


async def test_max_turns_ends_the_exchange_and_says_so_once(make_runner: MakeRunner) -> None:
    h = await make_runner('echo "turn $AGENTROOM_TURN"', max_turns=2)
    for i in range(4):
        h.runner.submit("alice", f"m{i}", "hi")
    events = await h.next_events(5)
    assert [type(e).__name__ for e in events] == [
        "HandlerRan",
        "HandlerRan",
        "TurnsExhausted",
        "MessageSkipped",
        "MessageSkipped",
    ]
    assert events[2] == TurnsExhausted("alice", 2)
    assert all(e.reason is SkipReason.MAX_TURNS for e in events[3:] if isinstance(e, MessageSkipped))
    assert [text for _, text, _ in h.sent] == ["turn 1", "turn 2"]
    assert h.runner.stats.skipped_max_turns == 2
    # Another peer's exchange has its own count.
    h.runner.submit("bob", "b0", "hi")
    (event,) = await h.next_events(1)
    assert isinstance(event, HandlerRan) and event.sent


async def test_a_seed_counts_as_the_first_turn(make_runner: MakeRunner) -> None:
    h = await make_runner('echo "turn $AGENTROOM_TURN"', max_turns=2)
    assert h.runner.record_seed("alice") == 1
    h.runner.submit("alice", "m0", "hi")
    h.runner.submit("alice", "m1", "hi")
    events = await h.next_events(3)
    assert h.sent == [("alice", "turn 2", 2)]
    assert events[1] == TurnsExhausted("alice", 2)
    assert events[2] == MessageSkipped("alice", "m1", SkipReason.MAX_TURNS)


async def test_loop_guard_skips_messages_over_the_rate_and_recovers(
    make_runner: MakeRunner, mock_clock: trio.testing.MockClock
) -> None:
    h = await make_runner("echo pong", limits=HandlerLimits(max_replies_per_minute=2))
    for i in range(3):
        h.runner.submit("alice", f"m{i}", "ping")
    events = await h.next_events(3)
    assert events[2] == MessageSkipped("alice", "m2", SkipReason.LOOP_GUARD)
    assert len(h.sent) == 2
    mock_clock.jump(30)
    h.runner.submit("alice", "m3", "ping")  # still within the minute of the first two replies
    assert await h.next_events(1) == [MessageSkipped("alice", "m3", SkipReason.LOOP_GUARD)]
    mock_clock.jump(31)
    h.runner.submit("alice", "m4", "ping")
    (event,) = await h.next_events(1)
    assert isinstance(event, HandlerRan) and event.sent
    assert h.runner.stats.skipped_loop_guard == 2
    assert h.runner.stats.replies == 3


async def test_failures_are_reported_and_the_conversation_goes_on(make_runner: MakeRunner) -> None:
    cmd = 'read m; case "$m" in boom) echo broken >&2; exit 2;; hang) sleep 30;; *) echo "re: $m";; esac'
    h = await make_runner(cmd, limits=HandlerLimits(timeout_s=0.5, kill_grace_s=0.1))
    for i, text in enumerate(["boom", "hang", "fine"]):
        h.runner.submit("alice", f"m{i}", text)
    events = await h.next_events(3)
    outcomes = [e.result.outcome for e in events if isinstance(e, HandlerRan)]
    assert outcomes == [HandlerOutcome.FAILED, HandlerOutcome.TIMED_OUT, HandlerOutcome.REPLY]
    assert h.sent == [("alice", "re: fine", 1)]
    stats = h.runner.stats
    assert (stats.runs, stats.failures, stats.timeouts, stats.replies) == (3, 1, 1, 1)


async def test_a_reply_that_could_not_be_sent_is_not_a_turn(make_runner: MakeRunner) -> None:
    h = await make_runner('echo "turn $AGENTROOM_TURN"')
    h.send_ok = False
    h.runner.submit("alice", "m0", "hi")
    (event,) = await h.next_events(1)
    assert isinstance(event, HandlerRan) and not event.sent
    h.send_ok = True
    h.runner.submit("alice", "m1", "hi")
    await h.next_events(1)
    assert [(text, turn) for _, text, turn in h.sent] == [("turn 1", 1), ("turn 1", 1)]
    assert h.runner.stats.send_failures == 1


async def test_a_full_queue_skips_and_reports(make_runner: MakeRunner) -> None:
    h = await make_runner("cat", limits=HandlerLimits(queue_size=1))
    assert h.runner.submit("alice", "m0", "first")
    assert not h.runner.submit("alice", "m1", "second")
    events = await h.next_events(2)
    assert events[0] == MessageSkipped("alice", "m1", SkipReason.QUEUE_FULL)
    assert h.sent == [("alice", "first", 1)]


async def test_submit_before_run_and_empty_command_are_errors() -> None:
    async def send(peer: str, text: str, turn: int) -> bool:
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="handler command is empty"):
        HandlerRunner("", send)
    with pytest.raises(ValueError, match="max_turns"):
        HandlerRunner("cat", send, max_turns=-1)
    with pytest.raises(RuntimeError, match="before run"):
        HandlerRunner("cat", send).submit("alice", "m0", "hi")


def test_limits_from_the_config_table() -> None:
    limits = limits_from_table({"timeout_s": 30, "stdout_cap": 1024, "max_replies_per_minute": 0})
    assert (limits.timeout_s, limits.stdout_cap, limits.max_replies_per_minute) == (30, 1024, 0)
    assert limits.kill_grace_s == HandlerLimits().kill_grace_s
    with pytest.raises(ValueError, match=r"\[handlers\] unknown key 'timeout'"):
        limits_from_table({"timeout": 3})
    with pytest.raises(ValueError, match=r"\[handlers\] stdout_cap: expected an integer, got 1.5"):
        limits_from_table({"stdout_cap": 1.5})
    with pytest.raises(ValueError, match=r"\[handlers\] timeout_s: expected a number, got 'x'"):
        limits_from_table({"timeout_s": "x"})
    with pytest.raises(ValueError, match=r"\[handlers\] 'queue_size' must be > 0"):
        limits_from_table({"queue_size": 0})
