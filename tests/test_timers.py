"""
Tests for ``twisted_alive._timers``: the timer wheel behind every
connection's ``TimeoutMixin`` timer.
"""

from __future__ import annotations

from functools import partial
from typing import Any, cast

import pytest
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from zope.interface.verify import verifyObject

from twisted_alive._timers import RESOLUTION, TimerWheel, wheelFor


def wheel() -> tuple[TimerWheel, Clock, list[str]]:
    """A wheel on a new ``Clock``, and the list its test calls append to."""
    clock = Clock()
    return TimerWheel(clock), clock, []


def test_isADelayedCall() -> None:
    """A scheduled call provides ``IDelayedCall``."""
    timers, _, ran = wheel()
    call = timers.callLater(1.0, lambda: ran.append("a"))
    assert verifyObject(IDelayedCall, call)
    assert call.active() and call.getTime() == 1.0


def test_callsDueTogetherShareOneClockCall() -> None:
    """A thousand calls due at the same time are one call of the clock, and
    run in the order they were scheduled."""
    timers, clock, ran = wheel()
    for i in range(1000):
        timers.callLater(2.0, partial(ran.append, str(i)))
    assert len(clock.getDelayedCalls()) == 1
    assert timers.pending() == 1000
    clock.advance(1.999)
    assert ran == []
    clock.advance(0.001)
    assert ran == [str(i) for i in range(1000)]
    assert clock.getDelayedCalls() == [] and timers.pending() == 0


def test_sharedCallFiresWhenTheLastIsDue() -> None:
    """Calls within one 1/RESOLUTION s share a clock call that fires when
    the last of them is due: never early."""
    timers, clock, ran = wheel()
    step = 1 / RESOLUTION
    timers.callLater(1.0, lambda: ran.append("a"))
    timers.callLater(1.0 + step / 4, lambda: ran.append("b"))
    [shared] = clock.getDelayedCalls()
    assert shared.getTime() == 1.0 + step / 4
    clock.advance(1.0)
    assert ran == []
    clock.advance(step / 4)
    assert ran == ["a", "b"]


def test_callsAtDifferentTimesRunAtTheirTimes() -> None:
    """Calls further apart have clock calls of their own."""
    timers, clock, ran = wheel()
    timers.callLater(2.0, lambda: ran.append("late"))
    timers.callLater(1.0, lambda: ran.append("early"))
    assert sorted(c.getTime() for c in clock.getDelayedCalls()) == [1.0, 2.0]
    clock.advance(1.0)
    assert ran == ["early"]
    clock.advance(1.0)
    assert ran == ["early", "late"]


def test_cancel() -> None:
    """A cancelled call does not run; cancelling the last call of a time
    cancels the clock's call; cancelling twice raises ``AlreadyCancelled``."""
    timers, clock, ran = wheel()
    a = timers.callLater(1.0, lambda: ran.append("a"))
    b = timers.callLater(1.0, lambda: ran.append("b"))
    a.cancel()
    assert not a.active() and len(clock.getDelayedCalls()) == 1
    b.cancel()
    assert clock.getDelayedCalls() == [] and timers.pending() == 0
    clock.advance(2.0)
    assert ran == []
    with pytest.raises(AlreadyCancelled):
        a.cancel()
    with pytest.raises(AlreadyCancelled):
        a.reset(1.0)
    with pytest.raises(AlreadyCancelled):
        a.delay(1.0)


def test_calledCallRaisesAlreadyCalled() -> None:
    """A call that ran is no longer active and cannot be cancelled or moved."""
    timers, clock, ran = wheel()
    call = timers.callLater(1.0, lambda: ran.append("a"))
    clock.advance(1.0)
    assert ran == ["a"] and not call.active()
    for attempt in (call.cancel, lambda: call.reset(1.0), lambda: call.delay(1.0)):
        with pytest.raises(AlreadyCalled):
            attempt()


def test_resetAndDelay() -> None:
    """``reset`` moves a call to seconds from now, sooner or later;
    ``delay`` pushes it back from its due time."""
    timers, clock, ran = wheel()
    call = timers.callLater(5.0, lambda: ran.append("a"))
    clock.advance(1.0)
    call.reset(1.0)
    assert call.getTime() == 2.0
    assert [c.getTime() for c in clock.getDelayedCalls()] == [2.0]
    call.delay(0.5)
    assert call.getTime() == 2.5
    clock.advance(1.4)
    assert ran == []
    clock.advance(0.1)
    assert ran == ["a"]


def test_raisingCallIsLoggedAndOthersRun() -> None:
    """A call that raises is logged; the others due with it still run."""
    timers, clock, ran = wheel()
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        timers.callLater(1.0, lambda: ran.append("before"))
        timers.callLater(1.0, lambda: 1 / 0)
        timers.callLater(1.0, lambda: ran.append("after"))
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert ran == ["before", "after"]
    [failure] = [e for e in events if e.get("log_level") is LogLevel.critical]
    assert failure["log_failure"].check(ZeroDivisionError)
    assert failure["log_namespace"] == "alive.timers"


def test_callsChangedByAnEarlierCallOfTheirTime() -> None:
    """While a time's calls run, one cancelled by an earlier one does not run,
    and one moved by an earlier one runs at its new time, once."""
    timers, clock, ran = wheel()
    calls: dict[str, Any] = {}

    def first() -> None:
        ran.append("first")
        calls["cancelled"].cancel()
        calls["moved"].reset(1.0)

    timers.callLater(1.0, first)
    calls["cancelled"] = timers.callLater(1.0, lambda: ran.append("cancelled"))
    calls["moved"] = timers.callLater(1.0, lambda: ran.append("moved"))
    timers.callLater(1.0, lambda: ran.append("last"))
    clock.advance(1.0)
    assert ran == ["first", "last"]
    clock.advance(1.0)
    assert ran == ["first", "last", "moved"]
    assert timers.pending() == 0


def test_cancelWhileItsTimeRunsBesideANewCallOfThatTime() -> None:
    """A call of the running time, cancelled after a new call got that time
    too (a slot of its own), does not run, and the new one does."""
    timers, clock, ran = wheel()
    calls: dict[str, Any] = {}

    def first() -> None:
        ran.append("first")
        timers.callLater(0.0, lambda: ran.append("new"))
        calls["second"].cancel()

    timers.callLater(1.0, first)
    calls["second"] = timers.callLater(1.0, lambda: ran.append("second"))
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        clock.advance(1.0)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert ran == ["first", "new"]
    assert [e for e in events if e.get("log_level") is LogLevel.critical] == []


def test_callJoiningAnOverdueTimeMovesNoCallSooner() -> None:
    """A call already due gets a clock call for now; another due time of the
    same slot, between them, leaves that clock call where it is."""
    timers, clock, ran = wheel()
    clock.advance(10.0)
    step = 1 / RESOLUTION
    timers.callLater(-step / 3, lambda: ran.append("a"))
    [shared] = clock.getDelayedCalls()
    assert shared.getTime() == 10.0
    timers.callLater(-step / 6, lambda: ran.append("b"))
    assert clock.getDelayedCalls() == [shared] and shared.getTime() == 10.0
    clock.advance(0.0)
    assert ran == ["a", "b"]


def test_callScheduledNowFromACallRunsAfterItsTime() -> None:
    """A call scheduled for now while a time's calls run joins none of them:
    it gets a clock call of its own, which runs after them."""
    timers, clock, ran = wheel()

    def first() -> None:
        ran.append("first")
        timers.callLater(0.0, lambda: ran.append("now"))

    timers.callLater(1.0, first)
    timers.callLater(1.0, lambda: ran.append("second"))
    clock.advance(1.0)
    assert ran == ["first", "second", "now"]
    assert clock.getDelayedCalls() == [] and timers.pending() == 0


def test_runningSince() -> None:
    """While a time's calls run, ``runningSince`` is when they began."""
    timers, clock, _ = wheel()
    seen: list[float | None] = []

    def slow() -> None:
        seen.append(timers.runningSince)
        clock.rightNow += 0.25

    timers.callLater(1.0, slow)
    timers.callLater(1.0, slow)
    assert timers.runningSince is None
    clock.advance(1.0)
    assert seen == [1.0, 1.0]
    assert timers.runningSince is None


def test_runningFor() -> None:
    """``runningFor`` is the time the calls due before one took, 0.0 outside a run."""
    timers, clock, _ = wheel()
    seen: list[float] = []

    def slow() -> None:
        seen.append(timers.runningFor(clock.seconds()))
        clock.rightNow += 0.25

    timers.callLater(1.0, slow)
    timers.callLater(1.0, slow)
    assert timers.runningFor(clock.seconds()) == 0.0
    clock.advance(1.0)
    assert seen == [0.0, 0.25]
    assert timers.runningFor(clock.seconds()) == 0.0


def test_wheelForIsOnePerClock() -> None:
    """Every connection on one clock shares its wheel."""
    a, b = Clock(), Clock()
    assert wheelFor(a) is wheelFor(a)
    assert wheelFor(b) is not wheelFor(a)
    assert wheelFor(a).clock is a


def test_repr() -> None:
    """A call's repr names its function, time and state."""
    timers, clock, _ = wheel()

    def tick() -> None:
        pass

    call = timers.callLater(1.5, tick)
    assert repr(call).startswith("<WheelCall <function test_repr.<locals>.tick")
    assert repr(call).endswith("at 1.500 (active)>")
    call.cancel()
    assert repr(call).endswith("(cancelled)>")
