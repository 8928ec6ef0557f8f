"""
A client killed and started again that loses nothing: its session is in a
SQLite file.

Run:  python examples/stored_client.py [COUNT] [KILLS] [SEED]   (defaults 1000, 4, random)

Starts, on 127.0.0.1, an AliveServerFactory server whose application records
the numbers it processes, then runs the client (this script with ``client
PATH PORT COUNT``) as a process of its own, and SIGKILLs it KILLS times at
random points, starting it again each time on the same store file. The
client sends the messages ``0`` .. ``COUNT - 1``; after a restart it takes
what its previous process stored and the server did not confirm from
``factory.recovered()``, and carries on after ``factory.lastSubmitted``.
Prints what each process found and checks that the server's application
processed every message exactly once and in order; exits 0 if so, 1
otherwise.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import tempfile
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred

from twisted_alive import (
    AliveClientFactory,
    AliveServerFactory,
    HeartbeatProtocol,
    Receipt,
    SqliteSessionStore,
)

HOST = "127.0.0.1"


# -- the client process -------------------------------------------------------


class Client(AliveClientFactory):
    """Reconnects quickly: the server stays up."""

    protocol = HeartbeatProtocol
    initialDelay = 0.05
    quickDelay = 0.01
    quickSpread = 0.0


async def client(reactor: Any, path: str, port: int, count: int) -> None:
    """Send what is left of ``count`` numbered messages, with the session
    in the store at ``path``; exit once every Deferred fired."""
    store = SqliteSessionStore(path, reactor=reactor)
    factory = Client(store=store)
    recovered = await factory.recovered()  # before connecting, before sending
    start = factory.lastSubmitted  # message n is the session's seq n + 1
    print(f"client {os.getpid()}: {len(recovered)} recovered, carrying on after {start}")
    pending: list[Deferred[Receipt]] = [d for _, d in recovered]
    reactor.connectTCP(HOST, port, factory)
    for number in range(start, count):
        pending.append(factory.sendMessage(b"%d" % number))
        if number % 50 == 49:
            await factory.whenStored()  # durable from here on
            await task.deferLater(reactor, 0.05, lambda: None)  # 1,000 a second
    await defer.gatherResults(pending)
    await store.close()  # the session stays in the file for a next process
    print(f"client {os.getpid()}: all confirmed")


# -- the demonstration: a server, and a client killed again and again -----------


class Recorder(HeartbeatProtocol):
    """The server's application: records the numbers it processes."""

    received: list[int] = []

    def messageReceived(self, payload: bytes) -> None:
        self.received.append(int(payload))


class Child(protocol.ProcessProtocol):
    """A client process: prints its lines, tells when it ends."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        sys.stdout.write(data.decode())
        if not self.ready.called:
            self.ready.callback(None)  # it loaded its session

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        if not self.ready.called:
            self.ready.callback(None)
        self.ended.callback(None)


async def main(reactor: Any, count: int, kills: int, seed: int) -> int:
    """Run the server and the clients; check what the server processed."""
    rng = random.Random(seed)
    port = reactor.listenTCP(0, AliveServerFactory.forProtocol(Recorder), interface=HOST)
    path = os.path.join(tempfile.mkdtemp(), "client-session.db")
    argv = [sys.executable, __file__, "client", path, str(port.getHost().port), str(count)]
    env = dict(os.environ)
    for run in range(kills + 1):
        child = Child()
        process = reactor.spawnProcess(child, sys.executable, argv, env=env)
        if run < kills:
            await child.ready
            await task.deferLater(reactor, rng.uniform(0.05, 0.3), lambda: None)
            if not child.ended.called:
                process.signalProcess(signal.SIGKILL)
                print(f"client {process.pid}: killed")
        await child.ended
    await port.stopListening()
    received = Recorder.received
    ok = received == list(range(count))
    print(f"server processed {len(received)} messages (seed {seed})")
    print(
        f"all {count} processed exactly once, in order, across {kills} kills"
        if ok
        else "MISMATCH: lost, repeated or out of order"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        path, port, count = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        task.react(lambda reactor: defer.ensureDeferred(client(reactor, path, port, count)))
    else:
        args = sys.argv[1:]
        count = int(args[0]) if args else 1000
        kills = int(args[1]) if len(args) > 1 else 4
        seed = int(args[2]) if len(args) > 2 else random.randrange(2**32)

        async def run(reactor: Any) -> None:
            sys.exit(await main(reactor, count, kills, seed))

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
