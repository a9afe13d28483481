"""agentroomd: the long-lived trio daemon (relay, tunnel, client sessions, handlers, control socket)."""
