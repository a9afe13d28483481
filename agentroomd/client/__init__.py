"""Client side of the daemon: relay connections, ratchet sessions per peer, the journal and outbox."""
