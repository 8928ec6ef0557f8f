"""
A client session kept in a session store (``AliveClientFactory(store=...)``),
over the simulated network of ``test_sessions`` (a L{Clock}, in-memory
wires): nothing is sent before the store committed it, `whenStored`,
confirmed messages dropped from the store, a client process that crashed
and started again on the same store (`recovered`), the continuity hooks
and the epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_sessions import EchoServer, Network, RecordingServerFactory
from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive import AliveClientFactory, HeartbeatProtocol, MemorySessionStore
from twisted_alive._interfaces import ISessionStore
from twisted_alive._reasons import Cause, Reason
from twisted_alive.core.frames import NO_SESSION
from twisted_alive.core.outcomes import DeliveryFailed, QueueFull, Receipt
from twisted_alive.core.stored import (
    CorruptStore,
    StoreClosed,
    StoredSession,
    StoreError,
    StoreLimits,
    StoreStatistics,
)


@implementer(ISessionStore)
class HeldStore:
    """
    A `MemorySessionStore` whose Deferreds fire when the test says
    (`release`): the operations apply at once, but the client hears that
    they are committed only then, in call order. A ``dead`` store (its
    process was killed) applies nothing and answers nothing.
    """

    def __init__(self, inner: MemorySessionStore | None = None) -> None:
        self.inner = inner if inner is not None else MemorySessionStore()
        self.limits = self.inner.limits
        self.holding = False
        self.dead = False
        self.held: list[tuple[Deferred[Any], Deferred[Any]]] = []
        self.refuseAppends = False
        self.appended: list[tuple[bytes, list[int]]] = []

    def _hold(self, d: Deferred[Any]) -> Deferred[Any]:
        if not (self.holding or self.held):
            return d
        out: Deferred[Any] = Deferred()
        self.held.append((d, out))
        return out

    def release(self, count: int | None = None, error: Exception | None = None) -> None:
        """Fire the ``count`` oldest held Deferreds (all by default); with
        ``error``, fail them with it instead (the store's transaction
        failed)."""
        count = len(self.held) if count is None else count
        for _ in range(count):
            d, out = self.held.pop(0)
            if error is None:
                d.chainDeferred(out)
            else:
                d.addErrback(lambda _: None)
                out.errback(error)

    def open(self) -> Deferred[None]:
        return self.inner.open()

    def statistics(self) -> StoreStatistics:
        return self.inner.statistics()

    def createSession(self, record: StoredSession) -> Deferred[None]:
        if self.dead:
            return Deferred()
        return self._hold(self.inner.createSession(record))

    def loadSession(self, token: bytes) -> Deferred[StoredSession | None]:
        return self._hold(self.inner.loadSession(token))

    def deleteSession(self, token: bytes) -> Deferred[bool]:
        if self.dead:
            return Deferred()
        return self._hold(self.inner.deleteSession(token))

    def listSessions(self) -> Deferred[list[bytes]]:
        return self._hold(self.inner.listSessions())

    def appendMessages(self, token: bytes, messages: Sequence[tuple[int, bytes]]) -> Deferred[None]:
        if self.dead:
            return Deferred()
        if self.refuseAppends:
            return fail(QueueFull("session store busy"))
        self.appended.append((token, [seq for seq, _ in messages]))
        return self._hold(self.inner.appendMessages(token, messages))

    def confirmMessages(self, token: bytes, upTo: int) -> Deferred[None]:
        if self.dead:
            return Deferred()
        return self._hold(self.inner.confirmMessages(token, upTo))

    def recordProcessed(
        self, token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        return self._hold(self.inner.recordProcessed(token, upTo, rejections))

    def touchSession(self, token: bytes, lastSeen: float) -> Deferred[None]:
        return self._hold(self.inner.touchSession(token, lastSeen))

    def expireSessions(self, now: float, ttl: float) -> Deferred[list[bytes]]:
        return self._hold(self.inner.expireSessions(now, ttl))

    def flush(self) -> Deferred[None]:
        if self.dead:
            return Deferred()
        return self._hold(self.inner.flush())

    def close(self) -> Deferred[None]:
        return self.inner.close()

    def records(self) -> list[StoredSession]:
        """Every record the store holds now."""
        inner = self.inner
        out = []
        for token in result(inner.listSessions()):
            record = result(inner.loadSession(token))
            assert record is not None
            out.append(record)
        return out


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has fired."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


class Client(AliveClientFactory):
    """Records the continuity hooks."""

    protocol = HeartbeatProtocol

    def __init__(self, store: ISessionStore | None = None) -> None:
        super().__init__(store)
        self.hooks: list[tuple[Any, ...]] = []

    def sessionResumed(self) -> None:
        self.hooks.append(("resumed",))

    def sessionReset(self, reason: str, maybeProcessed: int) -> None:
        self.hooks.append(("reset", maybeProcessed))


def start(
    store: ISessionStore, server: RecordingServerFactory | None = None, clock: Clock | None = None
) -> tuple[Network, Client, list[tuple[bytes, Deferred[Receipt]]]]:
    """A client on ``store``, its session loaded, on a network to ``server``
    (a new one by default); not connected yet."""
    client = Client(store)
    network = Network(
        client,
        server if server is not None else RecordingServerFactory(reply=False),
        clock if clock is not None else Clock(),
    )
    return network, client, result(client.recovered())


def test_noDataBeforeStored() -> None:
    """A message is not written to the connection before its append to the
    store fired; then it goes out and its receipt fires with the ACK."""
    store = HeldStore()
    network, client, recovered = start(store)
    assert recovered == []
    network.connect()
    network.flush()
    store.holding = True
    d = client.sendMessage(b"one")
    network.advance(1.0)
    assert cast(Any, network.serverFactory).received == [] and not d.called
    store.holding = False
    store.release()
    network.run(lambda: d.called)
    assert cast(Any, network.serverFactory).received == [b"one"]
    assert result(d).seq == 1


def test_protocolSendGoesThroughStore() -> None:
    """The protocol's own `sendMessage` and `sendMessages` store first too."""
    store = HeldStore()
    network, client, _ = start(store)
    network.connect()
    network.flush()
    proto = cast(Any, network.current).client
    store.holding = True
    d1 = proto.sendMessage(b"a")
    d2 = proto.sendMessages([b"b", b"c"])
    network.advance(1.0)
    assert cast(Any, network.serverFactory).received == []
    assert store.appended[-2:] == [(proto.session.token, [1]), (proto.session.token, [2, 3])]
    store.holding = False
    store.release()
    network.run(lambda: d1.called and d2.called)
    assert cast(Any, network.serverFactory).received == [b"a", b"b", b"c"]
    assert result(d2).seq == 3


def test_newSessionStoredUnderItsTokenFirst() -> None:
    """Messages submitted before the first connection are stored under the
    all-zero token; once the server assigns the session its token, the
    record is written again under it, and nothing is sent until that
    write fired."""
    store = HeldStore()
    network, client, _ = start(store)
    d = client.sendMessage(b"early")
    assert store.appended == [(NO_SESSION, [1])]
    store.holding = True
    network.connect()
    network.advance(1.0)
    assert cast(Any, network.serverFactory).received == []
    token = client.session.token
    assert token != NO_SESSION
    store.holding = False
    store.release()
    network.run(lambda: d.called)
    assert cast(Any, network.serverFactory).received == [b"early"]
    assert [r.token for r in store.records()] == [token]


def test_whenStored() -> None:
    """`whenStored` fires once what was submitted before it is durable."""
    store = HeldStore()
    _, client, _ = start(store)
    store.holding = True
    client.sendMessage(b"a")
    stored = client.whenStored()
    assert not stored.called
    store.holding = False
    store.release()
    assert stored.called
    assert result(AliveClientFactory().whenStored()) is None  # no store: at once


def test_confirmedDropped() -> None:
    """What the server confirmed is dropped from the store."""
    store = HeldStore()
    network, client, _ = start(store)
    network.connect()
    ds = [client.sendMessage(b"%d" % i) for i in range(5)]
    network.run(lambda: all(d.called for d in ds))
    (record,) = store.records()
    assert record.confirmedUpTo == 5 and record.messages == () and record.nextSeq == 6
    assert client.lastSubmitted == 5


def crash(network: Network, store: HeldStore) -> None:
    """The client's process dies: its store answers nothing more, its
    connection is cut, and it never reconnects."""
    store.dead = True
    cast(Any, network.clientFactory).continueTrying = 0
    wire = network.current
    assert wire is not None
    wire.cut()
    network.flush()


def test_recoveredAfterCrash() -> None:
    """A client that crashed with messages stored and not confirmed: the
    next process on the same store gets them from `recovered`, resumes the
    session (`sessionResumed`), sends them again, and the server's
    application processes each exactly once; their Deferreds fire."""
    inner = MemorySessionStore()
    first = HeldStore(inner)
    network, client, _ = start(first)
    network.connect()
    network.flush()
    server = cast(Any, network.serverFactory)
    server.slow = True  # the server's application holds on to each message
    ds = [client.sendMessage(b"%d" % i) for i in range(3)]
    network.flush()
    token = client.session.token
    assert server.received == [b"0"]
    crash(network, first)
    server.processing[0].callback(None)  # finished after the crash
    server.slow = False

    second = HeldStore(inner)
    network2, client2, recovered = start(second, server, network.clock)
    assert [payload for payload, _ in recovered] == [b"0", b"1", b"2"]
    assert client2.lastSubmitted == 3 and client2.session.token == token
    network2.connect()
    network2.run(lambda: all(d.called for _, d in recovered))
    assert [result(d).seq for _, d in recovered] == [1, 2, 3]
    assert server.received == [b"0", b"1", b"2"]
    assert client2.hooks == [("resumed",)] and client2.epoch == 1
    for d in ds:  # the dead process's (failed as its session ended)
        d.addErrback(lambda _: None)


def test_resetAfterCrashChangesEpoch() -> None:
    """A restarted client whose server no longer knows the session: the
    messages the previous process may have sent fail with
    ``maybeProcessed``, `sessionReset` says how many, and the epoch (in
    the store too) moves on; what was never sent carries over."""
    inner = MemorySessionStore()
    first = HeldStore(inner)
    network, client, _ = start(first, RecordingServerFactory(reply=False, slow=True))
    network.connect()
    network.flush()
    client.sendMessage(b"sent").addErrback(lambda _: None)
    network.flush()
    crash(network, first)
    second = HeldStore(inner)
    network2, client2, recovered = start(second, RecordingServerFactory(reply=False))
    d = client2.sendMessage(b"new")
    network2.connect()
    network2.run(lambda: client2.hooks != [])
    assert client2.hooks == [("reset", 1)]
    failure = cast(Failure, recovered[0][1].result)
    recovered[0][1].addErrback(lambda _: None)
    assert isinstance(failure.value, DeliveryFailed) and failure.value.maybeProcessed
    network2.run(lambda: d.called)
    assert result(d).seq == 1 and client2.epoch == 2
    assert [r.epoch for r in second.records()] == [2]


def test_loadKeepsTheNewestRecord() -> None:
    """A crash between writing a session's new record and deleting the old
    one leaves both: the one of the highest epoch is kept (at equal epochs
    the one with a token), the other deleted."""
    inner = MemorySessionStore()
    token = bytes(range(16))
    zero = StoredSession(NO_SESSION, epoch=1, nextSeq=2, messages=((1, b"x"),))
    result(inner.createSession(zero))
    result(inner.createSession(StoredSession(token, epoch=1, nextSeq=2, messages=((1, b"x"),))))
    _, client, recovered = start(HeldStore(inner))
    assert client.session.token == token and [p for p, _ in recovered] == [b"x"]
    assert result(inner.listSessions()) == [token]


def test_storeRefusesAtOnce() -> None:
    """A store that refuses an append at once (its queue is full): the
    send fails with `QueueFull` and nothing was queued."""
    store = HeldStore()
    _, client, _ = start(store)
    store.refuseAppends = True
    d = client.sendMessage(b"a")
    assert isinstance(cast(Failure, d.result).value, QueueFull)
    d.addErrback(lambda _: None)
    assert client.pending == 0 and client.lastSubmitted == 0


def test_storeTooSmallRefused() -> None:
    """A store that keeps less than the protocol's window and queue may
    hold is refused at load, saying so."""
    client = Client(MemorySessionStore(StoreLimits(10, 1000)))
    d = client.recovered()
    with pytest.raises(ValueError, match="StoreLimits.forOutbox"):
        result(d)


def test_notLoadedYet() -> None:
    """With a store, sending before `recovered` fired is an error, and a
    connection is refused (then retried)."""
    client = Client(MemorySessionStore())
    with pytest.raises(RuntimeError, match="recovered"):
        client.sendMessage(b"a")
    assert client.buildProtocol(None) is None


def test_closeEndsStoredSession() -> None:
    """`close` ends the session: the store then holds a new, empty one of
    the next epoch, so that the next process starts afresh."""
    store = HeldStore()
    network, client, _ = start(store)
    network.connect()
    network.flush()
    client.sendMessage(b"a")
    network.flush()
    d = client.close()
    network.run(lambda: d.called)
    (record,) = store.records()
    assert record.token == NO_SESSION and record.epoch == 2 and record.messages == ()
    assert client.epoch == 2


def test_noStore() -> None:
    """Without a store, `recovered` is empty and nothing changes."""
    client = AliveClientFactory()
    assert result(client.recovered()) == []
    assert client.store is None
    client.sendMessage(b"a")
    assert client.lastSubmitted == 1 and client.session.outbox.storedUpTo is None


def test_storeFailureEndsSession() -> None:
    """A store write that fails (a full disk) ends the session: what is
    unconfirmed fails with `DeliveryFailed` saying so, nothing is sent,
    and the factory stops."""
    store = HeldStore()
    network, client, _ = start(store)
    network.connect()
    network.flush()
    store.holding = True
    d = client.sendMessage(b"a")
    store.holding = False
    store.release(error=StoreError("disk I/O error"))
    network.flush()
    failure = cast(Failure, d.result)
    d.addErrback(lambda _: None)
    assert isinstance(failure.value, DeliveryFailed)
    assert "session store failed: disk I/O error" in str(failure.value)
    assert cast(Any, network.serverFactory).received == []
    assert not client.continueTrying


def test_serverWithoutSessions() -> None:
    """A stored session needs a server that keeps sessions: against one
    that does not, the session ends at once, saying so, rather than send
    what could never be resumed."""
    store = HeldStore()
    network, client, _ = start(store)
    network.server = HeartbeatProtocol
    d = client.sendMessage(b"a")
    network.connect()
    network.flush()
    failure = cast(Failure, d.result)
    d.addErrback(lambda _: None)
    assert "the server keeps no sessions" in str(failure.value)


class SmallServer(EchoServer):
    """Accepts frames of 128 bytes at most."""

    maxFrameSize = 128


class SmallFrames(RecordingServerFactory):
    """A server that accepts frames of 128 bytes at most."""

    protocol = SmallServer

    def __init__(self) -> None:
        super().__init__(reply=False)


def test_tooLargeForPeerFailsAtOnce() -> None:
    """With a store, a message larger than the connected server accepts
    fails at once and is neither stored nor sent (a stored message cannot
    be skipped); the next one goes."""
    store = HeldStore()
    network, client, _ = start(store, SmallFrames())
    network.connect()
    network.flush()
    large = client.sendMessage(b"x" * 500)
    failure = cast(Failure, large.result)
    large.addErrback(lambda _: None)
    assert isinstance(failure.value, DeliveryFailed) and not failure.value.maybeProcessed
    assert "exceeds the peer's maximum" in str(failure.value)
    small = client.sendMessage(b"y")
    network.run(lambda: small.called)
    assert result(small).seq == 1


# -- crashes at every kind of point -----------------------------------------------------------


@implementer(ISessionStore)
class LazyStore:
    """
    A store of one process that applies its operations to a shared
    `MemorySessionStore` (the file) only when the test commits them, in call
    order: a crash (`dead`) loses what was not committed, as a killed
    process loses its writer thread's queue.
    """

    def __init__(self, inner: MemorySessionStore) -> None:
        self.inner = inner
        self.limits = inner.limits
        self.queue: list[tuple[Any, Deferred[Any]]] = []
        self.dead = False

    def _later(self, thunk: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if not self.dead:
            self.queue.append((thunk, d))
        return d

    def commit(self, count: int | None = None) -> None:
        """Apply the ``count`` oldest operations (all by default); fire
        their Deferreds."""
        count = len(self.queue) if count is None else min(count, len(self.queue))
        batch, self.queue = self.queue[:count], self.queue[count:]
        for thunk, d in batch:
            if not self.dead:
                thunk().chainDeferred(d)

    def open(self) -> Deferred[None]:
        return self.inner.open()

    def statistics(self) -> StoreStatistics:
        return self.inner.statistics()

    def createSession(self, record: StoredSession) -> Deferred[None]:
        return self._later(lambda: self.inner.createSession(record))

    def loadSession(self, token: bytes) -> Deferred[StoredSession | None]:
        return self._later(lambda: self.inner.loadSession(token))

    def deleteSession(self, token: bytes) -> Deferred[bool]:
        return self._later(lambda: self.inner.deleteSession(token))

    def listSessions(self) -> Deferred[list[bytes]]:
        return self._later(self.inner.listSessions)

    def appendMessages(self, token: bytes, messages: Sequence[tuple[int, bytes]]) -> Deferred[None]:
        messages = list(messages)
        return self._later(lambda: self.inner.appendMessages(token, messages))

    def confirmMessages(self, token: bytes, upTo: int) -> Deferred[None]:
        return self._later(lambda: self.inner.confirmMessages(token, upTo))

    def recordProcessed(
        self, token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        return self._later(lambda: self.inner.recordProcessed(token, upTo, rejections))

    def touchSession(self, token: bytes, lastSeen: float) -> Deferred[None]:
        return self._later(lambda: self.inner.touchSession(token, lastSeen))

    def expireSessions(self, now: float, ttl: float) -> Deferred[list[bytes]]:
        return self._later(lambda: self.inner.expireSessions(now, ttl))

    def flush(self) -> Deferred[None]:
        return self._later(self.inner.flush)

    def close(self) -> Deferred[None]:
        return self.inner.close()


class Process:
    """One client process on a `LazyStore`: it sends the messages
    ``b"0"``, ``b"1"``... carrying on after the stored ``lastSubmitted``."""

    def __init__(
        self, inner: MemorySessionStore, server: RecordingServerFactory, clock: Clock
    ) -> None:
        self.store = LazyStore(inner)
        self.client = Client(self.store)
        self.network = Network(self.client, server, clock)
        loading = self.client.recovered()
        while not loading.called:
            self.store.commit()
        self.recovered = result(loading)
        self.next = self.client.lastSubmitted
        self.outcomes: list[Deferred[Receipt]] = [d for _, d in self.recovered]
        self.network.connect()

    def send(self, count: int, total: int) -> None:
        """Submit up to ``count`` more messages (of ``total`` in all)."""
        for _ in range(min(count, total - self.next)):
            self.outcomes.append(self.client.sendMessage(b"%d" % self.next))
            self.next += 1

    def crash(self) -> None:
        """Killed: what the store did not commit is lost; nothing more
        happens in this process."""
        self.store.dead = True
        for d in self.outcomes:
            d.addErrback(lambda _: None)
        cast(Any, self.client).continueTrying = 0
        wire = self.network.current
        if wire is not None:
            wire.cut()


TOTAL = 60
"""The messages each run of `CrashMachine` sends in all."""


class CrashMachine(RuleBasedStateMachine):
    """
    A client process that sends, has its store commit some of what it was
    asked, gets some bytes delivered, loses its connection, and crashes
    (what its store did not commit is lost; a new process loads the store
    and resumes) in any order Hypothesis finds: the server's application
    never processes a message twice nor out of order, and at the end, once
    everything is sent, it has processed each exactly once and the last
    process's Deferreds all fired with their receipts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.inner = MemorySessionStore()
        self.server = RecordingServerFactory(reply=False)
        self.clock = Clock()
        self.process = Process(self.inner, self.server, self.clock)

    @rule(count=st.integers(1, 5))
    def send(self, count: int) -> None:
        self.process.send(count, TOTAL)

    @rule(operations=st.integers(0, 4))
    def commit(self, operations: int) -> None:
        self.process.store.commit(operations)

    @rule(size=st.integers(1, 200))
    def deliver(self, size: int) -> None:
        wire = self.process.network.current
        if wire is not None:
            wire.deliver(size, self.clock)
        else:
            self.process.network.advance(0.2)

    @rule()
    def cut(self) -> None:
        wire = self.process.network.current
        if wire is not None:
            wire.cut()

    @rule()
    def crash(self) -> None:
        self.process.crash()
        self.process = Process(self.inner, self.server, self.clock)
        assert self.process.client.epoch == 1

    @invariant()
    def inOrderOnce(self) -> None:
        received = cast(Any, self.server).received
        assert received == [b"%d" % n for n in range(len(received))]

    def teardown(self) -> None:
        process = self.process
        process.send(TOTAL, TOTAL)

        def finished() -> bool:
            process.store.commit()
            return all(d.called for d in process.outcomes)

        process.network.run(finished)
        assert cast(Any, self.server).received == [b"%d" % n for n in range(TOTAL)]
        assert [result(d).seq for d in process.outcomes][-1:] in ([], [TOTAL])


TestCrashMachine = CrashMachine.TestCase
TestCrashMachine.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)


class Unreadable(MemorySessionStore):
    """A store whose file cannot be read."""

    def listSessions(self) -> Deferred[list[bytes]]:
        return fail(CorruptStore("client.db is not a twisted_alive session store"))


def test_unreadableStore() -> None:
    """A store that cannot be read fails `recovered` (every call) with its
    error, and the factory never starts afresh: sending stays an error."""
    client = Client(Unreadable())
    first, second = client.recovered(), client.recovered()
    for d in (first, second, client.recovered()):
        with pytest.raises(CorruptStore, match="not a twisted_alive session store"):
            result(d)
    with pytest.raises(RuntimeError, match="recovered"):
        client.sendMessage(b"a")


@pytest.mark.parametrize(
    "tokens",
    [
        [b"\x01" * 16, b"\x02" * 16],
        [b"\x01" * 16, b"\x02" * 16, NO_SESSION],
        [b"\x01" * 16, b"\x02" * 16, b"\x03" * 16],
    ],
)
def test_notAClientsStore(tokens: list[bytes]) -> None:
    """A store that holds what no client's store holds (a server's: several
    sessions with tokens) is refused by `recovered`, with one exact error,
    and nothing in it is deleted."""
    store = MemorySessionStore()
    for token in tokens:
        result(store.createSession(StoredSession(token, epoch=1)))
        result(store.appendMessages(token, [(1, b"kept")]))
    with pytest.raises(StoreError) as caught:
        result(Client(store).recovered())
    assert str(caught.value) == (
        f"{store!r} holds {len(tokens)} sessions, as no client's store does (it is a "
        "server's, or shared): a client needs a session store of its own"
    )
    assert sorted(result(store.listSessions())) == sorted(tokens)
    for token in tokens:
        loaded = result(store.loadSession(token))
        assert loaded is not None and loaded.messages == ((1, b"kept"),)


class Tight(HeartbeatProtocol):
    """A protocol whose send queue takes two messages."""

    maxQueued = 2


def test_queueFullWithStore() -> None:
    """With a store, a full send queue refuses at once with `QueueFull`,
    nothing stored; messages sent together are all or none, and one too
    large for the connected server fails them all, none stored."""
    store = HeldStore()
    client = Client(store)
    client.protocol = Tight
    network = Network(client, SmallFrames(), Clock())
    result(client.recovered())
    client.sendMessage(b"a")
    client.sendMessage(b"b")
    full = client.sendMessages([b"c", b"d"])
    assert isinstance(cast(Failure, full.result).value, QueueFull)
    full.addErrback(lambda _: None)
    assert store.appended == [(NO_SESSION, [1]), (NO_SESSION, [2])]
    network.connect()
    network.flush()
    large = client.sendMessages([b"e", b"x" * 500])
    assert "exceeds the peer's maximum" in str(cast(Failure, large.result).value)
    large.addErrback(lambda _: None)
    assert client.lastSubmitted == 2


def test_recoveredWaitsForTheStore() -> None:
    """`recovered` called while the store is still reading fires once it
    is done, for every caller; a failure reaches each of them."""
    store = HeldStore()
    store.holding = True
    client = Client(store)
    first, second = client.recovered(), client.recovered()
    assert not first.called
    store.holding = False
    while store.held:
        store.release()
    assert result(first) == result(second) == []
    broken = HeldStore()
    broken.holding = True
    failing = Client(broken)
    waiting = failing.recovered()
    broken.release(error=CorruptStore("not a store"))
    with pytest.raises(CorruptStore):
        result(waiting)


def test_receiptDoesNotWaitForTheStore() -> None:
    """The `Receipt` fires when the server's ACK arrives, while the store
    has not yet dropped the message (its confirmation is still held)."""
    store = HeldStore()
    network, client, _ = start(store)
    network.connect()
    network.flush()
    d = client.sendMessage(b"a")
    store.holding = True  # from here on, nothing the store does is heard of
    network.run(lambda: d.called)
    assert result(d).seq == 1
    assert store.held  # the confirmation, not fired yet
    (record,) = store.records()
    assert record.confirmedUpTo == 1  # (the memory store applied it at once)


def closeStore(store: HeldStore) -> MemorySessionStore:
    """Close ``store`` as a process that stops does: every operation from
    now on fails with `StoreClosed`, and nothing more changes in it.

    :returns: what the store holds, for the next process."""
    kept = store.inner
    closed = MemorySessionStore()
    closed.close()
    store.inner = closed
    return kept


def test_storeClosedKeepsSession() -> None:
    """A store closed under a session (the process stops: the reactor's
    shutdown closes it first) ends nothing: the ACK that follows cannot be
    committed, so the client stops using the session (no reconnecting,
    its connection aborted), fails what is unconfirmed saying the store
    keeps it, and logs no error; the store keeps the session and its
    messages, and the next process resumes it and gets a `Receipt` for
    each, processed once."""
    inner = MemorySessionStore()
    first = HeldStore(inner)
    server = RecordingServerFactory(reply=False, slow=True)
    network, client, _ = start(first, server)
    network.connect()
    network.flush()
    ds = [client.sendMessage(b"%d" % i) for i in range(3)]
    network.flush()
    token = client.session.token
    assert server.received == [b"0"]
    kept = closeStore(first)
    with capturedLogs() as logs:
        server.processing[0].callback(None)  # its ACK comes after the close
        network.flush()
    assert isinstance(result(ds[0]), Receipt)  # the ACK came
    for d in ds[1:]:
        error = cast(Failure, d.result).value
        d.addErrback(lambda _: None)
        assert isinstance(error, DeliveryFailed)
        assert str(error).startswith(
            "the session store closed (the message stays in the session store, for the "
            "next process) before confirmation"
        )
    assert not client.continueTrying and client.connected is None
    assert client.hooks == [] and client.epoch == 1
    assert [e["log_level"] for e in logs if e["log_level"] >= LogLevel.warn] == []
    assert [e.get("event") for e in logs if e.get("event") == "store_closed"] == ["store_closed"]
    late = client.sendMessage(b"late")  # neither stored nor sent
    error = cast(Failure, late.result).value
    late.addErrback(lambda _: None)
    assert str(error) == "the factory stopped trying; message not sent"
    (record,) = HeldStore(kept).records()
    assert record.token == token and record.epoch == 1
    assert [seq for seq, _ in record.messages] == [1, 2, 3]

    second = HeldStore(kept)
    server.slow = False
    for work in server.processing[1:]:  # (what the server was still working on)
        work.callback(None)
    network2, client2, recovered = start(second, server, network.clock)
    assert [payload for payload, _ in recovered] == [b"0", b"1", b"2"]
    network2.connect()
    network2.run(lambda: all(d.called for _, d in recovered))
    assert [result(d).seq for _, d in recovered] == [1, 2, 3]
    assert server.received == [b"0", b"1", b"2"]
    assert client2.hooks == [("resumed",)] and client2.epoch == 1


class Receiving(HeartbeatProtocol):
    """Records what it receives in its factory."""

    factory: ReceivingClient

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)


class ReceivingClient(Client):
    """A client whose protocol records what it receives."""

    protocol = Receiving

    def __init__(self, store: ISessionStore | None = None) -> None:
        super().__init__(store)
        self.received: list[bytes] = []


def test_storeClosedStopsReceiving() -> None:
    """A message received once the store is closed is processed, but its
    position cannot be committed: it is not acknowledged, nothing more is
    handed out, and the session stays in the store as it was (the next
    process gets the message again)."""
    inner = MemorySessionStore()
    first = HeldStore(inner)
    client = ReceivingClient(first)
    server = RecordingServerFactory(reply=False)
    network = Network(client, server, Clock())
    result(client.recovered())
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    kept = closeStore(first)
    with capturedLogs() as logs:
        ds = [proto.sendMessage(b"%d" % i) for i in range(3)]
        network.flush()
    assert client.received == [b"0"]
    assert not client.continueTrying and client.connected is None
    assert [e["log_level"] for e in logs if e["log_level"] >= LogLevel.warn] == []
    (record,) = HeldStore(kept).records()
    assert record.token == client.session.token and record.processedUpTo == 0
    assert not any(d.called and isinstance(d.result, Receipt) for d in ds)  # no ACK
    for d in ds:
        d.addErrback(lambda _: None)


def backupOf(store: MemorySessionStore) -> MemorySessionStore:
    """A copy of what ``store`` holds now (the operator's backup)."""
    copy = MemorySessionStore()
    for record in HeldStore(store).records():
        result(copy.createSession(record))
    return copy


def restoredClient(
    backup: MemorySessionStore, network: Network, server: RecordingServerFactory
) -> tuple[Network, Client]:
    """The client's process stops, and the next one starts on ``backup`` (a
    store restored from a backup, or one that lost its last commits: its
    positions went back); it is connected."""
    cast(Any, network.clientFactory).continueTrying = 0
    wire = network.current
    assert wire is not None
    wire.cut()
    network.flush()
    network2, client2, _ = start(HeldStore(backup), server, network.clock)
    network2.connect()
    return network2, client2


def test_resumeRefusedByTheClientResets() -> None:
    """A stored session whose store went back (the server received more
    than the restored store says was sent): the server's HELLO breaks the
    resume rules here, so the client starts a new session at once
    (`sessionReset`, the next epoch, in the store too) instead of retrying
    the old one forever; what is sent next is delivered."""
    inner = MemorySessionStore()
    server = RecordingServerFactory(reply=False)
    network, client, _ = start(HeldStore(inner), server)
    network.connect()
    network.flush()
    backup = backupOf(inner)
    ds = [client.sendMessage(b"%d" % i) for i in range(3)]
    network.run(lambda: all(d.called for d in ds))
    network2, client2 = restoredClient(backup, network, server)
    d = client2.sendMessage(b"new")
    network2.run(lambda: d.called)
    assert result(d).seq == 1
    assert client2.hooks == [("reset", 0)] and client2.epoch == 2
    assert client2.losses == {Reason.PROTOCOL_ERROR: 1}
    assert str(client2.lastLoss) == (
        "PROTOCOL_ERROR: HELLO next_expected 4 is beyond the 0 messages sent"
    )
    assert [record.epoch for record in client2.store.records()] == [2]  # type: ignore[union-attr]
    assert server.received == [b"0", b"1", b"2", b"new"]


def test_resumeRefusedByTheServerResets() -> None:
    """A stored session whose processed position went back (it says it
    needs messages it acknowledged): the server answers its HELLO with
    GOODBYE(PROTOCOL_ERROR) instead of a HELLO, and the client starts a new
    session at once; the unconfirmed messages it carried fail with
    ``maybeProcessed``."""
    inner = MemorySessionStore()
    server = RecordingServerFactory(reply=False, slow=True)
    network, client, _ = start(HeldStore(inner), server)
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    ds = [proto.sendMessage(b"%d" % i) for i in range(2)]
    network.run(lambda: all(d.called for d in ds))
    sent = client.sendMessage(b"sent")
    network.flush()
    backup = backupOf(inner)  # message 1 sent, its position 0 (of 2 acknowledged)
    assert server.received == [b"sent"]
    server.processing[0].callback(None)
    server.slow = False
    network.flush()
    assert isinstance(result(sent), Receipt)
    backupRecord = HeldStore(backup).records()[0]
    assert backupRecord.processedUpTo == 2
    # (the store went back further: as if the positions were never committed)
    result(backup.recordProcessed(backupRecord.token, 2))
    stale = StoredSession(
        backupRecord.token,
        epoch=1,
        nextSeq=backupRecord.nextSeq,
        confirmedUpTo=backupRecord.confirmedUpTo,
        processedUpTo=0,
        messages=backupRecord.messages,
    )
    result(backup.deleteSession(backupRecord.token))
    result(backup.createSession(stale))
    network2, client2 = restoredClient(backup, network, server)
    network2.run(lambda: client2.hooks != [])
    assert client2.hooks == [("reset", 1)]
    assert str(client2.lastLoss) == (
        "PROTOCOL_ERROR: peer said GOODBYE PROTOCOL_ERROR: HELLO next_expected 1 is below "
        "the 2 messages already acknowledged"
    )
    network2.run(lambda: client2.connected is not None)
    assert client2.epoch == 2 and client2.losses == {Reason.PROTOCOL_ERROR: 1}


class FastServer(EchoServer):
    """A server whose heartbeat interval is below what clients accept."""

    heartbeatInterval = 0.05


def test_resumeRefusedOnceThenUsualRetry() -> None:
    """A protocol error on the HELLO of a resume starts a new session; one
    on the new session's HELLO (no token) follows the usual retry rule
    (backoff), so that a server that refuses every HELLO cannot make the
    client start new sessions in a loop."""
    store = HeldStore()
    server = RecordingServerFactory(reply=False)
    network, client, _ = start(store, server)
    network.connect()
    network.flush()
    strict = RecordingServerFactory(reply=False)
    strict.protocol = FastServer
    strict.clock = network.clock
    network.serverFactory = strict
    wire = network.current
    assert wire is not None
    wire.cut()
    network.run(lambda: client.losses.get(Reason.PROTOCOL_ERROR, 0) >= 4, limit=600)
    assert client.hooks == [("reset", 0)] and client.epoch == 2
    assert str(client.lastLoss) == (
        "PROTOCOL_ERROR: heartbeat interval 0.05 s is outside the accepted range 0.1..3600 s"
    )
    assert client.retries >= 3  # backing off


def test_sendAfterCloseRefused() -> None:
    """A message sent once the store is closed, before the client found out
    otherwise, fails at once with `StoreClosed`: neither stored nor sent
    (the outbox takes it back)."""
    store = HeldStore()
    network, client, _ = start(store)
    network.connect()
    network.flush()
    closeStore(store)
    d = client.sendMessage(b"late")
    error = cast(Failure, d.result).value
    d.addErrback(lambda _: None)
    assert isinstance(error, StoreClosed) and str(error) == "the session store is closed"
    assert client.pending == 0 and client.lastSubmitted == 0


class Banner(Protocol):
    """Not a twisted_alive peer: it greets with an SSH banner."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"SSH-2.0-OpenSSH_9.2p1\\r\\n")


def test_resumeAgainstOtherPeerKeepsSession() -> None:
    """A resume that meets a peer that does not speak twisted_alive (a
    wrong port) is a protocol error before the session opened too, but not
    a refusal of the session: no new session is started (no
    `sessionReset`); the client stops, as the retry rule for
    `NOT_ALIVE_PEER` says (which ends the session, as `stopTrying`
    does)."""
    store = HeldStore()
    network, client, _ = start(store)
    network.connect()
    network.flush()
    token = client.session.token
    network.serverFactory = cast(Any, Factory.forProtocol(Banner))
    wire = network.current
    assert wire is not None
    wire.cut()
    network.run(lambda: client.losses.get(Reason.PROTOCOL_ERROR, 0) >= 1)
    assert client.lastLoss is not None and client.lastLoss.cause is Cause.NOT_ALIVE_PEER
    assert client.hooks == [] and not client.continueTrying
    assert client.losses == {Reason.RESET: 1, Reason.PROTOCOL_ERROR: 1}
    assert token != NO_SESSION
