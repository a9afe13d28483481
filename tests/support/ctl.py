"""One `agentroomctl` run as a user types it, everything captured, and its JSON output read back."""

import json
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from support.env import AGENTROOMCTL, isolated_env


def ctl(
    home: Path | None,
    *args: str,
    stdin: str | None = None,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run agentroomctl (with ``--home home`` first, unless home is None) and capture everything; never raises."""
    argv = [AGENTROOMCTL, *(["--home", str(home)] if home is not None else []), *args]
    return subprocess.run(
        argv,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else isolated_env(),
        check=False,
    )


def require_success(result: subprocess.CompletedProcess[str], args: Sequence[str], context: str = "") -> None:
    """Fail the test with what agentroomctl said (and ``context``, e.g. the daemon's log) unless it exited 0."""
    if result.returncode != 0:
        raise AssertionError(f"agentroomctl {' '.join(args)} exited {result.returncode}: {result.stderr}{context}")


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    """The single JSON document of a `--json` run (an empty stdout fails with the stderr)."""
    assert result.stdout.strip(), f"no stdout; stderr: {result.stderr}"
    return json.loads(result.stdout)


def json_lines(result: subprocess.CompletedProcess[str]) -> list[Any]:
    """Every line of a `--json` run's NDJSON output (`listen`, `serve` print one document per line)."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
