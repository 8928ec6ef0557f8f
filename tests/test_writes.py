# mypy: disable-error-code="no-untyped-call"
"""
Tests for how ``HeartbeatMixin`` writes and what it logs per heartbeat:
frames sent while a read is handled leave in one write at its end; that
write (and a heartbeat's) goes straight into the socket of a reactor TCP
connection when nothing waits unsent, without reordering, and a send error
there classifies the loss; ``TCP_NODELAY`` is set unless the class says
not to; and ``pong`` events are logged only when asked for (``logPongs``,
`watchPongs`, a started status site).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import pytest_twisted
from support import BuiltProtocols, getReactor, portOf
from twisted.internet import defer, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from twisted_alive._logs import _pongWatchers, watchPongs
from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Reason
from twisted_alive._transport import canWriteThrough
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    Frame,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encode,
)
from twisted_alive.core.outcomes import Receipt
from twisted_alive.service.status import statusSite
from twisted_alive.testing import FakeLink

HOST = "127.0.0.1"
INTERVAL = 0.2

_TwistedTest = Callable[[Callable[..., Generator[Any, Any, None]]], Callable[..., Any]]
twistedTest: _TwistedTest = pytest_twisted.inlineCallbacks
"""``pytest_twisted.inlineCallbacks``, typed."""



WAIT = 10.0
"""Seconds a real-socket test waits for anything: ``@pytest.mark.timeout``
cannot interrupt the reactor (its main loop logs the exception and runs
on), so each wait is bounded too."""


def bounded(d: Deferred[Any]) -> Deferred[Any]:
    """``d``, failing with ``TimeoutError`` after `WAIT` seconds."""
    return d.addTimeout(WAIT, getReactor())


def peerHello() -> bytes:
    """The bytes of a peer's HELLO (no session: a plain peer)."""
    return encode(Hello(PROTOCOL_VERSION, 0, INTERVAL, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION))


def frames(data: bytes) -> list[Frame]:
    """The frames in ``data``."""
    return FrameDecoder().feed(data)


# -- in-memory transports ---------------------------------------------------------------


class CountingTransport(StringTransport):
    """A ``StringTransport`` that keeps each ``write`` apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


class FakeSocket:
    """
    A socket whose ``send`` records what it took; ``results`` scripts the
    next sends (a byte count to take, or an exception to raise), then it
    takes everything.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.results: list[int | BaseException] = []

    def send(self, data: bytes) -> int:
        taken = len(data)
        if self.results:
            result = self.results.pop(0)
            if isinstance(result, BaseException):
                raise result
            taken = result
        self.sent.append(bytes(data[:taken]))
        return taken


class DirectTransport(CountingTransport):
    """
    A ``CountingTransport`` with the attributes ``_writeNow`` reads off a
    reactor TCP connection, and a `FakeSocket`.
    """

    TLS = False
    _writeDisconnecting = False
    _writeDisconnected = False

    def __init__(self) -> None:
        super().__init__()
        self.socket = FakeSocket()
        self._tempDataLen = 0
        self.dataBuffer = b""
        self.connected = True


class Replier(HeartbeatProtocol):
    """A protocol on a ``Clock`` that can answer each message it receives."""

    heartbeatInterval = INTERVAL

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock
        self.received: list[bytes] = []
        self.reply: Callable[[Replier, bytes], object] | None = None

    def messageReceived(self, payload: bytes) -> None:
        self.received.append(payload)
        if self.reply is not None:
            self.reply(self, payload)


def opened(transport: StringTransport, proto: Replier | None = None) -> Replier:
    """A `Replier` on ``transport``, past the HELLO exchange, its writes so far forgotten."""
    if proto is None:
        proto = Replier(Clock())
    proto.makeConnection(transport)
    proto.dataReceived(peerHello())
    assert proto.whenOpened().called
    transport.clear()
    if isinstance(transport, CountingTransport):
        transport.writes.clear()
    return proto


def direct() -> tuple[Replier, DirectTransport]:
    """A `Replier` on a `DirectTransport` that it writes through, past the HELLO exchange."""
    transport = DirectTransport()
    proto = opened(transport)
    assert proto._alive is not None
    proto._alive.writeThrough = True  # connectionMade decides on the transport's class
    return proto, transport


# -- one write per read ---------------------------------------------------------------


def test_canWriteThroughOnlyReactorTCP() -> None:
    """canWriteThrough is false for in-memory transports; protocols on them do not write through."""
    clock = Clock()
    server, client = Replier(clock), Replier(clock)
    iosim.connect(
        server,
        iosim.FakeTransport(server, isServer=True),
        client,
        iosim.FakeTransport(client, isServer=False),
        clock=clock,
    )
    link = FakeLink(Replier(), Replier())
    onString = opened(StringTransport())
    candidates: list[object] = [
        onString.transport,
        DirectTransport(),
        server.transport,
        link.serverTransport,
        object(),
        None,
    ]
    for transport in candidates:
        assert not canWriteThrough(transport), transport
    for alive in (onString._alive, server._alive, link.server._alive):
        assert alive is not None and not alive.writeThrough


def test_canWriteThroughWantsEveryAttribute() -> None:
    """canWriteThrough is true for a tcp.Connection only with every attribute _writeNow reads."""
    connection = object.__new__(tcp.Connection)  # no __init__: no socket, no _tempDataLen
    assert not canWriteThrough(connection)
    connection.socket = cast(socket.socket, FakeSocket())
    assert not canWriteThrough(connection)
    connection._tempDataLen = 0
    assert canWriteThrough(connection)


def test_replyAndAckInOneWrite() -> None:
    """A reply sent by messageReceived and the ACK leave in one write, reply first."""
    transport = CountingTransport()
    proto = opened(transport)
    proto.reply = lambda p, payload: p.sendMessage(b"re: " + payload)
    proto.dataReceived(encode(Data(1, b"a")))
    assert len(transport.writes) == 1
    assert frames(transport.writes[0]) == [Data(1, b"re: a"), Ack(1)]


def test_burstOfMessagesInOneWrite() -> None:
    """Replies to several messages read at once leave, with one ACK, in one write per read."""
    transport = CountingTransport()
    proto = opened(transport)
    proto.reply = lambda p, payload: p.sendMessage(b"re: " + payload)
    proto.dataReceived(b"".join(encode(Data(seq, b"m%d" % seq)) for seq in (1, 2, 3)))
    proto.dataReceived(b"".join(encode(Data(seq, b"m%d" % seq)) for seq in (4, 5)))
    assert [frames(data) for data in transport.writes] == [
        [Data(1, b"re: m1"), Data(2, b"re: m2"), Data(3, b"re: m3"), Ack(3)],
        [Data(4, b"re: m4"), Data(5, b"re: m5"), Ack(5)],
    ]
    assert proto.received == [b"m1", b"m2", b"m3", b"m4", b"m5"]


def test_sendMessagesDuringReadInOneWrite() -> None:
    """Messages sent together by messageReceived leave with the ACK in the read's one write."""
    transport = CountingTransport()
    proto = opened(transport)
    proto.reply = lambda p, payload: p.sendMessages([payload + b"1", payload + b"2"])
    proto.dataReceived(encode(Data(1, b"x")))
    assert [frames(data) for data in transport.writes] == [[Data(1, b"x1"), Data(2, b"x2"), Ack(1)]]


def test_receiptCallbackSendsInTheReadsWrite() -> None:
    """A message sent by a receipt callback, fired by an ACK read, leaves at the read's end."""
    transport = CountingTransport()
    proto = opened(transport)
    receipts: list[Receipt] = []
    first = proto.sendMessage(b"first")
    assert [frames(data) for data in transport.writes] == [[Data(1, b"first")]]

    def sendNext(receipt: Receipt) -> None:
        receipts.append(receipt)
        proto.sendMessage(b"second")
        proto.sendMessage(b"third")
        assert len(transport.writes) == 1  # held back while the read is handled

    first.addCallback(sendNext)
    proto.dataReceived(encode(Ack(1)))
    assert [r.seq for r in receipts] == [1]
    assert [frames(data) for data in transport.writes[1:]] == [
        [Data(2, b"second"), Data(3, b"third")]
    ]


def test_sendOutsideReadWritesAtOnce() -> None:
    """Outside a read, each sendMessage and sendMessages writes at once."""
    transport = CountingTransport()
    proto = opened(transport)
    proto.sendMessage(b"a")
    proto.sendMessages([b"b", b"c"])
    assert [frames(data) for data in transport.writes] == [
        [Data(1, b"a")],
        [Data(2, b"b"), Data(3, b"c")],
    ]


def test_readingResetAfterError() -> None:
    """An exception out of a read leaves the protocol writing at once again."""

    class Failing(Replier):
        def connectionOpened(self, resumed: bool) -> None:
            raise RuntimeError("boom")

    transport = CountingTransport()
    proto = Failing(Clock())
    proto.makeConnection(transport)
    with pytest.raises(RuntimeError, match="boom"):
        proto.dataReceived(peerHello())
    transport.writes.clear()
    proto.sendMessage(b"after")
    assert [frames(data) for data in transport.writes] == [[Data(1, b"after")]]


# -- writing through ---------------------------------------------------------------------


def test_writeNowSendsStraightToSocket() -> None:
    """With nothing unsent, a read's PONG goes into the socket, not through transport.write."""
    proto, transport = direct()
    proto.dataReceived(encode(Ping(7)))
    assert transport.socket.sent == [encode(Pong(7))]
    assert transport.writes == []


def test_heartbeatWritesThrough() -> None:
    """A PING sent by the heartbeat timer goes into the socket too."""
    proto, transport = direct()
    clock = cast(Clock, proto.clock)
    clock.advance(INTERVAL * 1.01)
    sent = [frame for data in transport.socket.sent for frame in frames(data)]
    assert sent and all(type(frame) is Ping for frame in sent)
    assert transport.writes == []


def test_partialSendRestThroughTransport() -> None:
    """What the socket does not take goes through transport.write, right after what it took."""
    proto, transport = direct()
    transport.socket.results = [5]
    proto.reply = lambda p, payload: p.sendMessage(payload * 100)
    proto.dataReceived(encode(Data(1, b"abc")))
    assert transport.socket.sent[0] == encode(Data(1, b"abc" * 100))[:5]
    assert len(transport.writes) == 1
    assert frames(transport.socket.sent[0] + transport.writes[0]) == [
        Data(1, b"abc" * 100),
        Ack(1),
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_tempDataLen", 5),
        ("dataBuffer", b"unsent"),
        ("connected", False),
        ("disconnecting", True),
        ("TLS", True),
        ("_writeDisconnecting", True),
        ("_writeDisconnected", True),
    ],
)
def test_writeThroughTransportWhenNotClear(name: str, value: object) -> None:
    """With data unsent, TLS, or a closing or closed transport, _writeNow uses transport.write."""
    proto, transport = direct()
    setattr(transport, name, value)
    proto.dataReceived(encode(Ping(7)))
    assert transport.socket.sent == []
    assert transport.writes == [encode(Pong(7))]


def test_noReorderBehindUnsentData() -> None:
    """Once the socket took part of a write, the next read's frames queue behind the rest."""
    proto, transport = direct()
    transport.socket.results = [5]
    proto.dataReceived(encode(Ping(1)))
    # A reactor TCP transport now holds the rest: model what write() does.
    transport._tempDataLen = len(transport.value())
    proto.dataReceived(encode(Ping(2)))
    assert len(transport.socket.sent) == 1
    stream = transport.socket.sent[0] + b"".join(transport.writes)
    assert frames(stream) == [Pong(1), Pong(2)]


@pytest.mark.parametrize(
    ("error", "detail"),
    [
        (
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            "connection reset or socket error (send: Connection reset by peer)",
        ),
        (
            BrokenPipeError(errno.EPIPE, "Broken pipe"),
            "connection reset or socket error (send: Broken pipe)",
        ),
        (OSError("no errno"), "connection reset or socket error (send: no errno)"),
    ],
)
def test_sendErrorIsReset(error: OSError, detail: str) -> None:
    """A send error on the direct path makes the loss RESET, even if the close then looks clean."""
    proto, transport = direct()
    transport.socket.results = [error]
    proto.dataReceived(encode(Ping(7)))
    assert transport.writes == [encode(Pong(7))]  # Twisted meets the error again
    assert proto.loss is None
    transport.loseConnection()
    proto.connectionLost(Failure(ConnectionDone("Connection done")))
    assert proto.loss is not None
    assert proto.loss.reason is Reason.RESET
    assert proto.loss.detail == detail
    assert proto.loss.detail.startswith("connection reset or socket error (send:")


@pytest.mark.parametrize(
    "error",
    [
        BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"),
        OSError(errno.ENOBUFS, "No buffer space available"),
    ],
    ids=["EAGAIN", "ENOBUFS"],
)
def test_sendWouldBlockFallsBack(error: OSError) -> None:
    """A send that would block (or ENOBUFS) hands all to transport.write and blames nobody."""
    proto, transport = direct()
    transport.socket.results = [error]
    failed: list[Failure] = []
    proto.reply = lambda p, payload: p.sendMessage(payload).addErrback(failed.append)
    proto.dataReceived(encode(Data(1, b"echo")))
    assert transport.socket.sent == []
    assert [frames(data) for data in transport.writes] == [[Data(1, b"echo"), Ack(1)]]
    transport.loseConnection()
    proto.connectionLost(Failure(ConnectionDone("Connection done")))
    assert proto.loss is not None
    assert proto.loss.reason is Reason.LOCAL_CLOSE
    assert proto.loss.detail == "closed by this side"
    assert len(failed) == 1  # the echo was never confirmed


# -- real loopback ------------------------------------------------------------------------


class Ends(BuiltProtocols, Factory):
    """A server factory that keeps the protocols it builds."""

    def __init__(self, protocol: type[HeartbeatProtocol]) -> None:
        BuiltProtocols.__init__(self)
        self.protocol = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self.record(super().buildProtocol(addr))


@dataclass
class Loopback:
    """Two protocols connected over loopback TCP, both past the HELLO exchange."""

    port: IListeningPort
    server: Any
    client: Any

    def close(self) -> Deferred[object]:
        """Abort both ends and stop listening."""
        waits: list[Deferred[Any]] = []
        for proto in (self.server, self.client):
            waits.append(proto.whenLost())
            if proto.loss is None:
                proto.transport.abortConnection()
        waits.append(defer.maybeDeferred(self.port.stopListening))
        return cast("Deferred[object]", defer.gatherResults(waits))


@defer.inlineCallbacks
def loopback(
    serverClass: type[HeartbeatProtocol],
    clientClass: type[HeartbeatProtocol],
) -> Generator[Deferred[Any], Any, Loopback]:
    """Connect a ``serverClass`` to a ``clientClass`` on 127.0.0.1 and open them."""
    factory = Ends(serverClass)
    port = cast(IListeningPort, getReactor().listenTCP(0, factory, interface=HOST))
    client = clientClass()
    endpoint = TCP4ClientEndpoint(getReactor(), HOST, portOf(port), timeout=5)
    try:
        yield bounded(connectProtocol(endpoint, client))
        server = yield bounded(factory.connection(0))
        yield bounded(defer.gatherResults([server.whenOpened(), client.whenOpened()]))
    except BaseException:
        for proto in [*factory.built, client]:
            if proto.transport is not None and proto.loss is None:
                proto.transport.abortConnection()
        yield defer.maybeDeferred(port.stopListening)
        raise
    return Loopback(port, server, client)


class Collector(HeartbeatProtocol):
    """Records the messages it receives."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def messageReceived(self, payload: bytes) -> None:
        self.received.append(payload)


MESSAGES = 50
SIZE = 60 * 1024


def bulk(tag: bytes, index: int) -> bytes:
    """A large message that says which it is at both ends."""
    head = b"%s-%04d|" % (tag, index)
    return head + bytes([index % 251]) * (SIZE - 2 * len(head)) + head


def unsent(transport: Any) -> int:
    """Bytes a reactor TCP transport holds unsent."""
    return int(transport._tempDataLen) + len(transport.dataBuffer) - int(transport.offset)


class BulkReplier(Collector):
    """
    Answers each request with `MESSAGES` messages of `SIZE` bytes; records
    how much its transport held unsent before and after each read.
    """

    def __init__(self) -> None:
        super().__init__()
        self.receipts: list[Deferred[Receipt]] = []
        self.before: list[int] = []
        self.after: list[int] = []
        self.reads: list[Deferred[None]] = []

    def messageReceived(self, payload: bytes) -> None:
        super().messageReceived(payload)
        count = MESSAGES if payload == b"go" else 5
        for index in range(count):
            self.receipts.append(self.sendMessage(bulk(payload, index)))

    def dataReceived(self, data: bytes) -> None:
        self.before.append(unsent(self.transport))
        super().dataReceived(data)
        self.after.append(unsent(self.transport))
        if self.received and self.reads:
            self.reads.pop(0).callback(None)

    def nextRead(self) -> Deferred[None]:
        """Fires after the next read that saw a message."""
        d: Deferred[None] = Deferred()
        self.reads.append(d)
        return d


@pytest.mark.timeout(20)
@twistedTest
def test_canWriteThroughLoopback() -> Generator[Deferred[Any], Any, None]:
    """Both ends of a reactor TCP connection can be written through, and are."""
    pair = yield loopback(Collector, Collector)
    try:
        for proto in (pair.server, pair.client):
            assert canWriteThrough(proto.transport)
            assert proto._alive.writeThrough
        d = pair.client.sendMessage(b"hello")
        receipt = yield bounded(d)
        assert receipt.seq == 1
        assert pair.server.received == [b"hello"]
    finally:
        yield bounded(pair.close())


@pytest.mark.timeout(30)
@twistedTest
def test_partialDirectSendsKeepOrder() -> Generator[Deferred[Any], Any, None]:
    """Large replies the socket takes only in part arrive intact, in order, and are confirmed."""
    pair = yield loopback(BulkReplier, Collector)
    server = cast(BulkReplier, pair.server)
    client = cast(Collector, pair.client)
    try:
        server.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # Bounded whatever the system's default (smaller ones slow loopback down a lot).
        client.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.transport.pauseProducing()  # the client stops reading
        read = server.nextRead()
        client.sendMessage(b"go")
        yield bounded(read)
        # The burst went partly into the socket, the rest into the transport.
        burst = sum(len(encode(Data(i + 1, bulk(b"go", i)))) for i in range(MESSAGES))
        assert server.before[-1] == 0
        assert 0 < server.after[-1] < burst
        # A second request while bytes wait unsent: its replies queue behind them.
        read = server.nextRead()
        client.sendMessage(b"again")
        yield bounded(read)
        assert server.before[-1] > 0
        client.transport.resumeProducing()
        receipts = yield bounded(defer.gatherResults(server.receipts))
        assert [r.seq for r in receipts] == list(range(1, MESSAGES + 5 + 1))
        expected = [bulk(b"go", i) for i in range(MESSAGES)] + [bulk(b"again", i) for i in range(5)]
        assert len(client.received) == len(expected)
        assert client.received == expected
        assert server.received == [b"go", b"again"]
    finally:
        yield bounded(pair.close())


# -- TCP_NODELAY -------------------------------------------------------------------------


class Delaying(Collector):
    """Leaves Nagle's algorithm on."""

    tcpNoDelay = False


@pytest.mark.timeout(20)
@twistedTest
def test_tcpNoDelayOnBothEnds() -> Generator[Deferred[Any], Any, None]:
    """Both ends of a HeartbeatProtocol connection have TCP_NODELAY set."""
    pair = yield loopback(Collector, Collector)
    try:
        for proto in (pair.server, pair.client):
            assert proto.transport.getTcpNoDelay()
            handle = proto.transport.getHandle()
            assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        yield bounded(pair.close())


@pytest.mark.timeout(20)
@twistedTest
def test_tcpNoDelayFalseLeavesItOff() -> Generator[Deferred[Any], Any, None]:
    """A class with tcpNoDelay = False leaves TCP_NODELAY off."""
    pair = yield loopback(Delaying, Delaying)
    try:
        for proto in (pair.server, pair.client):
            assert not proto.transport.getTcpNoDelay()
    finally:
        yield bounded(pair.close())


def test_tcpNoDelayWithoutSupport() -> None:
    """A transport without setTcpNoDelay, or one that fails at it, still connects."""

    class Refusing(StringTransport):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[bool] = []

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.calls.append(enabled)
            raise OSError(errno.EINVAL, "Invalid argument")

    plain = StringTransport()
    assert not hasattr(plain, "setTcpNoDelay")
    opened(plain)
    refusing = Refusing()
    proto = opened(refusing)
    assert refusing.calls == [True]
    assert proto.loss is None
    delaying = Refusing()
    quiet = Replier(Clock())
    quiet.tcpNoDelay = False
    opened(delaying, quiet)
    assert delaying.calls == []


# -- pong events -------------------------------------------------------------------------


@implementer(ILogObserver)
class Pongs:
    """The ``pong`` events of the ``twisted_alive`` log namespace."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "twisted_alive" and event.get("event") == "pong":
            self.events.append(event)


@pytest.fixture
def pongs() -> Iterator[Pongs]:
    """The pong events logged while the test runs."""
    observer = Pongs()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


class Ponged(HeartbeatProtocol):
    """Counts the PONG frames it receives."""

    heartbeatInterval = INTERVAL

    def __init__(self) -> None:
        self.pongs = 0
        self._decoder = FrameDecoder()

    def dataReceived(self, data: bytes) -> None:
        self.pongs += sum(type(frame) is Pong for frame in self._decoder.feed(data))
        super().dataReceived(data)


class LoudPonged(Ponged):
    """Logs its pongs."""

    logPongs = True


def heartbeats(
    server: Ponged, client: Ponged, seconds: float = INTERVAL * 10
) -> FakeLink[Ponged, Ponged]:
    """Run a FakeLink between ``server`` and ``client`` for ``seconds`` of idle heartbeats."""
    link = FakeLink(server, client)
    link.advance(seconds)
    assert server.pongs + client.pongs > 0
    return link


def test_noPongEventsByDefault(pongs: Pongs) -> None:
    """With logPongs off and no status site, heartbeat round trips log no pong event."""
    assert _pongWatchers[0] == 0
    server, client = Ponged(), Ponged()
    heartbeats(server, client)
    assert pongs.events == []


def test_logPongsLogsEveryPong(pongs: Pongs) -> None:
    """With logPongs on, a protocol logs a debug pong event, with its rtt, per PONG received."""
    server, client = Ponged(), LoudPonged()
    link = heartbeats(server, client)
    assert client.pongs > 0
    assert len(pongs.events) == client.pongs
    for event in pongs.events:
        assert event["log_level"] is LogLevel.debug
        assert type(event["rtt"]) is float and event["rtt"] >= 0.0
        assert event["peer"] == describe(link.clientTransport.getPeer())


def describe(address: IPv4Address) -> str:
    """``host:port``."""
    return f"{address.host}:{address.port}"


def test_watchPongsTurnsEventsOnAndOff(pongs: Pongs) -> None:
    """watchPongs(True) makes every connection log its pongs; watchPongs(False) stops it."""
    server, client = Ponged(), Ponged()
    link = FakeLink(server, client)
    link.advance(INTERVAL * 5)
    assert server.pongs + client.pongs > 0
    assert pongs.events == []
    before = server.pongs + client.pongs
    watchPongs(True)
    try:
        link.advance(INTERVAL * 10)
        assert len(pongs.events) == server.pongs + client.pongs - before > 0
    finally:
        watchPongs(False)
    seen = len(pongs.events)
    before = server.pongs + client.pongs
    link.advance(INTERVAL * 10)
    assert server.pongs + client.pongs > before
    assert len(pongs.events) == seen


def test_statusSiteWatchesPongsWhileStarted(pongs: Pongs) -> None:
    """A started status site is a pong watcher fed by the pongs until it stops."""
    before = _pongWatchers[0]
    first, second = statusSite([]), statusSite([])
    for site in (first, second):
        site.reactor = Clock()
    first.doStart()
    try:
        assert _pongWatchers[0] == before + 1
        second.doStart()
        try:
            assert _pongWatchers[0] == before + 2
        finally:
            second.doStop()
        assert _pongWatchers[0] == before + 1
        server, client = Ponged(), Ponged()
        heartbeats(server, client)
        total = server.pongs + client.pongs
        assert len(pongs.events) == total
        count = first.registry.get_sample_value("twisted_alive_heartbeat_rtt_seconds_count")
        assert count == total
    finally:
        first.doStop()
    assert _pongWatchers[0] == before
    seen = len(pongs.events)
    heartbeats(Ponged(), Ponged())
    assert len(pongs.events) == seen


@pytest.mark.timeout(20)
@twistedTest
def test_listeningStatusSiteWatchesPongs() -> Generator[Deferred[Any], Any, None]:
    """A status site listening on loopback counts as a pong watcher until it stops listening."""
    before = _pongWatchers[0]
    site = statusSite([])
    port = cast(IListeningPort, getReactor().listenTCP(0, site, interface=HOST))
    try:
        assert _pongWatchers[0] == before + 1
    finally:
        yield bounded(defer.maybeDeferred(port.stopListening))
    assert _pongWatchers[0] == before


def test_unbalancedReleaseKeepsPongsOff(pongs: Pongs) -> None:
    """A release without a matching request (a site stopped twice) does not turn pong events on."""
    before = _pongWatchers[0]
    watchPongs(False)
    try:
        heartbeats(Ponged(), Ponged())
        assert pongs.events == []
    finally:
        _pongWatchers[0] = before
