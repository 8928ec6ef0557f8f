# mypy: disable-error-code="no-untyped-call"
"""
Tests for ``twisted_alive._mixin``: the Twisted adapter, driven by a
``task.Clock`` and in-memory transports (no reactor, no sockets, no sleeps).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from support import (
    RecordingPeer,
    TimedStringTransport,
    assertNoResult,
    connectAlone,
    deferring,
    failureResultOf,
    successResultOf,
)
from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.test.iosim import FakeTransport, IOPump, connect

from twisted_alive._reasons import Reason, classify
from twisted_alive._transport import addressPhase
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    Frame,
    FrameDecoder,
    Goodbye,
    GoodbyeCode,
    Hello,
    Ping,
    encode,
)
from twisted_alive.core.liveness import RTT_PING_INTERVALS
from twisted_alive.core.outcomes import DeliveryFailed, QueueFull, Receipt

INTERVAL = 0.2
MISSES = 3
DEADLINE = INTERVAL * MISSES


# -- fixtures ------------------------------------------------------------------


class Peer(RecordingPeer):
    """A protocol that records what it receives and how it ended."""

    heartbeatInterval = INTERVAL
    heartbeatMisses = MISSES


class RecordingTransport(FakeTransport):
    """
    An iosim transport that decodes every frame written (with the clock
    time) and records when ``abortConnection`` was called.
    """

    def __init__(self, protocol: Peer, isServer: bool, clock: Clock) -> None:
        super().__init__(protocol, isServer)
        self.clock = clock
        self.frames: list[tuple[float, Frame]] = []
        self.abortedAt: float | None = None
        self._decoder = FrameDecoder()

    def write(self, data: bytes) -> None:
        if not self.disconnecting:
            now = self.clock.seconds()
            self.frames.extend((now, frame) for frame in self._decoder.feed(data))
        super().write(data)

    def abortConnection(self) -> None:
        if self.abortedAt is None:
            self.abortedAt = self.clock.seconds()
        super().abortConnection()

    def sent(self, kind: type) -> list[tuple[float, Any]]:
        """The frames of one kind written so far, with their times."""
        return [(t, f) for t, f in self.frames if type(f) is kind]


@dataclass
class Pair:
    """Two connected protocols and what connects them."""

    clock: Clock
    server: Peer
    client: Peer
    serverIO: RecordingTransport
    clientIO: RecordingTransport
    pump: IOPump

    def runUntil(self, until: float, pumping: bool = True) -> None:
        """
        Advance the clock to ``until``, stopping exactly at each scheduled
        call (so no timer fires late) and pumping bytes after each step.
        """
        advanceTo(self.clock, until, self.pump if pumping else None)


def advanceTo(clock: Clock, until: float, pump: IOPump | None = None) -> None:
    """Advance ``clock`` to ``until`` one scheduled call at a time."""
    for _ in range(100_000):
        pending = [c.getTime() for c in clock.getDelayedCalls()]
        step = min([until, *pending])
        clock.advance(max(0.0, step - clock.seconds()))
        if pump is not None:
            pump.flush()
        if step >= until:
            return
    raise AssertionError("the clock never reached its target")  # pragma: no cover


def makePair(
    serverHandler: Callable[[bytes], object] | None = None,
    clientHandler: Callable[[bytes], object] | None = None,
    **attributes: object,
) -> Pair:
    """Connect two ``Peer``s through iosim, on one clock, and open them."""
    clock = Clock()
    server = Peer(clock, serverHandler)
    client = Peer(clock, clientHandler)
    for name, value in attributes.items():
        setattr(server, name, value)
        setattr(client, name, value)
    serverIO = RecordingTransport(server, isServer=True, clock=clock)
    clientIO = RecordingTransport(client, isServer=False, clock=clock)
    pump = connect(server, serverIO, client, clientIO, clock=clock)
    pair = Pair(clock, server, client, serverIO, clientIO, pump)
    return pair


def peerHello(interval: float = INTERVAL, version: int = PROTOCOL_VERSION) -> bytes:
    """The bytes of a peer's HELLO."""
    data = bytearray(
        encode(Hello(PROTOCOL_VERSION, 0, interval, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION))
    )
    data[5] = version
    return bytes(data)


def lone(
    clock: Clock | None = None, **attributes: object
) -> tuple[Peer, TimedStringTransport, Clock]:
    """One ``Peer`` on a ``StringTransport`` (on ``clock``, a new ``Clock``
    by default); the test plays the other side."""
    return connectAlone(Peer, clock, **attributes)


def written(transport: StringTransport) -> list[Frame]:
    """Every frame written to ``transport`` so far."""
    return FrameDecoder().feed(transport.value())


# -- delivery --------------------------------------------------------------------


def test_messageConfirmed() -> None:
    """A message sent reaches messageReceived once and its Deferred fires with a Receipt."""
    pair = makePair()
    pair.clock.advance(0.05)
    d = pair.client.sendMessage(b"hello")
    assertNoResult(d)
    pair.pump.flush()
    receipt = successResultOf(d)
    assert isinstance(receipt, Receipt)
    assert receipt.seq == 1
    assert receipt.sentAt == receipt.confirmedAt == pytest.approx(0.05)
    assert pair.server.received == [b"hello"]
    pair.runUntil(2.0)
    assert pair.server.received == [b"hello"]
    assert pair.server.losses == pair.client.losses == []


def test_bothDirections() -> None:
    """Both sides send and confirm messages over one connection."""
    pair = makePair()
    d1 = pair.client.sendMessage(b"to server")
    d2 = pair.server.sendMessage(b"to client")
    pair.pump.flush()
    assert successResultOf(d1).seq == 1
    assert successResultOf(d2).seq == 1
    assert pair.server.received == [b"to server"]
    assert pair.client.received == [b"to client"]


def test_acksCoalesced() -> None:
    """Messages that arrive in one read are confirmed by one cumulative ACK."""
    pair = makePair()
    acksBefore = len(pair.serverIO.sent(Ack))
    ds = [pair.client.sendMessage(b"m%d" % i) for i in range(10)]
    pair.pump.flush()
    assert [successResultOf(d).seq for d in ds] == list(range(1, 11))
    acks = pair.serverIO.sent(Ack)[acksBefore:]
    assert [f.seq for _, f in acks] == [10]


def test_asyncHandlerDelaysAckAndNextMessage() -> None:
    """An unfired Deferred from messageReceived holds the ACK and the next message, in order."""
    handler, waiting = deferring()

    pair = makePair(serverHandler=handler)
    d1 = pair.client.sendMessage(b"first")
    d2 = pair.client.sendMessage(b"second")
    d3 = pair.client.sendMessage(b"third")
    pair.pump.flush()
    assert pair.server.received == [b"first"]
    assertNoResult(d1)
    assertNoResult(d2)
    waiting[0].callback(None)
    pair.pump.flush()
    assert successResultOf(d1).seq == 1
    assert pair.server.received == [b"first", b"second"]
    assertNoResult(d2)
    assertNoResult(d3)
    waiting[1].callback(None)
    waiting[2].callback(None)
    pair.pump.flush()
    assert successResultOf(d2).seq == 2
    assert successResultOf(d3).seq == 3
    assert pair.server.received == [b"first", b"second", b"third"]


def test_asyncHandlerNoFalseTimeout() -> None:
    """A slow asynchronous messageReceived does not make either side time out."""
    handler, waiting = deferring()

    pair = makePair(serverHandler=handler)
    d = pair.client.sendMessage(b"slow")
    pair.runUntil(10 * DEADLINE)
    assertNoResult(d)
    assert pair.server.losses == pair.client.losses == []
    waiting[0].callback(None)
    pair.pump.flush()
    assert successResultOf(d).seq == 1


def test_handlerRaisesRejects() -> None:
    """messageReceived raising fails that message (DeliveryFailed, rejected); later ones go on."""

    def handler(payload: bytes) -> None:
        if payload == b"bad":
            raise ValueError("cannot digest this payload")

    pair = makePair(serverHandler=handler)
    with capturedLogs() as logs:
        d1 = pair.client.sendMessage(b"good")
        d2 = pair.client.sendMessage(b"bad")
        d3 = pair.client.sendMessage(b"also good")
        pair.pump.flush()
    assert successResultOf(d1).seq == 1
    f = failureResultOf(d2, DeliveryFailed)
    exc = cast(DeliveryFailed, f.value)
    assert exc.rejected is True
    assert exc.maybeProcessed is False
    assert str(exc) == (
        "peer application failed on message 2: ValueError: cannot digest this payload"
    )
    assert successResultOf(d3).seq == 3
    assert pair.server.received == [b"good", b"bad", b"also good"]
    assert [e.get("event") for e in logs if e.get("event") == "rejected"] == ["rejected"]
    d4 = pair.client.sendMessage(b"after")
    pair.pump.flush()
    assert successResultOf(d4).seq == 4
    assert pair.server.losses == pair.client.losses == []


@pytest.mark.parametrize("when", ["at once", "later"])
def test_handlerDeferredFailsRejects(when: str) -> None:
    """A Deferred from messageReceived that fails rejects the message; the next one is processed."""
    later: list[Deferred[None]] = []

    def handler(payload: bytes) -> Deferred[None]:
        if payload != b"bad":
            return defer.succeed(None)
        if when == "at once":
            return defer.fail(KeyError("missing"))
        d: Deferred[None] = Deferred()
        later.append(d)
        return d

    pair = makePair(serverHandler=handler)
    with capturedLogs():
        d1 = pair.client.sendMessage(b"bad")
        d2 = pair.client.sendMessage(b"good")
        pair.pump.flush()
        if later:
            assertNoResult(d1)
            later[0].errback(KeyError("missing"))
            pair.pump.flush()
    exc = cast(DeliveryFailed, failureResultOf(d1, DeliveryFailed).value)
    assert exc.rejected is True
    assert str(exc) == "peer application failed on message 1: KeyError: 'missing'"
    assert successResultOf(d2).seq == 2
    assert pair.server.received == [b"bad", b"good"]


# -- heartbeats and deadlines ------------------------------------------------------


def test_pingsOnlyOnIdleLinks() -> None:
    """PINGs go out every interval on an idle link; while messages flow, only
    the RTT sample, once per RTT_PING_INTERVALS intervals."""
    pair = makePair()
    pair.runUntil(2.0)
    for io in (pair.clientIO, pair.serverIO):
        times = [t for t, _ in io.sent(Ping)]
        # One PING per interval of outbound silence (a PONG also counts as
        # outbound traffic, so it may push the next PING back).
        assert 5 <= len(times) <= 10
        assert all(b - a >= INTERVAL - 1e-9 for a, b in zip(times, times[1:], strict=False))
    busyFrom = pair.clock.seconds()
    receipts = []
    for i in range(40):
        pair.runUntil(busyFrom + i * 0.1)
        receipts.append(pair.client.sendMessage(b"tick %d" % i))
        pair.pump.flush()
    pair.runUntil(busyFrom + 3.95)
    for io in (pair.clientIO, pair.serverIO):
        busy = [t for t, _ in io.sent(Ping) if t > busyFrom]
        assert 3 <= len(busy) <= 4
        assert all(
            b - a >= RTT_PING_INTERVALS * INTERVAL - INTERVAL / 16 - 1e-9
            for a, b in zip(busy, busy[1:], strict=False)
        )
    assert [successResultOf(d).seq for d in receipts] == list(range(1, 41))
    assert pair.server.losses == pair.client.losses == []


class SoonerRecordingClock(Clock):
    """A ``Clock`` that counts calls moved to an earlier time: a reactor
    finds such a call by searching every pending call."""

    def __init__(self) -> None:
        super().__init__()
        self.movedSooner = 0

    def callLater(self, delay: float, callable: Any, *args: object, **kw: object) -> Any:
        call = super().callLater(delay, callable, *args, **kw)
        call.resetter = self._movedSooner  # type: ignore[attr-defined]
        return call

    def _movedSooner(self, call: object) -> None:
        self.movedSooner += 1


def test_helloMovesNoReactorCallSooner() -> None:
    """The HELLO brings the timer forward, from the handshake deadline to the
    first PING, without moving a call of the reactor sooner (the reactor
    finds such a call by searching every pending call: opening thousands of
    connections was quadratic). The timer wheel gives the PING's due time a
    call of its own and cancels the emptied one."""
    clock = SoonerRecordingClock()
    proto, transport, _ = lone(clock)
    assert [c.getTime() for c in clock.getDelayedCalls()] == [pytest.approx(DEADLINE)]
    clock.advance(INTERVAL / 2)
    proto.dataReceived(peerHello())
    assert [c.getTime() for c in clock.getDelayedCalls()] == [pytest.approx(INTERVAL)]
    transport.clear()
    clock.advance(INTERVAL / 2)
    assert [type(frame) for frame in written(transport)] == [Ping]
    assert clock.movedSooner == 0


def test_connectionsShareTimerCalls() -> None:
    """The timers of connections whose traffic falls in one grid step are one
    call of the reactor: 500 connections opened over 10 ms PING together."""
    clock = Clock()
    peers = []
    for _i in range(500):
        proto, transport, _ = lone(clock)
        proto.dataReceived(peerHello())
        transport.clear()
        peers.append(transport)
        clock.advance(0.00002)
    assert len(clock.getDelayedCalls()) == 1
    advanceTo(clock, INTERVAL)
    assert all([type(f) for f in written(t)] == [Ping] for t in peers)
    assert len(clock.getDelayedCalls()) == 1


def test_addressPhase() -> None:
    """Without roles, the end with the larger address PINGs half a step off
    the grid and the other on it; a transport without addresses, on it."""
    low, high = IPv4Address("TCP", "127.0.0.1", 4000), IPv4Address("TCP", "127.0.0.1", 50000)
    assert addressPhase(StringTransport(hostAddress=high, peerAddress=low)) == 0.5
    assert addressPhase(StringTransport(hostAddress=low, peerAddress=high)) == 0.0
    assert addressPhase(object()) == 0.0


def test_slowHelloStillTimesOutAtDeadline() -> None:
    """A timer that wakes before the HELLO (a slow handshake) sends nothing
    and waits on for the handshake deadline."""
    proto, transport, clock = lone()
    transport.clear()
    clock.advance(INTERVAL)
    assert transport.value() == b"" and not transport.disconnected
    clock.advance(DEADLINE - INTERVAL - 0.001)
    assert not transport.disconnected
    clock.advance(0.001)
    assert transport.abortedAt == pytest.approx(DEADLINE)
    proto.connectionLost(Failure(error.ConnectionAborted()))
    [loss] = proto.losses
    assert loss.reason is Reason.TIMEOUT


def test_tinyPeerIntervalMovesNoCallSooner() -> None:
    """A peer whose deadline falls before our first PING: the timer is
    scheduled anew for it rather than moved sooner, and the deadline holds."""
    clock = SoonerRecordingClock()
    proto, transport, _ = lone(clock, minPeerInterval=0.01)
    proto.dataReceived(peerHello(interval=0.01))
    assert clock.movedSooner == 0
    [timer] = clock.getDelayedCalls()
    assert timer.getTime() == pytest.approx(0.03)
    clock.advance(0.03)
    assert transport.abortedAt == pytest.approx(0.03)
    proto.connectionLost(Failure(error.ConnectionAborted()))
    [loss] = proto.losses
    assert loss.reason is Reason.TIMEOUT


def test_timeoutWhenPeerSilent() -> None:
    """A peer gone silent is declared TIMEOUT at its deadline, by abortConnection."""
    pair = makePair()
    pair.runUntil(1.0)
    lastHeard = pair.client.lastHeard
    assert lastHeard is not None
    assert pair.clock.seconds() - lastHeard < INTERVAL
    # The peer falls silent: bytes are no longer moved.
    pair.runUntil(lastHeard + 5 * DEADLINE, pumping=False)
    assert pair.clientIO.abortedAt == pytest.approx(lastHeard + DEADLINE)
    assert pair.client.losses == []  # the reactor reports the abort later
    pair.pump.flush()
    [loss] = pair.client.losses
    assert loss.reason is Reason.TIMEOUT
    assert loss.detail == "no data from peer for 0.600 s (deadline 0.600 s = 0.2 s x 3)"
    assert pair.client.loss is loss


def test_timeoutAbortsStringTransport() -> None:
    """The timeout path calls abortConnection (never loseConnection alone) and PINGs before it."""
    proto, transport, clock = lone()
    clock.advance(0.1)
    proto.dataReceived(peerHello())
    advanceTo(clock, 0.1 + DEADLINE - 0.001)
    assert not transport.disconnecting
    pings = [f for f in written(transport) if type(f) is Ping]
    assert len(pings) == 3  # 0.2, 0.4, 0.6 s after our HELLO went out at 0
    advanceTo(clock, 0.1 + DEADLINE)
    assert transport.abortedAt == pytest.approx(0.1 + DEADLINE)
    assert clock.getDelayedCalls() == []
    proto.connectionLost(Failure(error.ConnectionAborted()))
    [loss] = proto.losses
    assert loss.reason is Reason.TIMEOUT
    assert loss.connectedFor == pytest.approx(0.1 + DEADLINE)


def test_noFalseTimeoutWhileBulkDataArrives() -> None:
    """A large message trickling in for many deadlines keeps the peer alive."""
    proto, transport, clock = lone()
    proto.dataReceived(peerHello())
    payload = bytes(range(256)) * 1200
    frame = encode(Data(1, payload))
    chunk = 3000
    for i in range(0, len(frame), chunk):
        advanceTo(clock, clock.seconds() + INTERVAL * 0.9)
        proto.dataReceived(frame[i : i + chunk])
    assert clock.seconds() > 20 * DEADLINE
    assert proto.losses == []
    assert not transport.disconnecting
    assert proto.received == [payload]
    assert Ack(1) in written(transport)


def test_lateTimerNotBlamedOnPeer() -> None:
    """A timer firing past the deadline (local stall) is not TIMEOUT if the peer's bytes follow."""
    pair = makePair()
    pair.runUntil(0.5)
    lastHeard = pair.client.lastHeard
    assert lastHeard is not None
    with capturedLogs() as logs:
        pair.clock.advance(1.0)  # this process "did not run" for a second
    assert pair.clock.seconds() - lastHeard > DEADLINE
    assert pair.clientIO.abortedAt is None
    assert pair.serverIO.abortedAt is None
    assert any(e.get("event") == "stall" for e in logs)
    pair.pump.flush()  # the peer's bytes, unread during the stall
    pair.runUntil(pair.clock.seconds() + 3.0)
    assert pair.server.losses == pair.client.losses == []
    d = pair.client.sendMessage(b"still here")
    pair.pump.flush()
    assert successResultOf(d).seq == 1


class SlowTimerPeer(Peer):
    """A ``Peer`` whose every timer turn takes 20 ms of the clock."""

    def timeoutConnection(self) -> None:
        cast(Clock, self.clock).rightNow += 0.02
        super().timeoutConnection()


def test_timersDueTogetherAreNoStall() -> None:
    """Ten connections whose timers run in one turn, 20 ms each: the last
    runs 180 ms after it was due, but the process did not stall, so no stall
    is logged or counted; every connection still PINGs."""
    clock = Clock()
    peers = [connectAlone(SlowTimerPeer, clock) for _ in range(10)]
    for proto, transport, _ in peers:
        proto.dataReceived(peerHello())
        transport.clear()
    with capturedLogs() as logs:
        clock.advance(INTERVAL)
    assert clock.seconds() == pytest.approx(INTERVAL + 0.2)
    assert not any(e.get("event") == "stall" for e in logs)
    for proto, transport, _ in peers:
        assert [type(frame) for frame in written(transport)] == [Ping]
        assert proto._alive is not None and proto._alive.liveness.stalledFor == 0.0


def test_lateTimerGrantOnlyOnce() -> None:
    """After a local stall, a peer that stays silent is still declared TIMEOUT."""
    proto, transport, clock = lone()
    proto.dataReceived(peerHello())
    clock.advance(1.0)  # the timer was due at 0.2 (PING): 0.8 s late
    assert not transport.disconnected
    advanceTo(clock, 10.0)
    assert transport.disconnected
    proto.connectionLost(Failure(error.ConnectionAborted()))
    [loss] = proto.losses
    assert loss.reason is Reason.TIMEOUT
    assert transport.abortedAt == pytest.approx(0.8 + DEADLINE)


def test_noHelloTimeout() -> None:
    """A peer that never completes its HELLO is TIMEOUT at the deadline, even trickling bytes."""
    proto, transport, clock = lone()
    hello = peerHello()
    for i in range(5):  # the first 5 bytes of a HELLO, one every 0.1 s
        advanceTo(clock, 0.1 * (i + 1))
        proto.dataReceived(hello[i : i + 1])
    advanceTo(clock, DEADLINE - 0.001)
    assert not transport.disconnected
    advanceTo(clock, 5.0)
    assert transport.disconnected
    proto.connectionLost(Failure(error.ConnectionAborted()))
    [loss] = proto.losses
    assert loss.reason is Reason.TIMEOUT
    assert loss.detail == "no HELLO from peer for 0.600 s (deadline 0.600 s = 0.2 s x 3)"
    assert transport.abortedAt == pytest.approx(DEADLINE)
    assert [type(f) for f in written(transport)] == [Hello]


# -- closing -------------------------------------------------------------------------


def test_closeSendsGoodbyeAfterQueuedData() -> None:
    """close() sends the queue, then GOODBYE; the peer gets CLEAN_CLOSE, this side LOCAL_CLOSE."""
    pair = makePair(maxInFlight=2)
    ds = [pair.client.sendMessage(b"m%d" % i) for i in range(6)]
    closed = pair.client.close(GoodbyeCode.SHUTTING_DOWN, "maintenance")
    assertNoResult(closed)
    pair.pump.flush()
    assert [successResultOf(d).seq for d in ds] == list(range(1, 7))
    assert pair.server.received == [b"m%d" % i for i in range(6)]
    kinds = [type(f) for _, f in pair.clientIO.frames]
    assert kinds.count(Goodbye) == 1
    goodbyeAt = kinds.index(Goodbye)
    assert max(i for i, k in enumerate(kinds) if k is Data) < goodbyeAt
    assert pair.clientIO.frames[goodbyeAt][1] == Goodbye(GoodbyeCode.SHUTTING_DOWN, "maintenance")
    [serverLoss] = pair.server.losses
    [clientLoss] = pair.client.losses
    assert serverLoss.reason is Reason.CLEAN_CLOSE
    assert serverLoss.goodbye is GoodbyeCode.SHUTTING_DOWN
    assert serverLoss.detail == "peer said GOODBYE SHUTTING_DOWN: maintenance"
    assert clientLoss.reason is Reason.LOCAL_CLOSE
    assert successResultOf(closed) is clientLoss
    assert pair.clientIO.abortedAt is None


def test_closeWaitsForAcks() -> None:
    """close() waits for the peer to confirm what is in flight before closing."""
    handler, waiting = deferring()

    pair = makePair(serverHandler=handler)
    d = pair.client.sendMessage(b"important")
    closed = pair.client.close()
    pair.runUntil(1.0)
    assert pair.clientIO.sent(Goodbye) != []
    assertNoResult(d)
    assertNoResult(closed)
    assert pair.server.losses == pair.client.losses == []
    waiting[0].callback(None)
    pair.pump.flush()
    assert successResultOf(d).seq == 1
    assert successResultOf(closed).reason is Reason.LOCAL_CLOSE
    [serverLoss] = pair.server.losses
    assert serverLoss.reason is Reason.CLEAN_CLOSE
    assert serverLoss.goodbye is GoodbyeCode.NORMAL


def test_closeBoundedByCloseTimeout() -> None:
    """close() gives up waiting for ACKs after closeTimeout; the unconfirmed message fails."""
    pair = makePair(serverHandler=lambda payload: Deferred(), closeTimeout=1.5)
    pair.runUntil(0.3)
    d = pair.client.sendMessage(b"never confirmed")
    closed = pair.client.close()
    pair.runUntil(0.3 + 1.5 - 0.01)
    assertNoResult(closed)
    pair.runUntil(0.3 + 1.5)
    loss = successResultOf(closed)
    assert loss.reason is Reason.LOCAL_CLOSE
    assert loss.connectedFor == pytest.approx(1.8)
    assert loss.unconfirmed == 1
    exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
    assert exc.loss is loss
    assert exc.maybeProcessed is True
    assert exc.rejected is False


def test_closeTwiceSameLoss() -> None:
    """A second close() returns the same outcome and sends no second GOODBYE."""
    pair = makePair()
    first = pair.client.close()
    second = pair.client.close()
    pair.pump.flush()
    assert successResultOf(first) is successResultOf(second)
    assert len(pair.clientIO.sent(Goodbye)) == 1
    third = pair.client.close()
    assert successResultOf(third) is pair.client.loss


def test_sendAfterCloseFails() -> None:
    """sendMessage() after this side's close() raises RuntimeError, while closing and after."""
    pair = makePair()
    pair.client.close()
    with pytest.raises(RuntimeError) as info:
        pair.client.sendMessage(b"late")
    assert str(info.value) == "sendMessage() called after close()"
    pair.pump.flush()
    assert pair.client.loss is not None
    with pytest.raises(RuntimeError) as info:
        pair.client.sendMessage(b"later")
    assert str(info.value) == "sendMessage() called after close()"


def test_closeDuringHandshakeSendsQueuedFirst() -> None:
    """close() before the peer's HELLO still sends the queued message before GOODBYE."""
    proto, transport, clock = lone()
    d = proto.sendMessage(b"one and done")
    closed = proto.close()
    assert [type(f) for f in written(transport)] == [Hello]
    proto.dataReceived(peerHello())
    assert [type(f) for f in written(transport)] == [Hello, Data, Goodbye]
    assert not transport.disconnecting  # waiting for the ACK
    proto.dataReceived(encode(Ack(1)))
    assert successResultOf(d).seq == 1
    assert transport.disconnecting
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert successResultOf(closed).reason is Reason.LOCAL_CLOSE


def test_dataThenGoodbyeInOneRead() -> None:
    """DATA then GOODBYE in one read: the DATA is processed and acknowledged before the close."""
    proto, transport, clock = lone()
    proto.dataReceived(
        peerHello()
        + encode(Data(1, b"a"))
        + encode(Data(2, b"b"))
        + encode(Goodbye(GoodbyeCode.NORMAL, ""))
    )
    assert proto.received == [b"a", b"b"]
    assert written(transport)[-1] == Ack(2)
    assert transport.disconnecting
    proto.connectionLost(Failure(error.ConnectionDone()))
    [loss] = proto.losses
    assert loss.reason is Reason.CLEAN_CLOSE
    assert loss.detail == "peer said GOODBYE NORMAL"


def test_peerGoodbyeWaitsForAsyncHandler() -> None:
    """After the peer's GOODBYE, the message in progress is finished and acknowledged first."""
    handler, waiting = deferring()

    pair = makePair(serverHandler=handler)
    d = pair.client.sendMessage(b"slow")
    closed = pair.client.close()
    pair.pump.flush()
    assert pair.server.losses == []
    assertNoResult(closed)
    waiting[0].callback(None)
    pair.pump.flush()
    assert successResultOf(d).seq == 1
    assert successResultOf(closed).reason is Reason.LOCAL_CLOSE
    assert [loss.reason for loss in pair.server.losses] == [Reason.CLEAN_CLOSE]


def test_peerGoodbyeWaitsForOwnAcks() -> None:
    """After the peer's GOODBYE, this side waits for the ACKs of its own messages in flight."""
    proto, transport, clock = lone(closeTimeout=5.0)
    proto.dataReceived(peerHello())
    d1 = proto.sendMessage(b"in flight")
    proto.dataReceived(encode(Goodbye(GoodbyeCode.SHUTTING_DOWN, "")))
    assert not transport.disconnecting
    proto.dataReceived(encode(Ack(1)))
    assert successResultOf(d1).seq == 1
    assert transport.disconnecting
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert [loss.reason for loss in proto.losses] == [Reason.CLEAN_CLOSE]


def test_peerGoodbyeOwnAcksBounded() -> None:
    """Waiting for ACKs after the peer's GOODBYE ends at the peer's FIN or after closeTimeout."""
    proto, transport, clock = lone(closeTimeout=5.0)
    proto.dataReceived(peerHello())
    d1 = proto.sendMessage(b"in flight")
    proto.dataReceived(encode(Goodbye(GoodbyeCode.SHUTTING_DOWN, "")))
    clock.advance(5.0)
    assert transport.disconnecting
    proto.connectionLost(Failure(error.ConnectionDone()))
    exc = cast(DeliveryFailed, failureResultOf(d1, DeliveryFailed).value)
    assert exc.maybeProcessed is True
    proto, transport, clock = lone(closeTimeout=5.0)
    proto.dataReceived(peerHello())
    d2 = proto.sendMessage(b"in flight")
    proto.dataReceived(encode(Goodbye(GoodbyeCode.SHUTTING_DOWN, "")))
    proto.readConnectionLost()
    assert transport.disconnecting
    proto.connectionLost(Failure(error.ConnectionDone()))
    failureResultOf(d2, DeliveryFailed)
    assert [loss.reason for loss in proto.losses] == [Reason.CLEAN_CLOSE]


def test_halfCloseWaitsForAsyncHandler() -> None:
    """After the peer's FIN, the message in messageReceived is finished and acknowledged first."""
    proto, transport, clock = lone()
    handler, waiting = deferring()

    proto.handler = handler
    proto.dataReceived(peerHello() + encode(Data(1, b"x")) + encode(Data(2, b"y")))
    proto.readConnectionLost()
    assert not transport.disconnecting
    waiting[0].callback(None)
    assert not transport.disconnecting
    waiting[1].callback(None)
    assert transport.disconnecting
    assert [f for f in written(transport) if type(f) is Ack] == [Ack(1), Ack(2)]
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert [loss.reason for loss in proto.losses] == [Reason.PEER_CLOSED]


def test_rttMeasured() -> None:
    """A PING answered after 50 ms gives an RTT of 50 ms."""
    pair = makePair()
    assert pair.client.rtt is None
    pair.runUntil(INTERVAL, pumping=False)  # both sides PING now
    pair.clock.advance(0.05)
    pair.pump.flush()
    assert pair.client.rtt == pytest.approx(0.05)
    assert pair.server.rtt == pytest.approx(0.05)


def test_peerIntervalOutOfRange() -> None:
    """A peer announcing a heartbeat interval below minPeerInterval is a PROTOCOL_ERROR."""
    proto, transport, clock = lone()
    with capturedLogs():
        proto.dataReceived(peerHello(interval=0.05))
    detail = "heartbeat interval 0.05 s is outside the accepted range 0.1..3600 s"
    assert written(transport)[-1] == Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert [(loss.reason, loss.detail) for loss in proto.losses] == [
        (Reason.PROTOCOL_ERROR, detail)
    ]


def test_deadlineFollowsPeerInterval() -> None:
    """The deadline is the peer's announced interval times this side's misses."""
    proto, transport, clock = lone()
    proto.dataReceived(peerHello(interval=1.0))
    advanceTo(clock, 3.0 - 0.001)
    assert transport.abortedAt is None
    advanceTo(clock, 10.0)
    assert transport.abortedAt == pytest.approx(3.0)


def test_ownLoseConnectionIsLocalClose() -> None:
    """A close this side made through the transport is LOCAL_CLOSE, not PEER_CLOSED."""
    proto, transport, clock = lone()
    proto.dataReceived(peerHello())
    transport.loseConnection()
    proto.connectionLost(Failure(error.ConnectionDone()))
    assert [(loss.reason, loss.detail) for loss in proto.losses] == [
        (Reason.LOCAL_CLOSE, "closed by this side")
    ]


# -- losses ---------------------------------------------------------------------------


def test_lossFailsEveryPendingMessage() -> None:
    """On a lost connection every sendMessage Deferred fails with DeliveryFailed and the Loss."""
    proto, transport, clock = lone(maxInFlight=2)
    proto.dataReceived(peerHello())
    lost = proto.whenLost()
    ds = [proto.sendMessage(b"m%d" % i) for i in range(3)]
    proto.connectionLost(Failure(error.ConnectionLost("Connection lost")))
    loss = proto.loss
    assert loss is not None
    assert loss.reason is Reason.RESET
    assert loss.unconfirmed == 3
    assert proto.losses == [loss]
    assert successResultOf(lost) is loss
    assert successResultOf(proto.whenLost()) is loss
    excs = [cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value) for d in ds]
    assert all(e.loss is loss for e in excs)
    assert [e.maybeProcessed for e in excs] == [True, True, False]
    assert str(excs[0]) == f"connection lost before confirmation ({loss})"
    assert str(loss) == "RESET: connection reset or socket error (ConnectionLost)"


def test_peerClosedWithoutGoodbye() -> None:
    """A FIN without GOODBYE (readConnectionLost) is PEER_CLOSED; this side closes its end."""
    proto, transport, clock = lone()
    proto.dataReceived(peerHello() + encode(Data(1, b"last words")))
    proto.readConnectionLost()
    assert proto.received == [b"last words"]
    assert transport.disconnecting
    assert Ack(1) in written(transport)
    proto.connectionLost(Failure(error.ConnectionDone()))
    [loss] = proto.losses
    assert loss.reason is Reason.PEER_CLOSED
    assert loss.detail == "peer closed the connection without GOODBYE"


def test_disconnectedOnceOverPair() -> None:
    """disconnected() is called exactly once per side and whenLost fires with the same Loss."""
    pair = makePair()
    clientLost = pair.client.whenLost()
    serverLost = pair.server.whenLost()
    pair.client.abort()
    pair.pump.flush()
    pair.runUntil(10.0)
    [clientLoss] = pair.client.losses
    [serverLoss] = pair.server.losses
    assert successResultOf(clientLost) is clientLoss
    assert successResultOf(serverLost) is serverLoss
    assert clientLoss.reason is Reason.LOCAL_CLOSE
    assert clientLoss.detail == "aborted by this side"
    assert pair.clock.getDelayedCalls() == []


def test_queueFull() -> None:
    """sendMessage() beyond maxQueued fails at once with QueueFull; nothing is queued."""
    proto, transport, clock = lone(maxInFlight=1, maxQueued=2)
    proto.dataReceived(peerHello())
    ds = [proto.sendMessage(b"abc") for _ in range(3)]  # 1 in flight, 2 queued
    full = proto.sendMessage(b"xyz")
    f = failureResultOf(full, QueueFull)
    assert str(f.value) == (
        "send queue full: 2 messages (6 bytes) waiting behind 1 in flight "
        "(maxQueue=2, maxQueueBytes=67108864)"
    )
    session = proto.session
    assert session is not None
    assert len(session.outbox) == 3
    proto.dataReceived(encode(Ack(1)))
    assert successResultOf(ds[0]).seq == 1
    assertNoResult(proto.sendMessage(b"fits now"))
    proto.connectionLost(Failure(error.ConnectionDone()))
    for d in ds[1:]:
        failureResultOf(d, DeliveryFailed)


def test_sendMessageTypeAndSizeErrors() -> None:
    """sendMessage() rejects non-bytes and oversize payloads with exact messages."""
    proto = Peer(Clock())
    with pytest.raises(RuntimeError) as info:
        proto.sendMessage(b"too early")
    assert str(info.value) == "sendMessage() called before the connection was made"
    proto, transport, clock = lone(maxFrameSize=64)
    with pytest.raises(TypeError) as typeInfo:
        proto.sendMessage(cast(bytes, "text"))
    assert str(typeInfo.value) == "payload must be bytes, not str"
    with pytest.raises(TypeError) as typeInfo:
        proto.sendMessage(cast(bytes, bytearray(b"x")))
    assert str(typeInfo.value) == "payload must be bytes, not bytearray"
    with pytest.raises(ValueError) as valueInfo:
        proto.sendMessage(b"x" * 56)
    assert str(valueInfo.value) == (
        "message of 56 bytes exceeds the maximum of 55 bytes (maxFrameSize 64 minus 9)"
    )
    assertNoResult(proto.sendMessage(b"x" * 55))
    proto.connectionLost(Failure(error.ConnectionDone()))


def test_versionMismatch() -> None:
    """A HELLO of another protocol version gets GOODBYE(PROTOCOL_ERROR): PROTOCOL_ERROR."""
    proto, transport, clock = lone()
    with capturedLogs():
        proto.dataReceived(peerHello(version=1))
    detail = (
        "the peer speaks another version of twisted_alive: "
        "unsupported protocol version 1 (this side speaks 2)"
    )
    assert written(transport)[-1] == Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)
    assert transport.disconnecting
    proto.connectionLost(Failure(error.ConnectionDone()))
    [loss] = proto.losses
    assert loss.reason is Reason.PROTOCOL_ERROR
    assert loss.detail == detail


def test_garbageIsProtocolError() -> None:
    """Garbage is PROTOCOL_ERROR at once, answered with GOODBYE, aborted if the close stalls."""
    proto, transport, clock = lone(heartbeatInterval=5.0)
    with capturedLogs():
        proto.dataReceived(b"\xff" * 64)
    detail = (
        "the peer does not speak twisted_alive: its first bytes were "
        "0xff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff… "
        "(frame of 4294967295 bytes exceeds the maximum of 1048576 bytes)"
    )
    assert written(transport)[-1] == Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)
    assert transport.disconnecting
    assert not transport.disconnected
    clock.advance(2.0)  # the flush never completes: abort
    assert transport.disconnected
    proto.connectionLost(Failure(error.ConnectionAborted()))
    [loss] = proto.losses
    assert loss.reason is Reason.PROTOCOL_ERROR
    assert loss.detail == detail


def test_goodbyeProtocolErrorFromPeer() -> None:
    """A GOODBYE(PROTOCOL_ERROR) from the peer is classified PROTOCOL_ERROR with its code."""
    proto, transport, clock = lone()
    proto.dataReceived(peerHello() + encode(Goodbye(GoodbyeCode.PROTOCOL_ERROR, "bad ACK")))
    assert transport.disconnecting
    proto.connectionLost(Failure(error.ConnectionDone()))
    [loss] = proto.losses
    assert loss.reason is Reason.PROTOCOL_ERROR
    assert loss.goodbye is GoodbyeCode.PROTOCOL_ERROR
    assert loss.detail == "peer said GOODBYE PROTOCOL_ERROR: bad ACK"


def test_violationBeforeFrameError() -> None:
    """A delivery violation then garbage in one read is a PROTOCOL_ERROR, not an exception."""
    proto, transport, clock = lone()
    proto.dataReceived(peerHello())
    with capturedLogs():
        proto.dataReceived(encode(Data(5, b"gap")) + b"\xff" * 8)
    detail = "DATA sequence number 5 arrived, expected 1"
    assert written(transport)[-1] == Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)
    assert transport.disconnecting


# -- classify ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (error.ConnectionDone(), Reason.PEER_CLOSED),
        (error.ConnectionLost(), Reason.RESET),
        (error.ConnectionAborted(), Reason.LOCAL_CLOSE),
        (error.ConnectionRefusedError(), Reason.REFUSED),
        (error.TimeoutError(), Reason.CONNECT_TIMEOUT),
        (error.TCPTimedOutError(), Reason.CONNECT_TIMEOUT),
        (error.NoRouteError(), Reason.CONNECT_FAILED),
        (error.UnknownHostError(), Reason.CONNECT_FAILED),
        (CancelledError(), Reason.LOCAL_CLOSE),
        (OSError(errno.ECONNRESET, "Connection reset by peer"), Reason.RESET),
        (OSError(errno.EPIPE, "Broken pipe"), Reason.RESET),
        (OSError(errno.ETIMEDOUT, "Connection timed out"), Reason.TIMEOUT),
        (ConnectionResetError(errno.ECONNRESET, "reset"), Reason.RESET),
        (RuntimeError("anything else"), Reason.RESET),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v.name,
)
def test_classify(exc: BaseException, reason: Reason) -> None:
    """classify() names the reason of each Twisted error, as a Failure or a bare exception."""
    assert classify(exc) is reason
    assert classify(Failure(exc)) is reason


def test_classifyDNSLookupError() -> None:
    """A failed name lookup is CONNECT_FAILED (a connection attempt that failed), not RESET."""
    assert classify(error.DNSLookupError("no such host")) is Reason.CONNECT_FAILED
