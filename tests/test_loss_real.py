# mypy: disable-error-code="no-untyped-call"
"""
Loss classification over real loopback sockets, against real peer processes
(``tests/peers/``): GOODBYE, RST, SIGSTOP, SIGKILL, garbage, refused
connections and half-closes, each seen by ``HeartbeatProtocol``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from support import (
    BuiltProtocols,
    Processes,
    elapse,
    forProtocol,
    getReactor,
    listeningOn,
    readReady,
    waitFor,
    waitForExit,
    within,
)
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Cause, Loss, Reason, classify
from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.core.outcomes import DeliveryFailed

HOST = "127.0.0.1"
INTERVAL = 0.2
MISSES = 3
DEADLINE = INTERVAL * MISSES


_TwistedTest = Callable[[Callable[..., Generator[Any, Any, None]]], Callable[..., Any]]
twistedTest: _TwistedTest = pytest_twisted.inlineCallbacks
"""``pytest_twisted.inlineCallbacks``, typed."""


# -- this side ---------------------------------------------------------------------


class Local(HeartbeatProtocol):
    """This side's protocol: records messages, times, and can stop its peer."""

    heartbeatInterval = INTERVAL
    heartbeatMisses = MISSES

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.madeAt = 0.0
        self.lostAt = 0.0
        self.stopGroup: int | None = None
        self.stoppedAt = 0.0
        self.blockOn: bytes | None = None
        self.blockFor = 0.0

    def connectionMade(self) -> None:
        self.madeAt = getReactor().seconds()
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self.stopGroup is not None:
            # Stop the peer the moment it was last heard from, so that the
            # whole deadline runs from the SIGSTOP.
            os.killpg(self.stopGroup, signal.SIGSTOP)
            self.stoppedAt = getReactor().seconds()
            self.stopGroup = None
        super().dataReceived(data)

    def messageReceived(self, payload: bytes) -> None:
        self.received.append(payload)
        if payload == self.blockOn:
            time.sleep(self.blockFor)  # a callback that blocks the reactor

    def disconnected(self, loss: Loss) -> None:
        self.lostAt = getReactor().seconds()


class Collecting(BuiltProtocols, Factory):
    """A server factory that keeps every protocol it builds."""

    def __init__(self, protocol: type[Local] = Local, **attributes: object) -> None:
        BuiltProtocols.__init__(self)
        self.protocolClass = protocol
        self.attributes = attributes

    def buildProtocol(self, addr: object) -> Local:
        proto = self.protocolClass()
        for name, value in self.attributes.items():
            setattr(proto, name, value)
        proto.factory = self
        return cast(Local, self.record(proto))


@pytest.fixture
def server() -> Generator[tuple[Collecting, int], None, None]:
    """A listening ``Collecting`` factory on 127.0.0.1 and its port."""
    factory = Collecting()
    with listeningOn(factory) as port:
        yield factory, port


@implementer(ILogObserver)
class Stalls:
    """Local stalls logged by the adapter (time granted back to deadlines)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "twisted_alive" and event.get("event") == "stall":
            self.seconds += float(event["seconds"])


@pytest.fixture
def stalls() -> Iterator[Stalls]:
    """The local stalls logged while the test runs."""
    observer = Stalls()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


def frames(output: str) -> list[dict[str, Any]]:
    """The frames a raw peer printed."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


# -- tests ----------------------------------------------------------------------------


@pytest.mark.timeout(20)
@twistedTest
def test_goodbyeIsCleanClose(
    processes: Processes, server: tuple[Collecting, int]
) -> Generator[Any, Any, None]:
    """A peer that closes with GOODBYE is CLEAN_CLOSE here (and LOCAL_CLOSE there)."""
    factory, port = server
    process = processes.startPeer(
        "alive_peer.py", "client", HOST, port, INTERVAL, "goodbye-after-first"
    )
    proto = yield factory.connection()
    yield proto.whenOpened()
    receipt = yield proto.sendMessage(b"first")
    assert receipt.seq == 1
    loss = yield proto.whenLost()
    assert loss.reason is Reason.CLEAN_CLOSE
    assert loss.goodbye is GoodbyeCode.SHUTTING_DOWN
    assert loss.detail == "peer said GOODBYE SHUTTING_DOWN: done after the first message"
    output = yield waitForExit(process)
    assert "LOST LOCAL_CLOSE" in output


@pytest.mark.timeout(20)
@twistedTest
def test_resetIsReset(
    processes: Processes, server: tuple[Collecting, int]
) -> Generator[Any, Any, None]:
    """A peer that aborts with an RST (SO_LINGER 0) is RESET."""
    factory, port = server
    process = processes.startPeer(
        "alive_peer.py", "client", HOST, port, INTERVAL, "rst-after-first"
    )
    proto = yield factory.connection()
    yield proto.whenOpened()
    receipt = yield proto.sendMessage(b"first")
    assert receipt.seq == 1
    loss = yield proto.whenLost()
    assert loss.reason is Reason.RESET
    assert proto.lostAt - proto.madeAt < DEADLINE
    output = yield waitForExit(process)
    assert "LOST LOCAL_CLOSE reset on purpose" in output


@pytest.mark.timeout(20)
@pytest.mark.parametrize("run", range(3))
@twistedTest
def test_stoppedPeerIsTimeout(
    processes: Processes, server: tuple[Collecting, int], stalls: Stalls, run: int
) -> Generator[Any, Any, None]:
    """A SIGSTOPped peer is TIMEOUT within interval x misses (+ one interval and slack)."""
    factory, port = server
    process = processes.startPeer("alive_peer.py", "client", HOST, port, INTERVAL, "echo")
    proto = yield factory.connection()
    yield proto.whenOpened()
    yield proto.sendMessage(b"ping me back")
    yield ensureDeferred(waitFor(lambda: proto.received == [b"ping me back"], 5, "the echo"))
    proto.stopGroup = process.pid  # at the next bytes from the peer
    loss = yield proto.whenLost()
    assert loss.reason is Reason.TIMEOUT
    detection = proto.lostAt - proto.stoppedAt
    print(
        f"SIGSTOP detection time (run {run}): {detection:.3f} s "
        f"(local stalls {stalls.seconds:.3f} s)"
    )
    # Time this process itself did not run is granted back by design.
    assert DEADLINE <= detection < DEADLINE + INTERVAL + 0.15 + stalls.seconds


@pytest.mark.timeout(20)
@twistedTest
def test_stoppedPeerTimeoutWithFullSendBuffer(
    processes: Processes, server: tuple[Collecting, int], stalls: Stalls
) -> Generator[Any, Any, None]:
    """The timeout aborts even when megabytes wait unsent for a stopped peer, and fails them all."""
    factory, port = server
    process = processes.startPeer("alive_peer.py", "client", HOST, port, INTERVAL, "echo")
    proto = yield factory.connection()
    yield proto.whenOpened()
    proto.stopGroup = process.pid
    yield ensureDeferred(waitFor(lambda: proto.stoppedAt, 5, "the peer to be stopped"))
    chunk = b"x" * 65536
    sent = [proto.sendMessage(chunk) for _ in range(300)]  # about 20 MB
    results = DeferredList(sent, consumeErrors=True)
    loss = yield proto.whenLost()
    assert loss.reason is Reason.TIMEOUT
    detection = proto.lostAt - proto.stoppedAt
    print(f"SIGSTOP detection with 20 MB unsent: {detection:.3f} s (stalls {stalls.seconds:.3f} s)")
    assert DEADLINE <= detection < DEADLINE + INTERVAL + 0.15 + stalls.seconds
    outcomes = yield results
    assert [ok for ok, _ in outcomes] == [False] * 300
    assert all(cast(DeliveryFailed, cast(Failure, f).value).loss is loss for _, f in outcomes)


@pytest.mark.slow
@pytest.mark.timeout(20)
@twistedTest
def test_blockedReactorIsNotTimeout(
    processes: Processes, server: tuple[Collecting, int]
) -> Generator[Any, Any, None]:
    """This process blocked past the deadline does not blame the (live) peer: no TIMEOUT."""
    factory, port = server
    # The peer tolerates our silence (20 misses); we allow it 3.
    process = processes.startPeer(
        "alive_peer.py", "client", HOST, port, INTERVAL, "echo", "--misses", 20
    )
    proto = yield factory.connection()
    yield proto.whenOpened()
    # The echo of this message blocks this process inside dataReceived, so
    # when it resumes the overdue heartbeat timer runs before any read.
    proto.blockOn = b"block"
    proto.blockFor = 3 * DEADLINE
    yield proto.sendMessage(b"block")
    yield elapse(3 * DEADLINE + 2 * DEADLINE)  # real time: the block, then two deadlines
    assert proto.received == [b"block"]
    assert proto.loss is None
    receipt = yield proto.sendMessage(b"still here")
    assert receipt.seq == 2
    assert process.poll() is None


@pytest.mark.timeout(20)
@twistedTest
def test_killedPeerIsNotCleanClose(processes: Processes) -> Generator[Any, Any, None]:
    """A SIGKILLed peer (its kernel sends FIN) is PEER_CLOSED or RESET, never CLEAN_CLOSE."""
    process = processes.startPeer("alive_peer.py", "server", HOST, 0, INTERVAL, "echo")
    port = yield ensureDeferred(readReady(process))
    proto = Local()
    endpoint = TCP4ClientEndpoint(getReactor(), HOST, port, timeout=5)
    yield connectProtocol(endpoint, proto)
    yield proto.whenOpened()
    yield proto.sendMessage(b"echo")
    yield ensureDeferred(waitFor(lambda: proto.received == [b"echo"], 5, "the echo"))
    killedAt = getReactor().seconds()
    os.killpg(process.pid, signal.SIGKILL)
    loss = yield proto.whenLost()
    assert loss.reason in (Reason.PEER_CLOSED, Reason.RESET)
    assert proto.lostAt - killedAt < DEADLINE  # a FIN or RST, not the heartbeat


@pytest.mark.timeout(20)
@twistedTest
def test_garbageIsProtocolError(processes: Processes) -> Generator[Any, Any, None]:
    """Garbage is PROTOCOL_ERROR at once; the peer gets GOODBYE(PROTOCOL_ERROR) before the FIN."""
    factory = Collecting(heartbeatInterval=5.0)
    port = getReactor().listenTCP(0, factory, interface=HOST)
    try:
        process = processes.startPeer("raw_peer.py", HOST, port.getHost().port, "garbage")
        proto = yield factory.connection()
        loss = yield proto.whenLost()
        assert loss.reason is Reason.PROTOCOL_ERROR
        assert loss.cause is Cause.NOT_ALIVE_PEER
        assert loss.detail == (
            "the peer does not speak twisted_alive: its first bytes were "
            "0xff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff… "
            "(frame of 4294967295 bytes exceeds the maximum of 1048576 bytes)"
        )
        assert proto.lostAt - proto.madeAt < 0.5
        output = yield waitForExit(process)
        received = frames(output)
        assert [f["kind"] for f in received] == ["Hello", "Goodbye"]
        assert received[1]["code"] == GoodbyeCode.PROTOCOL_ERROR
        assert received[1]["reason"] == loss.detail
        assert output.splitlines()[-1] == "EOF"
    finally:
        yield port.stopListening()


@pytest.mark.timeout(20)
@twistedTest
def test_silentPeerIsTimeout(
    processes: Processes, server: tuple[Collecting, int]
) -> Generator[Any, Any, None]:
    """A peer that connects but never sends HELLO is TIMEOUT at the deadline."""
    factory, port = server
    process = processes.startPeer("raw_peer.py", HOST, port, "silent")
    proto = yield factory.connection()
    loss = yield proto.whenLost()
    assert loss.reason is Reason.TIMEOUT
    assert DEADLINE <= proto.lostAt - proto.madeAt < DEADLINE + 0.15
    output = yield waitForExit(process)
    assert [f["kind"] for f in frames(output)] == ["Hello"]
    assert output.splitlines()[-1] == "RESET"  # the timeout aborts


@pytest.mark.timeout(20)
@twistedTest
def test_refusedIsRefused() -> Generator[Any, Any, None]:
    """Connecting to a port that was just closed fails with a failure classify() calls REFUSED."""
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()
    endpoint = TCP4ClientEndpoint(getReactor(), HOST, port, timeout=5)
    try:
        yield connectProtocol(endpoint, Local())
    except Exception:
        failure = Failure()
    else:  # pragma: no cover
        pytest.fail("the connection was not refused")
    assert classify(failure) is Reason.REFUSED


@pytest.mark.timeout(20)
@twistedTest
def test_halfClosedPeerGetsAcks(
    processes: Processes, server: tuple[Collecting, int]
) -> Generator[Any, Any, None]:
    """A peer that shuts its write side after DATA still gets the ACKs; the loss is PEER_CLOSED."""
    factory, port = server
    process = processes.startPeer("raw_peer.py", HOST, port, "halfclose", "--count", 3)
    proto = yield factory.connection()
    loss = yield proto.whenLost()
    assert loss.reason is Reason.PEER_CLOSED
    assert proto.received == [b"half 1", b"half 2", b"half 3"]
    output = yield waitForExit(process)
    received = frames(output)
    assert received[0]["kind"] == "Hello"
    acks = [f["seq"] for f in received if f["kind"] == "Ack"]
    assert acks and acks[-1] == 3
    assert output.splitlines()[-1] == "EOF"


@pytest.mark.timeout(30)
@twistedTest
def test_garbageClientDoesNotDisturbOthers(
    processes: Processes, server: tuple[Collecting, int]
) -> Generator[Any, Any, None]:
    """A client sending garbage does not affect the server's other clients: all confirmed."""
    factory, port = server
    count = 40
    senders = [
        processes.startPeer(
            "alive_peer.py",
            "client",
            HOST,
            port,
            INTERVAL,
            "send",
            "--count",
            count,
            "--every",
            0.01,
            "--tag",
            f"c{i}",
        )
        for i in range(3)
    ]
    yield within(factory.connection(2), 10)  # the three senders are connected
    garbage = processes.startPeer("raw_peer.py", HOST, port, "garbage")
    outputs = yield DeferredList(
        [waitForExit(p) for p in [*senders, garbage]], fireOnOneErrback=True
    )
    for ok, output in outputs[:3]:
        assert ok
        assert f"CONFIRMED {count}" in output, output
        assert "LOST LOCAL_CLOSE" in output, output
    losses = yield DeferredList([p.whenLost() for p in factory.built])
    reasons = sorted(loss.reason.name for _, loss in losses)
    assert reasons == ["CLEAN_CLOSE"] * 3 + ["PROTOCOL_ERROR"]
    for i in range(3):
        got = [m for p in factory.built for m in p.received if m.startswith(b"c%d:" % i)]
        assert got == [b"c%d:%d" % (i, n) for n in range(count)]


class AttemptRecorder:
    """An AliveClientFactory that stops after its first failed attempt and
    hands over the Loss it recorded."""

    def __init__(self) -> None:
        from twisted_alive import AliveClientFactory

        self.factory = forProtocol(AliveClientFactory, HeartbeatProtocol)
        self.failed: Deferred[Loss] = Deferred()
        original = self.factory.clientConnectionFailed

        def failed(connector: Any, reason: Failure) -> None:
            original(connector, reason)
            self.factory.stopTrying()
            loss = self.factory.lastLoss
            assert loss is not None
            self.failed.callback(loss)

        self.factory.clientConnectionFailed = failed  # type: ignore[method-assign]


@pytest.mark.timeout(20)
@twistedTest
def test_silentPortIsConnectTimeout(blackhole: int) -> Generator[Any, Any, None]:
    """A connection attempt that gets no answer (SYNs dropped) is
    CONNECT_TIMEOUT, after the connect timeout, for the factory and for
    classify()."""
    recorder = AttemptRecorder()
    started = getReactor().seconds()
    getReactor().connectTCP(HOST, blackhole, recorder.factory, timeout=1)
    loss = yield recorder.failed
    assert loss.reason is Reason.CONNECT_TIMEOUT
    assert getReactor().seconds() - started >= 1.0
    assert loss.failure is not None and classify(loss.failure) is Reason.CONNECT_TIMEOUT
    assert recorder.factory.losses == {Reason.CONNECT_TIMEOUT: 1}


@pytest.mark.timeout(20)
@twistedTest
def test_refusedAttemptIsRefused() -> Generator[Any, Any, None]:
    """An AliveClientFactory records a refused attempt as a REFUSED Loss."""
    probe = socket.socket()
    probe.bind((HOST, 0))
    port = probe.getsockname()[1]
    probe.close()
    recorder = AttemptRecorder()
    getReactor().connectTCP(HOST, port, recorder.factory, timeout=5)
    loss = yield recorder.failed
    assert loss.reason is Reason.REFUSED
    assert loss.detail.startswith("connection attempt failed: Connection was refused")


@pytest.mark.timeout(20)
@twistedTest
def test_unusableLocalAddressIsConnectFailed() -> Generator[Any, Any, None]:
    """An attempt that fails neither by refusal nor by timeout (here: the
    local address to bind is taken) is CONNECT_FAILED."""
    taken = socket.socket()
    taken.bind((HOST, 0))
    taken.listen(1)
    try:
        recorder = AttemptRecorder()
        getReactor().connectTCP(
            HOST,
            taken.getsockname()[1],
            recorder.factory,
            timeout=5,
            bindAddress=(HOST, taken.getsockname()[1]),
        )
        loss = yield recorder.failed
    finally:
        taken.close()
    assert loss.reason is Reason.CONNECT_FAILED
