"""
Tests for L{twisted_alive.testing.chaos}: the fault-injecting proxy, over real
loopback sockets, between plain Twisted echo servers and clients.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from support import (
    LOOPBACK,
    asyncYieldFixture,
    elapse,
    ensureDeferred,
    getReactor,
    listenEndpoint,
    portOf,
    waitFor,
    within,
)
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocolFactory,
    IPushProducer,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive.testing.chaos import (
    FAULT_KINDS,
    ChaosProxy,
    Direction,
    Faults,
    ProxiedConnection,
    parseFaults,
)

MiB = 1024 * 1024


class _Transport(ITCPTransport, IPushProducer, IConsumer):
    """The transport interfaces these tests use."""


class Peer(Protocol):
    """
    A plain Twisted peer that records what it receives and how it ended, and
    echoes back if asked.
    """

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = bytearray()
        self.chunks: list[int] = []
        self.reason: Failure | None = None
        self.lostAt = 0.0
        self.lost: Deferred[type[BaseException]] = Deferred()
        self.pair: ProxiedConnection | None = None
        self._waiting: list[tuple[int, Deferred[bytes]]] = []

    @property
    def tcp(self) -> _Transport:
        return cast(_Transport, self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.chunks.append(len(data))
        if self.echo:
            self.tcp.write(data)
        waiting, self._waiting = self._waiting, []
        for count, d in waiting:
            if len(self.received) >= count:
                d.callback(bytes(self.received))
            else:
                self._waiting.append((count, d))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.lostAt = getReactor().seconds()
        self.lost.callback(cast("type[BaseException]", reason.type))

    def waitFor(self, count: int, seconds: float = 5.0) -> Deferred[bytes]:
        """Fire with everything received once at least C{count} bytes arrived."""
        d: Deferred[bytes] = Deferred()
        if len(self.received) >= count:
            d.callback(bytes(self.received))
        else:
            self._waiting.append((count, d))
        return within(d, seconds)


@implementer(IHalfCloseableProtocol)
class HalfClosingPeer(Peer):
    """A peer that keeps its write side open after it reads an end of file."""

    def __init__(self, echo: bool = False) -> None:
        super().__init__(echo)
        self.readEnded: Deferred[None] = Deferred()

    def readConnectionLost(self) -> None:
        self.readEnded.callback(None)

    def writeConnectionLost(self) -> None:
        pass


class StubbornPeer(Peer):
    """A peer that never reads."""

    def connectionMade(self) -> None:
        self.tcp.pauseProducing()


class PeerFactory(Factory[Peer]):
    def __init__(self, peerClass: type[Peer] = Peer, echo: bool = False) -> None:
        self.peerClass = peerClass
        self.echo = echo
        self.peers: list[Peer] = []
        self.port = 0
        self.noisy = False

    def buildProtocol(self, addr: IAddress | None) -> Peer:
        peer = self.peerClass(self.echo)
        self.peers.append(peer)
        return peer


class Recording(list[ProxiedConnection]):
    """A proxy's connection list that remembers every connection ever added."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[ProxiedConnection] = []

    def append(self, connection: ProxiedConnection) -> None:
        self.seen.append(connection)
        super().append(connection)


class Harness:
    """
    Starts servers, proxies and clients on 127.0.0.1, and stops them all.
    """

    def __init__(self) -> None:
        self.ports: list[IListeningPort] = []
        self.proxies: list[ChaosProxy] = []
        self.factories: list[PeerFactory] = []
        self.clients: list[Peer] = []
        self.proxyPorts: dict[ChaosProxy, int] = {}

    async def server(self, peerClass: type[Peer] = Peer, echo: bool = True) -> PeerFactory:
        factory = PeerFactory(peerClass, echo)
        port = await listenEndpoint().listen(factory)
        self.ports.append(port)
        factory.port = portOf(port)
        self.factories.append(factory)
        return factory

    async def proxy(
        self,
        faults: Faults | None = None,
        seed: int | None = None,
        targetPort: int | None = None,
        peerClass: type[Peer] = Peer,
        echo: bool = True,
    ) -> tuple[ChaosProxy, PeerFactory]:
        """Start a server and a proxy to it (or to C{targetPort})."""
        server = await self.server(peerClass, echo)
        if targetPort is None:
            targetPort = server.port
        proxy = ChaosProxy(
            TCP4ClientEndpoint(getReactor(), LOOPBACK, targetPort),
            faults,
            reactor=getReactor(),
            seed=seed,
        )
        proxy.connections = Recording()
        self.proxyPorts[proxy] = portOf(await proxy.listen(listenEndpoint()))
        self.proxies.append(proxy)
        return proxy, server

    async def connect(
        self,
        proxy: ChaosProxy,
        peerClass: type[Peer] = Peer,
        accepted: bool = True,
        reaching: PeerFactory | None = None,
    ) -> Peer:
        """
        Connect a client to the proxy; unless told it will not be C{accepted},
        wait until the proxy accepted it, and set the client's C{pair}; given
        the server it is C{reaching}, wait until the proxy connected it there.
        """
        endpoint = TCP4ClientEndpoint(getReactor(), LOOPBACK, self.proxyPorts[proxy])
        client = cast(Peer, await endpoint.connect(PeerFactory(peerClass)))
        self.clients.append(client)
        address = client.tcp.getHost()

        def paired() -> bool:
            for pair in cast(Recording, proxy.connections).seen:
                if pair.clientAddress == address:
                    client.pair = pair
                    return True
            return False

        if accepted:
            await waitFor(paired, 5, "the proxy to accept the client", interval=0.001)
        if reaching is not None:
            await _connected(proxy, reaching, proxy.connectionsAccepted)
        return client

    async def stop(self) -> None:
        for proxy in self.proxies:
            proxy.stall(False)
            proxy.resetAll()
            await proxy.stopListening()
        peers = self.clients + [p for f in self.factories for p in f.peers]
        for peer in peers:
            if peer.reason is None and peer.transport is not None:
                peer.tcp.abortConnection()
        for peer in peers:
            if peer.reason is None:
                await within(peer.lost, 5)
        for port in self.ports:
            await maybeDeferred(port.stopListening)
        for proxy in self.proxies:
            for connection in list(proxy.connections):
                await within(connection.whenEnded(), 5)


@asyncYieldFixture
async def harness() -> AsyncIterator[Harness]:
    """Everything a test starts, stopped at the end."""
    h = Harness()
    yield h
    await h.stop()


async def _connected(proxy: ChaosProxy, server: PeerFactory, count: int = 1) -> None:
    """Wait until the proxy has reached the server C{count} times."""
    await waitFor(
        lambda: proxy.connectionsProxied >= count and len(server.peers) >= count,
        5,
        f"{count} connections to be proxied",
    )


async def _roundTrip(client: Peer, data: bytes = b"ping") -> None:
    start = len(client.received)
    client.tcp.write(data)
    received = await client.waitFor(start + len(data))
    assert received[start:] == data


# -- bytes pass through --------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("size", "spec"),
    [
        (MiB, ""),
        (MiB, "fragment=1..1000,delay=0.01"),
        (MiB, "fragment=1000"),
        (16 * 1024, "fragment=1,delay=0.002"),
    ],
)
@ensureDeferred
async def test_bytesPassIntact(harness: Harness, size: int, spec: str) -> None:
    """Random bytes echoed through the proxy come back intact and in order."""
    proxy, server = await harness.proxy(parseFaults(spec + ",seed=1"))
    client = await harness.connect(proxy)
    data = os.urandom(size)
    client.tcp.write(data)
    received = await client.waitFor(size, seconds=50)
    assert received == data
    assert server.peers[0].received == data
    assert proxy.bytesForwarded == {Direction.TO_TARGET: size, Direction.TO_CLIENT: size}
    assert proxy.connections[0].bytesForwarded == proxy.bytesForwarded
    assert client.reason is None


@pytest.mark.timeout(20)
@ensureDeferred
async def test_fragmentWritesSmallPieces(harness: Harness) -> None:
    """With fragment=1 each byte is its own write: the server reads many small chunks."""
    proxy, server = await harness.proxy(echo=False)
    proxy.setFragment(1)
    client = await harness.connect(proxy, reaching=server)
    client.tcp.write(b"x" * 2000)
    received = await server.peers[0].waitFor(2000)
    assert received == b"x" * 2000
    assert len(server.peers[0].chunks) > 200


@pytest.mark.timeout(20)
@ensureDeferred
async def test_delayHoldsBytes(harness: Harness) -> None:
    """setDelay holds bytes in each direction: a round trip takes at least twice the delay."""
    proxy, _ = await harness.proxy()
    client = await harness.connect(proxy)
    await _roundTrip(client)
    proxy.setDelay(0.2)
    start = getReactor().seconds()
    await _roundTrip(client)
    assert getReactor().seconds() - start >= 0.39
    proxy.setDelay(0)
    start = getReactor().seconds()
    await _roundTrip(client)
    assert getReactor().seconds() - start < 0.2


# -- resets, closes, half-closes ------------------------------------------------


@pytest.mark.timeout(20)
@ensureDeferred
async def test_resetAllGivesConnectionLost(harness: Harness) -> None:
    """resetAll sends an RST both ways: client and server see ConnectionLost, not ConnectionDone."""
    proxy, server = await harness.proxy()
    client = await harness.connect(proxy)
    await _roundTrip(client)
    assert client.pair is not None
    ended = client.pair.whenEnded()
    proxy.resetAll()
    clientReason = await within(client.lost, 5)
    serverReason = await within(server.peers[0].lost, 5)
    assert clientReason is ConnectionLost
    assert serverReason is ConnectionLost
    assert proxy.faultsInjected["reset"] == 1
    await within(ended, 5)
    assert proxy.connections == []


@pytest.mark.timeout(20)
@ensureDeferred
async def test_closeAllGivesConnectionDone(harness: Harness) -> None:
    """closeAll sends a FIN both ways: client and server see ConnectionDone."""
    proxy, server = await harness.proxy()
    client = await harness.connect(proxy)
    await _roundTrip(client)
    proxy.closeAll()
    clientReason = await within(client.lost, 5)
    serverReason = await within(server.peers[0].lost, 5)
    assert clientReason is ConnectionDone
    assert serverReason is ConnectionDone
    assert proxy.faultsInjected["close"] == 1


@pytest.mark.timeout(20)
@ensureDeferred
async def test_resetOneConnection(harness: Harness) -> None:
    """Resetting one proxied connection leaves the others working."""
    proxy, server = await harness.proxy()
    first = await harness.connect(proxy)
    second = await harness.connect(proxy)
    await _connected(proxy, server, 2)
    assert [c.number for c in proxy.connections] == [1, 2]
    proxy.connections[0].reset()
    assert await within(first.lost, 5) is ConnectionLost
    await _roundTrip(second)
    assert second.reason is None
    assert [c.number for c in proxy.connections] == [2]


@pytest.mark.timeout(20)
@ensureDeferred
async def test_halfCloseShutsTheClientWriteSide(harness: Harness) -> None:
    """halfClose gives the client an end of file, and the client can still send to the server."""
    proxy, server = await harness.proxy(echo=False)
    client = cast(HalfClosingPeer, await harness.connect(proxy, HalfClosingPeer))
    await _connected(proxy, server)
    proxy.halfClose()
    await within(client.readEnded, 5)
    client.tcp.write(b"still here")
    assert await server.peers[0].waitFor(10) == b"still here"
    assert client.reason is None
    assert server.peers[0].reason is None
    assert proxy.faultsInjected["half-close"] == 1


@pytest.mark.timeout(20)
@ensureDeferred
async def test_halfCloseFromThePeerIsForwarded(harness: Harness) -> None:
    """A client's half-close reaches the server, whose reply and FIN reach the client."""
    proxy, server = await harness.proxy(peerClass=HalfClosingPeer, echo=False)
    client = await harness.connect(proxy, reaching=server)
    target = cast(HalfClosingPeer, server.peers[0])
    client.tcp.write(b"question")
    client.tcp.loseWriteConnection()
    await within(target.readEnded, 5)
    assert target.received == b"question"
    target.tcp.write(b"answer")
    target.tcp.loseConnection()
    reason = await within(client.lost, 5)
    assert client.received == b"answer"
    assert reason is ConnectionDone
    assert proxy.faultsInjected == dict.fromkeys(FAULT_KINDS, 0)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("closer", "abort", "expected"),
    [
        ("client", False, ConnectionDone),
        ("client", True, ConnectionLost),
        ("server", False, ConnectionDone),
        ("server", True, ConnectionLost),
    ],
)
@ensureDeferred
async def test_peerEndIsForwarded(
    harness: Harness, closer: str, abort: bool, expected: type[BaseException]
) -> None:
    """A FIN from one peer reaches the other as a FIN, an RST as an RST, and the pair ends."""
    proxy, server = await harness.proxy()
    client = await harness.connect(proxy)
    await _roundTrip(client)
    assert client.pair is not None
    ended = client.pair.whenEnded()
    first, other = (client, server.peers[0]) if closer == "client" else (server.peers[0], client)
    if abort:
        first.tcp.abortConnection()
    else:
        first.tcp.loseConnection()
    assert await within(other.lost, 5) is expected
    await within(ended, 5)
    assert proxy.connections == []
    assert proxy.faultsInjected == dict.fromkeys(FAULT_KINDS, 0)


@pytest.mark.timeout(20)
@ensureDeferred
async def test_targetRefusedResetsTheClient(harness: Harness) -> None:
    """When the target refuses the connection, the client gets an RST."""
    closed = await harness.server()
    await maybeDeferred(harness.ports.pop().stopListening)
    proxy, _ = await harness.proxy(targetPort=closed.port)
    client = await harness.connect(proxy, accepted=False)
    assert await within(client.lost, 5) is ConnectionLost
    assert proxy.connectionsProxied == 0


# -- stalls and refusals ---------------------------------------------------------


@pytest.mark.timeout(20)
@ensureDeferred
async def test_stallThenResume(harness: Harness) -> None:
    """A stall passes nothing and closes nothing, either way; on resume the held bytes flow."""
    proxy, server = await harness.proxy()
    client = await harness.connect(proxy)
    await _roundTrip(client)
    target = server.peers[0]
    proxy.stall(True)
    client.tcp.write(b"ping")
    target.tcp.write(b"push")
    await elapse(0.3)  # real time in which nothing may pass: the stall is the point
    assert client.received == b"ping"
    assert target.received == b"ping"
    assert client.reason is None and target.reason is None
    assert proxy.connections[0].stalled
    proxy.stall(False)
    assert await client.waitFor(12) == b"pingpushping"
    assert target.received == b"pingping"
    assert proxy.faultsInjected["stall"] == 1


@pytest.mark.timeout(20)
@ensureDeferred
async def test_stallCoversNewConnections(harness: Harness) -> None:
    """A connection accepted while the proxy is stalled passes nothing until resumed."""
    proxy, server = await harness.proxy()
    proxy.stall(True)
    client = await harness.connect(proxy, reaching=server)
    client.tcp.write(b"hello")
    await elapse(0.2)  # real time in which nothing may pass: the stall is the point
    assert server.peers[0].received == b""
    assert client.received == b""
    proxy.stall(False)
    assert await client.waitFor(5) == b"hello"


@pytest.mark.timeout(20)
@ensureDeferred
async def test_acceptNewFalseRefusesConnections(harness: Harness) -> None:
    """While acceptNew(False), a new client is closed at once and never reaches the target."""
    proxy, server = await harness.proxy()
    proxy.acceptNew(False)
    refused = await harness.connect(proxy, accepted=False)
    assert await within(refused.lost, 5) is ConnectionDone
    assert refused.received == b""
    assert server.peers == []
    assert proxy.faultsInjected["refuse"] == 1
    assert proxy.connectionsAccepted == 0
    proxy.acceptNew(True)
    client = await harness.connect(proxy)
    await _roundTrip(client)


# -- automatic faults ------------------------------------------------------------


@pytest.mark.timeout(20)
@ensureDeferred
async def test_resetAfterWindow(harness: Harness) -> None:
    """reset-after=0.03..0.2 resets each connection within the window, at its drawn time."""
    proxy, _ = await harness.proxy(parseFaults("reset-after=0.03..0.2"), seed=11)
    clients = [await harness.connect(proxy) for _ in range(5)]
    drawn = [c.pair.resetAfter for c in clients if c.pair is not None]
    for client, after in zip(clients, drawn, strict=True):
        reason = await within(client.lost, 5)
        assert reason is ConnectionLost
        assert after is not None and 0.03 <= after <= 0.2
        assert client.pair is not None
        lifetime = client.lostAt - client.pair.acceptedAt
        assert after <= lifetime <= after + 0.15
    assert proxy.faultsInjected["reset"] == 5
    assert len(set(drawn)) == 5


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("spec", "expected"), [("reset-after=0", ConnectionLost), ("close-after=0", ConnectionDone)]
)
@ensureDeferred
async def test_faultBeforeTheTargetAnswers(
    harness: Harness, spec: str, expected: type[BaseException]
) -> None:
    """A fault due at once still ends the client as asked, even before the target connected."""
    proxy, _ = await harness.proxy(parseFaults(spec))
    client = await harness.connect(proxy, accepted=False)
    assert await within(client.lost, 5) is expected
    assert client.received == b""
    await waitFor(lambda: not proxy.connections, 5, "the connection to end")
    assert proxy.connections == []


@pytest.mark.timeout(20)
@ensureDeferred
async def test_closeAfterWindow(harness: Harness) -> None:
    """close-after closes the connection cleanly after the drawn time."""
    proxy, _ = await harness.proxy(Faults(closeAfter=(0.05, 0.05)))
    client = await harness.connect(proxy)
    reason = await within(client.lost, 5)
    assert reason is ConnectionDone
    assert client.pair is not None
    assert 0.05 <= client.lostAt - client.pair.acceptedAt <= 0.2


@pytest.mark.timeout(20)
@ensureDeferred
async def test_stallAfterWindow(harness: Harness) -> None:
    """stall-after stalls the connection after the drawn time, without closing it."""
    proxy, _ = await harness.proxy(Faults(stallAfter=(0.05, 0.05)))
    client = await harness.connect(proxy)
    await _roundTrip(client)
    await waitFor(lambda: proxy.connections[0].stalled, 0.15, "the stall")
    client.tcp.write(b"lost?")
    await elapse(0.2)  # real time in which nothing may pass: the stall is the point
    assert client.received == b"ping"
    assert client.reason is None
    proxy.connections[0].stall(False)
    assert await client.waitFor(9) == b"pinglost?"


@pytest.mark.timeout(20)
@ensureDeferred
async def test_resetAfterBytes(harness: Harness) -> None:
    """reset-after-bytes resets the connection once that many bytes were forwarded."""
    proxy, server = await harness.proxy(Faults(resetAfterBytes=10_000), echo=False)
    client = await harness.connect(proxy)
    client.tcp.write(os.urandom(100_000))
    assert await within(client.lost, 5) is ConnectionLost
    assert await within(server.peers[0].lost, 5) is ConnectionLost
    assert proxy.bytesForwarded[Direction.TO_TARGET] == 10_000
    assert len(server.peers[0].received) <= 10_000


@pytest.mark.timeout(20)
@ensureDeferred
async def test_stallAfterBytes(harness: Harness) -> None:
    """stall-after-bytes forwards exactly that many bytes, then nothing, and closes nothing."""
    proxy, server = await harness.proxy(parseFaults("stall-after-bytes=5000"), echo=False)
    client = await harness.connect(proxy, reaching=server)
    data = os.urandom(20_000)
    client.tcp.write(data)
    assert await server.peers[0].waitFor(5000) == data[:5000]
    await elapse(0.2)  # real time in which no byte more may pass
    assert server.peers[0].received == data[:5000]
    assert client.reason is None and server.peers[0].reason is None
    proxy.stall(False)
    assert await server.peers[0].waitFor(20_000) == data


@pytest.mark.timeout(20)
@ensureDeferred
async def test_sameSeedSameResetTimes(harness: Harness) -> None:
    """The same seed draws the same reset times; another seed draws others."""

    async def resetTimes(spec: str, seed: int | None = None) -> list[float | None]:
        proxy, _ = await harness.proxy(parseFaults(spec), seed=seed)
        clients = [await harness.connect(proxy) for _ in range(4)]
        proxy.closeAll()
        return [c.pair.resetAfter for c in clients if c.pair is not None]

    first = await resetTimes("reset-after=30..60,seed=7")
    assert len(first) == 4
    assert first == await resetTimes("reset-after=30..60,seed=7")
    assert first == await resetTimes("reset-after=30..60,delay=0.01,stall-after=50..90", seed=7)
    assert first != await resetTimes("reset-after=30..60", seed=8)


@pytest.mark.timeout(20)
@ensureDeferred
async def test_seedIsLogged(harness: Harness) -> None:
    """Without a seed the proxy picks one, keeps it and logs it with the faults."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        proxy, _ = await harness.proxy(parseFaults("fragment=1..10"))
    finally:
        globalLogPublisher.removeObserver(observer)
    assert isinstance(proxy.seed, int)
    logged = [e for e in events if e.get("seed") == proxy.seed]
    assert len(logged) == 1
    assert logged[0]["faults"] == "fragment=1..10"


# -- backpressure ----------------------------------------------------------------


@implementer(IPushProducer)
class Flood:
    """Writes a pseudo-random stream to a transport as fast as it is allowed."""

    def __init__(self, peer: Peer, limit: int) -> None:
        self.peer = peer
        self.limit = limit
        self.written = 0
        self.paused = False
        self.stopped = False
        self.digest = hashlib.sha256()
        self._chunk = random.Random(3).randbytes(65536)
        peer.tcp.registerProducer(self, True)
        self._write()

    def _write(self) -> None:
        while not (self.paused or self.stopped) and self.written < self.limit:
            self.peer.tcp.write(self._chunk)
            self.digest.update(self._chunk)
            self.written += len(self._chunk)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        if not self.stopped:
            getReactor().callLater(0, self._write)

    def stopProducing(self) -> None:
        self.stopped = True


@pytest.mark.timeout(60)
@ensureDeferred
async def test_slowReaderPausesFastWriter(harness: Harness) -> None:
    """A target that does not read pauses the client through the proxy: nothing piles up."""
    proxy, server = await harness.proxy(peerClass=StubbornPeer, echo=False)
    proxy.setDelay(0.001)
    client = await harness.connect(proxy, reaching=server)
    connection: ProxiedConnection = proxy.connections[0]
    limit = 512 * MiB
    flood = Flood(client, limit)
    stable = 0
    last = -1

    def steady() -> bool:
        """Whether the client has been paused, with nothing forwarded, for
        five samples in a row (one a check, every 50 ms)."""
        nonlocal stable, last
        forwarded = proxy.bytesForwarded[Direction.TO_TARGET]
        stable = stable + 1 if (flood.paused and forwarded == last) else 0
        last = forwarded
        return stable >= 5

    try:
        await waitFor(steady, 15, "the client to stay paused", interval=0.05)
    except AssertionError:
        pass  # the assertions below say what went wrong
    assert flood.paused, "the client was never paused"
    assert stable >= 5, "the proxy kept forwarding to a target that does not read"
    assert flood.written < limit
    assert last < flood.written
    assert connection.bytesHeld[Direction.TO_TARGET] <= proxy.queueLimit + 65536
    flood.stopped = True
    client.tcp.unregisterProducer()
    target = server.peers[0]
    target.tcp.resumeProducing()
    received = await target.waitFor(flood.written, seconds=40)
    assert len(received) == flood.written
    assert hashlib.sha256(received).digest() == flood.digest.digest()


@pytest.mark.timeout(30)
@ensureDeferred
async def test_delayQueueIsBounded(harness: Harness) -> None:
    """Bytes held for a delay never exceed the queue limit: the sender is paused instead."""
    proxy, server = await harness.proxy(echo=False)
    proxy.setDelay(0.05)
    client = await harness.connect(proxy, reaching=server)
    assert client.pair is not None
    flood = Flood(client, 2 * MiB)
    done = server.peers[0].waitFor(flood.limit, seconds=20)
    most = 0

    def delivered() -> bool:
        """Whether everything arrived; samples the bytes held meanwhile."""
        nonlocal most
        assert client.pair is not None
        most = max(most, client.pair.bytesHeld[Direction.TO_TARGET])
        return done.called

    await waitFor(delivered, 25, "the flood to arrive", interval=0.005)
    received = await done
    assert hashlib.sha256(received).digest() == flood.digest.digest()
    assert 0 < most <= proxy.queueLimit + 65536


# -- parseFaults and Faults ------------------------------------------------------


def test_parseFaultsReadsEveryFault() -> None:
    """parseFaults reads every name, windows, ranges and single values."""
    faults = parseFaults(
        " reset-after=0.03..0.2, reset-after-bytes=100,stall-after=1,"
        "stall-after-bytes=5000,close-after=2..3,delay=0.01,fragment=1..1000,seed=7,"
    )
    assert faults == Faults(
        resetAfter=(0.03, 0.2),
        resetAfterBytes=100,
        stallAfter=(1.0, 1.0),
        stallAfterBytes=5000,
        closeAfter=(2.0, 3.0),
        delay=0.01,
        fragment=(1, 1000),
        seed=7,
    )
    assert parseFaults("fragment=1").fragment == 1
    assert parseFaults("") == Faults()


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "delay=0.5",
        "reset-after=0.03..0.2,fragment=1,delay=0.01,stall-after-bytes=5000,seed=7",
        "close-after=1..2,fragment=3..9,reset-after-bytes=4,stall-after=0.25",
    ],
)
def test_toSpecRoundTrips(spec: str) -> None:
    """Faults.toSpec writes what parseFaults reads back to the same faults."""
    faults = parseFaults(spec)
    assert parseFaults(faults.toSpec()) == faults


_KNOWN = (
    "close-after, delay, fragment, reset-after, reset-after-bytes, seed,"
    " stall-after, stall-after-bytes"
)
_WINDOW = "expected SECONDS or MIN..MAX seconds with 0 <= MIN <= MAX"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("foo=1", f'unknown fault "foo" (known: {_KNOWN})'),
        ("delay=0.1,Delay=2", f'unknown fault "Delay" (known: {_KNOWN})'),
        ("delay", 'fault "delay" has no value (write delay=VALUE)'),
        ("delay=1,delay=2", 'fault "delay" is given twice'),
        ("delay=-1", 'bad value "-1" for delay: expected a number of seconds >= 0'),
        ("delay=soon", 'bad value "soon" for delay: expected a number of seconds >= 0'),
        ("delay=nan", 'bad value "nan" for delay: expected a number of seconds >= 0'),
        ("reset-after=0.2..0.1", f'bad value "0.2..0.1" for reset-after: {_WINDOW}'),
        ("stall-after=", f'bad value "" for stall-after: {_WINDOW}'),
        ("close-after=1..inf", f'bad value "1..inf" for close-after: {_WINDOW}'),
        (
            "reset-after-bytes=0",
            'bad value "0" for reset-after-bytes: expected a whole number of bytes >= 1',
        ),
        (
            "stall-after-bytes=1.5",
            'bad value "1.5" for stall-after-bytes: expected a whole number of bytes >= 1',
        ),
        (
            "fragment=0",
            'bad value "0" for fragment: expected a size in bytes >= 1'
            " or MIN..MAX with 1 <= MIN <= MAX",
        ),
        (
            "fragment=10..2",
            'bad value "10..2" for fragment: expected a size in bytes >= 1'
            " or MIN..MAX with 1 <= MIN <= MAX",
        ),
        ("seed=x", 'bad value "x" for seed: expected a whole number'),
    ],
)
def test_parseFaultsErrors(spec: str, message: str) -> None:
    """parseFaults names the bad item in an exact message."""
    with pytest.raises(ValueError) as raised:
        parseFaults(spec)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"resetAfter": (0.2, 0.1)},
            "resetAfter must be (MIN, MAX) seconds with 0 <= MIN <= MAX, not (0.2, 0.1)",
        ),
        ({"delay": -1}, "delay must be a number of seconds >= 0, not -1"),
        ({"stallAfterBytes": 0}, "stallAfterBytes must be a whole number of bytes >= 1, not 0"),
        (
            {"fragment": (0, 5)},
            "fragment must be a size in bytes >= 1 or (MIN, MAX) with 1 <= MIN <= MAX, not (0, 5)",
        ),
        ({"seed": "7"}, "seed must be a whole number, not '7'"),
    ],
)
def test_faultsRejectsBadValues(kwargs: dict[str, Any], message: str) -> None:
    """Faults built in code check their values with the same care."""
    with pytest.raises(ValueError) as raised:
        Faults(**kwargs)
    assert str(raised.value) == message


def test_controlsRejectBadValues() -> None:
    """setDelay and setFragment refuse bad values before changing anything."""
    proxy = ChaosProxy(TCP4ClientEndpoint(getReactor(), LOOPBACK, 1), reactor=getReactor(), seed=1)
    with pytest.raises(ValueError, match="delay must be a number of seconds >= 0"):
        proxy.setDelay(-0.5)
    with pytest.raises(ValueError, match="fragment must be a size in bytes >= 1"):
        proxy.setFragment(0)
    assert proxy.seed == 1
    assert proxy.faultsInjected == dict.fromkeys(FAULT_KINDS, 0)


# -- several targets (in memory, with a Clock) ---------------------------------


@implementer(IStreamClientEndpoint)
class RecordingEndpoint:
    """A client endpoint that records each connection asked of it and
    completes none (the proxy's side stays connecting)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.factories: list[IProtocolFactory] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        self.factories.append(protocolFactory)
        return Deferred()

    def __repr__(self) -> str:
        return f"<endpoint {self.name}>"


@implementer(IStreamServerEndpoint)
class MemoryServerEndpoint:
    """A server endpoint that keeps the factory it is given: the test
    builds the accepted connections itself, on in-memory transports."""

    factory: IProtocolFactory | None = None

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        self.factory = protocolFactory
        return succeed(cast(IListeningPort, object()))


def _acceptInMemory(proxy: ChaosProxy, count: int) -> list[ProxiedConnection]:
    """Have ``proxy`` accept ``count`` connections on in-memory transports."""
    server = MemoryServerEndpoint()
    proxy.listen(server)
    assert server.factory is not None
    for i in range(count):
        side = server.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000 + i))
        assert side is not None
        side.makeConnection(StringTransport())  # type: ignore[no-untyped-call]
    return list(proxy.connections)


def test_severalTargetsEachConnectionToOne() -> None:
    """With three targets each new connection goes to one of them, drawn
    from the seed: all three get about a third, and the proxy and each
    connection say which."""
    targets = [RecordingEndpoint(name) for name in "abc"]
    proxy = ChaosProxy(targets, reactor=Clock(), seed=7)
    connections = _acceptInMemory(proxy, 300)
    assert proxy.targets == tuple(targets)
    assert proxy.connectionsPerTarget == [len(t.factories) for t in targets]
    assert sum(proxy.connectionsPerTarget) == 300
    assert all(70 <= len(t.factories) <= 130 for t in targets), proxy.connectionsPerTarget
    for connection in connections:
        assert connection.targetEndpoint is targets[connection.target]
    assert len({c.target for c in connections[:10]}) > 1


def test_severalTargetsSameSeedSameChoices() -> None:
    """The same seed sends the connections to the same targets, in the same
    order: a run can be replayed."""

    def choices(seed: int) -> list[int]:
        proxy = ChaosProxy([RecordingEndpoint(n) for n in "abc"], reactor=Clock(), seed=seed)
        return [c.target for c in _acceptInMemory(proxy, 50)]

    assert choices(3) == choices(3)
    assert choices(3) != choices(4)


def test_severalTargetsKeepFaultTimes() -> None:
    """Choosing among targets draws after the faults' times: with the same
    seed a connection gets the same reset time with one target or three."""
    faults = Faults(resetAfter=(0.05, 0.3))
    one = ChaosProxy(RecordingEndpoint("a"), faults, reactor=Clock(), seed=11)
    three = ChaosProxy([RecordingEndpoint(n) for n in "abc"], faults, reactor=Clock(), seed=11)
    first = _acceptInMemory(one, 1)[0]
    again = _acceptInMemory(three, 1)[0]
    assert first.resetAfter == again.resetAfter
    assert first.target == 0 and one.connectionsPerTarget == [1]


def test_severalTargetsResetAfterOnTheClock() -> None:
    """Faults apply to connections whatever their target: each is reset
    after its drawn time, by the injected clock."""
    clock = Clock()
    proxy = ChaosProxy(
        [RecordingEndpoint(n) for n in "ab"], Faults(resetAfter=(0.05, 0.3)), clock, seed=5
    )
    connections = _acceptInMemory(proxy, 20)
    times = [c.resetAfter for c in connections]
    assert all(t is not None and 0.05 <= t <= 0.3 for t in times)
    assert {c.target for c in connections} == {0, 1}
    clock.advance(0.15)
    assert proxy.faultsInjected["reset"] == sum(1 for t in times if t is not None and t <= 0.15)
    clock.advance(0.15)
    assert proxy.faultsInjected["reset"] == 20


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ([], "targetEndpoint must be an endpoint or a non-empty list of endpoints, not []"),
        ((), "targetEndpoint must be an endpoint or a non-empty list of endpoints, not ()"),
        (
            [RecordingEndpoint("a"), "127.0.0.1:9000"],
            "targetEndpoint[1] must be an IStreamClientEndpoint, not '127.0.0.1:9000'",
        ),
    ],
)
def test_severalTargetsRejectsBadLists(targets: Any, message: str) -> None:
    """An empty list of targets, or an item that is not a client endpoint,
    is refused with an exact message."""
    with pytest.raises(ValueError) as raised:
        ChaosProxy(targets, reactor=Clock(), seed=1)
    assert str(raised.value) == message
