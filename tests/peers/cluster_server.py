"""
A server process of a cluster for ``tests/test_redis_cluster_real.py``: an
`AliveServerFactory` whose sessions are in a `RedisSessionStore`, shared
with the other server processes on the same Redis server and prefix.

Usage::

    cluster_server.py NAME REDIS_PORT PREFIX PROCESSED [--interval SECONDS]
        [--slow-every N] [--slow-for SECONDS]
        [--send-to FILE] [--send-count N] [--send-window W] [--send-rate R]

It listens on 127.0.0.1 (a free port, a large backlog), serves its status
site (``/health``, ``/metrics``) on another free port of 127.0.0.1, and
prints ``READY <port> <statusPort>``. Then:

- its application appends each message it processes to PROCESSED (one file
  shared by every server process, opened with ``O_APPEND``: each line is
  one ``write``), before ``messageReceived`` returns, as
  ``NAME SESSION SEQ REDELIVERED PAYLOAD``: the session's token in
  hexadecimal, the message's sequence number and ``1`` if it was flagged
  ``currentMessage.redelivered``, else ``0``;
- with ``--slow-every N``, the processing of every Nth message (by
  sequence number) lasts ``--slow-for`` seconds (0.1) more after its line
  is written: ``messageReceived`` returns a Deferred that fires then. A
  connection reset meanwhile leaves the message processed here and not
  committed, for the next holder to hand out again;
- with ``--send-to FILE``, once FILE holds a session id (the test writes
  it there), it sends N (``--send-count``) payloads ``s0``, ``s1``... to
  that session with ``factory.sendTo``, at most W (``--send-window``) at
  a time and R (``--send-rate``, 1,000) a second at most, and prints
  ``SENT {json}``: how many Deferreds fired with a
  `Receipt`, how many failed and why, how many fired more than once, and
  how long it took;
- on SIGTERM it prints ``FINAL {json}`` (``sessionsTakenOver``, the store's
  ``problem``, live connections) as its reactor stops.

It runs until SIGTERM or SIGKILL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from typing import Any, cast

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.python.failure import Failure

from twisted_alive import AliveServerFactory, HeartbeatProtocol, Receipt, sessionStoreFromString
from twisted_alive.service.status import statusSite


def say(*words: object) -> None:
    """One line on stdout, flushed at once (the test reads it)."""
    print(*words, flush=True)


class Recording(HeartbeatProtocol):
    """Appends every message it processes, with its key, to the shared file."""

    factory: ClusterServer

    def messageReceived(self, payload: bytes) -> Deferred[None] | None:
        info = self.currentMessage
        assert info is not None
        line = b"%s %s %d %d %s\n" % (
            self.factory.name,
            info.session.hex().encode(),
            info.seq,
            info.redelivered,
            payload,
        )
        os.write(self.factory.processedFd, line)
        every = self.factory.slowEvery
        if every and info.seq % every == 0:
            return task.deferLater(self.factory.reactor, self.factory.slowFor)
        return None


class ClusterServer(AliveServerFactory):
    """The factory: a name, the shared file, and what it sent with sendTo."""

    protocol = Recording

    def __init__(self, store: Any, reactor: Any, options: argparse.Namespace) -> None:
        super().__init__(store)
        self.redisStore = store
        self.reactor = reactor
        self.slowEvery: int = options.slow_every
        self.slowFor: float = options.slow_for
        name, processed, interval = options.name, options.processed, options.interval
        self.name = name.encode()
        self.processedFd = os.open(processed, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.protocol = cast(
            "type[Recording]",
            type("Recording", (Recording,), {"heartbeatInterval": interval}),
        )

    def final(self) -> None:
        """Print the FINAL line."""
        say(
            "FINAL",
            json.dumps(
                {
                    "name": self.name.decode(),
                    "sessionsTakenOver": self.sessionsTakenOver,
                    "problem": self.redisStore.problem,
                    "connections": len(self.connections),
                }
            ),
        )


async def sendAll(
    reactor: Any, factory: ClusterServer, sessionFile: str, count: int, window: int, rate: float
) -> None:
    """Wait for a session id in ``sessionFile``, send ``count`` payloads to
    it with ``sendTo``, ``window`` at a time, ``rate`` a second at most;
    print ``SENT``."""
    while not (os.path.exists(sessionFile) and open(sessionFile).read().strip()):
        await task.deferLater(reactor, 0.05)
    sessionId = open(sessionFile).read().strip()
    started = time.monotonic()
    fired: Counter[int] = Counter()
    outcomes: Counter[str] = Counter()

    def record(result: Receipt | Failure, number: int) -> None:
        fired[number] += 1
        if isinstance(result, Receipt):
            outcomes["receipt"] += 1
        else:
            outcomes[f"{type(result.value).__name__}: {result.getErrorMessage()}"] += 1

    for first in range(0, count, window):
        pending: list[Deferred[None]] = []
        for number in range(first, min(count, first + window)):
            d = factory.sendTo(sessionId, b"s%d" % number)
            pending.append(d.addBoth(record, number))
        await gatherResults(pending)
        ahead = (first + window) / rate - (time.monotonic() - started)
        if ahead > 0:
            await task.deferLater(reactor, ahead)
    say(
        "SENT",
        json.dumps(
            {
                "sent": count,
                "outcomes": dict(outcomes),
                "twice": sum(1 for n in fired.values() if n > 1),
                "unfired": count - len(fired),
                "seconds": round(time.monotonic() - started, 2),
            }
        ),
    )


def main(reactor: Any, *argv: str) -> Deferred[None]:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("redisPort", type=int)
    parser.add_argument("prefix")
    parser.add_argument("processed")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--slow-every", type=int, default=0)
    parser.add_argument("--slow-for", type=float, default=0.1)
    parser.add_argument("--send-to", default="")
    parser.add_argument("--send-count", type=int, default=0)
    parser.add_argument("--send-window", type=int, default=100)
    parser.add_argument("--send-rate", type=float, default=1000.0)
    options = parser.parse_args(argv)
    store = sessionStoreFromString(
        reactor, f"redis://127.0.0.1:{options.redisPort}/0?prefix={options.prefix}"
    )
    factory = ClusterServer(store, reactor, options)
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")
    status = reactor.listenTCP(0, statusSite([factory]), interface="127.0.0.1")
    reactor.addSystemEventTrigger("before", "shutdown", factory.final)
    say("READY", port.getHost().port, status.getHost().port)
    if options.send_to:
        sending = Deferred.fromCoroutine(
            sendAll(
                reactor,
                factory,
                options.send_to,
                options.send_count,
                options.send_window,
                options.send_rate,
            )
        )
        sending.addErrback(lambda f: say("ERROR", f.getTraceback().replace("\n", " | ")))
    return Deferred()  # until SIGTERM


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
