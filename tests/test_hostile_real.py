"""
Hostile peers over real loopback sockets: a PING-flooding non-reader, a
non-reader that makes an echo server pile up replies, and a flood of
messages the application fails on. Server and hostile client run in this
process, on the reactor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from typing import Any, cast

import pytest_twisted
from support import BuiltProtocols, LogEvents, elapse, getReactor, listeningOn, tcp
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel

from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Loss, Reason
from twisted_alive.core.frames import NO_SESSION, PROTOCOL_VERSION, Data, Hello, Ping, encode
from twisted_alive.core.rejections import rejectionsTotal

_TwistedTest = Callable[[Callable[..., Generator[Any, Any, None]]], Callable[..., Any]]
twistedTest: _TwistedTest = pytest_twisted.inlineCallbacks
"""``pytest_twisted.inlineCallbacks``, typed."""

CLIENT_INTERVAL = 0.2
DEADLINE = CLIENT_INTERVAL * 3


def rss() -> int:
    """This process's resident set size in bytes (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Server(HeartbeatProtocol):
    """Echoes every message (or fails on it, with ``fail``); records its loss."""

    heartbeatInterval = 0.5
    fail = False

    def __init__(self) -> None:
        self.lost: Deferred[Loss] = Deferred()
        self.received = 0

    def messageReceived(self, payload: bytes) -> None:
        self.received += 1
        if self.fail:
            raise RuntimeError("refused by the application")
        self.sendMessage(payload).addErrback(lambda _: None)

    def disconnected(self, loss: Loss) -> None:
        self.lost.callback(loss)


class Servers(BuiltProtocols, Factory):
    """Builds `Server` protocols, with ``attributes`` set, and keeps them."""

    def __init__(self, **attributes: object) -> None:
        BuiltProtocols.__init__(self)
        self.attributes = attributes

    def buildProtocol(self, addr: object) -> Server:
        proto = Server()
        for name, value in self.attributes.items():
            setattr(proto, name, value)
        proto.factory = self
        return self.record(proto)  # type: ignore[no-any-return]


class NonReader(Protocol):
    """
    A hostile client: never reads (its transport is paused at once), sends
    a HELLO announcing `CLIENT_INTERVAL`, then ``burst`` (bytes written at
    once), then keeps writing ``repeat`` every ``every`` seconds.
    """

    def __init__(self, burst: bytes, repeat: bytes = b"", every: float = 0.0) -> None:
        self.burst = burst
        self.repeat = repeat
        self.every = every
        self.loop: LoopingCall | None = None

    def connectionMade(self) -> None:
        tcp(self).pauseProducing()
        hello = Hello(PROTOCOL_VERSION, 0, CLIENT_INTERVAL, 1_048_576, 1024, 1, NO_SESSION)
        tcp(self).write(encode(hello) + self.burst)
        if self.repeat:
            self.loop = LoopingCall(tcp(self).write, self.repeat)
            self.loop.clock = getReactor()
            self.loop.start(self.every, now=False)

    def connectionLost(self, reason: object = None) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()


def connectTo(port: int, proto: Protocol) -> Deferred[Protocol]:
    """Connect ``proto`` to 127.0.0.1:``port``."""
    endpoint = TCP4ClientEndpoint(getReactor(), "127.0.0.1", port)
    return cast(Deferred[Protocol], connectProtocol(endpoint, proto))  # type: ignore[no-untyped-call]


@twistedTest
def test_pingFloodingNonReaderDroppedAndRssFlat() -> Generator[Any, Any, None]:
    """A client flooding PINGs (1,000 per millisecond) without reading is dropped within
    its deadline, and the server process's RSS grows by less than 2 MiB."""
    factory = Servers()
    flood = encode(Ping(7)) * 1000
    before = rss()
    with listeningOn(factory) as port:
        start = time.monotonic()
        client = NonReader(flood, flood, 0.001)
        yield connectTo(port, client)
        server = yield factory.connection()
        loss = yield server.lost
        elapsed = time.monotonic() - start
    assert loss.reason is Reason.PROTOCOL_ERROR
    assert loss.detail == "too many PINGs: at most 16 per heartbeat interval (0.2 s) are allowed"
    assert elapsed < DEADLINE
    assert rss() - before < 2 * 1048576
    tcp(client).abortConnection()


@twistedTest
def test_nonReaderOfEchoesAborted() -> Generator[Any, Any, None]:
    """A client that sends 32 MiB to an echo server and PINGs at the allowed rate but never
    reads is aborted once the server's transport took nothing for the deadline: TIMEOUT,
    "peer stopped reading"."""
    factory = Servers()
    payload = b"z" * (512 * 1024)
    burst = b"".join(encode(Data(i, payload)) for i in range(1, 65))
    with listeningOn(factory) as port:
        client = NonReader(burst, encode(Ping(1)), 0.05)
        yield connectTo(port, client)
        server = yield factory.connection()
        timeout = getReactor().callLater(20, server.lost.cancel)
        loss = yield server.lost
        timeout.cancel()
    tcp(client).abortConnection()
    assert loss.reason is Reason.TIMEOUT, loss
    assert loss.detail.startswith("peer stopped reading: "), loss.detail
    taken = float(loss.detail.split("none taken for ")[1].split(" s")[0])
    assert DEADLINE - 0.001 <= taken < DEADLINE + 0.3


@twistedTest
def test_rejectedFloodLogsBoundedLines() -> Generator[Any, Any, None]:
    """3,000 messages the server's application fails on, over real sockets, produce one
    error line with a traceback (and no line per message); all are counted."""
    factory = Servers(fail=True)
    before = rejectionsTotal()
    with LogEvents("rejected") as rejected, listeningOn(factory) as port:
        client = HeartbeatProtocol()
        yield connectTo(port, client)
        yield client.whenOpened()
        for _ in range(6):
            d = client.sendMessages([b"m"] * 500)
            d.addErrback(lambda _: None)
            yield d
        yield elapse(0.05)  # real time in which no further line may be logged
        yield client.close()
    events = rejected.events
    assert rejectionsTotal() - before == 3000
    assert 1 <= len(events) <= 2
    assert all(e["log_level"] is LogLevel.error for e in events)
    assert "log_failure" in events[0]


@twistedTest
def test_plainServerRefusesHourLongInterval() -> Generator[Any, Any, None]:
    """A HeartbeatProtocol served by a plain Factory (no session factory) is the accepting
    side too: it refuses a client's 3,600 s interval by default, with the exact text."""

    class Client(HeartbeatProtocol):
        heartbeatInterval = 3600.0

    factory = Servers()
    with listeningOn(factory) as port:
        client = Client()
        yield connectTo(port, client)
        loss = yield client.whenLost()
        server = yield factory.connection()
        serverLoss = yield server.lost
    detail = "heartbeat interval 3600 s is outside the accepted range 0.1..60 s"
    assert loss.reason is Reason.PROTOCOL_ERROR
    assert loss.detail == f"peer said GOODBYE PROTOCOL_ERROR: {detail}"
    assert serverLoss.detail == detail
