"""
Tests for the sans-IO liveness state, ``twisted_alive.core.liveness``.

Time is a plain float handed to every call; nothing here reads a clock.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_alive.core.liveness import (
    GRID_STEPS,
    MAX_OUTSTANDING_PINGS,
    STALL_THRESHOLD,
    Liveness,
    TimerAction,
    TimerResult,
)


def handshaken(
    interval: float = 1.0, misses: int = 3, peerInterval: float = 1.0, now: float = 0.0
) -> Liveness:
    """A liveness state whose peer's HELLO arrived at C{now}."""
    live = Liveness(interval, misses, now)
    live.handshake(peerInterval, now)
    return live


def fireOnTime(live: Liveness, now: float) -> TimerResult:
    """Fire the timer at exactly the time it was armed for (no lateness)."""
    return live.handleTimer(now, now)


# -- construction ----------------------------------------------------------------------------------


def test_initialState() -> None:
    """A new state starts its clocks at C{now}, unhandshaken, without RTT."""
    live = Liveness(2.0, 4, 100.0)
    assert live.interval == 2.0
    assert live.misses == 4
    assert live.peerInterval == 2.0
    assert live.started == live.lastReceived == live.lastSent == 100.0
    assert live.handshaken is False
    assert live.srtt is None and live.rttvar is None
    assert live.pingId == 0
    assert live.stalledFor == 0.0


@pytest.mark.parametrize(
    ("interval", "misses", "message"),
    [
        (0, 3, "heartbeat interval must be positive, got 0"),
        (0.0, 3, "heartbeat interval must be positive, got 0.0"),
        (-1.5, 3, "heartbeat interval must be positive, got -1.5"),
        (math.nan, 3, "heartbeat interval must be positive, got nan"),
        (1.0, 0, "heartbeat misses must be at least 1, got 0"),
        (1.0, -2, "heartbeat misses must be at least 1, got -2"),
    ],
)
def test_constructorErrors(interval: float, misses: int, message: str) -> None:
    """Invalid intervals (including NaN) and miss counts are refused with an exact text."""
    with pytest.raises(ValueError) as info:
        Liveness(interval, misses, 0.0)
    assert str(info.value) == message


# -- deadline --------------------------------------------------------------------------------------


def test_deadlineBeforeHandshakeUsesOwnInterval() -> None:
    """Before the peer's HELLO, the deadline is this side's interval times misses."""
    live = Liveness(2.0, 3, 10.0)
    assert live.deadline == 6.0
    assert live.expiresAt() == 16.0


def test_deadlineIsPeerIntervalTimesMisses() -> None:
    """After the HELLO, the deadline is the peer's announced interval times misses."""
    live = Liveness(2.0, 3, 0.0)
    live.handshake(0.5, 1.0)
    assert live.peerInterval == 0.5
    assert live.deadline == 1.5
    assert live.expiresAt() == 2.5


def test_handshakeDeadlineCountsFromConnectionStart() -> None:
    """Bytes before the HELLO do not extend the handshake deadline, set at connection start."""
    live = Liveness(1.0, 3, 0.0)
    live.received(1.0)
    live.received(2.9)
    assert live.lastReceived == 0.0
    assert live.nextWake() == 3.0
    assert fireOnTime(live, 3.0) == TimerResult(TimerAction.EXPIRED, 0.0)


def test_handshakeIsASignOfLife() -> None:
    """The HELLO itself resets the deadline to count from its arrival."""
    live = Liveness(1.0, 3, 0.0)
    live.handshake(1.0, 2.5)
    assert live.handshaken is True
    assert live.lastReceived == 2.5
    assert live.expiresAt() == 5.5


def test_inboundBytesResetDeadlineAfterHandshake() -> None:
    """After the HELLO, any inbound byte pushes the deadline back."""
    live = handshaken(interval=10.0, misses=3, peerInterval=1.0)
    live.received(2.0)
    assert live.lastReceived == 2.0
    assert live.expiresAt() == 5.0
    assert fireOnTime(live, 4.9).action is TimerAction.NOTHING
    live.received(4.9)
    assert fireOnTime(live, 5.0).action is TimerAction.NOTHING
    assert live.expiresAt() == 7.9375  # 7.9, rounded up to the grid (1/16 s)
    assert fireOnTime(live, 7.9).action is TimerAction.NOTHING
    assert fireOnTime(live, 7.9375).action is TimerAction.EXPIRED


def test_expiresExactlyAtDeadline() -> None:
    """An on-time timer at C{lastReceived + deadline} reports EXPIRED."""
    live = handshaken(interval=100.0, misses=2, peerInterval=1.0)
    assert live.nextWake() == 2.0
    assert fireOnTime(live, 1.999).action is TimerAction.NOTHING
    assert fireOnTime(live, 2.0) == TimerResult(TimerAction.EXPIRED, 0.0)


# -- heartbeat -------------------------------------------------------------------------------------


def test_noPingBeforeHandshake() -> None:
    """No PING is asked for before the peer's HELLO, however long outbound is silent."""
    live = Liveness(1.0, 5, 0.0)
    assert live.nextWake() == 5.0
    for t in (1.0, 2.0, 4.5):
        assert fireOnTime(live, t) == TimerResult(TimerAction.NOTHING, 0.0)
    assert live.pingId == 0


def test_pingAfterIntervalOfOutboundSilence() -> None:
    """A PING is due exactly C{interval} after the last frame sent."""
    live = handshaken(interval=1.0, misses=3, peerInterval=1.0)
    assert live.nextWake() == 1.0
    assert fireOnTime(live, 0.999).action is TimerAction.NOTHING
    result = fireOnTime(live, 1.0)
    assert result == TimerResult(TimerAction.PING, 0.0)
    assert live.pingId == 1


def test_sentFramesPostponePing() -> None:
    """Every frame sent (DATA, ACK...) counts as outbound traffic: no PING on a busy link."""
    live = handshaken(interval=1.0, misses=100, peerInterval=1.0)
    # The PING is due one interval later, rounded down to the grid (1/16 s).
    for t, ping in ((0.5, 1.5), (1.2, 2.1875), (2.0, 3.0), (2.9, 3.875)):
        live.sent(t)
        live.received(t)
        assert live.nextWake() == ping
        # A timer armed earlier, firing now, finds nothing to do.
        assert fireOnTime(live, t + 0.9).action is TimerAction.NOTHING
    assert live.pingId == 0
    assert fireOnTime(live, 3.9).action is TimerAction.PING


def test_inboundTrafficDoesNotPostponePing() -> None:
    """Only outbound silence triggers a PING: a chatty peer does not suppress ours."""
    live = handshaken(interval=1.0, misses=3, peerInterval=1.0)
    live.received(0.9)
    assert fireOnTime(live, 1.0).action is TimerAction.PING


def test_nextWakeIsEarlierOfPingAndDeadline() -> None:
    """The timer is armed for whichever comes first: the next PING or the deadline."""
    live = handshaken(interval=5.0, misses=2, peerInterval=1.0)
    assert live.nextWake() == 2.0  # deadline 1 x 2 before PING at 5
    live = handshaken(interval=1.0, misses=3, peerInterval=5.0)
    assert live.nextWake() == 1.0  # PING at 1 before deadline at 15


def test_pingIdsIncrease() -> None:
    """Each PING gets the next id."""
    live = handshaken(interval=1.0, misses=10, peerInterval=1.0)
    ids = []
    for t in (1.0, 2.0, 3.0):
        assert fireOnTime(live, t).action is TimerAction.PING
        live.sent(t)
        ids.append(live.pingId)
    assert ids == [1, 2, 3]


# -- RTT -------------------------------------------------------------------------------------------


def ping(live: Liveness, now: float) -> int:
    """Make the state ask for a PING at C{now} and 'send' it; return its id."""
    live.sent(now - 2 * live.interval)
    assert fireOnTime(live, now).action is TimerAction.PING
    live.sent(now)
    return live.pingId


def test_rttFirstSample() -> None:
    """The first sample R sets SRTT = R and RTTVAR = R / 2 (RFC 6298 2.2)."""
    live = handshaken(interval=1.0, misses=100, peerInterval=1.0)
    pingId = ping(live, 1.0)
    assert live.pongReceived(pingId, 1.2) == pytest.approx(0.2)
    assert live.srtt == pytest.approx(0.2)
    assert live.rttvar == pytest.approx(0.1)


def test_rttSmoothing() -> None:
    """Later samples update RTTVAR with beta 1/4 (using the old SRTT), then SRTT with alpha 1/8."""
    live = handshaken(interval=1.0, misses=100, peerInterval=1.0)
    live.pongReceived(ping(live, 1.0), 1.2)  # R = 0.2

    assert live.pongReceived(ping(live, 3.0), 3.6) == pytest.approx(0.6)
    # rttvar = 3/4 * 0.1 + 1/4 * |0.2 - 0.6| = 0.175; srtt = 7/8 * 0.2 + 1/8 * 0.6 = 0.25
    assert live.rttvar == pytest.approx(0.175)
    assert live.srtt == pytest.approx(0.25)

    assert live.pongReceived(ping(live, 5.0), 5.1) == pytest.approx(0.1)
    # rttvar = 3/4 * 0.175 + 1/4 * |0.25 - 0.1| = 0.16875; srtt = 7/8 * 0.25 + 1/8 * 0.1
    assert live.rttvar == pytest.approx(0.16875)
    assert live.srtt == pytest.approx(0.23125)


def test_rttSampleNeverNegative() -> None:
    """A clock that went backwards gives a sample of 0, not a negative RTT."""
    live = handshaken(interval=1.0, misses=100, peerInterval=1.0)
    assert live.pongReceived(ping(live, 1.0), 0.5) == 0.0
    assert live.srtt == 0.0


def test_unsolicitedPongIgnored() -> None:
    """A PONG when no PING is outstanding gives no sample."""
    live = handshaken()
    assert live.pongReceived(0, 0.5) is None
    assert live.pongReceived(1, 0.5) is None
    assert live.srtt is None


def test_pongAnsweredTwiceIgnored() -> None:
    """A second PONG for a PING already answered gives no second sample."""
    live = handshaken(interval=1.0, misses=100, peerInterval=1.0)
    pingId = ping(live, 1.0)
    assert live.pongReceived(pingId, 1.5) == pytest.approx(0.5)
    assert live.pongReceived(pingId, 1.7) is None
    assert live.srtt == pytest.approx(0.5)


def test_severalPingsOutstanding() -> None:
    """A PONG for an older PING, after a newer one went out, still gives its sample."""
    live = handshaken(interval=1.0, misses=100, peerInterval=1.0)
    first = ping(live, 1.0)
    second = ping(live, 2.0)
    assert second == first + 1
    assert live.outstandingPings == 2
    assert live.pongReceived(first, 2.1) == pytest.approx(1.1)
    assert live.outstandingPings == 1
    assert live.pongReceived(second, 2.3) == pytest.approx(0.3)
    assert live.outstandingPings == 0


def test_pongForgetsOlderPings() -> None:
    """A PONG answers its PING and every older one: their late PONGs give no sample."""
    live = handshaken(interval=1.0, misses=100, peerInterval=1.0)
    first = ping(live, 1.0)
    second = ping(live, 2.0)
    assert live.pongReceived(second, 2.3) == pytest.approx(0.3)
    assert live.outstandingPings == 0
    assert live.pongReceived(first, 2.4) is None
    assert live.srtt == pytest.approx(0.3)


def test_outstandingPingsBounded() -> None:
    """At most MAX_OUTSTANDING_PINGS are remembered; the oldest is forgotten first."""
    live = handshaken(interval=1.0, misses=100, peerInterval=1.0)
    ids = [ping(live, float(t)) for t in range(1, MAX_OUTSTANDING_PINGS + 3)]
    assert live.outstandingPings == MAX_OUTSTANDING_PINGS
    assert live.pongReceived(ids[0], 20.0) is None
    assert live.pongReceived(ids[1], 20.0) is None
    assert live.pongReceived(ids[2], 20.0) == pytest.approx(17.0)


def test_pongIsNotTheDeadline() -> None:
    """pongReceived measures RTT only; the owner reports the bytes with received()."""
    live = handshaken(interval=1.0, misses=3, peerInterval=1.0)
    pingId = ping(live, 1.0)
    live.pongReceived(pingId, 1.5)
    assert live.lastReceived == 0.0


# -- late timers -----------------------------------------------------------------------------------


def test_lateTimerGraceAtPingTime() -> None:
    """A PING timer firing 1.0 s late, past the deadline, gets the delay back: PING, not EXPIRED."""
    live = handshaken(interval=1.0, misses=1, peerInterval=1.0)
    live.received(0.5)  # deadline 1.5, PING due at 1.0
    scheduled = live.nextWake()
    assert scheduled == 1.0
    result = live.handleTimer(scheduled + 1.0, scheduled)
    assert result == TimerResult(TimerAction.PING, 1.0)
    assert live.lastReceived == pytest.approx(1.5)
    assert live.stalledFor == pytest.approx(1.0)


def test_lateTimerWithoutGraceWouldExpire() -> None:
    """The same state fired on time at that moment expires: the grace is what saved it."""
    live = handshaken(interval=1.0, misses=1, peerInterval=1.0)
    live.received(0.5)
    assert fireOnTime(live, 2.0).action is TimerAction.EXPIRED


def test_lateTimerGraceAtDeadline() -> None:
    """A deadline timer firing 1.0 s late does not expire on that firing: the owner reads first."""
    live = handshaken(interval=10.0, misses=3, peerInterval=1.0)
    scheduled = live.nextWake()
    assert scheduled == 3.0 == live.expiresAt()
    result = live.handleTimer(scheduled + 1.0, scheduled)
    assert result == TimerResult(TimerAction.NOTHING, 1.0)
    assert live.lastReceived == pytest.approx(1.0)
    # What the peer sent during the stall, read now, keeps the connection.
    live.received(4.0)
    assert live.expiresAt() == 7.0
    assert fireOnTime(live, 6.9).action is TimerAction.NOTHING


def test_lateTimerAtDeadlineExpiresIfStillSilent() -> None:
    """After the grace, a timer re-armed for the granted deadline expires if nothing came."""
    live = handshaken(interval=10.0, misses=3, peerInterval=1.0)
    assert live.handleTimer(4.0, 3.0).action is TimerAction.NOTHING
    wake = live.nextWake()
    assert wake == pytest.approx(4.0)
    assert live.handleTimer(max(wake, 4.0), wake) == TimerResult(TimerAction.EXPIRED, 0.0)


def test_lateHandshakeTimerGrace() -> None:
    """Before the handshake too, a late timer does not expire a connection on that firing."""
    live = Liveness(1.0, 3, 0.0)
    result = live.handleTimer(4.0, 3.0)
    assert result == TimerResult(TimerAction.NOTHING, 1.0)
    live.handshake(1.0, 4.0)
    assert live.expiresAt() == 7.0


def test_smallLatenessGrantedNotReported() -> None:
    """Lateness under the stall threshold is granted back but not reported as a stall."""
    late = STALL_THRESHOLD / 2
    live = handshaken(interval=10.0, misses=3, peerInterval=1.0)
    live.received(1.0)  # deadline at 4.0
    result = live.handleTimer(2.0 + late, 2.0)
    assert result == TimerResult(TimerAction.NOTHING, 0.0)
    assert live.lastReceived == pytest.approx(1.0 + late)
    assert live.stalledFor == 0.0


def test_smallLatenessAtDeadlineStillExpires() -> None:
    """A deadline timer a hair late still expires: jitter is no stall."""
    live = handshaken(interval=10.0, misses=3, peerInterval=1.0)
    result = live.handleTimer(3.01, 3.0)
    assert result == TimerResult(TimerAction.EXPIRED, 0.0)


def test_timeQueuedBehindOtherTimersIsGrantedButNoStall() -> None:
    """Lateness spent on the timers due together with this one is granted
    back to the deadline like any lateness, but is no stall of the process."""
    live = handshaken(interval=10.0, misses=3, peerInterval=1.0)
    assert live.handleTimer(2.2, 2.0, queued=0.19) == TimerResult(TimerAction.NOTHING, 0.0)
    assert live.lastReceived == pytest.approx(0.2)
    assert live.stalledFor == 0.0
    result = live.handleTimer(2.5, 2.3, queued=0.1)
    assert result.stall == pytest.approx(0.1)
    assert live.stalledFor == pytest.approx(0.1)


def test_stallThresholdBoundary() -> None:
    """Lateness just above the threshold is reported; early firing grants nothing."""
    live = handshaken(interval=10.0, misses=30, peerInterval=1.0)
    assert live.handleTimer(1.0 + 0.06, 1.0).stall == pytest.approx(0.06)
    before = live.lastReceived
    assert live.handleTimer(1.5, 2.0) == TimerResult(TimerAction.NOTHING, 0.0)
    assert live.lastReceived == before


def test_stallsAccumulate() -> None:
    """stalledFor sums every reported stall."""
    live = handshaken(interval=10.0, misses=30, peerInterval=1.0)
    live.handleTimer(2.0, 1.0)
    live.handleTimer(5.5, 5.0)
    live.handleTimer(6.01, 6.0)
    assert live.stalledFor == pytest.approx(1.5)


@given(
    late=st.floats(min_value=STALL_THRESHOLD * 1.01, max_value=1000.0),
    peerInterval=st.floats(min_value=0.1, max_value=100.0),
    misses=st.integers(min_value=1, max_value=10),
)
def test_stallNeverExpires(late: float, peerInterval: float, misses: int) -> None:
    """Whatever the state, a timer firing late by a stall never reports EXPIRED on that firing."""
    live = handshaken(interval=1000.0, misses=misses, peerInterval=peerInterval)
    scheduled = live.nextWake()
    result = live.handleTimer(scheduled + late, scheduled)
    assert result.action is not TimerAction.EXPIRED
    assert result.stall == pytest.approx(late)


# -- the grid --------------------------------------------------------------------------------------


def test_gridIsASixteenthOfTheShorterInterval() -> None:
    """The grid follows our interval, then the shorter of ours and the peer's."""
    live = Liveness(2.0, 3, 0.0)
    assert GRID_STEPS == 16
    assert live.grid == 2.0 / 16
    live.handshake(0.5, 0.1)
    assert live.grid == 0.5 / 16
    assert handshaken(interval=0.5, peerInterval=8.0).grid == 0.5 / 16


def test_onGridTimesAreKept() -> None:
    """A PING due on the grid and a deadline on it are neither moved a step."""
    live = handshaken(interval=0.2, misses=3, peerInterval=0.2)
    for t in (0.0, 0.2, 0.4, 1.0, 3.3):
        live.sent(t)
        live.received(t)
        live.lastPingSent = t  # no RTT sample due
        assert live.pingAt() == pytest.approx(t + 0.2)
        assert live.expiresAt() == pytest.approx(t + 0.6)


def test_pingNeverLateDeadlineNeverEarly() -> None:
    """Off the grid, the PING is rounded down (up to a step early, never
    late: the peer hears from us at least every interval) and the deadline up
    (up to a step late, never early)."""
    live = handshaken(interval=1.0, misses=3, peerInterval=1.0)
    live.lastPingSent = 10.0  # no RTT sample due
    live.sent(10.01)
    live.received(10.02)
    assert live.pingAt() == 11.0
    assert live.expiresAt() == 13.0625


def test_timersOfManyConnectionsCoincide() -> None:
    """Connections opened within one step of each other wake together, and
    stay together though their PINGs leave one after the other."""
    wakes = set()
    for i in range(100):
        live = handshaken(interval=1.0, now=5.0 + i / 2000)  # 5.0 to 5.05 s
        first = live.nextWake()
        assert fireOnTime(live, first).action is TimerAction.PING
        live.sent(first + i / 10000)
        wakes.add((first, live.nextWake()))
    assert wakes == {(6.0, 7.0)}


def test_phaseShiftsThePingGrid() -> None:
    """With phase 0.5, PINGs fall half a step off the grid, still never late."""
    live = Liveness(1.0, 3, 0.0, phase=0.5)
    live.handshake(1.0, 0.0)
    assert live.pingAt() == 1.0 - 1 / 32
    live.lastPingSent = 10.0  # no RTT sample due
    live.sent(10.01)
    assert live.pingAt() == 11.0 - 1 / 32
    live.sent(10.04)
    assert live.pingAt() == 11.0 + 1 / 32
    live.received(10.04)
    assert live.expiresAt() == 13.0625  # the deadline keeps the plain grid


@given(
    interval=st.floats(0.1, 3600.0),
    peerInterval=st.floats(0.1, 3600.0),
    misses=st.integers(1, 10),
    sent=st.floats(0.0, 2e9),
    received=st.floats(0.0, 2e9),
    phase=st.sampled_from([0.0, 0.5]),
)
def test_timerOnTimeAlwaysActs(
    interval: float, peerInterval: float, misses: int, sent: float, received: float, phase: float
) -> None:
    """A timer fired at `nextWake` sends the PING or expires: a wake that
    finds nothing to do would be re-armed for the same time, forever."""
    live = Liveness(interval, misses, 0.0, phase)
    live.handshake(peerInterval, 0.0)
    live.sent(sent)
    live.lastPingSent = sent  # no RTT sample due
    live.received(received)
    grid = live.grid
    due = sent + interval
    assert due - grid - 1e-9 * due <= live.pingAt() <= due + 1e-9 * due
    deadline = received + peerInterval * misses
    assert deadline - 1e-9 * deadline <= live.expiresAt() <= deadline + grid + 1e-9 * deadline
    wake = live.nextWake()
    assert fireOnTime(live, wake).action is not TimerAction.NOTHING


# -- detail text -----------------------------------------------------------------------------------


def test_silenceDetailAfterHandshake() -> None:
    """The expiry text says how long the peer was silent and how the deadline is made."""
    live = handshaken(interval=1.0, misses=3, peerInterval=2.5, now=10.0)
    assert live.silenceDetail(17.5) == (
        "no data from peer for 7.500 s (deadline 7.500 s = 2.5 s x 3)"
    )


def test_silenceDetailBeforeHandshake() -> None:
    """Before the HELLO, the text says it is the HELLO that never came."""
    live = Liveness(5.0, 3, 0.0)
    assert live.silenceDetail(15.0) == (
        "no HELLO from peer for 15.000 s (deadline 15.000 s = 5 s x 3)"
    )
