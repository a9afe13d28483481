"""Find the home's daemon, or start one in the background and wait until it answers (like gpg-agent).

The daemon is started as `python -m agentroomd run --home HOME --ready-fd N` with the interpreter
running this CLI (so both come from the same installation), detached (own session, stdin from
/dev/null, stdout/stderr appended to `<state>/agentroomd.log`, cwd the state directory). It writes
"ready" to fd N once its control socket answers, so we wait for an event, not a polling loop. If it
exits first we show why, taken from the log. Two CLIs autostarting at once is fine: the loser's
daemon exits with "already running" and that CLI connects to the winner's.
"""

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from agentroomctl.client import ControlClient, DaemonUnreachableError
from agentroomd.config import Paths, refuse_shared_home
from agentroomd.control import api

START_TIMEOUT_S = 15.0
ALREADY_RUNNING_EXIT = 3  # agentroomd's own exit code for "another daemon holds this home"


def home_flag(paths: Paths) -> str:
    return f" --home {paths.home}" if paths.home else ""


def connect(paths: Paths, autostart: bool) -> tuple[ControlClient, api.HelloResult]:
    """A connected client that has said hello; raises DaemonUnreachableError with what to do."""
    try:
        return _hello(ControlClient.connect(paths.socket_path))
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    except OSError as exc:
        raise DaemonUnreachableError(f"cannot connect to agentroomd at {paths.socket_path}: {exc}") from exc
    if not autostart:
        raise DaemonUnreachableError(
            f"no agentroomd is running for {paths.home or paths.state_dir} (socket {paths.socket_path}); "
            f"start one with `agentroomd run{home_flag(paths)}`, or run without --no-autostart"
        )
    start_daemon(paths)
    try:
        return _hello(ControlClient.connect(paths.socket_path))
    except OSError as exc:
        raise DaemonUnreachableError(
            f"agentroomd started but its socket {paths.socket_path} does not answer ({exc}); see {paths.log_file}"
        ) from exc


def _hello(client: ControlClient) -> tuple[ControlClient, api.HelloResult]:
    try:
        hello = client.call(
            api.DAEMON_HELLO,
            api.HelloParams(client="agentroomctl", version=api.package_version(), protocol=api.PROTOCOL_VERSION),
            timeout=START_TIMEOUT_S,
        )
    except BaseException:
        client.close()
        raise
    if hello.protocol != api.PROTOCOL_VERSION:
        client.close()
        raise DaemonUnreachableError(
            f"agentroomd (pid {hello.pid}) speaks control protocol {hello.protocol}, this agentroomctl speaks "
            f"{api.PROTOCOL_VERSION}: restart the daemon with `agentroomctl stop` and run the command again"
        )
    return client, hello


def start_daemon(paths: Paths, timeout: float = START_TIMEOUT_S) -> None:
    """Start a detached daemon for ``paths`` and return once it is ready; raises DaemonUnreachableError.

    A home the daemon would refuse (a shared directory such as /tmp) is a ConfigError before anything,
    its log file included, is created there.
    """
    refuse_shared_home(paths)
    try:
        paths.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        log_fd = os.open(paths.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DaemonUnreachableError(
            f"cannot start agentroomd for {paths.home or paths.state_dir}: {exc.strerror or exc}: "
            f"{exc.filename or paths.state_dir}"
        ) from exc
    ready_read, ready_write = os.pipe()
    command = [sys.executable, "-m", "agentroomd", "run", "--ready-fd", str(ready_write)]
    if paths.home is not None:
        command += ["--home", str(paths.home)]
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            pass_fds=(ready_write,),
            start_new_session=True,
            cwd=paths.state_dir,
        )
    except OSError as exc:
        os.close(ready_read)
        raise DaemonUnreachableError(f"cannot start agentroomd ({command[0]} -m agentroomd): {exc}") from exc
    finally:
        os.close(ready_write)
        os.close(log_fd)
    deadline = time.monotonic() + timeout
    try:
        if _wait_ready(ready_read, deadline):
            return
    finally:
        os.close(ready_read)
    # The pipe closed without "ready": the daemon exited (or closed it); find out which.
    try:
        code = process.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise DaemonUnreachableError(
            f"agentroomd (pid {process.pid}) did not become ready within {timeout:g} s; see {paths.log_file}"
        ) from None
    if code == ALREADY_RUNNING_EXIT and _wait_socket(paths, deadline):
        return  # another CLI started the daemon at the same moment: use that one
    raise DaemonUnreachableError(
        f"agentroomd failed to start (exit {code}): {last_error(paths.log_file)}; full log: {paths.log_file}"
    )


def _wait_ready(fd: int, deadline: float) -> bool:
    received = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return False
        chunk = os.read(fd, 64)
        if not chunk:
            return False
        received += chunk
        if b"ready" in received:
            return True


def _wait_socket(paths: Paths, deadline: float) -> bool:
    """Only for the start race: the winner's socket appears within moments; a short bounded retry."""
    delay = 0.02
    while time.monotonic() < deadline:
        try:
            ControlClient.connect(paths.socket_path).close()
            return True
        except OSError:
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
    return False


def last_error(log_file: Path) -> str:
    """The `error` of the last error line of the daemon log (NDJSON), or its last line."""
    try:
        with log_file.open("rb") as handle:
            handle.seek(max(0, log_file.stat().st_size - 65536))
            lines = handle.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "no log written"
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") == "error":
            return str(record.get("error") or record.get("event"))
    return lines[-1] if lines else "no log written"
