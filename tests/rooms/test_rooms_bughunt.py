"""Defects found by reading rooms, handlers and the tunnel supervisor against their docs; one test each."""

import contextlib
import os
import signal
import sys
from pathlib import Path

from agentroomd.handlers import HandlerLimits, HandlerOutcome, run_handler

ENV = {"AGENTROOM_FROM": "peerPK", "AGENTROOM_ROOM": "room1", "AGENTROOM_MSG_ID": "m-1", "AGENTROOM_TURN": "1"}


async def test_a_handler_whose_child_left_its_group_still_replies_at_once(scratch: Path) -> None:
    # The child starts its own session (setsid, as a helper server or `setsid cmd &` would) and keeps the
    # handler's stdout: no group kill reaches it, and waiting for EOF used to last until the timeout,
    # which then threw the reply away.
    pidfile = scratch / "detached.pid"
    detach = f"import os, time; os.setsid(); open('{pidfile}', 'w').write(str(os.getpid())); time.sleep(60)"
    cmd = f'{sys.executable} -c "{detach}" & while [ ! -s {pidfile} ]; do sleep 0.02; done; echo quick'
    try:
        result = await run_handler(cmd, "hi", ENV, HandlerLimits(timeout_s=8.0, kill_grace_s=0.2))
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
    assert (result.outcome, result.reply, result.exit_code) == (HandlerOutcome.REPLY, "quick", 0)
    assert not result.timed_out
    assert result.duration_s < 4

