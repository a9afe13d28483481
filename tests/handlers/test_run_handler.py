"""One handler run, with real `/bin/sh` subprocesses: replies, failures, limits, garbage, environment."""

import os
import signal
from pathlib import Path

import pytest
import trio
from support.waiting import wait_gone

from agentroomd.handlers import HandlerLimits, HandlerOutcome, run_handler
from agentroomd.systemd import SERVICE_VARIABLES

FAST = HandlerLimits(timeout_s=10.0, kill_grace_s=0.2)
ENV = {"AGENTROOM_FROM": "peerPK", "AGENTROOM_ROOM": "room1", "AGENTROOM_MSG_ID": "m-1", "AGENTROOM_TURN": "1"}


async def test_reply_is_stdout_trimmed() -> None:
    result = await run_handler("printf '  pong: '; cat; printf '\\n\\n'", "hello", ENV, FAST)
    assert result.outcome is HandlerOutcome.REPLY
    assert result.reply == "pong: hello"
    assert (result.exit_code, result.signal, result.timed_out, result.truncated) == (0, None, False, False)
    assert result.error is None
    assert 0 <= result.duration_s < 10


async def test_message_reaches_stdin_and_never_the_command_line(tmp_path: Path) -> None:
    text = f"$(touch {tmp_path}/pwned) `touch {tmp_path}/pwned2`; rm -rf /nonexistent"
    result = await run_handler("cat", text, ENV, FAST)
    assert result.reply == text
    assert os.listdir(tmp_path) == []


async def test_no_output_means_no_reply() -> None:
    result = await run_handler("cat >/dev/null; printf ' \\n\\t'", "hello", ENV, FAST)
    assert result.outcome is HandlerOutcome.NO_REPLY
    assert result.reply == ""
    assert result.exit_code == 0


async def test_non_zero_exit_is_a_failure_without_reply() -> None:
    result = await run_handler("echo partial; echo 'model unavailable' >&2; exit 3", "hi", ENV, FAST)
    assert result.outcome is HandlerOutcome.FAILED
    assert result.reply == ""
    assert result.exit_code == 3
    assert result.stderr.strip() == "model unavailable"
    assert result.error == "exited with status 3"


async def test_killed_by_a_signal_is_a_failure() -> None:
    result = await run_handler("echo partial; kill -KILL $$", "hi", ENV, FAST)
    assert result.outcome is HandlerOutcome.FAILED
    assert (result.exit_code, result.signal) == (None, signal.SIGKILL)
    assert result.reply == ""
    assert result.error == "killed by signal SIGKILL"


async def test_timeout_kills_the_whole_group_including_a_grandchild(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    # Both the shell and its background grandchild ignore SIGTERM: only the group SIGKILL ends them.
    cmd = f"trap '' TERM; (exec sleep 60) & echo $! > {pidfile}; echo started; wait"
    limits = HandlerLimits(timeout_s=1.0, kill_grace_s=0.2)
    result = await run_handler(cmd, "hi", ENV, limits)
    assert result.outcome is HandlerOutcome.TIMED_OUT
    assert result.timed_out
    assert result.reply == ""  # partial output of a timed-out run is never sent
    assert result.signal == signal.SIGKILL
    assert result.error == "timed out after 1s, stopped"
    assert result.duration_s < 5
    await wait_gone(int(pidfile.read_text()))


async def test_timeout_of_a_polite_handler_needs_no_grace() -> None:
    result = await run_handler("sleep 60", "hi", ENV, HandlerLimits(timeout_s=0.3, kill_grace_s=30))
    assert result.timed_out
    assert result.signal == signal.SIGTERM
    assert result.duration_s < 5  # SIGTERM was enough: the 30 s grace was not waited out


async def test_cancelling_the_caller_stops_the_handler(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with trio.move_on_after(1.0) as scope:
        await run_handler(f"sleep 60 & echo $! > {pidfile}; wait", "hi", ENV, FAST)
    assert scope.cancelled_caught
    await wait_gone(int(pidfile.read_text()))


async def test_endless_output_is_cut_at_the_cap_and_flagged() -> None:
    limits = HandlerLimits(timeout_s=10.0, stdout_cap=1000, kill_grace_s=0.2)
    result = await run_handler("yes é", "hi", ENV, limits)  # 'é\n' is 3 bytes: 1000 is mid-character
    assert result.outcome is HandlerOutcome.REPLY
    assert result.truncated
    assert not result.timed_out
    assert result.duration_s < 5  # stopped at the cap, not at the timeout
    assert len(result.reply.encode()) <= 1000
    assert set(result.reply.split("\n")) == {"é"}  # no replacement character from a split é
    assert result.reply.count("é") == 333


async def test_output_exactly_at_the_cap_is_not_truncated() -> None:
    limits = HandlerLimits(stdout_cap=4, kill_grace_s=0.2)
    result = await run_handler("printf abcd", "hi", ENV, limits)
    assert (result.reply, result.truncated, result.exit_code) == ("abcd", False, 0)


async def test_stderr_is_capped_and_drained_so_the_handler_never_blocks() -> None:
    limits = HandlerLimits(timeout_s=10.0, stderr_cap=100, kill_grace_s=0.2)
    result = await run_handler("head -c 300000 /dev/zero | tr '\\0' e >&2; echo fine", "hi", ENV, limits)
    assert result.reply == "fine"
    assert result.stderr == "e" * 100
    assert result.stderr_truncated
    assert not result.timed_out


async def test_handler_that_never_reads_a_1mib_message() -> None:
    result = await run_handler("echo ignored", "x" * (1 << 20), ENV, FAST)
    assert result.outcome is HandlerOutcome.REPLY
    assert result.reply == "ignored"
    assert result.exit_code == 0


async def test_invalid_utf8_and_nul_bytes_are_cleaned() -> None:
    result = await run_handler("printf 'ok \\377\\376 \\000zero'", "hi", ENV, FAST)
    assert result.outcome is HandlerOutcome.REPLY
    assert result.reply == "ok \ufffd\ufffd zero"


async def test_lone_surrogates_in_the_message_reach_the_handler_as_valid_utf8() -> None:
    result = await run_handler("cat", "a\ud800b", ENV, FAST)
    assert result.reply == "a\ufffdb"


async def test_background_grandchild_holding_stdout_does_not_delay_the_reply() -> None:
    result = await run_handler("sleep 30 & echo quick", "hi", ENV, HandlerLimits(timeout_s=20))
    assert result.reply == "quick"
    assert not result.timed_out
    assert result.duration_s < 5


async def test_environment_is_scrubbed_of_systemd_and_carries_agentroom(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVICE_VARIABLES:
        monkeypatch.setenv(name, "from-systemd")
    monkeypatch.setenv("AR_TEST_KEEP", "kept")
    result = await run_handler("env", "hi", ENV, FAST)
    seen = dict(line.split("=", 1) for line in result.reply.splitlines() if "=" in line)
    assert not SERVICE_VARIABLES & seen.keys()
    assert seen["AR_TEST_KEEP"] == "kept"
    for key, value in ENV.items():
        assert seen[key] == value


async def test_spawn_failure_is_reported_not_raised() -> None:
    # A single environment string over 128 KiB makes execve fail with E2BIG.
    result = await run_handler("echo hi", "hi", {**ENV, "AGENTROOM_BIG": "x" * 200_000}, FAST)
    assert result.outcome is HandlerOutcome.FAILED
    assert result.error is not None and result.error.startswith("could not start the handler:")
    assert result.reply == ""


async def test_bad_calls_get_clear_errors() -> None:
    with pytest.raises(ValueError, match="handler command is empty"):
        await run_handler("  ", "hi", ENV, FAST)
    with pytest.raises(ValueError, match="invalid handler environment variable"):
        await run_handler("echo", "hi", {"A=B": "x"}, FAST)
    with pytest.raises(ValueError, match="timeout_s"):
        HandlerLimits(timeout_s=0)
    with pytest.raises(ValueError, match="stdout_cap"):
        HandlerLimits(stdout_cap=-1)
