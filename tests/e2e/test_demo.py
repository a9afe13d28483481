"""`make demo` is the main job: it must keep working, end to end, and keep the relay blind."""

import subprocess
import sys

from support.env import isolated_env


def test_the_demo_runs_a_conversation_and_the_relay_sees_no_plaintext() -> None:
    done = subprocess.run([sys.executable, "-m", "agentroomd.demo"], capture_output=True, text=True, timeout=180,
                          check=False, env=isolated_env())
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "protocol v3" in out
    assert out.count("[delivered]") + out.count("[queued]") == 6
    assert "plaintext found in them: 0 of 6 messages" in out
    assert out.count("  MSG  ") == 6 and "SESSION_INIT" in out and "SESSION_ACK" in out
