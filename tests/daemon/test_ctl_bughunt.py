"""Defects a demanding script hit in agentroomctl and the control socket, each pinned by a test.

One real daemon (module scope) serves the tests that need one; every agentroomctl run says
``--no-autostart`` there, so a command never quietly starts another daemon.
"""

import json
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from support.ctl import ctl, json_out
from support.env import AGENTROOMCTL, isolated_env
from support.processes import DaemonProcess, home_dir, lock_holder
from support.raw_control import RawClient

MIB = 1 << 20


def run(daemon: DaemonProcess, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return ctl(daemon.home, "--no-autostart", *args, stdin=stdin)


def run_bytes(home: Path, *args: bytes) -> subprocess.CompletedProcess[bytes]:
    argv = [AGENTROOMCTL.encode(), b"--home", bytes(home), b"--no-autostart", *args]
    return subprocess.run(argv, capture_output=True, env=isolated_env(), timeout=30, check=False)


# ------------------------------------------------------------------------------------- the command line


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        ["send", "onlypeer"],
        ["invite", "create", "--ttl", "soon"],
        ["listen", "--count", "0"],
        [],
    ],
)
def test_usage_errors_with_json_print_one_error_document(argv: list[str]) -> None:
    with home_dir() as home:
        result = ctl(home, "--json", *argv)
        assert result.returncode == 2, result.stderr
        error = json_out(result)["error"]
        assert error["type"] == "agentroomctl.Usage" and error["exit_code"] == 2
        assert error["message"]
        assert lock_holder(home) is None  # nothing was started for a usage error


def test_a_message_over_the_line_limit_is_refused_as_too_large_not_as_a_dead_daemon(daemon: DaemonProcess) -> None:
    result = run(daemon, "--json", "send", "somepeer", "-", stdin="a" * (2 * MIB))
    assert result.returncode == 1, result.stderr
    error = json_out(result)["error"]
    assert error["type"] == "agentroom.LimitExceeded"
    assert "too large" in error["message"]
    assert run(daemon, "--json", "whoami").returncode == 0  # the daemon never saw it and is fine


def test_arguments_that_are_not_utf8_are_a_usage_error_not_a_traceback(daemon: DaemonProcess) -> None:
    for argv in ([b"--json", b"send", b"somepeer", b"caf\xe9"], [b"--json", b"send", b"p\xe9er", b"hi"],
                 [b"--json", b"room", b"status", b"r\xe9"]):
        result = run_bytes(daemon.home, *argv)
        assert result.returncode == 2, result.stderr
        assert b"Traceback" not in result.stderr
        error = json.loads(result.stdout)["error"]
        assert error["type"] == "agentroomctl.Usage" and "UTF-8" in error["message"]


def test_a_very_long_listen_timeout_waits_instead_of_crashing(daemon: DaemonProcess) -> None:
    # The bound is `timeout` of the subprocess: listen must still be listening when it ends.
    argv = [AGENTROOMCTL, "--home", str(daemon.home), "--no-autostart", "--json", "listen", "--timeout", "1e20"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=isolated_env()) as listen:
        with pytest.raises(subprocess.TimeoutExpired):
            listen.wait(timeout=2)
        listen.terminate()
        _out, err = listen.communicate(timeout=10)
    assert listen.returncode == 0, err  # SIGTERM ends listen with 0
    assert "Traceback" not in err


@pytest.mark.parametrize("ttl", ["99999999999999999999d", "9" * 400])
def test_an_invite_lifetime_beyond_what_an_invite_can_hold_is_a_usage_error(ttl: str) -> None:
    with home_dir() as home:
        result = ctl(home, "--json", "invite", "create", "--relay", "ws://127.0.0.1:9/ws", "--ttl", ttl)
        assert result.returncode == 2, result.stderr
        assert json_out(result)["error"]["type"] == "agentroomctl.Usage"
        assert "too long" in json_out(result)["error"]["message"]
        assert lock_holder(home) is None


def test_a_home_that_cannot_be_created_is_a_clear_error_not_a_traceback() -> None:
    result = ctl(Path("/proc/self/no-such-dir/home"), "--json", "status")
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    error = json_out(result)["error"]
    assert error["type"] == "agentroomctl.DaemonUnreachable"
    assert "/no-such-dir/home" in error["message"]  # /proc/self is resolved to our pid


# ---------------------------------------------------------------------------------- the control socket


@pytest.mark.parametrize(
    "line",
    [
        b'{"jsonrpc":"2.0","id":"\\udfff","method":"daemon.hello"}',
        # before the fix: an internal error (the room could not be saved), logged as a daemon bug
        b'{"jsonrpc":"2.0","id":1,"method":"room.open","params":{"tunnel":false,"on_message":"echo \\udc80"}}',
    ],
)
def test_a_lone_surrogate_is_a_parse_error_and_the_connection_stays_open(client: RawClient, line: bytes) -> None:
    client.send_line(line)
    reply = client.read()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700 and reply["error"]["data"]["type"] == "jsonrpc.ParseError"
    assert "surrogate" in reply["error"]["message"]
    assert client.call("daemon.hello", request_id=2)["result"]["daemon"] == "agentroomd"


def test_a_surrogate_pair_is_text_and_answered(client: RawClient) -> None:
    reply = client.call("message.send", {"peer": "\U0001f600", "text": "hi"})  # json.dumps escapes it as a pair
    assert reply["error"]["data"]["type"] == "agentroom.UnknownPeer"
    assert "\U0001f600" in reply["error"]["message"]


def test_an_invite_lifetime_past_a_safe_expiry_is_invalid_params_over_the_socket(client: RawClient) -> None:
    # agentroomctl refuses it itself; a script talking to the socket got an internal error before
    reply = client.call("invite.create", {"relay": "ws://127.0.0.1:9/ws", "ttl_ms": 2**53})
    assert reply["error"]["data"]["type"] == "jsonrpc.InvalidParams"
    assert "ttl" in reply["error"]["message"]


@pytest.mark.parametrize(("params", "kind"), [(None, "null"), ([1], "an array"), ("x", "a string"), (3, "a number")])
def test_params_that_are_not_an_object_are_named(client: RawClient, params: object, kind: str) -> None:
    client.send_json({"jsonrpc": "2.0", "id": 1, "method": "daemon.hello", "params": params})
    error = client.read()["error"]
    assert error["data"]["type"] == "jsonrpc.InvalidParams"
    assert error["message"] == f"params must be an object (by name), not {kind}"


def test_deeply_nested_json_is_a_parse_error_and_the_connection_stays_open(client: RawClient) -> None:
    depth = 100_000
    client.send_line(b'{"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"client":'
                     + b"[" * depth + b"]" * depth + b"}}")
    reply = client.read()
    assert reply["id"] is None
    assert reply["error"]["code"] == -32700 and "nested" in reply["error"]["message"]
    assert client.call("daemon.hello", request_id=2)["result"]["daemon"] == "agentroomd"


def test_ctrl_c_before_the_answer_is_not_success() -> None:
    """`invite create` waits for a relay that never speaks; Ctrl-C then must not look like a created invite."""
    with home_dir() as home, socket.create_server(("127.0.0.1", 0)) as silent_relay:
        (home / "agentroom.toml").write_text("[daemon]\nshutdown_grace_s = 1\n")  # teardown need not wait for it
        port = silent_relay.getsockname()[1]
        argv = [AGENTROOMCTL, "--home", str(home), "--json", "invite", "create", "--relay", f"ws://127.0.0.1:{port}/ws"]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=isolated_env()) as create:
            silent_relay.settimeout(20)
            connection, _ = silent_relay.accept()  # the daemon is at the relay: the CLI waits for its answer
            with connection:
                create.send_signal(signal.SIGINT)
                out, err = create.communicate(timeout=10)
    assert create.returncode == 130, err
    assert json.loads(out)["error"]["type"] == "agentroomctl.Interrupted"
    assert "Traceback" not in err
