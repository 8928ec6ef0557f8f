# mypy: disable-error-code="no-untyped-call"
"""
A failed TLS handshake is a configuration error, not a network fault: it is
`Reason.CONNECT_FAILED` with `Cause.TLS` and a detail in words, an
`AliveClientFactory` stops at once and fails its pending messages with
`DeliveryFailed`. The mapping is checked on the exceptions pyOpenSSL and
service_identity raise, then over real loopback sockets with certificates
made by the test: an untrusted certificate, a certificate for another host
name, a TLS client at a plain port and a plain client at a TLS port.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.exceptions import DNSMismatch
from service_identity.hazmat import DNS_ID
from support import LOOPBACK, ensureDeferred, getReactor, portOf
from test_tls import Certificate, Server
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.error import ConnectionRefusedError as Refused
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from twisted_alive._factories import AliveClientFactory
from twisted_alive._mixin import HeartbeatMixin, HeartbeatProtocol
from twisted_alive._reasons import Cause, Loss, Reason, causeOf, classify, describeFailure
from twisted_alive.core.outcomes import DeliveryFailed

pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")

NOT_TRUSTED = (
    "TLS handshake failed: the peer's certificate is not trusted (certificate verify failed)"
)


def sslError(*reasons: str) -> SSL.Error:
    """The error pyOpenSSL raises for an OpenSSL error stack of C{reasons}."""
    return SSL.Error([("SSL routines", "", reason) for reason in reasons])


# -- the mapping, on the exceptions themselves ---------------------------------------


@pytest.mark.parametrize(
    ("reasons", "detail"),
    [
        (("certificate verify failed",), NOT_TRUSTED),
        (
            ("wrong version number",),
            "TLS mismatch: the peer does not speak TLS (wrong version number)",
        ),
        (
            ("packet length too long",),
            "TLS mismatch: the peer does not speak TLS (packet length too long)",
        ),
        (
            ("tlsv1 alert unknown ca",),
            "TLS handshake failed: the peer does not accept this side's certificate "
            "(tlsv1 alert unknown ca)",
        ),
        (("no shared cipher",), "TLS handshake failed: no shared cipher"),
    ],
)
def test_handshakeErrorsAreTLS(reasons: tuple[str, ...], detail: str) -> None:
    """Each OpenSSL handshake error is CONNECT_FAILED with Cause.TLS and its own sentence."""
    error = sslError(*reasons)
    assert classify(Failure(error)) is Reason.CONNECT_FAILED
    assert classify(error) is Reason.CONNECT_FAILED
    assert causeOf(Failure(error)) == (Cause.TLS, detail)


def test_hostNameMismatchIsTLS() -> None:
    """The host name check's VerificationError is CONNECT_FAILED/TLS, naming the host asked for."""
    error = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("wrong.example"))])
    assert classify(error) is Reason.CONNECT_FAILED
    assert causeOf(error) == (
        Cause.TLS,
        "TLS handshake failed: the peer's certificate does not match the host name "
        "(wrong.example)",
    )


@pytest.mark.parametrize(
    "reasons", [("unexpected eof while reading",), ("decryption failed or bad record mac",)]
)
def test_brokenConnectionUnderTLSIsReset(reasons: tuple[str, ...]) -> None:
    """A TLS error that a broken connection gives (EOF, bad record) stays RESET with no cause."""
    error = sslError(*reasons)
    assert classify(error) is Reason.RESET
    assert causeOf(error) is None


def test_describeFailureTLS() -> None:
    """describeFailure() gives the TLS cause's sentence, from a protocol's view or an attempt's."""
    error = sslError("certificate verify failed")
    expected = (Reason.CONNECT_FAILED, NOT_TRUSTED, Cause.TLS)
    assert describeFailure(Failure(error)) == expected
    assert describeFailure(error, attempt=True) == expected


@pytest.mark.parametrize(
    ("failure", "lost", "attempt"),
    [
        (
            ConnectionLost(),
            (Reason.RESET, "connection reset or socket error (ConnectionLost)"),
            (Reason.RESET, "Connection to the other side was lost in a non-clean fashion."),
        ),
        (
            ConnectionDone(),
            (Reason.PEER_CLOSED, "peer closed the connection without GOODBYE"),
            (Reason.PEER_CLOSED, "Connection was closed cleanly."),
        ),
        (
            ConnectionAborted(),
            (Reason.LOCAL_CLOSE, "aborted by this side"),
            (
                Reason.LOCAL_CLOSE,
                "Connection was aborted locally using ITCPTransport.abortConnection.",
            ),
        ),
        (
            OSError(errno.EPIPE, "Broken pipe"),
            (
                Reason.RESET,
                "connection reset or socket error (BrokenPipeError: [Errno 32] Broken pipe)",
            ),
            (Reason.RESET, "[Errno 32] Broken pipe"),
        ),
        (
            Refused("nothing there"),
            (
                Reason.REFUSED,
                "ConnectionRefusedError: Connection was refused by other side: nothing there.",
            ),
            (Reason.REFUSED, "Connection was refused by other side: nothing there."),
        ),
    ],
)
def test_describeFailureTexts(
    failure: BaseException, lost: tuple[Reason, str], attempt: tuple[Reason, str]
) -> None:
    """describeFailure() describes a protocol's loss, or gives an attempt's own message."""
    assert describeFailure(Failure(failure)) == (*lost, None)
    assert describeFailure(failure, attempt=True) == (*attempt, None)


def test_otherFailuresHaveNoCause() -> None:
    """Failures that are not TLS have no cause and keep their reason."""
    assert causeOf(Failure(ConnectionLost())) is None
    assert causeOf(ValueError("x")) is None
    assert classify(ConnectionLost()) is Reason.RESET


# -- over real sockets ---------------------------------------------------------------


class Recorder(HeartbeatProtocol):
    """A client protocol with a short heartbeat."""

    heartbeatInterval = 0.5


class Stopping(AliveClientFactory):
    """A client factory that would retry quickly if it retried; keeps its protocols."""

    protocol = Recorder
    initialDelay = 0.05
    maxDelay = 0.2

    def __init__(self) -> None:
        super().__init__()
        self.built: list[HeartbeatMixin] = []

    def connectionStarted(self, protocol: object) -> None:
        super().connectionStarted(protocol)
        self.built.append(cast(HeartbeatMixin, protocol))


@pytest.fixture
def tlsServer(tmp_path: Path) -> Iterator[tuple[Server, Certificate, Deferred[IListeningPort]]]:
    """A session server on an C{ssl:} endpoint, with its certificate."""
    certificate = Certificate(tmp_path / "server")
    server = Server()
    port = serverFromString(getReactor(), certificate.serverString()).listen(server)
    yield server, certificate, port
    for proto in server.built:
        if proto.loss is None:
            proto.abort()
    port.addCallback(lambda p: p.stopListening())


@pytest.fixture
def plainServer() -> Iterator[Server]:
    """A session server on a plain loopback port (C{server.port})."""
    server = Server()
    port = getReactor().listenTCP(0, server, interface=LOOPBACK)
    server.port = portOf(port)  # type: ignore[attr-defined]
    yield server
    for proto in server.built:
        if proto.loss is None:
            proto.abort()
    port.stopListening()


async def failFast(
    port: int, hostname: str, trusted: Certificate
) -> tuple[Stopping, DeliveryFailed, float]:
    """
    Connect a L{Stopping} factory over TLS to C{port}, checking the name
    C{hostname} against C{trusted}, with one message pending; return the
    factory, the message's failure and the seconds it took to fail.
    """
    factory = Stopping()
    pending = factory.sendMessage(b"must not arrive")
    options = ssl.optionsForClientTLS(
        hostname, trustRoot=ssl.Certificate.loadPEM(trusted.certFile.read_bytes())
    )
    start = time.monotonic()
    getReactor().connectSSL(LOOPBACK, port, factory, options, timeout=5)
    try:
        await pending.addTimeout(10, getReactor())
    except DeliveryFailed as e:
        failed = e
    else:  # pragma: no cover
        pytest.fail("a message was confirmed over a failed TLS handshake")
    return factory, failed, time.monotonic() - start


def assertStopped(factory: Stopping, loss: Loss) -> None:
    """The factory gave up after its one connection: no retry is scheduled or made."""
    assert factory.lastLoss is loss
    assert factory.losses == {Reason.CONNECT_FAILED: 1}
    assert not factory.continueTrying
    assert factory._callID is None
    assert factory.connections == 1
    assert factory.pending == 0


@pytest.mark.timeout(20)
@ensureDeferred
async def test_untrustedCertificateStopsAndFails(
    tlsServer: tuple[Server, Certificate, Deferred[IListeningPort]], tmp_path: Path
) -> None:
    """A certificate from an untrusted authority: CONNECT_FAILED/TLS on both sides, the pending
    message fails at once with DeliveryFailed, and the client does not retry."""
    server, _, listened = tlsServer
    port = portOf(await listened)
    serverSide = server.nextProtocol()
    factory, failed, seconds = await failFast(port, "localhost", Certificate(tmp_path / "other"))
    loss = failed.loss
    assert loss is not None
    assert (loss.reason, loss.cause, loss.detail) == (Reason.CONNECT_FAILED, Cause.TLS, NOT_TRUSTED)
    assert str(failed) == f"the session ended (CONNECT_FAILED: {NOT_TRUSTED}) before confirmation"
    assert not failed.maybeProcessed
    assert seconds < 3.0
    assertStopped(factory, loss)
    serverLoss = await (await serverSide).whenLost()
    assert (serverLoss.reason, serverLoss.cause) == (Reason.CONNECT_FAILED, Cause.TLS)
    assert serverLoss.detail == (
        "TLS handshake failed: the peer does not accept this side's certificate "
        "(tlsv1 alert unknown ca)"
    )
    assert server.received == [] and server.sessions == {}


@pytest.mark.timeout(20)
@ensureDeferred
async def test_wrongHostNameStopsAndFails(
    tlsServer: tuple[Server, Certificate, Deferred[IListeningPort]],
) -> None:
    """A trusted certificate for another host name: CONNECT_FAILED/TLS naming the host, the
    pending message fails at once, and the client does not retry."""
    server, certificate, listened = tlsServer
    port = portOf(await listened)
    factory, failed, seconds = await failFast(port, "wrong.example", certificate)
    loss = failed.loss
    assert loss is not None
    assert (loss.reason, loss.cause) == (Reason.CONNECT_FAILED, Cause.TLS)
    assert loss.detail == (
        "TLS handshake failed: the peer's certificate does not match the host name "
        "(wrong.example)"
    )
    assert seconds < 3.0
    assertStopped(factory, loss)
    assert server.received == [] and server.sessions == {}


@pytest.mark.timeout(20)
@ensureDeferred
async def test_tlsClientAtPlainPort(plainServer: Server, tmp_path: Path) -> None:
    """A TLS client at a plain twisted_alive port: CONNECT_FAILED/TLS 'TLS mismatch', the
    pending message fails at once, and the client does not retry."""
    certificate = Certificate(tmp_path / "any")
    port = plainServer.port  # type: ignore[attr-defined]
    factory, failed, seconds = await failFast(port, "localhost", certificate)
    loss = failed.loss
    assert loss is not None
    assert (loss.reason, loss.cause) == (Reason.CONNECT_FAILED, Cause.TLS)
    assert loss.detail.startswith("TLS mismatch: the peer does not speak TLS ("), loss.detail
    assert seconds < 3.0
    assertStopped(factory, loss)
    assert plainServer.received == []


class Plain(Protocol):
    """A plain TCP client that sends a line and records how the connection ended."""

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"\x00\x00\x00\x10plain bytes here")

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.ended.callback(None)


@pytest.mark.timeout(20)
@ensureDeferred
async def test_plainClientAtTLSPortServerSide(
    tlsServer: tuple[Server, Certificate, Deferred[IListeningPort]],
) -> None:
    """A plain client at a TLS port: the server's loss is CONNECT_FAILED/TLS 'TLS mismatch'
    (the client side is left to the first-bytes check)."""
    server, _, listened = tlsServer
    port = portOf(await listened)
    serverSide = server.nextProtocol()
    client = Plain()
    await connectProtocol(TCP4ClientEndpoint(getReactor(), LOOPBACK, port, timeout=5), client)
    serverLoss = await (await serverSide).whenLost()
    assert (serverLoss.reason, serverLoss.cause) == (Reason.CONNECT_FAILED, Cause.TLS)
    assert serverLoss.detail.startswith("TLS mismatch: the peer does not speak TLS ("), (
        serverLoss.detail
    )
    await client.ended
