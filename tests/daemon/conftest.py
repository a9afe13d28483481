"""Fixtures of the daemon tests: one real daemon per module, and raw control connections to it."""

from collections.abc import Iterator

import pytest
from support.processes import DaemonProcess, home_dir, running_daemon
from support.raw_control import RawClient


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    with home_dir() as home, running_daemon(home) as running:
        yield running


@pytest.fixture
def client(daemon: DaemonProcess) -> Iterator[RawClient]:
    connection = RawClient(daemon.home / "agentroomd.sock")
    yield connection
    connection.close()
