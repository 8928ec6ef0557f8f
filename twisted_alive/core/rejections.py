"""
Rate-limited reporting of rejected messages.

A message whose processing fails (``messageReceived`` raised, or its
Deferred failed) is rejected: the peer learns it with a REJECT frame. One
peer that sends a stream of messages the application refuses must not turn
the log into a stream of tracebacks, so `RejectionLog` decides what is
worth a line: the first rejection of each cause (exception type and
message), with its traceback; then at most one summary line per cause every
`REJECTION_LOG_EVERY` seconds, counting the ones left out. Every rejection
is counted in `rejectionsTotal` (for ``/metrics``), whether logged or not.

Plain logic, fed timestamps: no clock, no Twisted.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import NamedTuple

REJECTION_LOG_EVERY = 10.0
"""Seconds between two log lines about rejections of one cause."""

MAX_CAUSES = 64
"""Causes remembered at most; the one logged longest ago is forgotten
first (its next rejection is then logged as a first one)."""

MAX_NEW_CAUSES = 8
"""New causes logged with a traceback per `REJECTION_LOG_EVERY` seconds at
most: past that (an application whose error texts differ for every
message), new causes are counted under `OTHER_CAUSES`."""

OTHER_CAUSES = "(other causes)"
"""The cause under which rejections past `MAX_NEW_CAUSES` are counted."""

MAX_CAUSE_LENGTH = 200
"""Characters of a cause kept (and logged)."""

_total = [0]


def rejectionsTotal() -> int:
    """Messages rejected by the applications of this process so far."""
    return _total[0]


class Report(enum.Enum):
    """What to log about one rejection."""

    NONE = 0
    """Nothing: counted, and reported by a later summary line."""
    FIRST = 1
    """The first of its cause: a line with the traceback."""
    SUMMARY = 2
    """A line saying how many like it were left out (`Verdict.repeats`)."""


class Verdict(NamedTuple):
    """The outcome of `RejectionLog.record`."""

    report: Report
    cause: str
    """The cause the rejection was counted under (shortened)."""
    repeats: int
    """For `Report.SUMMARY`: the rejections of that cause since its last
    line, this one included."""
    since: float
    """For `Report.SUMMARY`: the time of that last line."""


class RejectionLog:
    """
    Which rejections to log, per cause, with bounded memory.

    :ivar suppressed: rejections counted but not (yet) reported in a line.
    """

    def __init__(self) -> None:
        self._causes: OrderedDict[str, list[float]] = OrderedDict()
        self._windowStart = float("-inf")
        self._newInWindow = 0
        self.suppressed = 0

    def record(self, cause: str, now: float) -> Verdict:
        """
        A message was rejected for ``cause`` (``"Type: message"``) at
        ``now``: count it, and say what to log.
        """
        _total[0] += 1
        cause = cause[:MAX_CAUSE_LENGTH]
        causes = self._causes
        entry = causes.get(cause)
        if entry is None:
            if now - self._windowStart >= REJECTION_LOG_EVERY:
                self._windowStart = now
                self._newInWindow = 0
            if self._newInWindow >= MAX_NEW_CAUSES:
                cause = OTHER_CAUSES
                entry = causes.get(cause)
            if entry is None:
                if cause is not OTHER_CAUSES:
                    self._newInWindow += 1
                if len(causes) >= MAX_CAUSES:
                    _, dropped = causes.popitem(last=False)
                    self.suppressed -= int(dropped[1])
                causes[cause] = [now, 0.0]
                if cause is OTHER_CAUSES:
                    return Verdict(Report.SUMMARY, cause, 1, now)
                return Verdict(Report.FIRST, cause, 1, now)
        entry[1] += 1
        if now - entry[0] < REJECTION_LOG_EVERY:
            self.suppressed += 1
            return Verdict(Report.NONE, cause, 0, entry[0])
        count, since = int(entry[1]), entry[0]
        self.suppressed -= count - 1
        entry[0], entry[1] = now, 0.0
        causes.move_to_end(cause)
        return Verdict(Report.SUMMARY, cause, count, since)
