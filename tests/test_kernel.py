"""
Tests for ``twisted_alive._kernel``: kernel liveness settings and peek, on
real loopback sockets, real Twisted transports and a real peer process.
"""

from __future__ import annotations

import errno
import math
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest
import pytest_twisted
import twisted.test
from support import elapse, getReactor, portOf, waitFor
from twisted.internet import ssl, task, tcp
from twisted.internet.defer import Deferred, ensureDeferred, inlineCallbacks, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IPushProducer,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import (
    ClientFactory,
    Factory,
    Protocol,
    ServerFactory,
    connectionDone,
)
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from zope.interface import implementer

from twisted_alive._kernel import (
    MAX_DEADLINE,
    KernelLiveness,
    PeekState,
    peek,
    setKernelLiveness,
)

linuxOnly = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux socket options and TCP_INFO"
)

_TwistedTest = Callable[[Callable[..., Generator[Any, Any, None]]], Callable[..., Any]]
twistedTest: _TwistedTest = pytest_twisted.inlineCallbacks
"""``pytest_twisted.inlineCallbacks``, typed."""

_TCP = socket.IPPROTO_TCP
_CHUNK = b"\xa5" * 65536
_CLOSED = "the connection's socket is already closed"


def _readBack(sock: socket.socket) -> tuple[int, int, int, int, int]:
    """
    Read the five liveness options back from the kernel.

    :returns: ``(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT,
        TCP_USER_TIMEOUT in ms)``.
    """
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(_TCP, socket.TCP_KEEPCNT),
        sock.getsockopt(_TCP, socket.TCP_USER_TIMEOUT),
    )


def _asReadBack(result: KernelLiveness) -> tuple[int, int, int, int, int]:
    """
    Express a ``KernelLiveness`` in the units of ``_readBack``.
    """
    assert result.idle is not None
    assert result.interval is not None
    assert result.probes is not None
    assert result.userTimeout is not None
    return (
        int(result.keepalive),
        result.idle,
        result.interval,
        result.probes,
        round(result.userTimeout * 1000),
    )


def _waitReadable(sock: socket.socket, timeout: float = 5.0) -> None:
    """
    Block until the kernel has something for ``sock``: data, EOF or an error.
    """
    readable, _, _ = select.select([sock], [], [], timeout)
    assert readable, f"nothing arrived within {timeout} s"


_poll = select.poll
"""``select.poll``, kept for `_waitLanded` where a test removes it from ``select``."""


def _waitLanded(sock: socket.socket, size: int, fin: bool = False, timeout: float = 5.0) -> None:
    """
    Block until ``size`` bytes wait unread in ``sock``'s receive queue and,
    with ``fin``, the peer's FIN behind them (``POLLRDHUP``); fail after
    ``timeout`` seconds. Nothing is read.
    """
    poller = _poll()
    poller.register(sock, select.POLLRDHUP if fin else select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        try:
            queued = len(sock.recv(size, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            queued = 0
        if queued >= size and (not fin or poller.poll(0)):
            return
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{size} bytes{' and a FIN' if fin else ''} not there in {timeout} s"
        # Wakes on the next segment (or the FIN); the cap covers bytes that
        # join a queue that was already readable.
        poller.poll(min(remaining, 0.01) * 1000)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """
    A connected loopback TCP pair: (ours, the peer's).
    """
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname(), timeout=5)
        theirs, _ = server.accept()
    theirs.settimeout(5)
    try:
        yield ours, theirs
    finally:
        ours.close()
        theirs.close()


class _Recorder(Protocol):
    """
    A plain client protocol that records when and how its connection ended.

    :ivar lost: Fires with ``[reason]`` (a list: a bare ``Failure`` would
        fire the errbacks) from ``connectionLost``.
    :ivar lostAt: ``time.monotonic()`` at ``connectionLost``.
    """

    def __init__(self) -> None:
        self.lost: Deferred[list[Failure]] = Deferred()
        self.lostAt: float | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Record the time and fire ``lost``.
        """
        self.lostAt = time.monotonic()
        self.lost.callback([reason])


@inlineCallbacks
def _connect(
    endpoint: IStreamClientEndpoint,
) -> Generator[Deferred[Any], Any, _Recorder]:
    """
    Connect a ``_Recorder`` through ``endpoint``.
    """
    recorder = yield endpoint.connect(Factory.forProtocol(_Recorder))
    return cast(_Recorder, recorder)


def _tcpEndpoint(port: int) -> TCP4ClientEndpoint:
    """
    A client endpoint for 127.0.0.1:``port``.
    """
    return TCP4ClientEndpoint(getReactor(), "127.0.0.1", port, timeout=5)


# --- setKernelLiveness: what is set ------------------------------------------


@linuxOnly
@pytest.mark.parametrize(
    ("deadline", "idle", "probes", "expected"),
    [
        (2, None, 3, (1, 1, 1)),
        (3, None, 3, (1, 1, 2)),
        (4, None, 3, (1, 1, 3)),
        (10, None, 3, (4, 2, 3)),
        (10.9, None, 3, (4, 2, 3)),
        (60, None, 3, (15, 15, 3)),
        (60, None, 9, (6, 6, 9)),
        (10, 7, 3, (7, 1, 3)),
        (10, 7.9, 5, (7, 1, 3)),
        (30, 10, 4, (10, 5, 4)),
        (MAX_DEADLINE, None, 3, (8194, 8191, 3)),
    ],
)
def test_optionsReadBack(
    pair: tuple[socket.socket, socket.socket],
    deadline: float,
    idle: float | None,
    probes: int,
    expected: tuple[int, int, int],
) -> None:
    """The kernel reads back exactly the keepalive schedule and user timeout."""
    ours, _ = pair
    result = setKernelLiveness(ours, deadline, idle=idle, probes=probes)
    assert (result.idle, result.interval, result.probes) == expected
    assert result.keepalive is True
    assert result.userTimeout == round(deadline * 1000) / 1000
    assert result.unsupported == ()
    assert result.deadline == deadline
    assert _readBack(ours) == _asReadBack(result)
    assert result.keepaliveDeadline is not None
    assert result.keepaliveDeadline <= math.floor(deadline)


def test_keepaliveDeadlineNoneWhenMissing() -> None:
    """keepaliveDeadline is None when a keepalive option could not be set."""
    result = KernelLiveness(
        deadline=10,
        keepalive=True,
        idle=None,
        interval=2,
        probes=3,
        userTimeout=None,
        unsupported=("TCP_KEEPIDLE", "TCP_USER_TIMEOUT"),
    )
    assert result.keepaliveDeadline is None


@linuxOnly
def test_missingOptionsAreListed(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Options this platform lacks are skipped and listed, never raised."""
    ours, _ = pair
    monkeypatch.delattr(socket, "TCP_USER_TIMEOUT")
    monkeypatch.delattr(socket, "TCP_KEEPIDLE")
    # macOS names the idle option TCP_KEEPALIVE; Linux's TCP_KEEPIDLE number
    # stands in for it here.
    monkeypatch.setattr(socket, "TCP_KEEPALIVE", 4, raising=False)
    result = setKernelLiveness(ours, 10)
    assert result.unsupported == ("TCP_USER_TIMEOUT",)
    assert result.userTimeout is None
    assert (result.idle, result.interval, result.probes) == (4, 2, 3)
    assert result.keepaliveDeadline == 10

    monkeypatch.delattr(socket, "TCP_KEEPALIVE")
    result = setKernelLiveness(ours, 10)
    assert result.unsupported == ("TCP_KEEPIDLE", "TCP_USER_TIMEOUT")
    assert result.idle is None
    assert result.keepaliveDeadline is None


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"deadline": 0.5}, "deadline must be at least 2 seconds, got 0.5"),
        ({"deadline": 1.999}, "deadline must be at least 2 seconds, got 1.999"),
        ({"deadline": -3}, "deadline must be at least 2 seconds, got -3"),
        ({"deadline": math.nan}, "deadline must be at least 2 seconds, got nan"),
        ({"deadline": math.inf}, "deadline must be at most 32767 seconds, got inf"),
        ({"deadline": 40000}, "deadline must be at most 32767 seconds, got 40000"),
        ({"deadline": 10, "probes": 0}, "probes must be between 1 and 127, got 0"),
        ({"deadline": 10, "probes": 128}, "probes must be between 1 and 127, got 128"),
        ({"deadline": 10, "probes": True}, "probes must be between 1 and 127, got True"),
        (
            {"deadline": 10, "idle": 0.5},
            "idle must be between 1 and 9 seconds for a deadline of 10 seconds, got 0.5",
        ),
        (
            {"deadline": 10.5, "idle": 10},
            "idle must be between 1 and 9 seconds for a deadline of 10.5 seconds, got 10",
        ),
        (
            {"deadline": 10, "idle": math.nan},
            "idle must be between 1 and 9 seconds for a deadline of 10 seconds, got nan",
        ),
    ],
)
def test_badArguments(
    pair: tuple[socket.socket, socket.socket],
    arguments: dict[str, Any],
    message: str,
) -> None:
    """Out-of-range arguments raise ValueError with an exact message, setting nothing."""
    ours, _ = pair
    before = _readBack(ours) if sys.platform.startswith("linux") else None
    with pytest.raises(ValueError) as raised:
        setKernelLiveness(ours, **arguments)
    assert str(raised.value) == message
    if before is not None:
        assert _readBack(ours) == before


def test_notTcp() -> None:
    """A socket that is not TCP is refused by name."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with pytest.raises(ValueError) as raised:
            setKernelLiveness(left, 10)
        assert str(raised.value) == "kernel liveness needs a TCP socket, got AF_UNIX SOCK_STREAM"
    finally:
        left.close()
        right.close()


def test_closedSocket(pair: tuple[socket.socket, socket.socket]) -> None:
    """A closed socket raises ValueError in both functions."""
    ours, _ = pair
    ours.close()
    with pytest.raises(ValueError) as raised:
        setKernelLiveness(ours, 10)
    assert str(raised.value) == _CLOSED
    with pytest.raises(ValueError) as raised:
        peek(ours)
    assert str(raised.value) == _CLOSED


def test_notASocket() -> None:
    """Something with no socket behind it raises TypeError."""
    with pytest.raises(TypeError) as raised:
        peek(object())
    assert str(raised.value).startswith("cannot find a TCP socket behind <object")


class _Refusing(socket.socket):
    """
    A socket that refuses some options with a given errno, and cannot read
    any back.
    """

    refused: dict[int, int] = {}

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        """
        Fail for the options in ``refused``.
        """
        if option in self.refused:
            raise OSError(self.refused[option], os.strerror(self.refused[option]))
        super().setsockopt(level, option, value, *rest)

    def getsockopt(self, *arguments: Any) -> Any:
        """
        Fail, as on a platform that cannot read options back.
        """
        raise OSError(errno.EINVAL, "no read-back here")


@linuxOnly
def test_optionRefusedByKernel(pair: tuple[socket.socket, socket.socket]) -> None:
    """An option the kernel refuses as unknown is listed; other errors raise."""
    ours, _ = pair
    refusing = _Refusing(fileno=os.dup(ours.fileno()))
    try:
        refusing.refused = {socket.TCP_USER_TIMEOUT: errno.ENOPROTOOPT}
        result = setKernelLiveness(refusing, 10)
        assert result.unsupported == ("TCP_USER_TIMEOUT",)
        assert result.userTimeout is None
        # Nothing could be read back: the values set are reported.
        assert (result.keepalive, result.idle, result.interval, result.probes) == (
            True,
            4,
            2,
            3,
        )
        assert _readBack(ours)[:4] == (1, 4, 2, 3)

        refusing.refused = {socket.TCP_KEEPCNT: errno.EBADF}
        with pytest.raises(OSError) as raised:
            setKernelLiveness(refusing, 10)
        assert raised.value.errno == errno.EBADF
    finally:
        refusing.close()


class _Wrapper:
    """
    A transport wrapper, as TLS puts around TCP: its own ``getHandle()`` is
    not a socket, its ``transport`` is the next layer down.
    """

    def __init__(self, transport: object, handle: object = None) -> None:
        self.transport = transport
        self._handle = handle

    def getHandle(self) -> object:
        """
        Return the handle given at construction.
        """
        return self._handle


@linuxOnly
def test_wrappersAreFollowed(pair: tuple[socket.socket, socket.socket]) -> None:
    """Transport wrappers are followed down to a transport whose handle is a socket."""
    ours, _ = pair
    result = setKernelLiveness(_Wrapper(_Wrapper(_Wrapper(ours), object())), 10)
    assert _readBack(ours) == _asReadBack(result)


def test_closedHandleBehindWrapper(pair: tuple[socket.socket, socket.socket]) -> None:
    """A transport whose handle is a closed socket raises ValueError."""
    ours, _ = pair
    ours.close()
    closedTransport = _Wrapper(None, ours)
    with pytest.raises(ValueError) as raised:
        peek(closedTransport)
    assert str(raised.value) == _CLOSED


def test_selfWrappingTransport() -> None:
    """A transport that is its own transport does not loop: TypeError."""
    loop = _Wrapper(None)
    loop.transport = loop
    with pytest.raises(TypeError):
        peek(loop)


def test_descriptorClosedUnderneath(pair: tuple[socket.socket, socket.socket]) -> None:
    """A socket object whose descriptor was closed behind its back raises ValueError."""
    ours, _ = pair
    stale = socket.socket(fileno=os.dup(ours.fileno()))
    os.close(stale.fileno())
    try:
        with pytest.raises(ValueError) as raised:
            peek(stale)
        assert str(raised.value) == _CLOSED
    finally:
        stale.detach()


# --- Twisted transports -------------------------------------------------------


class _Accepted(Protocol):
    """
    A server protocol that reports the first connection of its factory.
    """

    def __init__(self, accepted: Deferred[_Accepted]) -> None:
        self._accepted = accepted

    def connectionMade(self) -> None:
        """
        Fire the factory's Deferred with this protocol, once.
        """
        if not self._accepted.called:
            self._accepted.callback(self)


class _AcceptFactory(ServerFactory):
    """
    Builds ``_Accepted`` protocols.

    :ivar accepted: Fires with the first server-side protocol.
    """

    def __init__(self) -> None:
        self.accepted: Deferred[_Accepted] = Deferred()

    def buildProtocol(self, addr: IAddress | None) -> _Accepted:
        """
        Build an ``_Accepted`` that reports to ``accepted``.
        """
        return _Accepted(self.accepted)


@linuxOnly
@pytest.mark.timeout(20)
@twistedTest
def test_twistedTransport() -> Generator[Deferred[Any], Any, None]:
    """A plain Twisted TCP transport is tuned and peeked through getHandle()."""
    factory = _AcceptFactory()
    port = cast(IReactorTCP, getReactor()).listenTCP(0, factory, interface="127.0.0.1")
    try:
        recorder = yield _connect(_tcpEndpoint(portOf(port)))
        server = yield factory.accepted
        transport = cast(tcp.Client, recorder.transport)
        result = setKernelLiveness(transport, 5)
        assert (result.idle, result.interval, result.probes) == (2, 1, 3)
        assert _readBack(transport.getHandle()) == _asReadBack(result)
        assert peek(transport) is PeekState.ALIVE

        # A paused transport leaves the peer's FIN unread: peek sees it.
        cast(IPushProducer, transport).pauseProducing()
        server.transport.loseConnection()
        yield ensureDeferred(
            waitFor(lambda: peek(transport) is not PeekState.ALIVE, 2, "the FIN")
        )
        assert peek(transport) is PeekState.CLOSED
        cast(IPushProducer, transport).resumeProducing()
        yield recorder.lost

        with pytest.raises(ValueError) as raised:
            peek(transport)
        assert str(raised.value) == _CLOSED
    finally:
        yield maybeDeferred(port.stopListening)


def _serverCertificate() -> ssl.PrivateCertificate:
    """
    The test certificate that ships with Twisted.
    """
    pem = FilePath(twisted.test.__file__).sibling("server.pem").getContent()
    certificate: ssl.PrivateCertificate = ssl.PrivateCertificate.loadPEM(pem)  # type: ignore[no-untyped-call]
    return certificate


class _Announcing(_Recorder):
    """
    A ``_Recorder`` that reports itself from ``connectionMade``.
    """

    def __init__(self, connected: Deferred[_Recorder]) -> None:
        super().__init__()
        self._connected = connected

    def connectionMade(self) -> None:
        """
        Fire the Deferred given at construction with this protocol.
        """
        self._connected.callback(self)


class _AnnouncingFactory(ClientFactory):
    """
    Builds one ``_Announcing``.

    :ivar connected: Fires with the protocol once it is connected.
    """

    def __init__(self) -> None:
        self.connected: Deferred[_Recorder] = Deferred()

    def buildProtocol(self, addr: IAddress | None) -> _Announcing:
        """
        Build an ``_Announcing`` that reports to ``connected``.
        """
        return _Announcing(self.connected)


@linuxOnly
@pytest.mark.timeout(20)
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@twistedTest
def test_tlsTransports() -> Generator[Deferred[Any], Any, None]:
    """TLS transports (TLS endpoint wrapper, connectSSL) are followed to the TCP socket."""
    reactor = cast(IReactorSSL, getReactor())
    factory = _AcceptFactory()
    serverOptions = _serverCertificate().options()  # type: ignore[no-untyped-call]
    port = reactor.listenSSL(0, factory, serverOptions, interface="127.0.0.1")
    try:
        # TLS endpoint: the protocol's transport is a TLSMemoryBIOProtocol
        # whose getHandle() is the OpenSSL connection.
        endpoint = wrapClientTLS(ssl.CertificateOptions(), _tcpEndpoint(portOf(port)))
        wrapped = yield _connect(endpoint)
        tlsTransport = wrapped.transport
        assert isinstance(tlsTransport, TLSMemoryBIOProtocol)
        assert not isinstance(tlsTransport.getHandle(), socket.socket)  # type: ignore[no-untyped-call]
        result = setKernelLiveness(tlsTransport, 7)
        underTls = cast(tcp.Client, tlsTransport.transport)
        assert _readBack(underTls.getHandle()) == _asReadBack(result)
        assert peek(tlsTransport) in (PeekState.ALIVE, PeekState.READABLE)
        cast(ITCPTransport, tlsTransport).abortConnection()
        yield wrapped.lost

        # connectSSL: the TCP transport itself, its getHandle() replaced by
        # startTLS(); found through fileno().
        clientFactory = _AnnouncingFactory()
        reactor.connectSSL(
            "127.0.0.1",
            portOf(port),
            clientFactory,
            ssl.CertificateOptions(),  # type: ignore[arg-type]
            5,
            None,
        )
        direct = yield clientFactory.connected
        directTransport = cast(tcp.Client, direct.transport)
        assert not isinstance(directTransport.getHandle(), socket.socket)
        result = setKernelLiveness(directTransport, 8, idle=5)
        assert (result.idle, result.interval, result.probes) == (5, 1, 3)
        assert _readBack(directTransport.socket) == _asReadBack(result)
        cast(ITCPTransport, directTransport).abortConnection()
        yield direct.lost
    finally:
        yield maybeDeferred(port.stopListening)


# --- peek on raw sockets -----------------------------------------------------


def test_peekAliveWhenFresh(pair: tuple[socket.socket, socket.socket]) -> None:
    """A fresh, quiet connection peeks ALIVE."""
    ours, _ = pair
    assert peek(ours) is PeekState.ALIVE


def test_peekReadableKeepsData(pair: tuple[socket.socket, socket.socket]) -> None:
    """Unread data peeks READABLE and is all still there afterwards."""
    ours, theirs = pair
    theirs.sendall(b"hello, peer")
    _waitLanded(ours, len(b"hello, peer"))
    assert peek(ours) is PeekState.READABLE
    assert peek(ours) is PeekState.READABLE
    assert ours.recv(100) == b"hello, peer"
    assert peek(ours) is PeekState.ALIVE


def test_peekClosed(pair: tuple[socket.socket, socket.socket]) -> None:
    """A peer's close() (FIN) peeks CLOSED."""
    ours, theirs = pair
    theirs.close()
    _waitReadable(ours)
    assert peek(ours) is PeekState.CLOSED
    assert ours.recv(1) == b""


def test_peekReadableAheadOfClose(pair: tuple[socket.socket, socket.socket]) -> None:
    """Data sent before a close peeks READABLE; CLOSED shows once it is read."""
    ours, theirs = pair
    theirs.sendall(b"last words")
    theirs.close()
    _waitLanded(ours, len(b"last words"), fin=True)
    assert peek(ours) is PeekState.READABLE
    assert ours.recv(100) == b"last words"
    assert peek(ours) is PeekState.CLOSED


def test_peekReset(pair: tuple[socket.socket, socket.socket]) -> None:
    """A peer's SO_LINGER 0 close (RST) peeks RESET and leaves the error to the reader."""
    ours, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    _waitReadable(ours)
    assert peek(ours) is PeekState.RESET
    assert peek(ours) is PeekState.RESET
    with pytest.raises(ConnectionResetError):
        ours.recv(1)


def test_peekResetReportedByRecv(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reset that only recv() reports (no POLLERR, as on some systems) peeks RESET."""
    import twisted_alive._kernel as kernel

    ours, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()
    _waitReadable(ours)
    monkeypatch.setattr(kernel, "_readiness", lambda sock: (False, True))
    assert peek(ours) is PeekState.RESET


def test_peekWithoutPoll(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where select.poll is missing, select.select gives the same answers."""
    monkeypatch.delattr(select, "poll")
    ours, theirs = pair
    assert peek(ours) is PeekState.ALIVE
    theirs.sendall(b"x")
    theirs.close()
    _waitLanded(ours, 1, fin=True)
    assert peek(ours) is PeekState.READABLE
    assert ours.recv(1) == b"x"
    assert peek(ours) is PeekState.CLOSED


def test_peekNothingToReadAfterAll(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If recv() would block after all, peek says ALIVE at once, whatever the socket's timeout."""
    import twisted_alive._kernel as kernel

    ours, _ = pair
    monkeypatch.setattr(kernel, "_readiness", lambda sock: (False, True))
    for timeout in (5.0, 0.0, None):
        ours.settimeout(timeout)
        started = time.monotonic()
        assert peek(ours) is PeekState.ALIVE
        assert time.monotonic() - started < 0.5
        assert ours.gettimeout() == timeout


def test_peekUnconnected() -> None:
    """Peeking at a socket that was never connected raises the kernel's OSError."""
    with socket.socket() as unconnected:
        with pytest.raises(OSError) as raised:
            peek(unconnected)
    assert raised.value.errno == errno.ENOTCONN


# --- a real peer process: SIGSTOP -------------------------------------------

_SILENT_PEER = r"""
import socket, time
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
server.bind(("127.0.0.1", 0))
server.listen(1)
print(server.getsockname()[1], flush=True)
connection, _ = server.accept()
print("accepted", flush=True)
time.sleep(300)  # a peer that really does nothing: the test stops or kills it
"""


@dataclass
class _Peer:
    """
    A peer process that accepts one connection, then does nothing.

    :ivar process: The process, leader of its own process group.
    :ivar port: The port it listens on.
    """

    process: subprocess.Popen[bytes]
    port: int

    def signal(self, number: signal.Signals) -> None:
        """
        Send a signal to the peer's process group.
        """
        os.killpg(self.process.pid, number)

    def waitAccepted(self) -> None:
        """
        Block until the peer has accepted the connection.
        """
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == b"accepted\n"


@pytest.fixture
def silentPeer() -> Iterator[_Peer]:
    """
    Start a ``_Peer``; always continue, then kill, its process group afterwards.
    """
    process = subprocess.Popen(
        [sys.executable, "-c", _SILENT_PEER],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        yield _Peer(process, int(process.stdout.readline()))
    finally:
        for number in (signal.SIGCONT, signal.SIGKILL):
            try:
                os.killpg(process.pid, number)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@implementer(IPushProducer)
class _Flood:
    """
    Writes 64 KiB chunks to a transport every few milliseconds while the
    transport wants more (a streaming producer, so memory stays bounded).

    :ivar written: Bytes handed to the transport so far.
    """

    def __init__(self, transport: tcp.Client, clock: IReactorTime) -> None:
        self._transport = transport
        self._paused = False
        self.written = 0
        self._loop = task.LoopingCall(self._writeChunk)
        self._loop.clock = clock

    def start(self) -> None:
        """
        Register as the transport's producer and start writing.
        """
        cast(IConsumer, self._transport).registerProducer(self, True)
        self._loop.start(0.005)

    def _writeChunk(self) -> None:
        if not self._paused:
            cast(IConsumer, self._transport).write(_CHUNK)
            self.written += len(_CHUNK)

    def pauseProducing(self) -> None:
        """
        Stop writing until resumed.
        """
        self._paused = True

    def resumeProducing(self) -> None:
        """
        Write again.
        """
        self._paused = False

    def stopProducing(self) -> None:
        """
        Stop for good.
        """
        if self._loop.running:
            self._loop.stop()


@pytest.mark.slow
@linuxOnly
@pytest.mark.timeout(60)
@twistedTest
def test_stoppedPeerWithPendingDataFailsNearDeadline(
    silentPeer: _Peer, record_property: Callable[[str, object], None]
) -> Generator[Deferred[Any], Any, None]:
    """With data pending, a SIGSTOPped peer fails the connection near the deadline."""
    deadline = 3.0
    recorder = yield _connect(_tcpEndpoint(silentPeer.port))
    silentPeer.waitAccepted()
    transport = cast(tcp.Client, recorder.transport)
    result = setKernelLiveness(transport, deadline)
    assert result.userTimeout == deadline

    silentPeer.signal(signal.SIGSTOP)
    stoppedAt = time.monotonic()
    flood = _Flood(transport, cast(IReactorTime, getReactor()))
    flood.start()
    recorder.lost.addTimeout(deadline + 30, getReactor())
    (reason,) = yield recorder.lost

    assert recorder.lostAt is not None
    elapsed = recorder.lostAt - stoppedAt
    print(
        f"\nSIGSTOPped peer, data pending, deadline {deadline} s:"
        f" connectionLost after {elapsed:.3f} s ({flood.written} bytes written)"
    )
    record_property("failureSeconds", round(elapsed, 3))
    assert reason.check(ConnectionLost)
    assert deadline <= elapsed < deadline + 2.0
    assert flood.written > 4 * len(_CHUNK)


def _tcpInfoTimes(sock: socket.socket) -> tuple[int, int]:
    """
    Read ``tcpi_last_data_recv`` and ``tcpi_last_ack_recv`` from TCP_INFO:
    milliseconds since data, and since any acknowledgement, last arrived.
    """
    info = sock.getsockopt(_TCP, socket.TCP_INFO, 104)
    lastDataReceived, lastAckReceived = struct.unpack_from("II", info, 52)
    return lastDataReceived, lastAckReceived


@pytest.mark.slow
@linuxOnly
@pytest.mark.timeout(60)
@twistedTest
def test_stoppedPeerOnIdleLinkIsNotDetected(
    silentPeer: _Peer,
) -> Generator[Deferred[Any], Any, None]:
    """On an idle link, a SIGSTOPped peer's kernel answers keepalive: never detected."""
    deadline = 2
    recorder = yield _connect(_tcpEndpoint(silentPeer.port))
    silentPeer.waitAccepted()
    transport = cast(tcp.Client, recorder.transport)
    result = setKernelLiveness(transport, deadline)
    assert result.keepaliveDeadline == deadline

    silentPeer.signal(signal.SIGSTOP)
    yield elapse(2.5 * deadline)  # real time in which the stopped peer must not be noticed

    assert not recorder.lost.called
    assert peek(transport) is PeekState.ALIVE
    lastDataReceived, lastAckReceived = _tcpInfoTimes(transport.getHandle())
    # Nothing came from the stopped process, yet its kernel keeps answering
    # the keepalive probes, sent every second.
    assert lastDataReceived >= 2000 * deadline
    assert lastAckReceived < 1500
