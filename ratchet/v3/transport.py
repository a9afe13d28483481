"""Between v3 field sets and the v2 frame objects of `ratchet.frames` that carry them.

v3 adds no frame type and no JSON field: these helpers only put `RoutedFields`, `ClaimFields` and
`PublishFields` into the frames every v2 relay parses, and take them out of what a relay delivers.
The frame's ``v`` stays 2 (relays accept only 1 or 2); the protocol version lives inside the
ciphertext.
"""

from ratchet.frames import InviteClaim, InvitePublish, Msg, Routed, SessionAck, SessionInit
from ratchet.v3.wire import ClaimFields, PublishFields, RoutedFields

__all__ = ["claim_frame", "fields_from_routed", "publish_frame", "routed_frame"]


def routed_frame(fields: RoutedFields, msg_id: str, ts: int) -> Routed:
    """The MSG / SESSION_ACK (or SESSION_INIT) frame to send for ``fields``."""
    kind: type[Msg] | type[SessionInit] | type[SessionAck] = Msg
    if fields.type == "SESSION_INIT":
        kind = SessionInit
    elif fields.type == "SESSION_ACK":
        kind = SessionAck
    return kind(
        msg_id=msg_id,
        ts=ts,
        from_=fields.from_pk,
        to=fields.to,
        ciphertext=fields.ciphertext,
        nonce=fields.nonce,
        sig=fields.sig,
        seq=fields.seq,
        ratchet_pk=fields.ratchet_pk,
    )


def fields_from_routed(frame: Routed) -> RoutedFields:
    """The fields of a routed frame a relay delivered (its msg_id and ts are the relay's business)."""
    return RoutedFields(
        type=frame.TYPE,
        from_pk=frame.from_,
        to=frame.to,
        ciphertext=frame.ciphertext,
        nonce=frame.nonce,
        sig=frame.sig,
        seq=frame.seq,
        ratchet_pk=frame.ratchet_pk,
    )


def claim_frame(claim: ClaimFields, msg_id: str, ts: int) -> InviteClaim:
    return InviteClaim(
        msg_id=msg_id,
        ts=ts,
        invite_id=claim.invite_id,
        from_=claim.from_pk,
        ciphertext=claim.ciphertext,
        nonce=claim.nonce,
        sig=claim.sig,
    )


def publish_frame(publish: PublishFields, msg_id: str, ts: int) -> InvitePublish:
    return InvitePublish(
        msg_id=msg_id, ts=ts, invite_id=publish.invite_id, blob=publish.blob, expires_at=publish.expires_at
    )
