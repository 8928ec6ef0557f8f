"""
Edge cases of delivery and reconnection, each once a bug: a slow handler
finishing across a session restart, ``async def`` handlers, messages too
large for the peer, reconnect pacing against servers without sessions,
closing during HELLO, and a server factory stopped before its connections.
"""

from __future__ import annotations

from typing import Any, cast

from support import built, forProtocol
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_alive import (
    AliveClientFactory,
    AliveServerFactory,
    DeliveryFailed,
    GoodbyeCode,
    HeartbeatProtocol,
    Reason,
    Receipt,
)
from twisted_alive.testing import FakeLink


def test_slowHandlerAcrossRestartConfirmsNothingNew() -> None:
    """A handler still running when a connection to a server without
    sessions is lost completes later without confirming a message of the
    next connection (which it never processed)."""
    held: list[Deferred[None]] = []
    processed: list[bytes] = []
    outcomes: list[object] = []

    class Client(HeartbeatProtocol):
        def messageReceived(self, payload: bytes) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            held.append(d)
            d.addCallback(lambda _: processed.append(payload))
            return d

    class Server(HeartbeatProtocol):
        def connectionOpened(self, resumed: bool) -> None:
            self.sendMessage(b"job-%d" % self.factory.n).addBoth(outcomes.append)

    clock = Clock()
    client = forProtocol(AliveClientFactory, Client)
    cast(Any, client).clock = clock  # Twisted types it as a full reactor
    server = Factory.forProtocol(Server)
    server.n = 1  # type: ignore[attr-defined]
    link = FakeLink(built(server), built(client), clock)
    link.flush()
    link.reset()
    held[0].callback(None)  # job-1 finishes during the outage
    server.n = 2  # type: ignore[attr-defined]
    link = FakeLink(built(server), built(client), clock)
    link.advance(1)
    assert processed == [b"job-1"]
    # job-1's connection was lost before its ACK; job-2 is still pending.
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], Failure) and outcomes[0].check(DeliveryFailed)  # type: ignore[no-untyped-call]
    held[1].callback(None)
    link.flush()
    assert isinstance(outcomes[-1], Receipt) and outcomes[-1].seq == 1


def test_asyncDefHandlerIsAwaited() -> None:
    """``async def messageReceived`` runs, and the sender's Receipt waits
    for it to finish."""
    gate: Deferred[None] = Deferred()
    got: list[bytes] = []

    class Server(HeartbeatProtocol):
        async def messageReceived(self, payload: bytes) -> None:
            await gate
            got.append(payload)

    link = FakeLink(Server(), HeartbeatProtocol())
    result: list[object] = []
    link.client.sendMessage(b"order #1").addBoth(result.append)
    link.flush()
    assert result == [] and got == []
    gate.callback(None)
    link.flush()
    assert got == [b"order #1"]
    assert isinstance(result[0], Receipt)


def test_asyncDefHandlerFailureIsRejected() -> None:
    """An ``async def`` handler that raises rejects the message."""

    class Server(HeartbeatProtocol):
        async def messageReceived(self, payload: bytes) -> None:
            raise ValueError("cannot handle " + payload.decode())

    link = FakeLink(Server(), HeartbeatProtocol())
    result: list[Any] = []
    link.client.sendMessage(b"this").addBoth(result.append)
    link.flush()
    assert result[0].check(DeliveryFailed)
    assert str(result[0].value) == (
        "peer application failed on message 1: ValueError: cannot handle this"
    )


def test_tooLargeForPeerFailsAtOnce() -> None:
    """A message larger than the peer's announced maximum fails at once
    with DeliveryFailed (it is never sent), even with nothing else in
    flight."""

    class Small(HeartbeatProtocol):
        maxFrameSize = 64

    link = FakeLink(Small(), HeartbeatProtocol())
    link.flush()
    result: list[Any] = []
    link.client.sendMessage(b"x" * 100).addBoth(result.append)
    assert result and result[0].check(DeliveryFailed)
    assert str(result[0].value) == "message of 100 bytes exceeds the peer's maximum of 55 bytes"
    assert result[0].value.maybeProcessed is False
    ok: list[object] = []
    link.client.sendMessage(b"x" * 55).addBoth(ok.append)
    link.flush()
    assert isinstance(ok[0], Receipt)


class FakeConnector:
    """Counts reconnects; connects nothing."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self) -> None:
        self.attempts += 1

    def stopConnecting(self) -> None:
        pass


def test_serverWithoutSessionsGetsBackoffNotAStorm() -> None:
    """Against a server that keeps no sessions, every reconnect after a
    CLEAN_CLOSE waits the backoff delay (no zero-delay reconnect storm)."""

    class Server(HeartbeatProtocol):
        def connectionOpened(self, resumed: bool) -> None:
            self.close(GoodbyeCode.SHUTTING_DOWN, "overloaded")

    clock = Clock()
    client = forProtocol(AliveClientFactory, HeartbeatProtocol)
    cast(Any, client).clock = clock  # Twisted types it as a full reactor
    client.initialDelay = 1.0
    client.jitter = 0.0
    connector = FakeConnector()
    link = FakeLink(built(Factory.forProtocol(Server)), built(client), clock)
    link.flush()
    assert client.lastLoss is not None and client.lastLoss.reason is Reason.CLEAN_CLOSE
    client.clientConnectionLost(connector, client.lastLoss.failure)  # type: ignore[arg-type]
    clock.advance(0.5)
    assert connector.attempts == 0
    clock.advance(0.6)
    assert connector.attempts == 1
    client.stopTrying()


def test_quickRetryOnlyAfterStableConnection() -> None:
    """RESET retries after ``quickDelay`` only if the connection had been
    stable; a connection that never was gets the backoff delay."""
    clock = Clock()
    client = forProtocol(AliveClientFactory, HeartbeatProtocol)
    cast(Any, client).clock = clock  # Twisted types it as a full reactor
    client.initialDelay = 1.0
    client.jitter = 0.0
    client.quickSpread = 0.0
    server = forProtocol(AliveServerFactory, HeartbeatProtocol)
    server.clock = clock
    connector = FakeConnector()
    link = FakeLink(built(server), built(client), clock)
    link.flush()
    link.reset()
    assert client.lastLoss is not None and client.lastLoss.reason is Reason.RESET
    client.clientConnectionLost(connector, client.lastLoss.failure)  # type: ignore[arg-type]
    clock.advance(0.5)
    assert connector.attempts == 0  # not stable yet: backoff (1 s)
    clock.advance(0.6)
    assert connector.attempts == 1
    link = FakeLink(built(server), built(client), clock)
    link.advance(client.stableAfter + 0.1, step=0.5)
    link.reset()
    client.clientConnectionLost(connector, client.lastLoss.failure)  # type: ignore[arg-type]
    clock.advance(client.quickDelay * 1.5)
    assert connector.attempts == 2  # stable: quick
    client.stopTrying()


def test_factoryCloseDuringHelloSendsQueuedFirst() -> None:
    """AliveClientFactory.close() while the HELLO exchange is under way
    sends the queued message, gets it confirmed, then closes in order."""
    clock = Clock()
    client = forProtocol(AliveClientFactory, HeartbeatProtocol)
    cast(Any, client).clock = clock  # Twisted types it as a full reactor
    server = forProtocol(AliveServerFactory, HeartbeatProtocol)
    server.clock = clock
    result: list[object] = []
    client.sendMessage(b"queued before connect").addBoth(result.append)
    link = FakeLink(built(server), built(client), clock)
    closed: list[object] = []
    client.close().addBoth(closed.append)
    assert closed == []
    link.advance(1)
    assert isinstance(result[0], Receipt)
    assert closed == [None]
    assert link.server.loss is not None and link.server.loss.reason is Reason.CLEAN_CLOSE
    assert not server.connections


def test_stopFactoryKeepsLiveSessionsUntilTheirConnectionEnds() -> None:
    """stopFactory (port.stopListening) before closeAll does not fail the
    messages of connections still up: they are confirmed while closing."""
    clock = Clock()
    client = forProtocol(AliveClientFactory, HeartbeatProtocol)
    cast(Any, client).clock = clock  # Twisted types it as a full reactor
    server = forProtocol(AliveServerFactory, HeartbeatProtocol)
    server.clock = clock
    server.doStart()  # type: ignore[no-untyped-call]
    link = FakeLink(built(server), built(client), clock)
    link.flush()
    link.stall(toServer=False, toClient=True)
    result: list[object] = []
    link.server.sendMessage(b"in flight").addBoth(result.append)
    server.doStop()  # type: ignore[no-untyped-call]
    assert result == []
    server.closeAll()
    link.unstall()
    link.advance(5)
    assert isinstance(result[0], Receipt)
    assert client.session.inbox.processedUpTo == 1
    assert not server.sessions


def test_factorySendInConnectionOpenedGoesOut() -> None:
    """``factory.sendMessage`` called in the client's ``connectionOpened``
    hook (before the factory knows the connection carries the session) is
    sent on that connection, and its Receipt comes."""
    got: list[bytes] = []
    outcomes: list[object] = []

    class Client(HeartbeatProtocol):
        def connectionOpened(self, resumed: bool) -> None:
            self.factory.sendMessage(b"hello").addBoth(outcomes.append)

    class Server(HeartbeatProtocol):
        def messageReceived(self, payload: bytes) -> None:
            got.append(payload)

    clock = Clock()
    client = forProtocol(AliveClientFactory, Client)
    cast(Any, client).clock = clock
    server = forProtocol(AliveServerFactory, Server)
    server.clock = clock
    link = FakeLink(built(server), built(client), clock)
    link.flush()
    assert got == [b"hello"]
    assert isinstance(outcomes[0], Receipt) and outcomes[0].seq == 1
