"""
A client whose session is in a `SqliteSessionStore`, SIGKILLed at random
points and started again on the same file, against a real server process
on 127.0.0.1: the server's application processes every message exactly
once and in order, and the last process sees every Deferred it holds fire.
And a stored client whose server is killed and started again: its session
is reset, never silently.

``ALIVE_STORE_KILL_MESSAGES`` and ``ALIVE_STORE_KILL_RUNS`` change the
number of messages (10,000) and of killed processes (20); ``ALIVE_CHAOS_SEED``
replays the kill points. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import cast

import pytest
from support import (
    LOOPBACK,
    Processes,
    chaosSeed,
    elapse,
    ensureDeferred,
    getReactor,
    killGroup,
    readReady,
    waitFor,
)
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from twisted_alive import (
    AliveClientFactory,
    AliveServerFactory,
    DeliveryFailed,
    HeartbeatProtocol,
    Receipt,
    SqliteSessionStore,
)

MESSAGES = int(os.environ.get("ALIVE_STORE_KILL_MESSAGES", "10000"))
RUNS = int(os.environ.get("ALIVE_STORE_KILL_RUNS", "20"))
RATE = 1000
"""Messages a client sends a second at most: a kill after a random 0 to
250 ms meets it in the middle, with messages in flight."""


def runKilled(
    tmp_path: Path, processes: Processes, messages: int, runs: int, seed: int
) -> tuple[list[int], list[str], float]:
    """
    Start a session server, then ``runs`` client processes on one store
    file, each SIGKILLed at a random point after it loaded its session, and
    a last one that runs to the end.

    :returns: the numbers the server's application processed, in order;
        the ``RECOVERED`` lines of the clients and the last one's last
        line; the seconds it took.
    """
    rng = random.Random(seed)
    received = tmp_path / "received"
    server = processes.startPeer("session_server.py", LOOPBACK, 0, 1.0, "--received", received)
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    path = tmp_path / "client.db"
    started = time.monotonic()
    lines: list[str] = []
    submitted = 0
    for _ in range(runs):
        client = processes.startPeer("store_client.py", path, port, messages, "--rate", RATE)
        assert client.stdout is not None
        line = client.stdout.readline().strip()
        lines.append(line)
        kind, _recovered, last, epoch = line.split()
        assert kind == "RECOVERED" and epoch == "1", (line, seed)
        # Nothing a previous process stored is forgotten.
        assert int(last) >= submitted, (line, submitted, seed)
        submitted = int(last)
        time.sleep(rng.uniform(0.0, 0.25))
        processes.kill(client)
    client = processes.startPeer("store_client.py", path, port, messages, "--rate", RATE)
    assert client.stdout is not None
    output = client.communicate(timeout=60)[0].strip().splitlines()
    lines.append(output[0])
    lines.append(output[-1])
    elapsed = time.monotonic() - started
    processes.kill(server)
    return [int(n) for n in received.read_text().split()], lines, elapsed


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_killedClientLosesNothing(tmp_path: Path, processes: Processes) -> None:
    """A client SIGKILLed and restarted RUNS times while sending MESSAGES
    with a SQLite store: the server's application processes each exactly
    once, in order, and the last client's Deferreds all fire."""
    seed = chaosSeed()
    processed, lines, elapsed = runKilled(tmp_path, processes, MESSAGES, RUNS, seed)
    print(f"\n{MESSAGES} messages, {RUNS} kills, {elapsed:.1f} s (seed {seed}):", lines)
    assert lines[-1].startswith("DONE "), (lines, seed)
    assert processed == list(range(MESSAGES)), seed


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_stoppedClientLosesNothing(tmp_path: Path, processes: Processes) -> None:
    """A client stopped in order (SIGTERM: its reactor stops, closing the
    store first, while its connection is up) at random points, 8 times:
    each process fails its unconfirmed Deferreds saying the store keeps the
    message, none otherwise (no session ended); the next resumes the same
    session (epoch 1), and the server's application processes every
    message exactly once, in order."""
    seed = chaosSeed()
    rng = random.Random(seed)
    messages, runs = 3000, 8
    received = tmp_path / "received"
    server = processes.startPeer("session_server.py", LOOPBACK, 0, 1.0, "--received", received)
    assert server.stdout is not None
    port = int(server.stdout.readline().split()[1])
    path = tmp_path / "client.db"
    kept = 0
    for _ in range(runs):
        client = processes.startPeer("store_client.py", path, port, messages, "--rate", RATE)
        assert client.stdout is not None
        kind, _recovered, _last, epoch = client.stdout.readline().split()
        assert kind == "RECOVERED" and epoch == "1", seed
        time.sleep(rng.uniform(0.05, 0.25))
        killGroup(client, (signal.SIGTERM,), timeout=20)
        lines = client.stdout.read().split("\n")
        stopped = [line.split() for line in lines if line.startswith("STOPPED")]
        assert len(stopped) == 1 and stopped[0][2] == "0", (lines, seed)
        kept += int(stopped[0][1])
    client = processes.startPeer("store_client.py", path, port, messages, "--rate", RATE)
    output = client.communicate(timeout=60)[0].strip().splitlines()
    processes.kill(server)
    print(f"\n{runs} orderly stops, {kept} Deferreds failed as kept (seed {seed}):", output[-1])
    assert output[0].split()[3] == "1" and output[-1].startswith("DONE "), (output, seed)
    assert [int(n) for n in received.read_text().split()] == list(range(messages)), seed


class Resetting(AliveClientFactory):
    """A stored client that reconnects quickly and records its resets."""

    protocol = HeartbeatProtocol
    initialDelay = 0.02
    maxDelay = 0.2
    quickDelay = 0.01
    quickSpread = 0.0

    def __init__(self, store: SqliteSessionStore) -> None:
        super().__init__(store)
        self.resets: list[int] = []

    def sessionReset(self, reason: str, maybeProcessed: int) -> None:
        self.resets.append(maybeProcessed)


@pytest.mark.slow
@pytest.mark.timeout(60)
@ensureDeferred
async def test_serverRestartResetsStoredSession(tmp_path: Path, processes: Processes) -> None:
    """A stored client whose server is SIGKILLed and started again mid-way:
    the new server does not know the session, so the client starts a new
    one (epoch 2, in the store too); the messages it had sent and not seen
    confirmed fail with maybeProcessed, as many as sessionReset says, the
    others reach the new server; no message is processed twice, every
    Deferred fires exactly once, and each Receipt stands for a message a
    server processed."""
    reactor = getReactor()
    first = tmp_path / "first"
    server = processes.startPeer("session_server.py", LOOPBACK, 0, 0.5, "--received", first)
    port = await readReady(server)
    path = tmp_path / "client.db"
    store = SqliteSessionStore(str(path), reactor=reactor)
    factory = Resetting(store)
    assert await factory.recovered() == []
    reactor.connectTCP(LOOPBACK, port, factory)
    outcomes: dict[int, list[object]] = {}
    for number in range(600):
        outcomes[number] = []
        factory.sendMessage(b"%d" % number).addBoth(outcomes[number].append)
        if number % 20 == 19:
            await elapse(0.01)
        if number == 300:
            processes.kill(server)
            server = processes.startPeer(
                "session_server.py", LOOPBACK, port, 0.5, "--received", tmp_path / "second"
            )
            assert await readReady(server) == port
    await waitFor(lambda: all(outcomes.values()), timeout=30, what="every outcome")
    factory.stopTrying()
    await store.flush()
    assert all(len(seen) == 1 for seen in outcomes.values())
    processed = [int(n) for n in first.read_text().split()]
    processed += [int(n) for n in (tmp_path / "second").read_text().split()]
    assert len(processed) == len(set(processed)), "a message was processed twice"
    maybe = 0
    for number, (outcome,) in outcomes.items():
        if isinstance(outcome, Receipt):
            assert number in processed, number
        else:
            assert isinstance(outcome, Failure), outcome
            error = outcome.value
            assert isinstance(error, DeliveryFailed) and error.maybeProcessed, error
            maybe += 1
    assert factory.resets == [maybe] and factory.epoch == 2
    tokens = await store.listSessions()
    records = [await store.loadSession(token) for token in tokens]
    connected = factory.connected
    if connected is not None:
        connected.abort("test over")
    await store.close()
    # The new session, stored (stopTrying ends it only once its open
    # connection ends).
    assert [record.epoch for record in records if record is not None] == [2]
    print(f"\n{maybe} maybe processed, {len(processed)} processed, reset once")


class Working(HeartbeatProtocol):
    """A server's application that takes a few milliseconds per message."""

    processed: list[bytes] = []

    def messageReceived(self, payload: bytes) -> Deferred[None]:
        Working.processed.append(payload)
        return deferLater(getReactor(), 0.005, lambda: None)


@pytest.mark.slow
@pytest.mark.timeout(60)
@ensureDeferred
async def test_storeClosedUnderConnection(tmp_path: Path) -> None:
    """A stored client whose store closes while its connection carries
    messages over 127.0.0.1 (what stopping the reactor does first): the
    ACKs that follow cannot be committed, so the unconfirmed Deferreds fail
    saying the store keeps the message, no error is logged and the session
    is not ended; a new factory on the same file recovers exactly those
    messages, resumes the session and gets a Receipt for each; the server's
    application processes every message once."""
    reactor = getReactor()
    Working.processed = []
    server = AliveServerFactory.forProtocol(Working)
    port = reactor.listenTCP(0, server, interface=LOOPBACK)
    try:
        path = str(tmp_path / "client.db")
        store = SqliteSessionStore(path, reactor=reactor)
        first = Resetting(store)
        await first.recovered()
        connector = reactor.connectTCP(LOOPBACK, port.getHost().port, first)
        await first.whenConnected()
        outcomes: dict[int, list[object]] = {}
        for number in range(200):
            outcomes[number] = []
            first.sendMessage(b"%d" % number).addBoth(outcomes[number].append)
        await first.whenStored()
        await elapse(0.2)
        with capturedLogs() as logs:
            await store.close()
            await waitFor(lambda: first.connected is None, timeout=10, what="the abort")
        connector.disconnect()
        failed = [n for n, seen in outcomes.items() if seen and isinstance(seen[0], Failure)]
        for number in failed:
            error = cast(Failure, outcomes[number][0]).value
            assert str(error).startswith(
                "the session store closed (the message stays in the session store, for the "
                "next process) before confirmation"
            ), error
        assert failed and not any(e["log_level"] >= LogLevel.warn for e in logs)
        assert first.epoch == 1 and first.resets == []

        again = SqliteSessionStore(path, reactor=reactor)
        second = Resetting(again)
        recovered = await second.recovered()
        numbers = [int(payload) for payload, _ in recovered]
        assert set(failed) <= set(numbers) and second.epoch == 1
        connector = reactor.connectTCP(LOOPBACK, port.getHost().port, second)
        receipts = await gatherResults([d for _, d in recovered])
        assert [receipt.seq for receipt in receipts] == [n + 1 for n in numbers]
        assert sorted(int(p) for p in Working.processed) == list(range(200))
        second.stopTrying()
        connector.disconnect()
        await again.close()
        print(f"\n{len(failed)} failed as kept, {len(numbers)} recovered, each processed once")
    finally:
        await port.stopListening()
