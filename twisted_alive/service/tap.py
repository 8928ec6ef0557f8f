"""
The twistd plugin ``alive``: serve an `AliveServerFactory` on one or more
endpoints, with an optional HTTP status service::

    twistd -n alive --listen tcp:9000 --status tcp:9080 --app echo

On shutdown (SIGTERM, SIGINT, ``reactor.stop()``) the server stops
listening, sends GOODBYE(SHUTTING_DOWN) on every connection, waits for the
clients to confirm what is outstanding (at most ``--close-timeout`` seconds),
and only then lets the process exit: the clients classify the loss as
``CLEAN_CLOSE``.

With ``--sessions sqlite:PATH`` the sessions live in that file: a server
killed (even with SIGKILL) and started again on it accepts the resume of
every session it had. The file is checked before the server starts (a file
that is not a session store is a usage error, left as it is), and closed
once the last connection is.

With ``--reuse-port`` each ``--listen`` TCP endpoint listens with
``SO_REUSEPORT`` (`ReusePortEndpoint`): several processes started with the
same ``--listen`` share its port, and with ``--sessions redis://...`` they
share the sessions too.
"""

from __future__ import annotations

import importlib
import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Any, cast

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorFromThreads,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._factories import AliveServerFactory
from twisted_alive._interfaces import ISessionStore
from twisted_alive._mixin import ABORT_GRACE, HeartbeatMixin, HeartbeatProtocol
from twisted_alive._stores import SqliteSessionStore, sessionStoreFromString
from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.core.outcomes import DeliveryFailed
from twisted_alive.core.stored import StoreError
from twisted_alive.service.reuseport import REUSE_PORT_TYPES, ReusePortEndpoint, reusePortProblem
from twisted_alive.service.status import StatusSite, statusSite
from twisted_alive.tools.cli import (
    EndpointError,
    listenProblem,
    reachableFromOtherHosts,
    serverEndpointString,
    serverParameters,
    splitEndpoint,
    withDefault,
)

log = Logger(namespace="twisted_alive")

DEFAULT_LISTEN = "tcp:9000"
"""The endpoint served when no ``--listen`` is given."""

DEFAULT_BACKLOG = 4096
"""The listen backlog of a ``--listen`` endpoint that names none (Twisted's
own default is 50): after a restart, thousands of clients reconnect at once,
and connections beyond the backlog wait for SYN retransmissions (1, 3, 7,
15 s...). The kernel caps it at ``net.core.somaxconn``."""

STATUS_INTERFACE = {"tcp": "127.0.0.1", "tcp6": "::1", "ssl": "127.0.0.1"}
"""The interface of a ``--status`` endpoint that names none, by endpoint
type: loopback, since the status site has no authentication."""


class EchoProtocol(HeartbeatProtocol):
    """
    The ``echo`` app: every message is sent back to its sender, in the same
    session (so an echo survives the client's reconnects).
    """

    def messageReceived(self, payload: bytes) -> Deferred[Any] | None:
        """Send ``payload`` back. If it cannot even be queued (the send
        queue is full, the connection is closing), the message is rejected
        and the client's ``sendMessage`` fails with the reason."""
        try:
            d = self.sendMessage(payload)
        except RuntimeError:
            # This side is closing the connection (at shutdown): reject the
            # message; the client's sendMessage fails with the reason.
            return defer.fail(DeliveryFailed("the server is closing the connection; not echoed"))
        if d.called:
            return d  # failed at once: the mixin rejects the message
        d.addErrback(_sessionEnded)
        return None


def _exitFailed() -> None:
    """End the process with status 1, after the reactor shut down (the
    store closed, the connections too)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


def _sessionEnded(failure: Failure) -> None:
    # The client's session ended before it confirmed the echo: nothing to do.
    failure.trap(DeliveryFailed)  # type: ignore[no-untyped-call]


class SinkProtocol(HeartbeatProtocol):
    """
    The ``sink`` app: every message is confirmed and dropped.

    :ivar received: messages received on this connection.
    :ivar receivedBytes: payload bytes received on this connection.
    """

    received = 0
    receivedBytes = 0

    def messageReceived(self, payload: bytes) -> None:
        """Count ``payload`` and drop it."""
        self.received += 1
        self.receivedBytes += len(payload)


APPS: dict[str, type[HeartbeatMixin]] = {"echo": EchoProtocol, "sink": SinkProtocol}
"""The built-in apps of ``--app``."""


def _number(option: str, allowZero: bool) -> Callable[[str], float]:
    what = "a number of seconds, zero or more" if allowZero else "a positive number of seconds"

    def coerce(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not allowZero):
            raise usage.UsageError(f"{option} must be {what}, got {text!r}")
        return value

    return coerce


def _whole(option: str, what: str) -> Callable[[str], int]:
    def coerce(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise usage.UsageError(f"{option} must be {what}, got {text!r}")
        return value

    return coerce


class Options(usage.Options):
    """
    The options of ``twistd alive``.

    :param reactor: the reactor the endpoints are made for; the global
        reactor if not given.
    """

    synopsis = "[--listen ENDPOINT]... [--status ENDPOINT] [--app APP] [options]"
    longdesc = (
        "Serve twisted_alive connections (heartbeats, loss reasons, confirmed and "
        "resumable delivery) on each --listen endpoint, with the application named by "
        "--app: echo, sink, or package.module:name, where name is a HeartbeatMixin "
        "subclass, an AliveServerFactory, or a callable returning either. Endpoints "
        "are Twisted endpoint strings (tcp:9000, tcp:9000:interface=127.0.0.1, "
        "ssl:9443:privateKey=key.pem:certKey=cert.pem, unix:/run/alive.sock). "
        "With --reuse-port, several processes serve the same TCP port (SO_REUSEPORT). "
        "On SIGTERM every connection gets GOODBYE(SHUTTING_DOWN) before the process exits."
    )

    optParameters = [
        [
            "status",
            None,
            None,
            "Endpoint of the HTTP status service (/health, /connections, /metrics) "
            "[default: no status service]",
        ],
        [
            "app",
            None,
            "echo",
            "The application: echo, sink, or package.module:name",
        ],
        [
            "interval",
            None,
            None,
            "Heartbeat interval in seconds [default: the app's own; 5 for echo and sink]",
            _number("--interval", allowZero=False),
        ],
        [
            "misses",
            None,
            None,
            "Missed intervals before a silent client counts as gone "
            "[default: the app's own; 3 for echo and sink]",
            _whole("--misses", "a positive whole number"),
        ],
        [
            "max-frame-size",
            None,
            None,
            "Largest frame accepted, in bytes [default: the app's own; 1048576 for echo "
            "and sink]",
            _whole("--max-frame-size", "a positive whole number of bytes"),
        ],
        [
            "session-ttl",
            None,
            None,
            "Seconds a session without connection is kept for its client to resume "
            "[default: the factory's own; 300]",
            _number("--session-ttl", allowZero=True),
        ],
        [
            "close-timeout",
            None,
            None,
            "Seconds to wait at shutdown for clients to confirm outstanding messages "
            "[default: the app's own; 10]",
            _number("--close-timeout", allowZero=True),
        ],
        [
            "sessions",
            None,
            None,
            "Where the sessions live: memory, sqlite:PATH[:synchronous=NORMAL|FULL] "
            "(a server started again on the same file resumes every session it had) "
            "or redis://HOST:PORT/DB[?prefix=PREFIX] (shared by every process on it) "
            "[default: memory, the app's own store if it has one]",
        ],
    ]

    optFlags = [
        [
            "reuse-port",
            None,
            "Listen on each --listen TCP endpoint with SO_REUSEPORT, so that several "
            "processes share its port (the kernel spreads the connections among them)",
        ],
    ]

    def __init__(self, reactor: Any = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self._reactor = reactor

    def opt_version(self) -> None:
        """
        Print the version of twisted_alive and exit
        """
        from twisted_alive import __version__

        print(f"twisted_alive {__version__}")
        raise SystemExit(0)

    def opt_listen(self, description: str) -> None:
        """
        Endpoint to serve on; repeat to serve on several
        [default: tcp:9000]
        """
        self["listen"].append(description)

    def postOptions(self) -> None:
        """Check the endpoints and build the factory, so that every mistake
        is reported before the server starts."""
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if self["reuse-port"]:
            problem = reusePortProblem()
            if problem is not None:
                raise usage.UsageError(f"--reuse-port cannot be used here: {problem}")
        self["endpoints"] = [
            self._endpoint("--listen", text, withDefault(text, "backlog", str(DEFAULT_BACKLOG)))
            for text in self["listen"]
        ]
        status = self["status"]
        self["statusEndpoint"] = None
        if status is not None:
            kind = splitEndpoint(status)[0].strip().lower()
            local = withDefault(status, "interface", STATUS_INTERFACE.get(kind, "127.0.0.1"))
            self["statusEndpoint"] = self._endpoint("--status", status, local)
        self["factory"] = self._factory()
        self["store"] = self._store(self["factory"])

    def parseOptions(self, options: Any = None) -> None:
        """Parse ``options``; after a mistake, `getUsage` is one line (twistd
        prints it before the error) rather than the whole help."""
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError:
            self._failed = True
            raise

    _failed = False

    def getUsage(self, width: int | None = None) -> str:
        """The help text; a one-line hint once parsing failed."""
        if self._failed:
            return 'Run "twistd alive --help" for the options of alive.'
        return super().getUsage(width)

    def _endpoint(self, option: str, given: str, description: str) -> IStreamServerEndpoint:
        """The endpoint of ``description`` (``given`` with the defaults
        added), or a `usage.UsageError` naming ``option`` and ``given``."""
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        try:
            endpoint = serverEndpointString(reactor, description)
        except EndpointError as e:
            raise usage.UsageError(f'invalid {option} endpoint "{given}": {e}') from None
        if option == "--listen" and self["reuse-port"]:
            endpoint = _reusePortEndpoint(reactor, given, description)
        return _Named(endpoint, option, given)

    def _factory(self) -> AliveServerFactory:
        spec = self["app"]
        builtin = APPS.get(spec)
        target: object = builtin if builtin is not None else _load(spec)
        if callable(target) and not (
            _isProtocolClass(target) or isinstance(target, AliveServerFactory)
        ):
            try:
                target = cast(Callable[[], object], target)()
            except Exception as e:
                raise usage.UsageError(
                    f'--app "{spec}": calling it failed: {type(e).__name__}: {e}'
                ) from None
        if _isProtocolClass(target):
            factory = AliveServerFactory()
            factory.protocol = target
        elif isinstance(target, AliveServerFactory):
            factory = target
        else:
            raise usage.UsageError(
                f'--app "{spec}" gave {target!r}, not an AliveServerFactory '
                "or a HeartbeatMixin subclass"
            )
        if not _isProtocolClass(factory.protocol):
            raise usage.UsageError(
                f'--app "{spec}": the factory\'s protocol {factory.protocol!r} '
                "is not a HeartbeatMixin subclass"
            )
        overrides = {
            attribute: self[option]
            for option, attribute in (
                ("interval", "heartbeatInterval"),
                ("misses", "heartbeatMisses"),
                ("max-frame-size", "maxFrameSize"),
                ("close-timeout", "closeTimeout"),
            )
            if self[option] is not None
        }
        if overrides:
            base = factory.protocol
            overrides["__module__"] = base.__module__
            overrides["__qualname__"] = base.__qualname__
            factory.protocol = type(base.__name__, (base,), overrides)
        if self["session-ttl"] is not None:
            factory.sessionTTL = self["session-ttl"]
        try:
            factory.aliveSettings()
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        return factory


    def _store(self, factory: AliveServerFactory) -> ISessionStore | None:
        """The store of ``--sessions``, given to ``factory``; a SQLite file
        is opened and checked now (and closed again), so that a file that
        is not a session store stops the server before it starts."""
        given = self["sessions"]
        if given is None:
            return None
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        try:
            # The Redis store schedules its batches and connects with the
            # reactor itself (it has no thread of its own, and its close
            # is left to the service all the same: it adds no trigger).
            store = sessionStoreFromString(
                reactor if given.strip().startswith("redis:") else _ThreadsOnly(reactor), given
            )
        except (ValueError, StoreError) as e:
            raise usage.UsageError(f'invalid --sessions "{given}": {e}') from None
        if factory.store is not None:
            raise usage.UsageError(
                f'--sessions "{given}": the --app factory keeps its sessions in '
                f"{factory.store!r} already"
            )
        if isinstance(store, SqliteSessionStore):
            try:
                store.check()
            except StoreError as e:
                raise usage.UsageError(f'--sessions "{given}": {e}') from None
        factory.store = store
        return store


def _reusePortEndpoint(reactor: Any, given: str, description: str) -> ReusePortEndpoint:
    """The `ReusePortEndpoint` of ``description``, a server endpoint string
    Twisted could read (``given`` with the defaults added), or a
    `usage.UsageError` saying why it cannot share its port."""
    kind = splitEndpoint(description)[0].strip().lower()
    parameters = serverParameters(description)
    if kind not in REUSE_PORT_TYPES or parameters is None:
        raise usage.UsageError(
            f'--reuse-port shares TCP ports only (tcp:PORT, tcp6:PORT), not --listen "{given}"'
        )
    port = int(parameters["port"])
    if port == 0:
        raise usage.UsageError(
            f'--reuse-port needs a fixed port, not --listen "{given}" (with port 0 each '
            "process would listen on a port of its own)"
        )
    interface = parameters.get("interface", "::" if kind == "tcp6" else "")
    return ReusePortEndpoint(reactor, port, interface, int(parameters["backlog"]))


@implementer(IReactorFromThreads)
class _ThreadsOnly:
    """
    The reactor a ``--sessions`` store reports to, offering only
    ``callFromThread``: the store then does not close itself when the
    reactor begins to shut down (`AliveServerService` closes it once the
    connections are closed, so that their last confirmations are stored).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``callable`` in the reactor's thread."""
        self._reactor.callFromThread(callable, *args, **kwargs)


@implementer(IStreamServerEndpoint)
class _Named:
    """
    An endpoint that knows the option and text it came from: its listening
    port is logged, a status site reachable from other hosts is warned
    about, and a failure to listen names the option.

    :ivar option: ``--listen`` or ``--status``.
    :ivar given: the endpoint string as the operator wrote it.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, option: str, given: str) -> None:
        self.endpoint = endpoint
        self.option = option
        self.given = given

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen with the wrapped endpoint; log where."""
        d: Deferred[IListeningPort] = self.endpoint.listen(factory)
        d.addCallbacks(self._listening, self._failed)
        return d

    def _listening(self, port: IListeningPort) -> IListeningPort:
        where = describeListening(port)
        log.info(
            "alive.listen: {option} listening on {where}",
            option=self.option,
            where=where,
            event="listening",
        )
        if self.option == "--status" and reachableFromOtherHosts(port):
            log.warn(
                "alive.status: the status site on {where} is reachable from other hosts and "
                "has no authentication: bind it to loopback (--status tcp:PORT, the default "
                "interface) or put it behind an authenticating proxy",
                where=where,
                event="status-exposed",
            )
        return port

    def _failed(self, failure: Failure) -> Failure:
        error = failure.value
        if isinstance(error, CannotListenError):
            raise ListenFailed(
                f'cannot listen on {self.option} "{self.given}": {listenProblem(error)}'
            )
        return failure


class ListenFailed(Exception):
    """A ``--listen`` or ``--status`` endpoint could not listen; the message
    names the option and the problem in one line."""


def describeListening(port: IListeningPort) -> str:
    """``HOST:PORT`` (``[HOST]:PORT`` for IPv6) of a listening port, or its
    address as text."""
    address = port.getHost()
    host = getattr(address, "host", None)
    number = getattr(address, "port", None)
    if host is None or number is None:
        return str(getattr(address, "name", address))
    return f"[{host}]:{number}" if ":" in str(host) else f"{host}:{number}"


def _isProtocolClass(target: object) -> bool:
    return isinstance(target, type) and issubclass(target, HeartbeatMixin)


def _load(spec: str) -> object:
    """The object ``spec`` (``package.module:name``) names."""
    moduleName, colon, attributes = spec.partition(":")
    if not colon or not moduleName or not attributes:
        raise usage.UsageError(f"--app must be echo, sink or package.module:name, got {spec!r}")
    try:
        target: object = importlib.import_module(moduleName)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if moduleName == missing or moduleName.startswith(missing + "."):
            raise usage.UsageError(
                f'--app "{spec}": cannot import module "{moduleName}"'
            ) from None
        raise usage.UsageError(
            f'--app "{spec}": cannot import module "{moduleName}": {e}'
        ) from None
    except Exception as e:
        raise usage.UsageError(
            f'--app "{spec}": cannot import module "{moduleName}": {type(e).__name__}: {e}'
        ) from None
    for name in attributes.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise usage.UsageError(
                f'--app "{spec}": module "{moduleName}" has no attribute "{attributes}"'
            ) from None
    return target


class AliveServerService(MultiService):
    """
    Serves one `AliveServerFactory` on endpoints, with an optional status
    site, and stops in order: stop listening, close every connection with
    GOODBYE(SHUTTING_DOWN) and wait for it, then stop the rest.

    The factory stays started (its sessions kept) until the connections are
    closed, so that messages still unconfirmed when the shutdown began can
    be confirmed; then the factory's ``store``, if any, is closed.

    :param factory: the factory to serve.
    :param endpoints: where to serve it.
    :param statusEndpoint: where to serve the status site, if anywhere.
    :param clock: the clock of the shutdown deadline; the global reactor if
        not given.
    :ivar listeners: the services listening on ``endpoints``.
    :ivar status: the status site, or ``None``.
    """

    def __init__(
        self,
        factory: AliveServerFactory,
        endpoints: list[IStreamServerEndpoint],
        statusEndpoint: IStreamServerEndpoint | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.factory = factory
        self.clock = clock
        self._holding = False
        self.listeners = [self._listen(endpoint, factory) for endpoint in endpoints]
        self.status: StatusSite | None = None
        if statusEndpoint is not None:
            self.status = statusSite([factory], serving=lambda: bool(self.running))
            self._listen(statusEndpoint, self.status)

    def _listen(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory) -> IService:
        service = StreamServerEndpointService(endpoint, factory)  # type: ignore[no-untyped-call]
        # Fail at start-up, not in a log line, if the port is taken.
        service._raiseSynchronously = True
        self.addService(service)  # type: ignore[no-untyped-call]
        return cast(IService, service)

    def startService(self) -> None:
        """Hold the factory started (with a store, its sessions begin to
        load: clients' HELLOs wait for them), then start listening."""
        if not self._holding:
            self.factory.doStart()  # type: ignore[no-untyped-call]
            self._holding = True
            if self.factory.store is not None:
                self.factory.recovered().addCallbacks(self._recovered, self._storeFailed)
        super().startService()  # type: ignore[no-untyped-call]
        if self.exitZeroOnSigterm:
            from twisted.internet import reactor

            # After the reactor installed its own handlers: ours replaces
            # its SIGTERM handler.
            reactor.callWhenRunning(self._takeSigterm)

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint (before twistd drops privileges).

        :raises ListenFailed: if an endpoint cannot listen, naming its
            option and the problem; with `exitOnListenError`, that line is
            logged and the process exits with status 1 instead.
        """
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]
        except ListenFailed as e:
            if not self.exitOnListenError:
                raise
            log.critical("{message}", message=str(e), event="listen-failed")
            raise SystemExit(1) from None

    exitOnListenError = False
    """Log a failure to listen in one line and exit 1 (for twistd, which
    would otherwise print a traceback)."""

    handleRecovered = False
    """Watch the outcome of each message a previous process sent and the
    client has not confirmed (`AliveServerFactory.recovered`): for the
    built-in apps, which send nothing they must know the fate of."""

    exitOnStoreError = False
    """Stop the server, and the process with status 1, if its store cannot
    be loaded (for twistd: a supervisor sees a failed start; the factory
    logs the error in one line)."""

    def _recovered(self, recovered: list[tuple[bytes, bytes, Deferred[Any]]]) -> None:
        if self.handleRecovered:
            for _, _, d in recovered:
                d.addErrback(_sessionEnded)

    def _storeFailed(self, failure: Failure) -> None:
        # (The factory logged why, in one critical line.)
        if self.exitOnStoreError:
            from twisted.internet import reactor

            # twistd has no exit status of its own to give: once the
            # reactor has shut down in order, end the process with 1.
            reactor.addSystemEventTrigger("after", "shutdown", _exitFailed)
            reactor.stop()

    exitZeroOnSigterm = False
    """Treat SIGTERM as a requested stop: shut down in order, then exit 0
    (twistd otherwise ends itself with the signal, status 143)."""

    def _takeSigterm(self) -> None:
        from twisted.internet import reactor

        def stop(signum: int, frame: object) -> None:
            log.info(
                "alive.shutdown: {signal} received, stopping in order",
                signal=signal.Signals(signum).name,
                event="sigterm",
            )
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, close every connection in order, then stop the
        other services and let the factory stop.

        :returns: a Deferred that fires when all is done (the reactor waits
            for it before it stops).
        """
        Service.stopService(self)  # type: ignore[no-untyped-call]
        others = [s for s in reversed(list(self)) if s not in self.listeners]
        d = _stopAll(self.listeners)
        d.addCallback(lambda _: self.closeConnections())
        d.addCallback(lambda _: _stopAll(others))
        d.addCallback(self._release)
        return d

    def closeConnections(self) -> Deferred[None]:
        """
        Send GOODBYE(SHUTTING_DOWN) on every connection and wait until they
        are closed: each waits at most its protocol's ``closeTimeout`` for
        outstanding acknowledgements; a connection still open
        ``ABORT_GRACE + 1`` seconds after that is aborted.

        :returns: a Deferred that fires when every connection is closed.
        """
        factory = self.factory
        count = len(factory.connections)
        if not count:
            return defer.succeed(None)
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = cast(IReactorTime, reactor)
        started = clock.seconds()
        log.info(
            "alive.shutdown: closing {count} connections with GOODBYE SHUTTING_DOWN",
            count=count,
            event="shutdown",
        )
        done: Deferred[None] = Deferred()
        bound = float(factory.protocol.closeTimeout) + ABORT_GRACE + 1.0

        def finished(_: object) -> None:
            if deadline.active():
                deadline.cancel()
            if not done.called:
                log.info(
                    "alive.shutdown: {count} connections closed in {seconds:.3f} s",
                    count=count,
                    seconds=clock.seconds() - started,
                    event="shutdown",
                )
                done.callback(None)

        def expired() -> None:
            left = list(factory.connections)
            log.warn(
                "alive.shutdown: aborting {left} connections still open after {seconds:g} s",
                left=len(left),
                seconds=bound,
                event="shutdown",
            )
            for proto in left:
                proto.abort("aborted at shutdown: the orderly close took too long")
            if not done.called:
                done.callback(None)

        deadline = clock.callLater(bound, expired)
        factory.closeAll(GoodbyeCode.SHUTTING_DOWN, "server shutting down").addBoth(finished)
        return done

    def _release(self, _: object) -> Deferred[None] | None:
        if self._holding:
            self._holding = False
            self.factory.doStop()  # type: ignore[no-untyped-call]
            store = self.factory.store
            if store is not None:
                return store.close()
        return None


def _stopAll(services: list[IService]) -> Deferred[None]:
    """Stop ``services``; log, never propagate, their failures."""

    def logged(failure: Failure) -> None:
        log.failure("alive.shutdown: a service failed to stop", failure, event="shutdown")

    ds = [defer.maybeDeferred(s.stopService).addErrback(logged) for s in services]
    return defer.gatherResults(ds).addCallback(lambda _: None)


def makeService(options: Options) -> AliveServerService:
    """
    The service of ``twistd alive``.

    :param options: the parsed `Options`.
    :returns: an `AliveServerService`.
    """
    service = AliveServerService(
        options["factory"], options["endpoints"], options["statusEndpoint"]
    )
    service.exitZeroOnSigterm = True
    service.exitOnListenError = True
    service.exitOnStoreError = True
    service.handleRecovered = options["app"] in APPS
    if service.status is not None:
        service.status.endpoints = list(options["listen"])
    return service


__all__ = [
    "APPS",
    "AliveServerService",
    "EchoProtocol",
    "Options",
    "SinkProtocol",
    "makeService",
]
