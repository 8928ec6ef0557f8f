"""
Deterministic tests of sessions that outlive connections: L{AliveClientFactory}
and L{AliveServerFactory} over simulated connections (a L{Clock} and
in-memory transports) that are cut at every byte boundary, in both
directions; session expiry; backoff and retry policy; flow-control limits.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    NotConnectingError,
)
from twisted.internet.interfaces import IAddress, IConnector, IProtocol, ITransport
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._factories import AliveClientFactory, AliveServerFactory, Retry
from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Loss, Reason
from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.core.outcomes import DeliveryFailed, QueueFull, Receipt

failureOf = cast(Callable[[BaseException], Failure], Failure)
"""C{Failure(exception)}, typed."""

CLIENT_ADDRESS = IPv4Address("TCP", "127.0.0.1", 40000)
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 9000)


# -- a simulated network ------------------------------------------------------


@implementer(ITransport)
class FakeEnd:
    """
    One end of a L{Wire}: what its protocol writes waits in C{outbound}
    until the wire delivers it.
    """

    disconnecting = False
    aborted = False

    def __init__(self, protocol: IProtocol, host: IPv4Address, peer: IPv4Address) -> None:
        self.protocol = protocol
        self.outbound = bytearray()
        self.host = host
        self.peer = peer
        self.lost = False
        self.peerGone = False

    def write(self, data: bytes) -> None:
        """Queue C{data} for the peer (dropped once the peer is gone)."""
        if not self.lost and not self.peerGone:
            self.outbound += data

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Queue each of C{data}."""
        for chunk in data:
            self.write(chunk)

    def loseConnection(self) -> None:
        """Close after what was written has been delivered."""
        self.disconnecting = True

    def abortConnection(self) -> None:
        """Close at once (an RST to the peer)."""
        self.disconnecting = True
        self.aborted = True

    def getPeer(self) -> IAddress:
        """The peer's address."""
        return self.peer

    def getHost(self) -> IAddress:
        """This side's address."""
        return self.host


class Wire:
    """
    One simulated TCP connection between a client and a server protocol.

    Bytes move only when asked (L{step}, L{deliver}, L{flush}), so a test
    can cut the connection at any byte: L{cut} drops what is still in
    transit and reports the loss to one or both sides.
    """

    def __init__(
        self,
        client: IProtocol,
        server: IProtocol,
        clientLost: Callable[[Failure], None],
    ) -> None:
        self.clientEnd = FakeEnd(client, CLIENT_ADDRESS, SERVER_ADDRESS)
        self.serverEnd = FakeEnd(server, SERVER_ADDRESS, CLIENT_ADDRESS)
        self.clientLost = clientLost
        self.delivered = 0
        self.stalled = False
        server.makeConnection(self.serverEnd)
        client.makeConnection(self.clientEnd)

    @property
    def client(self) -> Any:
        """The client protocol."""
        return self.clientEnd.protocol

    @property
    def server(self) -> Any:
        """The server protocol."""
        return self.serverEnd.protocol

    @property
    def live(self) -> bool:
        """Whether either end has not seen its loss yet."""
        return not (self.clientEnd.lost and self.serverEnd.lost)

    def _other(self, end: FakeEnd) -> FakeEnd:
        return self.serverEnd if end is self.clientEnd else self.clientEnd

    def _move(self, source: FakeEnd, limit: int | None) -> int:
        target = self._other(source)
        if self.stalled or source.lost or target.lost or source.peerGone or not source.outbound:
            return 0
        count = len(source.outbound) if limit is None else min(limit, len(source.outbound))
        data = bytes(source.outbound[:count])
        del source.outbound[:count]
        self.delivered += count
        target.protocol.dataReceived(data)
        return count

    def _lose(self, end: FakeEnd, failure: Failure) -> None:
        if end.lost:
            return
        end.lost = True
        end.outbound.clear()
        self._other(end).peerGone = True
        end.protocol.connectionLost(failure)
        if end is self.clientEnd:
            self.clientLost(failure)

    def _checkClosed(self, quiet: bool) -> bool:
        """Report the closes the protocols asked for; C{True} if one ended."""
        for end in (self.serverEnd, self.clientEnd):
            if end.lost or not end.disconnecting:
                continue
            other = self._other(end)
            if self.stalled:
                # Nothing reaches the other side, not even the close.
                failure = ConnectionAborted() if end.aborted else ConnectionDone()
                self._lose(end, failureOf(failure))
                return True
            if end.aborted:
                self._lose(end, failureOf(ConnectionAborted()))
                self._lose(other, failureOf(ConnectionLost("Connection reset by peer")))
                return True
            if end.peerGone:
                self._lose(end, failureOf(ConnectionDone()))
                return True
            if quiet and not end.outbound and not other.outbound:
                self._lose(end, failureOf(ConnectionDone()))
                self._lose(other, failureOf(ConnectionDone()))
                return True
        return False

    def step(self, limit: int | None = None) -> int:
        """
        Deliver up to C{limit} bytes (all if C{None}) each way, then act on
        closes.

        :returns: how many bytes moved.
        """
        moved = self._move(self.clientEnd, limit)
        moved += self._move(self.serverEnd, limit)
        if self._checkClosed(quiet=moved == 0):
            moved += 1
        return moved

    def deliver(self, budget: int, clock: Clock) -> int:
        """
        Deliver at most C{budget} bytes, one byte at a time, alternating
        directions, running the calls the clock has due after each byte.

        :returns: how many bytes were delivered.
        """
        done = 0
        while done < budget and self.live:
            moved = 0
            for end in (self.clientEnd, self.serverEnd):
                if done < budget:
                    n = self._move(end, 1)
                    moved += n
                    done += n
                    clock.advance(0)
            if self._checkClosed(quiet=moved == 0):
                continue
            if not moved:
                break
        return done

    def flush(self) -> bool:
        """Deliver until nothing moves. :returns: whether anything did."""
        any_ = False
        while self.live and self.step():
            any_ = True
        return any_

    def stall(self) -> None:
        """From now on nothing passes either way and nothing closes (a
        dead host, a partition): each side finds out by its own deadline."""
        self.stalled = True

    def cut(self, how: str = "reset", clientFirst: bool = False) -> None:
        """
        End the connection now; bytes in transit are lost.

        :param how: C{"reset"} (both sides see an RST), C{"fin"} (both see
            a close without GOODBYE), C{"client-only"} (the client sees an
            RST, the server notices nothing: a half-open connection).
        """
        if how == "client-only":
            self.serverEnd.outbound.clear()
            self._lose(self.clientEnd, failureOf(ConnectionLost("Connection reset by peer")))
            return
        failure = (
            failureOf(ConnectionDone()) if how == "fin" else failureOf(ConnectionLost("reset"))
        )
        self.clientEnd.outbound.clear()
        self.serverEnd.outbound.clear()
        ends = [self.clientEnd, self.serverEnd]
        if not clientFirst:
            ends.reverse()
        for end in ends:
            self._lose(end, failure)


@implementer(IConnector)
class FakeConnector:
    """The C{IConnector} of a L{Network}: C{connect()} opens a new L{Wire}."""

    def __init__(self, network: Network) -> None:
        self.network = network

    def connect(self) -> None:
        """Start a new connection attempt."""
        self.network.connect()

    def stopConnecting(self) -> None:
        """Attempts complete at once here: never connecting."""
        raise NotConnectingError()

    def disconnect(self) -> None:
        """Close the current connection."""
        wire = self.network.current
        if wire is not None:
            wire.clientEnd.loseConnection()

    def getDestination(self) -> IAddress:
        """The server's address."""
        return SERVER_ADDRESS


class Network:
    """
    A client factory and a server factory joined by L{Wire}s, on one
    L{Clock}: the client factory reconnects through a L{FakeConnector}.

    :ivar refuse: when true, connection attempts are refused.
    :ivar server: when set, builds the server end instead of the server
        factory (e.g. a silent plain protocol).
    """

    def __init__(
        self,
        clientFactory: AliveClientFactory,
        serverFactory: AliveServerFactory,
        clock: Clock,
    ) -> None:
        self.clientFactory = clientFactory
        self.serverFactory = serverFactory
        self.clock = clock
        # (Twisted types ReconnectingClientFactory.clock as a full reactor.)
        cast(Any, clientFactory).clock = clock
        serverFactory.clock = clock
        self.connector = FakeConnector(self)
        self.wires: list[Wire] = []
        self.attempts = 0
        self.attemptTimes: list[float] = []
        self.refuse = False
        self.server: Callable[[], IProtocol] | None = None
        cast(Any, clientFactory).doStart()
        cast(Any, serverFactory).doStart()

    @property
    def current(self) -> Wire | None:
        """The latest wire, if it is still live."""
        if self.wires and self.wires[-1].live:
            return self.wires[-1]
        return None

    def connect(self) -> None:
        """One connection attempt (what C{connector.connect()} does)."""
        self.attempts += 1
        self.attemptTimes.append(self.clock.seconds())
        factory = self.clientFactory
        factory.startedConnecting(self.connector)
        if self.refuse:
            factory.clientConnectionFailed(
                self.connector, failureOf(cast(Callable[[], Exception], ConnectionRefusedError)())
            )
            return
        client = cast("IProtocol | None", factory.buildProtocol(SERVER_ADDRESS))
        assert client is not None
        server: IProtocol | None
        if self.server is not None:
            server = self.server()
        else:
            server = cast("IProtocol | None", self.serverFactory.buildProtocol(CLIENT_ADDRESS))
        assert server is not None
        self.wires.append(
            Wire(client, server, lambda f: factory.clientConnectionLost(self.connector, f))
        )

    def flush(self) -> bool:
        """Deliver on every live wire until nothing moves."""
        moved = False
        while True:
            self.clock.advance(0)
            now = False
            for wire in self.wires:
                if wire.live and wire.flush():
                    now = True
            if not now:
                return moved
            moved = True

    def run(self, until: Callable[[], bool], limit: float = 120.0) -> None:
        """
        Deliver bytes and advance the clock to each next timer until
        C{until()} is true (checked before any byte moves, too).

        :raises AssertionError: if that takes more than C{limit} simulated
            seconds, or nothing is left to happen.
        """
        deadline = self.clock.seconds() + limit
        while True:
            if until():
                return
            self.flush()
            if until():
                return
            calls = self.clock.getDelayedCalls()
            assert calls, "stuck: nothing left to happen"
            nextTime = min(call.getTime() for call in calls)
            assert nextTime <= deadline, f"not done after {limit} simulated seconds"
            self.clock.advance(max(0.0, nextTime - self.clock.seconds()))

    def advance(self, seconds: float) -> None:
        """Let C{seconds} pass, delivering bytes as timers fire."""
        end = self.clock.seconds() + seconds
        while True:
            self.flush()
            calls = [c for c in self.clock.getDelayedCalls() if c.getTime() <= end]
            if not calls:
                break
            nextTime = min(call.getTime() for call in calls)
            self.clock.advance(max(0.0, nextTime - self.clock.seconds()))
        self.clock.advance(max(0.0, end - self.clock.seconds()))
        self.flush()


# -- applications ------------------------------------------------------------


class EchoServer(HeartbeatProtocol):
    """Records each message in its factory and answers it with C{re:}."""

    factory: RecordingServerFactory

    def messageReceived(self, payload: bytes) -> Deferred[object] | None:
        factory = self.factory
        factory.received.append(payload)
        if factory.fail is not None and payload == factory.fail:
            raise ValueError(f"cannot handle {payload.decode()}")
        if factory.reply:
            factory.replies.append(self.sendMessage(b"re:" + payload))
        if factory.slow:
            d: Deferred[object] = Deferred()
            factory.processing.append(d)
            return d
        return None


class RecordingServerFactory(AliveServerFactory):
    """A server factory whose protocols record what they receive."""

    protocol = EchoServer

    def __init__(self, reply: bool = True, slow: bool = False) -> None:
        super().__init__()
        self.reply = reply
        self.slow = slow
        self.fail: bytes | None = None
        self.received: list[bytes] = []
        self.replies: list[Deferred[Receipt]] = []
        self.processing: list[Deferred[object]] = []


class RecordingClient(HeartbeatProtocol):
    """Records each message in its factory."""

    factory: RecordingClientFactory

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)


class RecordingClientFactory(AliveClientFactory):
    """A client factory whose protocols record what they receive."""

    protocol = RecordingClient

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []


class SmallQueue(RecordingClient):
    """A protocol with a small window and queue."""

    maxInFlight = 2
    maxQueued = 3


class Outcomes:
    """Every result each watched Deferred fired with, by index."""

    def __init__(self) -> None:
        self.results: list[list[object]] = []

    def watch(self, d: Deferred[Any]) -> None:
        """Record what C{d} fires with (and swallow its failure)."""
        box: list[object] = []
        self.results.append(box)

        def record(result: object) -> None:
            box.append(result.value if isinstance(result, Failure) else result)

        d.addBoth(record)

    @property
    def done(self) -> bool:
        """Whether every watched Deferred has fired."""
        return all(self.results)

    def single(self) -> list[object]:
        """The one result of each Deferred (each must have fired once)."""
        assert all(len(box) == 1 for box in self.results), [len(b) for b in self.results]
        return [box[0] for box in self.results]


def payloads(count: int, prefix: str = "m") -> list[bytes]:
    """C{count} numbered payloads."""
    return [f"{prefix}{i}".encode() for i in range(count)]


def makeNetwork(
    reply: bool = True, slow: bool = False, clock: Clock | None = None
) -> tuple[Network, RecordingClientFactory, RecordingServerFactory]:
    """A client factory and a recording server factory on a fake network."""
    clock = clock if clock is not None else Clock()
    cf = RecordingClientFactory()
    sf = RecordingServerFactory(reply=reply, slow=slow)
    return Network(cf, sf, clock), cf, sf


# -- a scenario, cut anywhere ----------------------------------------------------

MESSAGES = 4


class Scenario:
    """
    C{MESSAGES} client messages, each answered by a server message, over a
    connection that may be cut; then run to completion.
    """

    def __init__(self, slow: bool = False) -> None:
        self.network, self.cf, self.sf = makeNetwork(reply=True, slow=slow)
        self.sent = payloads(MESSAGES)
        self.outcomes = Outcomes()
        for payload in self.sent:
            self.outcomes.watch(self.cf.sendMessage(payload))
        if slow:
            # The server application finishes each message on the next
            # turn of the clock.
            self.sf.processing = _AutoFire(self.network.clock)
        self.network.connector.connect()

    def finished(self) -> bool:
        """Everything confirmed both ways."""
        return (
            self.outcomes.done
            and len(self.sf.replies) == MESSAGES
            and all(d.called for d in self.sf.replies)
            and len(self.cf.received) == MESSAGES
        )

    def finish(self) -> None:
        """Run without further cuts until everything is confirmed."""
        self.network.run(self.finished)

    def check(self) -> None:
        """Exactly once, in order, every Deferred fired once with a Receipt."""
        assert self.sf.received == self.sent
        assert self.cf.received == [b"re:" + p for p in self.sent]
        results = self.outcomes.single()
        assert all(isinstance(r, Receipt) for r in results), results
        assert [cast(Receipt, r).seq for r in results] == list(range(1, MESSAGES + 1))
        replies = Outcomes()
        for d in self.sf.replies:
            replies.watch(d)
        replyResults = replies.single()
        assert all(isinstance(r, Receipt) for r in replyResults), replyResults
        assert self.cf.pending == 0


class _AutoFire(list[Deferred[object]]):
    """A list that fires each Deferred appended to it on the clock's next turn."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def append(self, d: Deferred[object]) -> None:
        super().append(d)
        self.clock.callLater(0, d.callback, None)


def _totalBytes(slow: bool) -> int:
    scenario = Scenario(slow=slow)
    scenario.finish()
    scenario.check()
    return sum(wire.delivered for wire in scenario.network.wires)


@pytest.mark.parametrize("slow", [False, True], ids=["sync", "deferred"])
@pytest.mark.parametrize("how", ["reset", "fin", "client-only"])
def test_cutAtEveryByte(slow: bool, how: str) -> None:
    """A cut after any number of bytes (before DATA, mid-frame, after
    processing but before the ACK, during HELLO) loses and duplicates
    nothing, either way."""
    total = _totalBytes(slow)
    assert total > 200
    for k in range(total + 1):
        scenario = Scenario(slow=slow)
        wire = scenario.network.wires[0]
        wire.deliver(k, scenario.network.clock)
        if wire.live:
            wire.cut(how, clientFirst=bool(k % 2))
        scenario.finish()
        scenario.check()


@pytest.mark.parametrize("seed", range(150))
def test_cutRepeatedly(seed: int) -> None:
    """Up to 12 cuts in a row, each after a random number of bytes (so that
    resume HELLOs are cut too), lose and duplicate nothing."""
    rng = random.Random(seed)
    scenario = Scenario(slow=bool(seed % 2))
    network = scenario.network
    for _ in range(12):
        if network.current is None:
            network.run(lambda: network.current is not None or scenario.finished())
        wire = network.current
        if wire is None:
            break
        wire.deliver(rng.randrange(0, 160), network.clock)
        if wire.live:
            wire.cut(rng.choice(["reset", "fin", "client-only"]), clientFirst=rng.random() < 0.5)
    scenario.finish()
    scenario.check()
    assert len(network.wires) > 1


# -- named cut points ----------------------------------------------------------------


def connected() -> tuple[Network, RecordingClientFactory, RecordingServerFactory, Wire]:
    """A network whose first connection completed its HELLO exchange."""
    network, cf, sf = makeNetwork(reply=False)
    network.connector.connect()
    network.flush()
    wire = network.wires[0]
    assert cf.connected is wire.client
    return network, cf, sf, wire


def test_cutBeforeDataArrives() -> None:
    """A DATA lost in transit is sent again on the next connection, once."""
    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"one"))
    assert wire.clientEnd.outbound  # written, not delivered
    wire.cut()
    assert sf.received == []
    network.run(lambda: outcomes.done)
    assert sf.received == [b"one"]
    [receipt] = outcomes.single()
    assert isinstance(receipt, Receipt) and receipt.seq == 1
    assert len(network.wires) == 2


def test_cutMidFrame() -> None:
    """A DATA cut in the middle of its frame is dropped with its connection
    and sent again whole, once."""
    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"a message in two pieces"))
    wire._move(wire.clientEnd, 7)
    assert sf.received == []
    wire.cut()
    network.run(lambda: outcomes.done)
    assert sf.received == [b"a message in two pieces"]
    assert isinstance(outcomes.single()[0], Receipt)


def test_cutAfterProcessingBeforeAck() -> None:
    """A message processed whose ACK was lost is not processed again: the
    next HELLO says it was received, and the ACK follows it."""
    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"one"))
    wire._move(wire.clientEnd, None)
    assert sf.received == [b"one"]
    assert wire.serverEnd.outbound  # the ACK, not delivered
    wire.cut()
    assert not outcomes.done
    network.run(lambda: outcomes.done)
    assert sf.received == [b"one"]
    [receipt] = outcomes.single()
    assert isinstance(receipt, Receipt) and receipt.seq == 1
    session = next(iter(sf.sessions.values()))
    assert session.inbox.duplicates == 0
    assert cf.session.outbox.redelivered == 0


def test_cutDuringFirstHello() -> None:
    """A cut after the server created a session but before the client
    learned its token: the client starts a new session, its queued
    messages go there, and the orphan session expires after its TTL."""
    network, cf, sf = makeNetwork(reply=False)
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"queued"))
    network.connector.connect()
    wire = network.wires[0]
    wire._move(wire.clientEnd, None)  # the client's HELLO
    assert len(sf.sessions) == 1
    wire.cut()
    network.run(lambda: outcomes.done)
    assert sf.received == [b"queued"]
    assert isinstance(outcomes.single()[0], Receipt)
    assert len(sf.sessions) == 2
    network.advance(sf.sessionTTL + 1)
    assert len(sf.sessions) == 1
    assert sf.sessionsExpired == 1


def test_cutDuringResumeHello() -> None:
    """A cut during the HELLO exchange that resumes a session: the next
    connection resumes the same session."""
    network, cf, sf, wire = connected()
    token = cf.session.token
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"one"))
    wire.cut()
    network.run(lambda: network.current is not None)
    second = network.wires[1]
    second._move(second.clientEnd, None)  # the resume HELLO
    assert second.serverEnd.outbound  # HELLO (resumed) and the resent DATA
    second.cut()
    network.run(lambda: outcomes.done)
    assert sf.received == [b"one"]
    assert cf.session.token == token
    assert len(sf.sessions) == 1
    assert sf.sessionsResumed == 2


def test_duplicateDataDropped() -> None:
    """A DATA that arrives again with a sequence number already received is
    dropped: the application sees the message once."""
    from twisted_alive.core.frames import encodeData

    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"one"))
    network.flush()
    wire.clientEnd.write(encodeData(1, b"one"))
    network.flush()
    assert sf.received == [b"one"]
    session = next(iter(sf.sessions.values()))
    assert session.inbox.duplicates == 1
    assert wire.server.loss is None


def test_serverToClientResumes() -> None:
    """A message the server sent is resent after a cut and reaches the
    client's application once; the server's Deferred fires once."""
    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    outcomes.watch(wire.server.sendMessage(b"from the server"))
    wire.cut()
    assert cf.received == []
    network.run(lambda: outcomes.done)
    assert cf.received == [b"from the server"]
    [receipt] = outcomes.single()
    assert isinstance(receipt, Receipt) and receipt.seq == 1


def test_serverToClientAfterProcessingBeforeAck() -> None:
    """A server message the client processed, whose ACK was lost, is not
    processed again after the resume."""
    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    outcomes.watch(wire.server.sendMessage(b"from the server"))
    wire._move(wire.serverEnd, None)
    assert cf.received == [b"from the server"]
    wire.cut()
    network.run(lambda: outcomes.done)
    assert cf.received == [b"from the server"]
    assert isinstance(outcomes.single()[0], Receipt)


def test_whenConnected() -> None:
    """whenConnected() fires once HELLO completed, with the protocol; at
    once while connected; and again after a reconnect."""
    network, cf, sf = makeNetwork()
    waiting = cf.whenConnected()
    network.connector.connect()
    assert not waiting.called
    network.flush()
    first = network.wires[0].client
    assert waiting.result is first
    assert cf.whenConnected().result is first
    network.wires[0].cut()
    later = cf.whenConnected()
    assert not later.called
    network.run(lambda: later.called)
    assert later.result is network.wires[1].client


# -- the application's Deferreds across cuts ---------------------------------------


def slowConnected() -> tuple[Network, RecordingClientFactory, RecordingServerFactory, Wire]:
    """L{connected}, with a server application that returns a Deferred for
    each message (kept in C{sf.processing})."""
    network, cf, sf, wire = connected()
    sf.slow = True
    return network, cf, sf, wire


@pytest.mark.parametrize("when", ["while-disconnected", "after-reconnect", "before-cut"])
def test_deferredProcessingAcrossCut(when: str) -> None:
    """A message whose processing Deferred is pending when the connection is
    cut is processed once; the next messages wait for it; the ACK reaches
    the sender on the next connection."""
    network, cf, sf, wire = slowConnected()
    outcomes = Outcomes()
    for payload in (b"one", b"two", b"three"):
        outcomes.watch(cf.sendMessage(payload))
    wire._move(wire.clientEnd, None)
    assert sf.received == [b"one"]  # the others wait for it
    if when == "before-cut":
        sf.processing[0].callback(None)
        assert sf.received == [b"one", b"two"]
    wire.cut()
    if when == "while-disconnected":
        sf.processing[0].callback(None)
        # The next message waits for the session's next connection.
        assert sf.received == [b"one"]
    network.run(lambda: cf.connected is not None)
    network.flush()
    if when == "after-reconnect":
        assert sf.received == [b"one"]
        sf.processing[0].callback(None)
        network.flush()
    assert sf.received == [b"one", b"two"]
    sf.processing[1].callback(None)
    network.flush()
    sf.processing[2].callback(None)
    network.run(lambda: outcomes.done)
    assert sf.received == [b"one", b"two", b"three"]
    assert [cast(Receipt, r).seq for r in outcomes.single()] == [1, 2, 3]


def test_messageReceivedRaises() -> None:
    """A message the peer's application fails on is processed once, counts
    as processed, and its Deferred fails with DeliveryFailed(rejected=True)
    carrying the error text; the next messages are delivered."""
    network, cf, sf, wire = connected()
    sf.fail = b"bad"
    outcomes = Outcomes()
    for payload in (b"good", b"bad", b"after"):
        outcomes.watch(cf.sendMessage(payload))
    network.flush()
    good, bad, after = outcomes.single()
    assert isinstance(good, Receipt) and isinstance(after, Receipt)
    assert isinstance(bad, DeliveryFailed)
    assert bad.rejected and not bad.maybeProcessed
    assert str(bad) == "peer application failed on message 2: ValueError: cannot handle bad"
    assert sf.received == [b"good", b"bad", b"after"]
    network.advance(60)
    assert sf.received == [b"good", b"bad", b"after"]


def test_rejectLostInCut() -> None:
    """A REJECT lost with its connection still fails the sender's Deferred
    (rejected=True) after the resume."""
    network, cf, sf, wire = connected()
    sf.fail = b"bad"
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"bad"))
    wire._move(wire.clientEnd, None)
    assert sf.received == [b"bad"]
    wire.cut()  # the REJECT and the ACK were still in transit
    network.run(lambda: outcomes.done)
    assert sf.received == [b"bad"]
    [result] = outcomes.single()
    assert isinstance(result, DeliveryFailed) and result.rejected


# -- sessions the server no longer knows --------------------------------------------


def test_unknownSessionRestarts() -> None:
    """A server that no longer knows the session (a restarted process)
    answers GOODBYE(SESSION_UNKNOWN): the client starts a new session at
    once; messages sent and unconfirmed fail as maybe processed; queued
    messages never sent carry over into the new session."""
    network, cf, sf, wire = connected()
    sf.slow = True  # nothing gets confirmed on this connection
    outcomes = Outcomes()
    for payload in (b"one", b"two"):
        outcomes.watch(cf.sendMessage(payload))
    wire._move(wire.clientEnd, None)
    assert sf.received == [b"one"]
    oldToken = cf.session.token
    wire.cut()
    # The server process restarts: its sessions are gone.
    fresh = RecordingServerFactory(reply=False)
    fresh.clock = network.clock
    network.serverFactory = fresh
    network.refuse = True
    network.advance(1.0)
    for payload in (b"three", b"four"):
        outcomes.watch(cf.sendMessage(payload))
    network.refuse = False
    network.run(lambda: outcomes.done)
    one, two, three, four = outcomes.single()
    for failed in (one, two):
        assert isinstance(failed, DeliveryFailed)
        assert failed.maybeProcessed and not failed.rejected
        assert str(failed) == (
            f"the server no longer knows session {oldToken.hex()[:8]}: "
            "the message may or may not have been processed"
        )
    assert [cast(Receipt, r).seq for r in (three, four)] == [1, 2]
    assert fresh.received == [b"three", b"four"]
    assert cf.session.token != oldToken
    refused = network.wires[-2]
    assert refused.client.loss is not None
    assert refused.client.loss.goodbye is GoodbyeCode.SESSION_UNKNOWN
    # The new session was started at once, without a backoff delay.
    assert network.attemptTimes[-1] == network.attemptTimes[-2]


def test_unknownSessionServerToClient() -> None:
    """After a session restart the client's receiving side starts over too:
    the new session's server messages are numbered from 1 and delivered."""
    network, cf, sf, wire = connected()
    wire.server.sendMessage(b"old")
    network.flush()
    assert cf.received == [b"old"]
    wire.cut()
    fresh = RecordingServerFactory(reply=True)
    fresh.clock = network.clock
    network.serverFactory = fresh
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"new"))
    network.run(lambda: outcomes.done and len(cf.received) == 2)
    assert cf.received == [b"old", b"re:new"]
    assert cf.session.inbox.processedUpTo == 1


def test_sessionKeptWithinTTL() -> None:
    """A client that returns within sessionTTL resumes its session."""
    network, cf, sf, wire = connected()
    sf.sessionTTL = 30.0
    cf.maxDelay = 1.0
    token = cf.session.token
    network.refuse = True
    wire.cut()
    network.advance(28.0)
    assert len(sf.sessions) == 1
    network.refuse = False
    network.run(lambda: cf.connected is not None)
    assert cf.session.token == token
    assert cf.connected is not None and cf.connected._alive is not None
    assert cf.connected._alive.resumed
    assert sf.sessionsResumed == 1


def test_sessionExpiresAfterTTL() -> None:
    """A session without a connection for longer than sessionTTL is dropped
    by a timer (no client needs to come); the server's unconfirmed messages
    in it fail; the returning client is told GOODBYE(SESSION_UNKNOWN) and
    starts a new session."""
    network, cf, sf, wire = connected()
    sf.sessionTTL = 30.0
    serverOutcomes = Outcomes()
    serverOutcomes.watch(wire.server.sendMessage(b"never confirmed"))
    network.refuse = True
    wire.cut()
    network.advance(29.0)
    assert not serverOutcomes.done
    network.advance(2.0)
    assert sf.sessions == {}
    assert sf.sessionsExpired == 1
    [failed] = serverOutcomes.single()
    assert isinstance(failed, DeliveryFailed)
    assert str(failed) == "the session expired before confirmation"
    assert failed.maybeProcessed
    token = cf.session.token
    network.refuse = False
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"hello again"))
    network.run(lambda: outcomes.done)
    assert isinstance(outcomes.single()[0], Receipt)
    assert cf.session.token != token
    assert any(
        w.client.loss is not None and w.client.loss.goodbye is GoodbyeCode.SESSION_UNKNOWN
        for w in network.wires
    )


def test_maxSessionsEvictsLeastRecentlySeen() -> None:
    """Beyond maxSessions sessions without a connection, the least recently
    seen is dropped; its client starts over, the others resume."""
    clock = Clock()
    sf = RecordingServerFactory(reply=False)
    sf.maxSessions = 2
    networks = []
    for _ in range(3):
        cf = RecordingClientFactory()
        network = Network(cf, sf, clock)
        network.connector.connect()
        network.flush()
        networks.append(network)
    assert len(sf.sessions) == 3
    tokens = [n.clientFactory.session.token for n in networks]
    # Lost in the order 2, 0, 1: session 2 is the least recently seen.
    for index in (2, 0, 1):
        networks[index].refuse = True
        networks[index].wires[0].cut()
        clock.advance(1.0)
    assert len(sf.sessions) == 2
    assert sf.sessionsExpired == 1
    for network in networks:
        network.refuse = False
        network.run(lambda n=network: n.clientFactory.connected is not None)  # type: ignore[misc]
    resumed = [n.clientFactory.session.token == t for n, t in zip(networks, tokens, strict=True)]
    assert resumed == [True, True, False]


def test_halfOpenConnectionTakenOver() -> None:
    """A client that comes back while the server still holds its old
    (half-open) connection takes the session over; the old connection is
    aborted."""
    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"one"))
    wire.cut("client-only")
    assert wire.server.loss is None
    network.run(lambda: outcomes.done)
    assert wire.server.loss is not None
    assert wire.server.loss.reason is Reason.LOCAL_CLOSE
    assert wire.server.loss.detail == "session taken over by a new connection"
    assert sf.received == [b"one"]
    assert len(sf.connections) == 1


def test_takenOverSessionDoesNotExpire() -> None:
    """The end of a connection whose session was taken over leaves the session to the new
    connection: it does not expire while that connection lasts, however long."""
    network, cf, sf, wire = connected()
    sf.sessionTTL = 30.0
    wire.cut("client-only")
    network.run(lambda: wire.server.loss is not None and cf.connected is not None)
    assert wire.server.loss is not None
    assert wire.server.loss.detail == "session taken over by a new connection"
    network.advance(sf.sessionTTL * 3)
    assert cf.connected is not None and len(sf.sessions) == 1
    assert sf.sessionsExpired == 0
    session = next(iter(sf.sessions.values()))
    assert sf.bindingFor(session).carrier is network.wires[-1].server
    network.refuse = True
    network.wires[-1].cut()  # now it has no connection: the TTL runs
    network.advance(sf.sessionTTL + 1)
    assert sf.sessions == {} and sf.sessionsExpired == 1


PLAIN = (int, float, str, bytes, bool, type(None), list, tuple, dict, set, frozenset, deque)


def plainParts(root: object) -> list[str]:
    """What is reachable from ``root`` that is neither a builtin value or
    container nor an object of ``twisted_alive.core`` (named by type)."""
    seen: set[int] = set()
    live: list[str] = []
    todo = [root]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            todo.extend(obj.keys())
            todo.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset, deque)):
            todo.extend(obj)
        elif not isinstance(obj, PLAIN):
            module = type(obj).__module__
            if not module.startswith("twisted_alive.core"):
                live.append(f"{module}.{type(obj).__qualname__}")
                continue
            slots = [s for k in type(obj).__mro__ for s in getattr(k, "__slots__", ())]
            todo.extend(getattr(obj, name) for name in slots if hasattr(obj, name))
            todo.extend(getattr(obj, "__dict__", {}).values())
    return live


def test_sessionHoldsNoLiveObject() -> None:
    """A session with messages in flight, queued, sent together and being
    received holds plain data only: no protocol, producer or Deferred (its
    entries hold a number that the factory's binding maps to the Deferred)."""
    network, cf, sf, wire = connected()
    pending = [cf.sendMessage(b"one"), cf.sendMessages([b"two", b"three"])]
    pending.append(wire.client.sendMessage(b"four"))
    pending.append(wire.server.sendMessage(b"to the client"))
    for session in (cf.session, wire.server.session):
        assert session.outbox.inflight or session.outbox.queue
        assert plainParts(session) == []
    network.run(lambda: all(d.called for d in pending))
    assert cf.clientBinding().waiting == {}


def test_cleanCloseOfTakenOverConnectionKeepsSession() -> None:
    """A connection that ends cleanly after a newer one took its session
    over does not end the session: the newer connection carries it on."""
    network, cf, sf, wire = connected()
    wire.cut("client-only")
    network.run(lambda: wire.server.loss is not None and cf.connected is not None)
    (session,) = sf.sessions.values()
    late = Loss(Reason.CLEAN_CLOSE, "peer said GOODBYE NORMAL", goodbye=GoodbyeCode.NORMAL)
    sf.sessionLost(wire.server, late)
    assert list(sf.sessions.values()) == [session]
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"after"))
    network.run(lambda: outcomes.done)
    (receipt,) = outcomes.single()
    assert isinstance(receipt, Receipt)
    assert sf.received[-1] == b"after"


# -- backoff and retry policy --------------------------------------------------------


@pytest.mark.parametrize("draw", [0.0, 0.5, 0.999999])
@pytest.mark.parametrize("jitter", [0.0, 0.2, 1.0, 3.0])
def test_nextDelayBounds(draw: float, jitter: float) -> None:
    """Jittered backoff delays are never above maxDelay nor below zero,
    whatever the jitter source draws and however many retries."""
    factory = AliveClientFactory()
    factory.random = lambda: draw
    factory.jitter = jitter
    factory.maxDelay = 10.0
    for retries in list(range(0, 80)) + [10_000]:
        factory.retries = retries
        delay = factory.nextDelay()
        assert 0.0 <= delay <= factory.maxDelay


def test_nextDelayValues() -> None:
    """nextDelay is initialDelay * factor ** retries, capped, with
    multiplicative jitter drawn from the injected source."""
    factory = AliveClientFactory()
    factory.initialDelay, factory.factor, factory.maxDelay, factory.jitter = 1.0, 2.0, 10.0, 0.5
    factory.random = lambda: 0.5  # no jitter
    assert [factory.nextDelay() for factory.retries in range(6)] == [1, 2, 4, 8, 10, 10]
    factory.retries = 1
    factory.random = lambda: 0.0
    assert factory.nextDelay() == pytest.approx(1.0)
    factory.random = lambda: 1.0
    assert factory.nextDelay() == pytest.approx(3.0)
    factory.retries = 10
    assert factory.nextDelay() == 10.0  # the jitter never exceeds the cap


def test_nextDelayHugeFactor() -> None:
    """A factor large enough to overflow a float still gives maxDelay."""
    factory = AliveClientFactory()
    factory.factor = 1e10
    factory.maxDelay = 7.0
    factory.random = lambda: 0.5
    factory.retries = 1000
    assert factory.nextDelay() == 7.0


def delays(network: Network) -> list[float]:
    """The gaps between the network's connection attempts."""
    times = network.attemptTimes
    return [round(b - a, 6) for a, b in zip(times, times[1:], strict=False)]


def test_backoffWhileRefused() -> None:
    """Refused attempts back off with the stock attributes, using the
    injected jitter source."""
    network, cf, sf = makeNetwork()
    cf.initialDelay, cf.factor, cf.maxDelay = 1.0, 2.0, 10.0
    cf.random = lambda: 0.5
    network.refuse = True
    network.connector.connect()
    network.advance(60.0)
    assert delays(network)[:6] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert cf.losses[Reason.REFUSED] == network.attempts
    assert cf.lastLoss is not None and cf.lastLoss.reason is Reason.REFUSED


def test_backoffResetsOnceStable() -> None:
    """The backoff resets itself once a connection completed HELLO and stayed
    up stableAfter seconds, and not before; a RESET on a stable connection
    reconnects after quickDelay."""
    network, cf, sf = makeNetwork()
    cf.initialDelay, cf.factor, cf.maxDelay, cf.stableAfter = 1.0, 2.0, 100.0, 5.0
    cf.quickDelay = 0.05
    cf.random = lambda: 0.0
    cf.jitter = 0.0
    network.refuse = True
    network.connector.connect()
    network.advance(14.0)  # attempts at 0, 1, 3, 7 and then 15
    assert cf.retries == 4
    network.refuse = False
    network.run(lambda: cf.connected is not None)
    assert network.clock.seconds() == 15.0
    network.advance(4.0)
    assert cf.retries == 4  # HELLO done, but not up long enough
    network.wires[-1].cut()
    cutAt = network.clock.seconds()
    network.run(lambda: cf.connected is not None)
    assert network.attemptTimes[-1] - cutAt == 16.0  # still backing off
    assert cf.retries == 5
    network.advance(5.0)
    assert cf.retries == 0  # stable: reset
    network.wires[-1].cut()
    cutAt = network.clock.seconds()
    network.run(lambda: cf.connected is not None)
    assert network.attemptTimes[-1] - cutAt == pytest.approx(0.05)  # quick reconnect


def test_noResetWithoutHello() -> None:
    """A connection that never completes HELLO does not reset the backoff,
    however long it stays up (it ends by TIMEOUT)."""
    network, cf, sf = makeNetwork()
    cf.stableAfter = 5.0
    cf.retries = 3
    network.server = Protocol  # accepts, says nothing
    network.connector.connect()
    network.advance(12.0)
    assert cf.retries == 3
    network.server = None
    network.run(lambda: cf.lastLoss is not None)
    assert cf.lastLoss is not None and cf.lastLoss.reason is Reason.TIMEOUT
    assert cf.retries == 4


def test_retryQuickAfterTimeout() -> None:
    """A TIMEOUT on a stable connection reconnects after quickDelay plus
    quickSpread times the injected random draw."""

    class Impatient(RecordingClient):
        heartbeatMisses = 2  # the client's deadline comes first

    network, cf, sf = makeNetwork()
    cf.protocol = Impatient
    cf.random = lambda: 0.5
    cf.jitter = 0.2
    cf.quickDelay = 0.1
    cf.quickSpread = 0.2
    network.connector.connect()
    network.flush()
    network.advance(cf.stableAfter + 1)
    assert cf.retries == 0
    wire = network.wires[0]
    wire.stall()
    stalledAt = network.clock.seconds()
    network.run(lambda: cf.connected is None)
    assert cf.lastLoss is not None and cf.lastLoss.reason is Reason.TIMEOUT
    lostAt = network.clock.seconds()
    assert 9.0 <= lostAt - stalledAt <= 10.0
    network.run(lambda: len(network.wires) == 2)
    assert network.clock.seconds() - lostAt == pytest.approx(0.1 + 0.2 * 0.5)
    network.run(lambda: cf.connected is not None)
    # The server's side of the stalled connection is taken over.
    assert wire.server.loss is not None
    assert wire.server.loss.detail == "session taken over by a new connection"


def test_goAwayStops() -> None:
    """A GOODBYE(GO_AWAY) from the server stops the reconnecting; messages
    not confirmed fail with DeliveryFailed carrying the loss."""
    network, cf, sf = makeNetwork(reply=False, slow=True)
    cf.protocol = SmallQueue  # a window of 2
    network.connector.connect()
    network.flush()
    wire = network.wires[0]
    outcomes = Outcomes()
    for payload in (b"in flight", b"in flight too", b"queued"):
        outcomes.watch(cf.sendMessage(payload))
    network.flush()
    wire.server.close(GoodbyeCode.GO_AWAY, "decommissioned")
    network.advance(30.0)
    assert not cf.continueTrying
    assert network.attempts == 1
    for failed in outcomes.single():
        assert isinstance(failed, DeliveryFailed)
        assert failed.loss is not None and failed.loss.goodbye is GoodbyeCode.GO_AWAY
    inFlight, inFlightToo, queued = outcomes.single()
    assert cast(DeliveryFailed, inFlight).maybeProcessed
    assert cast(DeliveryFailed, inFlightToo).maybeProcessed
    assert not cast(DeliveryFailed, queued).maybeProcessed
    assert str(queued) == (
        "the session ended (CLEAN_CLOSE: peer said GOODBYE GO_AWAY: decommissioned) "
        "before confirmation"
    )
    late = cf.sendMessage(b"too late")
    failure = Outcomes()
    failure.watch(late)
    [error] = failure.single()
    assert isinstance(error, DeliveryFailed)
    assert str(error) == "the factory stopped trying; message not sent"


def test_shuttingDownRetries() -> None:
    """A GOODBYE(SHUTTING_DOWN) is a clean close: the client comes back
    (with backoff) and resumes."""
    network, cf, sf, wire = connected()
    token = cf.session.token
    wire.server.close(GoodbyeCode.SHUTTING_DOWN)
    network.run(lambda: len(network.wires) == 2 and cf.connected is not None)
    assert cf.lastLoss is not None and cf.lastLoss.reason is Reason.CLEAN_CLOSE
    assert cf.session.token == token


def test_retryPolicyOverride() -> None:
    """retryPolicy decides per Reason: here a RESET stops retrying."""
    network, cf, sf, wire = connected()
    cf.retryPolicy = {Reason.RESET: Retry.STOP}
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"one"))
    wire.cut()
    network.advance(10.0)
    assert network.attempts == 1
    [failed] = outcomes.single()
    assert isinstance(failed, DeliveryFailed) and failed.maybeProcessed


def test_maxRetries() -> None:
    """After maxRetries failed attempts the factory stops; pending messages
    fail."""
    network, cf, sf = makeNetwork()
    cast(Any, cf).maxRetries = 3
    cf.maxDelay = 1.0
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"one"))
    network.refuse = True
    network.connector.connect()
    network.advance(30.0)
    assert network.attempts == 4
    [failed] = outcomes.single()
    assert isinstance(failed, DeliveryFailed) and not failed.maybeProcessed


# -- stopTrying ---------------------------------------------------------------------------


def test_stopTryingDisconnected() -> None:
    """stopTrying() while disconnected fails every pending message at once
    and stops the reconnecting."""
    network, cf, sf, wire = connected()
    sf.slow = True
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"sent"))
    network.flush()
    network.refuse = True
    wire.cut()
    outcomes.watch(cf.sendMessage(b"queued"))
    cf.stopTrying()
    sent, queued = outcomes.single()
    assert isinstance(sent, DeliveryFailed) and sent.maybeProcessed
    assert isinstance(queued, DeliveryFailed) and not queued.maybeProcessed
    assert str(queued) == "the session ended before confirmation"
    attempts = network.attempts
    network.advance(60.0)
    assert network.attempts == attempts
    assert cf.pending == 0


def test_stopTryingConnected() -> None:
    """stopTrying() while connected lets the open connection finish its
    work; what it has not confirmed when it ends fails; no reconnect."""
    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"confirmed"))
    outcomes.watch(cf.sendMessage(b"cut"))
    sf.slow = True
    wire._move(wire.clientEnd, None)
    cf.stopTrying()
    assert not any(outcomes.results)
    refused = Outcomes()
    refused.watch(cf.sendMessage(b"after stopTrying"))
    [error] = refused.single()
    assert isinstance(error, DeliveryFailed)
    assert str(error) == "the factory stopped trying; message not sent"
    sf.processing[0].callback(None)
    network.flush()
    wire.cut()
    confirmed, cut = outcomes.single()
    assert isinstance(confirmed, Receipt)
    assert isinstance(cut, DeliveryFailed) and cut.maybeProcessed
    assert str(cut) == (
        "the session ended (RESET: connection reset or socket error (ConnectionLost)) "
        "before confirmation"
    )
    network.advance(60.0)
    assert network.attempts == 1


def test_closeInOrder() -> None:
    """close() sends what is queued, waits for the ACKs, says GOODBYE; the
    server drops the session (the client ended it)."""
    network, cf, sf, wire = connected()
    outcomes = Outcomes()
    for payload in payloads(5):
        outcomes.watch(cf.sendMessage(payload))
    closed = cf.close()
    network.run(lambda: closed.called)
    assert all(isinstance(r, Receipt) for r in outcomes.single())
    assert sf.received == payloads(5)
    assert sf.sessions == {}
    network.advance(60.0)
    assert network.attempts == 1


# -- flow control -------------------------------------------------------------------------


def test_queueFullDisconnected() -> None:
    """While disconnected, maxQueued messages queue; the next fails at once
    with QueueFull and the documented text; nothing is lost."""
    network, cf, sf = makeNetwork()
    cf.protocol = SmallQueue
    outcomes = Outcomes()
    for payload in payloads(3):
        outcomes.watch(cf.sendMessage(payload))
    full = cf.sendMessage(b"one too many")
    rejected = Outcomes()
    rejected.watch(full)
    [error] = rejected.single()
    assert isinstance(error, QueueFull)
    assert str(error) == (
        "send queue full: 3 messages (6 bytes) waiting behind 0 in flight "
        "(maxQueue=3, maxQueueBytes=67108864)"
    )
    assert cf.pending == 3
    network.connector.connect()
    network.run(lambda: outcomes.done)
    assert sf.received == payloads(3)


def test_queueFullConnected() -> None:
    """While connected, the window bounds what is in flight, the queue holds
    maxQueued more, and the next message fails with QueueFull."""
    network, cf, sf = makeNetwork()
    cf.protocol = SmallQueue
    network.connector.connect()
    network.flush()
    outcomes = Outcomes()
    for payload in payloads(5):
        outcomes.watch(cf.sendMessage(payload))
    outbox = cf.session.outbox
    assert len(outbox.inflight) == 2 and len(outbox.queue) == 3
    rejected = Outcomes()
    rejected.watch(cf.sendMessage(b"m5"))
    [error] = rejected.single()
    assert isinstance(error, QueueFull)
    assert str(error) == (
        "send queue full: 3 messages (6 bytes) waiting behind 2 in flight "
        "(maxQueue=3, maxQueueBytes=67108864)"
    )
    network.run(lambda: outcomes.done)
    assert sf.received == payloads(5)
    assert all(isinstance(r, Receipt) for r in outcomes.single())


def test_queueByteLimit() -> None:
    """maxQueuedBytes bounds the queued payload bytes."""

    class ByteLimited(RecordingClient):
        maxQueuedBytes = 10

    network, cf, sf = makeNetwork()
    cf.protocol = ByteLimited
    ok = Outcomes()
    ok.watch(cf.sendMessage(b"12345678"))
    failed = Outcomes()
    failed.watch(cf.sendMessage(b"123"))
    [error] = failed.single()
    assert isinstance(error, QueueFull)
    assert "(8 bytes)" in str(error)
    assert not ok.done


def test_defaultsQueueTenThousand() -> None:
    """With the default limits a sender queues 10,000 small messages while
    disconnected without error; all arrive once, in order."""
    network, cf, sf = makeNetwork(reply=False)
    sent = payloads(10_000)
    outcomes = Outcomes()
    for payload in sent:
        outcomes.watch(cf.sendMessage(payload))
    assert outcomes.results and not any(outcomes.results)
    assert cf.pending == 10_000
    network.connector.connect()
    network.run(lambda: outcomes.done)
    assert sf.received == sent
    results = outcomes.single()
    assert [cast(Receipt, r).seq for r in results] == list(range(1, 10_001))


def test_defaults() -> None:
    """The documented default limits."""
    proto = HeartbeatProtocol
    assert proto.maxInFlight == 1024
    assert proto.maxQueued == 65536
    assert proto.maxQueuedBytes == 64 * 1024 * 1024
    assert proto.maxFrameSize == 1024 * 1024
    assert AliveServerFactory.sessionTTL == 300.0
    assert AliveServerFactory.maxSessions == 10_000
    factory = AliveClientFactory
    assert (factory.initialDelay, factory.maxDelay, factory.factor, factory.jitter) == (
        0.5,
        60.0,
        2.0,
        0.2,
    )
    assert (factory.quickDelay, factory.quickSpread, factory.stableAfter) == (0.05, 1.0, 5.0)


@pytest.mark.slow
def test_queueFullAtDefaults() -> None:
    """With the default limits, 1,024 messages in flight and 65,536 queued
    are accepted; the next fails with QueueFull, as documented."""
    network, cf, sf = makeNetwork(reply=False, slow=True)
    network.connector.connect()
    network.flush()
    accepted = Outcomes()
    for _ in range(1024 + 65536):
        accepted.watch(cf.sendMessage(b"123456789"))
    assert not any(accepted.results)
    rejected = Outcomes()
    rejected.watch(cf.sendMessage(b"123456789"))
    [error] = rejected.single()
    assert isinstance(error, QueueFull)
    assert str(error) == (
        "send queue full: 65536 messages (589824 bytes) waiting behind 1024 in flight "
        "(maxQueue=65536, maxQueueBytes=67108864)"
    )


def test_tokens() -> None:
    """Session tokens are 16 random bytes, different for each session; a
    token that differs in one bit is unknown to the server."""
    network, cf, sf, wire = connected()
    token = cf.session.token
    assert len(token) == 16 and token != bytes(16)
    other, _, _, _ = connected()
    assert other.clientFactory.session.token != token
    network.refuse = True
    wire.cut()
    cf.session.token = bytes([token[0] ^ 1]) + token[1:]
    network.refuse = False
    outcomes = Outcomes()
    outcomes.watch(cf.sendMessage(b"after"))
    network.run(lambda: outcomes.done)
    assert isinstance(outcomes.single()[0], Receipt)
    assert sf.sessionsResumed == 0
    assert len(sf.sessions) == 2  # the original (until its TTL) and the new one
    assert cf.session.token not in (token, bytes(16))
