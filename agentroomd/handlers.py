"""Auto-reply handlers: run the user's command once per incoming message, and keep the exchange orderly.

Theory of operation
-------------------
A handler is a shell command (``/bin/sh -c CMD``). For every message the daemon runs it once, in its
own process group, writes the message text to its stdin and closes it, and sends back what it prints
on stdout (trimmed; nothing printed means "no reply"). The message is never put on the command line.

Rules of `run_handler` (one run):
* stdout is read up to ``stdout_cap`` bytes. Past the cap the reply is cut there, flagged
  ``truncated``, and the handler's process group is stopped: a runaway printer cannot eat memory.
* stderr is read concurrently (an unread pipe fills at ~64 KiB and blocks the child), kept up to
  ``stderr_cap`` bytes for the log, and drained past that.
* ``timeout_s`` bounds the whole run; then SIGTERM goes to the whole group, and SIGKILL after
  ``kill_grace_s``. When the handler's main process has exited, anything it left behind in its group
  is killed too: a handler answers one message, it is not a service. A child that left the group
  (``setsid``) cannot hold the reply back: the pipes are read for ``PIPES_AFTER_EXIT_S`` more, no longer.
* A handler that never reads stdin is fine (EPIPE is ignored). Output that is not UTF-8 is decoded
  with replacement characters and NUL bytes are removed: garbage is reported, never fatal.
* The environment is the daemon's minus systemd's per-service variables (a handler must not be able
  to send READY=1 or steal socket-activated fds), plus ``AGENTROOM_FROM``, ``AGENTROOM_ROOM``,
  ``AGENTROOM_MSG_ID`` and ``AGENTROOM_TURN``.
* We never use ``run_process(capture_stdout=True)``: it buffers without limit.

Rules of `HandlerRunner` (a conversation):
* One handler at a time per peer, so replies go out in the order the messages came in; different
  peers run concurrently, bounded by a `trio.CapacityLimiter` (shareable daemon-wide).
* Turns are counted per peer (a turn is a reply actually sent). With ``max_turns`` > 0, once a peer's
  count reaches it the runner reports `TurnsExhausted` once and handles no more of that peer's messages.
* Loop guard: at most ``max_replies_per_minute`` replies to one peer in any 60 s window; a message that
  arrives over the limit is not handled and is reported (`MessageSkipped`), and the exchange goes on.
* Every run and every skip is reported through ``on_event`` and counted in `HandlerStats`; a failing,
  hanging or babbling handler never stops the runner.
"""

from __future__ import annotations

import contextlib
import enum
import math
import os
import signal
import subprocess
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from functools import partial

import attrs
import trio

from agentroomd.log import Logger, short_pk
from agentroomd.systemd import scrubbed_environment
from ratchet.jsjson import js_utf8_encode

SHELL = "/bin/sh"
LOOP_GUARD_WINDOW_S = 60.0
_READ_CHUNK = 65536
#: How long the pipes are still read once the handler's main process has exited and its group is gone.
PIPES_AFTER_EXIT_S = 1.0
GROUP_POLL_S = 0.02  # how often a stopped handler's group is checked for emptiness during its grace


_positive = attrs.validators.gt(0)
_not_negative = attrs.validators.ge(0)


@attrs.frozen
class HandlerLimits:
    """Limits for handler runs; the defaults are the documented ones (config ``[handlers]``)."""

    timeout_s: float = attrs.field(default=120.0, validator=attrs.validators.gt(0.0))
    stdout_cap: int = attrs.field(default=256 * 1024, validator=_positive)
    stderr_cap: int = attrs.field(default=16 * 1024, validator=_positive)
    kill_grace_s: float = attrs.field(default=2.0, validator=attrs.validators.ge(0.0))
    #: Loop guard: replies per peer per minute; 0 disables it.
    max_replies_per_minute: int = attrs.field(default=20, validator=_not_negative)
    #: Handlers running at once across peers (when the runner makes its own limiter).
    max_concurrent: int = attrs.field(default=4, validator=_positive)
    #: Messages waiting per peer before new ones are skipped as ``QUEUE_FULL``.
    queue_size: int = attrs.field(default=64, validator=_positive)


def limits_from_table(table: Mapping[str, object]) -> HandlerLimits:
    """Structure the config's ``[handlers]`` table; a ValueError names the offending key."""
    fields = {field.name: field for field in attrs.fields(HandlerLimits)}
    values: dict[str, int | float] = {}
    for key, value in table.items():
        field = fields.get(key)
        if field is None:
            raise ValueError(f"[handlers] unknown key {key!r} (known: {', '.join(fields)})")
        wants_int = field.type in (int, "int")
        if isinstance(value, bool) or not isinstance(value, int if wants_int else (int, float)):
            raise ValueError(f"[handlers] {key}: expected {'an integer' if wants_int else 'a number'}, got {value!r}")
        values[key] = value
    try:
        return HandlerLimits(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ValueError(f"[handlers] {exc}") from exc


class HandlerOutcome(enum.Enum):
    REPLY = "reply"  #: printed something: send it
    NO_REPLY = "no_reply"  #: exit 0 and nothing printed
    FAILED = "failed"  #: could not start, non-zero exit, or killed by a signal we did not send
    TIMED_OUT = "timed_out"  #: still running at the deadline; stopped, nothing sent


@attrs.frozen
class HandlerResult:
    outcome: HandlerOutcome
    #: What to send (trimmed); empty unless ``outcome`` is REPLY.
    reply: str
    exit_code: int | None
    #: The signal that ended the main process, if one did.
    signal: int | None
    timed_out: bool
    #: stdout went past the cap: ``reply`` is cut and the handler was stopped.
    truncated: bool
    #: Up to ``stderr_cap`` bytes of stderr, decoded; for the log, not for the peer.
    stderr: str
    stderr_truncated: bool
    duration_s: float
    #: Why there is no reply, in words, when the run failed or timed out.
    error: str | None = None


def handler_environment(extra: Mapping[str, str], base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemon's environment (or ``base``) minus systemd's per-service variables, plus ``extra``."""
    for key, value in extra.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ValueError(f"invalid handler environment variable {key!r}")
    return scrubbed_environment(extra, base)


def decode_output(data: bytes) -> str:
    """Handler output as text: invalid UTF-8 becomes U+FFFD and NUL bytes are dropped."""
    return data.decode("utf-8", errors="replace").replace("\0", "")


def _encode_message(text: str) -> bytes:
    # Message text may carry lone surrogates (it came from JSON written by JavaScript); give the
    # handler valid UTF-8 with U+FFFD in their place, as Node would.
    return js_utf8_encode(text)


def _cut_utf8(data: bytes, cap: int) -> bytes:
    """``data[:cap]``, moved back so a multi-byte character is not split in two."""
    cut = data[:cap]
    for back in range(1, min(4, len(cut)) + 1):
        byte = cut[-back]
        if byte & 0xC0 != 0x80:  # found the start of the last character
            needed = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return cut if needed <= back else cut[:-back]
    return cut


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    # ESRCH: the group is empty, nothing left to stop. EPERM: the id no longer names our processes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _GroupStopper:
    """Stops a handler's process group: TERM, then KILL after ``grace_s``, the grace counting for the group.

    `run_process` cancels its ``deliver_cancel`` as soon as the group's leader exits, and with
    ``sh -c "prog; ..."`` the leader is a shell that dies at once on SIGTERM: the grace would end there,
    before ``prog`` (the handler that matters) has finished its own cleanup. So the rest of the grace is
    spent in `wait_for_group`, until the group is empty.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.termed_at: float | None = None

    async def deliver_cancel(self, process: trio.Process) -> None:
        """`run_process`'s ``deliver_cancel``: TERM the whole group, then KILL it after the grace."""
        self.termed_at = trio.current_time()
        _signal_group(process.pid, signal.SIGTERM)
        await trio.sleep(self.grace_s)
        _signal_group(process.pid, signal.SIGKILL)

    async def wait_for_group(self, pgid: int) -> None:
        """After a TERM: until the group is empty or the grace is over (then the caller KILLs what is left)."""
        if self.termed_at is None:
            return
        deadline = self.termed_at + self.grace_s
        while trio.current_time() < deadline and _group_alive(pgid):  # noqa: ASYNC110 - no event exists for it
            await trio.sleep(GROUP_POLL_S)  # nothing signals that a process group became empty


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class _CappedReader:
    """Collects at most ``cap`` bytes of a stream; remembers whether there was more."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.overflowed = False

    async def read_until_cap(self, stream: trio.abc.ReceiveStream) -> None:
        """Stop reading as soon as the cap is passed (the caller then stops the writer)."""
        while not self.overflowed:
            chunk = await stream.receive_some(min(_READ_CHUNK, self.cap - len(self.data) + 1))
            if not chunk:
                return
            self.data += chunk
            if len(self.data) > self.cap:
                self.overflowed = True

    async def read_and_drain(self, stream: trio.abc.ReceiveStream) -> None:
        """Keep the first ``cap`` bytes, read and drop the rest until EOF so the writer never blocks."""
        while chunk := await stream.receive_some(_READ_CHUNK):
            room = self.cap - len(self.data)
            if len(chunk) > room:
                self.overflowed = True
            if room > 0:
                self.data += chunk[:room]

    def text(self) -> str:
        data = bytes(self.data)
        return decode_output(_cut_utf8(data, self.cap) if self.overflowed else data)


_child_umask: int | None = None


def set_child_umask(mask: int | None) -> None:
    """Give handlers this umask instead of the daemon's own.

    The daemon runs with umask 077 (its files hold keys), but a handler is the user's agent working in the
    user's files: what it creates should get the umask the user started us with (the shell's, or the
    systemd unit's `UMask=`), not ours.
    """
    global _child_umask
    _child_umask = mask


async def run_handler(
    cmd: str,
    text: str,
    env_extra: Mapping[str, str],
    limits: HandlerLimits,
    *,
    base_env: Mapping[str, str] | None = None,
) -> HandlerResult:
    """Run ``cmd`` once for the message ``text``; never raises for anything the handler does.

    Raises ValueError only for a bad call (empty command, invalid environment names). If the caller is
    cancelled, the handler's group is stopped (TERM, grace, KILL) before `Cancelled` propagates.
    """
    if not cmd.strip():
        raise ValueError("handler command is empty")
    env = handler_environment(env_extra, base_env)
    stdout = _CappedReader(limits.stdout_cap)
    stderr = _CappedReader(limits.stderr_cap)
    started_at = trio.current_time()
    timed_out = False
    process: trio.Process | None = None
    spawn_error: str | None = None
    stopper = _GroupStopper(limits.kill_grace_s)
    run = partial(
        trio.run_process,
        [SHELL, "-c", cmd],
        stdin=_encode_message(text),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
        start_new_session=True,
        env=env,
        deliver_cancel=stopper.deliver_cancel,
        umask=-1 if _child_umask is None else _child_umask,  # -1: inherit (subprocess.Popen's default)
    )
    try:
        async with trio.open_nursery() as nursery:
            process = await nursery.start(run)
            assert process.stdout is not None and process.stderr is not None
            async with process.stdout, process.stderr:
                with trio.move_on_after(limits.timeout_s) as deadline:
                    async with trio.open_nursery() as io:
                        io.start_soon(_read_stdout_then_stop, stdout, process.stdout, io.cancel_scope)
                        io.start_soon(stderr.read_and_drain, process.stderr)
                        io.start_soon(_sweep_group_after_exit, process, io.cancel_scope)
                    if not stdout.overflowed:
                        await process.wait()  # stdout closed early is not the end: wait for the exit
                timed_out = deadline.cancelled_caught
                # Timed out or over the cap: run_process delivers TERM/KILL and reaps the child. Exited: all
                # that can be left is feeding stdin to a child outside the group that holds it and never reads.
                nursery.cancel_scope.cancel()
    except* OSError as group:
        spawn_error = "; ".join(str(exc) for exc in group.exceptions)
    finally:
        if process is not None:
            with trio.CancelScope(shield=True):  # a stop that was asked for keeps its grace, also on cancel
                await stopper.wait_for_group(process.pid)
            _signal_group(process.pid, signal.SIGKILL)  # leftovers of the group, whatever happened
    returncode = process.returncode if process is not None else None
    duration = trio.current_time() - started_at
    return _result(limits, stdout, stderr, returncode, timed_out, spawn_error, duration)


async def _read_stdout_then_stop(
    reader: _CappedReader, stream: trio.abc.ReceiveStream, io_scope: trio.CancelScope
) -> None:
    await reader.read_until_cap(stream)
    if reader.overflowed:
        io_scope.cancel()


async def _sweep_group_after_exit(process: trio.Process, io_scope: trio.CancelScope) -> None:
    # A background grandchild holding our pipes open would otherwise keep us reading until the timeout.
    await process.wait()
    _signal_group(process.pid, signal.SIGKILL)
    # One that left the group (setsid, a daemon) cannot be killed that way: what the handler printed is
    # in the pipes already, so read it for a moment, then stop waiting for an EOF that may never come.
    io_scope.deadline = min(io_scope.deadline, trio.current_time() + PIPES_AFTER_EXIT_S)


def _result(
    limits: HandlerLimits,
    stdout: _CappedReader,
    stderr: _CappedReader,
    returncode: int | None,
    timed_out: bool,
    spawn_error: str | None,
    duration_s: float,
) -> HandlerResult:
    exit_code = returncode if returncode is not None and returncode >= 0 else None
    sig = -returncode if returncode is not None and returncode < 0 else None
    output = stdout.text().strip()
    truncated = stdout.overflowed
    error: str | None = None
    if spawn_error is not None:
        outcome, error = HandlerOutcome.FAILED, f"could not start the handler: {spawn_error}"
    elif timed_out:
        outcome, error = HandlerOutcome.TIMED_OUT, f"timed out after {limits.timeout_s:g}s, stopped"
    elif truncated or exit_code == 0:
        outcome = HandlerOutcome.REPLY if output else HandlerOutcome.NO_REPLY
    elif exit_code is not None:
        outcome, error = HandlerOutcome.FAILED, f"exited with status {exit_code}"
    else:
        outcome, error = HandlerOutcome.FAILED, f"killed by signal {_signal_name(sig)}"
    return HandlerResult(
        outcome=outcome,
        reply=output if outcome is HandlerOutcome.REPLY else "",
        exit_code=exit_code,
        signal=sig,
        timed_out=timed_out,
        truncated=truncated,
        stderr=stderr.text(),
        stderr_truncated=stderr.overflowed,
        duration_s=duration_s,
        error=error,
    )


def _signal_name(sig: int | None) -> str:
    try:
        return signal.Signals(sig).name if sig is not None else "?"
    except ValueError:
        return str(sig)


# --------------------------------------------------------------------------------------------------
# Conversation policy: turns, loop guard, per-peer ordering.


class TurnCounter:
    """Replies sent per peer, against an optional ``max_turns`` (0 = unlimited)."""

    def __init__(self, max_turns: int = 0) -> None:
        if max_turns < 0:
            raise ValueError(f"max_turns must be >= 0, got {max_turns}")
        self.max_turns = max_turns
        self._replies: dict[str, int] = {}

    def replies(self, peer: str) -> int:
        return self._replies.get(peer, 0)

    def next_turn(self, peer: str) -> int:
        return self.replies(peer) + 1

    def record(self, peer: str) -> int:
        """Count one sent reply (or seed); returns its turn number."""
        self._replies[peer] = self.replies(peer) + 1
        return self._replies[peer]

    def exhausted(self, peer: str) -> bool:
        return self.max_turns > 0 and self.replies(peer) >= self.max_turns


class LoopGuard:
    """At most ``max_per_window`` replies per peer in any sliding ``window_s`` (0 disables the guard)."""

    def __init__(self, max_per_window: int, window_s: float = LOOP_GUARD_WINDOW_S) -> None:
        self.max_per_window = max_per_window
        self.window_s = window_s
        self._sent: dict[str, deque[float]] = {}

    def _recent(self, peer: str, now: float) -> deque[float]:
        times = self._sent.setdefault(peer, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def allows(self, peer: str, now: float) -> bool:
        return self.max_per_window == 0 or len(self._recent(peer, now)) < self.max_per_window

    def record(self, peer: str, now: float) -> None:
        self._recent(peer, now).append(now)


class SkipReason(enum.Enum):
    MAX_TURNS = "max_turns"  #: the exchange with this peer already reached --max-turns
    LOOP_GUARD = "loop_guard"  #: too many replies to this peer in the last minute
    QUEUE_FULL = "queue_full"  #: too many of this peer's messages already waiting


@attrs.frozen
class HandlerRan:
    peer: str
    msg_id: str
    turn: int
    result: HandlerResult
    #: A reply was produced and ``send_reply`` confirmed it went out.
    sent: bool


@attrs.frozen
class MessageSkipped:
    peer: str
    msg_id: str
    reason: SkipReason


@attrs.frozen
class TurnsExhausted:
    """The exchange with ``peer`` reached ``max_turns``: time to tell both sides it is over."""

    peer: str
    replies: int


HandlerEvent = HandlerRan | MessageSkipped | TurnsExhausted
#: ``send_reply(peer, text, turn) -> sent``: the caller encrypts and sends. It returns False when the reply
#: could not go out (counted in ``send_failures``, not a turn); an exception from it is a bug and ends the runner.
SendReply = Callable[[str, str, int], Awaitable[bool]]


@attrs.define
class HandlerStats:
    """Counters for ``room status``."""

    runs: int = 0
    replies: int = 0
    no_reply: int = 0
    failures: int = 0
    timeouts: int = 0
    truncated: int = 0
    send_failures: int = 0
    skipped_max_turns: int = 0
    skipped_loop_guard: int = 0
    skipped_queue_full: int = 0


@attrs.frozen
class _Job:
    msg_id: str
    text: str


class HandlerRunner:
    """Runs ``cmd`` for each submitted message, one at a time per peer; start it with ``nursery.start``."""

    def __init__(
        self,
        cmd: str,
        send_reply: SendReply,
        *,
        room: str = "",
        limits: HandlerLimits | None = None,
        max_turns: int = 0,
        on_event: Callable[[HandlerEvent], None] | None = None,
        limiter: trio.CapacityLimiter | None = None,
        base_env: Mapping[str, str] | None = None,
        logger: Logger | None = None,
    ) -> None:
        if not cmd.strip():
            raise ValueError("handler command is empty")
        self.cmd = cmd
        self.room = room
        self.limits = limits or HandlerLimits()
        self.turns = TurnCounter(max_turns)
        self.guard = LoopGuard(self.limits.max_replies_per_minute)
        self.stats = HandlerStats()
        self._send_reply = send_reply
        self._on_event = on_event
        self._limiter = limiter or trio.CapacityLimiter(self.limits.max_concurrent)
        self._base_env = base_env
        self._log = logger or Logger("handlers")
        self._queues: dict[str, trio.MemorySendChannel[_Job]] = {}
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the per-peer workers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._nursery = None
                for queue in self._queues.values():
                    queue.close()
                self._queues.clear()

    def submit(self, peer: str, msg_id: str, text: str) -> bool:
        """Queue a message from ``peer``; False (and a `MessageSkipped`) if the peer's queue is full."""
        if self._nursery is None:
            raise RuntimeError("HandlerRunner.submit() before run() started")
        queue = self._queues.get(peer)
        if queue is None:
            queue, jobs = trio.open_memory_channel[_Job](self.limits.queue_size)
            self._queues[peer] = queue
            self._nursery.start_soon(self._worker, peer, jobs)
        try:
            queue.send_nowait(_Job(msg_id, text))
        except trio.WouldBlock:
            self._skip(peer, msg_id, SkipReason.QUEUE_FULL)
            return False
        return True

    def record_seed(self, peer: str) -> int:
        """Count a seed message we sent to ``peer`` as a turn (it opens the exchange); returns its turn."""
        turn = self.turns.record(peer)
        self.guard.record(peer, trio.current_time())
        if self.turns.exhausted(peer):
            self._emit(TurnsExhausted(peer, self.turns.replies(peer)))
        return turn

    async def _worker(self, peer: str, jobs: trio.MemoryReceiveChannel[_Job]) -> None:
        async with jobs:
            async for job in jobs:
                await self._handle(peer, job)

    async def _handle(self, peer: str, job: _Job) -> None:
        if self.turns.exhausted(peer):
            self._skip(peer, job.msg_id, SkipReason.MAX_TURNS)
            return
        if not self.guard.allows(peer, trio.current_time()):
            self._skip(peer, job.msg_id, SkipReason.LOOP_GUARD)
            return
        turn = self.turns.next_turn(peer)
        env = {
            "AGENTROOM_FROM": peer,
            "AGENTROOM_ROOM": self.room,
            "AGENTROOM_MSG_ID": job.msg_id,
            "AGENTROOM_TURN": str(turn),
        }
        async with self._limiter:
            result = await run_handler(self.cmd, job.text, env, self.limits, base_env=self._base_env)
        self._count(result)
        sent = False
        if result.outcome is HandlerOutcome.REPLY:
            sent = await self._send_reply(peer, result.reply, turn)
            if sent:
                self.turns.record(peer)
                self.guard.record(peer, trio.current_time())
                self.stats.replies += 1
            else:
                self.stats.send_failures += 1
        self._log_run(peer, job.msg_id, turn, result, sent)
        self._emit(HandlerRan(peer, job.msg_id, turn, result, sent))
        if sent and self.turns.exhausted(peer):
            self._emit(TurnsExhausted(peer, self.turns.replies(peer)))

    def _count(self, result: HandlerResult) -> None:
        self.stats.runs += 1
        self.stats.truncated += result.truncated
        if result.outcome is HandlerOutcome.NO_REPLY:
            self.stats.no_reply += 1
        elif result.outcome is HandlerOutcome.FAILED:
            self.stats.failures += 1
        elif result.outcome is HandlerOutcome.TIMED_OUT:
            self.stats.timeouts += 1

    def _skip(self, peer: str, msg_id: str, reason: SkipReason) -> None:
        counter = f"skipped_{reason.value}"
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        self._log.warn("handler_skipped", room=self.room, peer=short_pk(peer), msg_id=msg_id, reason=reason.value)
        self._emit(MessageSkipped(peer, msg_id, reason))

    def _log_run(self, peer: str, msg_id: str, turn: int, result: HandlerResult, sent: bool) -> None:
        fields: dict[str, object] = {
            "room": self.room,
            "peer": short_pk(peer),
            "msg_id": msg_id,
            "turn": turn,
            "outcome": result.outcome.value,
            "exit_code": result.exit_code,
            "signal": result.signal,
            "truncated": result.truncated,
            "sent": sent,
            "duration_ms": math.floor(result.duration_s * 1000),
        }
        if result.error:
            fields["error"] = result.error
        if result.stderr:
            fields["stderr"] = result.stderr[-2000:]
        ok = result.outcome in (HandlerOutcome.REPLY, HandlerOutcome.NO_REPLY)
        (self._log.info if ok else self._log.warn)("handler_ran", **fields)

    def _emit(self, event: HandlerEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)
