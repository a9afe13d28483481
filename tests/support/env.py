"""Where the binaries are, the environment they run with, and directories short enough for Unix sockets."""

import os
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv running the tests holds the console scripts of this checkout
AGENTROOMD = str(BIN / "agentroomd")
AGENTROOMCTL = str(BIN / "agentroomctl")

# A developer's settings (AGENTROOM_*), real homes (XDG_*) and a service manager's hand-over (sd_notify,
# socket activation, watchdog) must never reach a process under test: each would point it at something real.
SCRUBBED_PREFIXES = ("AGENTROOM_", "XDG_", "NOTIFY_", "LISTEN_")
SCRUBBED_NAMES = frozenset({"WATCHDOG_USEC"})


def isolated_env(**extra: str) -> dict[str, str]:
    """The test process's environment without anything that points at a real home or service, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(SCRUBBED_PREFIXES) and key not in SCRUBBED_NAMES
    }
    env.update(extra)
    return env


def short_dir(prefix: str = "ar-") -> Path:
    """A fresh directory directly under /tmp: Unix socket paths inside it must fit in 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
