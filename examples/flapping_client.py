"""
Confirmed delivery over a connection that keeps breaking.

Run:  python examples/flapping_client.py [COUNT] [SEED]   (defaults 2000, random)

Starts, on 127.0.0.1, an AliveServerFactory server, a fault-injecting proxy
in front of it that resets every connection after a random 50-300 ms, and an
AliveClientFactory client that sends COUNT numbered messages through the
proxy, a batch every 20 ms. The client reconnects after each reset and
resumes its session: every message reaches the server's application exactly
once and in order, and every sendMessage() Deferred fires once, with a
Receipt. Prints the figures; exits 0 if all of that held, 1 otherwise.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.python.failure import Failure

from twisted_alive import AliveClientFactory, AliveServerFactory, HeartbeatProtocol, Receipt
from twisted_alive.testing import ChaosProxy, Faults

HOST = "127.0.0.1"


class Counter(HeartbeatProtocol):
    """The server's application: records the numbers it receives."""

    heartbeatInterval = 0.5
    received: list[int] = []

    def messageReceived(self, payload: bytes) -> None:
        self.received.append(int(payload))


class Sender(HeartbeatProtocol):
    """The client's protocol: it only sends (through its factory)."""

    heartbeatInterval = 0.5


async def main(reactor: Any, count: int, seed: int) -> int:
    server = AliveServerFactory.forProtocol(Counter)
    port = reactor.listenTCP(0, server, interface=HOST)
    target = TCP4ClientEndpoint(reactor, HOST, cast(IPv4Address, port.getHost()).port)
    proxy = ChaosProxy(target, Faults(resetAfter=(0.05, 0.3)), seed=seed)
    serverEndpoint = cast(Callable[..., IStreamServerEndpoint], TCP4ServerEndpoint)
    proxyPort = await proxy.listen(serverEndpoint(reactor, 0, interface=HOST))

    client = cast(AliveClientFactory, AliveClientFactory.forProtocol(Sender))
    client.initialDelay = 0.01
    client.maxDelay = 0.1
    client.quickDelay = 0.01
    reactor.connectTCP(HOST, cast(IPv4Address, proxyPort.getHost()).port, client)

    started = reactor.seconds()
    sent: list[defer.Deferred[Receipt]] = []
    fired = [0] * count

    def tally(result: object, index: int) -> object:
        fired[index] += 1
        return result

    for batch in range(0, count, 40):
        for i in range(batch, min(batch + 40, count)):
            d = client.sendMessage(b"%d" % i)
            sent.append(d.addBoth(tally, i))
        await task.deferLater(reactor, 0.02, lambda: None)
    results = await defer.DeferredList(sent, consumeErrors=True)
    seconds = reactor.seconds() - started

    receipts = [r for ok, r in results if ok and isinstance(r, Receipt)]
    failures = [cast(Failure, r) for ok, r in results if not ok]
    inOrder = Counter.received == list(range(count))
    onceEach = fired == [1] * count
    print(f"messages sent:       {count}")
    print(f"connections used:    {client.connections}")
    print(f"resets by the proxy: {proxy.faultsInjected['reset']} (seed {proxy.seed})")
    print(f"confirmed:           {len(receipts)} in {seconds:.2f} s")
    print(f"server received:     {len(Counter.received)}")
    for failure in failures[:3]:
        print(f"not confirmed: {failure.value}")

    client.stopTrying()
    if client.connected is not None:
        client.connected.abort()
    await proxy.stopListening()
    await port.stopListening()

    if len(receipts) == count and inOrder and onceEach:
        print(f"all {count} confirmed exactly once, in order")
        return 0
    print("FAILED: " + ("out of order or duplicated" if not inOrder else "not all confirmed"))
    return 1


def run() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else random.SystemRandom().randrange(2**32)

    async def go(reactor: Any) -> None:
        code = await main(reactor, count, seed)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    run()
