"""The control server in-process (trio): subscriptions with `since`, lag, hang-ups, drain, dispatch, peer checks."""

import io
import json
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from agentroomd.context import Shutdown
from agentroomd.control import api
from agentroomd.control.connection import Gauge
from agentroomd.control.framing import LineBuffer, LineTooLongError, encode
from agentroomd.control.inbox import InboundMessage, Inbox, MemoryJournal
from agentroomd.control.rpc import MethodRegistry
from agentroomd.control.server import ControlServer, PeerRejectedError, check_peer_uid, peer_credentials
from agentroomd.control.subscriptions import register_subscription_methods
from agentroomd.daemon import watch_signals
from agentroomd.log import Logger


@attrs.define
class Harness:
    server: ControlServer
    inbox: Inbox
    methods: MethodRegistry
    log_stream: io.StringIO
    clients: list["Client"] = attrs.Factory(list)

    async def publish(self, count: int, start: int = 1) -> None:
        for n in range(start, start + count):
            await self.inbox.publish(InboundMessage(from_="peerpk", text=f"m{n}", msg_id=f"id{n}", ts=1000 + n))


class Client:
    """A control client over a real Unix socket, reading whole lines."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = LineBuffer()
        self.ids = 0

    async def send(self, message: dict[str, Any]) -> None:
        await self.stream.send_all(encode(message))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.ids += 1
        await self.send({"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params})
        while True:
            message = await self.read()
            if message.get("id") == self.ids:
                return message

    async def read(self) -> dict[str, Any]:
        while (line := self.buffer.next_line()) is None:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.buffer.feed(data)
        decoded: dict[str, Any] = json.loads(line)
        return decoded

    async def messages(self, count: int) -> list[dict[str, Any]]:
        return [await self.read() for _ in range(count)]


def texts(notifications: list[dict[str, Any]]) -> list[str]:
    assert all(n["method"] == "message.received" for n in notifications), notifications
    return [n["params"]["message"]["text"] for n in notifications]


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ar-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


StartHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start_harness(nursery: trio.Nursery, socket_dir: Path) -> AsyncIterator[StartHarness]:
    """A control server with subscriptions on a real socket; its test clients are closed afterwards."""
    started: list[Harness] = []

    async def start(*, keep: int = 100, buffer: int = 16, max_clients: int = 8) -> Harness:
        stream = io.StringIO()
        log = Logger("test", stream=stream)
        methods = MethodRegistry(log)
        inbox = Inbox(MemoryJournal(keep), buffer)
        pumps = Gauge()
        server = ControlServer(socket_dir / "c.sock", methods, inbox, log, max_clients=max_clients, pumps=pumps)
        register_subscription_methods(methods, inbox, pumps)
        await nursery.start(server.run)
        started.append(Harness(server, inbox, methods, stream))
        return started[-1]

    yield start
    for harness in started:
        for client in harness.clients:
            await client.stream.aclose()


async def connect(harness: Harness) -> Client:
    client = Client(await trio.open_unix_socket(str(harness.server.path)))
    harness.clients.append(client)
    return client


async def test_since_replays_the_backlog_then_live_messages_each_once_in_order(start_harness: StartHarness) -> None:
    harness = await start_harness()
    await harness.publish(3)
    client = await connect(harness)
    reply = await client.call("message.subscribe", since=1)
    assert reply["result"] == {"subscription": "s1", "cursor": 3, "oldest": 1}
    assert texts(await client.messages(2)) == ["m2", "m3"]
    await harness.publish(2, start=4)
    received = await client.messages(2)
    assert texts(received) == ["m4", "m5"]
    assert received[0]["params"] == {
        "subscription": "s1",
        "message": {"cursor": 4, "from": "peerpk", "text": "m4", "msg_id": "id4", "ts": 1004},
    }
    fresh = await connect(harness)
    assert (await fresh.call("message.subscribe"))["result"]["cursor"] == 5  # no since: only new messages
    await harness.publish(1, start=6)
    assert texts(await fresh.messages(1)) == ["m6"]
    assert texts(await client.messages(1)) == ["m6"]


async def test_a_since_beyond_the_journal_means_now(start_harness: StartHarness) -> None:
    harness = await start_harness()
    await harness.publish(2)
    client = await connect(harness)
    assert (await client.call("message.subscribe", since=500))["result"]["cursor"] == 2
    await harness.publish(1, start=3)
    assert texts(await client.messages(1)) == ["m3"]  # not swallowed as "already seen"


async def test_a_lagging_subscriber_is_closed_with_resume_from_and_resumes_without_gap(
    start_harness: StartHarness,
) -> None:
    harness = await start_harness(buffer=2)
    client = await connect(harness)
    subscription = (await client.call("message.subscribe", since=0))["result"]["subscription"]
    # Six messages reach the subscriber before its pump can run: the buffer of 2 overflows.
    records = [
        await harness.inbox.journal.append(InboundMessage(from_="p", text=f"m{n}", msg_id=f"i{n}", ts=n))
        for n in range(1, 7)
    ]
    for record in records:
        harness.inbox.announce(record)
    delivered = []
    while (note := await client.read())["method"] == "message.received":
        delivered.append(note)
    got = len(delivered)
    assert texts(delivered) == [f"m{n}" for n in range(1, got + 1)] and got < 6  # what fitted, in order
    assert note["method"] == "message.closed" and note["params"]["subscription"] == subscription
    assert note["params"]["error"]["data"] == {"type": "agentroom.Lagged", "resume_from": got}
    reply = await client.call("message.subscribe", since=got)
    assert reply["result"]["subscription"] != subscription
    assert texts(await client.messages(6 - got)) == [f"m{n}" for n in range(got + 1, 7)]


async def test_messages_dropped_from_the_journal_show_as_a_later_oldest(start_harness: StartHarness) -> None:
    harness = await start_harness(keep=3)
    await harness.publish(5)
    client = await connect(harness)
    reply = await client.call("message.subscribe", since=0)
    assert reply["result"] == {"subscription": "s1", "cursor": 5, "oldest": 3}
    assert texts(await client.messages(3)) == ["m3", "m4", "m5"]


async def test_unsubscribe_stops_the_stream_and_unknown_ids_are_not_found(start_harness: StartHarness) -> None:
    harness = await start_harness()
    client = await connect(harness)
    subscription = (await client.call("message.subscribe"))["result"]["subscription"]
    assert (await client.call("message.unsubscribe", subscription=subscription))["result"] == {}
    missing = await client.call("message.unsubscribe", subscription=subscription)
    assert missing["error"]["data"]["type"] == "agentroom.NotFound"
    await harness.publish(1)
    assert (await client.call("daemon.nothing"))["error"]["code"] == -32601  # next line is a reply, not m1
    assert harness.inbox.subscriber_count == 0


async def test_a_client_hanging_up_mid_stream_ends_only_its_own_subscription(start_harness: StartHarness) -> None:
    harness = await start_harness()
    leaving, staying = await connect(harness), await connect(harness)
    await leaving.call("message.subscribe")
    await staying.call("message.subscribe")
    await harness.publish(1)
    await leaving.stream.send_all(b'{"jsonrpc": "2.0", "id": 9, "meth')  # half a request, then gone
    await leaving.stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert harness.inbox.subscriber_count == 1
    assert harness.server.clients == 1
    await harness.publish(1, start=2)
    assert texts(await staying.messages(2)) == ["m1", "m2"]
    assert "control_hangup_mid_line" in harness.log_stream.getvalue()


async def test_drain_closes_subscriptions_refuses_new_work_and_finishes(start_harness: StartHarness) -> None:
    harness = await start_harness()
    client = await connect(harness)
    await client.call("message.subscribe")
    with trio.fail_after(5):
        await harness.server.drain()
    closed = await client.read()
    assert closed["params"]["error"]["data"]["type"] == "agentroom.ShuttingDown"
    refused = await client.call("message.subscribe")
    assert refused["error"]["code"] == -32000 and refused["error"]["data"]["type"] == "agentroom.ShuttingDown"


async def test_too_many_clients_are_refused_with_a_clear_error(start_harness: StartHarness) -> None:
    harness = await start_harness(max_clients=1)
    first = await connect(harness)
    await first.call("message.subscribe")
    second = await connect(harness)
    refusal = await second.read()
    assert refusal["error"]["data"]["type"] == "agentroom.LimitExceeded"
    with pytest.raises(EOFError):
        await second.read()


async def test_a_failing_handler_is_an_internal_error_without_details(start_harness: StartHarness) -> None:
    harness = await start_harness()

    async def broken(params: api.Empty, caller: object) -> api.Empty:
        raise KeyError("secret-detail")

    harness.methods.register_stub(api.PEER_LIST, "later")
    harness.methods.register(api.PEER_LIST, broken)  # replaces the stub
    with pytest.raises(ValueError, match="already registered"):
        harness.methods.register(api.PEER_LIST, broken)
    client = await connect(harness)
    reply = await client.call("peer.list")
    assert reply["error"]["code"] == -32603 and "secret-detail" not in json.dumps(reply)
    assert "secret-detail" in harness.log_stream.getvalue()  # the operator sees it in the log
    assert (await client.call("message.subscribe"))["result"]["subscription"] == "s1"  # connection still fine


async def test_first_signal_asks_for_a_graceful_stop_and_the_second_cancels_everything() -> None:
    shutdown = Shutdown()
    stream = io.StringIO()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(watch_signals, shutdown, nursery.cancel_scope, Logger("test", stream=stream))
            os.kill(os.getpid(), signal.SIGTERM)
            await shutdown.requested.wait()
            assert shutdown.reason == "SIGTERM"
            os.kill(os.getpid(), signal.SIGINT)
            await trio.sleep_forever()  # only the second signal's cancel ends this
    actions = [json.loads(line)["action"] for line in stream.getvalue().splitlines()]
    assert actions == ["graceful stop", "immediate stop"]


def test_peer_check_refuses_another_uid() -> None:
    check_peer_uid(os.getuid(), os.getuid())
    with pytest.raises(PeerRejectedError, match="uid 4242 refused"):
        check_peer_uid(4242, 1000)
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert peer_credentials(left) == (os.getpid(), os.getuid(), os.getgid())


def test_line_buffer_frames_pieces_and_bounds_lines() -> None:
    buffer = LineBuffer(max_line_bytes=10)
    buffer.feed(b'{"a"')
    assert buffer.next_line() is None
    buffer.feed(b":1}\r\n{}\n")
    assert buffer.next_line() == b'{"a":1}'
    assert buffer.next_line() == b"{}"
    assert buffer.next_line() is None and buffer.pending == 0
    buffer.feed(b"x" * 10 + b"\n")
    assert buffer.next_line() == b"x" * 10  # exactly the limit is fine
    buffer.feed(b"y" * 11)
    with pytest.raises(LineTooLongError):
        buffer.next_line()
    late = LineBuffer(max_line_bytes=10)
    late.feed(b"z" * 11 + b"\n")  # the newline arrived with the overflow: still too long
    with pytest.raises(LineTooLongError):
        late.next_line()
