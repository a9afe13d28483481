"""Exit codes scripts can rely on (documented in `agentroomctl --help` and docs/control-protocol.md)."""

OK = 0
ERROR = 1  # anything else; the message says what went wrong
USAGE = 2  # bad arguments or params (including "no relay given and none configured")
UNREACHABLE = 3  # no daemon for this home (and autostart off or failed), or it went away mid-command
NOT_FOUND = 4  # unknown or ambiguous peer, unknown room or subscription
TIMEOUT = 5  # a bounded wait ended first (listen --count ... --timeout, stop waiting for the exit)
RELAY = 6  # the relay is unreachable or refused us
INVITE = 7  # the invite is malformed, has a bad signature, expired, or was already used
NOT_IMPLEMENTED = 8  # this agentroomd does not implement the command yet
INTERRUPTED = 130  # Ctrl-C before the answer (the shell's 128 + SIGINT); `listen` and `serve` end with 0 instead

SUMMARY = """exit codes:
  0  ok
  1  error (the message says what went wrong)
  2  usage: bad arguments or params
  3  daemon unreachable (not running and autostart off or failed, or it stopped mid-command)
  4  not found: unknown or ambiguous peer, unknown room
  5  timeout: a bounded wait ended first
  6  relay unreachable or refused
  7  invite rejected: malformed, bad signature, expired or already used
  8  not implemented by this agentroomd yet
130  interrupted (Ctrl-C) before agentroomd answered; listen and serve exit 0"""

BY_ERROR_TYPE = {
    "jsonrpc.InvalidParams": USAGE,
    "agentroom.NoRelay": USAGE,
    "agentroom.ShuttingDown": UNREACHABLE,
    "agentroom.NotFound": NOT_FOUND,
    "agentroom.UnknownPeer": NOT_FOUND,
    "agentroom.AmbiguousPeer": NOT_FOUND,
    "agentroom.Timeout": TIMEOUT,
    "agentroom.RelayUnreachable": RELAY,
    "agentroom.InviteInvalid": INVITE,
    "agentroom.InviteExpired": INVITE,
    "agentroom.InviteUsed": INVITE,
    "agentroom.NotImplemented": NOT_IMPLEMENTED,
    "jsonrpc.MethodNotFound": NOT_IMPLEMENTED,  # an older daemon that does not know the method
}

HINTS = {
    "agentroom.UnknownPeer": "list peers with `agentroomctl peers`; PEER is a public key, a unique prefix or an alias",
    "agentroom.AmbiguousPeer": "give more characters of the public key, or use the alias",
    "agentroom.NoRelay": "pass --relay ws://HOST:PORT/ws, or set [client] relays in agentroom.toml",
    "agentroom.RelayUnreachable": "check the relay URL and that the relay is up (see `agentroomctl status`)",
    "agentroom.InviteExpired": "ask the inviter for a new invite",
    "agentroom.InviteUsed": "an invite works once; ask the inviter for a new one",
    "agentroom.InviteInvalid": "copy the whole agentroom://invite3/... (or invite/) URL again",
    "agentroom.DiskFull": "free some disk space and retry; nothing was changed",
    "agentroom.NotImplemented": "this agentroomd does not support it yet; upgrade agentroom",
    "jsonrpc.MethodNotFound": "agentroomctl and agentroomd differ in version: restart the daemon (agentroomctl stop)",
    "agentroom.ShuttingDown": "the daemon is stopping; run the command again to start a new one",
    "jsonrpc.InternalError": "this is a bug in agentroomd; its log has the details",
}


def for_error_type(error_type: str) -> int:
    return BY_ERROR_TYPE.get(error_type, ERROR)
