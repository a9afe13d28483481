"""Tunnel processes a killed daemon left running: written down while they run, ended at the next start.

Why: a tunnel runs in a session of its own (so stopping it can kill its whole process group), which
also means nothing ends it when the daemon dies without cleaning up (SIGKILL, the OOM killer, a
crash). Under systemd the unit's cgroup goes with the daemon; in the foreground or under another
supervisor the tunnel kept serving a port nobody listens on, and the restarted daemon started a
second one. PR_SET_PDEATHSIG cannot help: trio spawns from a worker thread, and the signal fires when
that thread exits (idle threads do after ~10 s), not when the daemon does.

So each tunnel child gets a `ChildRecord` in a small file beside its room while it runs; the file goes
once the child has been reaped. At start, before any room reopens, `end_orphans` ends every recorded
child still alive, but only the very process that was started: same boot, same pid, same start time
(/proc/<pid>/stat field 22, clock ticks since boot, kept across exec), still leading its own process
group, same command line. A pid the kernel has since given to another process fails these checks and
is left alone.

The record holds a digest of the command line, not the command line: a `[tunnel] command` may carry a
token, and the log gets only the room, the pid and the program's name. Linux only: without /proc
nothing is recorded, so nothing is ever killed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Iterable
from pathlib import Path

import attrs
import cattrs
import trio

from agentroomd.files import atomic_write
from agentroomd.log import Logger

CHILD_RECORD_FILE = "tunnel-child.json"
PROC = Path("/proc")
_converter = cattrs.Converter(forbid_extra_keys=True)


class ChildRecordError(Exception):
    """A child record cannot be read; the message names the file."""


@attrs.frozen
class ProcessIdentity:
    """What tells one process apart from any other that ever had (or will have) its pid."""

    pid: int
    start_time: int  # /proc/<pid>/stat field 22: clock ticks after boot
    process_group: int
    cmdline_sha256: str


@attrs.frozen
class ChildRecord:
    pid: int
    start_time: int
    cmdline_sha256: str
    boot_id: str
    program: str  # the executable's file name, for a person reading the file or the log


def boot_id(proc: Path = PROC) -> str | None:
    """This boot's id: start times count from boot, so a record from an earlier boot names nothing alive."""
    try:
        return (proc / "sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def read_identity(pid: int, proc: Path = PROC) -> ProcessIdentity | None:
    """The identity of live process ``pid``; None when it is gone, a zombie, or /proc cannot tell."""
    try:
        stat = (proc / str(pid) / "stat").read_bytes()
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:  # no such process (or no /proc): nothing we could safely signal
        return None
    # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses, so split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        state, process_group, start_time = fields[0], int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None
    if state in (b"Z", b"X"):
        return None
    return ProcessIdentity(pid, start_time, process_group, hashlib.sha256(cmdline).hexdigest())


def record_child(path: Path, pid: int, program: str, previous: ChildRecord | None = None) -> ChildRecord | None:
    """Write down child ``pid`` as it is now (atomically); None when /proc cannot identify it.

    Nothing is written when the record equals ``previous``. Raises OSError when the write fails.
    """
    identity, boot = read_identity(pid), boot_id()
    if identity is None or boot is None:
        return None
    record = ChildRecord(pid, identity.start_time, identity.cmdline_sha256, boot, os.path.basename(program))
    if record != previous:
        atomic_write(path, (json.dumps(_converter.unstructure(record)) + "\n").encode())
    return record


def forget_child(path: Path) -> None:
    """The child was reaped: its record must not outlive it. Raises OSError (not a missing file)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def read_child_record(path: Path) -> ChildRecord:
    try:
        return _converter.structure(json.loads(path.read_bytes()), ChildRecord)
    except OSError as exc:
        raise ChildRecordError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, cattrs.BaseValidationError) as exc:
        raise ChildRecordError(f"{path} is not a tunnel child record") from exc


def still_running(record: ChildRecord, proc: Path = PROC) -> str | None:
    """None when ``record``'s process is alive and verifiably the one recorded; otherwise why not."""
    current_boot = boot_id(proc)
    if current_boot is None:
        return "/proc cannot identify it"
    if record.boot_id != current_boot:
        return "recorded before the last boot"
    identity = read_identity(record.pid, proc)
    if identity is None:
        return "exited"
    if identity.start_time != record.start_time:
        return "pid now belongs to another process"
    if identity.process_group != record.pid:
        return "no longer leads its own process group"
    if identity.cmdline_sha256 != record.cmdline_sha256:
        return "command line differs"
    return None


async def end_process_group(pid: int, grace_s: float) -> None:
    """SIGTERM to group ``pid``, up to ``grace_s`` for its leader to exit, then SIGKILL to what is left."""
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # no pidfd (old kernel): give it the whole grace period
        pidfd = None
    try:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        with trio.move_on_after(grace_s):
            if pidfd is None:
                await trio.sleep_forever()
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def end_orphans(paths: Iterable[Path], grace_s: float, log: Logger) -> None:
    """End every recorded tunnel child still running (all at once, so the wait is one grace period at most).

    Each record read is removed: its child is ended, gone, or someone else's now. A room's next tunnel
    writes a fresh one.
    """
    async with trio.open_nursery() as nursery:
        for path in paths:
            nursery.start_soon(_end_orphan, path, grace_s, log)


async def _end_orphan(path: Path, grace_s: float, log: Logger) -> None:
    room = path.parent.name
    try:
        record = read_child_record(path)
    except ChildRecordError as exc:
        log.warn("tunnel_orphan_record_unreadable", room=room, error=str(exc))
    else:
        why_not = still_running(record)
        if why_not is None:
            await end_process_group(record.pid, grace_s)
            log.warn("tunnel_orphan_killed", room=room, pid=record.pid, program=record.program)
        elif why_not != "exited":
            log.info("tunnel_orphan_left_alone", room=room, pid=record.pid, reason=why_not)
    try:
        forget_child(path)
    except OSError as exc:
        log.warn("tunnel_orphan_record_not_removed", room=room, error=str(exc))
