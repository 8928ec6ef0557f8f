"""
Hostile and heavy load at run time: peers that stop reading, PING floods,
floods of rejected messages, fair reading, the server's bound on a client's
heartbeat interval, and an RTT that is always known (busy links, long
links, the side that never PINGs first). In memory with a ``Clock``.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

import pytest
from support import LogEvents, RecordingPeer, TimedStringTransport, built, forProtocol
from twisted.internet.base import DelayedCall
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from twisted_alive import AliveClientFactory, AliveServerFactory
from twisted_alive._mixin import (
    CLIENT_MAX_PEER_INTERVAL,
    SERVER_MAX_PEER_INTERVAL,
    TURN_CHECK_EVERY,
    settingsFor,
)
from twisted_alive._reasons import Reason
from twisted_alive._transport import unsentBytes
from twisted_alive.core.connection import Settings
from twisted_alive.core.frames import (
    MIN_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    FrameDecoder,
    Goodbye,
    GoodbyeCode,
    Hello,
    Ping,
    Pong,
    Reject,
    encode,
)
from twisted_alive.core.liveness import RTT_DEADLINE_FACTOR, RTT_PING_INTERVALS, Liveness
from twisted_alive.core.rejections import (
    MAX_CAUSES,
    MAX_NEW_CAUSES,
    OTHER_CAUSES,
    REJECTION_LOG_EVERY,
    RejectionLog,
    Report,
    rejectionsTotal,
)
from twisted_alive.testing import FakeLink, FakeTransport


def hello(interval: float, maxFrameSize: int = 1_048_576, window: int = 1024) -> bytes:
    """An encoded HELLO of a peer keeping no session."""
    return encode(Hello(PROTOCOL_VERSION, 0, interval, maxFrameSize, window, 1, NO_SESSION))


class BufferedTransport(TimedStringTransport):
    """
    A ``StringTransport`` that keeps what is written unsent, the way a
    reactor's TCP connection does when the peer does not read (the same
    buffer attributes), until `drain` says the peer read it.
    """

    dataBuffer = b""
    offset = 0

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.taken = 0

    @property
    def _tempDataLen(self) -> int:
        return len(self.value()) - self.taken  # type: ignore[no-untyped-call]

    def drain(self) -> None:
        """The peer read everything written so far."""
        self.taken = len(self.value())  # type: ignore[no-untyped-call]


def frames(data: bytes) -> list[Any]:
    """The frames in ``data``."""
    return FrameDecoder().feed(data)


class Fast(RecordingPeer):
    heartbeatInterval = 0.2
    heartbeatMisses = 3


class Slow(RecordingPeer):
    heartbeatInterval = 1.0
    heartbeatMisses = 3


class DelayedLink(FakeLink[Any, Any]):
    """A `FakeLink` whose bytes take ``delay`` seconds each way."""

    def __init__(self, server: Any, client: Any, delay: float, clock: Clock | None = None) -> None:
        self.delay = delay
        self._inTransit: dict[int, deque[tuple[float, bytes]]] = {}
        super().__init__(server, client, clock)

    def _deliver(self, source: FakeTransport) -> int:
        transit = self._inTransit.setdefault(id(source), deque())
        now = self.clock.seconds()
        if source.outbound and source not in self._stalled:
            transit.append((now + self.delay, bytes(source.outbound)))
            source.outbound.clear()
        moved = 0
        target = self._peerOf(source)
        while transit and transit[0][0] <= now + 1e-9 and not target.disconnected:
            piece = transit.popleft()[1]
            moved += len(piece)
            target.protocol.dataReceived(piece)
        return moved


# -- RTT always known ------------------------------------------------------------------------------


def test_serverRttKnownWhenClientIntervalShorter() -> None:
    """The side whose peer always PINGs first still measures RTT, within RTT_PING_INTERVALS
    of its own intervals."""
    link = FakeLink(Slow(), Fast())
    link.advance(0.5)
    assert link.client.rtt is not None
    link.advance(RTT_PING_INTERVALS * Slow.heartbeatInterval + 0.1)
    assert link.server.rtt is not None
    assert link.server.losses == link.client.losses == []


def test_rttKnownOnBusyLink() -> None:
    """While messages flow both ways (no idle PINGs), both sides still get RTT samples."""
    link = FakeLink(Slow(), Slow())
    for i in range(int((RTT_PING_INTERVALS + 0.5) / 0.1)):
        link.client.sendMessage(b"c%d" % i)
        link.server.sendMessage(b"s%d" % i)
        link.advance(0.1)
    assert link.server.rtt is not None and link.client.rtt is not None
    assert len(link.server.received) == len(link.client.received) > 40


def test_rttKnownOnLongRoundTrip() -> None:
    """With a 0.6 s round trip and a 0.2 s interval, several PINGs are outstanding and
    the RTT is known within 2 s, close to 0.6 s; the link is not declared dead."""
    link = DelayedLink(Fast(), Fast(), delay=0.3)
    link.advance(2.0)
    for side in (link.client, link.server):
        assert side.rtt == pytest.approx(0.6, abs=0.02)
    assert link.server.losses == link.client.losses == []


def test_deadlineFloorFromRtt() -> None:
    """Once the RTT is known, the deadline is never below 4 x (SRTT + 4 RTTVAR): a
    0.2 s x 3 deadline on a 0.6 s round trip becomes a few seconds, and TIMEOUT says so."""
    link = DelayedLink(Fast(), Fast(), delay=0.3)
    link.advance(3.0)
    live = link.client._alive.liveness
    assert live.srtt is not None and live.rttvar is not None
    floor = RTT_DEADLINE_FACTOR * (live.srtt + 4 * live.rttvar)
    assert live.deadline == pytest.approx(floor) and floor > 2.4
    link.stall()
    stalledAt = link.clock.seconds()
    link.advance(2.4)
    assert link.client.losses == []
    link.advance(floor)
    (loss,) = link.client.losses
    assert loss.reason is Reason.TIMEOUT
    assert "4 x (SRTT + 4 RTTVAR), above 0.2 s x 3" in loss.detail
    assert link.clock.seconds() - stalledAt >= 2.4


def test_deadlineFloorCapped() -> None:
    """The RTT floor never exceeds maxDeadline, however slow the PONGs."""
    live = Liveness(1.0, 3, 0.0, maxDeadline=180.0)
    live.handshake(1.0, 0.0)
    live.lastSent = live.lastPingSent = 0.0
    live.handleTimer(1.0, 1.0)
    assert live.pongReceived(live.pingId, 501.0) == 500.0
    assert live.deadline == 180.0
    assert live.nominalDeadline == 3.0


def test_deadlineFloorNeverLowersTheDeadline() -> None:
    """A short RTT leaves the configured deadline as it is."""
    live = Liveness(1.0, 3, 0.0)
    live.handshake(1.0, 0.0)
    live.handleTimer(1.0, 1.0)
    live.pongReceived(live.pingId, 1.001)
    assert live.deadline == 3.0


# -- the server's bound on a client's interval -----------------------------------------------------


def test_serverRefusesHourLongIntervalByDefault() -> None:
    """A client announcing 3,600 s is refused by a server's default maxPeerInterval
    (60 s) with an exact text; the client sees PROTOCOL_ERROR."""

    class Client(RecordingPeer):
        heartbeatInterval = 3600.0

    server = forProtocol(AliveServerFactory, RecordingPeer).buildProtocol(None)
    client = forProtocol(AliveClientFactory, Client).buildProtocol(None)
    link = FakeLink(server, client)
    link.flush()
    detail = "heartbeat interval 3600 s is outside the accepted range 0.1..60 s"
    assert [loss.reason for loss in client.losses] == [Reason.PROTOCOL_ERROR]
    assert client.losses[0].detail == f"peer said GOODBYE PROTOCOL_ERROR: {detail}"
    assert server.losses[0].detail == detail


def test_clientAcceptsHourLongServerInterval() -> None:
    """A connecting side keeps the 3,600 s bound: it chose its server."""

    class Server(RecordingPeer):
        heartbeatInterval = 3600.0

    server = forProtocol(AliveServerFactory, Server).buildProtocol(None)
    client = forProtocol(AliveClientFactory, RecordingPeer).buildProtocol(None)
    link = FakeLink(server, client)
    link.flush()
    assert client.losses == [] and server.losses == []
    assert client._alive.liveness.peerInterval == 3600.0
    assert client.aliveSettings().maxPeerInterval == CLIENT_MAX_PEER_INTERVAL
    assert server.aliveSettings().maxPeerInterval == SERVER_MAX_PEER_INTERVAL


def test_explicitMaxPeerIntervalWins() -> None:
    """A maxPeerInterval set on the class applies whatever the side's role."""

    class Server(RecordingPeer):
        maxPeerInterval = 7200.0

    server = forProtocol(AliveServerFactory, Server).buildProtocol(None)
    assert server.aliveSettings().maxPeerInterval == 7200.0


def test_factorySettingsCarryPeerIntervals() -> None:
    """A factory's settings carry the protocol's minPeerInterval and its role's maxPeerInterval,
    as its protocols' settings do (one settingsFor for both)."""

    class Tight(RecordingPeer):
        minPeerInterval = 0.5

    class Wide(Tight):
        maxPeerInterval = 7200.0

    client = forProtocol(AliveClientFactory, Tight)
    server = forProtocol(AliveServerFactory, Tight)
    assert client.aliveSettings().minPeerInterval == 0.5
    assert server.aliveSettings().minPeerInterval == 0.5
    assert client.aliveSettings().maxPeerInterval == CLIENT_MAX_PEER_INTERVAL
    assert server.aliveSettings().maxPeerInterval == SERVER_MAX_PEER_INTERVAL
    assert server.aliveSettings() == built(server).aliveSettings()
    assert client.aliveSettings() == settingsFor(Tight, accepting=False)
    assert server.aliveSettings() == settingsFor(Tight, accepting=True)
    assert settingsFor(Wide, accepting=True).maxPeerInterval == 7200.0
    assert forProtocol(AliveServerFactory, Wide).aliveSettings().maxPeerInterval == 7200.0


def test_settingsForPlainObject() -> None:
    """settingsFor takes HeartbeatMixin's defaults for attributes an object lacks."""
    assert settingsFor(object(), accepting=False) == Settings(
        maxPeerInterval=CLIENT_MAX_PEER_INTERVAL
    )
    assert settingsFor(object(), accepting=True).maxPeerInterval == SERVER_MAX_PEER_INTERVAL


# -- a peer that stops reading ---------------------------------------------------------------------


def connectBuffered(**attributes: object) -> tuple[RecordingPeer, BufferedTransport, Clock]:
    """A `RecordingPeer` with ``attributes`` on a `BufferedTransport`, after a
    HELLO from the test (interval 0.5 s: deadline 1.5 s) and its own HELLO read."""
    clock = Clock()
    proto = RecordingPeer(clock)
    for name, value in attributes.items():
        setattr(proto, name, value)
    transport = BufferedTransport(clock)
    proto.makeConnection(transport)  # type: ignore[no-untyped-call]
    proto.dataReceived(hello(0.5))
    transport.drain()
    return proto, transport, clock


def test_unsentBytesOfTcpLikeTransports() -> None:
    """unsentBytes reads the TCP transport's buffers; a transport of another kind is unknown."""
    clock = Clock()
    transport = BufferedTransport(clock)
    transport.write(b"x" * 10)  # type: ignore[no-untyped-call]
    assert unsentBytes(transport) == 10
    transport.drain()
    assert unsentBytes(transport) == 0
    assert unsentBytes(TimedStringTransport(clock)) is None


def test_nonReaderAbortedAfterItsDeadline() -> None:
    """A peer that PINGs at the allowed rate but never reads is aborted once the transport
    took nothing for its deadline: TIMEOUT, "peer stopped reading"."""
    proto, transport, clock = connectBuffered()
    pingId = 0
    while transport.abortedAt is None and clock.seconds() < 5.0:
        pingId += 1
        proto.dataReceived(encode(Ping(pingId)))
        clock.advance(0.25)
    proto.connectionLost(Failure(ConnectionAborted()))  # type: ignore[no-untyped-call]
    assert proto.losses[0].reason is Reason.TIMEOUT
    assert proto.losses[0].detail.startswith("peer stopped reading: ")
    assert "none taken for 1.5" in proto.losses[0].detail
    assert transport.abortedAt is not None and 1.5 <= transport.abortedAt <= 1.8


def test_slowReaderIsNotAborted() -> None:
    """A peer that reads, however slowly, is never taken for a non-reader."""
    proto, transport, clock = connectBuffered()
    for i in range(1, 41):
        proto.dataReceived(encode(Ping(i)))
        clock.advance(0.25)
        if i % 5 == 0:
            transport.drain()
    assert proto.loss is None


def test_nonReaderAbortedPastMaxUnsentBytes() -> None:
    """Frames the peer provokes (here REJECTs) piling up past maxUnsentBytes abort the
    connection at once, with the sizes in the detail."""

    def fail(payload: bytes) -> None:
        raise ValueError("x" * 900)

    proto, transport, clock = connectBuffered(
        maxUnsentBytes=4096, maxFrameSize=MIN_MAX_FRAME_SIZE, handler=fail
    )
    proto.dataReceived(b"".join(encode(Data(i, b"m")) for i in range(1, 11)))
    assert transport.abortedAt == 0.0
    proto.connectionLost(Failure(ConnectionAborted()))  # type: ignore[no-untyped-call]
    (loss,) = proto.losses
    assert loss.reason is Reason.TIMEOUT
    assert loss.detail.startswith("peer stopped reading: ")
    assert "over the limit of 4096 bytes" in loss.detail


def test_dataInFlightDoesNotCountAgainstMaxUnsentBytes() -> None:
    """DATA frames in flight (bounded by the window) are not taken for a non-reader's
    backlog: a burst of large messages to a reading peer is fine."""
    proto, transport, clock = connectBuffered(maxUnsentBytes=4096, maxFrameSize=4096)
    for _ in range(20):
        proto.sendMessage(b"y" * 4000)
    proto._flush(timer=True)  # what the timer runs at each wake
    assert transport.abortedAt is None
    assert unsentBytes(transport) is not None and unsentBytes(transport) > 80_000  # type: ignore[operator]


# -- fair reading ---------------------------------------------------------------------------------


def oneTurn(clock: Clock) -> None:
    """Run the calls due now that were scheduled before this turn, as a reactor's turn
    does (``Clock.advance`` would also run the ones they schedule)."""
    due = [
        cast(DelayedCall, call)
        for call in clock.getDelayedCalls()
        if call.getTime() <= clock.seconds()
    ]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)


def slowly(clock: Clock) -> Any:
    """A messageReceived handler that takes 1 ms of ``clock`` time per message."""

    def handler(payload: bytes) -> None:
        clock.rightNow += 0.001

    return handler


def test_fairReadingPausesAfterMaxTurnTime() -> None:
    """200 messages of 1 ms each in one read are handed over TURN_CHECK_EVERY per reactor
    turn (past maxTurnTime, looked at every TURN_CHECK_EVERY), with the transport paused in
    between and resumed at the end; one ACK per turn covers them."""
    clock = Clock()
    proto = RecordingPeer(clock, slowly(clock))
    transport = TimedStringTransport(clock)
    proto.makeConnection(transport)  # type: ignore[no-untyped-call]
    proto.dataReceived(hello(1.0) + b"".join(encode(Data(i, b"m%d" % i)) for i in range(1, 201)))
    turns = [len(proto.received)]
    states = [transport.producerState]
    while len(proto.received) < 200:
        oneTurn(clock)
        turns.append(len(proto.received))
        states.append(transport.producerState)
    step = TURN_CHECK_EVERY
    expected = list(range(step, 200, step)) + [200]
    assert turns == expected
    assert states == ["paused"] * (len(expected) - 1) + ["producing"]
    acks = [f.seq for f in frames(transport.value()) if isinstance(f, Ack)]  # type: ignore[no-untyped-call]
    assert acks == expected
    assert proto.received == [b"m%d" % i for i in range(1, 201)]


def test_fairReadingKeepsOtherConnectionsServed() -> None:
    """While one connection works through a flood of slow messages, another connection's
    messages are processed in the very next turn."""
    clock = Clock()
    flooded, quiet = RecordingPeer(clock, slowly(clock)), RecordingPeer(clock)
    for proto in (flooded, quiet):
        proto.makeConnection(TimedStringTransport(clock))  # type: ignore[no-untyped-call]
    flooded.dataReceived(hello(1.0) + b"".join(encode(Data(i, b"f")) for i in range(1, 1001)))
    quiet.dataReceived(hello(1.0) + encode(Data(1, b"q")))
    assert quiet.received == [b"q"]
    assert len(flooded.received) == TURN_CHECK_EVERY


# -- floods of rejected messages ------------------------------------------------------------------


def test_rejectionLogFirstThenSummaries() -> None:
    """The first rejection of a cause is reported with its traceback, repeats only in one
    summary line per REJECTION_LOG_EVERY seconds, counting them."""
    log = RejectionLog()
    assert log.record("ValueError: bad", 0.0).report is Report.FIRST
    for t in range(1, 10):
        assert log.record("ValueError: bad", float(t)).report is Report.NONE
    assert log.suppressed == 9
    verdict = log.record("ValueError: bad", REJECTION_LOG_EVERY)
    assert verdict.report is Report.SUMMARY
    assert (verdict.repeats, verdict.since) == (10, 0.0)
    assert log.suppressed == 0


def test_rejectionLogBoundsNewCauses() -> None:
    """Causes that differ with every message fall under OTHER_CAUSES past MAX_NEW_CAUSES
    per period, and at most MAX_CAUSES are remembered."""
    log = RejectionLog()
    reports = [log.record(f"KeyError: {i}", 0.0) for i in range(100)]
    assert [v.report for v in reports[:MAX_NEW_CAUSES]] == [Report.FIRST] * MAX_NEW_CAUSES
    assert reports[MAX_NEW_CAUSES].cause == OTHER_CAUSES
    assert all(v.report is Report.NONE for v in reports[MAX_NEW_CAUSES + 1 :])
    for period in range(1, 20):
        for i in range(MAX_NEW_CAUSES):
            log.record(f"KeyError: {period}-{i}", period * REJECTION_LOG_EVERY)
    assert len(log._causes) == MAX_CAUSES


def test_rejectedFloodLogsBoundedLines() -> None:
    """1,000 messages the application fails on give one error line with a traceback and
    none per message; every one is REJECTed and counted."""

    def fail(payload: bytes) -> None:
        raise RuntimeError("not today")

    before = rejectionsTotal()
    with LogEvents("rejected") as rejected:
        clock = Clock()
        proto = RecordingPeer(clock, fail)
        transport = TimedStringTransport(clock)
        proto.makeConnection(transport)  # type: ignore[no-untyped-call]
        proto.dataReceived(hello(1.0))
        for start in range(1, 1001, 100):
            proto.dataReceived(b"".join(encode(Data(i, b"m")) for i in range(start, start + 100)))
            clock.advance(0)
        clock.advance(REJECTION_LOG_EVERY)
        proto.dataReceived(encode(Data(1001, b"m")))
    events = rejected.events
    assert rejectionsTotal() - before == 1001
    assert [e["log_level"] for e in events] == [LogLevel.error, LogLevel.error]
    assert "log_failure" in events[0] and "log_failure" not in events[1]
    assert events[1]["count"] == 1000
    rejects = [f for f in frames(transport.value()) if isinstance(f, Reject)]  # type: ignore[no-untyped-call]
    assert len(rejects) == 1001
    assert rejects[0].reason == "RuntimeError: not today"


def test_pingFloodDropsPeer() -> None:
    """A burst of PINGs past the allowed rate gets GOODBYE(PROTOCOL_ERROR) naming the rule."""
    clock = Clock()
    proto = RecordingPeer(clock)
    transport = TimedStringTransport(clock)
    proto.makeConnection(transport)  # type: ignore[no-untyped-call]
    proto.dataReceived(hello(0.5) + b"".join(encode(Ping(i)) for i in range(1, 1000)))
    detail = "too many PINGs: at most 16 per heartbeat interval (0.5 s) are allowed"
    assert frames(transport.value())[-1] == Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)  # type: ignore[no-untyped-call]
    assert Pong(999) not in frames(transport.value())  # type: ignore[no-untyped-call]
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))  # type: ignore[no-untyped-call]
    assert proto.losses[0].reason is Reason.PROTOCOL_ERROR
    assert proto.losses[0].detail == detail


def test_fakeLinkFlushRunsNextTurns() -> None:
    """FakeLink.flush goes on through the turns fair reading takes: 200 slow messages
    sent at once are all processed and confirmed by one flush."""
    clock = Clock()
    link = FakeLink(RecordingPeer(clock, slowly(clock)), RecordingPeer(clock), clock)
    link.flush()
    sent = [link.client.sendMessage(b"x%d" % i) for i in range(200)]
    link.flush()
    assert len(link.server.received) == 200
    assert all(d.called for d in sent)
    assert link.serverTransport.readingPaused is False


def test_rejectionsCountedInMetrics() -> None:
    """/metrics has twisted_alive_rejections_total, the process's rejections, logged or not."""
    from twisted_alive.service.status import statusSite

    site = statusSite([])
    before = site.registry.get_sample_value("twisted_alive_rejections_total")
    assert before == rejectionsTotal()
    log = RejectionLog()
    for _ in range(5):
        log.record("ValueError: bad", 0.0)
    assert site.registry.get_sample_value("twisted_alive_rejections_total") == before + 5


def test_nonReaderCheckGrantsLocalStall() -> None:
    """A stall of this process (the timer fires seconds late) is not blamed on the peer:
    the transport gets a turn to write before it is judged."""
    proto, transport, clock = connectBuffered()
    proto.dataReceived(encode(Ping(1)))
    clock.rightNow += 5.0  # the reactor was blocked past the 1.5 s deadline
    oneTurn(clock)  # the timers' turn
    assert transport.abortedAt is None
    transport.drain()  # then the I/O turn: the transport writes, the peer's PING is read
    proto.dataReceived(encode(Ping(2)))
    oneTurn(clock)
    clock.advance(1.0)
    assert transport.abortedAt is None
    assert proto._alive is not None and proto._alive.ending is None
