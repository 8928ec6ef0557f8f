"""
Wire rules of ``docs/protocol.md`` seen from a raw client over real
loopback sockets: how a server answers a peer that breaks the protocol (the
frames before the bad one are processed and acknowledged, and a PING
answered, before the GOODBYE, which comes at once), how the deadline abort
and a session takeover look on the wire (an RST, no GOODBYE), and which
GOODBYE codes end a session.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from support import ensureDeferred, getReactor, tcp, waitFor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from twisted_alive import AliveServerFactory, HeartbeatProtocol
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    HELLO_ASSIGNED,
    HELLO_RESUMED,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    FrameDecoder,
    Goodbye,
    GoodbyeCode,
    Hello,
    Ping,
    Pong,
    encode,
    encodeData,
)

HOST = "127.0.0.1"


class Sink(HeartbeatProtocol):
    """Keeps what it processes; a window of 4."""

    maxInFlight = 4
    processed: list[bytes]

    def connectionMade(self) -> None:
        self.processed = []
        super().connectionMade()

    def messageReceived(self, payload: bytes) -> None:
        self.processed.append(payload)


class Raw(Protocol):
    """A raw client: writes given bytes at once, keeps what comes back until the close."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.closed: Deferred[None] = Deferred()
        self.goodbyeAt: float | None = None
        self.sentAt = 0.0

    def connectionMade(self) -> None:
        self.sentAt = time.monotonic()
        tcp(self).write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.goodbyeAt is None and b"\x06\x00\x03" in self.received:
            self.goodbyeAt = time.monotonic()

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.closed.callback(None)

    def frames(self) -> list[Any]:
        """Every frame received so far."""
        return FrameDecoder().feed(self.received)


def clientHello(window: int = 1024, token: bytes = NO_SESSION, interval: float = 5.0) -> bytes:
    """A client's HELLO (a new session unless ``token`` is given)."""
    return encode(
        Hello(PROTOCOL_VERSION, 0, interval, DEFAULT_MAX_FRAME_SIZE, window, 1, token, 99)
    )


async def exchange(data: bytes) -> tuple[Raw, list[Any], list[Sink]]:
    """Send ``data`` to a server of `Sink`; the frames it answered, and its protocols."""
    reactor = getReactor()
    built: list[Sink] = []

    class Factory(AliveServerFactory):
        protocol = Sink

        def buildProtocol(self, addr: Any) -> Any:
            proto = super().buildProtocol(addr)
            built.append(proto)
            return proto

    port = reactor.listenTCP(0, Factory(), interface=HOST)
    try:
        raw = Raw(data)
        await connectProtocol(TCP4ClientEndpoint(reactor, HOST, port.getHost().port), raw)  # type: ignore[no-untyped-call]
        await raw.closed
    finally:
        await port.stopListening()
    frames = FrameDecoder().feed(raw.received)
    return raw, frames, built


@pytest.mark.timeout(20)
@ensureDeferred
async def test_framesBeforeBadFrameAcknowledgedFirst() -> None:
    """DATA 1, a PING, then garbage in one read: PONG and ACK 1 go out before the GOODBYE."""
    data = clientHello() + encodeData(1, b"first") + encode(Ping(5)) + b"\xff" * 8
    raw, frames, built = await exchange(data)
    assert isinstance(frames[0], Hello)
    assert frames[1:] == [
        Pong(5),
        Ack(1),
        Goodbye(
            GoodbyeCode.PROTOCOL_ERROR,
            "frame of 4294967295 bytes exceeds the maximum of 1048576 bytes",
        ),
    ]
    assert built[0].processed == [b"first"]


@pytest.mark.timeout(20)
@ensureDeferred
async def test_windowOverrunAnsweredAtOnce() -> None:
    """Five DATA against a window of four: the four are processed and acknowledged, then GOODBYE."""
    data = clientHello() + b"".join(encodeData(seq, b"m%d" % seq) for seq in range(1, 6))
    raw, frames, built = await exchange(data)
    assert frames[1:] == [
        Ack(4),
        Goodbye(
            GoodbyeCode.PROTOCOL_ERROR, "peer exceeded the window of 4 unacknowledged messages"
        ),
    ]
    assert built[0].processed == [b"m1", b"m2", b"m3", b"m4"]
    assert raw.goodbyeAt is not None
    assert raw.goodbyeAt - raw.sentAt < 1.0


class Short(Sink):
    """A server end with a 0.1 s x 3 deadline."""

    heartbeatInterval = 0.1


async def rawClient(port: int, data: bytes) -> Raw:
    """A connected `Raw` client that sent ``data``."""
    raw = Raw(data)
    await connectProtocol(TCP4ClientEndpoint(getReactor(), HOST, port), raw)  # type: ignore[no-untyped-call]
    return raw


async def assignedToken(raw: Raw) -> bytes:
    """The token of the server's HELLO to ``raw``."""
    await waitFor(lambda: bool(raw.frames()))
    hello = raw.frames()[0]
    assert isinstance(hello, Hello) and hello.flags & HELLO_ASSIGNED
    return hello.session


def listen(protocol: type[Sink]) -> Any:
    """An `AliveServerFactory` of ``protocol`` listening on 127.0.0.1."""
    factory = AliveServerFactory.forProtocol(protocol)
    return getReactor().listenTCP(0, factory, interface=HOST)


@pytest.mark.timeout(20)
@ensureDeferred
async def test_deadlineAbortIsReset() -> None:
    """A client that goes silent after HELLO is aborted at the deadline: an RST, no GOODBYE."""
    port = listen(Short)
    try:
        # It announces 0.1 s, so the server's deadline for it is 0.3 s.
        raw = await rawClient(port.getHost().port, clientHello(interval=0.1))
        await raw.closed
    finally:
        await port.stopListening()
    assert raw.reason.check(ConnectionLost) and not raw.reason.check(ConnectionDone)  # type: ignore[no-untyped-call]
    frames = raw.frames()
    assert isinstance(frames[0], Hello)
    assert not [f for f in frames if isinstance(f, Goodbye)]


@pytest.mark.timeout(20)
@ensureDeferred
async def test_takeoverResetsOldConnection() -> None:
    """A client resuming while its old connection is open: the old one gets an RST, no GOODBYE."""
    port = listen(Sink)
    try:
        first = await rawClient(port.getHost().port, clientHello())
        token = await assignedToken(first)
        second = await rawClient(port.getHost().port, clientHello(token=token))
        await first.closed
        await waitFor(lambda: bool(second.frames()))
        resumed = second.frames()[0]
        tcp(second).abortConnection()
        await second.closed
    finally:
        await port.stopListening()
    assert first.reason.check(ConnectionLost) and not first.reason.check(ConnectionDone)  # type: ignore[no-untyped-call]
    assert [type(f) for f in first.frames()] == [Hello]
    assert isinstance(resumed, Hello) and resumed.flags & HELLO_RESUMED


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "code,ends",
    [
        (GoodbyeCode.NORMAL, True),
        (GoodbyeCode.SHUTTING_DOWN, True),
        (GoodbyeCode.GO_AWAY, True),
        (GoodbyeCode.PROTOCOL_ERROR, False),
    ],
)
@ensureDeferred
async def test_whichGoodbyeEndsSession(code: GoodbyeCode, ends: bool) -> None:
    """A client's NORMAL, SHUTTING_DOWN and GO_AWAY end its session; PROTOCOL_ERROR does not."""
    port = listen(Sink)
    try:
        first = await rawClient(port.getHost().port, clientHello())
        token = await assignedToken(first)
        tcp(first).write(encode(Goodbye(code, "bye")))
        tcp(first).loseConnection()
        await first.closed
        second = await rawClient(port.getHost().port, clientHello(token=token))
        await waitFor(lambda: bool(second.frames()))
        answer = second.frames()[0]
        tcp(second).abortConnection()
        await second.closed
    finally:
        await port.stopListening()
    if ends:
        assert isinstance(answer, Goodbye) and answer.code is GoodbyeCode.SESSION_UNKNOWN
    else:
        assert isinstance(answer, Hello) and answer.flags & HELLO_RESUMED
