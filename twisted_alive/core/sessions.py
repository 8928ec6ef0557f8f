"""
The server's session table, sans-IO: sessions by key, and those without a
connection in the order they were last seen, so that every operation costs
O(1) (expiry: O(1) per session dropped).

It imports nothing from Twisted and never reads a clock: the caller passes
``now``. `AliveServerFactory` keeps one, arms a single timer for
`SessionTable.nextExpiry` and fails the pending messages of the sessions
`SessionTable.expire` returns.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class SessionTable(Generic[K, V]):
    """
    Sessions by key. A session is *idle* from the moment it is added (its
    connection has not completed HELLO yet) or detached (its connection
    ended) until it is attached to a connection again; only idle sessions
    expire.

    Idle sessions are kept in an ordered dict, least recently seen first:
    adding, touching or detaching one moves it to the end, so the front is
    always the next to expire, and expiry never looks past the sessions it
    drops. Times never go backwards in the table: a ``now`` earlier than one
    seen before counts as that one (the wall clock may step back; the order
    must not).

    :ivar entries: every session by key, idle or not (read only: change it
        through the methods).
    """

    def __init__(self) -> None:
        self.entries: dict[K, V] = {}
        self._idle: OrderedDict[K, float] = OrderedDict()
        self._latest = float("-inf")

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[K]:
        return iter(self.entries)

    @property
    def idle(self) -> int:
        """How many sessions have no connection."""
        return len(self._idle)

    def isIdle(self, key: K) -> bool:
        """Whether the session at ``key`` has no connection."""
        return key in self._idle

    def idleSince(self, key: K) -> float | None:
        """When the session at ``key`` was last seen, if it is idle."""
        return self._idle.get(key)

    def get(self, key: K) -> V | None:
        """The session at ``key``, or ``None``."""
        return self.entries.get(key)

    def _stamp(self, now: float) -> float:
        if now > self._latest:
            self._latest = now
        return self._latest

    def add(self, key: K, value: V, now: float) -> None:
        """
        Add a session, idle (seen ``now``) until `attach`.

        :raises KeyError: if ``key`` is in the table already.
        """
        if key in self.entries:
            raise KeyError(f"session key {key!r} is in the table already")
        self.entries[key] = value
        self._idle[key] = self._stamp(now)

    def touch(self, key: K, now: float) -> None:
        """The session at ``key`` was seen ``now`` (a client asked to resume
        it): if idle, it becomes the most recently seen."""
        if key in self._idle:
            self._idle[key] = self._stamp(now)
            self._idle.move_to_end(key)

    def attach(self, key: K) -> None:
        """The session at ``key`` has a connection: it does not expire."""
        self._idle.pop(key, None)

    def detach(self, key: K, now: float) -> None:
        """The connection of the session at ``key`` ended ``now``: it is
        idle, the most recently seen."""
        if key in self.entries:
            self._idle[key] = self._stamp(now)
            self._idle.move_to_end(key)

    def remove(self, key: K) -> V | None:
        """Remove the session at ``key``; return it (``None`` if absent)."""
        self._idle.pop(key, None)
        return self.entries.pop(key, None)

    def expire(self, now: float, ttl: float, limit: int) -> list[V]:
        """
        Remove the idle sessions last seen more than ``ttl`` seconds before
        ``now``, then the least recently seen beyond ``limit`` idle ones.

        :returns: the sessions removed, least recently seen first.
        """
        dropped: list[V] = []
        idle = self._idle
        while idle:
            key, seen = next(iter(idle.items()))
            if len(idle) <= limit and now - seen <= ttl:
                break
            del idle[key]
            dropped.append(self.entries.pop(key))
        return dropped

    def nextExpiry(self, ttl: float) -> float | None:
        """When the least recently seen idle session reaches ``ttl``
        (``None`` if none is idle). It expires once that time is passed."""
        for seen in self._idle.values():
            return seen + ttl
        return None

    def removeIdle(self) -> list[V]:
        """Remove every idle session; return them."""
        dropped = [self.entries.pop(key) for key in self._idle]
        self._idle.clear()
        return dropped


__all__ = ["SessionTable"]
