"""
Several server processes that share their sessions on a real Redis server
(``tests/peers/cluster_server.py``), over 127.0.0.1:

- three of them behind a `ChaosProxy` that sends each new connection to
  one of them at random and resets it after 50 to 300 ms, while a client
  process (``tests/peers/cluster_client.py``) sends MESSAGES messages and
  receives MESSAGES that one server sends to its session with ``sendTo``:
  every message processed once (after deduplication by its idempotency
  key; the application takes 0.1 s over every hundredth message, so that
  some resets fall between a processing and its commit, and every repeat
  must be flagged ``redelivered``), in order, every Deferred fired once
  with a `Receipt`, and at least MIN_RESUMES resumes of a session that
  another process held;
- a stale owner: a server (in the test process) whose connection the
  client abandoned silently, after the client resumed on another server
  process, gets nothing new, writes nothing to Redis, and closes that
  connection saying why;
- Redis stopped (SIGSTOP) for 3 s, or killed and started again on its
  append-only file, in the middle of traffic both ways: the connection
  stays up, nothing is lost or duplicated, and ``/health`` says
  ``degraded`` meanwhile, ``ok`` after; and Redis stopped for 3 s under
  the three servers and their resetting proxy: the same, for every
  server.

``ALIVE_CLUSTER_MESSAGES`` (5,000), ``ALIVE_CLUSTER_RESUMES`` (100),
``ALIVE_CLUSTER_RATE`` (messages a second the client sends at most, 125:
the run lasts about 40 s, for some 200 connections) and
``ALIVE_CLUSTER_PAUSE_MESSAGES`` (2,000, for the Redis stop under one
server) and ``ALIVE_CLUSTER_PAUSE_CLUSTER_MESSAGES`` (2,500, under three)
change the figures; ``ALIVE_CHAOS_SEED`` replays the proxy's draws. Run with ``-s``
to see the figures.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import treq
from support import (
    LOOPBACK,
    Processes,
    RedisServer,
    chaosSeed,
    elapse,
    ensureDeferred,
    getReactor,
    listenEndpoint,
    portOf,
    readLine,
    tcp,
    waitFor,
    waitForExit,
    within,
)
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.threads import deferToThread

from twisted_alive import (
    AliveClientFactory,
    AliveServerFactory,
    HeartbeatProtocol,
    Loss,
    Reason,
    Receipt,
    RedisSessionStore,
)
from twisted_alive.core.frames import Goodbye, GoodbyeCode, encode
from twisted_alive.testing.chaos import ChaosProxy, Faults

MESSAGES = int(os.environ.get("ALIVE_CLUSTER_MESSAGES", "5000"))
MIN_RESUMES = int(os.environ.get("ALIVE_CLUSTER_RESUMES", "100"))
RATE = float(os.environ.get("ALIVE_CLUSTER_RATE", "125"))
PAUSE_MESSAGES = int(os.environ.get("ALIVE_CLUSTER_PAUSE_MESSAGES", "2000"))
CLUSTER_PAUSE_MESSAGES = int(os.environ.get("ALIVE_CLUSTER_PAUSE_CLUSTER_MESSAGES", "2500"))

TAKEN_OVER = "session taken over by another connection"

SLOW = ("--slow-every", 100, "--slow-for", 0.1)
"""Every hundredth message takes the servers' application 0.1 s: a reset
then falls, now and then, between its processing and its commit, and the
next holder hands it out again, flagged ``redelivered``."""


@dataclass
class Server:
    """A server process of the cluster."""

    name: str
    process: subprocess.Popen[str]
    port: int
    statusPort: int


async def startServer(
    processes: Processes,
    name: str,
    redis: RedisServer,
    prefix: str,
    processed: Path,
    *extra: object,
) -> Server:
    """Start ``cluster_server.py`` and wait for its ``READY`` line."""
    process = processes.startPeer("cluster_server.py", name, redis.port, prefix, processed, *extra)
    words = (await readLine(process, 20)).split()
    assert words[0] == "READY", words
    return Server(name, process, int(words[1]), int(words[2]))


async def stopServer(server: Server) -> dict[str, Any]:
    """SIGTERM the server; return its lines (``SENT``, ``FINAL``, anything
    else under ``other``) parsed."""
    os.killpg(server.process.pid, signal.SIGTERM)
    output = await waitForExit(server.process, 20)
    lines: dict[str, Any] = {"other": []}
    for line in output.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("SENT", "FINAL"):
            lines[word] = json.loads(rest)
        elif line.strip():
            lines["other"].append(line)
    return lines


def processedLines(path: Path) -> list[tuple[str, str, int, bool, bytes]]:
    """The lines of the servers' shared file: (server, session, seq,
    redelivered, payload)."""
    lines = []
    for line in path.read_bytes().splitlines():
        name, session, seq, flagged, payload = line.split(b" ")
        lines.append((name.decode(), session.decode(), int(seq), flagged == b"1", payload))
    return lines


@dataclass
class Processed:
    """What the servers' applications processed, after deduplication by
    ``(session, seq)``."""

    firsts: list[tuple[str, int, bytes]]
    """The first processing of each key, in the order of the file:
    (session, seq, payload)."""
    repeats: int
    """Keys processed again."""
    unflagged: list[tuple[str, str, int]]
    """Repeats not flagged ``redelivered``: (server, session, seq)."""
    byServer: dict[str, int]
    """Lines by server."""


def deduplicated(lines: Sequence[tuple[str, str, int, bool, bytes]]) -> Processed:
    """Deduplicate the lines of `processedLines` by their idempotency key."""
    seen: set[tuple[str, int]] = set()
    firsts = []
    unflagged = []
    repeats = 0
    byServer: dict[str, int] = {}
    for name, session, seq, flagged, payload in lines:
        byServer[name] = byServer.get(name, 0) + 1
        if (session, seq) in seen:
            repeats += 1
            if not flagged:
                unflagged.append((name, session, seq))
            continue
        seen.add((session, seq))
        firsts.append((session, seq, payload))
    return Processed(firsts, repeats, unflagged, byServer)


def assertEachOnceInOrder(processed: Processed, count: int) -> None:
    """One session, messages ``c0``... ``c<count - 1>`` as sequence numbers
    1... ``count``, each once, in order; every repeat flagged."""
    sessions = {session for session, _, _ in processed.firsts}
    assert len(sessions) == 1, sessions
    assert [seq for _, seq, _ in processed.firsts] == list(range(1, count + 1))
    assert [payload for _, _, payload in processed.firsts] == [b"c%d" % n for n in range(count)]
    assert processed.unflagged == []


def assertClientResult(result: dict[str, Any], sent: int, received: int) -> None:
    """Every Deferred of the client fired once with the Receipt of its
    message; it received ``s0``... once each, in order; its session was
    never reset."""
    assert result["receipts"] == sent, result
    assert result["failures"] == {} and result["unfired"] == 0 and result["twice"] == 0, result
    assert result["received"] == received and result["inOrder"], result
    assert result["duplicates"] == 0, result
    assert result["resets"] == [], result


def assertSent(sent: dict[str, Any], count: int) -> None:
    """Every ``sendTo`` Deferred fired once with a Receipt."""
    assert sent["outcomes"] == {"receipt": count}, sent
    assert sent["twice"] == 0 and sent["unfired"] == 0, sent


async def clientResult(client: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    """Wait for the client's ``RESULT`` line (skipping its other lines)."""
    reactor = getReactor()
    deadline = reactor.seconds() + seconds
    while True:
        line = await readLine(client, max(1.0, deadline - reactor.seconds()))
        word, _, rest = line.partition(" ")
        if word == "RESULT":
            parsed: dict[str, Any] = json.loads(rest)
            return parsed


# -- three processes behind a resetting load balancer -------------------------------------------


class Cluster:
    """
    Three server processes on one Redis behind a `ChaosProxy` that sends
    each connection to one of them at random and resets it after 50 to
    300 ms, and a client process that sends ``messages`` messages through
    it, and receives ``messages`` that server 1 sends to its session with
    ``sendTo``, both at ``RATE`` a second.
    """

    def __init__(
        self, tmp_path: Path, processes: Processes, redis: RedisServer, messages: int
    ) -> None:
        self.processes = processes
        self.redis = redis
        self.messages = messages
        self.seed = chaosSeed()
        self.prefix = f"cluster-{uuid.uuid4().hex[:8]}:"
        self.processed = tmp_path / "processed"
        self.sessionFile = tmp_path / "session"
        self.started = time.monotonic()
        self.servers: list[Server] = []

    async def start(self) -> None:
        """Start the servers, the proxy and the client; return once the
        client has its session and server 1 knows it."""
        reactor = getReactor()
        sender = ("--send-to", self.sessionFile, "--send-count", self.messages)
        for n in (1, 2, 3):
            extra = (*sender, "--send-rate", RATE) if n == 1 else ()
            self.servers.append(
                await startServer(
                    self.processes,
                    f"server{n}",
                    self.redis,
                    self.prefix,
                    self.processed,
                    *extra,
                    *SLOW,
                )
            )
        self.proxy = ChaosProxy(
            [TCP4ClientEndpoint(reactor, LOOPBACK, server.port) for server in self.servers],
            Faults(resetAfter=(0.05, 0.3)),
            reactor=reactor,
            seed=self.seed,
        )
        port = await self.proxy.listen(listenEndpoint())
        self.client = self.processes.startPeer(
            "cluster_client.py",
            portOf(port),
            self.messages,
            self.messages,
            "--rate",
            RATE,
            "--deadline",
            110,
        )
        words = (await readLine(self.client, 20)).split()
        assert words[0] == "SESSION", words
        self.sessionFile.write_text(words[1])

    def processedCount(self) -> int:
        """Lines the servers' applications wrote so far."""
        return len(self.processed.read_bytes().splitlines()) if self.processed.exists() else 0

    async def finish(self) -> None:
        """Wait for the client's result, stop everything, and check that
        every message was processed once, in order (repeats flagged), and
        every Deferred fired once with a Receipt, both ways."""
        try:
            self.result = await clientResult(self.client, 120)
        finally:
            await self.proxy.stopListening()
            self.proxy.resetAll()
        self.finals = [await stopServer(server) for server in self.servers]
        self.elapsed = time.monotonic() - self.started
        self.deduped = deduplicated(processedLines(self.processed))
        self.resumes = sum(final["FINAL"]["sessionsTakenOver"] for final in self.finals)
        proxy, deduped = self.proxy, self.deduped
        print(
            f"\n{self.messages} messages each way through {proxy.connectionsAccepted} "
            f"connections (per server {proxy.connectionsPerTarget}, "
            f"{proxy.faultsInjected['reset']} resets), {self.resumes} cross-process resumes, "
            f"{deduped.repeats} repeats (all flagged redelivered: {not deduped.unflagged}), "
            f"processed per server {deduped.byServer}, client {self.result['seconds']} s, "
            f"sendTo {self.finals[0].get('SENT', {}).get('seconds')} s, "
            f"{self.elapsed:.1f} s in all (seed {self.seed})"
        )
        assert all(not final["other"] for final in self.finals), self.finals
        assertClientResult(self.result, self.messages, self.messages)
        assertSent(self.finals[0]["SENT"], self.messages)
        assertEachOnceInOrder(deduped, self.messages)
        assert all(count > 0 for count in proxy.connectionsPerTarget), proxy.connectionsPerTarget


@pytest.mark.slow
@pytest.mark.timeout(150)
@ensureDeferred
async def test_threeServersBehindAResettingProxy(
    tmp_path: Path, processes: Processes, redisServer: RedisServer
) -> None:
    """Three server processes on one Redis behind a proxy that sends each
    connection to one of them at random and resets it after 50 to 300 ms:
    a client's MESSAGES messages are each processed once (repeats flagged
    redelivered), in order; the MESSAGES that server 1 sends to the
    client's session with sendTo reach it once each, in order; every
    Deferred on both sides fires once with a Receipt; and the servers
    resume, between them, at least MIN_RESUMES sessions another process
    held."""
    cluster = Cluster(tmp_path, processes, redisServer, MESSAGES)
    await cluster.start()
    await cluster.finish()
    assert cluster.resumes >= MIN_RESUMES, (cluster.resumes, cluster.result, cluster.seed)


@pytest.mark.slow
@pytest.mark.timeout(150)
@ensureDeferred
async def test_threeServersRedisStopped(tmp_path: Path, processes: Processes) -> None:
    """The same three servers and resetting proxy, with Redis stopped
    (SIGSTOP) for 3 s once a third of the CLUSTER_PAUSE_MESSAGES messages
    were processed: every server's /health says degraded while it is
    stopped and ok once it is back, the client's session is never reset,
    and still every message is processed once, in order, and every
    Deferred fires once with a Receipt, both ways."""
    redis = RedisServer(tmp_path)
    redis.start()
    assert redis.process is not None
    try:
        cluster = Cluster(tmp_path, processes, redis, CLUSTER_PAUSE_MESSAGES)
        await cluster.start()
        await waitFor(lambda: cluster.processedCount() > CLUSTER_PAUSE_MESSAGES // 3, 30, "traffic")
        before = cluster.processedCount()
        stoppedAt = time.monotonic()
        redis.process.send_signal(signal.SIGSTOP)
        during: list[list[str]] = []
        while time.monotonic() - stoppedAt < 3.0:
            during.append([(await health(s.statusPort))[1].strip() for s in cluster.servers])
            await elapse(0.2)
        duringStop = cluster.processedCount() - before
        redis.process.send_signal(signal.SIGCONT)
        backAt = time.monotonic()

        async def allHealthy() -> bool:
            answers = [await health(s.statusPort) for s in cluster.servers]
            return all(answer == (200, "ok\n") for answer in answers)

        await waitFor(allHealthy, 15, "every /health to say ok again", interval=0.1)
        okAfter = time.monotonic() - backAt
        await cluster.finish()
    finally:
        if redis.process is not None:
            redis.process.send_signal(signal.SIGCONT)
        redis.stop()
    degraded = [n for n in range(3) if any(row[n].startswith("degraded") for row in during)]
    print(
        f"Redis stopped 3 s: {duringStop} messages processed meanwhile; servers degraded: "
        f"{[cluster.servers[n].name for n in degraded]}; all ok {okAfter:.2f} s after"
    )
    assert degraded == [0, 1, 2], during


# -- a stale owner -------------------------------------------------------------------------------


class Owner(HeartbeatProtocol):
    """A server application that records what it processes, and every
    connection in its factory."""

    factory: OwnerFactory
    heartbeatInterval = 2.0

    def connectionOpened(self, resumed: bool) -> None:
        self.factory.opened.append(self)

    def messageReceived(self, payload: bytes) -> None:
        self.factory.processed.append(payload)


class OwnerFactory(AliveServerFactory):
    """Server A: keeps its connections and what they processed."""

    protocol = Owner

    def __init__(self, store: RedisSessionStore) -> None:
        super().__init__(store)
        self.opened: list[Owner] = []
        self.processed: list[bytes] = []


class Abandoning(HeartbeatProtocol):
    """The client's application: records what it receives."""

    factory: AbandoningClient
    heartbeatInterval = 2.0

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)

    def connectionOpened(self, resumed: bool) -> None:
        self.factory.resumes.append(resumed)


class AbandoningClient(AliveClientFactory):
    """A client connected by hand, once through each proxy."""

    protocol = Abandoning

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []
        self.resumes: list[bool] = []


class RecordingSocket:
    """A socket that records every byte sent through it, and is the real
    socket for everything else."""

    def __init__(self, real: socket.socket) -> None:
        self.real = real
        self.sent = bytearray()

    def send(self, data: bytes, *flags: int) -> int:
        count = self.real.send(data, *flags)
        self.sent.extend(bytes(data[:count]))
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def spyOn(protocol: HeartbeatProtocol) -> bytearray:
    """Every byte ``protocol``'s TCP connection sends from now on (the
    protocol writes both through ``transport.write`` and, when the
    transport holds nothing, straight to its socket)."""
    transport = cast(Any, tcp(protocol))
    recording = RecordingSocket(transport.socket)
    transport.socket = recording
    return recording.sent


def sessionKeys(redis: Any, prefix: str, token: bytes) -> dict[str, Any]:
    """What Redis holds for a session (see ``_redis.lua``): its hash, its
    unconfirmed messages and its REJECTs."""
    hexToken = token.hex()
    return {
        "hash": redis.hgetall(f"{prefix}s:{hexToken}"),
        "messages": redis.lrange(f"{prefix}m:{hexToken}", 0, -1),
        "rejects": redis.lrange(f"{prefix}r:{hexToken}", 0, -1),
    }


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("writer", ["application", "store"])
@ensureDeferred
async def test_staleOwnerNeverWrites(
    tmp_path: Path, processes: Processes, redisServer: RedisServer, writer: str
) -> None:
    """A client's connection to server A (in the test process) is
    abandoned silently (the proxy stalls it, the client drops it); the
    client resumes through server B (another process). A gets nothing
    new; what A's application sends in its old session after the
    takeover fails, reaches neither Redis nor the client; and A closes
    that connection with GOODBYE(SHUTTING_DOWN, "session taken over by
    another connection"). With ``writer="store"``, A's store itself then
    tries each write a holder makes for the session (once it has polled
    and learnt it lost it): each is refused with `SessionTakenOver`, and
    Redis holds the session as B left it."""
    import redis as redispy

    reactor = getReactor()
    prefix = f"stale-{uuid.uuid4().hex[:8]}:"
    processed = tmp_path / "processed"
    storeA = RedisSessionStore(reactor, LOOPBACK, redisServer.port, prefix=prefix)
    serverA = OwnerFactory(storeA)
    portA = await listenEndpoint().listen(serverA)
    serverB = await startServer(processes, "B", redisServer, prefix, processed)
    proxyA = ChaosProxy(TCP4ClientEndpoint(reactor, LOOPBACK, portOf(portA)), reactor=reactor)
    proxyB = ChaosProxy(TCP4ClientEndpoint(reactor, LOOPBACK, serverB.port), reactor=reactor)
    inA = portOf(await proxyA.listen(listenEndpoint()))
    inB = portOf(await proxyB.listen(listenEndpoint()))
    keys = redispy.Redis(host=LOOPBACK, port=redisServer.port)
    client = AbandoningClient()
    try:
        first = cast(Abandoning, await TCP4ClientEndpoint(reactor, LOOPBACK, inA).connect(client))
        await waitFor(lambda: serverA.opened and client.resumes, 10, "the first HELLO")
        token = client.session.token
        receipts = [await within(client.sendMessage(b"c%d" % n), 10) for n in range(10)]
        (owner,) = serverA.opened
        written = spyOn(owner)
        toClient = await within(owner.sendMessage(b"a0"), 10)
        assert isinstance(toClient, Receipt)
        await waitFor(lambda: client.received == [b"a0"], 5, "a0")
        before = sessionKeys(keys, prefix, token)

        # Abandon the connection to A silently: nothing passes, nothing closes.
        (throughA,) = proxyA.connections
        throughA.stall()
        tcp(first).abortConnection()
        await first.whenLost()
        await TCP4ClientEndpoint(reactor, LOOPBACK, inB).connect(client)
        await waitFor(lambda: len(client.resumes) == 2, 10, "the resume through B")
        assert client.resumes == [False, True]
        receipts += [await within(client.sendMessage(b"c%d" % n), 10) for n in range(10, 20)]
        taken = sessionKeys(keys, prefix, token)

        # A's application sends in its old session, after the takeover.
        stale = owner.sendMessage(b"stale")
        outcomes: list[object] = []
        stale.addBoth(outcomes.append)
        lossA: Loss = await within(owner.whenLost(), 10)
        # Then A's store itself, once it has surely polled (every 0.1 s),
        # tries every write a holder makes.
        await elapse(0.5)
        storeWrites: dict[str, Deferred[Any]] = {}
        if writer == "store":
            storeWrites = {
                "appendMessages": storeA.appendMessages(token, [(2, b"stale-store")]),
                "confirmMessages": storeA.confirmMessages(token, 1),
                "recordProcessed": storeA.recordProcessed(token, 25),
                "touchSession": storeA.touchSession(token, 1.0),
            }
        storeOutcomes: dict[str, str] = {}
        for name, d in storeWrites.items():
            try:
                storeOutcomes[name] = repr(await within(d, 10))
            except Exception as e:
                storeOutcomes[name] = type(e).__name__
        await elapse(0.5)
        after = sessionKeys(keys, prefix, token)
        throughA.stall(False)
        await elapse(0.3)
    finally:
        client.stopTrying()
        if client.connected is not None:
            client.connected.abort("test over")
        await proxyA.stopListening()
        await proxyB.stopListening()
        proxyA.resetAll()
        proxyB.resetAll()
        await maybeDeferred(portA.stopListening)
        await storeA.close()
        final = await stopServer(serverB)
        keys.close()
    print(f"\nA's store writes after the takeover: {storeOutcomes or 'none'}")
    print(
        f"A's loss: {lossA}; A's stale send: {outcomes}; epoch {before['hash'].get(b'epoch')} "
        f"-> {taken['hash'].get(b'epoch')}; B took over {final['FINAL']['sessionsTakenOver']}"
    )
    assert [r.seq for r in receipts] == list(range(1, 21))
    assert serverA.processed == [b"c%d" % n for n in range(10)]  # nothing new for A
    lines = processedLines(processed)
    assert [payload for _, _, _, _, payload in lines] == [b"c%d" % n for n in range(10, 20)]
    assert client.received == [b"a0"]  # no duplicate, nothing from the stale owner
    assert final["FINAL"]["sessionsTakenOver"] == 1, final
    assert serverA.sessionsTakenOver == 0
    assert len(outcomes) == 1 and not isinstance(outcomes[0], Receipt), outcomes
    assert lossA.reason is Reason.LOCAL_CLOSE, lossA
    assert TAKEN_OVER in lossA.detail, lossA
    # A's last words on that connection: the GOODBYE, and nothing after it.
    assert bytes(written).endswith(encode(Goodbye(GoodbyeCode.SHUTTING_DOWN, TAKEN_OVER)))
    assert b"stale" not in written
    assert int(taken["hash"][b"epoch"]) > int(before["hash"][b"epoch"])
    assert storeOutcomes == dict.fromkeys(storeWrites, "SessionTakenOver"), storeOutcomes
    # Nothing of A's reached Redis (B may have moved lastSeen meanwhile).
    for held in (taken, after):
        held["hash"].pop(b"lastSeen")
    assert after == taken, (taken, after)


# -- Redis stopped in the middle ------------------------------------------------------------------


async def health(statusPort: int) -> tuple[int, str]:
    """``GET /health`` of a status site: the status code and the body."""
    response = await treq.get(f"http://{LOOPBACK}:{statusPort}/health", persistent=False, timeout=2)
    return response.code, await treq.text_content(response)


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("outage", ["sigstop", "restart"])
@ensureDeferred
async def test_redisStoppedForThreeSeconds(
    tmp_path: Path, processes: Processes, outage: str
) -> None:
    """Redis stopped for 3 s (SIGSTOP, then SIGCONT; or SIGKILL, then
    started again on the same port from its append-only file, fsynced at
    every write) while a client sends PAUSE_MESSAGES messages and a server
    sends it PAUSE_MESSAGES / 2 with sendTo: the client's connection stays
    up, every message is processed once, in order, every Deferred fires
    once with a Receipt, and the server's /health says degraded (200)
    while Redis is away, ok after."""
    options = ("--appendonly", "yes", "--appendfsync", "always") if outage == "restart" else ()
    redis = RedisServer(tmp_path, *options)
    redis.start()
    try:
        await redisOutage(tmp_path, processes, redis, outage)
    finally:
        if redis.process is not None:
            os.kill(redis.process.pid, signal.SIGCONT)
        redis.stop()


async def redisOutage(
    tmp_path: Path, processes: Processes, redis: RedisServer, outage: str
) -> None:
    """The body of `test_redisStoppedForThreeSeconds`."""
    processed = tmp_path / "processed"
    sessionFile = tmp_path / "session"
    toClient = PAUSE_MESSAGES // 2
    server = await startServer(
        processes,
        "server",
        redis,
        "pause:",
        processed,
        "--send-to",
        sessionFile,
        "--send-count",
        toClient,
        "--send-window",
        20,
    )
    assert await health(server.statusPort) == (200, "ok\n")
    client = processes.startPeer(
        "cluster_client.py",
        server.port,
        PAUSE_MESSAGES,
        toClient,
        "--rate",
        200,
        "--window",
        20,
        "--deadline",
        60,
    )
    words = (await readLine(client, 20)).split()
    assert words[0] == "SESSION", words
    sessionFile.write_text(words[1])
    await waitFor(
        lambda: processed.exists() and len(processed.read_bytes().splitlines()) > 300,
        20,
        "traffic",
    )
    assert redis.process is not None
    before = len(processed.read_bytes().splitlines())
    stoppedAt = time.monotonic()
    if outage == "sigstop":
        os.kill(redis.process.pid, signal.SIGSTOP)
    else:
        redis.kill()
    during: list[tuple[float, int, str]] = []
    while time.monotonic() - stoppedAt < 3.0:
        code, body = await health(server.statusPort)
        during.append((round(time.monotonic() - stoppedAt, 2), code, body.strip()))
        await elapse(0.2)
    duringStop = len(processed.read_bytes().splitlines()) - before
    if outage == "sigstop":
        os.kill(redis.process.pid, signal.SIGCONT)
    else:
        await within(deferToThread(redis.start), 20)
    backAt = time.monotonic()
    recovered: list[tuple[float, int, str]] = []

    async def healthy() -> bool:
        code, body = await health(server.statusPort)
        recovered.append((round(time.monotonic() - backAt, 2), code, body.strip()))
        return code == 200 and body.strip() == "ok"

    await waitFor(healthy, 15, "/health to say ok again", interval=0.1)
    result = await clientResult(client, 60)
    final = await stopServer(server)
    deduped = deduplicated(processedLines(processed))
    degraded = [d for d in during if d[1] == 200 and d[2].startswith("degraded")]
    print(
        f"\nRedis {outage} for 3 s: {duringStop} messages processed meanwhile; /health "
        f"during: {during[0]} ... first degraded {degraded[:1]}; ok again after "
        f"{recovered[-1][0]} s; client {result['seconds']} s, {result['connections']} "
        f"connection(s); {deduped.repeats} repeats; sendTo {final.get('SENT')}"
    )
    assert final["other"] == [], final
    assertClientResult(result, PAUSE_MESSAGES, toClient)
    assert result["connections"] == 1, result  # the connection stayed up
    assertSent(final["SENT"], toClient)
    assertEachOnceInOrder(deduped, PAUSE_MESSAGES)
    assert deduped.repeats == 0
    assert degraded, during
    assert all(code == 200 for _, code, _ in during), during
    assert final["FINAL"]["problem"] is None, final
