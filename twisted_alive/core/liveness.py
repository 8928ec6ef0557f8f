"""
Liveness of one connection: when to send a PING, when the peer counts as
dead, the round-trip time, and grace for a timer that fired late.

Sans-IO: fed timestamps, never reads a clock, imports nothing from Twisted.

Rules (see ``docs/protocol.md``):

- Any inbound byte is a sign of life; before the peer's HELLO, only the
  HELLO itself is (the handshake must finish within the deadline, so a peer
  trickling bytes cannot hold a connection open without completing it).
- A PING goes out after ``interval`` seconds of outbound silence (see the
  grid below). Every frame sent counts as outbound traffic, so busy links
  send no PING for liveness; but a PING also goes out when this side sent
  none for `RTT_PING_INTERVALS` intervals, whatever the traffic, so that
  the RTT is known on busy links and on the side whose peer always PINGs
  first.
- Several PINGs may be outstanding (up to `MAX_OUTSTANDING_PINGS`, by id):
  a PONG answers the PING with its id and every older one, so a round trip
  longer than the interval still yields samples.
- The peer is dead when nothing arrived for ``peerInterval * misses``
  seconds, ``peerInterval`` being the interval the peer announced in its
  HELLO (our own interval until then); once the RTT is known, never sooner
  than `RTT_DEADLINE_FACTOR` x (SRTT + 4 RTTVAR) (the RFC 6298
  retransmission timeout), so that a long or lossy link is not taken for a
  dead peer. That floor is capped at ``maxDeadline``.
- The peer may send at most `PING_BURST` PINGs in any span of its interval:
  a token bucket of `PING_BURST` tokens refilled at `PING_BURST` per peer
  interval; a PING finding it empty breaks the protocol.
- When the timer fires later than asked, this process was blocked (a slow
  callback, a swap storm): the delay is granted back to the deadline, since
  bytes the peer sent meanwhile are still unread in the kernel; and the peer
  is not declared dead on that firing, so that the owner reads them first.
  The stall is reported so that it can be logged. Time the timer waited
  behind the timers of other connections due at the same moment is granted
  back too, but is no stall.
- Wake times fall on a grid (a sixteenth of the shorter interval, ours or the
  peer's, counted from time zero), so that the timers of thousands of
  connections fall due together and run in one go: a PING leaves up to a
  grid step early, never late, and a silent peer is declared dead up to a
  grid step after its deadline. The two ends of a link PING half a step
  apart (`phase`): the first to PING is answered, and the other's PING is
  then not due, so one PING and one PONG cross the link per interval
  rather than two of each.
- RTT is smoothed the RFC 6298 way from PING/PONG samples.
"""

from __future__ import annotations

import enum
from math import ceil, floor
from typing import NamedTuple

from twisted_alive.core.checks import atLeast, positive


class TimerAction(enum.Enum):
    """What the owner of a `Liveness` must do when its timer fires."""

    NOTHING = 0
    """Re-arm the timer at `Liveness.nextWake`."""
    PING = 1
    """Send PING(`Liveness.pingId`), then re-arm."""
    EXPIRED = 2
    """The deadline passed: the peer is presumed dead."""


class TimerResult(NamedTuple):
    """The outcome of `Liveness.handleTimer`."""

    action: TimerAction
    stall: float
    """Seconds the timer fired late, if it was late enough to count as a
    local stall; 0.0 otherwise."""


# Looked up once: in Python 3.11 each ``TimerAction.X`` goes through the enum
# metaclass (about 0.1 us), and thousands of connections' timers fire.
_NOTHING = TimerAction.NOTHING
_EXPIRE = TimerAction.EXPIRED
_PING = TimerAction.PING

GRID_STEPS = 16
"""Wake times fall on a grid of the shorter interval / ``GRID_STEPS``."""

_HAIR = 1e-9
"""In grid steps: a time this close to a grid point counts as on it, so that
a time computed on the grid is not rounded a whole step off by the last bit
of a division."""

STALL_THRESHOLD = 0.05
"""A timer firing more than this many seconds late is a local stall."""

RTT_PING_INTERVALS = 4
"""A side sends a PING when it sent none for this many of its intervals,
whatever the traffic: the RTT stays measured on busy links, and on the side
whose peer always PINGs first (its own PINGs are then never due)."""

MAX_OUTSTANDING_PINGS = 8
"""PINGs awaiting their PONG that are remembered (by id); an older one is
forgotten when a newer one would make more."""

RTT_DEADLINE_FACTOR = 4
"""The deadline is never below this many RFC 6298 retransmission timeouts
(SRTT + 4 RTTVAR) once the RTT is known: a segment lost twice in a row is
retransmitted after 1 + 2 = 3 of them, plus one for the way through."""

PING_BURST = 16
"""PINGs the peer may send in any span of its own interval (a sixteenth of
the interval each on average, or a burst of this many)."""


class Liveness:
    """
    Heartbeat and deadline state for one connection.

    :param interval: seconds of outbound silence before this side sends a
        PING; this side promises the peer some frame at least this often.
    :param misses: how many of the peer's intervals may pass in silence
        before the peer counts as dead.
    :param now: the current time.
    :param phase: where PINGs fall in a step of the `grid`, as a fraction of
        the step: the two ends of a link take phases half a step apart, so
        that their PINGs never fall due together. Otherwise both would PING
        at each grid point and answer each other's PING, two frames each way
        per interval where one does.
    :param maxDeadline: the longest the RTT floor may make the `deadline`
        (seconds); ``None`` for no cap. A peer that delays its PONGs must
        not buy itself a deadline longer than the longest interval it may
        announce would give.
    """

    __slots__ = (
        "interval",
        "misses",
        "peerInterval",
        "started",
        "lastReceived",
        "lastSent",
        "handshaken",
        "srtt",
        "rttvar",
        "pingId",
        "stalledFor",
        "grid",
        "phase",
        "maxDeadline",
        "lastPingSent",
        "_pings",
        "_deadline",
        "_pingTokens",
        "_pingTokensAt",
    )

    def __init__(
        self,
        interval: float,
        misses: int,
        now: float,
        phase: float = 0.0,
        maxDeadline: float | None = None,
    ) -> None:
        positive("heartbeat interval", interval)
        atLeast("heartbeat misses", misses, 1)
        self.interval = interval
        self.misses = misses
        self.peerInterval = interval
        self.started = now
        self.lastReceived = now
        self.lastSent = now
        self.handshaken = False
        self.srtt: float | None = None
        self.rttvar: float | None = None
        self.pingId = 0
        self.stalledFor = 0.0
        self.grid = interval / GRID_STEPS
        self.phase = phase
        self.maxDeadline = maxDeadline
        self.lastPingSent = now
        self._pings: dict[int, float] = {}
        self._deadline = interval * misses
        self._pingTokens = float(PING_BURST)
        self._pingTokensAt = now

    @property
    def deadline(self) -> float:
        """
        Seconds of inbound silence after which the peer counts as dead: the
        peer's interval times `misses`, or the RTT floor (`rttFloor`) if
        that is longer.
        """
        return self._deadline

    @property
    def nominalDeadline(self) -> float:
        """The peer's interval times `misses`, without the RTT floor."""
        return self.peerInterval * self.misses

    def rttFloor(self) -> float | None:
        """
        The shortest deadline the measured RTT allows:
        `RTT_DEADLINE_FACTOR` x (SRTT + 4 RTTVAR), capped at `maxDeadline`;
        ``None`` before the first RTT sample.
        """
        if self.srtt is None or self.rttvar is None:
            return None
        floor = RTT_DEADLINE_FACTOR * (self.srtt + 4 * self.rttvar)
        cap = self.maxDeadline
        return floor if cap is None or floor < cap else cap

    def _updateDeadline(self) -> None:
        nominal = self.peerInterval * self.misses
        floor = self.rttFloor()
        self._deadline = floor if floor is not None and floor > nominal else nominal

    @property
    def outstandingPings(self) -> int:
        """PINGs sent whose PONG has not arrived (at most
        `MAX_OUTSTANDING_PINGS` are remembered)."""
        return len(self._pings)

    def received(self, now: float) -> None:
        """
        Bytes arrived from the peer.

        Before the handshake, bytes do not count: only `handshake` does.
        """
        if self.handshaken:
            self.lastReceived = now

    def handshake(self, peerInterval: float, now: float) -> None:
        """
        The peer's HELLO arrived, announcing ``peerInterval``.
        """
        self.handshaken = True
        self.peerInterval = peerInterval
        self.lastReceived = now
        self.grid = min(self.interval, peerInterval) / GRID_STEPS
        self._pingTokens = float(PING_BURST)
        self._pingTokensAt = now
        self.lastPingSent = now
        self._updateDeadline()

    def pingReceived(self, now: float) -> bool:
        """
        A PING arrived from the peer.

        :returns: ``False`` if the peer exceeded its PING rate: more than
            `PING_BURST` + `PING_BURST` x t / peer interval PINGs within some
            span of t seconds (a token bucket); ``True`` otherwise.
        """
        rate = PING_BURST / self.peerInterval
        tokens = self._pingTokens + (now - self._pingTokensAt) * rate
        if tokens > PING_BURST:
            tokens = PING_BURST
        self._pingTokensAt = now
        if tokens < 1.0:
            self._pingTokens = tokens
            return False
        self._pingTokens = tokens - 1.0
        return True

    def sent(self, now: float) -> None:
        """A frame was written to the peer."""
        self.lastSent = now

    def expiresAt(self) -> float:
        """
        The time at which the peer will count as dead if nothing arrives:
        the deadline after the last sign of life, rounded up to the `grid`.
        """
        grid = self.grid
        return ceil((self.lastReceived + self._deadline) / grid - _HAIR) * grid

    def pingAt(self) -> float:
        """
        When the next PING is due: ``interval`` after the last frame sent,
        or `RTT_PING_INTERVALS` intervals after the last PING sent if that
        is sooner, rounded down to the `grid` (shifted by `phase`), so that
        it is never late.
        """
        grid = self.grid
        phase = self.phase
        interval = self.interval
        due = self.lastSent + interval
        sample = self.lastPingSent + RTT_PING_INTERVALS * interval
        if sample < due:
            due = sample
        return (floor(due / grid - phase + _HAIR) + phase) * grid

    def nextWake(self) -> float:
        """
        The time the owner's timer should fire next: `pingAt` or
        `expiresAt`, whichever comes first.
        """
        wake = self.expiresAt()
        if self.handshaken:
            ping = self.pingAt()
            if ping < wake:
                return ping
        return wake

    def handleTimer(self, now: float, scheduledFor: float, queued: float = 0.0) -> TimerResult:
        """
        The owner's timer, armed for ``scheduledFor``, fired at ``now``.

        :param queued: seconds of that lateness spent running the timers of
            other connections due at the same time: granted back to the
            deadline like the rest, but no local stall.
        :returns: what to do, and the local stall (if any) that was granted
            back to the deadline.
        """
        late = now - scheduledFor
        stall = 0.0
        # The deadline is judged at the time the timer was due.
        expired = (scheduledFor if late > 0 else now) >= self.expiresAt()
        if late > 0:
            # Time during which this process did not run can't be blamed on
            # the peer: whatever it sent meanwhile waits unread.
            self.lastReceived += late
            if late - queued > STALL_THRESHOLD:
                stall = late - queued
                self.stalledFor += stall
        if expired:
            if stall:
                # The peer's bytes that arrived during the stall are still
                # unread: let the owner read them (the timer re-arms for now)
                # before the peer is declared dead.
                return TimerResult(_NOTHING, stall)
            return TimerResult(_EXPIRE, stall)
        if self.handshaken and now >= self.pingAt():
            self.pingId += 1
            self.lastPingSent = now
            pings = self._pings
            if len(pings) >= MAX_OUTSTANDING_PINGS:
                del pings[next(iter(pings))]
            pings[self.pingId] = now
            return TimerResult(_PING, stall)
        return TimerResult(_NOTHING, stall)

    def pongReceived(self, pingId: int, now: float) -> float | None:
        """
        A PONG arrived. It answers the outstanding PING with its id; the
        PINGs sent before that one are forgotten too (the peer answers the
        last PING of what it read, so they will get no PONG of their own).

        :returns: the RTT sample in seconds, or ``None`` for a PONG that
            answers no outstanding PING (answered already, forgotten, or
            unsolicited).
        """
        pings = self._pings
        sentAt = pings.get(pingId)
        if sentAt is None:
            return None
        for older in list(pings):
            del pings[older]
            if older == pingId:
                break
        sample = max(0.0, now - sentAt)
        if self.srtt is None or self.rttvar is None:
            self.srtt = sample
            self.rttvar = sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample
        if self.handshaken:
            self._updateDeadline()
        return sample

    def silenceDetail(self, now: float) -> str:
        """A sentence saying how long the peer has been silent."""
        silent = now - self.lastReceived
        what = "no data from peer" if self.handshaken else "no HELLO from peer"
        nominal = self.peerInterval * self.misses
        if self._deadline > nominal:
            return (
                f"{what} for {silent:.3f} s (deadline {self._deadline:.3f} s = "
                f"{RTT_DEADLINE_FACTOR} x (SRTT + 4 RTTVAR), above "
                f"{self.peerInterval:g} s x {self.misses})"
            )
        return (
            f"{what} for {silent:.3f} s (deadline {self._deadline:.3f} s = "
            f"{self.peerInterval:g} s x {self.misses})"
        )
