"""
Deterministic tests of sessions that outlive connections: L{AliveClientFactory}
and L{AliveServerFactory} over simulated connections (a L{Clock} and
in-memory transports) that are cut at every byte boundary, in both
directions; session expiry; backoff and retry policy; flow-control limits.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import pytest
from twisted.internet import defer
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
from twisted_alive._frames import GoodbyeCode
from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._outcomes import DeliveryFailed, QueueFull, Receipt
from twisted_alive._reasons import Reason

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
        if source.lost or target.lost or source.peerGone or not source.outbound:
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
            if end.aborted:
                self._lose(end, Failure(ConnectionAborted()))
                self._lose(other, Failure(ConnectionLost("Connection reset by peer")))
                return True
            if end.peerGone:
                self._lose(end, Failure(ConnectionDone()))
                return True
            if quiet and not end.outbound and not other.outbound:
                self._lose(end, Failure(ConnectionDone()))
                self._lose(other, Failure(ConnectionDone()))
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

    def cut(self, how: str = "reset", clientFirst: bool = False) -> None:
        """
        End the connection now; bytes in transit are lost.

        :param how: C{"reset"} (both sides see an RST), C{"fin"} (both see
            a close without GOODBYE), C{"client-only"} (the client sees an
            RST, the server notices nothing: a half-open connection).
        """
        if how == "client-only":
            self.serverEnd.outbound.clear()
            self._lose(self.clientEnd, Failure(ConnectionLost("Connection reset by peer")))
            return
        failure = (
            Failure(ConnectionDone()) if how == "fin" else Failure(ConnectionLost("reset"))
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
        clientFactory.clock = clock
        serverFactory.clock = clock
        self.connector = FakeConnector(self)
        self.wires: list[Wire] = []
        self.attempts = 0
        self.refuse = False
        self.server: Callable[[], IProtocol] | None = None
        clientFactory.doStart()
        serverFactory.doStart()

    @property
    def current(self) -> Wire | None:
        """The latest wire, if it is still live."""
        if self.wires and self.wires[-1].live:
            return self.wires[-1]
        return None

    def connect(self) -> None:
        """One connection attempt (what C{connector.connect()} does)."""
        self.attempts += 1
        factory = self.clientFactory
        factory.startedConnecting(self.connector)
        if self.refuse:
            factory.clientConnectionFailed(self.connector, Failure(ConnectionRefusedError()))
            return
        client = factory.buildProtocol(SERVER_ADDRESS)
        assert client is not None
        if self.server is not None:
            server: IProtocol | None = self.server()
        else:
            server = self.serverFactory.buildProtocol(CLIENT_ADDRESS)
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
        C{until()} is true.

        :raises AssertionError: if that takes more than C{limit} simulated
            seconds, or nothing is left to happen.
        """
        deadline = self.clock.seconds() + limit
        while True:
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
    from twisted_alive._frames import encodeData

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
