"""Ending the tunnels a killed daemon left running: only the very process recorded, with its whole group.

Real processes throughout: a stand-in tunnel in a session of its own (as the supervisor starts one)
that ignores SIGTERM and has a child of its own, and `sleep`s playing processes that merely got a
recorded pid (or never led a group of their own). The daemon-level story is in tests/rooms.
"""

import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from support.waiting import wait_gone

from agentroomd.log import Logger
from agentroomd.orphans import (
    CHILD_RECORD_FILE,
    ChildRecord,
    boot_id,
    end_orphans,
    read_child_record,
    read_identity,
    record_child,
    still_running,
)

# Ignores SIGTERM (so only the SIGKILL after the grace period ends it) and leaves a child in its group.
STUBBORN_TUNNEL = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen(["sleep", "120"])
print(child.pid, flush=True)
time.sleep(120)
"""


class Processes:
    """Processes a test starts, each killed and reaped at teardown (an unreaped Popen is a warning, so an error)."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []

    def start(self, argv: list[str], *, own_session: bool = True) -> subprocess.Popen[str]:
        process = subprocess.Popen(argv, start_new_session=own_session, stdout=subprocess.PIPE, text=True)
        self.started.append(process)
        return process

    def close(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
            assert process.stdout is not None
            process.stdout.close()


@pytest.fixture
def processes() -> Iterator[Processes]:
    made = Processes()
    try:
        yield made
    finally:
        made.close()


@attrs.define
class Sweep:
    """`end_orphans` over records in a room directory of their own, with the log it writes."""

    directory: Path
    stream: io.StringIO = attrs.Factory(io.StringIO)

    def record(self, room: str, pid: int, program: str = "cloudflared", **changes: Any) -> Path:
        path = self.directory / room / CHILD_RECORD_FILE
        path.parent.mkdir(exist_ok=True)
        recorded = record_child(path, pid, program)
        assert recorded is not None, f"/proc does not identify {pid}"
        if changes:
            path.write_text(json.dumps({**attrs.asdict(recorded), **changes}))
        return path

    async def run(self, grace_s: float = 5.0) -> list[dict[str, Any]]:
        with trio.fail_after(grace_s + 10):
            await end_orphans(sorted(self.directory.glob(f"*/{CHILD_RECORD_FILE}")), grace_s, Logger("rooms",
                              stream=self.stream))  # fmt: skip
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def sweep(tmp_path: Path) -> Sweep:
    return Sweep(tmp_path)


async def test_a_live_orphan_is_ended_with_its_group_even_when_it_ignores_sigterm(
    sweep: Sweep, processes: Processes
) -> None:
    tunnel = processes.start([sys.executable, "-c", STUBBORN_TUNNEL])
    assert tunnel.stdout is not None
    grandchild = int(tunnel.stdout.readline())
    path = sweep.record("room-a1", tunnel.pid, program="/usr/local/bin/cloudflared")
    assert still_running(read_child_record(path)) is None  # it is the process recorded

    log = await sweep.run(grace_s=0.3)

    await wait_gone(tunnel.pid)
    await wait_gone(grandchild)  # the whole group went, not just its leader
    assert tunnel.wait(timeout=5) == -9  # SIGTERM was ignored: SIGKILL after the grace period ended it
    assert [(e["event"], e["room"], e["pid"], e["program"]) for e in log] == [
        ("tunnel_orphan_killed", "room-a1", tunnel.pid, "cloudflared")
    ]
    assert not path.exists()


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda r: {"start_time": r.start_time + 1}, "pid now belongs to another process"),
        (lambda r: {"cmdline_sha256": "0" * 64}, "command line differs"),
        (lambda r: {"boot_id": "another-boot"}, "recorded before the last boot"),
    ],
    ids=["reused-pid", "other-command", "earlier-boot"],
)
async def test_a_process_that_is_not_the_recorded_one_is_left_alone(
    sweep: Sweep, processes: Processes, tamper: Any, reason: str
) -> None:
    stranger = processes.start(["sleep", "120"])
    path = sweep.record("room-b2", stranger.pid)
    record = read_child_record(path)
    path.write_text(json.dumps({**attrs.asdict(record), **tamper(record)}))

    log = await sweep.run(grace_s=0.1)

    assert stranger.poll() is None
    assert [(e["event"], e["pid"], e["reason"]) for e in log] == [("tunnel_orphan_left_alone", stranger.pid, reason)]
    assert not path.exists()  # settled: the room's next tunnel writes a fresh record


async def test_a_process_in_someone_elses_group_is_never_signalled(sweep: Sweep, processes: Processes) -> None:
    # A record naming a process that does not lead its own group: killing "its group" would hit another one
    # (here: the test's own).
    member = processes.start(["sleep", "120"], own_session=False)
    sweep.record("room-c3", member.pid)
    log = await sweep.run(grace_s=0.1)
    assert member.poll() is None
    assert [e["reason"] for e in log] == ["no longer leads its own process group"]


async def test_exited_and_unreadable_records_are_cleared_and_the_rest_still_handled(
    sweep: Sweep, processes: Processes
) -> None:
    exited = processes.start(["sleep", "120"])
    exited_path = sweep.record("room-d4", exited.pid)
    exited.kill()
    exited.wait(timeout=10)  # reaped: no /proc entry any more
    garbage = sweep.directory / "room-e5" / CHILD_RECORD_FILE
    garbage.parent.mkdir()
    garbage.write_text('{"pid": "not a pid"')
    tunnel = processes.start(["sleep", "120"])
    live = sweep.record("room-f6", tunnel.pid)

    log = await sweep.run(grace_s=1.0)

    log.sort(key=lambda e: e["room"])  # the records are handled concurrently
    assert [(e["event"], e["room"]) for e in log] == [
        ("tunnel_orphan_record_unreadable", "room-e5"),  # the exited one is cleared without a word
        ("tunnel_orphan_killed", "room-f6"),
    ]
    assert str(garbage) in log[0]["error"]
    assert tunnel.wait(timeout=5) == -15  # a tunnel that obeys SIGTERM gets no SIGKILL
    assert not any(path.exists() for path in (exited_path, garbage, live))


async def test_without_proc_nothing_is_identified(tmp_path: Path, processes: Processes) -> None:
    alive = processes.start(["sleep", "120"])
    assert read_identity(alive.pid) is not None
    assert read_identity(alive.pid, proc=tmp_path) is None
    assert boot_id(proc=tmp_path) is None
    recorded = ChildRecord(alive.pid, 1, "0" * 64, "boot", "cloudflared")
    assert still_running(recorded, proc=tmp_path) == "/proc cannot identify it"
