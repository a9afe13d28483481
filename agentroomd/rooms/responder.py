"""The auto-reply loop: received messages in, handler runs, replies out, and a clean end.

A `Responder` answers the peers it `accepts` with one handler command. Three owners use it: a room
(its guest), a handler attached to a peer (`invite accept --on-message`), and `agentroomctl serve`
(every peer nobody else answers, for as long as the command runs).

The path of one message::

    inbox subscription (since = handled cursor) -> accepts(peer)? -> handled cursor saved
        -> HandlerRunner (one run at a time per peer, turns, loop guard) -> send_reply -> SessionManager

* **At most once.** The handled cursor is saved before the message is handed to the runner; after a
  crash the subscription resumes after it, so no handler ever runs twice for one message. A message
  taken just before a crash is not handled at all (it stays in the journal for `listen`).
* **The end of an exchange.** When our replies to a peer reach ``max_turns`` (the seed counts as the
  first), the peer gets a short notice starting with `END_NOTICE_PREFIX` and we stop answering it.
  A notice from the peer ends the exchange on our side too, and is never handed to the handler, so
  two daemons never reply to each other's goodbyes. Both ends are saved.
* **A seed that waits.** A peer whose v3 handshake is unfinished (the inviter was offline when we
  accepted) cannot be sent anything yet: `send_seed_after_handshake` sends the seed once its session
  exists, still at most once; a failure then is logged and kept in ``seed_error`` for the status.
* **Failures are counted, not fatal.** A handler that fails, hangs or babbles is counted by the
  runner; a reply that cannot be sent is counted as a send failure; the next message is handled as usual.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import trio

from agentroomd.client.manager import MAX_PLAINTEXT_BYTES, ClientError, SessionManager
from agentroomd.control import api
from agentroomd.control.api import ReceivedMessage
from agentroomd.control.inbox import Inbox
from agentroomd.handlers import (
    HandlerEvent,
    HandlerLimits,
    HandlerOutcome,
    HandlerRan,
    HandlerRunner,
    HandlerStats,
    MessageSkipped,
    SkipReason,
    TurnsExhausted,
)
from agentroomd.log import Logger, short_pk
from agentroomd.rooms.state import Conversation, StateError

END_NOTICE_PREFIX = "[agentroom] conversation ended"
TRUNCATION_MARK = "\n[agentroom] reply truncated"
_END_REASONS = {
    "max_turns": "the turn limit ({turns}) was reached",
    "room_closed": "the host closed the room",
}

#: Receives serve events: {"type": "received" | "replied" | "no_reply" | "handler_error" | ..., ...}
EventSink = Callable[[dict[str, Any]], None]


def end_notice(reason: str, turns: int) -> str:
    why = _END_REASONS.get(reason, reason).format(turns=turns)
    return f"{END_NOTICE_PREFIX}: {why}. This is an automatic notice; no reply is expected."


def is_end_notice(text: str) -> bool:
    return text.startswith(END_NOTICE_PREFIX)


def fit_message(text: str) -> tuple[str, bool]:
    """``text`` cut (on a character boundary, with a visible mark) to what one message can carry."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= MAX_PLAINTEXT_BYTES:
        return text, False
    room = MAX_PLAINTEXT_BYTES - len(TRUNCATION_MARK.encode())
    return data[:room].decode("utf-8", "ignore") + TRUNCATION_MARK, True


async def _no_save() -> None:
    await trio.lowlevel.checkpoint()


class Responder:
    """Runs ``command`` for the messages of the peers it accepts; start it with ``nursery.start``."""

    def __init__(
        self,
        *,
        label: str,
        command: str,
        max_turns: int,
        conversation: Conversation,
        accepts: Callable[[str], bool],
        inbox: Inbox,
        sessions: SessionManager,
        limits: HandlerLimits,
        limiter: trio.CapacityLimiter,
        log: Logger,
        save: Callable[[], Awaitable[None]] = _no_save,
        on_event: EventSink | None = None,
        ack_timeout_s: float = 10.0,
    ) -> None:
        self.label = label
        self.command = command
        self.max_turns = max_turns
        self.conversation = conversation
        self.accepts = accepts
        self._inbox = inbox
        self._sessions = sessions
        self._log = log
        self._save_record = save
        self._on_event = on_event
        self._ack_timeout_s = ack_timeout_s
        # One message carries at most MAX_PLAINTEXT_BYTES: output past that is cut (and flagged) by the runner.
        limits = attrs.evolve(limits, stdout_cap=min(limits.stdout_cap, MAX_PLAINTEXT_BYTES))
        self.runner = HandlerRunner(
            command, self._send_reply, room=label, limits=limits, max_turns=max_turns,
            on_event=self._on_runner_event, limiter=limiter, logger=log,
        )  # fmt: skip
        for peer, progress in conversation.peers.items():  # turns survive restarts
            for _ in range(progress.turns):
                self.runner.turns.record(peer)
        known = {field.name for field in attrs.fields(HandlerStats)}
        for key, value in conversation.stats.items():
            if key in known:
                setattr(self.runner.stats, key, value)
        self.skipped_after_end = conversation.stats.get("skipped_after_end", 0)
        self.state_errors = 0
        self.queued = 0
        self.seed_waiting = False  # a seed waits for the peer's session (see `send_seed_after_handshake`)
        self.seed_error: str | None = None  # why a seed sent after the handshake did not go out
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        self._deferred: list[Callable[[], Awaitable[None]]] = []
        self.ended = trio.Event()  # set when any exchange of this responder ended (serve stops there)

    # -- public ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Take messages from the inbox and answer them until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.runner.run)
                self._nursery = nursery
                for work in self._deferred:
                    nursery.start_soon(work)
                self._deferred.clear()
                nursery.start_soon(self._consume)
                task_status.started()
        finally:
            self._nursery = None

    async def send_seed(self, peer: str, text: str) -> tuple[str, str, str] | None:
        """Send the opening message once per conversation (turn 1); None if it was already sent.

        ``seed_sent`` is saved before the send (at most once). ClientError propagates: nothing was sent.
        """
        if self.conversation.seed_sent:
            return None
        self.conversation.seed_sent = True
        try:
            await self._save_record()
        except StateError:
            self.conversation.seed_sent = False  # not saved, not sent: a later save must not claim it was
            raise
        try:
            status, msg_id, pk = await self._sessions.send_message(peer, text, timeout_s=self._ack_timeout_s)
        except ClientError:
            self.conversation.seed_sent = False
            await self._save_quietly()
            raise
        turn = self.runner.record_seed(pk)
        self.conversation.progress(pk).turns = turn
        await self._save_quietly()
        self._log.info("seed_sent", room=self.label, peer=short_pk(pk), status=status)
        self._emit({"type": "replied", "to": pk, "text": text, "turn": turn, "seed": True, "msg_id": msg_id})
        return status, msg_id, pk

    def send_seed_after_handshake(self, peer: str, text: str) -> None:
        """Send the seed (with `send_seed`: at most once) as soon as our session with ``peer`` exists.

        For a v3 invite whose inviter was offline when we accepted it: nothing can be sent before it
        answers. The wait runs in this responder's nursery, so a detach cancels it; the saved record
        still says the seed is unsent, so a restarted daemon waits again (`RoomsService.reopen`).
        """
        self.seed_waiting = True
        self._spawn(partial(self._seed_after_handshake, peer, text))

    async def _seed_after_handshake(self, peer: str, text: str) -> None:
        try:
            await self._sessions.wait_session(peer)
            self._log.info("seed_due", room=self.label, peer=short_pk(peer))
            try:
                await self.send_seed(peer, text)
            except (ClientError, StateError) as exc:
                # Nobody waits for this send any more: say why in the status and the log, once (no retry loop).
                self.seed_error = f"the seed was not sent: {exc}"
                self._log.error("seed_not_sent", room=self.label, peer=short_pk(peer), error=str(exc))
        finally:
            self.seed_waiting = False

    async def finish(self, peer: str, reason: str, *, notify_peer: bool) -> None:
        """End the exchange with ``peer`` (saved); with ``notify_peer`` send it the end notice."""
        progress = self.conversation.progress(peer)
        if progress.ended is not None:
            return
        progress.ended = reason
        await self._save_quietly()
        if notify_peer:
            try:
                await self._sessions.send_message(peer, end_notice(reason, progress.turns),
                                                  timeout_s=self._ack_timeout_s)
            except ClientError as exc:
                self._log.warn("end_notice_not_sent", room=self.label, peer=short_pk(peer), error=str(exc))
        self._log.info("conversation_ended", room=self.label, peer=short_pk(peer), reason=reason, turns=progress.turns)
        self._emit({"type": "done", "peer": peer, "reason": reason, "replies": progress.turns})
        self.ended.set()

    async def drain(self) -> None:
        """Wait until every message taken so far has been handled (graceful shutdown)."""
        await self._idle.wait()

    def info(self) -> api.HandlerInfo:
        stats = self.runner.stats
        peers = list(self.conversation.peers.values())
        return api.HandlerInfo(
            command=self.command,
            max_turns=self.max_turns,
            turns=max((p.turns for p in peers), default=0),
            ended=next((p.ended for p in peers if p.ended), None),
            runs=stats.runs,
            replies=stats.replies,
            no_reply=stats.no_reply,
            failures=stats.failures,
            timeouts=stats.timeouts,
            truncated=stats.truncated,
            send_failures=stats.send_failures,
            skipped=stats.skipped_max_turns + stats.skipped_loop_guard + stats.skipped_queue_full
            + self.skipped_after_end,
            queued=self.queued,
        )

    # -- taking messages ------------------------------------------------------------------------

    async def _consume(self) -> None:
        since = self.conversation.handled_cursor
        while True:
            try:
                subscription = self._inbox.subscribe(since)
            except api.RpcError:
                return  # the inbox is closed: the daemon is stopping
            async for message in subscription:
                since = message.cursor
                if self.accepts(message.from_):
                    await self._take(message)
            end = subscription.end
            if end is None or end.kind != api.LAGGED:
                return  # shutdown; a lagged subscription resumes where it stopped
            since = subscription.resume_from

    async def _take(self, message: ReceivedMessage) -> None:
        peer = message.from_
        progress = self.conversation.progress(peer)
        self.conversation.handled_cursor = message.cursor
        if is_end_notice(message.text):
            self._emit({"type": "received", "from": peer, "text": message.text, "msg_id": message.msg_id})
            await self.finish(peer, "peer_ended", notify_peer=False)
            return
        if progress.ended is not None:
            self.skipped_after_end += 1
            self._log.info("handler_skipped", room=self.label, peer=short_pk(peer), msg_id=message.msg_id,
                           reason="ended")
            self._emit({"type": "skipped", "from": peer, "msg_id": message.msg_id, "reason": "ended"})
            return
        try:
            await self._save()  # before the handler can run: at most once
        except StateError as exc:
            self.state_errors += 1
            self._log.error("handler_not_run", room=self.label, peer=short_pk(peer), msg_id=message.msg_id,
                            error=str(exc))
            return
        self._emit({"type": "received", "from": peer, "text": message.text, "msg_id": message.msg_id})
        if self.runner.submit(peer, message.msg_id, message.text):
            if self.queued == 0:
                self._idle = trio.Event()
            self.queued += 1

    # -- what the runner reports ----------------------------------------------------------------

    async def _send_reply(self, peer: str, text: str, turn: int) -> bool:
        text, cut = fit_message(text)
        try:
            status, msg_id, _ = await self._sessions.send_message(peer, text, timeout_s=self._ack_timeout_s)
        except ClientError as exc:
            self._log.warn("reply_not_sent", room=self.label, peer=short_pk(peer), error=str(exc))
            self._emit({"type": "send_error", "to": peer, "error": str(exc)})
            return False
        if cut:
            self.runner.stats.truncated += 1
        self.conversation.progress(peer).turns = turn
        await self._save_quietly()
        self._emit({"type": "replied", "to": peer, "text": text, "turn": turn, "status": status, "msg_id": msg_id,
                    "truncated": cut})
        return True

    def _on_runner_event(self, event: HandlerEvent) -> None:
        if isinstance(event, HandlerRan):
            self._done_one()
            result = event.result
            if result.outcome is HandlerOutcome.NO_REPLY:
                self._emit({"type": "no_reply", "from": event.peer, "msg_id": event.msg_id})
            elif result.outcome in (HandlerOutcome.FAILED, HandlerOutcome.TIMED_OUT):
                self._emit({
                    "type": "handler_error", "from": event.peer, "msg_id": event.msg_id,
                    "outcome": result.outcome.value, "exit_code": result.exit_code, "signal": result.signal,
                    "error": result.error, "stderr": result.stderr[:500],
                })  # fmt: skip
            self._spawn(self._save_quietly)
        elif isinstance(event, MessageSkipped):
            if event.reason is not SkipReason.QUEUE_FULL:  # a full queue refused it in submit: never counted
                self._done_one()
            self._emit({"type": "skipped", "from": event.peer, "msg_id": event.msg_id, "reason": event.reason.value})
        elif isinstance(event, TurnsExhausted):
            peer = event.peer

            async def end() -> None:
                await self.finish(peer, "max_turns", notify_peer=True)

            self._spawn(end)

    def _done_one(self) -> None:
        self.queued = max(0, self.queued - 1)
        if self.queued == 0:
            self._idle.set()

    # -- helpers --------------------------------------------------------------------------------

    def _spawn(self, work: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is None:
            self._deferred.append(work)  # e.g. a seed that used the last turn before `run` started
        else:
            self._nursery.start_soon(work)

    async def _save(self) -> None:
        self.conversation.stats = {**attrs.asdict(self.runner.stats), "skipped_after_end": self.skipped_after_end}
        await self._save_record()

    async def _save_quietly(self) -> None:
        """Save progress that may lag after a crash (turn counts, statistics): a failure is logged, not raised."""
        try:
            await self._save()
        except StateError as exc:
            self.state_errors += 1
            self._log.error("state_not_saved", room=self.label, error=str(exc))

    def _emit(self, event: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(event)
