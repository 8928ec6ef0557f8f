"""
Sessions over real loopback sockets: at least 10,000 numbered messages in
each direction through a L{ChaosProxy} that resets every connection after a
random 30-200 ms, each delivered exactly once and in order and each
confirmed with a L{Receipt}; and the session machinery under
C{ClientService}.

Run with C{-s} to see the figures (messages, connections, seconds, rate).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import cast

import pytest
from support import (
    LOOPBACK,
    QuickReconnecting,
    asyncYieldFixture,
    chaosSeed,
    elapse,
    ensureDeferred,
    getReactor,
    portOf,
    waitFor,
)
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, DeferredList, gatherResults, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint

from twisted_alive._factories import AliveClientFactory, AliveServerFactory
from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive.core.outcomes import Receipt
from twisted_alive.testing.chaos import ChaosProxy, Faults

MESSAGES = 10_000
RESET_AFTER = (0.03, 0.2)


class Recorder(HeartbeatProtocol):
    """Records messages as ints in its factory's C{received}; optionally
    slow: every C{pauseEvery}-th message is processed a few ms later."""

    heartbeatInterval = 0.5

    def messageReceived(self, payload: bytes) -> Deferred[None] | None:
        factory = self.factory
        if payload == b"start":
            factory.start(self)
            return None
        number = int(payload)
        factory.received.append(number)
        every = factory.pauseEvery
        if every and number % every == every - 1:
            return elapse(0.004)  # a handler that really takes time now and then
        return None


class ServerFactory(AliveServerFactory):
    """Records what clients send; on C{b"start"} sends them C{MESSAGES}."""

    protocol = Recorder

    def __init__(self) -> None:
        super().__init__()
        self.received: list[int] = []
        self.pauseEvery = 0
        self.sent: list[Deferred[Receipt]] = []
        self.started: Deferred[None] = Deferred()

    def start(self, proto: HeartbeatProtocol) -> None:
        """Send C{MESSAGES} numbered messages in the session of C{proto}."""
        self.sent = [proto.sendMessage(b"%d" % i) for i in range(MESSAGES)]
        self.started.callback(None)


class ClientFactory(QuickReconnecting):
    """Records what the server sends."""

    protocol = Recorder

    def __init__(self) -> None:
        super().__init__()
        self.pauseEvery = 0

    def start(self, proto: HeartbeatProtocol) -> None:
        """Not used on the client side."""
        raise AssertionError("the client never receives start")


class Rig:
    """A server, a chaos proxy in front of it and a client, on loopback."""

    def __init__(self) -> None:
        self.reactor = getReactor()
        self.server = ServerFactory()
        self.client = ClientFactory()
        self.ports: list[IListeningPort] = []
        self.proxy: ChaosProxy | None = None
        self.seed = chaosSeed()

    async def start(self, faults: Faults) -> None:
        """Listen, put the proxy in front, connect the client to it."""
        port = self.reactor.listenTCP(0, self.server, interface=LOOPBACK)
        self.ports.append(port)
        target = TCP4ClientEndpoint(self.reactor, LOOPBACK, portOf(port))
        self.proxy = ChaosProxy(target, faults, seed=self.seed)
        endpoint = cast(Callable[..., IStreamServerEndpoint], TCP4ServerEndpoint)
        listening = endpoint(self.reactor, 0, interface=LOOPBACK)
        proxyPort = await self.proxy.listen(listening)
        self.reactor.connectTCP(LOOPBACK, portOf(proxyPort), self.client)

    async def stop(self) -> None:
        """Stop reconnecting, close everything, stop listening."""
        self.client.stopTrying()
        if self.client.connected is not None:
            self.client.connected.abort()
        for proto in list(self.server.connections):
            proto.abort()
        if self.proxy is not None:
            await self.proxy.stopListening()
            self.proxy.resetAll()
        for port in self.ports:
            await maybeDeferred(port.stopListening)
        proxy = self.proxy
        await waitFor(
            lambda: not self.server.connections and (proxy is None or not proxy.connections),
            5,
            "every connection to end",
        )

    def report(self, direction: str, seconds: float) -> None:
        """Print the figures of a run."""
        assert self.proxy is not None
        print(
            f"\n{direction}: {MESSAGES} messages, {self.client.connections} connections "
            f"({self.proxy.faultsInjected['reset']} resets by the proxy, seed {self.seed}), "
            f"{seconds:.2f} s, {MESSAGES / seconds:.0f} confirmed messages/s"
        )


@asyncYieldFixture
async def rig() -> AsyncIterator[Rig]:
    """A L{Rig}, stopped after the test."""
    r = Rig()
    try:
        yield r
    finally:
        await r.stop()


async def confirmedOnce(ds: list[Deferred[Receipt]], seconds: float) -> list[Receipt]:
    """Wait for every Deferred; each must fire exactly once, with a Receipt."""
    fired = [0] * len(ds)

    def count(result: object, index: int) -> object:
        fired[index] += 1
        return result

    for index, d in enumerate(ds):
        d.addBoth(count, index)
    results = await DeferredList(ds, consumeErrors=True).addTimeout(seconds, getReactor())
    failures = [r for ok, r in results if not ok]
    assert not failures, failures[:3]
    assert fired == [1] * len(ds)
    return [r for ok, r in results]


@pytest.mark.slow
@pytest.mark.timeout(90)
@ensureDeferred
async def test_clientToServerThroughResets(rig: Rig) -> None:
    """10,000 client messages through a proxy that resets every connection
    after 30-200 ms: the server's application sees each exactly once, in
    order, and every Deferred fires once with a Receipt."""
    await rig.start(Faults(resetAfter=RESET_AFTER))
    reactor = rig.reactor
    started = reactor.seconds()
    ds: list[Deferred[Receipt]] = []
    # Paced over about two seconds, so that many connections carry them.
    for batch in range(0, MESSAGES, 100):
        ds.extend(rig.client.sendMessage(b"%d" % i) for i in range(batch, batch + 100))
        await elapse(0.02)  # pacing in real time: the point is to span many connections
    receipts = await confirmedOnce(ds, 60)
    seconds = reactor.seconds() - started
    assert rig.server.received == list(range(MESSAGES))
    assert [r.seq for r in receipts] == list(range(1, MESSAGES + 1))
    assert rig.client.connections >= 5
    assert rig.client.pending == 0
    rig.report("client to server", seconds)


@pytest.mark.slow
@pytest.mark.timeout(90)
@ensureDeferred
async def test_serverToClientThroughResets(rig: Rig) -> None:
    """10,000 server messages, sent in the session of a client through a
    proxy that resets every connection after 30-200 ms, to a client whose
    application pauses now and then: each exactly once, in order, every
    server Deferred fires once with a Receipt."""
    rig.client.pauseEvery = 25
    await rig.start(Faults(resetAfter=RESET_AFTER))
    reactor = rig.reactor
    started = reactor.seconds()
    await rig.client.sendMessage(b"start")
    await rig.server.started
    receipts = await confirmedOnce(rig.server.sent, 60)
    seconds = reactor.seconds() - started
    assert rig.client.received == list(range(MESSAGES))
    assert [r.seq for r in receipts] == list(range(1, MESSAGES + 1))
    assert rig.client.connections >= 5
    rig.report("server to client", seconds)


@pytest.mark.timeout(30)
@ensureDeferred
async def test_clientService() -> None:
    """Under ClientService (endpoint, its own retry policy), messages sent
    with factory.sendMessage before, during and after a server-side abort
    each reach the server once, in order, and are confirmed."""
    reactor = getReactor()
    server = ServerFactory()
    port = reactor.listenTCP(0, server, interface=LOOPBACK)
    factory = cast(AliveClientFactory, AliveClientFactory.forProtocol(Recorder))
    endpoint = TCP4ClientEndpoint(reactor, LOOPBACK, portOf(port))
    service = ClientService(endpoint, factory, retryPolicy=lambda attempt: 0.05)
    try:
        ds = [factory.sendMessage(b"%d" % i) for i in range(100)]  # not yet connected
        service.startService()
        first = await factory.whenConnected()
        await gatherResults(ds)
        more = [factory.sendMessage(b"%d" % i) for i in range(100, 200)]
        for proto in list(server.connections):
            proto.abort("a server-side abort")
        ds += more
        ds += [factory.sendMessage(b"%d" % i) for i in range(200, 300)]
        await confirmedOnce(ds, 20)
        assert server.received == list(range(300))
        assert factory.connected is not first
        assert factory.connections == 2
        assert server.sessionsResumed == 1
    finally:
        factory.stopTrying()
        await service.stopService()
        await maybeDeferred(port.stopListening)
