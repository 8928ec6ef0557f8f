"""
Peers that do not speak twisted_alive, over real loopback sockets: a plain
TCP echo server, a banner server (SSH-like), an HTTP server that answers
anything with 400 (as nginx does), Twisted's own HTTP server, and a TLS
port. None of them ever yields a `Receipt`; each is named in words; and a
client factory does not retry against them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
from support import elapse, ensureDeferred, forProtocol, getReactor, waitFor
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from twisted_alive import (
    AliveClientFactory,
    Cause,
    DeliveryFailed,
    HeartbeatProtocol,
    Loss,
    Reason,
)

HOST = "127.0.0.1"
BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"


class Echo(Protocol):
    """A plain TCP echo server: every byte comes back."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Banner(Protocol):
    """A server that greets with a text line first, as SSH, SMTP or FTP do."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(BANNER)


class BadRequest(Protocol):
    """An HTTP server that answers bytes it cannot parse with 400 and closes."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        self.transport.loseConnection()


class Client(HeartbeatProtocol):
    """A client with a short handshake deadline (0.2 s x 3)."""

    heartbeatInterval = 0.2


@contextmanager
def serving(factory: Factory) -> Iterator[int]:
    """``factory`` on 127.0.0.1 while the block runs; yields the port."""
    port = getReactor().listenTCP(0, factory, interface=HOST)
    try:
        yield port.getHost().port
    finally:
        port.stopListening()


def nonSpeakers() -> dict[str, tuple[Factory, str]]:
    """The servers, each with the start of the loss detail it must give."""
    return {
        "echo": (
            Factory.forProtocol(Echo),
            "the peer echoed our own HELLO: it does not speak twisted_alive",
        ),
        "banner": (
            Factory.forProtocol(Banner),
            "the peer does not speak twisted_alive: its first bytes were 'SSH-2.0-OpenSSH_'…",
        ),
        "http-400": (
            Factory.forProtocol(BadRequest),
            "the peer does not speak twisted_alive: its first bytes were 'HTTP/1.1 400 Bad'…",
        ),
    }


async def _connectPlain(port: int) -> tuple[Client, Deferred[Any]]:
    """A `HeartbeatProtocol` client (no session) that sends one message at once."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    proto = Client()
    await connectProtocol(TCP4ClientEndpoint(getReactor(), HOST, port), proto)  # type: ignore[no-untyped-call]
    return proto, proto.sendMessage(b"job 1")


def recordBuilt(factory: AliveClientFactory) -> list[Any]:
    """A list to which every protocol ``factory`` builds from now on is added."""
    built: list[Any] = []
    original = factory.buildProtocol

    def recording(addr: Any) -> Any:
        proto = original(addr)
        built.append(proto)
        return proto

    factory.buildProtocol = recording  # type: ignore[method-assign]
    return built


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", sorted(nonSpeakers()))
@ensureDeferred
async def test_plainClientGetsNoReceipt(kind: str) -> None:
    """A HeartbeatProtocol client gets no Receipt from a non-speaker: PROTOCOL_ERROR, in words."""
    factory, detail = nonSpeakers()[kind]
    with serving(factory) as port:
        proto, sent = await _connectPlain(port)
        loss: Loss = await proto.whenLost()
        outcome: list[object] = []
        sent.addBoth(outcome.append)
    assert loss.reason is Reason.PROTOCOL_ERROR
    assert loss.cause is Cause.NOT_ALIVE_PEER
    assert loss.detail.startswith(detail), loss.detail
    [failure] = outcome
    assert isinstance(failure, Exception) or hasattr(failure, "value")
    error = getattr(failure, "value", failure)
    assert isinstance(error, DeliveryFailed)
    assert proto.loss is loss


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", sorted(nonSpeakers()))
@ensureDeferred
async def test_clientFactoryStopsAndFails(kind: str) -> None:
    """AliveClientFactory fails pending messages at once and does not reconnect to a non-speaker."""
    factory, detail = nonSpeakers()[kind]
    reactor = getReactor()
    with serving(factory) as port:
        client = forProtocol(AliveClientFactory, Client)
        client.initialDelay = 0.01
        first = client.sendMessage(b"job 1")
        second = client.sendMessage(b"job 2")
        connections = recordBuilt(client)
        reactor.connectTCP(HOST, port, client)
        results = await defer.DeferredList([first, second], consumeErrors=True)
        # Real time for several reconnects, had the factory tried again.
        await elapse(0.3)
    for ok, failure in results:
        assert not ok and isinstance(failure, Failure)
        assert failure.check(DeliveryFailed)  # type: ignore[no-untyped-call]
        assert detail in str(failure.value)
    assert client.lastLoss is not None
    assert client.lastLoss.cause is Cause.NOT_ALIVE_PEER
    assert not client.continueTrying
    assert len(connections) == 1
    assert client.pending == 0


@pytest.mark.timeout(20)
@ensureDeferred
async def test_retryForNonSpeakerCanBeChanged() -> None:
    """A user who wants retries against a non-speaker says so in causePolicy."""
    from twisted_alive import Retry

    reactor = getReactor()

    class Stubborn(AliveClientFactory):
        causePolicy = {Cause.NOT_ALIVE_PEER: Retry.BACKOFF}
        initialDelay = 0.02
        maxDelay = 0.05

    with serving(Factory.forProtocol(Banner)) as port:
        client = forProtocol(Stubborn, Client)
        built = recordBuilt(client)
        reactor.connectTCP(HOST, port, client)
        await waitFor(lambda: len(built) >= 3, 10, "three connections")
        client.stopTrying()
        for proto in built:
            if proto.loss is None:
                await proto.whenLost()
    assert len(built) >= 3


class _Hello(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"hello"


@pytest.mark.timeout(20)
@ensureDeferred
async def test_silentHttpServerIsNoPeer() -> None:
    """Twisted's HTTP server waits for a request line: no Receipt, TIMEOUT at the HELLO deadline."""
    with serving(cast(Factory[Any], Site(_Hello()))) as port:  # type: ignore[no-untyped-call]
        proto, sent = await _connectPlain(port)
        loss: Loss = await proto.whenLost()
        outcome: list[object] = []
        sent.addBoth(outcome.append)
    assert loss.reason is Reason.TIMEOUT
    assert loss.detail.startswith("no HELLO from peer for "), loss.detail
    [failure] = outcome
    assert getattr(failure, "value", None).__class__ is DeliveryFailed
