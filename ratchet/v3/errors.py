"""Everything protocol v3 reports as a failure, as one hierarchy under `ratchet.errors.RatchetError`.

The daemon needs to tell three situations apart, and the classes follow them:

* a frame that is not a well-formed v3 frame at all (`MalformedFrameError` and its subclasses):
  garbage, a wrong length, another protocol version, a frame of the wrong kind for where it arrived;
* a handshake the inviter refuses (`HandshakeRejected`, with a ``reason`` code the daemon counts);
* a well-formed message the session does not accept (`DecryptError` and its subclasses).

Each is raised before any state is produced, so whoever catches one simply keeps the state it had.
Invite URL failures reuse `ratchet.invite`'s classes, so v2 and v3 invites fail the same way.
"""

from typing import Literal, TypeAlias

from ratchet.errors import InvalidKeyError, RatchetError

__all__ = [
    "AuthenticationError",
    "DecryptError",
    "DuplicateMessageError",
    "FrameTypeError",
    "HandshakeRejected",
    "MalformedFrameError",
    "MessageTooLargeError",
    "RejectReason",
    "SendChainExhaustedError",
    "SessionClosedError",
    "SessionMismatchError",
    "SkipLimitError",
    "SkippedKeyExpiredError",
    "StaleChainError",
    "StateFormatError",
    "UnexpectedRatchetKeyError",
    "UnsupportedVersionError",
    "V3Error",
    "WeakRatchetKeyError",
    "WrongPeerError",
]


class V3Error(RatchetError):
    """Base class of every protocol-v3 failure."""


# ── frames ──────────────────────────────────────────────────────────────────────────────────────


class MalformedFrameError(V3Error):
    """Not a well-formed v3 frame: bad base64url, wrong length, oversize, inconsistent outer fields."""


class UnsupportedVersionError(MalformedFrameError):
    """The frame's version byte is not 3: another protocol, or a relay stripping or altering the version."""


class FrameTypeError(MalformedFrameError):
    """A frame of one kind arrived where another is expected (a handshake frame as a message, ...)."""


# ── handshake ───────────────────────────────────────────────────────────────────────────────────

RejectReason: TypeAlias = Literal[
    "malformed",  # not a v3 SESSION_INIT at all
    "own_invite",  # the SESSION_INIT claims to come from ourselves
    "unknown_invite",  # we never issued this invite id (or it was revoked or pruned)
    "already_redeemed",  # the invite was redeemed before: a replay, or a second claimant
    "expired",  # past expires_at plus the clock-skew grace
    "wrong_relay",  # the invite was issued for another relay than the one this frame came through
    "bad_signature",  # the routed frame's Ed25519 signature, or the invitee's identity signature, is wrong
    "bad_handshake",  # the Noise message does not authenticate: no invite secret, wrong keys, tampering
    "weak_key",  # a low-order X25519 key in the handshake
]


class HandshakeRejected(V3Error):
    """The inviter refuses a SESSION_INIT; ``reason`` says why, for the daemon's counters and logs.

    Nothing was redeemed: the invite is exactly as usable as before (a forged claim cannot burn it).
    """

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: RejectReason = reason
        self.detail = detail


# ── messages ────────────────────────────────────────────────────────────────────────────────────


class DecryptError(V3Error):
    """A received frame was not accepted; the session the caller holds is still the one to keep."""


class WrongPeerError(DecryptError):
    """``from`` is not this session's peer, or ``to`` is not us (reflection, misrouting)."""


class SessionMismatchError(DecryptError):
    """The frame names another session (an older session with the same peer, or a splice)."""


class AuthenticationError(DecryptError):
    """The frame does not authenticate: forged, tampered with, or encrypted for other keys."""


class WeakRatchetKeyError(AuthenticationError, InvalidKeyError):
    """The sender's ratchet key is a low-order X25519 point: no secret can be agreed with it."""


class UnexpectedRatchetKeyError(AuthenticationError):
    """A new ratchet key arrived although we have not sent since the peer's last one: no honest peer does that."""


class DuplicateMessageError(DecryptError):
    """This message number was already accepted on its chain (a replay or a duplicate delivery)."""


class StaleChainError(DuplicateMessageError):
    """The message belongs to an earlier chain and no key is kept for it: received, expired or evicted."""


class SkipLimitError(DecryptError):
    """Accepting the frame would mean deriving more than MAX_SKIP keys ahead on one chain."""


class SkippedKeyExpiredError(DecryptError):
    """The key kept for this late message outlived SKIPPED_KEY_TTL_MS (prune the session to drop it)."""


class SessionClosedError(V3Error):
    """The session was closed (by us or by the peer): nothing new is sent or accepted on it."""


class SendChainExhaustedError(V3Error):
    """The sending chain reached 2**32 messages; the counter must not wrap."""


class MessageTooLargeError(V3Error):
    """The plaintext would not fit in one routed frame (the relays' ciphertext bound)."""


# ── saved state ─────────────────────────────────────────────────────────────────────────────────


class StateFormatError(V3Error):
    """A saved v3 state (session, pending handshake, invite registry) is corrupt or of another format."""
