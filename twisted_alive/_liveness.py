"""
Liveness of one connection: when to send a PING, when the peer counts as
dead, the round-trip time, and grace for a timer that fired late.

Sans-IO: fed timestamps, never reads a clock, imports nothing from Twisted.

Rules (see ``docs/protocol.md``):

- Any inbound byte is a sign of life; before the peer's HELLO, only the
  HELLO itself is (the handshake must finish within the deadline, so a peer
  trickling bytes cannot hold a connection open without completing it).
- A PING goes out after ``interval`` seconds of outbound silence (see the
  grid below). Every
  frame sent counts as outbound traffic, so busy links send no PING.
- The peer is dead when nothing arrived for ``peerInterval * misses``
  seconds, ``peerInterval`` being the interval the peer announced in its
  HELLO (our own interval until then).
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
        "_pingSentAt",
    )

    def __init__(self, interval: float, misses: int, now: float, phase: float = 0.0) -> None:
        if not interval > 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval!r}")
        if misses < 1:
            raise ValueError(f"heartbeat misses must be at least 1, got {misses!r}")
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
        self._pingSentAt: float | None = None

    @property
    def deadline(self) -> float:
        """Seconds of inbound silence after which the peer counts as dead."""
        return self.peerInterval * self.misses

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

    def sent(self, now: float) -> None:
        """A frame was written to the peer."""
        self.lastSent = now

    def expiresAt(self) -> float:
        """
        The time at which the peer will count as dead if nothing arrives:
        the deadline after the last sign of life, rounded up to the `grid`.
        """
        grid = self.grid
        return ceil((self.lastReceived + self.peerInterval * self.misses) / grid - _HAIR) * grid

    def pingAt(self) -> float:
        """
        When the next PING is due: ``interval`` after the last frame sent,
        rounded down to the `grid` (shifted by `phase`), so that it is never
        late.
        """
        grid = self.grid
        phase = self.phase
        return (floor((self.lastSent + self.interval) / grid - phase + _HAIR) + phase) * grid

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
            self._pingSentAt = now
            return TimerResult(_PING, stall)
        return TimerResult(_NOTHING, stall)

    def pongReceived(self, pingId: int, now: float) -> float | None:
        """
        A PONG arrived.

        :returns: the RTT sample in seconds, or ``None`` for a PONG that does
            not answer the outstanding PING (stale or unsolicited).
        """
        if pingId != self.pingId or self._pingSentAt is None:
            return None
        sample = max(0.0, now - self._pingSentAt)
        self._pingSentAt = None
        if self.srtt is None or self.rttvar is None:
            self.srtt = sample
            self.rttvar = sample / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - sample)
            self.srtt = 0.875 * self.srtt + 0.125 * sample
        return sample

    def silenceDetail(self, now: float) -> str:
        """A sentence saying how long the peer has been silent."""
        silent = now - self.lastReceived
        what = "no data from peer" if self.handshaken else "no HELLO from peer"
        return (
            f"{what} for {silent:.3f} s (deadline {self.deadline:.3f} s = "
            f"{self.peerInterval:g} s x {self.misses})"
        )
