"""Invites and the handshake, both protocol versions: how a peer comes to have a session with us.

v3 (the default between our own peers) puts a secret in the invite URL that the relay never sees
and runs a Noise IKpsk1 handshake with it; v2 (the reference's, for TypeScript peers) is chosen with
``version=2`` on invite creation, and an incoming v2 invite is accepted as v2. Either way the inviter
takes a SESSION_INIT only for an invite it issued and that nobody redeemed yet, and the redemption is
one store transaction with the new peer (and, for v3, with the registry that forgets the secret).

The session manager owns one `Handshakes`; it shares the manager's store, locks, connections and peers.
"""

import json
from typing import TYPE_CHECKING, Any

import attrs
import trio

from agentroomd.client.peer_session import PeerSession
from agentroomd.client.store import PeerRow, StoreError, claim_state
from agentroomd.log import short_pk
from ratchet import v3
from ratchet.encoding import b64u_decode, b64u_encode
from ratchet.errors import EncodingError, RatchetError
from ratchet.frames import Error, InviteClaim, InvitePublish, SessionAck, SessionInit, serialize_frame
from ratchet.handshake import accept_invite, check_session_ack, handle_session_init
from ratchet.invite import InviteExpiredError, create_invite, parse_invite_url
from ratchet.v3.transport import claim_frame, fields_from_routed, publish_frame, routed_frame

if TYPE_CHECKING:
    from agentroomd.client.manager import SessionManager

INVITE_GRACE_MS = 30_000
REGISTRY_KEY = "v3_registry"
V3_INIT_PREFIX = bytes([3, 1])  # version 3, HANDSHAKE_INIT: what a v3 SESSION_INIT's frame starts with


@attrs.frozen
class InviteInfo:
    url: str
    invite_id: str
    expires_at: int
    version: int


class Handshakes:
    """Creating, publishing and redeeming invites; answering SESSION_INIT and SESSION_ACK.

    Owns the v3 invite registry (with the secrets of unredeemed invites) and the events that wake an
    `invite accept` waiting for the inviter's answer; everything else is the manager's.
    """

    def __init__(self, manager: "SessionManager") -> None:
        self.m = manager
        self.registry = v3.InviteRegistry()
        self.registry_lock = trio.Lock()
        self.handshake_events: dict[str, trio.Event] = {}
        self._accept_locks: dict[str, trio.Lock] = {}

    async def create_invite(self, relay_url: str, ttl_ms: int, timeout_s: float = 15.0,
                            advertised_url: str | None = None, version: int = 3) -> InviteInfo:
        """Create an invite, remember it, and publish it on the relay at ``relay_url``.

        ``advertised_url`` is the relay URL written into the invite for the guest when it differs from
        the one we connect to (a hosted room: we connect on loopback, the guest through the tunnel).
        """
        from agentroomd.client.manager import ClientError

        server_url, now = advertised_url or relay_url, self.m.clock_ms()
        if version == 3:
            async with self.registry_lock:
                issued = v3.issue_invite(self.m.identity, server_url, now, self.m.rng, ttl_ms=ttl_ms)
                registry = self.registry.with_issued(issued)
                await self.m.store.call(self.m.store.add_invite, issued.invite_id, f"v3:{issued.invite_id}", relay_url,
                                      issued.expires_at, version=3,
                                      meta={REGISTRY_KEY: v3.registry_to_json(registry).decode()})
                self.registry = registry
            info = InviteInfo(v3.invite_url(self.m.identity, issued), issued.invite_id, issued.expires_at, 3)
            publish: InvitePublish = publish_frame(v3.publish_fields(issued), self.m.rng.uuid4(), now)
        elif version == 2:
            invite = create_invite(self.m.identity, server_url, now, self.m.rng, ttl_ms=ttl_ms)
            blob = invite.blob
            await self.m.store.call(self.m.store.add_invite, blob.invite_id, blob.nonce, relay_url, blob.expires_at)
            info = InviteInfo(invite.url, blob.invite_id, blob.expires_at, 2)
            publish = InvitePublish(msg_id=self.m.rng.uuid4(), ts=now, invite_id=blob.invite_id,
                                    blob=invite.payload_b64u, expires_at=blob.expires_at)
        else:
            raise ClientError("invalid_params", f"unknown protocol version {version} (use 2 or 3)")
        conn = await self.m.wait_connected(relay_url, timeout_s)
        answer = await self.m._request(conn, publish.msg_id, serialize_frame(publish), timeout_s)
        if isinstance(answer, Error):
            raise ClientError("relay_refused", f"relay refused the invite: {answer.code} {answer.message}")
        if answer.status == "error":
            raise ClientError("relay_refused", f"relay refused the invite: {answer.error}")
        self.m.log.info("invite.created", invite_id=info.invite_id, relay=relay_url, expires_at=info.expires_at,
                      version=version)
        return info

    async def accept_invite(self, url: str, alias: str | None = None, timeout_s: float = 15.0,
                            wait_ack_s: float = 5.0) -> tuple[str, str, bool]:
        """Claim an invite: returns (inviter pk, relay url, whether the inviter answered within wait_ack_s).

        The protocol version is the invite's: a v3 URL starts a v3 handshake, a v2 URL a v2 one.
        """
        from agentroomd.client.manager import ClientError

        url, now = url.strip(), self.m.clock_ms()
        try:
            version = v3.invite_version(url)
            if version == 3:
                invite3 = v3.parse_invite_url(url, now)
                inviter, relay_url = invite3.inviter_pk, invite3.server_url
            else:
                invite2 = parse_invite_url(url, now)
                inviter, relay_url = invite2.blob.inviter_ed25519_pk, invite2.blob.server_url
        except InviteExpiredError as exc:
            raise ClientError("invite_expired", f"invite rejected: {exc}") from exc
        except RatchetError as exc:
            raise ClientError("invalid_invite", f"invite rejected: {exc}") from exc
        # One accept per inviter at a time: an accept replaces our unanswered claim to that inviter and forgets
        # the peer when the relay refuses its own claim, so two at once (the same URL twice) left the loser
        # deleting the winner's session.
        async with self._accept_locks.setdefault(inviter, trio.Lock()):
            # closed, or our claim never answered (the inviter lost the invite, or came back too late): start over.
            # An open session is kept: the peer is stored before the claim goes out, so replacing it here would
            # lose it whenever the relay then refuses the claim (used, expired).
            if inviter in self.m._peers and self.m.peer_state(inviter) not in ("closed", "pending"):
                raise ClientError("already_exists", f"already in a session with {short_pk(inviter)}")
            if version == 3 and self._claimed_invite_id(inviter) == invite3.invite_id:
                # the relay would refuse this one as already claimed, and the first claim must stay
                raise ClientError("already_exists", f"this invite was already accepted; {short_pk(inviter)} has not "
                                  "answered yet (its daemon is offline?): it will when it is back")
            try:
                if version == 3:
                    started = v3.start_handshake(self.m.identity, invite3, now, self.m.rng)
                    state, session = b"", None
                    handshake = json.dumps({"state": "claimed-v3",
                                            "pending": v3.pending_to_json(started.pending).decode()})
                    claim = claim_frame(started.claim, self.m.rng.uuid4(), now)
                else:
                    claim2, session2 = accept_invite(self.m.identity, invite2, now)
                    session = PeerSession(2, session2)
                    state = session.dump()
                    handshake = json.dumps({"state": "claimed", "nonce": invite2.blob.nonce,
                                            "key_a": b64u_encode(session2.recv_chain_key)})
                    claim = InviteClaim(msg_id=self.m.rng.uuid4(), ts=now, invite_id=claim2.invite_id,
                                        from_=claim2.from_pk, ciphertext=claim2.ciphertext, nonce=claim2.nonce,
                                        sig=claim2.sig)
            except RatchetError as exc:
                raise ClientError("invalid_invite", f"invite rejected: {exc}") from exc
            conn = await self.m.wait_connected(relay_url, timeout_s)
            event = self.handshake_events.setdefault(inviter, trio.Event())
            async with self.m._lock(inviter):
                added = await self.m.store.call(self.m.store.add_peer, inviter, relay_url, state, handshake, alias,
                                              version=version, replace_unanswered=True)
                if not added:
                    raise ClientError("already_exists", f"already in a session with {short_pk(inviter)}")
                self.m._sessions.pop(inviter, None)  # a closed session (or an unanswered claim) was replaced
                self.remember(inviter, session, relay_url, handshake, alias, version)
            try:
                answer = await self.m._request(conn, claim.msg_id, serialize_frame(claim), timeout_s)
            except ClientError:
                await self.forget_peer(inviter)
                raise
            if isinstance(answer, Error) or answer.status == "error":
                await self.forget_peer(inviter)
                code, text = (answer.code, answer.message) if isinstance(answer, Error) else ("ERROR", answer.error)
                kind = {"NOT_FOUND": "invite_not_found", "ALREADY_CLAIMED": "invite_used",
                        "EXPIRED": "invite_expired"}.get(code, "relay_refused")
                raise ClientError(kind, f"relay refused the invite: {code} {text}")
            self.m.log.info("invite.accepted", peer=short_pk(inviter), relay=relay_url, version=version)
            self.m.on_peer(inviter)
            with trio.move_on_after(wait_ack_s):
                await event.wait()
            return inviter, relay_url, event.is_set()

    async def forget_peer(self, pk: str) -> None:
        async with self.m._lock(pk):
            await self.m.store.call(self.m.store.delete_peer, pk)
            self.m._sessions.pop(pk, None)
            self.m._peers.pop(pk, None)

    def remember(self, pk: str, session: PeerSession | None, relay_url: str, handshake: str,
                  alias: str | None, version: int) -> None:
        """Mirror a peer row we just committed, so that lookups never touch the disk."""
        if session is not None:
            self.m._sessions[pk] = session
            self.m.session_added()
        self.m._peers[pk] = PeerRow(pk, alias, relay_url, self.m.clock_ms(), b"", handshake, version)

    # -- the inviter's side ---------------------------------------------------------------------

    async def on_session_init(self, conn: Any, init: SessionInit) -> None:
        pk = init.from_
        try:
            is_v3 = b64u_decode(init.ciphertext)[:2] == V3_INIT_PREFIX
        except EncodingError:
            is_v3 = False
        existing = self.m._peers.get(pk)
        # closed: a new invite starts over; v2 over v2: a fresh, unredeemed invite replaces it (as the reference
        # does), which `_on_session_init_v2` checks: the same SESSION_INIT again is still a duplicate there
        if existing is not None and self.m.peer_state(pk) != "closed" and not (not is_v3 and existing.version == 2):
            self._duplicate(pk)
            return
        if is_v3:
            await self._on_session_init_v3(conn, init)
        else:
            await self._on_session_init_v2(conn, init)

    def _duplicate(self, pk: str) -> None:
        self.m.counters.duplicates += 1
        self.m.log.info("session_init.duplicate", peer=short_pk(pk))

    async def _on_session_init_v2(self, conn: Any, init: SessionInit) -> None:
        pk = init.from_
        try:
            m = self.m
            fields, session, nonce = handle_session_init(m.identity, pk, init.ciphertext, m.clock_ms(), m.rng,
                                                         frame_nonce=init.nonce, sig=init.sig)
        except RatchetError as exc:
            self._unsolicited(pk, str(exc)[:200])
            return
        invite = await self.m.store.call(self.m.store.invite_by_nonce, nonce)
        if invite is not None and invite.redeemed_by == pk and pk in self.m._peers:
            self._duplicate(pk)  # the claim that made the session we have, delivered again
            return
        if invite is None or invite.redeemed_by is not None or self.m.clock_ms() > invite.expires_at + INVITE_GRACE_MS:
            why = "unknown invite" if invite is None else ("reused" if invite.redeemed_by else "expired")
            self._unsolicited(pk, why)
            return
        if invite.relay_url != conn.url:
            self._unsolicited(pk, "invite issued for another relay")
            return
        peer = PeerSession(2, session)
        ack = SessionAck(msg_id=self.m.rng.uuid4(), ts=self.m.clock_ms(), from_=fields.from_pk, to=fields.to,
                         ciphertext=fields.ciphertext, nonce=fields.nonce, sig=fields.sig, seq=fields.seq)
        async with self.m._lock(pk):
            store = self.m.store
            added = await store.call(store.add_peer, pk, invite.relay_url, peer.dump(), "established", None,
                                     invite.invite_id, outbox_frame=(ack.msg_id, serialize_frame(ack)),
                                     replace_open_v2=True)
            if not added:
                self._unsolicited(pk, "reused")
                return
            self.remember(pk, peer, invite.relay_url, "established", None, 2)
        self._established_as_inviter(invite.relay_url, pk, invite.invite_id, 2)

    async def _on_session_init_v3(self, conn: Any, init: SessionInit) -> None:
        pk = init.from_
        async with self.registry_lock:
            try:
                accepted = v3.respond(self.registry, self.m.identity, fields_from_routed(init), self.m.clock_ms(),
                                      self.m.rng)
            except v3.HandshakeRejected as exc:
                self._unsolicited(pk, exc.reason)
                return
            except RatchetError as exc:
                self._unsolicited(pk, type(exc).__name__)
                return
            redeemed = [r for r in accepted.registry.redeemed if r.peer_pk == pk and r not in self.registry.redeemed]
            invite = await self.m.store.call(self.m.store.invite, redeemed[0].invite_id) if redeemed else None
            if invite is None or invite.relay_url != conn.url:
                # the invite was bound to another relay: a relay replaying a claim elsewhere gets nothing
                self._unsolicited(pk, "invite issued for another relay" if invite else "unknown invite")
                return
            peer = PeerSession(3, accepted.session)
            ack = routed_frame(accepted.frame, self.m.rng.uuid4(), self.m.clock_ms())
            async with self.m._lock(pk):
                added = await self.m.store.call(
                    self.m.store.add_peer, pk, invite.relay_url, peer.dump(), "established", None, invite.invite_id,
                    version=3, meta={REGISTRY_KEY: v3.registry_to_json(accepted.registry).decode()},
                    outbox_frame=(ack.msg_id, serialize_frame(ack)),
                )
                if not added:
                    self._unsolicited(pk, "reused")
                    return
                self.registry = accepted.registry
                self.remember(pk, peer, invite.relay_url, "established", None, 3)
        self._established_as_inviter(invite.relay_url, pk, invite.invite_id, 3)

    def _unsolicited(self, pk: str, reason: str) -> None:
        self.m.counters.unsolicited_session_init += 1
        self.m.log.warn("session_init.rejected", peer=short_pk(pk), reason=reason)

    def _established_as_inviter(self, relay_url: str, pk: str, invite_id: str, version: int) -> None:
        """The session and its SESSION_ACK (in the outbox) are committed: send it, tell who listens."""
        self.m.log.info("session.established", peer=short_pk(pk), role="inviter", invite_id=invite_id, version=version)
        self.m.outbox_changed(relay_url)
        self.m.on_peer(pk)
        self.m.on_invite_redeemed(invite_id, pk)

    # -- the invitee's side ---------------------------------------------------------------------

    def _claimed_invite_id(self, pk: str) -> str | None:
        """The invite of our v3 claim to ``pk`` that waits for its answer, if there is one."""
        row = self.m._peers.get(pk)
        pending = claim_state(row.handshake) if row is not None else {}
        if pending.get("state") != "claimed-v3":
            return None
        try:
            return v3.pending_from_json(pending["pending"].encode()).invite_id
        except (KeyError, RatchetError):
            return None

    async def on_session_ack(self, ack: SessionAck) -> None:
        pk = ack.from_
        row = self.m._peers.get(pk)
        if row is None:
            self.m.counters.unknown_peer += 1
            self.m.log.warn("session_ack.unknown_peer", peer=short_pk(pk))
            return
        pending = claim_state(row.handshake)
        if pending.get("state") == "claimed-v3":
            async with self.m._lock(pk):
                try:
                    handshake = v3.pending_from_json(pending["pending"].encode())
                    fields = fields_from_routed(ack)
                    session = v3.finish_handshake(handshake, self.m.identity, fields, self.m.clock_ms())
                except RatchetError as exc:
                    self.m.counters.undecryptable += 1
                    self.m.log.warn("session_ack.invalid", peer=short_pk(pk), reason=type(exc).__name__)
                    return
                peer = PeerSession(3, session)
                await self.m.store.call(self.m.store.set_peer_state, pk, peer.dump(), "established")
                self.m._sessions[pk] = peer
                self.m._peers[pk] = attrs.evolve(row, handshake="established")
                self.m.session_added()
            self.m.log.info("session.established", peer=short_pk(pk), role="invitee", version=3)
            self._wake_accept(pk)
            await self.m.open_early_frames(pk)
        elif pending.get("state") == "claimed":
            if not check_session_ack(b64u_decode(pending["key_a"]), pending["nonce"], ack.ciphertext, ack.nonce):
                self.m.counters.undecryptable += 1
                self.m.log.warn("session_ack.invalid", peer=short_pk(pk))
                return
            self.mark_established(pk)
        else:
            # no handshake of ours is waiting for it: a replayed answer, or another frame retyped by the relay
            self.m.counters.undecryptable += 1
            self.m.log.warn("session_ack.unexpected", peer=short_pk(pk))
            if pk in self.m._sessions:
                # or the genuine answer again: the store failed (or the daemon died) after the session was
                # saved but before the frames that overtook it were opened; they wait in the store still
                await self.m.open_early_frames(pk)

    def _wake_accept(self, pk: str) -> None:
        event = self.handshake_events.pop(pk, None)
        if event is not None:
            event.set()

    def mark_established(self, pk: str) -> None:
        """The peer proved it holds the session (a valid SESSION_ACK or a message): wake `invite accept`."""
        row = self.m._peers.get(pk)
        if row is not None and row.handshake not in ("established", "closed"):  # a closed session stays closed
            self.m._peers[pk] = attrs.evolve(row, handshake="established")
            self.m.log.info("session.established", peer=short_pk(pk), role="invitee", version=row.version)
            if self.m._nursery is not None:
                self.m._nursery.start_soon(self._save_established, pk)
        self._wake_accept(pk)

    async def _save_established(self, pk: str) -> None:
        """Best effort: if the store cannot write it (full disk), the next message after a restart does."""
        try:
            await self.m.store.call(self.m.store.set_handshake, pk, "established")
        except StoreError as exc:
            self.m.log.error("session.established_not_saved", peer=short_pk(pk), error=str(exc))
