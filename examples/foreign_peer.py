"""
Liveness for a peer that does not speak twisted_alive's framing.

Run:  python examples/foreign_peer.py

A tiny line-echo server stands in for the foreign peer (a database, an HTTP
server, a device): it knows nothing of heartbeats or GOODBYE frames. A plain
``LineReceiver`` client connects to it, then:

1. ``setKernelLiveness`` turns one deadline into kernel keepalive and
   ``TCP_USER_TIMEOUT`` settings, and the script prints what the kernel
   accepted;
2. ``peek`` looks at the quiet connection: ALIVE;
3. a line goes out and its echo comes back;
4. the client stops reading and says ``bye``; the server echoes it and
   closes. ``peek`` now says READABLE: the echo waits in the socket, with the
   server's FIN behind it;
5. the client reads on; the connection ends and ``classify`` names why:
   PEER_CLOSED (a FIN with no GOODBYE, all a foreign peer can send).
"""

from __future__ import annotations

from typing import cast

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IPushProducer, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twisted_alive import PeekState, classify, peek, setKernelLiveness

DEADLINE = 10.0
"""Seconds after which the kernel should give up on a vanished peer."""


class LineEcho(LineReceiver):
    """The foreign peer: echoes every line, and closes after ``bye``."""

    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line)
        if line == b"bye":
            assert self.transport is not None
            self.transport.loseConnection()


class LineClient(LineReceiver):
    """A plain client: queues the lines it receives, reports the end."""

    def __init__(self) -> None:
        self.lines: DeferredQueue[bytes] = DeferredQueue()
        self.ended: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def lineReceived(self, line: bytes) -> None:
        self.lines.put(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.ended.callback(None)


async def peekUntilChanged(clock: IReactorTime, transport: object) -> PeekState:
    """Peek every 10 ms, for up to 2 s, until the connection is no longer ALIVE."""
    state = peek(transport)
    for _ in range(200):
        if state is not PeekState.ALIVE:
            break
        await task.deferLater(clock, 0.01, lambda: None)
        state = peek(transport)
    return state


async def main(reactor: IReactorTCP) -> None:
    clock = cast(IReactorTime, reactor)
    listening = reactor.listenTCP(0, Factory.forProtocol(LineEcho), interface="127.0.0.1")
    address = cast(IPv4Address, listening.getHost())
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", address.port)
    client = cast(LineClient, await endpoint.connect(Factory.forProtocol(LineClient)))
    transport = client.transport
    assert transport is not None

    settings = setKernelLiveness(transport, DEADLINE)
    print(
        f"kernel liveness for a {settings.deadline:g} s deadline:"
        f" keepalive after {settings.idle} s idle,"
        f" then {settings.probes} probes {settings.interval} s apart;"
        f" TCP_USER_TIMEOUT {settings.userTimeout} s;"
        f" unsupported here: {', '.join(settings.unsupported) or 'none'}"
    )
    print(f"peek, quiet connection: {peek(transport).name}")

    client.sendLine(b"hello")
    print(f"echo: {(await client.lines.get()).decode()}")

    pausable = cast(IPushProducer, transport)
    pausable.pauseProducing()
    client.sendLine(b"bye")
    state = await peekUntilChanged(clock, transport)
    print(f"peek, after the server's last reply and close: {state.name}")
    pausable.resumeProducing()
    print(f"echo: {(await client.lines.get()).decode()}")

    await client.ended
    assert client.reason is not None
    print(f"connection ended: {classify(client.reason).name}")
    await defer.maybeDeferred(listening.stopListening)


if __name__ == "__main__":
    task.react(main)
