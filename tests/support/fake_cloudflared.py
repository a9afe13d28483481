"""The one fake of an outside program: a `cloudflared` that logs like the real one, dies and moves on command.

The tunnel supervisor (and a tunnelled room) must cope with the real binary's output, so the fake
prints the real log lines (zerolog console format on stderr, the quick-tunnel URL in its box). It is a
real process: the test steers it through files in its directory, which it polls:

* ``mode`` (read at start): ``ok``, ``fail`` (the quick-tunnel request fails, exit 1) or ``silent`` (no URL);
* ``control`` (written atomically by `FakeCloudflared.control`): ``die`` (exit 1) or ``url NAME`` (a new URL);
* it records each run in ``calls.log`` (argv and NOTIFY_SOCKET) and its pid in ``pid-N`` (N counts runs from 1).

It does not notice its parent dying (a daemon killed with -9 leaves it running, as the real one would
until it next logs): `FakeCloudflared.running` lists the runs still alive, and `assert_none_left` is
the teardown check that fails a test which leaves one behind (and ends the leftovers).
"""

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import attrs

from support.waiting import wait_pid_exit

# A daemon stopping gracefully reaps its tunnel before it exits; this bound is for a busy machine.
LEFTOVER_TIMEOUT_S = 10.0

FAKE_CLOUDFLARED = r'''#!{python}
"""Fake cloudflared: logs like the real one (zerolog console format on stderr), obeys ./control."""
import json, os, sys, time
from pathlib import Path

here = Path(__file__).resolve().parent
with (here / "calls.log").open("a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "notify": os.environ.get("NOTIFY_SOCKET")}}) + "\n")
run = len((here / "calls.log").read_text().splitlines())
(here / f"pid-{{run}}").write_text(str(os.getpid()))
mode = (here / "mode").read_text().strip() if (here / "mode").exists() else "ok"

def log(level, msg):
    sys.stderr.write(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + f" {{level}} {{msg}}\n")
    sys.stderr.flush()

def box(url):
    lines = ["Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):", url]
    width = max(map(len, lines))
    log("INF", "+" + "-" * (width + 4) + "+")
    for line in lines:
        log("INF", "|  " + line + " " * (width - len(line)) + "  |")
    log("INF", "+" + "-" * (width + 4) + "+")

log("INF", "Thank you for trying Cloudflare Tunnel. Doing so, without a Cloudflare account, is a quick way to "
    "experiment and try it out. However, be aware that these account-less Tunnels have no uptime guarantee, are "
    "subject to the Cloudflare Online Services Terms of Use (https://www.cloudflare.com/website-terms/), and "
    "Cloudflare reserves the right to investigate your use of Tunnels for violations of such terms. If you intend "
    "to use Tunnels in production you should use a pre-created named tunnel by following: "
    "https://developers.cloudflare.com/cloudflare-one/connections/connect-apps")
log("INF", "Requesting new quick Tunnel on trycloudflare.com...")
if mode == "fail":
    log("ERR", 'failed to request quick Tunnel: Post "https://api.trycloudflare.com/tunnel": dial tcp: '
        'lookup api.trycloudflare.com on 127.0.0.53:53: server misbehaving')
    sys.exit(1)
if mode != "silent":
    box(f"https://fake-run-{{run}}.trycloudflare.com")
    log("INF", "Version 2026.5.2 (Checksum 5286698547f03df745adb2355f04c12dde52ef425491e81f433642d695521886)")
    log("INF", "Registered tunnel connection connIndex=0 connection=0e5b7c2a-4f7d-4b43-9d0e-3a1f1c1b2d3e "
        "event=0 ip=198.41.200.13 location=ams01 protocol=quic")
control = here / "control"
while True:
    if control.exists():
        command = control.read_text().strip()
        control.unlink()
        if command == "die":
            log("ERR", "Serve tunnel error error=\"connection with edge closed\" connIndex=0")
            sys.exit(1)
        if command.startswith("url "):
            box("https://" + command[4:] + ".trycloudflare.com")
    time.sleep(0.02)
'''


@attrs.define
class FakeCloudflared:
    """The installed fake: its directory (where it reads commands and writes records) and the executable."""

    directory: Path
    binary: Path

    def control(self, command: str) -> None:
        """Tell the running fake ``die`` or ``url NAME`` (renamed into place, so it never reads half a command)."""
        tmp = self.directory / "control.tmp"
        tmp.write_text(command)
        tmp.rename(self.directory / "control")

    def set_mode(self, mode: str) -> None:
        """How the next runs behave: ``ok``, ``fail`` or ``silent``."""
        (self.directory / "mode").write_text(mode)

    def calls(self) -> list[dict[str, object]]:
        """Each run so far: {"argv": [...], "notify": NOTIFY_SOCKET or None}."""
        return [json.loads(line) for line in (self.directory / "calls.log").read_text().splitlines()]

    def pid(self, run: int) -> int:
        """The pid of run number ``run`` (from 1)."""
        return int((self.directory / f"pid-{run}").read_text())

    def is_running(self, pid: int) -> bool:
        """Whether ``pid`` is alive and still this fake (not a zombie, not a process that got the pid since)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
        except (OSError, IndexError):
            return False
        return state != b"Z" and os.fsencode(self.binary) in cmdline

    def running(self) -> list[int]:
        """The pids of every run that is still running."""
        pids = [int(path.read_text()) for path in sorted(self.directory.glob("pid-*"))]
        return [pid for pid in pids if self.is_running(pid)]

    def assert_none_left(self, timeout: float = LEFTOVER_TIMEOUT_S) -> None:
        """Teardown: every run has exited (waiting up to ``timeout`` for ones on their way out), else fail,
        after killing the leftovers so one leak does not outlive the test that made it."""
        leftovers = [pid for pid in self.running() if not wait_pid_exit(pid, timeout) and self.is_running(pid)]
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        assert not leftovers, f"fake cloudflared runs left running after the test (pids {leftovers}), now killed"


def install_fake_cloudflared(directory: Path) -> FakeCloudflared:
    """Write the fake as ``directory/cloudflared``, executable, run by this interpreter."""
    binary = directory / "cloudflared"
    binary.write_text(FAKE_CLOUDFLARED.format(python=sys.executable))
    binary.chmod(0o755)
    return FakeCloudflared(directory, binary)
