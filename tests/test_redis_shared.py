"""
Sessions shared by several server factories through one real Redis
(`RedisSessionStore`), over real loopback sockets, in one process: each
factory has a store of its own, as each process of a deployment has, so
that they hold sessions apart and fence each other as processes do. A
client that comes back through another factory resumes its session there
(a takeover); the factory that held it lets go and closes its connection;
a stale holder gets no write through; `AliveServerFactory.sendTo` reaches
the session from any factory, once, with its `Receipt`; ``/health`` says
``degraded`` while Redis does not answer.

The same with real processes and a proxy: ``tests/test_redis_cluster_real.py``.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
import treq
import txredisapi
from support import (
    LOOPBACK,
    QuickReconnecting,
    RedisServer,
    asyncYieldFixture,
    elapse,
    ensureDeferred,
    freePort,
    getReactor,
    waitFor,
    within,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure

from twisted_alive import (
    AliveServerFactory,
    DeliveryFailed,
    HeartbeatProtocol,
    Receipt,
    RedisSessionStore,
    sessionIdOf,
)
from twisted_alive._factories import NOT_STORED, TAKEN_OVER
from twisted_alive._reasons import Reason
from twisted_alive.service.status import statusSite

_prefixes = itertools.count()


class Forwarder(Factory[Protocol]):
    """
    A TCP forwarder whose target can change: each new connection goes to
    ``port`` as it is then. `cut` resets every pair; `abandon` resets only
    the client's side and leaves the server's side open and silent (a
    client gone without a trace, as a dead NAT entry leaves it).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.pairs: list[tuple[Protocol, Protocol]] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        return _Front(self)

    def cut(self) -> None:
        for front, back in self.pairs:
            for side in (front, back):
                if side.transport is not None:
                    side.transport.abortConnection()  # type: ignore[attr-defined]
        self.pairs.clear()

    def abandon(self) -> None:
        for front, back in self.pairs:
            cast_front: Any = front
            cast_front.silent = True
            back_: Any = back
            back_.silent = True
            if front.transport is not None:
                front.transport.abortConnection()  # type: ignore[attr-defined]
        self.pairs.clear()


class _Back(Protocol):
    silent = False

    def __init__(self, front: _Front) -> None:
        self.front = front

    def connectionMade(self) -> None:
        self.front.back = self
        self.front.forwarder.pairs.append((self.front, self))
        assert self.transport is not None and self.front.transport is not None
        if self.front.pending:
            self.transport.write(b"".join(self.front.pending))
            self.front.pending.clear()
        self.front.transport.resumeProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if not self.silent and self.front.transport is not None:
            self.front.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.silent and self.front.transport is not None:
            self.front.transport.loseConnection()


class _BackFactory(ClientFactory):
    def __init__(self, front: _Front) -> None:
        self.front = front

    def buildProtocol(self, addr: Any) -> _Back:
        return _Back(self.front)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self.front.transport is not None:
            self.front.transport.abortConnection()  # type: ignore[attr-defined]


class _Front(Protocol):
    silent = False

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self.back: _Back | None = None
        self.pending: list[bytes] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        getReactor().connectTCP(LOOPBACK, self.forwarder.port, _BackFactory(self))

    def dataReceived(self, data: bytes) -> None:
        if self.back is None:
            self.pending.append(data)
        elif self.back.transport is not None:
            self.back.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.silent and self.back is not None and self.back.transport is not None:
            self.back.transport.loseConnection()


class Recorder(HeartbeatProtocol):
    """A server application that records what it processes, with the
    process (factory) it ran in and whether it was flagged redelivered."""

    heartbeatInterval = 0.5

    def messageReceived(self, payload: bytes) -> None:
        info = self.currentMessage
        assert info is not None
        self.factory.processed.append((self.factory.name, payload, info.seq, info.redelivered))


class Collector(HeartbeatProtocol):
    heartbeatInterval = 0.5

    def messageReceived(self, payload: bytes) -> None:
        if payload.startswith(b"bad"):
            raise ValueError("no such command")
        self.factory.got.append(payload)


class Client(QuickReconnecting):
    protocol = Collector

    def __init__(self) -> None:
        super().__init__()
        self.got: list[bytes] = []


class Server(AliveServerFactory):
    protocol = Recorder
    pollInterval = 0.05

    def __init__(self, name: str, store: RedisSessionStore) -> None:
        super().__init__(store)
        self.name = name
        self.processed: list[tuple[str, bytes, int, bool]] = []


class Deployment:
    """Two server factories ("A", "B"), each with its own store on the
    same Redis keys, each listening on 127.0.0.1; a forwarder in front,
    and a client through it."""

    def __init__(self, redis: RedisServer) -> None:
        prefix = f"shared{next(_prefixes)}:"
        reactor = getReactor()
        self.stores = {
            name: RedisSessionStore(reactor, LOOPBACK, redis.port, prefix=prefix)
            for name in "AB"
        }
        self.servers = {name: Server(name, store) for name, store in self.stores.items()}
        self.ports = {
            name: reactor.listenTCP(0, server, interface=LOOPBACK)
            for name, server in self.servers.items()
        }
        self.forwarder = Forwarder(self.portOf("A"))
        self.front = reactor.listenTCP(0, self.forwarder, interface=LOOPBACK)
        self.client = Client()
        self.prefix = prefix
        self.redis = txredisapi.lazyConnection(
            LOOPBACK, redis.port, charset=None, convertNumbers=False
        )

    def portOf(self, name: str) -> int:
        return int(self.ports[name].getHost().port)

    async def connect(self) -> Any:
        getReactor().connectTCP(LOOPBACK, self.front.getHost().port, self.client)
        return await within(self.client.whenConnected(), 10)

    def routeTo(self, name: str) -> None:
        self.forwarder.port = self.portOf(name)

    async def sessionField(self, token: bytes, field: str) -> bytes | None:
        value: bytes | None = await self.redis.hget(f"{self.prefix}s:{token.hex()}", field)
        return value

    async def stop(self) -> None:
        self.client.stopTrying()
        connector = self.client.connector
        if connector is not None:
            connector.disconnect()
        self.forwarder.cut()
        await self.front.stopListening()
        for port in self.ports.values():
            await port.stopListening()
        for server in self.servers.values():
            for proto in list(server.connections):
                if proto.transport is not None:
                    proto.transport.abortConnection()
        for store in self.stores.values():
            await store.close()
        await self.redis.disconnect()


@asyncYieldFixture
async def deployment(redisServer: RedisServer) -> AsyncIterator[Deployment]:
    made = Deployment(redisServer)
    yield made
    await made.stop()


@ensureDeferred
async def test_resumeOnAnotherProcess(deployment: Deployment) -> None:
    """A client that comes back through another server resumes its session
    there: what it had sent and what it sends next are each processed
    once, in order; the server that held the session lets go of it."""
    a, b = deployment.servers["A"], deployment.servers["B"]
    proto = await deployment.connect()
    token = proto.session.token
    for n in range(1, 4):
        receipt = await within(deployment.client.sendMessage(b"%d" % n), 10)
        assert isinstance(receipt, Receipt) and receipt.seq == n
    assert await deployment.sessionField(token, "epoch") == b"1"
    deployment.routeTo("B")
    deployment.forwarder.cut()
    pending = [deployment.client.sendMessage(b"%d" % n) for n in range(4, 8)]
    receipts = [await within(d, 10) for d in pending]
    assert [r.seq for r in receipts] == [4, 5, 6, 7]
    assert b.sessionsTakenOver == 1 and a.sessionsTakenOver == 0
    assert await deployment.sessionField(token, "epoch") == b"2"
    await waitFor(lambda: a.sessionsLostToOthers == 1, 5, "A to let go of the session")
    assert len(a.sessions) == 0 and len(b.sessions) == 1
    processed = [(name, payload) for name, payload, _, _ in a.processed + b.processed]
    assert processed == [("A", b"1"), ("A", b"2"), ("A", b"3")] + [
        ("B", b"%d" % n) for n in range(4, 8)
    ]
    # Back to A: A takes it again (a third epoch); B lets go.
    deployment.routeTo("A")
    deployment.forwarder.cut()
    receipt = await within(deployment.client.sendMessage(b"8"), 10)
    assert receipt.seq == 8 and a.sessionsTakenOver == 1
    assert await deployment.sessionField(token, "epoch") == b"3"
    await waitFor(lambda: b.sessionsLostToOthers == 1, 5, "B to let go of the session")
    assert a.processed[-1][:3] == ("A", b"8", 8)


@ensureDeferred
async def test_resumeOnTheSameProcessKeepsItsEpoch(deployment: Deployment) -> None:
    """A client that comes back to the server that holds its session
    resumes it there without a takeover: the epoch stays."""
    a = deployment.servers["A"]
    proto = await deployment.connect()
    token = proto.session.token
    await within(deployment.client.sendMessage(b"1"), 10)
    deployment.forwarder.cut()
    await within(deployment.client.sendMessage(b"2"), 10)
    assert a.sessionsResumed == 1 and a.sessionsTakenOver == 0
    assert await deployment.sessionField(token, "epoch") == b"1"


@ensureDeferred
async def test_serverMessagesFollowTheSession(deployment: Deployment) -> None:
    """What a server's application sent in the session and its client did
    not confirm yet is delivered by the server that takes the session
    over, once, in order."""
    a = deployment.servers["A"]
    proto = await deployment.connect()
    await within(deployment.client.sendMessage(b"hello"), 10)
    (serverSide,) = a.connections
    # The client stops reading: what A sends stays unconfirmed.
    proto.transport.pauseProducing()
    outcomes: list[object] = []
    for n in range(1, 6):
        serverSide.sendMessage(b"s%d" % n).addBoth(outcomes.append)
    await deployment.stores["A"].flush()
    deployment.routeTo("B")
    deployment.forwarder.cut()
    await waitFor(lambda: len(deployment.client.got) == 5, 10, "the five messages via B")
    assert deployment.client.got == [b"s%d" % n for n in range(1, 6)]
    # A's Deferreds fail: the session moved; B delivered them.
    await waitFor(lambda: len(outcomes) == 5, 5, "A to let go of the session")
    assert all(isinstance(o, Failure) and isinstance(o.value, DeliveryFailed) for o in outcomes)
    first = outcomes[0]
    assert isinstance(first, Failure)
    assert first.getErrorMessage() == (
        "the session moved to another process, which delivers the message before confirmation"
    )


@ensureDeferred
async def test_sendToFromAnyProcess(deployment: Deployment) -> None:
    """`sendTo` from the server that does not hold the session, and from
    the one that does: each message reaches the client once, in order,
    and each Deferred fires with its Receipt."""
    a, b = deployment.servers["A"], deployment.servers["B"]
    proto = await deployment.connect()
    sessionId = proto.sessionId
    assert sessionId == sessionIdOf(proto.session.token) and len(sessionId) == 32
    fromB = [b.sendTo(sessionId, b"b%d" % n) for n in range(100)]
    fromA = [a.sendTo(sessionId, b"a%d" % n) for n in range(100)]
    receipts = [await within(d, 10) for d in fromB + fromA]
    assert all(isinstance(r, Receipt) for r in receipts)
    assert sorted(r.seq for r in receipts) == list(range(1, 201))
    got = deployment.client.got
    expected = [b"b%d" % n for n in range(100)] + [b"a%d" % n for n in range(100)]
    assert sorted(got) == sorted(expected)
    assert [m for m in got if m.startswith(b"b")] == [b"b%d" % n for n in range(100)]
    assert [m for m in got if m.startswith(b"a")] == [b"a%d" % n for n in range(100)]


@ensureDeferred
async def test_sendToWaitsForTheClient(deployment: Deployment) -> None:
    """A message sent to a session whose client is away is delivered when
    the client comes back, on another server."""
    a = deployment.servers["A"]
    proto = await deployment.connect()
    sessionId = proto.sessionId
    deployment.forwarder.port = freePort()  # nothing listens: the client keeps trying
    deployment.forwarder.cut()
    await waitFor(lambda: not a.connections, 5, "the connection to end")
    d = a.sendTo(sessionId, b"while away")
    await elapse(0.3)  # (the client is away: nothing can be delivered)
    assert not d.called and deployment.client.got == []
    deployment.routeTo("B")
    receipt = await within(d, 10)
    assert isinstance(receipt, Receipt)
    assert deployment.client.got == [b"while away"]


@ensureDeferred
async def test_sendToUnknownSession(deployment: Deployment) -> None:
    """`sendTo` a session id no session has: `DeliveryFailed`, at once
    from Redis's answer, never processed."""
    a = deployment.servers["A"]
    await deployment.connect()
    with pytest.raises(DeliveryFailed, match="no session 0{32} in the store") as caught:
        await within(a.sendTo("0" * 32, b"nobody"), 10)
    assert caught.value.maybeProcessed is False


@ensureDeferred
async def test_staleHolderIsClosedAndFenced(deployment: Deployment) -> None:
    """
    The client abandons its connection to A without a trace (A's side
    stays open) and resumes through B. A never gets a write through for
    the session again: its application's send is refused by the store,
    and A closes the connection it still has, with GOODBYE(SHUTTING_DOWN,
    "session taken over by another connection").
    """
    a, b = deployment.servers["A"], deployment.servers["B"]
    a.pollInterval = 3600.0  # A does not learn it from polling in time
    proto = await deployment.connect()
    token = proto.session.token
    await within(deployment.client.sendMessage(b"1"), 10)
    (stale,) = a.connections
    deployment.routeTo("B")
    deployment.forwarder.abandon()
    await within(deployment.client.sendMessage(b"2"), 10)
    assert b.sessionsTakenOver == 1
    assert stale.loss is None  # A's side is still open
    before = await deployment.redis.lrange(f"{deployment.prefix}m:{token.hex()}", 0, -1)
    with pytest.raises(DeliveryFailed) as refused:
        await within(stale.sendMessage(b"from the stale holder"), 10)
    assert str(refused.value) == NOT_STORED
    assert refused.value.maybeProcessed is False
    await waitFor(lambda: stale.loss is not None, 5, "A to close its connection")
    loss = stale.loss
    assert loss is not None and loss.reason is Reason.LOCAL_CLOSE and TAKEN_OVER in loss.detail
    after = await deployment.redis.lrange(f"{deployment.prefix}m:{token.hex()}", 0, -1)
    assert after == before
    assert b"from the stale holder" not in deployment.client.got
    assert await deployment.sessionField(token, "epoch") == b"2"
    assert a.sessionsLostToOthers == 1 and len(a.sessions) == 0


@ensureDeferred
async def test_staleHolderLearnsByPolling(deployment: Deployment) -> None:
    """A holder that writes nothing learns of the takeover from its next
    poll, and closes the connection it still has."""
    a = deployment.servers["A"]
    await deployment.connect()
    await within(deployment.client.sendMessage(b"1"), 10)
    (stale,) = a.connections
    deployment.routeTo("B")
    deployment.forwarder.abandon()
    await within(deployment.client.sendMessage(b"2"), 10)
    await waitFor(lambda: stale.loss is not None, 5, "A to close its connection")
    assert stale.loss is not None and TAKEN_OVER in stale.loss.detail


class _Stopped:
    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis

    def __enter__(self) -> None:
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGSTOP)

    def __exit__(self, *exc: object) -> None:
        assert self.redis.process is not None
        self.redis.process.send_signal(signal.SIGCONT)


@asyncYieldFixture
async def ownRedis(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis-stopped"))
    server.start()
    yield server
    server.stop()


@ensureDeferred
async def test_healthDegradedWhileRedisStops(ownRedis: RedisServer) -> None:
    """While Redis does not answer, the connection and its heartbeats stay
    up, new messages wait, and ``/health`` says ``degraded`` (200); once
    Redis answers again, the messages are processed once each and
    ``/health`` says ``ok``."""
    deployment = Deployment(ownRedis)
    reactor = getReactor()
    a = deployment.servers["A"]
    deployment.stores["A"].slowAfter = 0.3
    site = reactor.listenTCP(0, statusSite([a]), interface=LOOPBACK)
    url = f"http://127.0.0.1:{site.getHost().port}/health"

    async def health() -> tuple[int, bytes]:
        response = await treq.get(url)
        return response.code, await treq.content(response)

    try:
        proto = await deployment.connect()
        await within(deployment.client.sendMessage(b"1"), 10)
        assert await health() == (200, b"ok\n")
        with _Stopped(ownRedis):
            pending = [deployment.client.sendMessage(b"%d" % n) for n in range(2, 12)]
            store = deployment.stores["A"]
            await waitFor(lambda: store.problem is not None, 5, "the store to see it")
            code, body = await health()
            assert code == 200 and body.startswith(b"degraded: Redis at 127.0.0.1:")
            assert b"has not answered for" in body
            await elapse(1.5)  # three heartbeat intervals: nothing may give up
            assert not any(d.called for d in pending)
            assert proto.loss is None and a.connections
        receipts = [await within(d, 10) for d in pending]
        assert [r.seq for r in receipts] == list(range(2, 12))
        assert [p for _, p, _, _ in a.processed] == [b"%d" % n for n in range(1, 12)]
        await waitFor(lambda: deployment.stores["A"].problem is None, 5, "the store to recover")
        assert await health() == (200, b"ok\n")
    finally:
        await site.stopListening()
        await deployment.stop()


@ensureDeferred
async def test_sendToRejected(deployment: Deployment) -> None:
    """A message sent with `sendTo` that the client's application fails on
    fails its sender's Deferred with ``rejected``, never a Receipt; the
    messages around it are confirmed."""
    a, b = deployment.servers["A"], deployment.servers["B"]
    proto = await deployment.connect()
    sessionId = proto.sessionId
    before = a.sendTo(sessionId, b"before")
    bad = b.sendTo(sessionId, b"bad command")
    after = a.sendTo(sessionId, b"after")
    first = await within(before, 10)
    assert isinstance(first, Receipt)
    with pytest.raises(DeliveryFailed, match="no such command") as caught:
        await within(bad, 10)
    assert caught.value.rejected
    last = await within(after, 10)
    assert isinstance(last, Receipt)
    assert deployment.client.got == [b"before", b"after"]
