"""Handler commands for rooms and `serve`: the bundled echo, one-off shell scripts, and the end notice they cause."""

from pathlib import Path

from support.env import PROJECT_ROOT

ECHO = str(PROJECT_ROOT / "contrib" / "handlers" / "echo.sh")
# What a peer reads when a conversation ends (max turns, a stopped room); spelled out, as the user sees it.
END_PREFIX = "[agentroom] conversation ended"


def write_script(path: Path, body: str) -> str:
    """An executable /bin/sh script at ``path``; its path, ready for ``--on-message``."""
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)

