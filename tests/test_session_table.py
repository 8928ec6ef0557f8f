"""
Tests for the server's sans-IO session table, ``twisted_alive.core.sessions``:
expiry by TTL and by count in least-recently-seen order, checked rule by
rule and against a naive model (the scan the factory used to make on every
operation) under random operations; and its cost, which must not grow with
the number of sessions it holds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from twisted_alive.core import sessions as _sessiontable
from twisted_alive.core.sessions import SessionTable


def tableOf(*keys: str, now: float = 0.0) -> SessionTable[str, str]:
    """A table holding C{keys} (each its own value), idle, seen at C{now}."""
    table: SessionTable[str, str] = SessionTable()
    for key in keys:
        table.add(key, key.upper(), now)
    return table


def test_noTwistedImport() -> None:
    """The table module imports nothing from Twisted (it is part of the sans-IO core)."""
    tree = ast.parse(Path(_sessiontable.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [name for name in names if name.split(".")[0] == "twisted"]


def test_addedSessionIsIdle() -> None:
    """A session added has no connection yet: it is idle and can expire."""
    table = tableOf("a")
    assert table.isIdle("a")
    assert table.idle == 1
    assert table.idleSince("a") == 0.0
    assert table.get("a") == "A"
    assert "a" in table and len(table) == 1 and list(table) == ["a"]


def test_addTwiceRefused() -> None:
    """Adding a key already in the table raises KeyError and changes nothing."""
    table = tableOf("a")
    with pytest.raises(KeyError, match="session key 'a' is in the table already"):
        table.add("a", "other", 5.0)
    assert table.get("a") == "A"
    assert table.idleSince("a") == 0.0


def test_ttlIsStrict() -> None:
    """A session expires once more than ttl seconds passed since it was seen, not at ttl."""
    table = tableOf("a")
    assert table.expire(10.0, 10.0, 100) == []
    assert table.expire(10.001, 10.0, 100) == ["A"]
    assert len(table) == 0 and table.idle == 0


def test_attachedNeverExpires() -> None:
    """A session with a connection is neither expired by TTL nor counted against the limit."""
    table = tableOf("a", "b")
    table.attach("a")
    assert table.expire(1000.0, 10.0, 0) == ["B"]
    assert table.get("a") == "A"
    assert not table.isIdle("a")


def test_limitDropsLeastRecentlySeen() -> None:
    """Beyond the limit, the least recently seen idle sessions (added, touched, detached) go."""
    table = tableOf("a", "b", "c")
    table.touch("a", 1.0)
    table.attach("b")
    table.detach("b", 2.0)
    # Order now: c (0.0), a (1.0), b (2.0).
    assert table.expire(2.0, 100.0, 1) == ["C", "A"]
    assert list(table) == ["b"]


def test_touchIgnoresAttached() -> None:
    """Touching a session with a connection leaves it attached."""
    table = tableOf("a")
    table.attach("a")
    table.touch("a", 5.0)
    assert not table.isIdle("a")


def test_detachUnknownIgnored() -> None:
    """Detaching a key the table no longer holds (expired meanwhile) adds nothing."""
    table = tableOf()
    table.detach("gone", 1.0)
    assert len(table) == 0 and table.idle == 0


def test_removeAndRemoveIdle() -> None:
    """remove() takes one session out whatever its state; removeIdle() takes every idle one."""
    table = tableOf("a", "b", "c")
    table.attach("c")
    assert table.remove("a") == "A"
    assert table.remove("a") is None
    assert table.removeIdle() == ["B"]
    assert list(table) == ["c"]


def test_nextExpiry() -> None:
    """nextExpiry: when the least recently seen idle session reaches the TTL (None: none idle)."""
    table = tableOf()
    assert table.nextExpiry(10.0) is None
    table.add("a", "A", 3.0)
    table.add("b", "B", 4.0)
    assert table.nextExpiry(10.0) == 13.0
    table.attach("a")
    assert table.nextExpiry(10.0) == 14.0


def test_timeGoingBackwardsKeepsOrder() -> None:
    """A now earlier than one seen before counts as that one: the front still expires first."""
    table = tableOf()
    table.add("a", "A", 100.0)
    table.add("b", "B", 50.0)  # the wall clock stepped back
    assert table.idleSince("b") == 100.0
    assert table.nextExpiry(10.0) == 110.0
    assert table.expire(110.5, 10.0, 100) == ["A", "B"]


class NaiveTable:
    """The model: what the factory did before, a scan of every session on each expiry."""

    def __init__(self) -> None:
        self.order: list[str] = []  # every key, least recently touched first
        self.seen: dict[str, float] = {}
        self.attached: set[str] = set()

    def moveToEnd(self, key: str) -> None:
        self.order.remove(key)
        self.order.append(key)

    def expire(self, now: float, ttl: float, limit: int) -> list[str]:
        idle = [k for k in self.order if k not in self.attached]
        excess = len(idle) - limit
        dropped = []
        for key in idle:
            if excess > 0 or now - self.seen[key] > ttl:
                excess -= 1
                dropped.append(key)
                self.order.remove(key)
                del self.seen[key]
        return dropped


class TableMachine(RuleBasedStateMachine):
    """Random add/touch/attach/detach/remove/expire on the table and on the naive model."""

    def __init__(self) -> None:
        super().__init__()
        self.table: SessionTable[str, str] = SessionTable()
        self.model = NaiveTable()
        self.now = 0.0
        self.made = 0

    def keys(self) -> list[str]:
        return list(self.model.seen)

    @rule(step=st.floats(0.0, 20.0))
    def advance(self, step: float) -> None:
        self.now += step

    @rule()
    def add(self) -> None:
        key = f"k{self.made}"
        self.made += 1
        self.table.add(key, key.upper(), self.now)
        self.model.order.append(key)
        self.model.seen[key] = self.now

    @precondition(lambda self: self.model.seen)
    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.keys()))
        self.table.touch(key, self.now)
        self.model.moveToEnd(key)
        if key not in self.model.attached:
            self.model.seen[key] = self.now

    @precondition(lambda self: self.model.seen)
    @rule(data=st.data())
    def attach(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.keys()))
        self.table.attach(key)
        self.model.attached.add(key)

    @precondition(lambda self: self.model.seen)
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.keys()))
        self.table.detach(key, self.now)
        self.model.attached.discard(key)
        self.model.moveToEnd(key)
        self.model.seen[key] = self.now

    @precondition(lambda self: self.model.seen)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.keys()))
        assert self.table.remove(key) == key.upper()
        self.model.order.remove(key)
        del self.model.seen[key]
        self.model.attached.discard(key)

    @rule(ttl=st.sampled_from([0.0, 5.0, 30.0]), limit=st.integers(0, 6))
    def expire(self, ttl: float, limit: int) -> None:
        dropped = self.table.expire(self.now, ttl, limit)
        expected = self.model.expire(self.now, ttl, limit)
        self.model.attached.difference_update(expected)
        assert dropped == [k.upper() for k in expected]

    @invariant()
    def same(self) -> None:
        model = self.model
        assert set(self.table) == set(model.seen)
        idle = [k for k in model.order if k not in model.attached]
        assert self.table.idle == len(idle)
        for key in idle:
            assert self.table.isIdle(key)
            assert self.table.idleSince(key) == model.seen[key]
        due = min((model.seen[k] for k in idle), default=None)
        assert self.table.nextExpiry(0.0) == due


TestTableAgainstModel = TableMachine.TestCase
TestTableAgainstModel.pytestmark = [pytest.mark.slow]  # type: ignore[attr-defined]
