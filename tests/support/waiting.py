"""Other processes, from outside: bounded waits for their exit (pidfd), polls of their state, a port probe."""

import os
import select
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import trio

T = TypeVar("T")
GONE_TIMEOUT_S = 5.0


def wait_pid_exit(pid: int, timeout: float) -> bool:
    """Block until ``pid`` has exited (its pidfd turns readable), at most ``timeout`` s; True once it is gone.

    Works for processes that are not our children (daemons agentroomctl autostarted, tunnels a daemon ran).
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([pidfd], [], [], timeout)
        return bool(readable)
    finally:
        os.close(pidfd)


async def wait_gone(pid: int) -> None:
    """`wait_pid_exit` for trio tests: the loop keeps running while we wait; fails after 5 s."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already exited and reaped
    try:
        with trio.fail_after(GONE_TIMEOUT_S):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)


def eventually(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll another process's state (there is no event to wait on across processes), bounded."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last: {last!r}")


def port_is_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port`` (a room's relay, after it should be gone)."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0
