"""The control socket of a real daemon, driven with raw bytes: bad clients cost only their own connection."""

from pathlib import Path

import pytest
from support.processes import DaemonProcess
from support.raw_control import RawClient

MIB = 1 << 20


def still_serving(home: Path) -> bool:
    fresh = RawClient(home / "agentroomd.sock")
    try:
        return fresh.call("daemon.hello")["result"]["daemon"] == "agentroomd"
    finally:
        fresh.close()


@pytest.mark.parametrize(
    ("line", "code", "error_type"),
    [
        (b"this is not json", -32700, "jsonrpc.ParseError"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "daemon.hello", ', -32700, "jsonrpc.ParseError"),
        (b'{"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"protocol":NaN}}', -32700, "jsonrpc.ParseError"),
        (b"\xff\xfe\x00garbage", -32700, "jsonrpc.ParseError"),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "daemon.hello"}]', -32600, "jsonrpc.InvalidRequest"),
        (b'"just a string"', -32600, "jsonrpc.InvalidRequest"),
        (b'{"id": 1, "method": "daemon.hello"}', -32600, "jsonrpc.InvalidRequest"),
        (b'{"jsonrpc": "2.0", "id": 1}', -32600, "jsonrpc.InvalidRequest"),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "daemon.hello"}', -32600, "jsonrpc.InvalidRequest"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "daemon.reboot"}', -32601, "jsonrpc.MethodNotFound"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "daemon.hello", "params": [1]}', -32602, "jsonrpc.InvalidParams"),
    ],
)
def test_bad_requests_get_a_json_rpc_error_and_the_connection_stays_usable(
    client: RawClient, line: bytes, code: int, error_type: str
) -> None:
    client.send_line(line)
    reply = client.read()
    assert reply["jsonrpc"] == "2.0"
    assert reply["error"]["code"] == code and reply["error"]["data"]["type"] == error_type
    assert reply["error"]["message"]
    assert client.call("daemon.hello", request_id=2)["result"]["protocol"] == 1


def test_invalid_params_list_every_problem(client: RawClient) -> None:
    reply = client.call("message.send", {"peer": 5, "txt": "hi"})
    error = reply["error"]
    assert error["code"] == -32602
    assert sorted(error["data"]["errors"]) == [
        "peer: expected a string, got int",
        "text: required key missing",
        "unknown key(s) txt",
    ]
    assert "invalid params for message.send" in error["message"]


def test_a_notification_gets_no_reply(client: RawClient) -> None:
    client.send_line(b'{"jsonrpc": "2.0", "method": "daemon.hello"}')
    client.send_line(b'{"jsonrpc": "2.0", "method": "no.such.method"}')
    assert client.call("daemon.status", request_id="after")["id"] == "after"  # the first line back is this reply


def test_an_oversized_line_is_refused_and_only_that_connection_closed(daemon: DaemonProcess, client: RawClient) -> None:
    client.sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"daemon.hello","params":{"client":"' + b"x" * MIB)
    reply = client.read()
    assert reply["error"]["code"] == -32600 and "longer than" in reply["error"]["message"]
    assert client.at_eof()
    assert still_serving(daemon.home)


def test_a_line_just_under_the_limit_is_processed(client: RawClient) -> None:
    padding = "x" * (MIB - 200)
    reply = client.call("daemon.hello", {"client": padding})
    assert reply["result"]["daemon"] == "agentroomd"


def test_clients_that_vanish_mid_request_or_mid_subscription_do_not_hurt_the_daemon(daemon: DaemonProcess) -> None:
    for payload in (b'{"jsonrpc": "2.0", "id": 1, "meth', b'{"jsonrpc":"2.0","id":1,"method":"message.subscribe"}\n'):
        vanishing = RawClient(daemon.home / "agentroomd.sock")
        vanishing.sock.sendall(payload)
        vanishing.close()
    assert still_serving(daemon.home)
