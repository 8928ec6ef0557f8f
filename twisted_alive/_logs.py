"""
The adapter's log lines about one connection, bounded so that a storm (of
stalls, rejections or PONGs across thousands of connections) never becomes
a storm of lines.
"""

from __future__ import annotations

from typing import Any, cast
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from twisted_alive._reasons import typeName
from twisted_alive.core.connection import Event, PeerNotReading, PongReceived, Stalled, Violation
from twisted_alive.core.rejections import RejectionLog, Report

log = Logger(namespace="twisted_alive")

STALL_LOG_EVERY = 1.0
"""Seconds between two stall warnings of one clock (see `logStall`)."""

_stallLogs: WeakKeyDictionary[IReactorTime, list[Any]] = WeakKeyDictionary()
_rejectionLogs: WeakKeyDictionary[IReactorTime, RejectionLog] = WeakKeyDictionary()

_pongWatchers = [0]
"""How many status sites want ``pong`` events (see `watchPongs`)."""


def watchPongs(on: bool) -> None:
    """
    Ask for (``True``) or release (``False``) the ``pong`` log event of
    every connection of the process, whatever their ``logPongs``: a status
    site feeds its RTT histogram from them while it listens.
    """
    _pongWatchers[0] = max(0, _pongWatchers[0] + (1 if on else -1))


def logConnected(peer: str | None, role: str) -> None:
    """Log (debug) that a connection with ``peer`` was made, in ``role``."""
    log.debug("alive.connected: {peer} as {role}", peer=peer, role=role, event="connected")


def logOpened(peer: str | None, interval: float, resumed: bool) -> None:
    """Log that the HELLO exchange with ``peer`` completed: the heartbeat
    interval it promised, and whether a session was resumed."""
    log.info(
        "alive.hello: {peer} open, peer interval {interval:g} s, resumed {resumed}",
        peer=peer,
        interval=interval,
        resumed=resumed,
        event="hello",
    )


def logEvent(event: Event, peer: str | None, clock: IReactorTime, logPongs: bool) -> None:
    """Log what a core event says, if it says something worth a line."""
    kind = type(event)
    if kind is PongReceived:
        if logPongs or _pongWatchers[0]:
            rtt = cast(PongReceived, event).rtt
            log.debug("alive.pong: {peer} rtt {rtt:.6f} s", peer=peer, rtt=rtt, event="pong")
    elif kind is Violation:
        detail = cast(Violation, event).detail
        log.warn(
            "alive.protocol_error: {peer}: {detail}",
            peer=peer,
            detail=detail,
            event="protocol_error",
        )
    elif kind is PeerNotReading:
        detail = cast(PeerNotReading, event).detail
        log.warn(
            "alive.not_reading: {peer}: {detail}", peer=peer, detail=detail, event="not_reading"
        )
    elif kind is Stalled:
        logStall(clock, peer, cast(Stalled, event).seconds)


def logStall(clock: IReactorTime, peer: str | None, seconds: float) -> None:
    """
    Log a local stall, once per clock and second: a stall delays the timers
    of every connection of the process, and thousands of connections whose
    timers fall due together delay each other, so one line per connection
    would be a storm. ``suppressed`` counts the reports left out since the
    last line.
    """
    now = clock.seconds()
    last = _stallLogs.get(clock)
    if last is not None and now - last[0] < STALL_LOG_EVERY:
        last[1] += 1
        return
    log.warn(
        "alive.stall: this process did not run for {seconds:.3f} s; "
        "the time was not counted against {peer}",
        seconds=seconds,
        peer=peer,
        suppressed=last[1] if last is not None else 0,
        event="stall",
    )
    _stallLogs[clock] = [now, 0]


def logRejection(clock: IReactorTime, peer: str | None, seq: int, failure: Failure) -> str:
    """
    Log that the application failed on message ``seq`` from ``peer``: the
    first failure of a kind with its traceback, then one summary line per
    period (`RejectionLog`).

    :returns: the text of the REJECT: the error's type and message.
    """
    text = f"{typeName(failure)}: {failure.getErrorMessage()}"
    rejections = _rejectionLogs.get(clock)
    if rejections is None:
        rejections = _rejectionLogs[clock] = RejectionLog()
    now = clock.seconds()
    verdict = rejections.record(text, now)
    if verdict.report is Report.FIRST:
        log.failure(
            "alive.rejected: messageReceived failed on message {seq} from {peer}: {cause}",
            failure=failure,
            level=LogLevel.error,
            seq=seq,
            peer=peer,
            cause=verdict.cause,
            count=1,
            event="rejected",
        )
    elif verdict.report is Report.SUMMARY:
        log.error(
            "alive.rejected: {count} rejections like {cause!r} in the last "
            "{seconds:.1f} s (last: message {seq} from {peer})",
            seq=seq,
            peer=peer,
            cause=verdict.cause,
            count=verdict.repeats,
            seconds=now - verdict.since,
            event="rejected",
        )
    return text
