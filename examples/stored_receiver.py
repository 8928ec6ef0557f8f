"""
A receiver killed and started again that processes every message exactly
once: its session is in a SQLite file, and its application's work is done
in the store's own transaction.

Run:  python examples/stored_receiver.py [COUNT] [KILLS] [SEED]   (defaults 1000, 4, random)

Starts, on 127.0.0.1, an AliveServerFactory server that sends the orders
``0`` .. ``COUNT - 1`` to its client (about 1,000 a second), then runs the
client (this script with ``client PATH PORT COUNT``) as a process of its
own, and SIGKILLs it KILLS times at random points, starting it again each
time on the same store file. The client's protocol defines
``messageReceivedInTransaction``: each order is inserted into a table of
the store's file in the same transaction as the session's processed
position, so a kill keeps both or neither. Checks that the table holds
every order exactly once, in order, and that every one of the server's
Deferreds fired with its receipt; exits 0 if so, 1 otherwise.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
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


class Orders(HeartbeatProtocol):
    """Records each order in the store's file, in the store's transaction."""

    def messageReceivedInTransaction(self, payload: bytes, cursor: sqlite3.Cursor) -> None:
        # The store's thread: nothing of Twisted here, only the cursor.
        cursor.execute("INSERT INTO orders (number) VALUES (?)", (int(payload),))


class Client(AliveClientFactory):
    """Reconnects quickly: the server stays up."""

    protocol = Orders
    initialDelay = 0.05
    quickDelay = 0.01
    quickSpread = 0.0


def countOrders(cursor: sqlite3.Cursor) -> int:
    """How many orders the table holds."""
    return int(cursor.execute("SELECT count(*) FROM orders").fetchone()[0])


async def client(reactor: Any, path: str, port: int, count: int) -> None:
    """Receive orders with the session in the store at ``path``; say so
    once the table holds ``count``."""
    store = SqliteSessionStore(path, reactor=reactor)
    await store.runInTransaction(
        lambda cursor: cursor.execute(
            "CREATE TABLE IF NOT EXISTS orders (n INTEGER PRIMARY KEY, number INTEGER)"
        )
    )
    factory = Client(store=store)
    await factory.recovered()  # before connecting
    done = await store.runInTransaction(countOrders)
    print(f"client {os.getpid()}: {done} orders in the table, carrying on")
    reactor.connectTCP(HOST, port, factory)
    while done < count:
        await task.deferLater(reactor, 0.05, lambda: None)
        done = await store.runInTransaction(countOrders)
    print(f"client {os.getpid()}: all {count} in the table")
    # Runs until stopped (SIGTERM stops the reactor, which closes the store).
    await Deferred()


# -- the demonstration: a server, and a client killed again and again -----------


class Sender(HeartbeatProtocol):
    """The server's side of a connection: tells the factory the session's id."""

    factory: Server

    def connectionOpened(self, resumed: bool) -> None:
        self.factory.sessionId = self.sessionId


class Server(AliveServerFactory):
    """Sends ``count`` orders, 50 every 50 ms, to the client's session
    (``sendTo``: the session keeps what waits while its client is away, and
    sends it on whichever connection carries it next)."""

    protocol = Sender

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.sessionId: str | None = None
        self.receipts: list[Deferred[Receipt]] = []

    def confirmed(self) -> bool:
        """Whether every order was sent and its Deferred fired."""
        return len(self.receipts) == self.count and all(d.called for d in self.receipts)

    def sendSome(self) -> None:
        sessionId = self.sessionId
        if sessionId is None:
            return
        for number in range(len(self.receipts), min(self.count, len(self.receipts) + 50)):
            self.receipts.append(self.sendTo(sessionId, b"%d" % number))


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
    """Run the server and the clients; check the client's table."""
    rng = random.Random(seed)
    server = Server(count)
    port = reactor.listenTCP(0, server, interface=HOST)
    sending = task.LoopingCall(server.sendSome)
    sending.clock = reactor
    sending.start(0.05)
    path = os.path.join(tempfile.mkdtemp(), "client-session.db")
    argv = [sys.executable, __file__, "client", path, str(port.getHost().port), str(count)]
    env = dict(os.environ)
    for run in range(kills + 1):
        child = Child()
        process = reactor.spawnProcess(child, sys.executable, argv, env=env)
        await child.ready
        if run < kills:
            await task.deferLater(reactor, rng.uniform(0.1, 0.4), lambda: None)
            process.signalProcess(signal.SIGKILL)
            print(f"client {process.pid}: killed")
        else:
            while not server.confirmed():
                await task.deferLater(reactor, 0.05, lambda: None)
            process.signalProcess(signal.SIGTERM)
        await child.ended
    sending.stop()
    await port.stopListening()
    with sqlite3.connect(path) as connection:
        numbers = [n for (n,) in connection.execute("SELECT number FROM orders ORDER BY n")]
    connection.close()
    receipts = [d.result for d in server.receipts if d.called]
    ok = numbers == list(range(count))
    confirmed = len(receipts) == count and all(isinstance(r, Receipt) for r in receipts)
    print(f"the client's table holds {len(numbers)} orders (seed {seed})")
    print(
        f"all {count} processed exactly once, in order, across {kills} kills"
        if ok
        else "MISMATCH: lost, repeated or out of order"
    )
    print("every receipt came" if confirmed else "MISSING receipts")
    return 0 if ok and confirmed else 1


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
