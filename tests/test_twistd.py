"""
Tests for the twistd plugin C{alive} (L{twisted_alive.service.tap}): option
parsing and the service in this process, then C{twistd -n alive} as a
subprocess, with real clients, the status service and SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import treq
from support import (
    LOOPBACK,
    ROOT,
    TWISTD,
    CollectingFactory,
    RedisServer,
    asyncYieldFixture,
    connectCollecting,
    ensureDeferred,
    environment,
    getReactor,
    waitFor,
)
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from zope.interface import implementer

from twisted_alive import MemorySessionStore, RedisSessionStore, SqliteSessionStore
from twisted_alive._factories import AliveServerFactory
from twisted_alive._mixin import ABORT_GRACE, HeartbeatMixin, HeartbeatProtocol
from twisted_alive._reasons import Loss, Reason
from twisted_alive.core.frames import NO_SESSION, GoodbyeCode
from twisted_alive.core.stored import StoredSession, StoreError
from twisted_alive.service.tap import (
    AliveServerService,
    EchoProtocol,
    Options,
    SinkProtocol,
    makeService,
)


def _freePort() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return cast(int, s.getsockname()[1])


@implementer(ILogObserver)
class Events:
    """Collects the twisted_alive log events of this process."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == "twisted_alive":
            self.events.append(event)

    def named(self, name: str) -> list[LogEvent]:
        return [e for e in self.events if e.get("event") == name]


@pytest.fixture
def events() -> Iterator[Events]:
    """The twisted_alive log events emitted during the test."""
    observer = Events()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


# -- options, in this process --------------------------------------------------


def _parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "abc"], "--interval must be a positive number of seconds, got 'abc'"),
        (["--interval", "0"], "--interval must be a positive number of seconds, got '0'"),
        (["--interval", "nan"], "--interval must be a positive number of seconds, got 'nan'"),
        (["--misses", "0"], "--misses must be a positive whole number, got '0'"),
        (
            ["--max-frame-size", "1.5"],
            "--max-frame-size must be a positive whole number of bytes, got '1.5'",
        ),
        (
            ["--max-frame-size", "10"],
            "maxFrameSize must be between 64 and 4294967295, got 10",
        ),
        (
            ["--session-ttl", "-1"],
            "--session-ttl must be a number of seconds, zero or more, got '-1'",
        ),
        (
            ["--close-timeout", "soon"],
            "--close-timeout must be a number of seconds, zero or more, got 'soon'",
        ),
        (["--app", "nosuch:thing"], '--app "nosuch:thing": cannot import module "nosuch"'),
        (["--app", "os:nosuch"], '--app "os:nosuch": module "os" has no attribute "nosuch"'),
        (["--app", "nosuch"], "--app must be echo, sink or package.module:name, got 'nosuch'"),
        (
            ["--app", "os:sep"],
            f'--app "os:sep" gave {os.sep!r}, not an AliveServerFactory '
            "or a HeartbeatMixin subclass",
        ),
        (
            ["--app", "os:getpid"],
            '--app "os:getpid" gave ' + repr(os.getpid())
            + ", not an AliveServerFactory or a HeartbeatMixin subclass",
        ),
        (
            ["--listen", "tpc:9000"],
            "invalid --listen endpoint \"tpc:9000\": unknown endpoint type 'tpc' "
            "(write an endpoint string such as tcp:9000:interface=127.0.0.1)",
        ),
        (
            ["--status", "tcp:port"],
            "invalid --status endpoint \"tcp:port\": port 'port' is not a number from 0 "
            "to 65535",
        ),
        (
            ["--status", "tcp:xyz"],
            "invalid --status endpoint \"tcp:xyz\": port 'xyz' is not a number from 0 to 65535",
        ),
        (
            ["--listen", "tcp:-5"],
            "invalid --listen endpoint \"tcp:-5\": port '-5' is not a number from 0 to 65535",
        ),
        (
            ["--listen", "tcp:9000:backlog=lots"],
            "invalid --listen endpoint \"tcp:9000:backlog=lots\": backlog 'lots' is not a "
            "whole number of 1 or more",
        ),
        (
            ["--sessions", "nosuch:x"],
            "invalid --sessions \"nosuch:x\": unknown session store 'nosuch:x': use memory, "
            "sqlite:PATH[:synchronous=NORMAL|FULL] or redis://HOST:PORT/DB",
        ),
        (
            ["--sessions", ""],
            "invalid --sessions \"\": empty session store description: use memory, "
            "sqlite:PATH[:synchronous=NORMAL|FULL] or redis://HOST:PORT/DB",
        ),
        (
            ["--sessions", "sqlite:"],
            "invalid --sessions \"sqlite:\": 'sqlite:' names no file: use "
            "sqlite:PATH[:synchronous=NORMAL|FULL]",
        ),
        (
            ["--sessions", "sqlite:x.db:synchronous=HALF"],
            "invalid --sessions \"sqlite:x.db:synchronous=HALF\": synchronous must be NORMAL "
            "or FULL, got 'HALF' in 'sqlite:x.db:synchronous=HALF'",
        ),
        (
            ["--sessions", "memory:x"],
            "invalid --sessions \"memory:x\": the memory session store takes no options, "
            "got 'memory:x'",
        ),
        (
            ["--sessions", "redis://h:1/x"],
            "invalid --sessions \"redis://h:1/x\": invalid database 'x' in 'redis://h:1/x': "
            "DB is a number, 0 or more",
        ),
        (
            ["--sessions", "sqlite:/nonexistent/dir/x.db"],
            "--sessions \"sqlite:/nonexistent/dir/x.db\": cannot open session store "
            "/nonexistent/dir/x.db: unable to open database file",
        ),
    ],
)
def test_badOptions(args: list[str], message: str) -> None:
    """Each mistake in the options is a UsageError with an exact message."""
    with pytest.raises(usage.UsageError) as caught:
        _parse(*args)
    assert str(caught.value) == message


@pytest.mark.timeout(20)
def test_defaults() -> None:
    """Without options: echo on tcp:9000, no status service, the app's own
    heartbeat settings."""
    options = _parse()
    assert options["listen"] == ["tcp:9000"]
    assert options["statusEndpoint"] is None
    factory = options["factory"]
    assert isinstance(factory, AliveServerFactory)
    assert factory.protocol is EchoProtocol


@pytest.mark.timeout(20)
def test_settingsMakeASubclass() -> None:
    """--interval, --misses, --max-frame-size and --close-timeout make a
    subclass of the app's protocol; --session-ttl sets the factory's TTL."""
    options = _parse(
        "--app=sink",
        "--interval=0.5",
        "--misses=4",
        "--max-frame-size=4096",
        "--close-timeout=2",
        "--session-ttl=30",
        "--listen=tcp:0",
        "--listen=tcp:0:interface=127.0.0.1",
    )
    factory = options["factory"]
    proto = factory.protocol
    assert issubclass(proto, SinkProtocol) and proto is not SinkProtocol
    assert proto.__name__ == "SinkProtocol"
    assert (proto.heartbeatInterval, proto.heartbeatMisses) == (0.5, 4)
    assert (proto.maxFrameSize, proto.closeTimeout) == (4096, 2.0)
    assert SinkProtocol.heartbeatInterval == 5.0
    assert factory.sessionTTL == 30.0
    assert len(options["endpoints"]) == 2


class UserProtocol(HeartbeatProtocol):
    """A user's own protocol, for --app."""


class UserFactory(AliveServerFactory):
    """A user's own factory, for --app."""

    protocol = UserProtocol


userFactory = UserFactory()


def makeUserFactory() -> UserFactory:
    """A callable returning a factory, for --app."""
    return UserFactory()


def makeUserProtocol() -> type[UserProtocol]:
    """A callable returning a protocol class, for --app."""
    return UserProtocol


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "name", ["UserProtocol", "UserFactory", "userFactory", "makeUserFactory", "makeUserProtocol"]
)
def test_userApp(name: str) -> None:
    """--app accepts a HeartbeatMixin subclass, an AliveServerFactory, or a
    callable returning either."""
    options = _parse(f"--app={__name__}:{name}", "--interval=2")
    factory = options["factory"]
    assert isinstance(factory, AliveServerFactory)
    assert issubclass(factory.protocol, UserProtocol)
    assert factory.protocol.heartbeatInterval == 2.0
    if name == "userFactory":
        assert factory is userFactory


def notAlive() -> AliveServerFactory:
    """A factory whose protocol does not speak the framing."""
    factory = AliveServerFactory()
    factory.protocol = object
    return factory


def failing() -> None:
    """A callable that fails."""
    raise RuntimeError("no database")


@pytest.mark.timeout(20)
def test_userAppMistakes() -> None:
    """A user factory whose protocol is no HeartbeatMixin, or a callable
    that raises, gives a clear UsageError."""
    with pytest.raises(usage.UsageError) as caught:
        _parse(f"--app={__name__}:notAlive")
    assert str(caught.value) == (
        f"--app \"{__name__}:notAlive\": the factory's protocol <class 'object'> "
        "is not a HeartbeatMixin subclass"
    )
    with pytest.raises(usage.UsageError) as caught:
        _parse(f"--app={__name__}:failing")
    assert str(caught.value) == (
        f'--app "{__name__}:failing": calling it failed: RuntimeError: no database'
    )


@pytest.mark.timeout(20)
def test_sessionsNotAStore(tmp_path: Path) -> None:
    """A --sessions file that is not a session store is a usage error, and
    the file is left as it is."""
    path = tmp_path / "notes.db"
    content = b"these are my notes, not a database" * 4
    path.write_bytes(content)
    with pytest.raises(usage.UsageError) as caught:
        _parse("--sessions", f"sqlite:{path}")
    assert str(caught.value) == (
        f'--sessions "sqlite:{path}": {path} is not a twisted_alive session store: it cannot '
        "be read as a SQLite database (file is not a database); it was left as it is"
    )
    assert path.read_bytes() == content


def withStore() -> AliveServerFactory:
    """An app whose factory keeps its sessions in a store already."""
    return AliveServerFactory(MemorySessionStore())


@pytest.mark.timeout(20)
def test_sessionsTwice() -> None:
    """--sessions for an app whose factory has a store already is a usage
    error (one store or the other, never a silent choice)."""
    with pytest.raises(usage.UsageError) as caught:
        _parse("--app", f"{__name__}:withStore", "--sessions", "memory")
    assert str(caught.value) == (
        '--sessions "memory": the --app factory keeps its sessions in '
        "<MemorySessionStore: 0 sessions> already"
    )


@pytest.mark.timeout(20)
@ensureDeferred
async def test_sessionsStoreGivenAndClosed(tmp_path: Path) -> None:
    """--sessions sqlite:PATH gives the factory a SQLite store on PATH (a
    new file becomes one); the service loads its sessions when it starts
    and closes the store once it stopped."""
    path = tmp_path / "sessions.db"
    options = _parse(
        f"--listen=tcp:{_freePort()}:interface={LOOPBACK}", "--sessions", f"sqlite:{path}"
    )
    factory: AliveServerFactory = options["factory"]
    store = factory.store
    assert isinstance(store, SqliteSessionStore) and store is options["store"]
    assert store.path == path and path.exists()
    service = makeService(options)
    service.startService()
    assert await factory.recovered() == []
    await maybeDeferred(service.stopService)
    with pytest.raises(StoreError):
        await store.flush()


@pytest.mark.timeout(20)
@ensureDeferred
async def test_sessionsOnRedis(redisServer: RedisServer) -> None:
    """--sessions redis://HOST:PORT/DB gives the factory a Redis store on
    that server, with the reactor itself; the service loads its sessions
    when it starts and closes the store once it stopped."""
    options = _parse(
        f"--listen=tcp:{_freePort()}:interface={LOOPBACK}",
        "--sessions",
        f"redis://{LOOPBACK}:{redisServer.port}/0?prefix=twistd:",
    )
    factory: AliveServerFactory = options["factory"]
    store = factory.store
    assert isinstance(store, RedisSessionStore) and store is options["store"]
    assert (store.port, store.db, store.prefix) == (redisServer.port, 0, "twistd:")
    service = makeService(options)
    service.startService()
    assert await factory.recovered() == []
    await maybeDeferred(service.stopService)
    with pytest.raises(StoreError):
        await store.flush()


# -- the service, in this process ------------------------------------------------


class Service:
    """A started L{AliveServerService} on 127.0.0.1, with its status site."""

    def __init__(self, *args: str) -> None:
        self.serverPort = _freePort()
        self.statusPort = _freePort()
        options = _parse(
            f"--listen=tcp:{self.serverPort}:interface={LOOPBACK}",
            f"--status=tcp:{self.statusPort}:interface={LOOPBACK}",
            *args,
        )
        self.service = makeService(options)
        self.factory: AliveServerFactory = options["factory"]
        self.clients: list[CollectingFactory] = []
        self.stopped = False

    async def client(self) -> tuple[CollectingFactory, HeartbeatMixin]:
        factory, proto = await connectCollecting(self.serverPort)
        self.clients.append(factory)
        return factory, proto

    async def health(self) -> int:
        response = await treq.get(
            f"http://{LOOPBACK}:{self.statusPort}/health", persistent=False, timeout=5
        )
        await response.content()
        return cast(int, response.code)

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await maybeDeferred(self.service.stopService)
        await gatherResults([c.close() for c in self.clients])


@asyncYieldFixture
async def service() -> AsyncIterator[Service]:
    """A started echo L{Service}, stopped at the end."""
    s = Service("--interval=0.2")
    s.service.startService()
    yield s
    await s.stop()


@pytest.mark.timeout(30)
@ensureDeferred
async def test_stopSaysGoodbye(service: Service) -> None:
    """Stopping the service closes every connection with GOODBYE
    SHUTTING_DOWN (a CLEAN_CLOSE for the clients); the factory stops and
    the status site goes away only after that."""
    first, one = await service.client()
    second, two = await service.client()
    receipt = await first.sendMessage(b"ping")
    assert receipt.seq == 1
    await waitFor(lambda: first.received == [b"ping"], 5, "the echo")
    assert await service.health() == 200
    site = service.service.status
    assert site is not None

    factory = service.factory
    openAtFactoryStop: list[int] = []
    stopFactory = factory.stopFactory

    def spy() -> None:
        openAtFactoryStop.append(len(factory.connections))
        stopFactory()

    factory.stopFactory = spy  # type: ignore[method-assign]
    stopping = maybeDeferred(service.service.stopService)
    service.stopped = True
    losses: list[Loss] = await gatherResults([one.whenLost(), two.whenLost()])
    for loss in losses:
        assert loss.reason is Reason.CLEAN_CLOSE
        assert loss.goodbye is GoodbyeCode.SHUTTING_DOWN
    await stopping
    assert openAtFactoryStop == [0]
    assert factory.numPorts == 0
    assert site.numPorts == 0
    for client in (first, second):
        client.stopTrying()


@pytest.mark.timeout(30)
@ensureDeferred
async def test_stopWaitsForConfirmation(service: Service) -> None:
    """Messages the server sent before the shutdown are confirmed by the
    client before the connection closes."""
    client, proto = await service.client()
    (server,) = service.factory.connections
    receipts = [server.sendMessage(b"late %d" % i) for i in range(50)]
    await maybeDeferred(service.service.stopService)
    service.stopped = True
    done = await gatherResults(receipts)
    assert [r.seq for r in done] == list(range(1, 51))
    assert client.received == [b"late %d" % i for i in range(50)]
    loss = await proto.whenLost()
    assert loss.goodbye is GoodbyeCode.SHUTTING_DOWN
    client.stopTrying()


class Stuck:
    """A stand-in for a connection whose orderly close never completes."""

    def __init__(self) -> None:
        self.aborted: list[str] = []
        self.closing: Deferred[Any] = Deferred()

    def close(self, code: GoodbyeCode, reason: str) -> Deferred[Any]:
        return self.closing

    def abort(self, detail: str) -> None:
        self.aborted.append(detail)


@pytest.mark.timeout(20)
def test_closeIsBounded() -> None:
    """A connection still open closeTimeout + ABORT_GRACE + 1 seconds after
    the GOODBYE is aborted, and the shutdown goes on."""
    clock = Clock()
    factory = AliveServerFactory()
    factory.protocol = type("Quick", (EchoProtocol,), {"closeTimeout": 3.0})
    stuck = Stuck()
    factory.connections.add(cast(HeartbeatMixin, stuck))
    service = AliveServerService(factory, [], clock=clock)
    d = service.closeConnections()
    clock.advance(3.0 + ABORT_GRACE + 0.9)
    assert not d.called and stuck.aborted == []
    clock.advance(0.2)
    assert stuck.aborted == ["aborted at shutdown: the orderly close took too long"]
    assert d.called
    stuck.closing.callback(None)  # a late close changes nothing
    assert clock.getDelayedCalls() == []


@pytest.mark.timeout(20)
def test_closeWithoutConnections() -> None:
    """With no connection, closing is immediate and arms no timer."""
    clock = Clock()
    service = AliveServerService(AliveServerFactory(), [], clock=clock)
    d = service.closeConnections()
    assert d.called
    assert clock.getDelayedCalls() == []


@pytest.mark.timeout(20)
def test_storeThatCannotLoad(events: Events) -> None:
    """A service whose factory's store cannot be loaded says so in one
    critical line, the factory's (under twistd it then stops the server,
    and the process exits with status 1)."""
    store = MemorySessionStore()
    store.listSessions = lambda: fail(StoreError("disk gone"))  # type: ignore[method-assign]
    factory = AliveServerFactory(store)
    factory.clock = Clock()
    service = AliveServerService(factory, [], clock=Clock())
    service.startService()
    try:
        (event,) = events.named("store_failed")
        assert event["log_level"].name == "critical"
        assert formatEvent(event) == (
            "alive.store: cannot load the sessions of <MemorySessionStore: 0 sessions>: "
            "disk gone"
        )
    finally:
        service.stopService()


@pytest.mark.timeout(20)
def test_recoveredWatchedForBuiltinApps() -> None:
    """For a built-in app, the service watches the Deferred of each message
    a previous process sent: one whose session expires fails without an
    unhandled error."""
    store = MemorySessionStore()
    token = bytes(range(16))
    store.createSession(StoredSession(token, 1, nextSeq=2, lastSeen=0.0, messages=((1, b"x"),)))
    factory = AliveServerFactory(store)
    clock = Clock()
    factory.clock = clock
    service = AliveServerService(factory, [], clock=clock)
    service.handleRecovered = True
    service.startService()
    try:
        recovered: list[tuple[bytes, bytes, Deferred[Any]]] = []
        factory.recovered().addCallback(recovered.extend)
        ((_, _, d),) = recovered
        clock.advance(factory.sessionTTL + 1)
        assert d.called and d.result is None  # failed, and handled
    finally:
        service.stopService()


# -- twistd -n alive, as a subprocess ----------------------------------------------


class Twistd:
    """A C{twistd -n alive} subprocess; its output goes to a file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "twistd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *args: str, pythonPath: tuple[Path, ...] = ()) -> None:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [*TWISTD, "-n", "--pidfile=", "alive", *args],
                cwd=self.tmp,
                env=environment(*pythonPath),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def waitForHealth(self, port: int) -> None:
        """Wait until /health answers 200 (fail if twistd exits)."""

        async def healthy() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, f"twistd exited:\n{self.output()}"
            try:
                response = await treq.get(
                    f"http://{LOOPBACK}:{port}/health", persistent=False, timeout=2
                )
                body = await response.content()
            except Exception:
                return False
            if response.code == 200:
                assert body == b"ok\n"
                return True
            return False

        try:
            await waitFor(healthy, 20, "/health", interval=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}; twistd did not start:\n{self.output()}") from None

    async def waitForExit(self, seconds: float) -> int:
        process = self.process
        assert process is not None
        await waitFor(lambda: process.poll() is not None, seconds, "twistd exit")
        return cast(int, process.returncode)

    def kill(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def twistd(tmp_path: Path) -> Iterator[Twistd]:
    """A twistd runner, killed (whole process group) at the end."""
    runner = Twistd(tmp_path)
    try:
        yield runner
    finally:
        runner.kill()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "alive", *args],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(40)
@ensureDeferred
async def test_storeThatCannotLoadExits(tmp_path: Path) -> None:
    """twistd -n alive --sessions on a file that is a session store but
    not a server's (a client's): the server says why in one line, stops,
    and the process exits with status 1 (a supervisor sees a failed start);
    the file is left as it is."""
    path = tmp_path / "client.db"
    store = SqliteSessionStore(path, reactor=getReactor())
    await store.createSession(StoredSession(NO_SESSION, 1))
    await store.close()
    result = _runIn(
        tmp_path, "--listen", f"tcp:0:interface={LOOPBACK}", "--sessions", f"sqlite:{path}"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    output = result.stdout + result.stderr
    assert output.count("cannot load the sessions of") == 1, output
    assert "holds a client's session (one without a token)" in output
    assert path.stat().st_size > 0


def _runIn(where: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "alive", *args],
        cwd=where,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=30,
        start_new_session=True,
    )


@pytest.mark.timeout(40)
def test_helpListsOptions() -> None:
    """twistd -n alive --help lists every option of the plugin."""
    result = _run("--help")
    assert result.returncode == 0, result.stderr
    for option in (
        "--listen=",
        "--status=",
        "--app=",
        "--interval=",
        "--misses=",
        "--max-frame-size=",
        "--session-ttl=",
        "--close-timeout=",
        "--sessions=",
        "--reuse-port",
    ):
        assert option in result.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "abc"], "--interval must be a positive number of seconds, got 'abc'"),
        (["--app", "nosuch:thing"], '--app "nosuch:thing": cannot import module "nosuch"'),
        (
            ["--listen", "tpc:9000"],
            "invalid --listen endpoint \"tpc:9000\": unknown endpoint type 'tpc' "
            "(write an endpoint string such as tcp:9000:interface=127.0.0.1)",
        ),
        (
            ["--status", "tcp:xyz"],
            "invalid --status endpoint \"tcp:xyz\": port 'xyz' is not a number from 0 to 65535",
        ),
        (["--listen", "garbage"], "invalid --listen endpoint \"garbage\": unknown endpoint "
         "type 'garbage' (write an endpoint string such as tcp:9000:interface=127.0.0.1)"),
        (
            ["--reuse-port", "--listen", "unix:alive.sock"],
            '--reuse-port shares TCP ports only (tcp:PORT, tcp6:PORT), not --listen '
            '"unix:alive.sock"',
        ),
    ],
)
def test_badOptionsExit(args: list[str], message: str) -> None:
    """A bad option makes twistd exit non-zero with the exact message and
    no traceback."""
    result = _run(*args)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert any(line.endswith(": " + message) for line in output.splitlines()), output
    assert "Traceback" not in output
    assert len(output.splitlines()) <= 3, output  # twistd's synopsis, a hint, the error


@pytest.mark.timeout(20)
def test_noPackageMarkers() -> None:
    """twisted/ and twisted/plugins/ in the source tree have no
    __init__.py (one would hide the installed Twisted)."""
    assert (ROOT / "twisted" / "plugins" / "twisted_alive_plugin.py").is_file()
    assert not (ROOT / "twisted" / "__init__.py").exists()
    assert not (ROOT / "twisted" / "plugins" / "__init__.py").exists()


@pytest.mark.timeout(90)
@ensureDeferred
async def test_echoThenSigterm(twistd: Twistd) -> None:
    """twistd -n alive serves echo and /health; on SIGTERM the client's
    loss is CLEAN_CLOSE with GOODBYE SHUTTING_DOWN, and twistd exits the
    status 0 within a bound."""
    port, statusPort = _freePort(), _freePort()
    twistd.start(
        f"--listen=tcp:{port}:interface={LOOPBACK}",
        f"--status=tcp:{statusPort}:interface={LOOPBACK}",
        "--app=echo",
        "--interval=0.5",
        "--close-timeout=5",
    )
    await twistd.waitForHealth(statusPort)
    client, proto = await connectCollecting(port)
    try:
        receipts = await gatherResults([client.sendMessage(b"m%d" % i) for i in range(20)])
        assert [r.seq for r in receipts] == list(range(1, 21))
        await waitFor(lambda: len(client.received) == 20, 10, "the echoes")
        assert client.received == [b"m%d" % i for i in range(20)]

        assert twistd.process is not None
        twistd.process.send_signal(signal.SIGTERM)
        loss = await proto.whenLost().addTimeout(15, getReactor())
        assert loss.reason is Reason.CLEAN_CLOSE
        assert loss.goodbye is GoodbyeCode.SHUTTING_DOWN
        code = await twistd.waitForExit(15)
    finally:
        await client.close()
    output = twistd.output()
    assert code == 0, output
    assert "alive.shutdown: closing 1 connections with GOODBYE SHUTTING_DOWN" in output
    assert "alive.shutdown: 1 connections closed in" in output
    assert "Server Shut Down." in output
    assert "Traceback" not in output


USER_APP = '''
from twisted_alive._factories import AliveServerFactory
from twisted_alive._mixin import HeartbeatProtocol


class Shout(HeartbeatProtocol):
    def messageReceived(self, payload):
        self.sendMessage(payload.upper())


def make():
    return AliveServerFactory.forProtocol(Shout)
'''


@pytest.mark.timeout(90)
@ensureDeferred
async def test_userAppUnderTwistd(twistd: Twistd, tmp_path: Path, events: Events) -> None:
    """--app package.module:callable serves the user's own factory, with
    the heartbeat interval of --interval announced to clients."""
    (tmp_path / "shoutapp.py").write_text(textwrap.dedent(USER_APP))
    port, statusPort = _freePort(), _freePort()
    twistd.start(
        f"--listen=tcp:{port}:interface={LOOPBACK}",
        f"--status=tcp:{statusPort}:interface={LOOPBACK}",
        "--app=shoutapp:make",
        "--interval=0.3",
        pythonPath=(tmp_path,),
    )
    await twistd.waitForHealth(statusPort)
    client, proto = await connectCollecting(port)
    try:
        await client.sendMessage(b"hello")
        await waitFor(lambda: client.received == [b"HELLO"], 10, "the reply")
        (hello,) = [e for e in events.named("hello") if e.get("peer") == f"{LOOPBACK}:{port}"]
        assert hello["interval"] == 0.3
        assert twistd.process is not None
        twistd.process.send_signal(signal.SIGTERM)
        loss = await proto.whenLost().addTimeout(15, getReactor())
        assert loss.goodbye is GoodbyeCode.SHUTTING_DOWN
        assert await twistd.waitForExit(15) == 0
    finally:
        await client.close()


# -- listeners: backlog, status interface, listen errors ----------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("listen", "backlog"),
    [("tcp:9000", 4096), ("tcp:9000:backlog=100", 100), ("tcp:9000:127.0.0.1:60", 60),
     ("tcp6:9000", 4096), ("unix:/tmp/alive-test.sock", 4096)],
)
def test_listenBacklogDefault(listen: str, backlog: int) -> None:
    """A --listen endpoint that names no backlog gets DEFAULT_BACKLOG (4096); a named one
    is kept."""
    (endpoint,) = _parse("--listen", listen)["endpoints"]
    assert endpoint.endpoint._backlog == backlog


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("status", "interface"),
    [("tcp:9080", "127.0.0.1"), ("tcp6:9080", "::1"), ("tcp:9080:interface=0.0.0.0", "0.0.0.0"),
     ("tcp:port=9080:interface=10.1.2.3", "10.1.2.3")],
)
def test_statusInterfaceDefault(status: str, interface: str) -> None:
    """A --status endpoint that names no interface listens on loopback; a named one is kept."""
    endpoint = _parse("--status", status)["statusEndpoint"]
    assert endpoint.endpoint._interface == interface


def _listening(events: Events, option: str) -> str:
    """Where the ``option`` endpoint listens, from its ``listening`` log event."""
    (event,) = [e for e in events.named("listening") if e["option"] == option]
    return cast(str, event["where"])


@pytest.mark.timeout(30)
@ensureDeferred
async def test_statusOnLoopbackByDefault(events: Events) -> None:
    """Over real sockets: --status tcp:PORT listens on 127.0.0.1 (and serves /health there)
    without the exposure warning; --listen tcp:PORT listens on all interfaces."""
    statusPort = _freePort()
    service = makeService(_parse("--listen", "tcp:0", "--status", f"tcp:{statusPort}"))
    service.startService()
    try:
        assert _listening(events, "--status") == f"127.0.0.1:{statusPort}"
        assert _listening(events, "--listen").startswith("0.0.0.0:")
        response = await treq.get(
            f"http://127.0.0.1:{statusPort}/health", persistent=False, timeout=5
        )
        assert response.code == 200
        await response.content()
        assert events.named("status-exposed") == []
    finally:
        await maybeDeferred(service.stopService)


@pytest.mark.timeout(30)
@ensureDeferred
async def test_statusOnAllInterfacesWarns(events: Events) -> None:
    """Over real sockets: --status tcp:PORT:interface=0.0.0.0 listens on all interfaces
    and logs a warning that the site is reachable from other hosts, unauthenticated."""
    from twisted.logger import LogLevel

    service = makeService(
        _parse("--listen", f"tcp:0:interface={LOOPBACK}", "--status", "tcp:0:interface=0.0.0.0")
    )
    service.startService()
    try:
        where = _listening(events, "--status")
        assert where.startswith("0.0.0.0:")
        (warning,) = events.named("status-exposed")
        assert warning["log_level"] is LogLevel.warn
        assert warning["where"] == where
        text = formatEvent(warning)
        assert text == (
            f"alive.status: the status site on {where} is reachable from other hosts and has "
            "no authentication: bind it to loopback (--status tcp:PORT, the default "
            "interface) or put it behind an authenticating proxy"
        )
    finally:
        await maybeDeferred(service.stopService)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option", ["--listen", "--status"])
def test_portInUseOneLine(option: str) -> None:
    """twistd -n alive with a --listen or --status port already in use exits 1 with one
    line naming the option, the endpoint and the problem, and no traceback."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        given = f"tcp:{port}:interface={LOOPBACK}"
        args = [option, given]
        if option == "--status":
            args += ["--listen", f"tcp:0:interface={LOOPBACK}"]
        result = _run(*args)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if "cannot listen" in line]
    assert len(lines) == 1, output
    assert lines[0].endswith(
        f'[twisted_alive#critical] cannot listen on {option} "{given}": address already in use'
    )


@pytest.mark.timeout(40)
def test_version() -> None:
    """twistd -n alive --version prints the package's version and exits 0."""
    from twisted_alive import __version__

    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"twisted_alive {__version__}\n"
