"""
A client that sends confirmed messages to the echo server.

Run:  python examples/confirmed_client.py [PORT] [COUNT]   (defaults 9000, 10)

Each message's Deferred fires with a Receipt once the server's application
has processed it; the echoes come back as messages of their own. The client
then closes in order (GOODBYE) and prints why the connection ended. Exits 0
if every message was confirmed and echoed, 1 otherwise.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTCP

from twisted_alive import HeartbeatProtocol, Receipt


class Client(HeartbeatProtocol):
    heartbeatInterval = 1.0

    def __init__(self) -> None:
        self.echoes: list[bytes] = []

    def messageReceived(self, payload: bytes) -> None:
        self.echoes.append(payload)


async def main(reactor: IReactorTCP, port: int, count: int) -> int:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
    client = await connectProtocol(endpoint, Client())
    await client.whenOpened()
    sent = [f"message {i}".encode() for i in range(count)]
    results = await defer.DeferredList(
        [client.sendMessage(m) for m in sent], consumeErrors=True
    )
    receipts = [r for ok, r in results if ok and isinstance(r, Receipt)]
    for ok, result in results:
        if not ok:
            print(f"not confirmed: {result.value}")
    print(
        f"{len(receipts)}/{count} confirmed, "
        f"median latency {sorted(r.latency for r in receipts)[len(receipts) // 2] * 1000:.2f} ms"
        if receipts
        else f"0/{count} confirmed"
    )
    # The echoes are messages too; wait until they are all here.
    for _ in range(100):
        if len(client.echoes) >= count:
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    print(f"{len(client.echoes)}/{count} echoed back, rtt {client.rtt}")
    loss = await client.close()
    print(f"closed: {loss}")
    return 0 if len(receipts) == count and client.echoes == sent else 1


def run() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 10

    async def go(reactor: IReactorTCP) -> None:
        code = await main(reactor, port, count)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))



if __name__ == "__main__":
    run()
