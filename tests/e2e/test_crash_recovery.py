"""kill -9 in the middle of a conversation: every message arrives exactly once, in order per sender.

Real processes throughout: a relay subprocess with its SQLite file, two daemons with their own homes,
a sender that streams messages over one control connection while the receiving daemon, then the relay,
are killed with SIGKILL and started again.
"""

import threading
from collections.abc import Iterator

import pytest
from support.agent import Agent, pair
from support.ctl import ctl
from support.env import short_dir
from support.processes import RelayProcess

FAST_CLIENT = "[client]\nack_timeout_s = 0.5\nreconnect_initial_s = 0.05\nreconnect_max_s = 0.5\n"
COUNT = 1000


@pytest.fixture
def world() -> Iterator[tuple[RelayProcess, Agent, Agent]]:
    root = short_dir("ar-crash-")
    relay = RelayProcess(root).start()
    alice = Agent(root / "a", FAST_CLIENT)
    bob = Agent(root / "b", FAST_CLIENT)
    try:
        yield relay, alice, bob
    finally:
        alice.stop()
        bob.stop()
        relay.stop()


def received_texts(agent: Agent, count: int) -> list[str]:
    lines = agent.ctl("listen", "--since", "0", "--count", str(count), "--timeout", "120", timeout=150)
    assert isinstance(lines, list) and len(lines) == count
    return [line["text"] for line in lines]


def stream(agent: Agent, peer: str, texts: list[str], at: dict[int, threading.Event],
           reached: dict[int, threading.Event]) -> list[str]:
    """Send ``texts`` in order over one control connection; pause at index i until at[i] is set."""
    statuses = []
    with agent.client() as client:
        for i, text in enumerate(texts):
            if i in reached:
                reached[i].set()
            if i in at:
                assert at[i].wait(60)
            statuses.append(agent.send(peer, text, client=client).status)
    return statuses


def test_receiver_killed_mid_stream_gets_every_message_once_in_order(world: tuple[RelayProcess, Agent, Agent]) -> None:
    relay, alice, bob = world
    pair(alice, bob, relay.url)
    texts = [f"m{i:04d}" for i in range(COUNT)]
    resume, reached = {500: threading.Event()}, {300: threading.Event()}
    results: list[list[str]] = []
    sender = threading.Thread(target=lambda: results.append(stream(bob, alice.pk, texts, resume, reached)))
    sender.start()
    assert reached[300].wait(120)
    alice.kill()  # mid-stream: frames in flight to alice, some journaled and not yet acknowledged
    alice.pid()  # agentroomctl starts her daemon again
    resume[500].set()
    sender.join(180)
    assert not sender.is_alive()
    assert set(results[0]) <= {"delivered", "queued", "pending"}
    assert received_texts(alice, COUNT) == texts


def test_relay_killed_mid_stream_loses_and_duplicates_nothing(world: tuple[RelayProcess, Agent, Agent]) -> None:
    relay, alice, bob = world
    pair(alice, bob, relay.url)
    texts = [f"r{i:04d}" for i in range(COUNT)]
    resume, reached = {600: threading.Event()}, {400: threading.Event()}
    results: list[list[str]] = []
    sender = threading.Thread(target=lambda: results.append(stream(bob, alice.pk, texts, resume, reached)))
    sender.start()
    assert reached[400].wait(120)
    relay.kill()
    relay.start()  # same port, same database: both daemons reconnect by themselves
    resume[600].set()
    sender.join(180)
    assert not sender.is_alive()
    assert received_texts(alice, COUNT) == texts
    # and the conversation goes on both ways afterwards
    with alice.client() as client:
        assert alice.send(bob.pk, "after the crash", client=client).status in ("delivered", "queued")
    assert bob.ctl("listen", "--since", "0", "--count", "1", "--timeout", "30")["text"] == "after the crash"


def test_a_corrupt_client_database_is_a_clear_error_and_is_never_replaced() -> None:
    home = short_dir("ar-corrupt-")
    garbage = b"not a database, " * 400
    (home / "client.db").write_bytes(garbage)
    agent = Agent(home)
    done = ctl(home, "status", timeout=60)
    assert done.returncode == 3
    assert f"cannot open the client database {home / 'client.db'}" in done.stderr
    assert "move it aside" in done.stderr
    assert (home / "client.db").read_bytes() == garbage
    agent.stop()
