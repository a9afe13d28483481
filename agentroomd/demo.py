"""`make demo`: a real two-agent conversation on this machine, end to end, with no flags.

It runs exactly what a user would run: a relay (`agentroomd relay` on a free loopback port), two
daemons with separate homes (started on demand by `agentroomctl`), an invite created by one and
accepted by the other, then a short scripted conversation in both directions (each change of
speaker is a DH-ratchet turn). It prints the transcript, then what the relay saw: routing and
ciphertext sizes only, never a word of the conversation. Everything lives in a temporary directory
that is removed at the end, daemons and relay included.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentroomd.config import ENV_PREFIX
from agentroomd.systemd import scrubbed_environment

SCRIPT = [
    ("alice", "Hi Bob, this is Alice's agent. Can you review the retry logic in fetch.py?"),
    ("bob", "Sure. The backoff never resets after a success, so the 10th call waits 60 s."),
    ("bob", "Also: the jitter is added after the cap, so it can exceed the cap."),
    ("alice", "Good catch. I'll reset the attempt counter on success and apply jitter before the cap."),
    ("bob", "Then it looks right to me. Ship it. 🚀"),
    ("alice", "Done, merged. Thanks!"),
]


class DemoError(Exception):
    pass


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def demo_environment() -> dict[str, str]:
    """Ours without the user's agentroom settings: an AGENTROOM_SOCKET would send both agents to one daemon.

    Nor a service manager's variables (sd_notify, socket activation): the demo's daemons are nobody's service.
    """
    return scrubbed_environment(base={k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)})


def ctl(home: Path, *args: str) -> dict[str, Any]:
    """Run `agentroomctl --home HOME --json ARGS` and return its JSON answer."""
    done = subprocess.run(
        [_bin("agentroomctl"), "--home", str(home), "--json", *args],
        capture_output=True, text=True, timeout=60, check=False, env=demo_environment(),
    )
    if done.returncode != 0:
        raise DemoError(f"agentroomctl {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}")
    answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return answer


def start_relay(workdir: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str, Path]:
    log_path = workdir / "relay.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        [_bin("agentroomd"), "relay", "--port", "0", "--db", str(workdir / "relay.db"), "--home", str(workdir)],
        stdout=subprocess.PIPE, stderr=log, text=True, env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise DemoError(f"the relay did not start; see {log_path}:\n{log_path.read_text()[-2000:]}")
    ready = json.loads(line)
    return proc, ready["url"], log_path


def relay_view(log_path: Path, names: dict[str, str]) -> list[str]:
    """What the relay logged about routed frames: types, who to whom, ciphertext sizes."""
    rows = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") != "frame.routed":
            continue
        src = names.get(record.get("from", ""), record.get("from", "?"))
        dst = names.get(record.get("to", ""), record.get("to", "?"))
        ratchet, size = record.get("ratchet_pk"), record.get("ciphertext_bytes", "?")
        shown = f"  ratchet key {ratchet:<8}" if ratchet else ""  # v2 only: v3 seals it inside the frame
        rows.append(f"  {record.get('type', '?'):<12} {src:>5} -> {dst:<5} {size:>5} bytes{shown}"
                    f"  ({record.get('status', '?')})")
    return rows


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="ar-demo-", dir="/tmp"))
    env = dict(demo_environment(), LOG_LEVEL="debug", RATE_LIMIT_DISABLED="1")
    relay: subprocess.Popen[str] | None = None
    homes = {"alice": workdir / "alice", "bob": workdir / "bob"}
    started = time.monotonic()
    try:
        relay, url, relay_log = start_relay(workdir, env)
        print(f"relay        {url}  (database {workdir / 'relay.db'})")
        pks = {name: ctl(home, "whoami")["pk"] for name, home in homes.items()}
        for name, pk in pks.items():
            print(f"{name:<12} {pk}  (daemon home {homes[name]})")
        invite = ctl(homes["alice"], "invite", "create", "--relay", url, "--ttl", "10m")
        print(f"\nalice invites (protocol v{invite['protocol']}): {invite['url'][:60]}...")
        accepted = ctl(homes["bob"], "invite", "accept", invite["url"])
        print(f"bob accepts:   session with {accepted['peer'][:12]}... on {accepted['relay']}\n")

        cursors = {"alice": 0, "bob": 0}
        print("transcript")
        for speaker, text in SCRIPT:
            listener = "bob" if speaker == "alice" else "alice"
            sent = ctl(homes[speaker], "send", pks[listener], text)
            got = ctl(homes[listener], "listen", "--since", str(cursors[listener]), "--count", "1", "--timeout", "15")
            cursors[listener] = got["cursor"]
            if got["text"] != text or got["from"] != pks[speaker]:
                raise DemoError(f"{listener} received something else than {speaker} sent")
            print(f"  {speaker:>5} -> {listener:<5} [{sent['status']}] {got['text']}")

        names = {pk[:8]: name for name, pk in pks.items()}
        print("\nwhat the relay saw (routing and sizes only; it holds no key)")
        for row in relay_view(relay_log, names) or ["  (no routing lines in the relay log)"]:
            print(row)
        stored = b"".join(path.read_bytes() for path in workdir.glob("relay.db*"))  # with the WAL file
        leaked = [text for _, text in SCRIPT if text.encode() in stored]
        print(f"\nrelay database files: {len(stored)} bytes; plaintext found in them: "
              f"{len(leaked)} of {len(SCRIPT)} messages")
        print(f"done in {time.monotonic() - started:.1f} s")
        return 0 if not leaked else 1
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        for home in homes.values():
            subprocess.run([_bin("agentroomctl"), "--home", str(home), "--no-autostart", "stop"],
                           capture_output=True, timeout=30, check=False, env=demo_environment())
        if relay is not None:
            relay.terminate()
            try:
                relay.wait(timeout=10)
            except subprocess.TimeoutExpired:
                relay.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
