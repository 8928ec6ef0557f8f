"""
Tests for `twisted_alive._wrapping`: real Twisted protocols, unchanged
(a ``LineReceiver`` chat, an AMP calculator, producers), wrapped on both ends
by `AliveWrappingFactory`, over real loopback sockets and real peer
processes; and a few deterministic ones over ``iosim`` with a ``Clock``.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from support import BuiltProtocols, Processes, getReactor
from twisted.internet import defer, ssl, threads
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IListeningPort,
    IPushProducer,
    ITCPTransport,
    ITransport,
)
from twisted.internet.protocol import (
    ClientFactory,
    Factory,
    Protocol,
    ReconnectingClientFactory,
    connectionDone,
)
from twisted.internet.task import Clock, deferLater
from twisted.protocols import amp
from twisted.protocols.basic import FileSender, LineReceiver
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web import resource, server
from zope.interface import implementer

import twisted
from twisted_alive._mixin import HeartbeatMixin
from twisted_alive._reasons import (
    ConnectionAbortedWithLoss,
    ConnectionDoneWithLoss,
    ConnectionLostWithLoss,
    Loss,
    Reason,
)
from twisted_alive._wrapping import AliveWrappingFactory, AliveWrappingProtocol
from twisted_alive.core.connection import State
from twisted_alive.core.outcomes import QueueFull

_F = TypeVar("_F", bound=Callable[..., Any])
ensureDeferred = cast(Callable[[_F], _F], pytest_twisted.ensureDeferred)

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
INTERVAL = 0.2
MISSES = 3
DEADLINE = INTERVAL * MISSES
KiB = 1024
MiB = 1024 * KiB

T = TypeVar("T")
P = TypeVar("P", bound=Protocol)



def within(d: Deferred[T], seconds: float = 10.0) -> Deferred[T]:
    """``d``, failing with ``TimeoutError`` after ``seconds``."""
    return d.addTimeout(seconds, getReactor())


def sleep(seconds: float) -> Deferred[None]:
    """A Deferred that fires after ``seconds`` on the reactor."""
    return deferLater(getReactor(), seconds, lambda: None)


def lossOf(reason: Failure | None) -> Loss:
    """The `Loss` a wrapped protocol's ``connectionLost`` failure carries."""
    assert reason is not None
    loss = getattr(reason.value, "loss", None)
    assert isinstance(loss, Loss), reason
    return loss


def freePort() -> int:
    """A loopback port that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return cast(int, s.getsockname()[1])


# -- plain Twisted protocols (nothing here knows about twisted_alive) -------------------


class Ending(Protocol):
    """A protocol that records how its connection ended."""

    reason: Failure | None = None

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.ended.callback(None)


class Sink(Ending):
    """Collects every byte; counts ``dataReceived`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.calls = 0
        self.largestCall = 0

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.calls += 1
        self.largestCall = max(self.largestCall, len(data))


class LineEnding(LineReceiver):
    """A ``LineReceiver`` that queues its lines and records how it ended."""

    MAX_LENGTH = 64 * MiB
    reason: Failure | None = None

    def __init__(self) -> None:
        self.lines: DeferredQueue[bytes] = DeferredQueue()
        self.received: list[bytes] = []
        self.ended: Deferred[None] = Deferred()

    def lineReceived(self, line: bytes) -> None:
        self.received.append(line)
        self.lines.put(line)

    def sendLine(self, line: bytes) -> None:
        """Send ``line`` and the delimiter."""
        LineReceiver.sendLine(self, line)  # type: ignore[no-untyped-call]

    def stopReading(self) -> None:
        """Pause reading, the stock ``LineReceiver`` way (``pauseProducing``)."""
        self.pauseProducing()  # type: ignore[no-untyped-call]

    def startReading(self) -> None:
        """Resume reading (``resumeProducing``)."""
        self.resumeProducing()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.ended.callback(None)


class ChatServer(LineEnding):
    """A chat room: a line from one client goes to every other one."""

    factory: ChatFactory

    def connectionMade(self) -> None:
        self.factory.members.append(self)

    def lineReceived(self, line: bytes) -> None:
        super().lineReceived(line)
        for member in self.factory.members:
            if member is not self:
                member.sendLine(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.members.remove(self)
        super().connectionLost(reason)


class Tracking(BuiltProtocols, Factory[Protocol]):
    """A server factory that keeps every protocol it builds."""

    def __init__(self, protocol: Callable[[], Protocol]) -> None:
        BuiltProtocols.__init__(self)
        self.protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        proto = super().buildProtocol(addr)
        assert proto is not None
        return cast(Protocol, self.record(proto))


class ChatFactory(Tracking):
    """The chat room's factory."""

    def __init__(self) -> None:
        super().__init__(ChatServer)
        self.members: list[ChatServer] = []


INTEGER = cast(Callable[[], amp.Argument], amp.Integer)


class Sum(amp.Command):
    """Add two integers."""

    arguments = [(b"a", INTEGER()), (b"b", INTEGER())]
    response = [(b"total", INTEGER())]


class Hang(amp.Command):
    """A command whose answer never comes."""


def callRemote(proto: amp.AMP, command: type[amp.Command], **kw: object) -> Deferred[Any]:
    """``proto.callRemote(command, **kw)``."""
    return cast(Deferred[Any], cast(Any, proto).callRemote(command, **kw))


def flush(pump: iosim.IOPump) -> None:
    """Move bytes both ways until there is nothing left to move."""
    cast(Any, pump).flush()


class Calculator(amp.AMP):
    """An AMP server."""

    @Sum.responder
    def sum(self, a: int, b: int) -> dict[str, int]:
        return {"total": a + b}

    @Hang.responder
    def hang(self) -> Deferred[dict[str, object]]:
        return Deferred()


# -- wrapping ----------------------------------------------------------------------------


class LimitedWrappingFactory(AliveWrappingFactory):
    """An `AliveWrappingFactory` that sets more limits (``maxQueued``,
    ``maxInFlight``...) on each protocol it builds."""

    def __init__(self, wrappedFactory: Factory[Any], limits: dict[str, object], **kw: Any) -> None:
        super().__init__(wrappedFactory, **kw)
        self.limits = limits

    def buildProtocol(self, addr: IAddress | None) -> AliveWrappingProtocol | None:  # type: ignore[override]
        proto = super().buildProtocol(addr)
        if proto is not None:
            for name, value in self.limits.items():
                setattr(proto, name, value)
        return proto


def inner(wrapper: AliveWrappingProtocol, kind: type[P]) -> P:
    """The wrapped protocol of ``wrapper``, checked to be a ``kind``."""
    proto = wrapper.wrappedProtocol
    assert isinstance(proto, kind)
    return proto


def transportOf(proto: Protocol) -> AliveWrappingProtocol:
    """The wrapping protocol a wrapped protocol sees as its transport."""
    transport = proto.transport
    assert isinstance(transport, AliveWrappingProtocol)
    return transport


class Net:
    """Listening ports and wrapping factories of one test; everything is
    aborted and stopped at its end."""

    def __init__(self) -> None:
        self.ports: list[IListeningPort] = []
        self.factories: list[AliveWrappingFactory] = []

    def wrap(
        self, factory: Factory[Any], limits: dict[str, object] | None = None, **kw: Any
    ) -> AliveWrappingFactory:
        """``factory``, wrapped with this module's heartbeat settings."""
        kw.setdefault("heartbeatInterval", INTERVAL)
        kw.setdefault("heartbeatMisses", MISSES)
        if limits:
            wrapping: AliveWrappingFactory = LimitedWrappingFactory(factory, limits, **kw)
        else:
            wrapping = AliveWrappingFactory(factory, **kw)
        self.factories.append(wrapping)
        return wrapping

    def listen(
        self, factory: Factory[Any], limits: dict[str, object] | None = None, **kw: Any
    ) -> int:
        """Listen on 127.0.0.1 with ``factory`` wrapped; the port number."""
        port = getReactor().listenTCP(0, self.wrap(factory, limits, **kw), interface=HOST)
        self.ports.append(port)
        return cast(int, port.getHost().port)

    async def connect(
        self,
        port: int,
        factory: Factory[Any],
        limits: dict[str, object] | None = None,
        **kw: Any,
    ) -> AliveWrappingProtocol:
        """Connect to ``port`` with ``factory`` wrapped; the wrapping protocol,
        once its HELLO exchange is done."""
        endpoint = TCP4ClientEndpoint(getReactor(), HOST, port, timeout=5)
        wrapper = await within(endpoint.connect(self.wrap(factory, limits, **kw)))
        assert isinstance(wrapper, AliveWrappingProtocol)
        await within(wrapper.whenOpened())
        return wrapper

    def cleanUp(self) -> None:
        """Abort every live connection, stop every port."""
        for factory in self.factories:
            for proto in list(factory.protocols):
                if proto.loss is None:
                    proto.transport.abortConnection()
        for port in self.ports:
            port.stopListening()


@pytest.fixture
def net() -> Iterator[Net]:
    """Ports and connections, cleaned up when the test ends."""
    made = Net()
    try:
        yield made
    finally:
        made.cleanUp()


# -- peer processes ------------------------------------------------------------------------

PEER = textwrap.dedent(
    """
    import sys
    from twisted.internet import defer, task
    from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString, wrapClientTLS
    from twisted.internet.protocol import Factory
    from twisted.protocols.basic import LineReceiver
    from twisted_alive._wrapping import AliveWrappingFactory

    class Echo(LineReceiver):
        def connectionMade(self):
            print("CONNECTED", flush=True)

        def lineReceived(self, line):
            self.sendLine(line)

        def connectionLost(self, reason):
            print("LOST", getattr(reason.value, "loss", None), flush=True)
            done.callback(None)

    done = defer.Deferred()

    async def main(reactor, port, interval):
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", int(port), timeout=5)
        wrapping = AliveWrappingFactory(
            Factory.forProtocol(Echo), heartbeatInterval=float(interval)
        )
        await endpoint.connect(wrapping)
        await done

    task.react(lambda reactor, *argv: defer.ensureDeferred(main(reactor, *argv)), sys.argv[1:])
    """
)


class Peers(Processes):
    """Peer processes of one test; killed by process group at its end."""

    def start(self, *args: object) -> subprocess.Popen[str]:
        """Start the wrapped line-echo client `PEER` with ``args``."""
        return self.spawn(sys.executable, "-c", PEER, *args)


@pytest.fixture
def peers() -> Iterator[Peers]:
    """Peer processes, killed by process group when the test ends."""
    started = Peers()
    try:
        yield started
    finally:
        started.killAll()


def readLine(process: subprocess.Popen[str]) -> Deferred[str]:
    """The next line the peer prints (read in a thread)."""
    assert process.stdout is not None
    return within(threads.deferToThread(process.stdout.readline))


# -- the chat: LineReceiver on both ends --------------------------------------------------


@pytest.mark.timeout(20)
@ensureDeferred
async def test_chatBroadcast(net: Net) -> None:
    """A wrapped LineReceiver chat server relays each client's lines to the other clients."""
    room = ChatFactory()
    port = net.listen(room)
    wrappers = [await net.connect(port, Factory.forProtocol(LineEnding)) for _ in range(3)]
    clients = [inner(w, LineEnding) for w in wrappers]
    assert len(room.members) == 3
    for i, client in enumerate(clients):
        client.sendLine(b"hello from %d" % i)
        client.sendLine(b"bye from %d" % i)
    for i, client in enumerate(clients):
        got = [await within(client.lines.get()) for _ in range(4)]
        others = [j for j in range(3) if j != i]
        assert sorted(got) == sorted(
            [b"hello from %d" % j for j in others] + [b"bye from %d" % j for j in others]
        )
        for j in others:  # in order per sender
            assert got.index(b"hello from %d" % j) < got.index(b"bye from %d" % j)
    members = list(room.members)
    for client in clients:
        transportOf(client).loseConnection()
    for client in clients:
        await within(client.ended)
        assert isinstance(client.reason, Failure)
        assert isinstance(client.reason.value, ConnectionDoneWithLoss)
        assert lossOf(client.reason).reason is Reason.LOCAL_CLOSE
    for member in members:
        await within(member.ended)
        assert isinstance(member.reason, Failure)
        assert isinstance(member.reason.value, ConnectionDone)
        assert isinstance(member.reason.value, ConnectionDoneWithLoss)
        assert lossOf(member.reason).reason is Reason.CLEAN_CLOSE
    assert room.members == []


@pytest.mark.timeout(20)
@ensureDeferred
async def test_chatLargeLine(net: Net) -> None:
    """A 3 MiB line crosses the wrapped chat intact, in several DATA frames."""
    room = ChatFactory()
    port = net.listen(room, maxFrameSize=256 * KiB)
    a = inner(await net.connect(port, Factory.forProtocol(LineEnding)), LineEnding)
    b = inner(await net.connect(port, Factory.forProtocol(LineEnding)), LineEnding)
    line = os.urandom(3 * MiB).replace(b"\r\n", b"..")
    a.sendLine(line)
    a.sendLine(b"after")
    assert await within(b.lines.get()) == line
    assert await within(b.lines.get()) == b"after"


# -- AMP on both ends ------------------------------------------------------------------------


@pytest.mark.timeout(40)
@ensureDeferred
async def test_ampPipelinedCalls(net: Net) -> None:
    """A wrapped AMP client gets the right answers to 2000 pipelined calls to a wrapped server."""
    port = net.listen(Factory.forProtocol(Calculator))
    client = inner(await net.connect(port, Factory.forProtocol(amp.AMP)), amp.AMP)
    calls = [callRemote(client, Sum, a=i, b=2 * i) for i in range(2000)]
    # About 1 s on an idle machine; the bound leaves room for a loaded one.
    answers = await within(defer.gatherResults(calls), 30.0)
    assert [a["total"] for a in answers] == [3 * i for i in range(2000)]


@pytest.mark.timeout(20)
@ensureDeferred
async def test_ampPendingCallFailsWithLoss(net: Net) -> None:
    """An AMP call pending when the server aborts fails with a ConnectionLost that carries RESET."""
    servers = Tracking(Calculator)
    port = net.listen(servers)
    client = inner(await net.connect(port, Factory.forProtocol(amp.AMP)), amp.AMP)
    answer = await within(callRemote(client, Sum, a=1, b=2))
    assert answer["total"] == 3
    pending = callRemote(client, Hang)
    await sleep(0.05)
    server = cast(Calculator, await servers.connection())
    cast(ITCPTransport, server.transport).abortConnection()
    outcome = await within(pending.addCallbacks(lambda r: [r], lambda f: [f]))
    failure = outcome[0]
    assert isinstance(failure, Failure)
    assert isinstance(failure.value, ConnectionLost)
    assert lossOf(failure).reason is Reason.RESET


# -- large writes -----------------------------------------------------------------------------


@pytest.mark.timeout(20)
@ensureDeferred
async def test_largeWritesSplitAndReassembled(net: Net) -> None:
    """Writes of several MiB go in frames of at most maxFrameSize and arrive intact, in order."""
    sinks = Tracking(Sink)
    port = net.listen(sinks)
    wrapper = await net.connect(port, Factory.forProtocol(Ending))
    transport = cast(ITransport, inner(wrapper, Ending).transport)
    first, second = os.urandom(8 * MiB), [os.urandom(MiB + 1) for _ in range(3)]
    transport.write(first)
    transport.writeSequence(second)
    transport.loseConnection()
    sink = cast(Sink, await sinks.connection())
    await within(sink.ended)
    expected = first + b"".join(second)
    assert hashlib.sha256(sink.data).digest() == hashlib.sha256(expected).digest()
    maxPayload = wrapper.maxFrameSize - 9
    assert sink.largestCall <= maxPayload
    assert sink.calls >= len(expected) // maxPayload
    assert lossOf(sink.reason).reason is Reason.CLEAN_CLOSE


def test_oneFramePerWrite() -> None:
    """Each small write is one DATA frame: one dataReceived call there, with that write's bytes."""
    clock = Clock()
    sinks = Tracking(Sink)
    serverWrapping = AliveWrappingFactory(sinks)
    clientWrapping = AliveWrappingFactory(Factory.forProtocol(Ending))

    def build(factory: AliveWrappingFactory) -> AliveWrappingProtocol:
        proto = factory.buildProtocol(iosim.FakeAddress())
        assert proto is not None
        proto.clock = clock
        return proto

    client, server, pump = iosim.connectedServerAndClient(
        lambda: build(serverWrapping), lambda: build(clientWrapping), clock=clock
    )
    flush(pump)
    writes = [b"one", b"two", b"three"]
    for data in writes:
        cast(ITransport, inner(client, Ending).transport).write(data)
        flush(pump)
    sink = inner(server, Sink)
    assert sink.calls == 3
    assert bytes(sink.data) == b"onetwothree"


# -- how connections end --------------------------------------------------------------------


class WriteThenClose(Ending):
    """Writes ``payload`` then calls ``loseConnection`` at once, in ``connectionMade``."""

    payload = b""

    def connectionMade(self) -> None:
        transport = cast(ITransport, self.transport)
        transport.write(self.payload)
        transport.loseConnection()


@pytest.mark.timeout(20)
@pytest.mark.parametrize("when", ["connectionMade", "afterHello"])
@ensureDeferred
async def test_loseConnectionSendsQueuedDataFirst(net: Net, when: str) -> None:
    """loseConnection right after a large write: the peer gets every byte, then CLEAN_CLOSE."""
    sinks = Tracking(Sink)
    port = net.listen(sinks)
    payload = os.urandom(5 * MiB)
    if when == "connectionMade":
        factory = Factory.forProtocol(WriteThenClose)
        WriteThenClose.payload = payload
        endpoint = TCP4ClientEndpoint(getReactor(), HOST, port, timeout=5)
        wrapper = await within(endpoint.connect(net.wrap(factory)))
        assert isinstance(wrapper, AliveWrappingProtocol)
        client: Ending = inner(wrapper, WriteThenClose)
    else:
        wrapper = await net.connect(port, Factory.forProtocol(Ending))
        client = inner(wrapper, Ending)
        transport = cast(ITransport, client.transport)
        transport.write(payload)
        transport.loseConnection()
        transport.write(b"dropped: written after loseConnection")
    sink = cast(Sink, await sinks.connection())
    await within(sink.ended)
    await within(client.ended)
    assert bytes(sink.data) == payload
    assert isinstance(sink.reason, Failure)
    assert isinstance(sink.reason.value, ConnectionDoneWithLoss)
    assert lossOf(sink.reason).reason is Reason.CLEAN_CLOSE
    assert isinstance(client.reason, Failure)
    assert isinstance(client.reason.value, ConnectionDoneWithLoss)
    assert lossOf(client.reason).reason is Reason.LOCAL_CLOSE


@pytest.mark.timeout(20)
@ensureDeferred
async def test_abortIsResetThere(net: Net) -> None:
    """abortConnection from a wrapped protocol: LOCAL_CLOSE here, RESET there; ConnectionLost."""
    sinks = Tracking(Sink)
    port = net.listen(sinks)
    client = inner(await net.connect(port, Factory.forProtocol(Ending)), Ending)
    cast(ITransport, client.transport).write(b"some data")
    sink = cast(Sink, await sinks.connection())
    while not sink.data:
        await sleep(0.01)
    cast(ITCPTransport, client.transport).abortConnection()
    await within(client.ended)
    await within(sink.ended)
    assert isinstance(client.reason, Failure)
    assert isinstance(client.reason.value, ConnectionAbortedWithLoss)
    assert not isinstance(client.reason.value, ConnectionDone)
    assert lossOf(client.reason).reason is Reason.LOCAL_CLOSE
    assert isinstance(sink.reason, Failure)
    assert isinstance(sink.reason.value, ConnectionLostWithLoss)
    assert lossOf(sink.reason).reason is Reason.RESET


@pytest.mark.timeout(20)
@ensureDeferred
async def test_killedPeerIsNotCleanClose(net: Net, peers: Peers) -> None:
    """A SIGKILLed wrapped peer is a ConnectionLost with PEER_CLOSED or RESET, not CLEAN_CLOSE."""
    servers = Tracking(LineEnding)
    port = net.listen(servers)
    process = peers.start(port, INTERVAL)
    assert (await readLine(process)).strip() == "CONNECTED"
    server = cast(LineEnding, await servers.connection())
    server.sendLine(b"echo me")
    assert await within(server.lines.get()) == b"echo me"
    os.killpg(process.pid, signal.SIGKILL)
    killedAt = getReactor().seconds()
    await within(server.ended)
    assert getReactor().seconds() - killedAt < DEADLINE  # a FIN, not the heartbeat
    assert isinstance(server.reason, Failure)
    assert isinstance(server.reason.value, ConnectionLostWithLoss)
    # A FIN, or an RST if a heartbeat was unread in the killed peer's socket.
    assert lossOf(server.reason).reason in (Reason.PEER_CLOSED, Reason.RESET)


@pytest.mark.timeout(20)
@ensureDeferred
async def test_stoppedPeerIsTimeout(net: Net, peers: Peers) -> None:
    """A SIGSTOPped wrapped peer is a ConnectionLost carrying TIMEOUT, within its deadline."""
    servers = Tracking(LineEnding)
    port = net.listen(servers)
    process = peers.start(port, INTERVAL)
    assert (await readLine(process)).strip() == "CONNECTED"
    server = cast(LineEnding, await servers.connection())
    server.sendLine(b"echo me")
    assert await within(server.lines.get()) == b"echo me"
    os.killpg(process.pid, signal.SIGSTOP)
    stoppedAt = getReactor().seconds()
    server.sendLine(b"x" * MiB)  # unsent bytes must not hold the timeout back
    await within(server.ended)
    detection = getReactor().seconds() - stoppedAt
    assert DEADLINE - INTERVAL - 0.05 <= detection < DEADLINE + INTERVAL + 0.3
    assert isinstance(server.reason, Failure)
    assert isinstance(server.reason.value, ConnectionLostWithLoss)
    loss = lossOf(server.reason)
    assert loss.reason is Reason.TIMEOUT
    assert server.received == [b"echo me"]


# -- wrapped client factories ------------------------------------------------------------


class RecordingClientFactory(ReconnectingClientFactory):
    """A stock reconnecting client factory that records what it is told."""

    protocol = Ending
    initialDelay = 0.05
    maxDelay = 0.1  # type: ignore[assignment]

    def __init__(self) -> None:
        self.failed: list[Failure] = []
        self.lost: list[Failure] = []
        self.built: list[Ending] = []
        self.events: DeferredQueue[str] = DeferredQueue()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        proto = super().buildProtocol(addr)
        assert isinstance(proto, Ending)
        self.built.append(proto)
        self.events.put("built")
        return proto

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.failed.append(reason)
        self.events.put("failed")
        super().clientConnectionFailed(connector, reason)  # type: ignore[no-untyped-call]

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        self.lost.append(reason)
        self.events.put("lost")
        super().clientConnectionLost(connector, reason)  # type: ignore[no-untyped-call]


@pytest.mark.timeout(20)
@ensureDeferred
async def test_wrappedClientFactoryRefused(net: Net) -> None:
    """A wrapped client factory gets clientConnectionFailed(ConnectionRefusedError)."""
    factory = RecordingClientFactory()
    factory.maxRetries = 0  # type: ignore[assignment]
    connector = getReactor().connectTCP(HOST, freePort(), net.wrap(factory), timeout=5)
    try:
        assert await within(factory.events.get()) == "failed"
    finally:
        factory.stopTrying()  # type: ignore[no-untyped-call]
        connector.disconnect()
    assert isinstance(factory.failed[0].value, ConnectionRefusedError)
    assert factory.built == []


@pytest.mark.timeout(20)
@ensureDeferred
async def test_wrappedClientFactoryLostAndReconnected(net: Net) -> None:
    """A wrapped ReconnectingClientFactory gets the protocol's failure, with .loss; reconnects."""
    sinks = Tracking(Sink)
    port = net.listen(sinks)
    factory = RecordingClientFactory()
    wrapping = net.wrap(factory)
    connector = getReactor().connectTCP(HOST, port, wrapping, timeout=5)
    try:
        assert await within(factory.events.get()) == "built"
        first = cast(Sink, await sinks.connection(0))
        cast(ITCPTransport, first.transport).abortConnection()
        assert await within(factory.events.get()) == "lost"
        assert await within(factory.events.get()) == "built"
        await sinks.connection(1)
    finally:
        factory.stopTrying()  # type: ignore[no-untyped-call]
        connector.disconnect()
    lost = factory.lost[0]
    assert lost is factory.built[0].reason
    assert isinstance(lost.value, ConnectionLostWithLoss)
    assert lossOf(lost).reason is Reason.RESET
    assert len(factory.built) == 2


@pytest.mark.timeout(20)
@ensureDeferred
async def test_wrappedPlainClientFactoryCleanClose(net: Net) -> None:
    """A wrapped ClientFactory gets ConnectionDone with CLEAN_CLOSE when the server closes."""
    sinks = Tracking(Sink)
    port = net.listen(sinks)
    lost: Deferred[Failure] = Deferred()

    class Client(ClientFactory):
        protocol = Ending

        def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
            lost.callback(reason)  # a Failure: the Deferred fails with it

    connector = getReactor().connectTCP(HOST, port, net.wrap(Client()), timeout=5)
    try:
        server = cast(Sink, await sinks.connection())
        await sleep(0.05)
        cast(ITransport, server.transport).loseConnection()
        outcome = await within(lost.addCallbacks(lambda r: [r], lambda f: [f]))
    finally:
        connector.disconnect()
    failure = outcome[0]
    assert isinstance(failure, Failure)
    assert isinstance(failure.value, ConnectionDoneWithLoss)
    assert lossOf(failure).reason is Reason.CLEAN_CLOSE


# -- producers and consumers ---------------------------------------------------------------


@implementer(IPushProducer)
class ChunkProducer:
    """A streaming producer that writes 64 KiB chunks (random, or always
    ``chunk``) for as long as it is not paused, and records the queue of the
    wrapping protocol below it; it closes the connection when done if
    ``close`` is true."""

    chunkSize = 64 * KiB

    def __init__(
        self, proto: Protocol, total: int, chunk: bytes | None = None, close: bool = True
    ) -> None:
        self.proto = proto
        self.remaining = total
        self.chunk = chunk
        self.close = close
        self.digest = hashlib.sha256()
        self.paused = False
        self.pauses = 0
        self.resumes = 0
        self.maxQueued = 0
        self.maxQueuedBytes = 0
        self.maxInFlight = 0
        self.done: Deferred[None] = Deferred()
        self._scheduled = False

    def start(self) -> None:
        transportOf(self.proto).registerProducer(self, True)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            getReactor().callLater(0, self._produce)

    def _produce(self) -> None:
        self._scheduled = False
        wrapper = transportOf(self.proto)
        outbox = wrapper.session.outbox  # type: ignore[union-attr]
        while not self.paused and self.remaining > 0:
            chunk = self.chunk or os.urandom(min(self.chunkSize, self.remaining))
            self.remaining -= len(chunk)
            self.digest.update(chunk)
            wrapper.write(chunk)
            self.maxQueued = max(self.maxQueued, len(outbox.queue))
            self.maxQueuedBytes = max(self.maxQueuedBytes, outbox.queuedBytes)
            self.maxInFlight = max(self.maxInFlight, len(outbox.inflight))
        if self.remaining == 0 and not self.done.called:
            wrapper.unregisterProducer()
            if self.close:
                wrapper.loseConnection()
            self.done.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self.resumes += 1
        self._schedule()

    def stopProducing(self) -> None:
        self.paused = True


@pytest.mark.timeout(30)
@ensureDeferred
async def test_streamingProducerPausedAtHalfQueue(net: Net) -> None:
    """A producer is paused at half the queue limit, then resumed; memory bounded, data intact."""
    sinks = Tracking(Sink)
    port = net.listen(sinks)
    limits: dict[str, object] = {"maxQueued": 32, "maxInFlight": 8}
    wrapper = await net.connect(
        port, Factory.forProtocol(Ending), limits=limits, maxFrameSize=64 * KiB + 9
    )
    producer = ChunkProducer(inner(wrapper, Ending), 24 * MiB)
    producer.start()
    await within(producer.done, 20)
    sink = cast(Sink, await sinks.connection())
    await within(sink.ended, 20)
    assert len(sink.data) == 24 * MiB
    assert hashlib.sha256(sink.data).digest() == producer.digest.digest()
    assert producer.pauses >= 1
    assert producer.resumes >= 1
    assert producer.maxQueued <= 32 // 2
    assert producer.maxQueuedBytes <= (32 // 2) * 64 * KiB
    assert producer.maxInFlight <= 8
    assert lossOf(sink.reason).reason is Reason.CLEAN_CLOSE


@pytest.mark.timeout(30)
@ensureDeferred
async def test_pullProducerFileSender(net: Net) -> None:
    """A non-streaming producer (Twisted's FileSender) is pulled until its file is sent, intact."""
    sinks = Tracking(Sink)
    port = net.listen(sinks)
    wrapper = await net.connect(port, Factory.forProtocol(Ending))
    content = os.urandom(6 * MiB)
    sender = FileSender()
    await within(cast(Any, sender).beginFileTransfer(io.BytesIO(content), wrapper), 20)
    wrapper.loseConnection()
    sink = cast(Sink, await sinks.connection())
    await within(sink.ended)
    assert hashlib.sha256(sink.data).digest() == hashlib.sha256(content).digest()


class PausingLines(LineEnding):
    """Stops reading (``pauseProducing``, the stock LineReceiver way) after
    the first line."""

    def lineReceived(self, line: bytes) -> None:
        super().lineReceived(line)
        if len(self.received) == 1:
            self.stopReading()


@pytest.mark.slow
@pytest.mark.timeout(30)
@ensureDeferred
async def test_pausedReadingBackpressuresPeerAndKeepsHeartbeats(net: Net) -> None:
    """Paused reading: nothing more handed over, sender paused, no timeout, all after resume."""
    limits: dict[str, object] = {"maxQueued": 16, "maxInFlight": 4}
    servers = Tracking(PausingLines)
    port = net.listen(servers, limits=limits)
    wrapper = await net.connect(
        port, Factory.forProtocol(Ending), limits=limits, maxFrameSize=64 * KiB + 9
    )
    line = b"y" * (64 * KiB - 2) + b"\r\n"  # one frame per line
    lines = 100
    producer = ChunkProducer(inner(wrapper, Ending), len(line) * lines, chunk=line, close=False)
    producer.start()
    server = cast(PausingLines, await servers.connection())
    await within(server.lines.get())
    await sleep(3 * DEADLINE)  # paused for several heartbeat deadlines
    assert server.reason is None
    assert wrapper.loss is None
    assert producer.paused
    assert len(server.received) == 1
    serverWrapper = transportOf(server)
    assert len(serverWrapper.session.inbox.pending) <= 4  # type: ignore[union-attr]
    server.startReading()
    await within(producer.done, 20)
    while len(server.received) < lines:
        await within(server.lines.get())
    assert server.received == [line[:-2]] * lines
    assert server.reason is None


# -- other stock protocols and transports ----------------------------------------------------


class Page(resource.Resource):
    """A 300,000-byte page."""

    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        return b"p" * 300_000


@pytest.mark.timeout(20)
@ensureDeferred
async def test_webSitePipelined(net: Net) -> None:
    """A wrapped twisted.web Site answers pipelined requests (it pauses and resumes reading)."""
    site = cast(Any, server.Site)(cast(Any, Page)())  # both untyped in Twisted
    port = net.listen(site)
    wrapper = await net.connect(port, Factory.forProtocol(Sink))
    client = inner(wrapper, Sink)
    request = b"GET /page HTTP/1.1\r\nHost: localhost\r\n\r\n"
    last = b"GET /page HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    cast(ITransport, client.transport).write(request * 3 + last)
    await within(client.ended)
    assert bytes(client.data).count(b"HTTP/1.1 200 OK") == 4
    assert bytes(client.data).count(b"p" * 300_000) == 4
    assert lossOf(client.reason).reason is Reason.CLEAN_CLOSE


@pytest.mark.slow
@pytest.mark.timeout(20)
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@ensureDeferred
async def test_underTls(net: Net) -> None:
    """Wrapping factories given to TLS endpoints run the framing inside TLS."""
    pem = Path(twisted.__file__).parent / "test" / "server.pem"
    sinks = Tracking(Sink)
    endpoint = cast(Any, serverFromString)(getReactor(), f"ssl:0:interface={HOST}:privateKey={pem}")
    listening = await endpoint.listen(net.wrap(sinks))
    net.ports.append(listening)
    tcp = TCP4ClientEndpoint(getReactor(), HOST, listening.getHost().port, timeout=5)
    tls = wrapClientTLS(ssl.CertificateOptions(verify=False), tcp)
    wrapper = await within(tls.connect(net.wrap(Factory.forProtocol(Ending))))
    assert isinstance(wrapper, AliveWrappingProtocol)
    await within(wrapper.whenOpened())
    data = os.urandom(3 * MiB)
    wrapper.write(data)
    wrapper.loseConnection()
    sink = cast(Sink, await sinks.connection())
    await within(sink.ended)
    assert bytes(sink.data) == data
    assert lossOf(sink.reason).reason is Reason.CLEAN_CLOSE


# -- transport pass-through ---------------------------------------------------------------


@pytest.mark.timeout(20)
@ensureDeferred
async def test_transportPassThrough(net: Net) -> None:
    """The wrapped protocol's transport gives the real addresses, socket handle and TCP options."""
    sinks = Tracking(Sink)
    port = net.listen(sinks)
    wrapper = await net.connect(port, Factory.forProtocol(Ending))
    client = inner(wrapper, Ending)
    assert ITCPTransport.providedBy(client.transport)
    transport = cast(Any, client.transport)  # the interfaces of the real transport
    real = cast(Any, wrapper.transport)
    assert transport.getPeer() == real.getPeer()
    assert transport.getHost() == real.getHost()
    handle = transport.getHandle()
    assert handle is real.getHandle()
    assert handle.getpeername()[1] == port
    transport.setTcpNoDelay(True)
    assert transport.getTcpNoDelay()
    server = await sinks.connection()
    assert cast(ITransport, server.transport).getPeer() == real.getHost()


# -- deterministic: the send queue's limit --------------------------------------------------


def pair(
    clock: Clock, **limits: object
) -> tuple[AliveWrappingProtocol, AliveWrappingProtocol, iosim.IOPump]:
    """A wrapped client (with ``limits``) and a wrapped `Sink` server over
    ``iosim``, not yet pumped: the client's HELLO is unanswered."""
    serverWrapping = AliveWrappingFactory(Tracking(Sink))
    clientWrapping = LimitedWrappingFactory(Factory.forProtocol(Ending), limits)

    def build(factory: AliveWrappingFactory) -> AliveWrappingProtocol:
        proto = factory.buildProtocol(iosim.FakeAddress())
        assert proto is not None
        proto.clock = clock
        return proto

    return iosim.connectedServerAndClient(
        lambda: build(serverWrapping), lambda: build(clientWrapping), greet=False, clock=clock
    )


def test_writeBeyondQueueBytesRaises() -> None:
    """A write that would pass maxQueuedBytes raises QueueFull and sends nothing of itself."""
    client, server, pump = pair(Clock(), maxQueuedBytes=200)
    assert client.state is State.HANDSHAKE
    transport = cast(ITransport, inner(client, Ending).transport)
    for _ in range(3):
        transport.write(b"a" * 55)
    with pytest.raises(QueueFull) as raised:
        transport.write(b"b" * 110)
    assert str(raised.value) == (
        "send queue full: 165 bytes waiting to be sent (maxQueuedBytes=200); "
        "nothing of this write of 110 bytes was queued"
    )
    transport.write(b"c" * 35)
    with pytest.raises(QueueFull):
        transport.write(b"d")
    flush(pump)
    sink = inner(server, Sink)
    assert bytes(sink.data) == b"a" * 165 + b"c" * 35
    assert sink.calls == 4


def test_manySmallWritesWaitNotRaise() -> None:
    """More writes than maxQueued wait (maxQueued paces frames, no QueueFull) and all arrive."""
    client, server, pump = pair(Clock(), maxQueued=4, maxInFlight=2)
    transport = cast(ITransport, inner(client, Ending).transport)
    for i in range(50):
        transport.write(b"%d," % i)
    flush(pump)
    sink = inner(server, Sink)
    assert bytes(sink.data) == b"".join(b"%d," % i for i in range(50))
    assert sink.calls == 50


def test_writesBeforeHelloUseThePeersFrameLimit() -> None:
    """Writes made before HELLO are split for the peer's smaller frame limit, not lost."""
    clock = Clock()
    serverWrapping = AliveWrappingFactory(Tracking(Sink), maxFrameSize=1033)
    clientWrapping = AliveWrappingFactory(Factory.forProtocol(Ending))

    def build(factory: AliveWrappingFactory) -> AliveWrappingProtocol:
        proto = factory.buildProtocol(iosim.FakeAddress())
        assert proto is not None
        proto.clock = clock
        return proto

    client, server, pump = iosim.connectedServerAndClient(
        lambda: build(serverWrapping), lambda: build(clientWrapping), greet=False, clock=clock
    )
    data = os.urandom(10_000)
    cast(ITransport, inner(client, Ending).transport).write(data)
    flush(pump)
    sink = inner(server, Sink)
    assert bytes(sink.data) == data
    assert sink.largestCall == 1024
    assert server.loss is None and client.loss is None


@implementer(IPushProducer)
class RecordingProducer:
    """A streaming producer that records the calls it gets."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


def test_producerPausedAtHalfQueueDeterministic() -> None:
    """A producer is paused once maxQueued / 2 writes wait, resumed once they are acknowledged."""
    client, server, pump = pair(Clock(), maxQueued=8)
    producer = RecordingProducer()
    client.registerProducer(producer, True)
    for _ in range(3):
        client.write(b"x")
    assert producer.calls == []
    client.write(b"x")
    assert producer.calls == ["pause"]
    with pytest.raises(RuntimeError):
        client.registerProducer(RecordingProducer(), True)
    flush(pump)
    assert producer.calls == ["pause", "resume"]
    assert bytes(inner(server, Sink).data) == b"xxxx"


def test_producerPausedWhileSocketFull() -> None:
    """A full socket buffer pauses the wrapped producer; room again resumes it."""
    client, server, pump = pair(Clock())
    flush(pump)
    producer = RecordingProducer()
    client.registerProducer(producer, True)
    socketSide = cast(Any, client.transport).producer
    assert socketSide is not client  # the wrapped protocol's pause means "stop reading"
    socketSide.pauseProducing()
    assert producer.calls == ["pause"]
    socketSide.resumeProducing()
    assert producer.calls == ["pause", "resume"]
    client.unregisterProducer()
    socketSide.pauseProducing()
    assert producer.calls == ["pause", "resume"]


def test_pausedReadingHoldsDataUnacknowledged() -> None:
    """While reading is paused, DATA waits unacknowledged; resuming delivers it in order."""
    clock = Clock()
    client, server, pump = pair(clock)
    flush(pump)
    sink = inner(server, Sink)
    transport = cast(ITransport, inner(client, Ending).transport)
    transport.write(b"first")
    flush(pump)
    cast(IPushProducer, sink.transport).pauseProducing()
    transport.write(b"second")
    transport.write(b"third")
    for _ in range(40):  # 20 s: many heartbeat deadlines
        clock.advance(0.5)
        flush(pump)
    assert bytes(sink.data) == b"first"
    outbox = client.session.outbox  # type: ignore[union-attr]
    assert len(outbox) == 2  # unconfirmed
    assert client.loss is None and server.loss is None
    cast(IPushProducer, sink.transport).resumeProducing()
    flush(pump)
    assert bytes(sink.data) == b"firstsecondthird"
    assert len(outbox) == 0


def test_loseConnectionBeforeHelloSendsFirst() -> None:
    """write, loseConnection before HELLO: the data goes first, then GOODBYE (CLEAN_CLOSE there)."""
    client, server, pump = pair(Clock())
    ending = inner(client, Ending)
    transport = cast(ITransport, ending.transport)
    transport.write(b"all of this")
    transport.loseConnection()
    transport.write(b"but not this")
    flush(pump)
    sink = inner(server, Sink)
    assert bytes(sink.data) == b"all of this"
    assert lossOf(sink.reason).reason is Reason.CLEAN_CLOSE
    assert isinstance(cast(Failure, ending.reason).value, ConnectionDoneWithLoss)
    assert lossOf(ending.reason).reason is Reason.LOCAL_CLOSE


def test_mixinDefaults() -> None:
    """The factory's keyword arguments default to HeartbeatMixin's defaults."""
    wrapping = AliveWrappingFactory(Factory())
    assert wrapping.heartbeatInterval == HeartbeatMixin.heartbeatInterval
    assert wrapping.heartbeatMisses == HeartbeatMixin.heartbeatMisses
    proto = AliveWrappingFactory(
        Factory.forProtocol(Ending), heartbeatInterval=1.5, heartbeatMisses=4
    ).buildProtocol(iosim.FakeAddress())
    assert proto is not None
    assert (proto.heartbeatInterval, proto.heartbeatMisses) == (1.5, 4)


def test_refusingFactoryRefuses() -> None:
    """A wrapped factory whose buildProtocol returns None makes the wrapper refuse too."""

    class Refusing(Factory[Protocol]):
        def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
            return None

    assert AliveWrappingFactory(Refusing()).buildProtocol(iosim.FakeAddress()) is None
