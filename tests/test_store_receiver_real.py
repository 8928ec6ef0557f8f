"""
A receiving client whose session is in a `SqliteSessionStore`, SIGKILLed
at random points and started again on the same file, against a session
server in this process (its sessions in memory, alive throughout) that
sends it numbered messages: with ``messageReceived``, every message is
processed, in order, and each kill repeats one message at most, flagged as
redelivered; with ``messageReceivedInTransaction``, every message exactly
once. The server's Deferreds all fire once, with their receipts.

``ALIVE_STORE_RECV_MESSAGES`` and ``ALIVE_STORE_RECV_KILLS`` change the
number of messages (2,000) and of killed processes (20);
``ALIVE_CHAOS_SEED`` replays the kill points. Run with ``-s`` to see the
figures.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from operator import itemgetter
from pathlib import Path
from typing import Any

import pytest
from support import (
    LOOPBACK,
    Processes,
    chaosSeed,
    elapse,
    ensureDeferred,
    getReactor,
    readLine,
    waitFor,
    withoutRepeats,
)

from twisted_alive import AliveServerFactory, HeartbeatProtocol, Receipt

MESSAGES = int(os.environ.get("ALIVE_STORE_RECV_MESSAGES", "2000"))
KILLS = int(os.environ.get("ALIVE_STORE_RECV_KILLS", "20"))
WORK = 0.002
"""Seconds each message's work takes in the client: a kill after a random
50 to 300 ms meets it in the middle of one."""


class Sender(HeartbeatProtocol):
    """Sends MESSAGES numbered messages when its session first opens."""

    factory: Senders

    def connectionOpened(self, resumed: bool) -> None:
        if not resumed and not self.factory.outcomes:
            for number in range(self.factory.messages):
                seen: list[object] = []
                self.factory.outcomes.append(seen)
                self.sendMessage(b"%d" % number).addBoth(seen.append)


class Senders(AliveServerFactory):
    """Keeps the session long enough for every restart of the client."""

    protocol = Sender
    sessionTTL = 600.0

    def __init__(self, messages: int) -> None:
        super().__init__()
        self.messages = messages
        self.outcomes: list[list[object]] = []


async def runKilled(
    tmp_path: Path, processes: Processes, transactional: bool, seed: int
) -> tuple[Senders, int, float]:
    """
    Serve MESSAGES messages to KILLS client processes on one store file,
    each SIGKILLed at a random point once its session is stored, then to a
    last one until the server's Deferreds all fired.

    :returns: the server's factory, the kills and the seconds it took.
    """
    rng = random.Random(seed)
    reactor = getReactor()
    server = Senders(MESSAGES)
    port = reactor.listenTCP(0, server, interface=LOOPBACK)
    path = tmp_path / "client.db"
    options: list[object] = ["--transactional"] if transactional else []
    options += ["--out", tmp_path / "processed", "--work", WORK]
    started = time.monotonic()
    token = None
    try:
        for run in range(KILLS + 1):
            client = processes.startPeer("store_receiver.py", path, port.getHost().port, *options)
            line = await readLine(client, 30)
            kind, session, epoch = line.split()
            assert kind == "READY" and epoch == "1", (line, seed)
            assert token in (None, session), (line, token, seed)  # the same session
            token = session
            if run == KILLS:
                await waitFor(
                    lambda: len(server.outcomes) == MESSAGES and all(server.outcomes),
                    timeout=60,
                    what="every receipt",
                )
            else:
                await elapse(rng.uniform(0.05, 0.3))
            processes.kill(client)
    finally:
        await port.stopListening()
        for protocol in list(server.connections):
            protocol.abort("test over")
    return server, KILLS, time.monotonic() - started


def checkReceipts(server: Senders) -> None:
    """Every Deferred of the server fired once, with the receipt of its
    message."""
    assert len(server.outcomes) == MESSAGES
    for number, seen in enumerate(server.outcomes):
        assert len(seen) == 1, (number, seen)
        receipt: Any = seen[0]
        assert isinstance(receipt, Receipt) and receipt.seq == number + 1, (number, receipt)


@pytest.mark.slow
@pytest.mark.timeout(180)
@ensureDeferred
async def test_killedReceiverRepeatsOneFlaggedMessageAtMost(
    tmp_path: Path, processes: Processes
) -> None:
    """A receiver SIGKILLed and restarted KILLS times while processing
    MESSAGES with a SQLite store and ``messageReceived``: every message is
    processed, in order, without a gap; repeats are at most one per kill,
    each flagged as redelivered; the server's Deferreds all fire once."""
    seed = chaosSeed()
    server, kills, elapsed = await runKilled(tmp_path, processes, False, seed)
    checkReceipts(server)
    lines = (tmp_path / "processed").read_text().split("\n")[:-1]
    pairs = [(int(number), flag == "1") for number, flag in map(str.split, lines)]
    kept, repeated = withoutRepeats(pairs, itemgetter(0))
    flagged = sum(redelivered for _, redelivered in pairs)
    print(
        f"\n{MESSAGES} messages, {kills} kills, {elapsed:.1f} s (seed {seed}): "
        f"{len(repeated)} repeated (flagged), {flagged} flagged in all"
    )
    assert all(redelivered for _, redelivered in repeated), (repeated, seed)
    assert [number for number, _ in kept] == list(range(MESSAGES)), seed
    assert len(repeated) <= kills, seed


@pytest.mark.slow
@pytest.mark.timeout(180)
@ensureDeferred
async def test_killedTransactionalReceiverProcessesExactlyOnce(
    tmp_path: Path, processes: Processes
) -> None:
    """A receiver SIGKILLed and restarted KILLS times while processing
    MESSAGES with ``messageReceivedInTransaction`` (each insert in the
    store's transaction with the position): the table holds every message
    exactly once, in order; the server's Deferreds all fire once."""
    seed = chaosSeed()
    server, kills, elapsed = await runKilled(tmp_path, processes, True, seed)
    checkReceipts(server)
    connection = sqlite3.connect(tmp_path / "client.db")
    try:
        rows = [int(payload) for (payload,) in connection.execute(
            "SELECT payload FROM app_received ORDER BY n")]
    finally:
        connection.close()
    print(f"\n{MESSAGES} messages, {kills} kills, {elapsed:.1f} s (seed {seed}): exactly once")
    assert rows == list(range(MESSAGES)), seed
