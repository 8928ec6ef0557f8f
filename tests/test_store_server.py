"""
A server's sessions kept in a session store
(``AliveServerFactory(store=...)``), over the simulated network of
``test_sessions`` (a L{Clock}, in-memory wires) and a store whose Deferreds
the test fires: the sessions loaded when the factory starts (HELLOs wait
for them), a new session created in the store before the HELLO that gives
its token, a session that ends deleted from the store, expiry, the
server's messages stored before they are sent, and what a restarted server
gives its application (`recovered`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import pytest
from support import ensureDeferred, getReactor, withoutRepeats
from test_sessions import (
    EchoServer,
    Network,
    RecordingClient,
    RecordingClientFactory,
    RecordingServerFactory,
)
from test_store_client import HeldStore, LazyStore, result
from test_store_receiver import Cursor, LazyTransactionalStore, Table
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure

from twisted_alive import (
    AliveClientFactory,
    AliveServerFactory,
    HeartbeatProtocol,
    MemorySessionStore,
    SqliteSessionStore,
)
from twisted_alive._reasons import Reason
from twisted_alive.core.frames import NO_SESSION
from twisted_alive.core.outcomes import DeliveryFailed, Receipt
from twisted_alive.core.stored import CorruptStore, StoredSession, StoreError, StoreLimits

TOKEN = bytes(range(1, 17))
"""A session token for records the tests store themselves."""


class ServerStore(HeldStore):
    """A `HeldStore` whose ``dead`` process also records nothing more of
    when its sessions were seen, nor what it processed."""

    def __init__(self, inner: MemorySessionStore | None = None) -> None:
        super().__init__(inner)
        self.touched: list[tuple[bytes, float]] = []
        self.failList: Exception | None = None

    def listSessions(self) -> Deferred[list[bytes]]:
        if self.failList is not None:
            return self._hold(fail(self.failList))
        return super().listSessions()

    def touchSession(self, token: bytes, lastSeen: float) -> Deferred[None]:
        if self.dead:
            return Deferred()
        self.touched.append((token, lastSeen))
        return super().touchSession(token, lastSeen)

    def recordProcessed(
        self, token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        if self.dead:
            return Deferred()
        return super().recordProcessed(token, upTo, rejections)


class Server(RecordingServerFactory):
    """A recording server whose application answers nothing by itself."""

    def __init__(self, store: ServerStore) -> None:
        super().__init__(reply=False)
        self.store = store
        self.flags: list[tuple[bytes, bool]] = []


def serve(
    store: ServerStore, clock: Clock | None = None, client: RecordingClientFactory | None = None
) -> tuple[Network, Server, RecordingClientFactory]:
    """A server on ``store`` (started: its sessions load) and a client (a
    new one by default) on one network; not connected yet."""
    server = Server(store)
    client = client if client is not None else RecordingClientFactory()
    network = Network(client, server, clock if clock is not None else Clock())
    return network, server, client


def restart(network: Network, old: ServerStore, store: ServerStore) -> Server:
    """The server's process dies (its store answers nothing more, its
    connection is cut) and a new one starts on ``store``; the client
    reconnects by itself."""
    old.dead = True
    wire = network.current
    if wire is not None:
        wire.cut()
    server = Server(store)
    server.clock = network.clock
    network.serverFactory = server
    server.doStart()  # type: ignore[no-untyped-call]
    return server


def sessionsIn(store: ServerStore) -> dict[bytes, StoredSession]:
    """The records the store holds now, by token."""
    return {record.token: record for record in store.records()}


def test_forProtocol() -> None:
    """``AliveServerFactory.forProtocol(P, store=...)`` keeps ``store``."""
    store = MemorySessionStore()
    factory = cast(
        AliveServerFactory, AliveServerFactory.forProtocol(HeartbeatProtocol, store=store)
    )
    assert factory.store is store and factory.protocol is HeartbeatProtocol
    assert AliveServerFactory().store is None
    assert result(AliveServerFactory().recovered()) == []


def test_newSessionStoredBeforeHello() -> None:
    """A new session is created in the store (epoch 1) before the HELLO
    that tells the client its token: until the store committed it, the
    client's connection does not open."""
    store = ServerStore()
    network, server, client = serve(store)
    store.holding = True
    network.connect()
    network.flush()
    assert client.connected is None
    assert store.records() and store.records()[0].epoch == 1  # applied, not committed
    store.release()
    network.flush()
    assert client.connected is not None
    (record,) = store.records()
    assert client.session.token == record.token != NO_SESSION
    assert server.epochOf(server.sessions[server._key(record.token)]) == 1


def test_createFailedAborts() -> None:
    """A session the store fails to create is never offered: the
    connection is aborted (no HELLO, no SESSION_UNKNOWN), and the client's
    next connection gets a session."""
    store = ServerStore()
    network, server, client = serve(store)
    store.holding = True
    network.connect()
    network.flush()
    store.release(error=StoreError("disk full"))
    store.holding = False
    network.flush()
    assert client.connected is None and len(server.sessions) == 0
    assert client.lastLoss is not None and client.lastLoss.reason is Reason.RESET
    network.run(lambda: client.connected is not None)
    assert client.session.token in sessionsIn(store) and len(server.sessions) == 1


def test_helloWaitsForLoad() -> None:
    """A client that resumes while the restarted server still loads its
    store waits for the load, then resumes: never SESSION_UNKNOWN for a
    session the store holds."""
    inner = MemorySessionStore()
    first = ServerStore(inner)
    network, server, client = serve(first)
    network.connect()
    network.flush()
    token = client.session.token
    second = ServerStore(inner)
    second.holding = True
    server = restart(network, first, second)
    network.advance(5)
    assert client.connected is None and client.losses.get(Reason.LOCAL_CLOSE) is None
    assert not server.sessions
    second.holding = False
    second.release()
    network.run(lambda: client.connected is not None)
    assert client.session.token == token and server.sessionsResumed == 1
    assert client.connected is not None and client.connected._alive.resumed


def test_recoveredAfterRestart() -> None:
    """Messages the server's application sent that the client had not
    confirmed when the server died are stored: the next server process
    gets them from `recovered` (with the session's token), sends them once
    the client resumes, and each Deferred fires with its `Receipt`; the
    client gets each once, in order."""
    inner = MemorySessionStore()
    first = ServerStore(inner)
    network, server, client = serve(first)
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    first.holding = True
    ds = [proto.sendMessage(b"%d" % i) for i in range(3)]
    network.flush()
    assert client.received == []  # not sent before stored
    first.release()
    wire = network.current
    assert wire is not None
    wire.step(0)  # (nothing delivered yet)
    token = client.session.token
    second = ServerStore(inner)
    server = restart(network, first, second)
    recovered = result(server.recovered())
    assert [(t, p) for t, p, _ in recovered] == [(token, b"0"), (token, b"1"), (token, b"2")]
    network.run(lambda: all(d.called for _, _, d in recovered))
    assert client.received == [b"0", b"1", b"2"]
    assert [cast(Receipt, result(d)).seq for _, _, d in recovered] == [1, 2, 3]
    assert sessionsIn(second)[token].messages == ()
    for d in ds:  # the dead process's: never fired
        assert not d.called


def test_outboundStoredAndDropped() -> None:
    """The server's messages are appended to the store under the
    session's token before they are sent, and dropped once confirmed."""
    store = ServerStore()
    network, server, client = serve(store)
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    d = proto.sendMessages([b"a", b"b"])
    token = client.session.token
    assert store.appended == [(token, [1, 2])]
    network.run(lambda: d.called)
    assert cast(Receipt, result(d)).seq == 2
    assert sessionsIn(store)[token].messages == () and sessionsIn(store)[token].confirmedUpTo == 2


def test_sendBeforeSession() -> None:
    """With a store, a server protocol that sends before its connection has
    a session is told so at once: the message has no session to be stored
    in."""
    store = ServerStore()
    network, server, client = serve(store)
    network.connect()
    proto = network.current.server  # type: ignore[union-attr]
    error = errorOf(proto.sendMessage(b"early"))
    assert isinstance(error, DeliveryFailed)
    assert str(error) == (
        "message not sent: the sessions are kept in a store, and this connection has no "
        "session yet; send once it is open (connectionOpened)"
    )


def errorOf(d: Deferred[Any]) -> BaseException:
    """The exception a failed Deferred holds."""
    box: list[Any] = []
    d.addErrback(lambda f: box.append(f.value))
    assert box, "not failed"
    return cast(BaseException, box[0])


def test_expiredDeleted() -> None:
    """A session whose client does not come back within ``sessionTTL`` is
    deleted from the store when it expires (by the factory's timer), and
    its unconfirmed messages fail."""
    store = ServerStore()
    network, server, client = serve(store)
    server.sessionTTL = 30.0
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    client.stopTrying()
    cast(Any, client).continueTrying = 0
    wire = network.current
    assert wire is not None
    wire.stall()
    d = proto.sendMessage(b"never")
    network.advance(200)
    assert len(server.sessions) == 0 and store.records() == []
    assert "the session expired" in str(errorOf(d))


def test_closedByClientDeleted() -> None:
    """A client that closes its session in order: the server deletes it
    from the store."""
    store = ServerStore()
    network, server, client = serve(store)
    network.connect()
    network.flush()
    assert len(store.records()) == 1
    client.close()
    network.run(lambda: network.current is None)
    assert store.records() == [] and len(server.sessions) == 0


def test_evictedDeleted() -> None:
    """Beyond ``maxSessions`` sessions without connection, the least
    recently seen is dropped from the table and deleted from the store."""
    store = ServerStore()
    network, server, client = serve(store)
    server.maxSessions = 1
    tokens = []
    for _ in range(3):
        network.connect()
        network.flush()
        tokens.append(client.session.token)
        wire = network.current
        assert wire is not None
        cast(Any, client).continueTrying = 0
        wire.cut()
        network.flush()
        client.session.token = NO_SESSION  # the next connection asks for a new one
        cast(Any, client).continueTrying = 1
    assert set(sessionsIn(store)) == {tokens[-1]} and len(server.sessions) == 1


def storeWith(*records: StoredSession) -> ServerStore:
    """A store holding ``records``."""
    store = ServerStore()
    for record in records:
        result(store.inner.createSession(record))
    return store


def test_loadExpiresInStore() -> None:
    """At start, the store forgets the sessions last seen more than
    ``sessionTTL`` ago (`expireSessions`); the others are loaded, least
    recently seen first, and beyond ``maxSessions`` the oldest are dropped
    and deleted."""
    clock = Clock()
    clock.advance(1000)
    store = storeWith(
        StoredSession(b"a" * 16, 1, lastSeen=100.0),
        StoredSession(b"b" * 16, 3, lastSeen=800.0),
        StoredSession(b"c" * 16, 2, lastSeen=900.0),
        StoredSession(b"d" * 16, 1, lastSeen=950.0),
    )
    server = Server(store)
    server.sessionTTL = 300.0
    server.maxSessions = 2
    server.clock = clock
    server.doStart()  # type: ignore[no-untyped-call]
    assert result(server.recovered()) == []
    assert set(sessionsIn(store)) == {b"c" * 16, b"d" * 16}
    assert {session.token for session in server.sessions.values()} == {b"c" * 16, b"d" * 16}
    assert server.epochOf(server.sessions[server._key(b"c" * 16)]) == 2


def test_epochKeptAcrossRestart() -> None:
    """A stored session keeps its epoch and its positions across a
    restart of the server: the client resumes it (gap-free) and what it
    sends next is processed once."""
    inner = MemorySessionStore()
    store = ServerStore(inner)
    result(inner.createSession(StoredSession(TOKEN, 7, lastSeen=0.0)))
    network, server, client = serve(store)
    client.session.token = TOKEN
    network.connect()
    network.flush()
    conn = client.connected._alive if client.connected is not None else None
    assert conn is not None and conn.resumed
    session = server.sessions[server._key(TOKEN)]
    assert server.epochOf(session) == 7 and sessionsIn(store)[TOKEN].epoch == 7


def test_corruptStoreAtStart() -> None:
    """A store that cannot be read at start: `recovered` fails with its
    error, a client's HELLO is not answered SESSION_UNKNOWN (its connection
    is aborted), and nothing is deleted."""
    store = storeWith(StoredSession(TOKEN, 1, lastSeen=0.0))
    store.failList = CorruptStore("session store x.db is not a twisted_alive session store")
    network, server, client = serve(store)
    error = errorOf(server.recovered())
    assert isinstance(error, CorruptStore)
    assert str(error) == "session store x.db is not a twisted_alive session store"
    client.session.token = TOKEN
    network.connect()
    network.flush()
    assert client.connected is None
    assert client.lastLoss is not None and client.lastLoss.reason is Reason.RESET
    assert client.session.token == TOKEN  # no SESSION_UNKNOWN: nothing reset
    store.failList = None
    assert set(sessionsIn(store)) == {TOKEN}


def test_clientStoreRefused() -> None:
    """A store holding a client's session (no token) is refused at start,
    and left as it is."""
    store = storeWith(StoredSession(NO_SESSION, 1))
    network, server, client = serve(store)
    error = errorOf(server.recovered())
    assert isinstance(error, StoreError)
    assert str(error) == (
        f"{store!r} holds a client's session (one without a token): a server needs a "
        "session store of its own"
    )
    assert len(store.records()) == 1


def test_oneFactoryPerStore() -> None:
    """A second factory on a store that a started factory keeps its
    sessions in is refused (one exact error) instead of loading, expiring
    and deleting the other's sessions; once the first stopped, another may
    take the store. A client factory is refused likewise."""
    store = storeWith(StoredSession(b"\x01" * 16, 1, lastSeen=1000.0))
    first = Server(store)
    first.clock = Clock()
    first.clock.advance(1000)
    first.doStart()  # type: ignore[no-untyped-call]
    assert len(result(first.recovered())) == 0
    second = Server(store)
    error = errorOf(second.recovered())
    assert isinstance(error, StoreError)
    assert str(error) == (
        f"{store!r} keeps the sessions of {first!r} already: each factory needs a session "
        "store of its own (one factory may listen on several ports)"
    )
    client = errorOf(AliveClientFactory(store=store).recovered())
    assert isinstance(client, StoreError) and "each factory needs" in str(client)
    assert len(store.records()) == 1
    first.doStop()  # type: ignore[no-untyped-call]
    third = Server(store)
    third.clock = first.clock
    assert result(third.recovered()) == []
    assert len(store.records()) == 1


def test_storeTooSmall() -> None:
    """A store that keeps less per session than the protocol's window and
    queue may hold is refused at start."""
    store = ServerStore(MemorySessionStore(StoreLimits(maxMessages=3)))
    network, server, client = serve(store)
    error = errorOf(server.recovered())
    assert isinstance(error, ValueError) and str(error).startswith("the store keeps 3 messages (")


def test_touchedNotPerFrame() -> None:
    """The store hears when a session was seen when a connection takes it
    or leaves it, and every `touchInterval` while carried: not per frame."""
    store = ServerStore()
    network, server, client = serve(store)
    server.sessionTTL = 40.0
    assert server.touchInterval == 10.0
    network.connect()
    network.flush()
    token = client.session.token
    assert store.touched == [(token, 0.0)]
    proto = network.current.server  # type: ignore[union-attr]
    ds = [proto.sendMessage(b"%d" % i) for i in range(50)]
    network.run(lambda: all(d.called for d in ds))
    assert len(store.touched) == 1
    network.advance(25)
    assert [seen for _, seen in store.touched] == [0.0, 10.0, 20.0]
    wire = network.current
    assert wire is not None
    wire.cut()
    network.flush()
    assert store.touched[-1] == (token, 25.0)
    assert sessionsIn(store)[token].lastSeen == 25.0


def test_stopKeepsSessions() -> None:
    """A server that stops keeps its sessions in the store (the next
    process resumes them); its pending Deferreds fail, saying the message
    stays stored."""
    store = ServerStore()
    network, server, client = serve(store)
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    token = client.session.token
    cast(Any, client).continueTrying = 0
    wire = network.current
    assert wire is not None
    wire.stall()
    d = proto.sendMessage(b"later")
    wire.cut()
    network.flush()
    server.doStop()  # type: ignore[no-untyped-call]
    assert set(sessionsIn(store)) == {token}
    assert sessionsIn(store)[token].messages == ((1, b"later"),)
    assert str(errorOf(d)).startswith(
        "the server stopped (the message stays in the session store, for the next process) "
        "before confirmation"
    )


def test_storeFailureEndsSession() -> None:
    """A store operation of a session that fails (an append) ends that
    session: its connection is aborted, its messages fail, the others go
    on."""
    store = ServerStore()
    network, server, client = serve(store)
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    store.holding = True
    d = proto.sendMessage(b"x")
    store.release(error=StoreError("disk I/O error"))
    store.holding = False
    network.flush()
    assert proto.loss is not None and "session store failed: disk I/O error" in str(proto.loss)
    assert isinstance(errorOf(d), DeliveryFailed)
    assert len(server.sessions) == 0
    store.release()  # (the deletion of the session, held behind the failure)
    network.run(lambda: client.connected is not None)
    assert client.epoch == 2  # the client was told: a new session


class Flagging(EchoServer):
    """Records each message with its `currentMessage` flag (whether a
    previous process may have processed it already)."""

    factory: Server

    def messageReceived(self, payload: bytes) -> Deferred[object] | None:
        info = self.currentMessage
        session = self.session
        assert info is not None and session is not None and info.session == session.token
        self.factory.flags.append((payload, info.redelivered))
        return super().messageReceived(payload)


class ServerInTransaction(HeartbeatProtocol):
    """Inserts each message into the table, in the store's transaction."""

    def messageReceivedInTransaction(self, payload: bytes, cursor: Cursor) -> None:
        cursor.insert(payload)


class ServerProcess:
    """One server process on a `LazyStore` over the shared ``inner`` store
    (the file): its operations are applied when the test commits them, and
    a crash loses the rest. With a ``table``, its protocol works in the
    store's transaction (a `LazyTransactionalStore` filling ``table``)."""

    def __init__(
        self,
        inner: MemorySessionStore,
        network: Network,
        flags: list[tuple[bytes, bool]],
        table: Table | None = None,
    ) -> None:
        self.store = LazyStore(inner) if table is None else LazyTransactionalStore(inner, table)
        self.server = Server(cast(ServerStore, self.store))
        cast(Any, self.server).protocol = Flagging if table is None else ServerInTransaction
        self.server.flags = flags
        self.server.clock = network.clock
        network.serverFactory = self.server
        self.server.doStart()  # type: ignore[no-untyped-call]

    def crash(self, network: Network) -> None:
        """The process dies: nothing more is committed, its connection is
        cut (the client reconnects)."""
        self.store.dead = True
        wire = network.current
        if wire is not None:
            wire.cut()


@pytest.mark.parametrize("transactional", [False, True])
@pytest.mark.parametrize("seed", range(25))
def test_serverCrashedAtRandomPoints(seed: int, transactional: bool) -> None:
    """A server whose store commits at random points is crashed three
    times while a client sends 60 messages: the client resumes every time
    (never a new session), and every Deferred of the client fires with its
    Receipt. With ``messageReceived`` the server's application gets every
    message in order, each at most once more per crash (the one being
    processed when it died), every repeat flagged ``redelivered``; with
    ``messageReceivedInTransaction``, every message exactly once."""
    rng = random.Random(seed)
    inner = MemorySessionStore()
    flags: list[tuple[bytes, bool]] = []
    table = Table() if transactional else None
    client = RecordingClientFactory()
    network = Network(client, Server(ServerStore()), Clock())
    process = ServerProcess(inner, network, flags, table)
    ds = [client.sendMessage(b"%d" % i) for i in range(60)]
    network.connect()
    crashes = 0
    while not all(d.called for d in ds):
        if crashes < 3 and rng.random() < 0.03:
            process.crash(network)
            crashes += 1
            process = ServerProcess(inner, network, flags, table)
        else:
            process.store.commit(rng.randint(0, 3))
            wire = network.current
            if wire is not None:
                wire.deliver(rng.randint(1, 200), network.clock)
            if rng.random() < 0.2:
                network.clock.advance(0.5)
    assert client.epoch == 1  # never a new session (sessionReset)
    assert [cast(Receipt, result(d)).seq for d in ds] == list(range(1, 61))
    expected = [b"%d" % i for i in range(60)]
    if table is not None:
        assert table.rows == expected, seed
        return
    kept, repeated = withoutRepeats(flags, itemgetter(0))
    assert all(redelivered for _, redelivered in repeated), seed
    assert [payload for payload, _ in kept] == expected, seed
    assert len(repeated) <= crashes, seed


def test_recoveredFailWhenSessionExpires() -> None:
    """A message a previous process sent in a session whose client never
    comes back: its Deferred from `recovered` fails when the session
    expires, and the session is deleted from the store."""
    store = storeWith(StoredSession(TOKEN, 1, nextSeq=2, lastSeen=0.0, messages=((1, b"hi"),)))
    server = Server(store)
    server.sessionTTL = 60.0
    clock = Clock()
    server.clock = clock
    server.doStart()  # type: ignore[no-untyped-call]
    ((token, payload, d),) = result(server.recovered())
    assert (token, payload, d.called) == (TOKEN, b"hi", False)
    clock.advance(61)
    assert str(errorOf(d)) == "the session expired before confirmation"
    assert store.records() == []


class SmallFrames(RecordingClient):
    """A client that accepts frames of 128 bytes at most."""

    maxFrameSize = 128


def test_tooLargeForClient() -> None:
    """A server message larger than the client accepts fails at once in a
    stored session: neither stored nor sent."""
    store = ServerStore()
    client = RecordingClientFactory()
    client.protocol = SmallFrames
    network, server, client = serve(store, client=client)
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    error = errorOf(proto.sendMessage(b"x" * 200))
    assert str(error) == (
        "message of 200 bytes exceeds the peer's maximum of 119 bytes; not stored, not sent"
    )
    assert store.appended == []


@pytest.mark.timeout(20)
@ensureDeferred
async def test_corruptSqliteFile(tmp_path: Path) -> None:
    """A server on a SQLite file that is not a session store: `recovered`
    fails with `CorruptStore`, saying so, and the file is left as it is."""
    path = tmp_path / "sessions.db"
    content = b"not a database, just some bytes " * 8
    path.write_bytes(content)
    store = SqliteSessionStore(path, reactor=getReactor())
    server = AliveServerFactory(store)
    server.clock = Clock()
    try:
        with pytest.raises(CorruptStore) as caught:
            await server.recovered()
    finally:
        await store.close()
    assert str(caught.value) == (
        f"{path} is not a twisted_alive session store: it cannot be read as a SQLite "
        "database (file is not a database); it was left as it is"
    )
    assert path.read_bytes() == content


def test_failureAfterTheEnd() -> None:
    """A store write that fails after its session ended (the processed
    position written after the session was deleted) ends nothing more: the
    session's next one goes on."""
    store = ServerStore()
    network, server, client = serve(store)
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    binding = proto._binding
    server._failSession(binding.session, "over")
    server._table.remove(server._key(binding.session.token))
    server._storeFailed(binding, Failure(StoreError("the store holds no session")))  # type: ignore[no-untyped-call]
    assert proto.loss is None


def test_transactionalNeedsTransactionalStore() -> None:
    """A server whose protocol works in the store's transaction, on a store
    that cannot run it: the factory refuses to start, and `recovered`
    fails, with the exact reason."""
    store = MemorySessionStore()
    server = AliveServerFactory.forProtocol(ServerInTransaction, store=store)
    why = (
        "ServerInTransaction defines messageReceivedInTransaction(), which needs a session "
        "store that runs it in its own transaction (ITransactionalStore, such as "
        f"SqliteSessionStore), but the session is kept in {store!r}"
    )
    with pytest.raises(TypeError) as caught:
        server.doStart()  # type: ignore[no-untyped-call]
    assert str(caught.value) == why
    error = errorOf(cast(AliveServerFactory, server).recovered())
    assert isinstance(error, TypeError) and str(error) == why


class OneInFlight(EchoServer):
    """Sends one message at a time."""

    maxInFlight = 1


def test_storeClosedKeepsSessions() -> None:
    """A store closed under a session (the server's process stops: the
    reactor's shutdown closes it first) ends nothing: the ACK that follows
    cannot be committed, so the server stops using the session (its
    connection aborted), fails what is unconfirmed saying the store keeps
    it, refuses HELLOs from then on (by aborting: the client keeps its
    session and retries), and logs no error; the next process resumes the
    session and delivers what was unconfirmed."""
    inner = MemorySessionStore()
    first = ServerStore(inner)
    network, server, client = serve(first)
    server.protocol = OneInFlight
    network.connect()
    network.flush()
    proto = network.current.server  # type: ignore[union-attr]
    token = client.session.token
    ds = [proto.sendMessage(b"%d" % i) for i in range(2)]
    kept = first.inner
    closed = MemorySessionStore()
    closed.close()
    first.inner = closed  # closed, after committing what was called before
    with capturedLogs() as logs:
        network.run(lambda: proto.loss is not None)  # the first ACK cannot be committed
        network.clock.advance(5)  # the client retries: refused
        network.flush()
    assert isinstance(result(ds[0]), Receipt)  # (with the ACK)
    assert str(errorOf(ds[1])) == (
        "the session store closed (the message stays in the session store, for the next "
        "process) before confirmation"
    )
    assert proto.loss is not None and "the session store is closed" in str(proto.loss)
    assert [e["log_level"] for e in logs if e["log_level"] >= LogLevel.warn] == []
    assert client.connections >= 2  # it retried, and was refused
    assert client.epoch == 1 and client.session.token == token  # not reset
    assert sessionsIn(ServerStore(kept))[token].messages == ((1, b"0"), (2, b"1"))

    second = ServerStore(kept)
    server = restart(network, first, second)
    recovered = result(server.recovered())
    network.run(lambda: all(d.called for _, _, d in recovered))
    assert client.received == [b"0", b"1"] and client.epoch == 1  # each once
    assert [cast(Receipt, result(d)).seq for _, _, d in recovered] == [1, 2]


def test_serverStoreWentBackResetsClient() -> None:
    """A server restarted on a backup of its store (or on one that lost its
    last commits) has its sessions' positions go back: a client (here one
    without a store) that processed more than the restored session sent is
    refused (GOODBYE(PROTOCOL_ERROR) instead of the server's HELLO); it
    starts a new session at once (`sessionReset`, the next epoch) instead of retrying
    the old one forever."""
    inner = MemorySessionStore()
    first = ServerStore(inner)
    network, server, client = serve(first)
    network.connect()
    network.flush()
    backup = MemorySessionStore()
    for record in first.records():
        result(backup.createSession(record))
    proto = network.current.server  # type: ignore[union-attr]
    ds = [proto.sendMessage(b"%d" % i) for i in range(2)]
    network.run(lambda: all(d.called for d in ds))
    assert client.received == [b"0", b"1"]
    server = restart(network, first, ServerStore(backup))
    result(server.recovered())
    network.run(lambda: client.epoch == 2)
    assert str(client.lastLoss) == (
        "PROTOCOL_ERROR: peer said GOODBYE PROTOCOL_ERROR: HELLO next_expected 3 is beyond "
        "the 0 messages sent"
    )
    network.run(lambda: client.connected is not None)
    assert client.losses[Reason.PROTOCOL_ERROR] == 1  # (and the RESET of the restart)
    d = client.sendMessage(b"after")
    network.run(lambda: d.called)
    assert cast(Receipt, result(d)).seq == 1
