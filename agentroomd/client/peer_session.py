"""One peer's ratchet session, whatever its protocol version: seal, open, save, prune.

The session manager speaks to every peer through this module so that its send and receive paths are
one straight line for v2 (the reference's protocol, for TypeScript peers) and v3 (ours, between our
own peers). The version is chosen once per conversation, by the invite, and never changes: a v3
peer's frames are never tried as v2 or the other way round.
"""

import uuid
from typing import Literal

import attrs

from ratchet import session as v2
from ratchet import v3
from ratchet.encoding import b64u_decode
from ratchet.errors import RatchetError
from ratchet.frames import FrameError, Msg
from ratchet.keys import KeyPair
from ratchet.rand import RandomSource
from ratchet.signatures import sign_routed
from ratchet.v3 import errors as v3_errors
from ratchet.v3.transport import fields_from_routed, routed_frame

Version = Literal[2, 3]


class SealError(Exception):
    """The message cannot be sealed; ``kind`` is "too_large" or "session_error"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Relabelled(RatchetError):
    """A v3 frame whose msg_id is not the one its sealed content implies: the relay changed it."""


def v3_msg_id(nonce: str) -> str:
    """The msg_id of a v3 frame: a version-4 UUID made of its digest (the routed ``nonce``).

    The routed msg_id is covered by no signature; tying it to the frame's digest, which the signature
    and the AEAD do cover, stops a relay from relabelling a genuine message (the receiver journals,
    deduplicates and reports by msg_id) and gives both sides the same id for it.
    """
    return str(uuid.UUID(bytes=b64u_decode(nonce)[:16], version=4))


class Duplicate(Exception):
    """The frame was accepted before (a redelivery or a replay): acknowledge it and drop it."""


@attrs.frozen
class PeerSession:
    version: Version
    state: v2.Session | v3.Session

    def dump(self) -> bytes:
        if isinstance(self.state, v3.Session):
            return v3.session_to_json(self.state)
        return v2.session_to_json(self.state)

    @classmethod
    def load(cls, version: int, data: bytes) -> "PeerSession":
        """Parse a saved state; raises RatchetError naming what is wrong."""
        if version == 3:
            return cls(3, v3.session_from_json(data))
        if version == 2:
            return cls(2, v2.session_from_json(data))
        raise RatchetError(f"unknown protocol version {version}")

    def prune(self, now_ms: int) -> "PeerSession":
        """Expired skipped keys erased; returns self when nothing changed."""
        if isinstance(self.state, v3.Session):
            pruned3 = v3.prune(self.state, now_ms)
            return self if pruned3 is self.state or pruned3 == self.state else PeerSession(3, pruned3)
        pruned2 = v2.prune_skipped(self.state, now_ms)
        return self if pruned2 is self.state else PeerSession(2, pruned2)

    def seal(self, identity: KeyPair, own_pk: str, peer_pk: str, plaintext: bytes, msg_id: str, ts: int,
             rng: RandomSource) -> tuple["PeerSession", Msg]:
        """The advanced session and the MSG frame to save (outbox) and then send.

        ``msg_id`` is used for v2; a v3 frame's msg_id is derived from its digest (`v3_msg_id`).
        """
        try:
            if isinstance(self.state, v3.Session):
                sealed = v3.encrypt(self.state, identity, plaintext, ts, rng)
                frame = routed_frame(sealed.frame, v3_msg_id(sealed.frame.nonce), ts)
                assert isinstance(frame, Msg)
                return PeerSession(3, sealed.state), frame
            new_state, box = v2.encrypt(self.state, plaintext, ts, rng)
            frame = Msg(msg_id=msg_id, ts=ts, from_=own_pk, to=peer_pk, ciphertext=box.ciphertext, nonce=box.nonce,
                        sig=sign_routed(identity, peer_pk, box.seq, box.nonce), seq=box.seq, ratchet_pk=box.ratchet_pk)
            return PeerSession(2, new_state), frame
        except (FrameError, v3_errors.MessageTooLargeError, v3_errors.MalformedFrameError) as exc:
            raise SealError("too_large", f"message too large for one frame ({len(plaintext)} bytes)") from exc
        except RatchetError as exc:
            raise SealError("session_error", str(exc)) from exc

    def open(self, msg: Msg, now_ms: int, *, signature_verified: bool = False) -> tuple["PeerSession", str, bytes]:
        """(advanced session, kind, plaintext) for a MSG from the peer; kind is "message" or "close".

        Raises Duplicate for a frame already accepted, RatchetError for anything else refused; either
        way this session is still the one to keep. ``signature_verified``: the caller has just checked
        this frame's routed signature (v3 then does not check it a second time).
        """
        if isinstance(self.state, v3.Session):
            if msg.msg_id != v3_msg_id(msg.nonce):
                raise Relabelled("msg_id does not match the frame's digest")
            try:
                opened = v3.decrypt(self.state, fields_from_routed(msg), now_ms, signature_verified=signature_verified)
            except v3_errors.DuplicateMessageError as exc:
                raise Duplicate(str(exc)) from exc
            return PeerSession(3, opened.state), opened.message.kind, opened.message.plaintext
        try:
            new_state, plaintext = v2.decrypt(self.state, msg.ciphertext, msg.nonce, msg.seq, msg.ratchet_pk, now_ms)
        except v2.ReplayError as exc:
            raise Duplicate(str(exc)) from exc
        return PeerSession(2, new_state), "message", plaintext
