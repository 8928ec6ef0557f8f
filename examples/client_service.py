"""
A client session under Twisted's ``ClientService``.

Run:  python examples/client_service.py [COUNT]   (default 30)

Starts, on 127.0.0.1, an ``AliveServerFactory`` server that records every
message it receives and aborts (an RST) the first connection once five
messages have arrived. The client is an ``AliveClientFactory`` run by
``ClientService``: the service connects through an endpoint, waits for the
HELLO exchange (``prepareConnection``), reconnects after the abort with the
factory's backoff (``factory.clientServicePolicy()``: its ``initialDelay``,
``factor``, ``maxDelay`` and ``jitter``), and ``whenConnected()`` gives the
new connection. The
session lives in the factory, so the COUNT messages given to
``factory.sendMessage()`` while all this happens each reach the server's
application exactly once, in order, and each Deferred fires with a Receipt.
Exits 0 if all of that held, 1 otherwise.
"""

from __future__ import annotations

import sys
from typing import Any, cast

from twisted.application.internet import ClientService
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint

from twisted_alive import (
    AliveClientFactory,
    AliveServerFactory,
    HeartbeatMixin,
    HeartbeatProtocol,
    Reason,
    Receipt,
)

HOST = "127.0.0.1"


class Ledger(HeartbeatProtocol):
    """The server's application: records each message; aborts the first
    connection after its fifth message."""

    heartbeatInterval = 0.5

    def messageReceived(self, payload: bytes) -> None:
        server = cast(LedgerServer, self.factory)
        server.received.append(payload)
        if not server.aborted and len(server.received) == 5:
            server.aborted = True
            print("server: aborting the first connection", flush=True)
            self.abort("aborted on purpose by the example")


class LedgerServer(AliveServerFactory):
    """The server's factory: one ledger for every connection."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self.aborted = False


class Sender(HeartbeatProtocol):
    """The client's protocol: it only sends, through its factory."""

    heartbeatInterval = 0.5


async def main(reactor: Any, count: int) -> int:
    server = cast(LedgerServer, LedgerServer.forProtocol(Ledger))
    listening = reactor.listenTCP(0, server, interface=HOST)
    port = cast(IPv4Address, listening.getHost()).port

    factory = cast(AliveClientFactory, AliveClientFactory.forProtocol(Sender))
    factory.initialDelay, factory.maxDelay = 0.05, 1.0
    service = ClientService(
        TCP4ClientEndpoint(reactor, HOST, port, timeout=5),
        factory,
        # The factory's own backoff; ClientService does the reconnecting.
        retryPolicy=factory.clientServicePolicy(),
        prepareConnection=lambda proto: cast(HeartbeatMixin, proto).whenOpened(),
    )
    service.startService()
    first = cast(HeartbeatMixin, await service.whenConnected())
    print(f"connected to {HOST}:{port}", flush=True)

    sent = [b"message %d" % i for i in range(count)]
    receipts = []
    for payload in sent:
        receipts.append(factory.sendMessage(payload))
        await task.deferLater(reactor, 0.01, lambda: None)
    results = await DeferredList(receipts, consumeErrors=True)
    confirmed = [r for ok, r in results if ok and isinstance(r, Receipt)]
    last = cast(HeartbeatMixin, await service.whenConnected())
    print(f"{len(confirmed)}/{count} confirmed", flush=True)
    print(f"client losses: { {r.name: n for r, n in factory.losses.items()} }", flush=True)
    print(f"connections used: {factory.connections}", flush=True)

    once = server.received == sent
    print(
        "server received each message once, in order"
        if once
        else f"server received {len(server.received)} messages, not the {count} sent once each",
        flush=True,
    )
    # Close in order (GOODBYE), then stop the service so that it does not
    # reconnect.
    closing = last.close()
    await service.stopService()
    await closing
    for _ in range(100):  # the server sees the GOODBYE within a moment
        if server.losses.get(Reason.CLEAN_CLOSE):
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    print(f"server losses: { {r.name: n for r, n in server.losses.items()} }", flush=True)
    await defer.maybeDeferred(listening.stopListening)

    ok = (
        len(confirmed) == count
        and once
        and last is not first
        and factory.losses.get(Reason.RESET) == 1
        and factory.connections >= 2
        and server.losses.get(Reason.CLEAN_CLOSE) == 1
    )
    print("ok" if ok else "FAILED", flush=True)
    return 0 if ok else 1


def run() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 30

    async def go(reactor: Any) -> None:
        code = await main(reactor, count)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    run()
