"""
The receiving side of a client session kept in a session store
(``AliveClientFactory(store=...)``), over the simulated network of
``test_sessions``: the processed position is committed before the ACK
that covers it, one message at a time, with the REJECTs the peer may not
have seen; a store that fails ends the session.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, cast

import pytest
from support import RecordingPeer, connectAlone, withoutRepeats
from test_sessions import Network, RecordingServerFactory
from test_store_client import HeldStore, LazyStore, result
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive import (
    AliveClientFactory,
    HeartbeatProtocol,
    ITransactionalStore,
    MemorySessionStore,
    MessageInfo,
)
from twisted_alive._interfaces import ISessionStore
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Hello,
    encode,
    encodeData,
)
from twisted_alive.core.outcomes import DeliveryFailed, Receipt
from twisted_alive.core.reasons import Reason
from twisted_alive.core.stored import StoreError


class CountingStore(HeldStore):
    """A `HeldStore` that records each ``recordProcessed`` call and how
    many of them wait for the test to release them."""

    def __init__(self, inner: MemorySessionStore | None = None) -> None:
        super().__init__(inner)
        self.processed: list[tuple[int, list[tuple[int, str]] | None]] = []

    def recordProcessed(
        self, token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        self.processed.append((upTo, None if rejections is None else list(rejections)))
        return super().recordProcessed(token, upTo, rejections)


class Receiver(HeartbeatProtocol):
    """Records what it processes in its factory, with its `MessageInfo`;
    fails on ``b"bad"``."""

    factory: ReceiverFactory

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)
        self.factory.infos.append(self.currentMessage)
        if payload == b"bad":
            raise ValueError("cannot handle bad")


class ReceiverFactory(AliveClientFactory):
    """A client factory whose protocols record what they receive."""

    protocol = Receiver

    def __init__(self, store: ISessionStore | None = None) -> None:
        super().__init__(store)
        self.received: list[bytes] = []
        self.infos: list[MessageInfo | None] = []


def start(store: ISessionStore, factory: ReceiverFactory | None = None) -> tuple[
    Network, ReceiverFactory, Any
]:
    """A receiving client on ``store``, connected to a server that does not
    reply; the server's protocol."""
    client = factory if factory is not None else ReceiverFactory(store)
    network = Network(client, RecordingServerFactory(reply=False), Clock())
    result(client.recovered())
    network.connect()
    network.flush()
    wire = network.current
    assert wire is not None
    return network, client, wire.server


def test_ackWaitsForTheCommit() -> None:
    """The sender's Deferred fires only after the store committed the
    receiver's processed position, never before."""
    store = CountingStore()
    network, client, server = start(store)
    store.holding = True
    d = server.sendMessage(b"one")
    network.flush()
    network.advance(1.0)
    assert client.received == [b"one"]
    assert store.processed == [(1, None)]
    assert not d.called
    store.holding = False
    store.release()
    network.flush()
    receipt = result(d)
    assert isinstance(receipt, Receipt) and receipt.seq == 1
    assert store.records()[0].processedUpTo == 1


def test_serialHandOff() -> None:
    """With a store, the next message reaches the application only once
    the previous one's position is committed; one write at a time."""
    store = CountingStore()
    network, client, server = start(store)
    store.holding = True
    ds = [server.sendMessage(b"m%d" % i) for i in range(1, 4)]
    network.flush()
    network.advance(1.0)
    assert client.received == [b"m1"]
    assert store.processed == [(1, None)]
    store.release()
    network.flush()
    assert client.received == [b"m1", b"m2"]
    assert store.processed == [(1, None), (2, None)]
    assert ds[0].called and not ds[1].called
    store.holding = False
    store.release()
    network.flush()
    assert client.received == [b"m1", b"m2", b"m3"]
    assert [result(d).seq for d in ds] == [1, 2, 3]
    assert store.processed == [(1, None), (2, None), (3, None)]


def test_synchronousStoreHandsOutEverything() -> None:
    """A store whose Deferreds have fired already (`MemorySessionStore`):
    every message is processed in one go, each position written once."""
    store = CountingStore()
    network, client, server = start(store)
    ds = [server.sendMessage(b"m%d" % i) for i in range(50)]
    network.flush()
    assert len(client.received) == 50
    assert [upTo for upTo, _ in store.processed] == list(range(1, 51))
    assert all(d.called for d in ds)


def test_rejectStoredBeforeSent() -> None:
    """A message the application failed on: its REJECT is stored with the
    position, sent only after the commit, and stored again with the next
    position until the peer must have seen it."""
    store = CountingStore()
    network, client, server = start(store)
    store.holding = True
    bad = server.sendMessage(b"bad")
    good = server.sendMessage(b"good")
    network.flush()
    network.advance(1.0)
    assert store.processed == [(1, [(1, "ValueError: cannot handle bad")])]
    assert not bad.called
    store.release()
    network.flush()
    failure = cast(Failure, bad.result)
    bad.addErrback(lambda _: None)
    assert isinstance(failure.value, DeliveryFailed) and failure.value.rejected
    assert store.processed[1] == (2, [(1, "ValueError: cannot handle bad")])
    store.holding = False
    store.release()
    network.flush()
    assert result(good).seq == 2
    assert store.records()[0].rejections == ((1, "ValueError: cannot handle bad"),)


def test_storeFailureEndsTheSession() -> None:
    """A failed write of the processed position ends the session: nothing
    is acknowledged beyond what the store committed, the factory stops."""
    store = CountingStore()
    network, client, server = start(store)
    store.holding = True
    d = server.sendMessage(b"one")
    network.flush()
    assert client.received == [b"one"]
    store.holding = False
    store.release(error=StoreError("disk I/O error"))
    network.flush()
    assert not client.continueTrying
    assert network.current is None
    assert not (d.called and isinstance(d.result, Receipt))
    d.addErrback(lambda _: None)


# -- a crash between the application's work and the commit -----------------------------------------


class Table:
    """An application table that a transaction fills: rows added through
    a `Cursor` are kept only when its transaction commits."""

    def __init__(self) -> None:
        self.rows: list[bytes] = []


class Cursor:
    """What ``messageReceivedInTransaction`` gets: ``insert`` stages a row
    in the transaction."""

    def __init__(self) -> None:
        self.staged: list[bytes] = []

    def insert(self, row: bytes) -> None:
        self.staged.append(row)


@implementer(ITransactionalStore)
class LazyTransactionalStore(LazyStore):
    """A `LazyStore` that runs an application's work in its transactions:
    the work and the position are applied together when the test commits
    them, or neither (the work raised, or the process died first)."""

    def __init__(self, inner: MemorySessionStore, table: Table) -> None:
        super().__init__(inner)
        self.table = table

    def processInTransaction(
        self, token: bytes, seq: int, function: Callable[[Any], object]
    ) -> Deferred[None]:
        def run() -> Deferred[None]:
            cursor = Cursor()
            try:
                function(cursor)
            except Exception:
                return fail()
            d = self.inner.recordProcessed(token, seq)
            self.table.rows.extend(cursor.staged)
            return d

        return self._later(run)


class InTransaction(HeartbeatProtocol):
    """Inserts each message into the table, in the store's transaction;
    fails on ``b"bad"`` after its insert (which is rolled back)."""

    def messageReceivedInTransaction(self, payload: bytes, cursor: Cursor) -> None:
        cursor.insert(payload)
        if payload == b"bad":
            raise ValueError("cannot handle bad")


class InTransactionFactory(ReceiverFactory):
    """A client factory whose protocols process in the store's transaction."""

    protocol = InTransaction  # type: ignore[assignment]


def startLazy(
    store: LazyStore, server: RecordingServerFactory, clock: Clock, transactional: bool = False
) -> tuple[ReceiverFactory, Network]:
    """A receiving client process on ``store``, its session loaded,
    connecting to ``server``."""
    client = (InTransactionFactory if transactional else ReceiverFactory)(store)
    network = Network(client, server, clock)
    loading = client.recovered()
    while not loading.called:
        store.commit()
    result(loading)
    network.connect()
    return client, network


def untilStored(store: LazyStore, client: ReceiverFactory, network: Network) -> Any:
    """Run until the client's session has its token and is stored under it
    (every store operation committed); the server's protocol."""

    def ready() -> bool:
        store.commit()
        return network.current is not None and client.session.token != bytes(16)

    network.run(ready)
    store.commit()
    network.flush()
    return cast(Any, network.current).server


def killed(store: LazyStore, client: ReceiverFactory, network: Network) -> None:
    """The process dies: what its store did not commit is lost."""
    store.dead = True
    cast(Any, client).continueTrying = 0
    wire = network.current
    if wire is not None:
        wire.cut()


def test_repeatAfterCrashIsFlagged() -> None:
    """A receiver that crashed after its application processed a message
    and before the store committed its position: the next process gets
    that message again, flagged as redelivered, under the same idempotency
    key; the messages after it are not flagged."""
    inner = MemorySessionStore()
    server = RecordingServerFactory(reply=False)
    clock = Clock()
    first = LazyStore(inner)
    client, network = startLazy(first, server, clock)
    sender = untilStored(first, client, network)
    ds = [sender.sendMessage(b"m%d" % n) for n in (1, 2, 3)]
    network.flush()
    assert client.received == [b"m1"]
    first.commit()  # m1's position
    network.flush()
    assert client.received == [b"m1", b"m2"]
    killed(first, client, network)  # m2's position never committed
    token = client.session.token
    assert client.infos == [MessageInfo(token, 1, False), MessageInfo(token, 2, False)]

    second = LazyStore(inner)
    again, network2 = startLazy(second, server, clock)

    def finished() -> bool:
        second.commit()
        return all(d.called for d in ds)

    network2.run(finished)
    assert again.received == [b"m2", b"m3"]
    assert again.infos == [MessageInfo(token, 2, True), MessageInfo(token, 3, False)]
    assert [result(d).seq for d in ds] == [1, 2, 3]


def test_currentMessageOnlyWhileProcessing() -> None:
    """`currentMessage` is ``None`` outside ``messageReceived``; a session
    that was never loaded from a store flags nothing."""
    store = CountingStore()
    network, client, server = start(store)
    d = server.sendMessage(b"one")
    network.flush()
    assert result(d).seq == 1
    assert client.infos == [MessageInfo(client.session.token, 1, False)]
    assert cast(Any, network.current).client.currentMessage is None


def test_transactionalHandlerSuccess() -> None:
    """The application's work and the position are committed together;
    the ACK goes once that commit fired, with no other write."""
    inner = MemorySessionStore()
    table = Table()
    store = LazyTransactionalStore(inner, table)
    server = RecordingServerFactory(reply=False)
    client, network = startLazy(store, server, Clock(), transactional=True)
    sender = untilStored(store, client, network)
    ds = [sender.sendMessage(b"m%d" % n) for n in (1, 2)]
    network.flush()
    assert table.rows == [] and len(store.queue) == 1 and not ds[0].called
    store.commit()
    network.flush()
    assert table.rows == [b"m1"] and ds[0].called and not ds[1].called
    store.commit()
    network.flush()
    assert table.rows == [b"m1", b"m2"]
    assert [result(d).seq for d in ds] == [1, 2]
    assert store.queue == []


def test_transactionalHandlerFailureRolledBack() -> None:
    """Work that raises is rolled back (its insert is not kept); the message
    is answered as failed, its REJECT stored with the position before it
    is sent; the next message goes on."""
    inner = MemorySessionStore()
    table = Table()
    store = LazyTransactionalStore(inner, table)
    server = RecordingServerFactory(reply=False)
    client, network = startLazy(store, server, Clock(), transactional=True)
    sender = untilStored(store, client, network)
    bad = sender.sendMessage(b"bad")
    good: Deferred[Receipt] = sender.sendMessage(b"good")

    def finished() -> bool:
        store.commit()
        return good.called

    network.run(finished)
    failure = cast(Failure, bad.result)
    bad.addErrback(lambda _: None)
    assert isinstance(failure.value, DeliveryFailed) and failure.value.rejected
    assert "cannot handle bad" in str(failure.value)
    assert table.rows == [b"good"]
    record = result(inner.loadSession(client.session.token))
    assert record.processedUpTo == 2
    assert record.rejections == ((1, "ValueError: cannot handle bad"),)


def test_transactionalHandlerStoreFailureEndsSession() -> None:
    """A store whose transaction failed (not the application's work): the
    session ends, nothing is acknowledged."""
    inner = MemorySessionStore()
    store = LazyTransactionalStore(inner, Table())
    server = RecordingServerFactory(reply=False)
    client, network = startLazy(store, server, Clock(), transactional=True)
    d = untilStored(store, client, network).sendMessage(b"m1")
    network.flush()
    (thunk, held), = store.queue
    store.queue = []
    held.errback(StoreError("disk I/O error"))
    network.flush()
    assert not client.continueTrying
    assert not (d.called and isinstance(d.result, Receipt))
    d.addErrback(lambda _: None)


def test_transactionalHandlerNeedsTransactionalStore() -> None:
    """A protocol with ``messageReceivedInTransaction`` and a store that
    cannot run it: `recovered` fails with one exact error."""
    client = InTransactionFactory(MemorySessionStore())
    failure = cast(Failure, client.recovered().result)
    client.recovered().addErrback(lambda _: None)
    assert failure.type is TypeError
    assert str(failure.value) == (
        "InTransaction defines messageReceivedInTransaction(), which needs a session store "
        "that runs it in its own transaction (ITransactionalStore, such as "
        "SqliteSessionStore), but the session is kept in <MemorySessionStore: 0 sessions>"
    )


def test_transactionalHandlerWithoutStoreRefusedAtStart() -> None:
    """A client factory without a store, whose protocol defines
    ``messageReceivedInTransaction``: refused when it starts, with the
    exact error (reconnecting could not fix it)."""
    client = InTransactionFactory()
    with pytest.raises(TypeError) as raised:
        client.doStart()  # type: ignore[no-untyped-call]
    assert str(raised.value) == (
        "InTransaction defines messageReceivedInTransaction(), which needs a session store "
        "that runs it in its own transaction (ITransactionalStore, such as "
        "SqliteSessionStore), but the session is kept in no session store"
    )


class PeerInTransaction(RecordingPeer):
    """A protocol on its own (no factory keeps its session) that defines
    ``messageReceivedInTransaction``."""

    def messageReceivedInTransaction(self, payload: bytes, cursor: object) -> None:
        raise AssertionError("never called without a store")


def test_transactionalHandlerWithoutStoreAbortsTheConnection() -> None:
    """A connection whose session is kept in no store, with a protocol
    that defines ``messageReceivedInTransaction``: aborted when it opens,
    with the exact error, and nothing is handed to the application."""
    proto, transport, _ = connectAlone(PeerInTransaction)
    proto.dataReceived(
        encode(Hello(PROTOCOL_VERSION, 0, 1.0, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION))
        + encodeData(1, b"m1")
    )
    assert transport.abortedAt is not None
    proto.connectionLost(Failure(ConnectionLost()))  # type: ignore[no-untyped-call]
    assert proto.loss is not None and proto.loss.reason is Reason.LOCAL_CLOSE
    assert proto.loss.detail == (
        "PeerInTransaction defines messageReceivedInTransaction(), which needs a session "
        "store that runs it in its own transaction (ITransactionalStore, such as "
        "SqliteSessionStore), but the session is kept in no session store"
    )
    assert proto.received == []


def flagged(client: ReceiverFactory) -> list[tuple[bytes, bool]]:
    """What ``client``'s application processed, each with its
    ``redelivered`` flag."""
    return [
        (payload, info is not None and info.redelivered)
        for payload, info in zip(client.received, client.infos, strict=True)
    ]


@pytest.mark.parametrize("transactional", [False, True])
@pytest.mark.parametrize("seed", range(25))
def test_crashesRepeatOneMessageAtMost(seed: int, transactional: bool) -> None:
    """A receiving client process crashed again and again at random points
    and started again on the same store, against a server that keeps its
    session: with ``messageReceived``, every message is processed, in
    order, and a crash repeats one message at most, flagged; with
    ``messageReceivedInTransaction``, every message exactly once. The
    server's Deferreds all fire with their receipts."""
    rng = random.Random(seed)
    total = 40
    inner = MemorySessionStore()
    table = Table()
    server = RecordingServerFactory(reply=False)
    clock = Clock()
    processed: list[tuple[bytes, bool]] = []

    def process() -> tuple[LazyStore, ReceiverFactory, Network]:
        store = LazyTransactionalStore(inner, table) if transactional else LazyStore(inner)
        client, network = startLazy(store, server, clock, transactional)
        return store, client, network

    store, client, network = process()
    outcomes: list[Deferred[Receipt]] = []
    kills = 0
    sent = False
    for _ in range(120):
        wire = network.current
        if not sent and wire is not None and wire.server.state is not None and cast(
            Any, wire.server
        ).session.token != bytes(16) and client.session.token != bytes(16):
            store.commit()  # the session stored under its token
            assert result(inner.listSessions()) == [client.session.token]
            outcomes = [wire.server.sendMessage(b"%d" % n) for n in range(total)]
            sent = True
        action = rng.random()
        if action < 0.35:
            store.commit(rng.randint(0, 3))
        elif action < 0.8:
            if wire is not None:
                wire.deliver(rng.randint(1, 300), clock)
            else:
                network.advance(0.2)
        elif action < 0.85:
            if wire is not None:
                wire.cut()
        elif sent:
            processed.extend(flagged(client))
            killed(store, client, network)
            kills += 1
            store, client, network = process()

    def finished() -> bool:
        store.commit()
        return all(d.called for d in outcomes)

    if not sent:
        sender = untilStored(store, client, network)
        outcomes = [sender.sendMessage(b"%d" % n) for n in range(total)]
        sent = True
    network.run(finished)
    processed.extend(flagged(client))
    assert [result(d).seq for d in outcomes] == list(range(1, total + 1)), seed
    expected = [b"%d" % n for n in range(total)]
    if transactional:
        assert table.rows == expected, seed
        return
    kept, repeated = withoutRepeats(processed, itemgetter(0))
    assert all(redelivered for _, redelivered in repeated), seed
    assert [payload for payload, _ in kept] == expected, seed
    assert len(repeated) <= kills, seed
