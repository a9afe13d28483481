"""The identity file of a home: created on first start, otherwise loaded and checked, never replaced.

A corrupt identity file is an error that names the file and leaves it exactly as it was: silently
making a new identity would change this daemon's public key and break every peer's session, and the
old file may be recoverable. The format is the reference's (`ratchet.identity`), written 0600 atomically.
"""

from pathlib import Path

from agentroomd.files import PRIVATE_FILE, atomic_write
from ratchet.identity import Identity, IdentityFileError, identity_from_json, identity_to_json
from ratchet.keys import KeyPair
from ratchet.rand import SYSTEM_RANDOM, RandomSource


class IdentityStoreError(Exception):
    """The identity file cannot be read, written or trusted; the message names it and says what to do."""


def load_or_create_identity(path: Path, rng: RandomSource = SYSTEM_RANDOM) -> tuple[Identity, bool]:
    """The home's identity and whether it was just created."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        keypair = KeyPair.generate(rng)
        try:
            atomic_write(path, identity_to_json(keypair))
        except OSError as exc:
            raise IdentityStoreError(f"cannot write the new identity file {path}: {exc.strerror or exc}") from exc
        return Identity(keypair), True
    except OSError as exc:
        raise IdentityStoreError(f"cannot read the identity file {path}: {exc.strerror or exc}") from exc
    try:
        keypair = identity_from_json(data)
    except IdentityFileError as exc:
        raise IdentityStoreError(
            f"corrupt identity file {path}: {exc}. It was left untouched: restore it from a backup, or move it "
            "away to create a new identity (that changes your public key; peers will need a new invite)"
        ) from exc
    if path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_FILE)  # a secret key readable by others: tighten it (the reference chmods too)
    return Identity(keypair), False
