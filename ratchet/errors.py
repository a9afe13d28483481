"""The one exception hierarchy of the protocol core.

Every failure `ratchet` reports is a `RatchetError`, so the daemon can catch protocol failures
without catching programming errors. Each module adds its own subclasses here or next to its code.
"""


class RatchetError(Exception):
    """Base class of every error the protocol core raises on bad input."""


class EncodingError(RatchetError):
    """A value is not valid base64url, UTF-8 or JSON where the protocol needs one."""


class InvalidKeyError(RatchetError):
    """A key has the wrong length, or an X25519 public key is a low-order point."""
