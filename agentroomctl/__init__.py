"""agentroomctl: the command line that drives agentroomd over its Unix control socket."""
