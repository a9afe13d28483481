"""Fixtures of the relay suite: a real relay on a loopback port, with its log captured."""

from pathlib import Path

import pytest
import trio
from relay_support import LogCapture, make_config, quiet_log, start_relay

from agentroomd.relay.server import RelayHandle


@pytest.fixture
def relay_log() -> LogCapture:
    return LogCapture()


@pytest.fixture
async def relay(nursery: trio.Nursery, tmp_path: Path, relay_log: LogCapture) -> RelayHandle:
    """A relay with default limits except rate limits (off) and protocol pings (off)."""
    log, _ = quiet_log()
    log.stream = relay_log
    return await start_relay(nursery, make_config(tmp_path), log=log)
