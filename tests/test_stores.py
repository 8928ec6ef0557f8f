"""
Session stores, ``twisted_alive._stores``: one test class run against every
implementation of `ISessionStore` (memory, SQLite on a real file, Redis on a
real server of the tests' own), then what only the SQLite store promises
(group commit, WAL, its own thread, a file read back by a second store, a
damaged or foreign file refused with one clear error), the description
strings, and a Hypothesis state machine
checking every store against a plain model, across reopenings. What only
the Redis store promises is in ``tests/test_redis_store.py``.
"""

from __future__ import annotations

import itertools
import queue
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from support import (
    LOOPBACK,
    Processes,
    chaosSeed,
    ensureDeferred,
    failureResultOf,
    getReactor,
    successResultOf,
)
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorFromThreads
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted_alive import (
    ISessionStore,
    MemorySessionStore,
    RedisSessionStore,
    SqliteSessionStore,
    sessionStoreFromString,
)
from twisted_alive._stores import APPLICATION_ID, SCHEMA_VERSION
from twisted_alive.core.outcomes import QueueFull
from twisted_alive.core.stored import (
    COMMIT_BUCKETS,
    CorruptStore,
    StoredSession,
    StoreError,
    StoreLimits,
)

T = TypeVar("T")

A = bytes([0xAA] * 16)
B = bytes([0xBB] * 16)
C = bytes([0xCC] * 16)
APPENDER_TOKEN = bytes([0x11] * 16)
"""The session of ``tests/peers/store_appender.py``."""
LIMITS = StoreLimits(maxMessages=5, maxBytes=50)
"""Small limits, so that the tests reach them."""

_F = TypeVar("_F", bound=Callable[..., Any])
eachStore = cast(
    Callable[[_F], _F], pytest_twisted.async_yield_fixture(params=["memory", "sqlite", "redis"])
)
"""An async yield fixture run once per store kind."""


def record(token: bytes = A, **fields: Any) -> StoredSession:
    """A `StoredSession` of ``token`` with ``fields``."""
    return StoredSession(token, **fields)


_prefixes = itertools.count()


def redisPrefix() -> str:
    """A key prefix no other test uses, on the shared Redis server."""
    return f"test{next(_prefixes)}:"


@eachStore
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """Each store, with `LIMITS`, open; closed after the test. The Redis
    store uses the run's `redisServer`, with keys of the test's own."""
    made: ISessionStore
    if request.param == "memory":
        made = MemorySessionStore(LIMITS)
    elif request.param == "redis":
        server = request.getfixturevalue("redisServer")
        made = RedisSessionStore(
            getReactor(), LOOPBACK, server.port, limits=LIMITS, prefix=redisPrefix()
        )
    else:
        made = SqliteSessionStore(tmp_path / "sessions.db", limits=LIMITS, reactor=getReactor())
    await made.open()
    yield made
    await made.close()


class TestSessionStore:
    """What every `ISessionStore` does, the same way."""

    def test_providesTheInterface(self, store: ISessionStore) -> None:
        """The store provides `ISessionStore`, all of it."""
        assert verifyObject(ISessionStore, store)
        assert store.limits == LIMITS

    @ensureDeferred
    async def test_createAndLoad(self, store: ISessionStore) -> None:
        """A created session loads back as it was given, messages included;
        an unknown token loads as ``None``."""
        given = record(
            epoch=3,
            nextSeq=8,
            confirmedUpTo=5,
            processedUpTo=11,
            lastSeen=1234.5,
            messages=((6, b"six"), (7, b"")),
        )
        await store.createSession(given)
        assert await store.loadSession(A) == given
        assert await store.loadSession(B) is None
        assert await store.listSessions() == [A]

    @ensureDeferred
    async def test_createTwiceRefused(self, store: ISessionStore) -> None:
        """A token is created once; a second create fails and changes
        nothing."""
        await store.createSession(record(epoch=1))
        with pytest.raises(StoreError) as caught:
            await store.createSession(record(epoch=2))
        assert str(caught.value) == "the store holds session aaaaaaaa already"
        loaded = await store.loadSession(A)
        assert loaded is not None and loaded.epoch == 1

    @ensureDeferred
    async def test_createInconsistentRefused(self, store: ISessionStore) -> None:
        """A record whose messages do not follow its positions is refused,
        and nothing is stored."""
        with pytest.raises(StoreError) as caught:
            await store.createSession(record(nextSeq=3, messages=((1, b"a"),)))
        assert str(caught.value).startswith("stored messages must be numbered consecutively")
        assert await store.listSessions() == []

    @ensureDeferred
    async def test_createBeyondLimitsRefused(self, store: ISessionStore) -> None:
        """A record holding more messages than the limits is refused with
        `QueueFull`."""
        messages = tuple((n, b"m") for n in range(1, 7))
        with pytest.raises(QueueFull):
            await store.createSession(record(nextSeq=7, messages=messages))
        assert await store.listSessions() == []

    @ensureDeferred
    async def test_append(self, store: ISessionStore) -> None:
        """Appended messages are stored in order and move ``nextSeq``."""
        await store.createSession(record())
        await store.appendMessages(A, [(1, b"one")])
        await store.appendMessages(A, [(2, b"two"), (3, b"three")])
        await store.appendMessages(A, [])
        assert await store.loadSession(A) == record(
            nextSeq=4, messages=((1, b"one"), (2, b"two"), (3, b"three"))
        )

    @ensureDeferred
    async def test_appendOutOfOrderRefused(self, store: ISessionStore) -> None:
        """Messages that do not continue the numbering are refused, all of
        them."""
        await store.createSession(record(nextSeq=5, confirmedUpTo=4))
        with pytest.raises(StoreError) as caught:
            await store.appendMessages(A, [(5, b"a"), (7, b"b")])
        assert str(caught.value) == "appended messages must be numbered from 5 on, got 5, 7"
        assert await store.loadSession(A) == record(nextSeq=5, confirmedUpTo=4)

    @ensureDeferred
    async def test_unknownSessionRefused(self, store: ISessionStore) -> None:
        """Every change to a session the store does not hold fails with the
        same `StoreError`; deleting one says it was not there."""
        calls: list[Callable[[], Deferred[Any]]] = [
            lambda: store.appendMessages(B, [(1, b"x")]),
            lambda: store.confirmMessages(B, 0),
            lambda: store.recordProcessed(B, 1),
            lambda: store.touchSession(B, 1.0),
        ]
        for call in calls:
            with pytest.raises(StoreError) as caught:
                await call()
            assert str(caught.value) == "the store holds no session bbbbbbbb"
        assert await store.deleteSession(B) is False

    @ensureDeferred
    async def test_appendBeyondLimitsRefused(self, store: ISessionStore) -> None:
        """Beyond the limits (messages or bytes) appending fails with
        `QueueFull` and stores nothing; confirmed messages make room."""
        await store.createSession(record())
        await store.appendMessages(A, [(n, b"m") for n in range(1, 5)])
        with pytest.raises(QueueFull) as caught:
            await store.appendMessages(A, [(5, b"a"), (6, b"b")])
        assert str(caught.value) == (
            "session store full: the session holds 4 messages (4 bytes), 2 more (2 bytes) "
            "would exceed maxMessages=5 or maxBytes=50"
        )
        with pytest.raises(QueueFull):
            await store.appendMessages(A, [(5, b"x" * 47)])
        await store.appendMessages(A, [(5, b"x" * 46)])
        await store.confirmMessages(A, 3)
        await store.appendMessages(A, [(6, b"y"), (7, b"z")])
        loaded = await store.loadSession(A)
        assert loaded is not None
        assert [seq for seq, _ in loaded.messages] == [4, 5, 6, 7]
        assert loaded.storedBytes == 49

    @ensureDeferred
    async def test_emptySessionTakesOneLargeMessage(self, store: ISessionStore) -> None:
        """A session holding nothing takes one message beyond the byte limit
        (as an empty outbox queue does), not two."""
        await store.createSession(record())
        with pytest.raises(QueueFull):
            await store.appendMessages(A, [(1, b"x" * 60), (2, b"y")])
        await store.appendMessages(A, [(1, b"x" * 60)])
        with pytest.raises(QueueFull):
            await store.appendMessages(A, [(2, b"y")])

    @ensureDeferred
    async def test_confirm(self, store: ISessionStore) -> None:
        """Confirming drops the messages up to the position; going back
        changes nothing; a position never appended is refused."""
        await store.createSession(record())
        await store.appendMessages(A, [(1, b"a"), (2, b"b"), (3, b"c")])
        await store.confirmMessages(A, 2)
        await store.confirmMessages(A, 1)
        assert await store.loadSession(A) == record(
            nextSeq=4, confirmedUpTo=2, messages=((3, b"c"),)
        )
        with pytest.raises(StoreError) as caught:
            await store.confirmMessages(A, 4)
        assert str(caught.value) == "cannot confirm up to 4: only 3 messages were appended"
        await store.confirmMessages(A, 3)
        assert await store.loadSession(A) == record(nextSeq=4, confirmedUpTo=3)

    @ensureDeferred
    async def test_positionsNeverGoBack(self, store: ISessionStore) -> None:
        """The processed position and the last-seen time only move forward."""
        await store.createSession(record(processedUpTo=5, lastSeen=10.0))
        await store.recordProcessed(A, 9)
        await store.recordProcessed(A, 7)
        await store.touchSession(A, 30.0)
        await store.touchSession(A, 20.0)
        assert await store.loadSession(A) == record(processedUpTo=9, lastSeen=30.0)

    @ensureDeferred
    async def test_rejectionsKeptWithThePosition(self, store: ISessionStore) -> None:
        """The REJECTs the peer may not have seen are kept with the
        processed position: replaced when given, left alone when not,
        created and deleted with their session."""
        await store.createSession(record(processedUpTo=1, rejections=((1, "first"),)))
        assert await store.loadSession(A) == record(processedUpTo=1, rejections=((1, "first"),))
        await store.recordProcessed(A, 3, [(1, "first"), (3, "third")])
        await store.recordProcessed(A, 4)
        assert await store.loadSession(A) == record(
            processedUpTo=4, rejections=((1, "first"), (3, "third"))
        )
        await store.recordProcessed(A, 5, [])
        assert await store.loadSession(A) == record(processedUpTo=5)
        await store.recordProcessed(A, 6, [(6, "sixth")])
        assert await store.deleteSession(A)
        await store.createSession(record())
        assert await store.loadSession(A) == record()

    @ensureDeferred
    async def test_rejectionBeyondPositionRefused(self, store: ISessionStore) -> None:
        """A record whose REJECTs are out of order or beyond its processed
        position is refused with the exact text."""
        with pytest.raises(StoreError) as caught:
            await store.createSession(record(processedUpTo=2, rejections=((3, "x"),)))
        assert str(caught.value) == (
            "stored REJECTs must be in order and at or below processedUpTo 2, got [3]"
        )

    @ensureDeferred
    async def test_listLeastRecentlySeenFirst(self, store: ISessionStore) -> None:
        """Sessions list least recently seen first (ties by token)."""
        await store.createSession(record(C, lastSeen=5.0))
        await store.createSession(record(B, lastSeen=1.0))
        await store.createSession(record(A, lastSeen=5.0))
        assert await store.listSessions() == [B, A, C]
        await store.touchSession(B, 9.0)
        assert await store.listSessions() == [A, C, B]

    @ensureDeferred
    async def test_expire(self, store: ISessionStore) -> None:
        """Sessions unseen for longer than the TTL go, with their messages,
        least recently seen first; the others stay."""
        await store.createSession(record(A, lastSeen=100.0))
        await store.createSession(record(B, lastSeen=50.0, nextSeq=2, messages=((1, b"b"),)))
        await store.createSession(record(C, lastSeen=89.0))
        assert await store.expireSessions(now=100.0, ttl=10.0) == [B, C]
        assert await store.listSessions() == [A]
        assert await store.expireSessions(now=110.0, ttl=10.0) == []
        # B is gone for good: a new session with its token starts empty.
        await store.createSession(record(B))
        assert await store.loadSession(B) == record(B)

    @ensureDeferred
    async def test_delete(self, store: ISessionStore) -> None:
        """Deleting a session forgets it and its messages."""
        await store.createSession(record(nextSeq=3, messages=((1, b"a"), (2, b"b"))))
        assert await store.deleteSession(A) is True
        assert await store.loadSession(A) is None
        assert await store.deleteSession(A) is False
        await store.createSession(record())
        assert await store.loadSession(A) == record()

    @ensureDeferred
    async def test_operationsApplyInCallOrder(self, store: ISessionStore) -> None:
        """Operations called back to back, without waiting, apply in the
        order they were called: a load sees the appends before it."""
        calls: list[Deferred[Any]] = [store.createSession(record())]
        calls += [store.appendMessages(A, [(n, b"%d" % n)]) for n in range(1, 5)]
        calls.append(store.confirmMessages(A, 2))
        calls.append(store.loadSession(A))
        results = await gatherResults(calls)
        assert results[-1] == record(nextSeq=5, confirmedUpTo=2, messages=((3, b"3"), (4, b"4")))

    @ensureDeferred
    async def test_flushFiresAfterWhatCameBefore(self, store: ISessionStore) -> None:
        """``flush`` fires after every operation called before it."""
        fired: list[str] = []
        store.createSession(record()).addCallback(lambda _: fired.append("create"))
        store.appendMessages(A, [(1, b"a")]).addCallback(lambda _: fired.append("append"))
        await store.flush()
        assert fired == ["create", "append"]

    @ensureDeferred
    async def test_closed(self, store: ISessionStore) -> None:
        """After close, every operation fails with `StoreError`; closing
        again is harmless."""
        await store.createSession(record())
        await store.close()
        await store.close()
        for call in (
            store.open,
            store.flush,
            store.listSessions,
            lambda: store.loadSession(A),
        ):
            with pytest.raises(StoreError) as caught:
                await call()
            assert str(caught.value) == "the session store is closed"

    @ensureDeferred
    async def test_statisticsCountWhatIsHeld(self, store: ISessionStore) -> None:
        """`statistics` counts the sessions and the messages not yet
        confirmed, across sessions, through every operation that changes
        them; a SQLite store times each commit, the memory store none."""

        def counts() -> tuple[int | None, int | None]:
            figures = store.statistics()
            return figures.sessions, figures.outboxMessages

        assert counts() == (0, 0)
        await store.createSession(record(A, nextSeq=3, messages=((1, b"a"), (2, b"b"))))
        await store.createSession(record(B, lastSeen=5.0))
        assert counts() == (2, 2)
        await store.appendMessages(B, [(1, b"c"), (2, b"d"), (3, b"e")])
        assert counts() == (2, 5)
        await store.confirmMessages(A, 1)
        await store.confirmMessages(A, 1)
        assert counts() == (2, 4)
        refused = store.appendMessages(A, [(9, b"f")])
        with pytest.raises(StoreError):
            await refused
        assert counts() == (2, 4)
        assert await store.deleteSession(B) is True
        assert counts() == (1, 1)
        await store.createSession(record(C, lastSeen=1.0, nextSeq=2, messages=((1, b"g"),)))
        assert await store.expireSessions(10.0, 5.0) == [A, C]
        assert counts() == (0, 0)
        figures = store.statistics()
        assert figures.commitBuckets[-1] == figures.commits
        assert list(figures.commitBuckets) == sorted(figures.commitBuckets)
        if isinstance(store, MemorySessionStore):
            assert (figures.commits, figures.commitSeconds) == (0, 0.0)
            assert set(figures.commitBuckets) == {0}
        else:
            # SQLite commits on opening too; Redis applies one batch per
            # operation awaited here.
            assert figures.commits >= (9 if isinstance(store, RedisSessionStore) else 10)
            assert figures.commitSeconds > 0


# -- SQLite: driven without the reactor -----------------------------------------------------------


@implementer(IReactorFromThreads)
class ThreadCalls:
    """
    A reactor stand-in for a store driven by the test alone: what the
    store's thread hands over with ``callFromThread`` waits in a queue
    until `result` or `failure` runs it in the test's thread.
    """

    def __init__(self) -> None:
        self.calls: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]] = (
            queue.SimpleQueue()
        )
        self.threads: set[int] = set()

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``callable(*args)``; note the calling thread."""
        self.threads.add(threading.get_ident())
        self.calls.put((callable, args))

    def pump(self, d: Deferred[Any], timeout: float = 10.0) -> None:
        """Run the queued calls until ``d`` fires (at most ``timeout``
        seconds)."""
        deadline = time.monotonic() + timeout
        while not d.called:
            function, args = self.calls.get(timeout=max(0.01, deadline - time.monotonic()))
            function(*args)

    def result(self, d: Deferred[T]) -> T:
        """``d``'s result, once it fired."""
        self.pump(d)
        result: T = successResultOf(d)
        return result

    def failure(self, d: Deferred[Any]) -> BaseException:
        """``d``'s error, once it failed."""
        self.pump(d)
        error = failureResultOf(d).value  # type: ignore[no-untyped-call]
        assert isinstance(error, BaseException)
        return error


@dataclass
class Traced:
    """Every statement the SQLite connections ran, with its thread."""

    statements: list[tuple[int, str]] = field(default_factory=list)

    def commits(self) -> int:
        """How many transactions were committed."""
        return sum(1 for _, sql in self.statements if sql == "COMMIT")


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Traced:
    """Trace every statement of the SQLite connections made in the test."""
    seen = Traced()
    connect = sqlite3.connect

    def tracing(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection: sqlite3.Connection = connect(*args, **kwargs)
        connection.set_trace_callback(
            lambda sql: seen.statements.append((threading.get_ident(), sql))
        )
        return connection

    monkeypatch.setattr(sqlite3, "connect", tracing)
    return seen


@pytest.fixture
def calls() -> ThreadCalls:
    """A reactor stand-in (`ThreadCalls`)."""
    return ThreadCalls()


@pytest.fixture
def opened(tmp_path: Path, calls: ThreadCalls) -> Iterator[Callable[..., SqliteSessionStore]]:
    """Make SQLite stores on ``tmp_path / "s.db"`` driven by ``calls``;
    those still open are closed after the test."""
    made: list[SqliteSessionStore] = []

    def make(**kwargs: Any) -> SqliteSessionStore:
        kwargs.setdefault("reactor", calls)
        s = SqliteSessionStore(kwargs.pop("path", tmp_path / "s.db"), **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        calls.result(s.close())


def hold(s: SqliteSessionStore) -> threading.Event:
    """Keep ``s``'s thread busy until the event returned is set: what is
    called meanwhile waits, then goes in one transaction."""
    release = threading.Event()
    s._submit(lambda connection: release.wait(10))
    return release


def test_groupCommit(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                     traced: Traced) -> None:
    """A thousand appends made while the writer is busy are committed
    together: one transaction, one commit."""
    s = opened()
    calls.result(s.createSession(record()))
    before = (s.commits, traced.commits())
    release = hold(s)
    appends = [s.appendMessages(A, [(n, b"m")]) for n in range(1, 1001)]
    release.set()
    calls.result(gatherResults(appends))
    # One transaction for the thousand appends, after the hold's own (or
    # with it, if they were all called before the thread took the hold).
    commits = s.commits - before[0]
    assert commits in (1, 2)
    assert traced.commits() - before[1] == commits
    loaded = calls.result(s.loadSession(A))
    assert loaded is not None and len(loaded.messages) == 1000


def test_batchesAreBounded(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls, traced: Traced
) -> None:
    """A transaction takes ``maxBatch`` operations at most."""
    s = opened(maxBatch=100)
    calls.result(s.createSession(record()))
    before = s.commits
    release = hold(s)
    appends = [s.appendMessages(A, [(n, b"m")]) for n in range(1, 251)]
    release.set()
    calls.result(gatherResults(appends))
    # 251 operations (the hold's and the appends): 3 transactions, or 4 if
    # the hold's went alone.
    assert s.commits - before in (3, 4)
    sizes = [0]
    for _, sql in traced.statements:
        if sql.startswith("INSERT INTO alive_messages"):
            sizes[-1] += 1
        elif sql == "COMMIT":
            sizes.append(0)
    assert max(sizes) == 100 and sum(sizes) == 250


def test_pendingOperationsBounded(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls
) -> None:
    """While ``maxPending`` operations wait for the thread, appending and
    creating fail at once with `QueueFull`; confirmations and reads are
    still taken; once the thread catches up, appending works again."""
    s = opened(maxPending=5)
    calls.result(s.createSession(record()))
    release = hold(s)
    appends = [s.appendMessages(A, [(n, b"m")]) for n in range(1, 5)]
    assert s.pending == 5
    for refused in (s.appendMessages(A, [(5, b"m")]), s.createSession(record(B))):
        error = failureResultOf(refused, QueueFull).value  # type: ignore[no-untyped-call]
        assert str(error) == (
            "session store busy: 5 operations wait for its thread (maxPending=5)"
        )
    confirm = s.confirmMessages(A, 2)
    load = s.loadSession(A)
    release.set()
    calls.result(gatherResults([*appends, confirm]))
    assert calls.result(load) == record(nextSeq=5, confirmedUpTo=2, messages=((3, b"m"), (4, b"m")))
    assert s.pending == 0
    calls.result(s.appendMessages(A, [(5, b"m")]))


def test_refusalFailsAlone(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls) -> None:
    """In a transaction shared with others, a refused operation fails alone;
    the others are committed."""
    s = opened()
    calls.result(s.createSession(record()))
    release = hold(s)
    first = s.appendMessages(A, [(1, b"a")])
    wrong = s.appendMessages(A, [(9, b"b")])
    second = s.appendMessages(A, [(2, b"c")])
    release.set()
    assert isinstance(calls.failure(wrong), StoreError)
    calls.result(gatherResults([first, second]))
    assert calls.result(s.loadSession(A)) == record(nextSeq=3, messages=((1, b"a"), (2, b"c")))


def test_failedTransactionFailsEveryOperation(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls
) -> None:
    """An error that is not a refusal undoes the whole transaction: every
    operation in it fails with `StoreError`, nothing of it is stored (nor
    counted, nor timed as a commit), and the store goes on."""
    s = opened()
    calls.result(s.createSession(record()))
    release = hold(s)
    append = s.appendMessages(A, [(1, b"a")])
    create = s.createSession(record(B))

    def broken(connection: sqlite3.Connection) -> None:
        raise RuntimeError("boom")

    bad = s._submit(broken)
    release.set()
    for d in (append, create, bad):
        error = calls.failure(d)
        assert isinstance(error, StoreError)
        assert str(error).endswith("the transaction failed: RuntimeError('boom')")
    figures = s.statistics()
    assert (figures.sessions, figures.outboxMessages) == (1, 0)
    assert figures.commits == s.commits
    assert calls.result(s.loadSession(A)) == record()
    calls.result(s.appendMessages(A, [(1, b"a")]))
    figures = s.statistics()
    assert (figures.sessions, figures.outboxMessages) == (1, 1)


class SteppedClock:
    """A clock the test moves by hand (`SqliteSessionStore._now`); both
    threads read it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_commitTimes(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls) -> None:
    """A commit's time runs from the moment the first operation of its
    group was called to the end of its commit, as the writer thread sees
    it: a group called while the writer was busy for 0.25 s took 0.25 s,
    the busy one 1.25 s (beyond the last bound). The figures reach the
    store with the results."""
    clock = SteppedClock()
    s = opened()
    s._now = clock
    figures = s.statistics()
    assert (figures.sessions, figures.outboxMessages, figures.commits) == (None, None, 0)
    calls.result(s.createSession(record()))
    assert s.statistics().commits == 1
    started, release = threading.Event(), threading.Event()

    def busy(connection: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    held = s._submit(busy)
    assert started.wait(10)
    clock.now = 1.0
    appends = [s.appendMessages(A, [(n, b"m")]) for n in range(1, 4)]
    clock.now = 1.25
    release.set()
    calls.result(gatherResults([held, *appends]))
    figures = s.statistics()
    assert (figures.sessions, figures.outboxMessages) == (1, 3)
    assert (figures.commits, figures.commitSeconds) == (3, 1.5)
    bounds = dict(zip(COMMIT_BUCKETS, figures.commitBuckets, strict=False))
    assert bounds[0.00005] == 1  # the create: no time passed
    assert bounds[0.1] == 1 and bounds[0.25] == 2  # the appends: 0.25 s
    assert bounds[1.0] == 2 and figures.commitBuckets[-1] == 3  # the busy one


def test_backupWhileOpen(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls, tmp_path: Path
) -> None:
    """``backup`` copies an open store between two transactions: the copy
    holds what the operations called before it committed, nothing called
    after; it opens as a store of its own; the backup is no commit, and the
    store goes on."""
    s = opened()
    calls.result(s.createSession(record(A, nextSeq=2, messages=((1, b"a"),))))
    started, release = threading.Event(), threading.Event()

    def busy(connection: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    held = s._submit(busy)
    assert started.wait(10)
    before = s.appendMessages(A, [(2, b"b")])
    copied = s.backup(tmp_path / "copy.db")
    after = s.appendMessages(A, [(3, b"c")])
    release.set()
    calls.result(gatherResults([held, before, copied, after]))
    # The busy transaction, the append before, the backup on its own (no
    # commit), then the append after: four commits with the create's.
    assert s.statistics().commits == s.commits == 4
    copy = opened(path=tmp_path / "copy.db")
    assert calls.result(copy.loadSession(A)) == record(
        A, nextSeq=3, messages=((1, b"a"), (2, b"b"))
    )
    assert calls.result(s.loadSession(A)) == record(
        A, nextSeq=4, messages=((1, b"a"), (2, b"b"), (3, b"c"))
    )


def test_backupRefused(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls, tmp_path: Path
) -> None:
    """A backup onto the store's own file, or into a file that cannot be
    written, fails with `StoreError` saying so; the store goes on."""
    s = opened()
    calls.result(s.createSession(record()))
    error = calls.failure(s.backup(tmp_path / "s.db"))
    assert isinstance(error, StoreError)
    assert str(error) == f"cannot back up session store {tmp_path / 's.db'} onto itself"
    nowhere = tmp_path / "missing" / "copy.db"
    error = calls.failure(s.backup(nowhere))
    assert isinstance(error, StoreError)
    assert str(error) == (
        f"cannot back up session store {tmp_path / 's.db'} to {nowhere}: "
        "unable to open database file"
    )
    calls.result(s.appendMessages(A, [(1, b"a")]))


def test_statisticsCountedWhenOpened(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls
) -> None:
    """A store opened on a file counts what the file holds: the sessions
    and messages a previous store left."""
    first = opened()
    calls.result(first.createSession(record(A, nextSeq=3, messages=((1, b"a"), (2, b"b")))))
    calls.result(first.createSession(record(B, nextSeq=2, messages=((1, b"c"),))))
    calls.result(first.close())
    second = opened()
    assert second.statistics().sessions is None
    calls.result(second.open())
    figures = second.statistics()
    assert (figures.sessions, figures.outboxMessages, figures.commits) == (2, 3, 1)


@pytest.mark.parametrize(("synchronous", "level"), [("NORMAL", 1), ("FULL", 2), ("full", 2)])
def test_walAndSynchronous(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                           synchronous: str, level: int) -> None:
    """The file is in WAL mode, locked exclusively, with the ``synchronous``
    level asked for (read back from the store's own connection)."""
    s = opened(synchronous=synchronous)
    pragmas = calls.result(
        s._submit(
            lambda c: [
                c.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "locking_mode")
            ]
        )
    )
    assert pragmas == ["wal", level, "exclusive"]
    assert s.synchronous == synchronous.upper()


def test_badSettingsRefused(tmp_path: Path) -> None:
    """Only NORMAL and FULL are offered; batches and the queue hold one
    operation at least."""
    with pytest.raises(ValueError) as caught:
        SqliteSessionStore(tmp_path / "s.db", "OFF")
    assert str(caught.value) == "synchronous must be NORMAL or FULL, got 'OFF'"
    with pytest.raises(ValueError) as caught:
        SqliteSessionStore(tmp_path / "s.db", maxPending=0)
    assert str(caught.value) == "maxBatch and maxPending must be at least 1, got 4096, 0"


def test_schemaMarked(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                      tmp_path: Path) -> None:
    """A new file gets the store's application id and schema version."""
    s = opened()
    calls.result(s.open())
    calls.result(s.close())
    with sqlite3.connect(tmp_path / "s.db") as raw:
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


def test_reopenReadsEverythingBack(opened: Callable[..., SqliteSessionStore],
                                   calls: ThreadCalls) -> None:
    """A second store on the same file, once the first is closed, reads
    back every session, message and position."""
    first = opened()
    calls.result(first.createSession(record(A, epoch=2, lastSeen=5.0)))
    calls.result(first.createSession(record(B, lastSeen=1.0)))
    calls.result(first.appendMessages(A, [(1, b"a"), (2, b"b"), (3, b"c")]))
    calls.result(first.confirmMessages(A, 1))
    calls.result(first.recordProcessed(B, 42, [(40, "no")]))
    calls.result(first.close())
    second = opened()
    assert calls.result(second.listSessions()) == [B, A]
    assert calls.result(second.loadSession(A)) == record(
        A, epoch=2, nextSeq=4, confirmedUpTo=1, lastSeen=5.0, messages=((2, b"b"), (3, b"c"))
    )
    assert calls.result(second.loadSession(B)) == record(
        B, processedUpTo=42, lastSeen=1.0, rejections=((40, "no"),)
    )


def test_closeFlushesAndStopsTheThread(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls
) -> None:
    """``close`` commits what was called before it, then the thread ends;
    the appends' Deferreds fire before close's."""
    s = opened()
    calls.result(s.createSession(record()))
    appends = [s.appendMessages(A, [(n, b"m")]) for n in range(1, 101)]
    closed = s.close()
    again = s.close()
    fired: list[str] = []
    gatherResults(appends).addCallback(lambda _: fired.append("appends"))
    closed.addCallback(lambda _: fired.append("closed"))
    calls.result(again)
    assert fired == ["appends", "closed"]
    assert s._thread is not None
    s._thread.join(10)
    assert not s._thread.is_alive()
    reopened = opened()
    loaded = calls.result(reopened.loadSession(A))
    assert loaded is not None and len(loaded.messages) == 100


def test_closeBeforeUseStartsNoThread(tmp_path: Path) -> None:
    """A store closed before any operation never started a thread nor
    touched the file."""
    s = SqliteSessionStore(tmp_path / "s.db", reactor=ThreadCalls())
    assert successResultOf(s.close()) is None
    assert s._thread is None and not (tmp_path / "s.db").exists()


def test_sqliteRunsOnlyInTheStoresThread(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls, traced: Traced
) -> None:
    """Every SQLite statement runs in the store's one thread, never in the
    caller's (the reactor's) thread; results come back through
    ``callFromThread`` from that thread alone."""
    s = opened()
    calls.result(s.createSession(record()))
    calls.result(gatherResults([s.appendMessages(A, [(n, b"m")]) for n in range(1, 51)]))
    calls.result(s.loadSession(A))
    calls.result(s.close())
    threads = {ident for ident, _ in traced.statements}
    assert s._thread is not None
    assert threads == {s._thread.ident} == calls.threads
    assert threading.get_ident() not in threads
    assert len(traced.statements) > 50


@pytest.mark.parametrize("garbage", [b"not a database at all" * 100, b"\x00" * 4096])
def test_corruptFileRefused(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                            tmp_path: Path, garbage: bytes) -> None:
    """A file that is not a SQLite database is refused with `CorruptStore`,
    and left as it was; so is every later operation."""
    path = tmp_path / "s.db"
    path.write_bytes(garbage)
    s = opened()
    error = calls.failure(s.open())
    assert type(error) is CorruptStore
    assert str(error) == (
        f"{path} is not a twisted_alive session store: it cannot be read as a SQLite "
        "database (file is not a database); it was left as it is"
    )
    assert str(calls.failure(s.listSessions())) == str(error)
    assert path.read_bytes() == garbage


def test_foreignDatabaseRefused(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                                tmp_path: Path) -> None:
    """A SQLite database of another schema is refused with `CorruptStore`,
    and left as it was."""
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE users (name TEXT)")
        raw.execute("CREATE TABLE orders (id INTEGER)")
    raw.close()
    error = calls.failure(opened().open())
    assert type(error) is CorruptStore
    assert str(error) == (
        f"{path} is not a twisted_alive session store: its application_id is 0x0, "
        "not 0x54416c76, and it holds the tables orders, users; it was left as it is"
    )
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 2
    raw.close()


def test_otherSchemaVersionRefused(opened: Callable[..., SqliteSessionStore],
                                   calls: ThreadCalls, tmp_path: Path) -> None:
    """A store of another schema version is refused, saying both versions."""
    s = opened()
    calls.result(s.open())
    calls.result(s.close())
    path = tmp_path / "s.db"
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()
    error = calls.failure(opened().open())
    assert type(error) is StoreError
    assert str(error) == (
        f"{path} is a twisted_alive session store of schema version 99; "
        "this twisted_alive reads version 1"
    )


def test_damagedStoreRefused(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                             tmp_path: Path) -> None:
    """A store whose pages were damaged is refused with `CorruptStore` at
    open, not found out later."""
    s = opened()
    calls.result(s.createSession(record()))
    calls.result(s.appendMessages(A, [(n, b"payload %d" % n * 50) for n in range(1, 5)]))
    calls.result(s.close())
    path = tmp_path / "s.db"
    data = bytearray(path.read_bytes())
    assert len(data) >= 3 * 4096
    data[4096 + 8 : 4096 * 3] = b"\xff" * (4096 * 2 - 8)
    path.write_bytes(bytes(data))
    error = calls.failure(opened().open())
    assert type(error) is CorruptStore
    assert str(error).startswith(f"{path} ")
    assert str(error).endswith("; it was left as it is")


def test_unopenablePathRefused(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                               tmp_path: Path) -> None:
    """A file that cannot be opened (its directory is missing) gives a
    `StoreError` naming it."""
    path = tmp_path / "missing" / "s.db"
    error = calls.failure(opened(path=path).open())
    assert type(error) is StoreError
    assert str(error) == f"cannot open session store {path}: unable to open database file"


def test_oldSqliteRefused(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite library older than 3.35 is refused at open, saying both
    versions."""
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.31.1")
    error = calls.failure(opened().open())
    assert type(error) is StoreError
    assert str(error) == (
        f"session store {tmp_path / 's.db'} needs SQLite 3.35.0 or later; "
        "this Python has SQLite 3.31.1"
    )


def test_fileInUseRefused(opened: Callable[..., SqliteSessionStore], calls: ThreadCalls,
                          tmp_path: Path) -> None:
    """While a store has its file open, a second store on it is refused at
    once: one process owns a store."""
    calls.result(opened().open())
    error = calls.failure(opened().open())
    assert type(error) is StoreError
    assert str(error) == (
        f"session store {tmp_path / 's.db'} is in use by another process or store "
        "(database is locked)"
    )


@implementer(IReactorFromThreads)
class CoreCalls(ThreadCalls):
    """`ThreadCalls` that also records system event triggers."""

    def __init__(self) -> None:
        super().__init__()
        self.triggers: dict[int, tuple[str, str, Callable[[], Any]]] = {}

    def addSystemEventTrigger(self, phase: str, event: str, f: Callable[[], Any]) -> int:
        """Record a trigger."""
        key = len(self.triggers) + 1
        self.triggers[key] = (phase, event, f)
        return key

    def removeSystemEventTrigger(self, key: int) -> None:
        """Forget a trigger."""
        del self.triggers[key]


def test_closedBeforeShutdown(tmp_path: Path) -> None:
    """A store in use closes itself before its reactor shuts down (so what
    was called is committed); once closed, it no longer asks to."""
    from twisted.internet.interfaces import IReactorCore
    from zope.interface import alsoProvides

    reactor = CoreCalls()
    alsoProvides(reactor, IReactorCore)
    s = SqliteSessionStore(tmp_path / "s.db", reactor=reactor)
    reactor.result(s.open())
    ((phase, event, f),) = reactor.triggers.values()
    assert (phase, event, f) == ("before", "shutdown", s.close)
    reactor.result(s.close())
    assert reactor.triggers == {}


# -- descriptions ---------------------------------------------------------------------------------


def test_describeMemory() -> None:
    """``memory`` is a `MemorySessionStore`."""
    assert isinstance(sessionStoreFromString(getReactor(), "memory"), MemorySessionStore)


@pytest.mark.parametrize(
    ("description", "path", "synchronous"),
    [
        ("sqlite:/var/lib/alive/s.db", "/var/lib/alive/s.db", "NORMAL"),
        ("sqlite:/tmp/s.db:synchronous=FULL", "/tmp/s.db", "FULL"),
        ("sqlite:/tmp/s.db:synchronous=normal", "/tmp/s.db", "NORMAL"),
        ("sqlite:/tmp/a\\:b.db", "/tmp/a:b.db", "NORMAL"),
        ("  sqlite:/tmp/s.db  ", "/tmp/s.db", "NORMAL"),
        ("sqlite:/tmp/a\\\\b.db", "/tmp/a\\b.db", "NORMAL"),
        ("sqlite:/tmp/a\\", "/tmp/a\\", "NORMAL"),
    ],
)
def test_describeSqlite(description: str, path: str, synchronous: str) -> None:
    """``sqlite:PATH[:synchronous=...]`` is a `SqliteSessionStore` on that
    file; nothing is opened yet."""
    s = sessionStoreFromString(getReactor(), description)
    assert isinstance(s, SqliteSessionStore)
    assert (str(s.path), s.synchronous, s._thread) == (path, synchronous, None)


@ensureDeferred
async def test_globalReactorByDefault(tmp_path: Path) -> None:
    """Without a reactor given, the store reports to the global one."""
    s = SqliteSessionStore(tmp_path / "s.db")
    await s.createSession(record())
    assert await s.listSessions() == [A]
    await s.close()


def test_reprs(tmp_path: Path) -> None:
    """A store's repr says what it is: its file, or its session count."""
    assert repr(MemorySessionStore()) == "<MemorySessionStore: 0 sessions>"
    assert repr(SqliteSessionStore(tmp_path / "s.db", "full")) == (
        f"<SqliteSessionStore {str(tmp_path / 's.db')!r} synchronous=FULL>"
    )


def test_describeSqliteRelative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path is taken from the current directory when the
    description is read."""
    monkeypatch.chdir(tmp_path)
    s = sessionStoreFromString(getReactor(), "sqlite:state/s.db")
    assert isinstance(s, SqliteSessionStore)
    assert s.path == tmp_path / "state" / "s.db"


@pytest.mark.parametrize(
    ("description", "text"),
    [
        (
            "",
            "empty session store description: use memory, "
            "sqlite:PATH[:synchronous=NORMAL|FULL] or redis://HOST:PORT/DB",
        ),
        (
            "postgres://db/x",
            "unknown session store 'postgres://db/x': use memory, "
            "sqlite:PATH[:synchronous=NORMAL|FULL] or redis://HOST:PORT/DB",
        ),
        ("memory:big", "the memory session store takes no options, got 'memory:big'"),
        ("sqlite:", "'sqlite:' names no file: use sqlite:PATH[:synchronous=NORMAL|FULL]"),
        ("sqlite::synchronous=FULL",
         "'sqlite::synchronous=FULL' names no file: use sqlite:PATH[:synchronous=NORMAL|FULL]"),
        ("sqlite:/s.db:FULL", "sqlite option 'FULL' in 'sqlite:/s.db:FULL' is not NAME=VALUE"),
        (
            "sqlite:/s.db:mode=wal",
            "unknown sqlite option 'mode' in 'sqlite:/s.db:mode=wal': the option is "
            "synchronous=NORMAL|FULL",
        ),
        (
            "sqlite:/s.db:synchronous=OFF",
            "synchronous must be NORMAL or FULL, got 'OFF' in 'sqlite:/s.db:synchronous=OFF'",
        ),
    ],
)
def test_describeBadly(description: str, text: str) -> None:
    """A description that names no store says why, exactly."""
    with pytest.raises(ValueError) as caught:
        sessionStoreFromString(getReactor(), description)
    assert str(caught.value) == text


@pytest.mark.parametrize(
    ("description", "host", "port", "db", "prefix"),
    [
        ("redis://127.0.0.1:6380/2", "127.0.0.1", 6380, 2, "alive:"),
        ("redis://cache.example", "cache.example", 6379, 0, "alive:"),
        (" redis://h:7000/ ", "h", 7000, 0, "alive:"),
        ("redis://[::1]:7000/3?prefix=app:", "::1", 7000, 3, "app:"),
    ],
)
def test_describeRedis(description: str, host: str, port: int, db: int, prefix: str) -> None:
    """A Redis description gives a `RedisSessionStore` on that server and
    database (6379 and 0 when left out), with the prefix given; nothing is
    connected yet."""
    s = sessionStoreFromString(getReactor(), description)
    assert isinstance(s, RedisSessionStore)
    assert (s.host, s.port, s.db, s.prefix) == (host, port, db, prefix)
    assert s.limits == StoreLimits()
    assert repr(s) == f"<RedisSessionStore redis://{host}:{port}/{db} {prefix!r}>"


@pytest.mark.parametrize(
    ("description", "text"),
    [
        ("redis:h", "'redis:h' is not a Redis description: use redis://HOST:PORT/DB[?prefix=PREFIX]"),
        ("redis:///0", "'redis:///0' names no host: use redis://HOST:PORT/DB[?prefix=PREFIX]"),
        (
            "redis://h:99999/0",
            "invalid port in 'redis://h:99999/0': use redis://HOST:PORT/DB[?prefix=PREFIX], "
            "PORT from 1 to 65535",
        ),
        (
            "redis://h:0/0",
            "invalid port in 'redis://h:0/0': use redis://HOST:PORT/DB[?prefix=PREFIX], "
            "PORT from 1 to 65535",
        ),
        (
            "redis://h:x/0",
            "invalid port in 'redis://h:x/0': use redis://HOST:PORT/DB[?prefix=PREFIX], "
            "PORT from 1 to 65535",
        ),
        ("redis://h/a", "invalid database 'a' in 'redis://h/a': DB is a number, 0 or more"),
        ("redis://h/-1", "invalid database '-1' in 'redis://h/-1': DB is a number, 0 or more"),
        (
            "redis://h/0?db=1",
            "unknown Redis option 'db' in 'redis://h/0?db=1': the option is prefix=PREFIX",
        ),
        (
            "redis://u:p@h/0",
            "'redis://u:p@h/0': a user or password in the description is not supported",
        ),
        ("redis://h/0#x", "'redis://h/0#x': a Redis description has no #fragment"),
    ],
)
def test_describeRedisBadly(description: str, text: str) -> None:
    """A Redis description that cannot be read says why, exactly."""
    with pytest.raises(ValueError) as caught:
        sessionStoreFromString(getReactor(), description)
    assert str(caught.value) == text


def test_redisNeedsItsClient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without txredisapi (the ``redis`` extra), a Redis store is refused
    with one exact error."""
    monkeypatch.setitem(sys.modules, "txredisapi", None)
    with pytest.raises(StoreError) as caught:
        sessionStoreFromString(getReactor(), "redis://h/0")
    assert str(caught.value) == (
        "the Redis session store needs txredisapi: pip install 'twisted_alive[redis]' "
        "(or txredisapi==1.6.0)"
    )


# -- every store against a model ------------------------------------------------------------------


@dataclass
class Modelled:
    """What a store should hold of one session."""

    epoch: int
    lastSeen: float
    nextSeq: int = 1
    confirmedUpTo: int = 0
    processedUpTo: int = 0
    messages: list[tuple[int, bytes]] = field(default_factory=list)

    def record(self, token: bytes) -> StoredSession:
        """The record a store should give back."""
        return StoredSession(
            token,
            self.epoch,
            self.nextSeq,
            self.confirmedUpTo,
            self.processedUpTo,
            self.lastSeen,
            tuple(self.messages),
        )


tokens = st.sampled_from([A, B, C])
times = st.integers(0, 200).map(float)


class StoreMachine(RuleBasedStateMachine):
    """
    Random operations on a store, checked against a plain model after each
    one; `reopen` closes the store and opens another on the same file (a
    durable store must give back everything; the memory store stays as it
    is).
    """

    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="alive-store-"))
        self.calls = ThreadCalls()
        self.model: dict[bytes, Modelled] = {}
        self.store = self.make()

    def make(self) -> ISessionStore:
        """A store of this machine's kind, with `LIMITS`."""
        if self.kind == "memory":
            return MemorySessionStore(LIMITS)
        return SqliteSessionStore(self.directory / "s.db", limits=LIMITS, reactor=self.calls)

    def teardown(self) -> None:
        """Close the store; remove its file."""
        self.calls.result(self.store.close())
        shutil.rmtree(self.directory)

    def expectError(self, d: Deferred[Any], kind: type[BaseException]) -> None:
        """``d`` fails with ``kind``."""
        assert type(self.calls.failure(d)) is kind

    @rule(token=tokens, epoch=st.integers(0, 3), seen=times)
    def create(self, token: bytes, epoch: int, seen: float) -> None:
        """Create a session (refused if it exists)."""
        d = self.store.createSession(StoredSession(token, epoch, lastSeen=seen))
        if token in self.model:
            self.expectError(d, StoreError)
        else:
            self.calls.result(d)
            self.model[token] = Modelled(epoch, seen)

    @rule(
        token=tokens,
        payloads=st.lists(st.binary(max_size=30), max_size=3),
        skew=st.sampled_from([0, 0, 0, 0, 1, -1]),
    )
    def append(self, token: bytes, payloads: list[bytes], skew: int) -> None:
        """Append messages (refused beyond the limits, or out of order)."""
        known = self.model.get(token)
        first = (known.nextSeq if known else 1) + skew
        messages = [(first + n, payload) for n, payload in enumerate(payloads)]
        d = self.store.appendMessages(token, messages)
        if known is None or (skew and payloads):
            self.expectError(d, StoreError)
            return
        held = len(known.messages)
        heldBytes = sum(len(p) for _, p in known.messages)
        size = sum(map(len, payloads))
        if held + len(payloads) > LIMITS.maxMessages or (
            (held or len(payloads) > 1) and heldBytes + size > LIMITS.maxBytes
        ):
            self.expectError(d, QueueFull)
            return
        self.calls.result(d)
        known.messages += messages
        known.nextSeq += len(messages)

    @rule(token=tokens, back=st.integers(-1, 4))
    def confirm(self, token: bytes, back: int) -> None:
        """Confirm up to some position (refused beyond what was appended)."""
        known = self.model.get(token)
        upTo = max(0, (known.nextSeq if known else 1) - 1 - back)
        d = self.store.confirmMessages(token, upTo)
        if known is None or upTo >= known.nextSeq:
            self.expectError(d, StoreError)
            return
        self.calls.result(d)
        if upTo > known.confirmedUpTo:
            known.confirmedUpTo = upTo
            known.messages = [(seq, p) for seq, p in known.messages if seq > upTo]

    @rule(token=tokens, upTo=st.integers(0, 20))
    def process(self, token: bytes, upTo: int) -> None:
        """Record a processed position."""
        known = self.model.get(token)
        d = self.store.recordProcessed(token, upTo)
        if known is None:
            self.expectError(d, StoreError)
        else:
            self.calls.result(d)
            known.processedUpTo = max(known.processedUpTo, upTo)

    @rule(token=tokens, seen=times)
    def touch(self, token: bytes, seen: float) -> None:
        """A session was seen."""
        known = self.model.get(token)
        d = self.store.touchSession(token, seen)
        if known is None:
            self.expectError(d, StoreError)
        else:
            self.calls.result(d)
            known.lastSeen = max(known.lastSeen, seen)

    @rule(now=times, ttl=st.integers(0, 100).map(float))
    def expire(self, now: float, ttl: float) -> None:
        """Expire the sessions unseen for ``ttl``."""
        gone = sorted(
            (t for t, m in self.model.items() if m.lastSeen < now - ttl),
            key=lambda t: (self.model[t].lastSeen, t),
        )
        assert self.calls.result(self.store.expireSessions(now, ttl)) == gone
        for token in gone:
            del self.model[token]

    @rule(token=tokens)
    def delete(self, token: bytes) -> None:
        """Delete a session."""
        assert self.calls.result(self.store.deleteSession(token)) is (token in self.model)
        self.model.pop(token, None)

    @rule()
    def reopen(self) -> None:
        """Close the store and open it again (the memory store stays)."""
        if self.kind != "memory":
            self.calls.result(self.store.close())
            self.store = self.make()

    @invariant()
    def holdsTheModel(self) -> None:
        """The store holds exactly the model's sessions, in age order."""
        expected = sorted(self.model, key=lambda t: (self.model[t].lastSeen, t))
        assert self.calls.result(self.store.listSessions()) == expected
        figures = self.store.statistics()
        assert figures.sessions == len(self.model)
        assert figures.outboxMessages == sum(len(m.messages) for m in self.model.values())
        for token in (A, B, C):
            known = self.model.get(token)
            loaded = self.calls.result(self.store.loadSession(token))
            assert loaded == (known.record(token) if known else None)


class SqliteMachine(StoreMachine):
    """`StoreMachine` on a SQLite file."""

    kind = "sqlite"


class BlockingCalls(ThreadCalls):
    """Waits for a Deferred on the running reactor (pytest-twisted's
    ``blockon``), for a state machine whose store talks to a real server."""

    def result(self, d: Deferred[T]) -> T:
        """What ``d`` fires with."""
        return cast(T, pytest_twisted.blockon(d))

    def failure(self, d: Deferred[Any]) -> BaseException:
        """The exception ``d`` fails with."""
        try:
            pytest_twisted.blockon(d)
        except BaseException as error:
            return error
        raise AssertionError(f"{d!r} did not fail")


class RedisMachine(StoreMachine):
    """`StoreMachine` on the run's Redis server, with keys of its own;
    reopening makes another store object on the same keys."""

    kind = "redis"
    port = 0
    """The server's port (set by the `redisMachinePort` fixture)."""

    def __init__(self) -> None:
        self.prefix = redisPrefix()
        super().__init__()
        self.calls = BlockingCalls()

    def make(self) -> ISessionStore:
        """A Redis store on this machine's keys, with `LIMITS`."""
        return RedisSessionStore(
            getReactor(), LOOPBACK, self.port, limits=LIMITS, prefix=self.prefix
        )


@pytest.fixture
def redisMachinePort(redisServer: Any) -> None:
    """Point `RedisMachine` at the run's Redis server."""
    RedisMachine.port = redisServer.port


TestMemoryStoreMachine = StoreMachine.TestCase
TestMemoryStoreMachine.settings = settings(max_examples=50, stateful_step_count=30)
TestSqliteStoreMachine = SqliteMachine.TestCase
TestSqliteStoreMachine.settings = settings(max_examples=50, stateful_step_count=30)
TestRedisStoreMachine = pytest.mark.usefixtures("redisMachinePort")(RedisMachine.TestCase)
# Fewer examples: each step is a round trip to a real server.
TestRedisStoreMachine.settings = settings(max_examples=30, stateful_step_count=30)


# -- a writer killed ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("synchronous", ["NORMAL", "FULL"])
def test_killedWriterLosesNothingStored(
    tmp_path: Path, processes: Processes, synchronous: str
) -> None:
    """A process appending and confirming, SIGKILLed at random points and
    started again five times: every append and confirmation it saw fire
    is in the file, the messages stored are exactly those not confirmed,
    whole, and each restart carries on from where the file says."""
    path = tmp_path / "crash.db"
    calls = ThreadCalls()
    seed = chaosSeed()
    rng = random.Random(seed)
    stored = confirmed = 0
    nextSeq = 1
    for _ in range(5):
        process = processes.startPeer("store_appender.py", path, synchronous)
        assert process.stdout is not None
        assert process.stdout.readline().split() == ["READY", str(nextSeq)], seed
        for _ in range(rng.randint(1, 1500)):
            kind, number = process.stdout.readline().split()
            if kind == "STORED":
                assert int(number) > stored, seed
                stored = int(number)
            else:
                confirmed = max(confirmed, int(number))
        processes.kill(process)
        store = SqliteSessionStore(path, reactor=calls)
        record = calls.result(store.loadSession(APPENDER_TOKEN))
        calls.result(store.close())
        assert record is not None, seed
        assert record.nextSeq > stored and record.confirmedUpTo >= confirmed, seed
        assert record.messages == tuple(
            (n, b"message %d" % n) for n in range(record.confirmedUpTo + 1, record.nextSeq)
        ), seed
        nextSeq = record.nextSeq
    assert stored > 0


# -- an application's work in the store's transaction ----------------------------------------------


def appTable(s: SqliteSessionStore, calls: ThreadCalls) -> None:
    """Give ``s``'s file an application table ``done(n)``."""
    calls.result(
        s.runInTransaction(lambda c: c.execute("CREATE TABLE done (n INTEGER PRIMARY KEY)"))
    )


def inserting(n: int) -> Callable[[sqlite3.Cursor], object]:
    """An application's work: insert ``n`` into its table."""
    return lambda cursor: cursor.execute("INSERT INTO done VALUES (?)", (n,))


def doneRows(s: SqliteSessionStore, calls: ThreadCalls) -> list[int]:
    """The rows of the application table."""
    rows = calls.result(
        s.runInTransaction(lambda c: c.execute("SELECT n FROM done ORDER BY n").fetchall())
    )
    return [n for (n,) in rows]


def test_processInTransactionCommitsWorkAndPosition(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls, traced: Traced
) -> None:
    """The application's work and the processed position are committed
    together; several messages' work shares one commit (group commit)."""
    s = opened()
    calls.result(s.createSession(record()))
    appTable(s, calls)
    before = traced.commits()
    release = hold(s)
    ds = [s.processInTransaction(A, n, inserting(n)) for n in (1, 2, 3)]
    release.set()
    calls.result(gatherResults(ds))
    assert traced.commits() - before in (1, 2)
    assert doneRows(s, calls) == [1, 2, 3]
    loaded = calls.result(s.loadSession(A))
    assert loaded is not None and loaded.processedUpTo == 3


def test_processInTransactionRollsBackAFailure(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls
) -> None:
    """Work that raises is rolled back to its savepoint with its position;
    the Deferred fails with the application's own error; the work of the
    others in the same transaction is kept."""
    s = opened()
    calls.result(s.createSession(record()))
    appTable(s, calls)

    def failing(cursor: sqlite3.Cursor) -> None:
        cursor.execute("INSERT INTO done VALUES (2)")
        raise ValueError("cannot handle 2")

    release = hold(s)
    first = s.processInTransaction(A, 1, inserting(1))
    bad = s.processInTransaction(A, 2, failing)
    release.set()
    error = calls.failure(bad)
    assert type(error) is ValueError and str(error) == "cannot handle 2"
    calls.result(first)
    assert doneRows(s, calls) == [1]
    loaded = calls.result(s.loadSession(A))
    assert loaded is not None and loaded.processedUpTo == 1


def test_processInTransactionUnknownSession(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls
) -> None:
    """For a session the store does not hold, the work is rolled back and
    the Deferred fails with `StoreError`."""
    s = opened()
    appTable(s, calls)
    d = s.processInTransaction(B, 1, inserting(1))
    error = calls.failure(d)
    assert isinstance(error, StoreError) and str(error) == "the store holds no session bbbbbbbb"
    assert doneRows(s, calls) == []


def test_runInTransactionRollsBackAFailure(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls
) -> None:
    """An application's own work in the store's file: what fails is rolled
    back alone, with its own error; what returns is committed, its value
    given back."""
    s = opened()
    appTable(s, calls)

    def failing(cursor: sqlite3.Cursor) -> None:
        cursor.execute("INSERT INTO done VALUES (1)")
        raise KeyError("no")

    release = hold(s)
    bad = s.runInTransaction(failing)
    good = s.runInTransaction(lambda c: c.execute("INSERT INTO done VALUES (2)").rowcount)
    release.set()
    assert type(calls.failure(bad)) is KeyError
    assert calls.result(good) == 1
    assert doneRows(s, calls) == [2]


def test_workThatExitsDoesNotEndTheWriter(
    opened: Callable[..., SqliteSessionStore], calls: ThreadCalls
) -> None:
    """Work that raises ``SystemExit`` fails alone like any other error: the
    writer thread goes on."""
    s = opened()
    appTable(s, calls)

    def exiting(cursor: sqlite3.Cursor) -> None:
        raise SystemExit(3)

    assert type(calls.failure(s.runInTransaction(exiting))) is SystemExit
    calls.result(s.runInTransaction(inserting(1)))
    assert doneRows(s, calls) == [1]


def test_onlySqliteRunsWorkInItsTransaction() -> None:
    """The SQLite store offers `ITransactionalStore`; the memory store does
    not (its sessions do not outlive the process anyway)."""
    from twisted_alive import ITransactionalStore

    assert ITransactionalStore.implementedBy(SqliteSessionStore)
    assert not ITransactionalStore.implementedBy(MemorySessionStore)
