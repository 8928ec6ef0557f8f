"""
Tests for L{twisted_alive.service.status}: the status site, queried with C{treq}
over real loopback sockets, in front of a real L{AliveServerFactory} with
real client connections.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import prometheus_client
import pytest
import treq
from prometheus_client.parser import text_string_to_metric_families
from support import (
    LOOPBACK,
    Collecting,
    CollectingFactory,
    asyncYieldFixture,
    connectCollecting,
    ensureDeferred,
    getReactor,
    listenEndpoint,
    portOf,
    waitFor,
)
from twisted.internet.defer import gatherResults, maybeDeferred
from twisted.internet.interfaces import (
    IListeningPort,
)
from twisted.logger import Logger

from twisted_alive import MemorySessionStore, SqliteSessionStore, StoredSession
from twisted_alive._factories import AliveServerFactory, tokenPrefix
from twisted_alive._mixin import HeartbeatMixin
from twisted_alive._reasons import Loss, Reason
from twisted_alive.service.status import StatusSite, statusSite
from twisted_alive.service.tap import EchoProtocol

INTERVAL = 0.1


class FastEcho(EchoProtocol):
    """The echo app with a short heartbeat interval."""

    heartbeatInterval = INTERVAL


class FastCollecting(Collecting):
    """The recording client with a short heartbeat interval."""

    heartbeatInterval = INTERVAL


class FastCollectingFactory(CollectingFactory):
    protocol = FastCollecting


class Harness:
    """A server, its status site and clients on 127.0.0.1; stops them all."""

    def __init__(self) -> None:
        self.factory = AliveServerFactory()
        self.factory.protocol = FastEcho
        self.serving = True
        self.site = statusSite([self.factory], serving=lambda: self.serving)
        self.ports: list[IListeningPort] = []
        self.clients: list[CollectingFactory] = []
        self.serverPort = 0
        self.statusPort = 0

    async def start(self) -> None:
        port = await listenEndpoint().listen(self.factory)
        self.ports.append(port)
        self.serverPort = portOf(port)
        port = await listenEndpoint().listen(self.site)
        self.ports.append(port)
        self.statusPort = portOf(port)

    async def client(self) -> tuple[CollectingFactory, HeartbeatMixin]:
        factory = FastCollectingFactory()
        self.clients.append(factory)
        return await connectCollecting(self.serverPort, factory, timeout=5)

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.statusPort}{path}"

    async def get(self, path: str, **kwargs: Any) -> Any:
        return await treq.get(self.url(path), persistent=False, timeout=5, **kwargs)

    async def json(self, path: str) -> Any:
        response = await self.get(path, headers={"Accept": "application/json"})
        return await response.json()

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, by name and sorted labels."""
        response = await self.get("/metrics")
        assert response.code == 200
        text = (await response.content()).decode("utf-8")
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    async def stop(self) -> None:
        await gatherResults([c.close() for c in self.clients])
        await gatherResults([maybeDeferred(p.stopListening) for p in self.ports])


@asyncYieldFixture
async def harness() -> AsyncIterator[Harness]:
    """A started L{Harness}, stopped at the end."""
    h = Harness()
    await h.start()
    yield h
    await h.stop()


@pytest.mark.timeout(20)
@ensureDeferred
async def test_healthOkWhileServing(harness: Harness) -> None:
    """/health answers 200 "ok" while serving, with a JSON variant that
    counts the connections, and 503 "stopping" once the server stops."""
    await harness.client()
    response = await harness.get("/health")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]
    assert await response.content() == b"ok\n"
    assert await harness.json("/health") == {"status": "ok", "connections": 1, "problems": []}

    harness.serving = False
    response = await harness.get("/health")
    assert response.code == 503
    assert await response.content() == b"stopping\n"
    assert await harness.json("/health") == {
        "status": "stopping",
        "connections": 1,
        "problems": [],
    }


class _TroubledStore(MemorySessionStore):
    problem: str | None = None


@pytest.mark.timeout(20)
@ensureDeferred
async def test_healthDegradedWhileTheStoreHasAProblem(harness: Harness) -> None:
    """/health answers 200 "degraded: WHY" while a factory's store says it
    has a problem (a shared store whose server does not answer), each
    problem once; "ok" again once it has none."""
    store = _TroubledStore()
    harness.factory.store = store
    store.problem = "Redis at 127.0.0.1:6379 has not answered for 2.0 s"
    other = AliveServerFactory(store)
    harness.site.factories.append(other)
    response = await harness.get("/health")
    assert response.code == 200
    assert await response.content() == (
        b"degraded: Redis at 127.0.0.1:6379 has not answered for 2.0 s\n"
    )
    assert await harness.json("/health") == {
        "status": "degraded",
        "connections": 0,
        "problems": ["Redis at 127.0.0.1:6379 has not answered for 2.0 s"],
    }
    store.problem = None
    assert await (await harness.get("/health")).content() == b"ok\n"


@pytest.mark.timeout(20)
@ensureDeferred
async def test_connectionsListsEachClient(harness: Harness) -> None:
    """/connections has one JSON object per live connection, with its peer,
    state, RTT, last heard, unconfirmed count and session token prefix."""
    first, _ = await harness.client()
    second, _ = await harness.client()
    await first.sendMessage(b"hello")
    rows = await harness.json("/connections")
    assert len(rows) == 2
    assert sorted(rows, key=lambda r: r["peer"]) == rows
    assert {r["session"] for r in rows} == {
        tokenPrefix(first.session.token),
        tokenPrefix(second.session.token),
    }
    for row in rows:
        assert set(row) == {"peer", "state", "rtt", "lastHeard", "unconfirmed", "session"}
        assert row["peer"].startswith(f"{LOOPBACK}:")
        assert row["state"] == "open"
        assert row["unconfirmed"] in (0, 1)
        assert 0 <= row["lastHeard"] < 5


@pytest.mark.timeout(20)
@ensureDeferred
async def test_connectionsEmpty(harness: Harness) -> None:
    """Without connections, /connections is an empty JSON list."""
    response = await harness.get("/connections")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert await response.json() == []


@pytest.mark.timeout(20)
@ensureDeferred
async def test_metricsCountMessagesAndConnections(harness: Harness) -> None:
    """/metrics reports connections by state, sessions, and the messages
    the server sent, had confirmed and processed (echo: one each way)."""
    client, _ = await harness.client()
    await gatherResults([client.sendMessage(b"m%d" % i) for i in range(5)])

    async def echoed() -> bool:
        metrics = await harness.metrics()
        return metrics[("twisted_alive_messages_confirmed_total", ())] == 5

    await waitFor(echoed)
    assert sorted(client.received) == [b"m%d" % i for i in range(5)]
    metrics = await harness.metrics()
    assert metrics[("twisted_alive_connections", (("state", "open"),))] == 1
    assert metrics[("twisted_alive_connections", (("state", "handshake"),))] == 0
    assert metrics[("twisted_alive_sessions", (("state", "connected"),))] == 1
    assert metrics[("twisted_alive_sessions", (("state", "detached"),))] == 0
    assert metrics[("twisted_alive_messages_sent_total", ())] == 5
    assert metrics[("twisted_alive_messages_processed_total", ())] == 5
    assert metrics[("twisted_alive_messages_redelivered_total", ())] == 0
    assert metrics[("twisted_alive_queue_depth", ())] == 0
    assert metrics[("twisted_alive_messages_in_flight", ())] == 0
    for reason in Reason:
        assert metrics[("twisted_alive_losses_total", (("reason", reason.name.lower()),))] == 0
    # No store, no store metrics.
    assert not [name for name, _ in metrics if name.startswith("twisted_alive_store")]


@pytest.mark.timeout(20)
@ensureDeferred
async def test_lossesAndTotalsSurviveEndedSessions(harness: Harness) -> None:
    """A client's orderly close counts as a clean_close loss and drops its
    session; the message counters keep its messages (never go backwards)."""
    client, _ = await harness.client()
    await gatherResults([client.sendMessage(b"x") for _ in range(3)])
    (server,) = harness.factory.connections

    async def confirmed() -> bool:
        metrics = await harness.metrics()
        return metrics[("twisted_alive_messages_confirmed_total", ())] == 3

    await waitFor(confirmed)
    before = await harness.metrics()
    await client.close()
    loss: Loss = await server.whenLost()
    assert loss.reason is Reason.CLEAN_CLOSE
    assert harness.factory.sessions == {}

    after = await harness.metrics()
    assert after[("twisted_alive_losses_total", (("reason", "clean_close"),))] == 1
    assert after[("twisted_alive_connections", (("state", "open"),))] == 0
    assert after[("twisted_alive_sessions", (("state", "connected"),))] == 0
    for name in ("sent", "confirmed", "redelivered", "processed"):
        key = (f"twisted_alive_messages_{name}_total", ())
        assert after[key] == before[key]
    assert after[("twisted_alive_messages_sent_total", ())] == 3


@pytest.mark.timeout(20)
@ensureDeferred
async def test_heartbeatRoundTripHistogram(harness: Harness) -> None:
    """The RTT histogram fills from the heartbeat PONG log events while the
    site listens."""
    await harness.client()

    async def sampled() -> bool:
        metrics = await harness.metrics()
        return metrics[("twisted_alive_heartbeat_rtt_seconds_count", ())] >= 2

    await waitFor(sampled)
    metrics = await harness.metrics()
    assert 0 < metrics[("twisted_alive_heartbeat_rtt_seconds_sum", ())] < 1
    assert metrics[("twisted_alive_heartbeat_rtt_seconds_bucket", (("le", "+Inf"),))] >= 2


@pytest.mark.timeout(20)
@ensureDeferred
async def test_observerOnlyWhileListening() -> None:
    """The site watches the log events only while it listens, and only
    those of the twisted_alive namespace."""
    site = statusSite([])
    log = Logger(namespace="twisted_alive")
    other = Logger(namespace="elsewhere")

    def count() -> float:
        value = site.registry.get_sample_value("twisted_alive_heartbeat_rtt_seconds_count")
        assert value is not None
        return value

    log.debug("pong", rtt=0.5, event="pong")
    assert count() == 0
    port = await listenEndpoint().listen(site)
    try:
        log.debug("pong", rtt=0.5, event="pong")
        other.debug("pong", rtt=0.5, event="pong")
        log.warn("stall", seconds=2.0, event="stall")
        assert count() == 1
        assert site.registry.get_sample_value("twisted_alive_stalls_total") == 1
    finally:
        await maybeDeferred(port.stopListening)
    log.debug("pong", rtt=0.5, event="pong")
    assert count() == 1


@pytest.mark.timeout(20)
def test_ownRegistry() -> None:
    """The metrics live in the site's own registry, not the global one, so
    two sites can coexist."""
    first = statusSite([])
    second = statusSite([])
    assert isinstance(first, StatusSite)
    assert first.registry is not second.registry
    assert first.registry is not prometheus_client.REGISTRY
    assert prometheus_client.REGISTRY.get_sample_value("twisted_alive_stalls_total") is None


@pytest.mark.timeout(20)
def test_severalFactoriesAddUp() -> None:
    """With several factories, the counters are summed."""
    first = AliveServerFactory()
    second = AliveServerFactory()
    first.losses[Reason.TIMEOUT] = 2
    second.losses[Reason.TIMEOUT] = 3
    second.endedCounts.update(sent=7)
    site = statusSite([first, second])
    value = site.registry.get_sample_value
    assert value("twisted_alive_losses_total", {"reason": "timeout"}) == 5
    assert value("twisted_alive_messages_sent_total") == 7


@pytest.mark.timeout(20)
@ensureDeferred
async def test_indexAndUnknownPaths(harness: Harness) -> None:
    """/ lists the pages; an unknown path is a 404; POST is refused."""
    response = await harness.get("/")
    assert response.code == 200
    assert b"/metrics" in await response.content()
    response = await harness.get("/nosuch")
    assert response.code == 404
    await response.content()
    response = await treq.post(harness.url("/health"), persistent=False, timeout=5)
    assert response.code == 405
    await response.content()


@pytest.mark.timeout(20)
@ensureDeferred
async def test_metricsContentType(harness: Harness) -> None:
    """/metrics speaks the Prometheus text format, and OpenMetrics to a
    scraper that asks for it."""
    response = await harness.get("/metrics")
    (contentType,) = response.headers.getRawHeaders(b"content-type")
    assert contentType.startswith(b"text/plain")
    await response.content()
    response = await harness.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    (contentType,) = response.headers.getRawHeaders(b"content-type")
    assert contentType.startswith(b"application/openmetrics-text")
    assert (await response.content()).endswith(b"# EOF\n")


@pytest.mark.timeout(20)
@ensureDeferred
async def test_headAnswersWithoutWarning(harness: Harness) -> None:
    """HEAD on every page (and on an unknown path) answers with the GET's status and
    length, no body, and logs no warning."""
    from twisted.logger import LogLevel, capturedLogs

    with capturedLogs() as events:
        for path, code in (
            ("/", 200),
            ("/health", 200),
            ("/connections", 200),
            ("/metrics", 200),
            ("/nosuch", 404),
        ):
            response = await treq.head(harness.url(path), persistent=False, timeout=5)
            assert response.code == code, path
            assert await response.content() == b""
            (length,) = response.headers.getRawHeaders(b"content-length")
            assert int(length) > 0, path
    loud = [e for e in events if e.get("log_level", LogLevel.debug) >= LogLevel.warn]
    heads = [e for e in events if "HEAD request" in str(e.get("log_format", ""))]
    assert loud == [] and heads == []


TOKEN = bytes(16 * [0x5A])


@pytest.mark.timeout(20)
@ensureDeferred
async def test_storeMetrics(tmp_path: Path) -> None:
    """With a factory whose sessions are in a SQLite store (a real file),
    /metrics reports the store's sessions, its outbound messages not yet
    confirmed and a histogram of its commit times, and each scrape follows
    what the store holds; nothing about a session but counts."""
    store = SqliteSessionStore(tmp_path / "sessions.db", reactor=getReactor())
    harness = Harness()
    cast(Any, harness.factory).store = store
    await harness.start()
    try:
        await harness.factory.recovered()  # the factory opened and loaded the store
        metrics = await harness.metrics()
        assert metrics[("twisted_alive_store_sessions", ())] == 0
        assert metrics[("twisted_alive_store_outbox_messages", ())] == 0
        commits = metrics[("twisted_alive_store_commit_seconds_count", ())]

        # Seen now: the factory, which keeps its sessions in this store, does
        # not expire it.
        await store.createSession(StoredSession(TOKEN, lastSeen=time.time()))
        await store.appendMessages(TOKEN, [(1, b"a"), (2, b"b"), (3, b"c")])
        metrics = await harness.metrics()
        assert metrics[("twisted_alive_store_sessions", ())] == 1
        assert metrics[("twisted_alive_store_outbox_messages", ())] == 3
        assert metrics[("twisted_alive_store_commit_seconds_count", ())] == commits + 2
        inf = ("twisted_alive_store_commit_seconds_bucket", (("le", "+Inf"),))
        assert metrics[inf] == commits + 2
        assert 0 < metrics[("twisted_alive_store_commit_seconds_sum", ())] < 2
        bounds = sorted(
            float(dict(labels)["le"])
            for name, labels in metrics
            if name == "twisted_alive_store_commit_seconds_bucket"
        )
        assert bounds[0] == 0.00005 and bounds[-2] == 1.0

        await store.confirmMessages(TOKEN, 2)
        metrics = await harness.metrics()
        assert metrics[("twisted_alive_store_outbox_messages", ())] == 1
        assert metrics[("twisted_alive_store_commit_seconds_count", ())] == commits + 3

        await store.deleteSession(TOKEN)
        metrics = await harness.metrics()
        assert metrics[("twisted_alive_store_sessions", ())] == 0
        assert metrics[("twisted_alive_store_outbox_messages", ())] == 0
        text = (await (await harness.get("/metrics")).content()).decode()
        assert TOKEN.hex()[:8] not in text and str(tmp_path) not in text
    finally:
        await harness.stop()
        await store.close()


@pytest.mark.timeout(20)
@ensureDeferred
async def test_storesCountedOnceAndAddedUp() -> None:
    """Factories that share a store count it once; different stores add
    up; a memory store times no commit."""
    shared, other = MemorySessionStore(), MemorySessionStore()
    factories = [AliveServerFactory() for _ in range(3)]
    for factory, store in zip(factories, (shared, shared, other), strict=True):
        cast(Any, factory).store = store
    await shared.createSession(StoredSession(TOKEN, nextSeq=3, messages=((1, b"a"), (2, b"b"))))
    await other.createSession(StoredSession(TOKEN))
    value = statusSite(factories).registry.get_sample_value
    assert value("twisted_alive_store_sessions") == 2
    assert value("twisted_alive_store_outbox_messages") == 2
    assert value("twisted_alive_store_commit_seconds_count") == 0
