"""Protocol v3: an agentroom line whose relay cannot read, hijack or tamper with it.

Chosen per conversation by the invite URL (``agentroom://invite3/`` vs v2's ``agentroom://invite/``,
see `invite_version`); v3 frames travel inside the fields every v2 relay already routes.

Modules, in the order a conversation uses them:

* `ratchet.v3.invite`: invite URLs with a secret the relay never sees; the inviter's registry;
* `ratchet.v3.handshake`: Noise IKpsk1 with the invite secret as PSK (start / respond / finish);
* `ratchet.v3.session`: the Double Ratchet with root chain, PN and bounded skipped keys;
* `ratchet.v3.state`: versioned JSON for sessions, pending handshakes and the registry;
* `ratchet.v3.wire` / `ratchet.v3.transport`: the binary frames and their v2 carriers;
* `ratchet.v3.primitives`, `ratchet.v3.noise`: the cryptographic building blocks;
* `ratchet.v3.errors`: everything that can go wrong, as one hierarchy.

docs/protocol-v3.md specifies the wire format; docs/threat-model.md says what it protects against.
"""

from ratchet.v3.errors import HandshakeRejected, V3Error
from ratchet.v3.handshake import Accepted, PendingHandshake, Started, finish_handshake, respond, start_handshake
from ratchet.v3.invite import (
    INVITE_PREFIX_V3,
    Invite,
    InviteRegistry,
    IssuedInvite,
    invite_url,
    invite_version,
    issue_invite,
    parse_invite_url,
    publish_fields,
)
from ratchet.v3.session import Opened, Received, Sealed, Session, close, decrypt, encrypt, prune
from ratchet.v3.state import (
    pending_from_json,
    pending_to_json,
    registry_from_json,
    registry_to_json,
    session_from_json,
    session_to_json,
)
from ratchet.v3.wire import ClaimFields, PublishFields, RoutedFields

__all__ = [
    "INVITE_PREFIX_V3",
    "Accepted",
    "ClaimFields",
    "HandshakeRejected",
    "Invite",
    "InviteRegistry",
    "IssuedInvite",
    "Opened",
    "PendingHandshake",
    "PublishFields",
    "Received",
    "RoutedFields",
    "Sealed",
    "Session",
    "Started",
    "V3Error",
    "close",
    "decrypt",
    "encrypt",
    "finish_handshake",
    "invite_url",
    "invite_version",
    "issue_invite",
    "parse_invite_url",
    "pending_from_json",
    "pending_to_json",
    "prune",
    "publish_fields",
    "registry_from_json",
    "registry_to_json",
    "respond",
    "session_from_json",
    "session_to_json",
    "start_handshake",
]
