"""
Timers shared by many connections: one reactor call per due time.

Every connection keeps its deadline on ``TimeoutMixin``'s timer, and the
liveness core (`twisted_alive.core.liveness`) puts wake times on a grid, so
thousands of connections wake at the same few times. `TimerWheel` is the
``callLater`` behind that timer: calls due at the same time share one
``DelayedCall`` of the reactor and are run one after the other when it
fires. Without it, each connection's timer is a ``DelayedCall`` of its own,
a ``__dict__``-backed object in the reactor's heap whose ordering calls a
Python ``__lt__`` about log2(N) times per push and per pop, and moving one
sooner searches the whole heap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

RESOLUTION = 1024
"""Calls due within the same 1/``RESOLUTION`` of a second (their times
rounded to the nearest) share one reactor call, which fires when the last
of them is due: never early, and at most that much late."""

_ACTIVE = 0
_CALLED = 1
_CANCELLED = 2

_log = Logger(namespace="alive.timers")


@implementer(IDelayedCall)
class WheelCall:
    """One call scheduled on a `TimerWheel`: an ``IDelayedCall``."""

    __slots__ = ("_wheel", "_time", "_slot", "_func", "_state")

    def __init__(self, wheel: TimerWheel, func: Callable[[], object]) -> None:
        self._wheel = wheel
        self._time = 0.0
        self._slot = 0
        self._func = func
        self._state = _ACTIVE

    def getTime(self) -> float:
        """The time this call is due at."""
        return self._time

    def active(self) -> bool:
        """Whether this call has neither run nor been cancelled."""
        return self._state == _ACTIVE

    def cancel(self) -> None:
        """
        Do not run this call.

        :raises AlreadyCancelled: if it was cancelled before.
        :raises AlreadyCalled: if it has run.
        """
        self._check()
        self._state = _CANCELLED
        self._wheel._remove(self)

    def reset(self, secondsFromNow: float) -> None:
        """
        Run this call ``secondsFromNow`` seconds from now instead.

        :raises AlreadyCancelled: if it was cancelled.
        :raises AlreadyCalled: if it has run.
        """
        self._check()
        wheel = self._wheel
        wheel._remove(self)
        wheel._add(self, wheel.clock.seconds() + secondsFromNow)

    def delay(self, secondsLater: float) -> None:
        """
        Run this call ``secondsLater`` seconds later than it is due.

        :raises AlreadyCancelled: if it was cancelled.
        :raises AlreadyCalled: if it has run.
        """
        self._check()
        wheel = self._wheel
        wheel._remove(self)
        wheel._add(self, self._time + secondsLater)

    def _check(self) -> None:
        if self._state == _CANCELLED:
            raise AlreadyCancelled(self)
        if self._state == _CALLED:
            raise AlreadyCalled(self)

    def __repr__(self) -> str:
        state = {_ACTIVE: "active", _CALLED: "called", _CANCELLED: "cancelled"}[self._state]
        return f"<WheelCall {self._func!r} at {self.getTime():.3f} ({state})>"


class TimerWheel:
    """
    ``callLater`` for many timers on one clock, grouped by due time.

    Calls due in the same 1/`RESOLUTION` of a second share one call of
    ``clock`` and run in the order they were scheduled. A call that raises
    is logged, and the others due with it still run. Cancelling or moving a
    call is a dictionary operation; the reactor's call for a due time is
    cancelled when no call is left in it.

    :ivar clock: the ``IReactorTime`` the shared calls are scheduled on.
    :ivar runningSince: while the calls of a due time run, when they began
        (so a call can tell the time spent on the calls before it from a
        stall of the process); ``None`` otherwise.
    """

    runningSince: float | None = None

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._slots: dict[int, _Slot] = {}

    def callLater(self, delay: float, func: Callable[[], object]) -> WheelCall:
        """Run ``func()`` in ``delay`` seconds."""
        call = WheelCall(self, func)
        self._add(call, self.clock.seconds() + delay)
        return call

    def runningFor(self, now: float) -> float:
        """Seconds spent so far on the calls due at the time whose calls run
        now (``0.0`` when none run): for one of them, the time the calls
        before it took, which is no stall of the process."""
        since = self.runningSince
        return 0.0 if since is None else now - since

    def pending(self) -> int:
        """How many calls wait to run."""
        return sum(len(slot.calls) for slot in self._slots.values())

    def _add(self, call: WheelCall, when: float) -> None:
        call._time = when
        key = call._slot = round(when * RESOLUTION)
        slot = self._slots.get(key)
        if slot is None:
            self._slots[key] = _Slot(self, key, when, call)
        else:
            slot.add(call, when)

    def _remove(self, call: WheelCall) -> None:
        slot = self._slots.get(call._slot)
        if slot is None or call not in slot.calls:
            return  # its slot is running: its state and slot tell it apart
        calls = slot.calls
        del calls[call]
        if not calls:
            del self._slots[call._slot]
            slot.shared.cancel()

    def _run(self, key: int) -> None:
        calls = self._slots.pop(key).calls
        outer, self.runningSince = self.runningSince, self.clock.seconds()
        try:
            for call in calls:
                # Cancelled or moved by a call that ran before it in this slot.
                if call._state != _ACTIVE or call._slot != key:
                    continue
                call._state = _CALLED
                try:
                    call._func()
                except BaseException:
                    _log.failure("timer call {call!r} failed", call=call)
        finally:
            self.runningSince = outer


class _Slot:
    """The calls of a `TimerWheel` due in one 1/`RESOLUTION` of a second."""

    __slots__ = ("shared", "calls")

    def __init__(self, wheel: TimerWheel, key: int, when: float, call: WheelCall) -> None:
        self.calls = {call: None}
        delay = when - wheel.clock.seconds()
        self.shared = wheel.clock.callLater(delay if delay > 0.0 else 0.0, wheel._run, key)

    def add(self, call: WheelCall, when: float) -> None:
        self.calls[call] = None
        later = when - self.shared.getTime()
        if later > 0.0:
            # Later, never sooner: the reactor moves a call later in place.
            self.shared.delay(later)


_wheels: WeakKeyDictionary[Any, TimerWheel] = WeakKeyDictionary()
_last: list[Any] = [None, None]
"""The clock asked for last and its wheel: every timer turn asks, and a
weak dictionary's lookup costs more than the rest of ``wheelFor``. It keeps
that one clock alive."""


def wheelFor(clock: IReactorTime) -> TimerWheel:
    """The `TimerWheel` of ``clock``, made on first use."""
    if _last[0] is clock:
        wheel: TimerWheel = _last[1]
        return wheel
    wheel = _wheels.get(clock) or _wheels.setdefault(clock, TimerWheel(clock))
    _last[0], _last[1] = clock, wheel
    return wheel
