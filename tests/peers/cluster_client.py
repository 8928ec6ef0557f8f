"""
A client process of a cluster for ``tests/test_redis_cluster_real.py``:
an `AliveClientFactory` (its session in memory: it is never killed) that
sends numbered messages to whichever server process it reaches and
receives those that a server sends to its session with ``sendTo``.

Usage::

    cluster_client.py PORT TOTAL EXPECTED [--window W] [--rate R]
        [--deadline SECONDS]

It connects to 127.0.0.1:PORT (a proxy in front of the servers), prints
``SESSION <id>`` (its session's public id, ``protocol.sessionId``) once
the first HELLO exchange completed, and sends the payloads ``c0``,
``c1``... up to ``c<TOTAL - 1>`` with ``sendMessage``, W (100) at a time:
it waits until each window's Deferreds fired before it sends the next, and
sends at most R (200) a second. Its application records every message it
receives. Once every Deferred fired and EXPECTED messages arrived (or
after ``--deadline`` seconds, 100 by default) it waits 0.5 s more (a
duplicate would show then), prints ``RESULT {json}`` and exits:

- ``receipts``: Deferreds that fired with a `Receipt` of the right
  sequence number (message ``cN`` is the session's sequence number N + 1);
  ``failures``: the others, by outcome; ``unfired``: those that never
  fired; ``twice``: those whose callback ran more than once;
- ``received``: messages received; ``inOrder``: whether they are exactly
  ``s0``, ``s1``... ``s<EXPECTED - 1>``; ``duplicates``: payloads
  received more than once; ``firstWrong``: the first index where they
  differ from that, if any;
- ``connections``: connections whose HELLO exchange completed;
  ``resumed``: how many of them resumed the session; ``resets``: the
  ``sessionReset`` calls (the session was not resumed), each a string;
- ``seconds``: the time from the first connection to the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from twisted_alive import AliveClientFactory, HeartbeatProtocol, Receipt


def say(*words: object) -> None:
    """One line on stdout, flushed at once (the test reads it)."""
    print(*words, flush=True)


class Receiving(HeartbeatProtocol):
    """Records every message it receives in its factory."""

    factory: ClusterClient
    heartbeatInterval = 1.0

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)

    def connectionOpened(self, resumed: bool) -> None:
        self.factory.opened(self, resumed)


class ClusterClient(AliveClientFactory):
    """Reconnects at once (the proxy resets its connections all the time)
    and records its continuity."""

    protocol = Receiving
    initialDelay = 0.005
    maxDelay = 0.02
    quickDelay = 0.01
    quickSpread = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self.hellos = 0
        self.resumed = 0
        self.resets: list[str] = []
        self.firstConnected: Deferred[str] = Deferred()

    def opened(self, protocol: Receiving, resumed: bool) -> None:
        """A HELLO exchange completed."""
        self.hellos += 1
        self.resumed += resumed
        if not self.firstConnected.called:
            # On the next turn: messages that factory.sendMessage takes
            # within the connectionOpened hook are never sent.
            from twisted.internet import reactor

            reactor.callLater(0, self.firstConnected.callback, protocol.sessionId)

    def sessionReset(self, reason: str, maybeProcessed: int) -> None:
        self.resets.append(f"{reason} ({maybeProcessed} maybe processed)")


async def run(reactor: Any, options: argparse.Namespace) -> None:
    client = ClusterClient()
    reactor.connectTCP("127.0.0.1", options.port, client)
    sessionId = await client.firstConnected
    say("SESSION", sessionId)
    started = time.monotonic()
    deadline = started + options.deadline
    fired: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()

    def record(result: Receipt | Failure, number: int) -> None:
        fired[number] += 1
        if isinstance(result, Receipt) and result.seq == number + 1:
            outcomes["receipt"] += 1
        elif isinstance(result, Receipt):
            outcomes[f"receipt of seq {result.seq} for message {number}"] += 1
        else:
            outcomes[f"{type(result.value).__name__}: {result.getErrorMessage()}"] += 1

    for first in range(0, options.total, options.window):
        pending: list[Deferred[None]] = []
        for number in range(first, min(options.total, first + options.window)):
            d = client.sendMessage(b"c%d" % number)
            pending.append(d.addBoth(record, number))
        await gatherResults(pending)
        if time.monotonic() > deadline:
            break
        ahead = (first + options.window) / options.rate - (time.monotonic() - started)
        if ahead > 0:
            await task.deferLater(reactor, ahead)
    while len(client.received) < options.expected and time.monotonic() < deadline:
        await task.deferLater(reactor, 0.05)
    await task.deferLater(reactor, 0.5)
    seconds = time.monotonic() - started
    expected = [b"s%d" % n for n in range(options.expected)]
    received = client.received
    firstWrong = next(
        (i for i, (a, b) in enumerate(zip(received, expected, strict=False)) if a != b),
        None if len(received) == len(expected) else min(len(received), len(expected)),
    )
    say(
        "RESULT",
        json.dumps(
            {
                "sent": options.total,
                "receipts": outcomes.pop("receipt", 0),
                "failures": dict(outcomes),
                "twice": sum(1 for n in fired.values() if n > 1),
                "unfired": options.total - len(fired),
                "received": len(received),
                "inOrder": received == expected,
                "duplicates": sum(n - 1 for n in Counter(received).values()),
                "firstWrong": firstWrong,
                "connections": client.hellos,
                "resumed": client.resumed,
                "resets": client.resets,
                "seconds": round(seconds, 2),
            }
        ),
    )
    client.stopTrying()
    if client.connected is not None:
        client.connected.abort("done")


def main(reactor: Any, *argv: str) -> Deferred[None]:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("total", type=int)
    parser.add_argument("expected", type=int)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--deadline", type=float, default=100.0)
    options = parser.parse_args(argv)
    return Deferred.fromCoroutine(run(reactor, options))


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
