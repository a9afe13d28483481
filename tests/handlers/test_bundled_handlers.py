"""The handlers in contrib/handlers, run the way the daemon runs them, against fake CLIs and a fake API."""

import json
import os
import shlex
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import pytest

from agentroomd.handlers import HandlerLimits, HandlerOutcome, HandlerResult, run_handler

HANDLERS = Path(__file__).resolve().parents[2] / "contrib" / "handlers"
LIMITS = HandlerLimits(timeout_s=20, kill_grace_s=0.5)

FAKE_CLI = r'''#!{python}
"""Fake agent CLI (claude, codex or opencode by its name): records its call, answers "<name> reply <n>"."""
import json, os, sys
from pathlib import Path

name = Path(sys.argv[0]).name
log = Path(os.environ["FAKE_LOG"])
n = len(list(log.glob(name + "-*.json"))) + 1
stdin = sys.stdin.read()
(log / f"{{name}}-{{n}}.json").write_text(json.dumps({{"argv": sys.argv[1:], "stdin": stdin}}))
if os.environ.get("FAKE_FAIL"):
    print(f"{{name}}: rate limited", file=sys.stderr)
    sys.exit(1)
reply = f"{{name}} reply {{n}}"
if name == "codex":
    print("codex: thinking... (progress output, not the answer)")
    Path(sys.argv[sys.argv.index("-o") + 1]).write_text(reply + "\n")
else:
    print(reply)
'''


@attrs.define
class World:
    """A PATH with the fake CLIs, a state directory, and the environment the daemon would pass."""

    root: Path
    env: dict[str, str]

    def calls(self, name: str) -> list[dict[str, object]]:
        log = self.root / "log"
        count = len(list(log.glob(f"{name}-*")))
        return [json.loads((log / f"{name}-{n}.json").read_text()) for n in range(1, count + 1)]

    async def ask(self, command: str, peer: str, text: str, **env: str) -> HandlerResult:
        extra = {"AGENTROOM_FROM": peer, "AGENTROOM_ROOM": "r1", "AGENTROOM_MSG_ID": "m", "AGENTROOM_TURN": "1"}
        return await run_handler(command, text, extra, LIMITS, base_env={**self.env, **env})


@pytest.fixture
def world(tmp_path: Path) -> World:
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (tmp_path / "log").mkdir()
    for name in ("claude", "codex", "opencode"):
        (fakes / name).write_text(FAKE_CLI.format(python=sys.executable))
        (fakes / name).chmod(0o755)
    env = {
        "PATH": f"{fakes}:/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "FAKE_LOG": str(tmp_path / "log"),
        "AGENTROOM_HANDLER_STATE": str(tmp_path / "state"),
    }
    return World(tmp_path, env)


def script(name: str) -> str:
    return shlex.quote(str(HANDLERS / name))


def prompt_of(call: dict[str, object]) -> str:
    """What the CLI was asked: stdin for claude and codex, the last argument for opencode."""
    argv = call["argv"]
    assert isinstance(argv, list)
    return argv[-1] if argv[0] == "run" else str(call["stdin"])


async def test_echo_handler(world: World) -> None:
    result = await world.ask(script("echo.sh"), "alice", "hello there")
    assert result.reply == "echo: hello there"


@pytest.mark.parametrize("name", ["claude", "codex", "opencode"])
async def test_cli_handler_keeps_history_per_peer(world: World, name: str) -> None:
    handler = script(f"{name}.sh")
    first = await world.ask(handler, "alice", "hello from alice")
    assert (first.outcome, first.reply) == (HandlerOutcome.REPLY, f"{name} reply 1")
    second = await world.ask(handler, "alice", "second from alice")
    assert second.reply == f"{name} reply 2"
    other = await world.ask(handler, "bob", "hi from bob")
    assert other.reply == f"{name} reply 3"

    prompts = [prompt_of(call) for call in world.calls(name)]
    assert "hello from alice" in prompts[0] and "conversation so far" not in prompts[0]
    # alice's second prompt carries her first exchange, then the new message last
    assert prompts[1].index("hello from alice") < prompts[1].index(f"{name} reply 1") < prompts[1].index(
        "second from alice"
    )
    assert "alice" not in prompts[2] and "hi from bob" in prompts[2]  # bob's conversation is his own
    transcript = world.root / "state" / name / "alice.txt"
    assert transcript.read_text() == (
        f"[peer]\nhello from alice\n[you]\n{name} reply 1\n\n[peer]\nsecond from alice\n[you]\n{name} reply 2\n\n"
    )
    assert transcript.stat().st_mode & 0o777 == 0o600


async def test_cli_arguments(world: World) -> None:
    await world.ask(script("claude.sh"), "alice", "hi")
    await world.ask(script("claude.sh"), "alice", "hi", CLAUDE_HANDLER_MODEL="haiku")
    assert [call["argv"] for call in world.calls("claude")] == [["-p"], ["-p", "--model", "haiku"]]
    result = await world.ask(script("codex.sh"), "alice", "hi", CODEX_HANDLER_MODEL="gpt-5-codex")
    assert result.reply == "codex reply 1"  # the final message file, not codex's progress output
    argv = world.calls("codex")[0]["argv"]
    assert isinstance(argv, list)
    assert argv[:4] == ["exec", "--skip-git-repo-check", "-s", "read-only"]
    assert argv[4:6] == ["--model", "gpt-5-codex"] and argv[6] == "-o" and argv[-1] == "-"
    assert not os.path.exists(argv[7])  # the temporary answer file is cleaned up
    await world.ask(script("opencode.sh"), "alice", "hi", OPENCODE_MODEL="anthropic/claude", OPENCODE_SERVER="http://x")
    argv = world.calls("opencode")[0]["argv"]
    assert isinstance(argv, list)
    assert argv[:5] == ["run", "--model", "anthropic/claude", "--attach", "http://x"]


async def test_peer_text_never_reaches_a_shell(world: World) -> None:
    text = "$(touch pwned) `touch pwned2` ; touch pwned3"
    for name in ("claude", "codex", "opencode"):
        result = await world.ask(script(f"{name}.sh"), "alice", text)
        assert result.exit_code == 0
        assert text in prompt_of(world.calls(name)[0])
    assert not list(world.root.glob("**/pwned*"))


@pytest.mark.parametrize(
    ("name", "install"), [("claude", "npm install -g"), ("codex", "npm install -g"), ("opencode", "opencode.ai")]
)
async def test_missing_cli_is_a_clear_failure(world: World, name: str, install: str) -> None:
    result = await world.ask(script(f"{name}.sh"), "alice", "hi", PATH="/usr/bin:/bin")
    assert result.outcome is HandlerOutcome.FAILED
    assert result.exit_code == 127
    assert f"the '{name}' CLI is not on PATH" in result.stderr
    assert install in result.stderr


async def test_a_failing_cli_leaves_the_history_untouched(world: World) -> None:
    failed = await world.ask(script("claude.sh"), "alice", "lost message", FAKE_FAIL="1")
    assert (failed.outcome, failed.exit_code) == (HandlerOutcome.FAILED, 1)
    assert "rate limited" in failed.stderr and "claude -p failed" in failed.stderr
    assert not (world.root / "state" / "claude" / "alice.txt").exists()


async def test_history_defaults_to_the_xdg_state_directory(world: World) -> None:
    env = {k: v for k, v in world.env.items() if k != "AGENTROOM_HANDLER_STATE"}
    world.env = {**env, "XDG_STATE_HOME": str(world.root / "xdg")}
    await world.ask(script("claude.sh"), "peer/../x", "hi")
    assert (world.root / "xdg" / "agentroom" / "handlers" / "claude" / "peer____x.txt").exists()


# ------------------------------------------------------------------------------ OpenAI-compatible API


@attrs.define
class FakeAPI:
    url: str
    requests: list[dict[str, object]] = attrs.Factory(list)
    fail_with: tuple[int, dict[str, object]] | None = None


@pytest.fixture
def api() -> Iterator[FakeAPI]:
    """A chat completions endpoint on loopback that answers "assistant reply <n>"."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            message = {"role": "assistant", "content": f" assistant reply {len(fake.requests)}\n"}
            status, answer = fake.fail_with or (200, {"choices": [{"message": message}]})
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake = FakeAPI(f"http://127.0.0.1:{server.server_address[1]}/v1")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


OPENAI = f"{shlex.quote(sys.executable)} {script('openai_chat.py')}"


async def test_openai_handler_keeps_history_per_peer(world: World, api: FakeAPI) -> None:
    env = {"OPENAI_BASE_URL": api.url, "OPENAI_API_KEY": "sk-test", "AGENTROOM_MODEL": "deepseek-chat"}
    assert (await world.ask(OPENAI, "alice", "hello from alice", **env)).reply == "assistant reply 1"
    assert (await world.ask(OPENAI, "alice", "second from alice", **env)).reply == "assistant reply 2"
    assert (await world.ask(OPENAI, "bob", "hi from bob", **env)).reply == "assistant reply 3"
    assert [r["path"] for r in api.requests] == ["/v1/chat/completions"] * 3
    assert {r["auth"] for r in api.requests} == {"Bearer sk-test"}
    bodies = [r["body"] for r in api.requests]
    assert all(isinstance(b, dict) and b["model"] == "deepseek-chat" for b in bodies)
    conversation = [[(m["role"], m["content"]) for m in b["messages"]] for b in bodies]  # type: ignore[index]
    assert [turn[1:] for turn in conversation] == [
        [("user", "hello from alice")],
        [("user", "hello from alice"), ("assistant", "assistant reply 1"), ("user", "second from alice")],
        [("user", "hi from bob")],
    ]
    assert all(turn[0][0] == "system" for turn in conversation)


async def test_openai_handler_on_a_local_server_needs_no_key(world: World, api: FakeAPI) -> None:
    result = await world.ask(OPENAI, "alice", "hi", OPENAI_BASE_URL=api.url, OPENAI_MODEL="llama3.2")
    assert result.reply == "assistant reply 1"
    assert api.requests[0]["auth"] is None
    assert api.requests[0]["body"]["model"] == "llama3.2"  # type: ignore[index]


async def test_openai_handler_without_a_key_says_how_to_fix_it(world: World) -> None:
    result = await world.ask(OPENAI, "alice", "hi", OPENAI_BASE_URL="https://api.deepseek.com")
    assert (result.outcome, result.exit_code) == (HandlerOutcome.FAILED, 2)
    assert "OPENAI_API_KEY is not set" in result.stderr


async def test_openai_api_errors_are_reported_and_not_remembered(world: World, api: FakeAPI) -> None:
    env = {"OPENAI_BASE_URL": api.url, "OPENAI_API_KEY": "sk-wrong"}
    api.fail_with = (401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}})
    result = await world.ask(OPENAI, "alice", "lost message", **env)
    assert (result.outcome, result.exit_code) == (HandlerOutcome.FAILED, 1)
    assert result.stderr.strip() == (
        f"openai_chat.py: HTTP 401 from {api.url}/chat/completions: Incorrect API key provided"
    )
    api.fail_with = None
    await world.ask(OPENAI, "alice", "next", **env)
    assert [m["content"] for m in api.requests[1]["body"]["messages"][1:]] == ["next"]  # type: ignore[index]


async def test_openai_handler_survives_a_corrupt_history(world: World, api: FakeAPI) -> None:
    history = world.root / "state" / "openai" / "alice.json"
    history.parent.mkdir(parents=True)
    history.write_text("{not json")
    result = await world.ask(OPENAI, "alice", "hi", OPENAI_BASE_URL=api.url, OPENAI_API_KEY="k")
    assert result.reply == "assistant reply 1"
    assert "unreadable history" in result.stderr
    assert history.with_suffix(".corrupt").read_text() == "{not json"
    assert json.loads(history.read_text())["messages"][-1] == {"role": "assistant", "content": "assistant reply 1"}


async def test_openai_handler_bad_settings_are_clear(world: World) -> None:
    result = await world.ask(OPENAI, "alice", "hi", OPENAI_API_KEY="k", AGENTROOM_HISTORY_MESSAGES="lots")
    assert (result.exit_code, result.stderr.strip()) == (
        2,
        "openai_chat.py: AGENTROOM_HISTORY_MESSAGES='lots' is not a number",
    )
