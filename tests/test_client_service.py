# mypy: disable-error-code="no-untyped-call"
"""
`AliveClientFactory` under Twisted's ``ClientService``, on a `Clock` and a
fake endpoint: ``factory.clientServicePolicy()`` makes the service wait the
factory's own backoff delays, and what a policy cannot do (stop) stays the
application's to do.
"""

from __future__ import annotations

from typing import Any, cast

from support import forProtocol
from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive import AliveClientFactory, HeartbeatProtocol, Loss, Reason, Retry
from twisted_alive.core.reasons import Cause
from twisted_alive.core.retry import backoffPolicy


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint whose attempts are refused at once while C{accept} is false;
    otherwise it connects the protocol to a L{StringTransport}.
    """

    def __init__(self) -> None:
        self.accept = False
        self.attempts = 0
        self.protocols: list[Any] = []

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self.attempts += 1
        if not self.accept:
            return fail(ConnectionRefusedError())
        proto = protocolFactory.buildProtocol(cast(IAddress, None))
        assert proto is not None
        proto.makeConnection(StringTransport())
        self.protocols.append(proto)
        return succeed(proto)


def waits(clock: Clock, count: int) -> list[float]:
    """The next C{count} delays the service schedules, advancing C{clock} through each."""
    seen = []
    for _ in range(count):
        (call,) = clock.getDelayedCalls()
        delay = call.getTime() - clock.seconds()
        seen.append(delay)
        clock.advance(delay)
    return seen


def factoryOn(clock: Clock, draw: float = 0.5) -> AliveClientFactory:
    """A factory with round backoff numbers, C{clock}, and C{draw} as every random draw."""
    factory = forProtocol(AliveClientFactory, HeartbeatProtocol)
    cast(Any, factory).clock = clock  # Twisted types it as a full reactor
    factory.initialDelay, factory.factor, factory.maxDelay = 1.0, 2.0, 10.0
    factory.random = lambda: draw
    return factory


def started(endpoint: FakeEndpoint, factory: AliveClientFactory, clock: Clock) -> ClientService:
    """A started ``ClientService`` of ``factory`` on ``endpoint``, with the
    factory's policy (`AliveClientFactory.clientServicePolicy`) and ``clock``."""
    policy = factory.clientServicePolicy()
    service = ClientService(endpoint, factory, retryPolicy=policy, clock=clock)
    service.startService()
    return service


def test_serviceWaitsTheFactorysBackoff() -> None:
    """ClientService with clientServicePolicy() waits what the factory's nextDelay says."""
    clock = Clock()
    factory = factoryOn(clock)
    endpoint = FakeEndpoint()
    service = started(endpoint, factory, clock)
    seen = waits(clock, 6)
    expected = []
    for factory.retries in range(6):
        expected.append(factory.nextDelay())
    assert seen == expected == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert endpoint.attempts == 7
    service.stopService()


def test_serviceUsesTheFactorysJitter() -> None:
    """The policy draws its jitter from the factory's random: +/- jitter around the backoff."""
    clock = Clock()
    factory = factoryOn(clock, draw=1.0)
    factory.jitter = 0.5
    service = started(FakeEndpoint(), factory, clock)
    assert waits(clock, 3) == [1.5, 3.0, 6.0]
    service.stopService()


def test_serviceBackoffRestartsAfterAConnection() -> None:
    """After a connection is made and lost, the service's next wait is initialDelay again."""
    clock = Clock()
    factory = factoryOn(clock)
    endpoint = FakeEndpoint()
    service = started(endpoint, factory, clock)
    assert waits(clock, 3) == [1.0, 2.0, 4.0]
    endpoint.accept = True
    clock.advance(8.0)
    (proto,) = endpoint.protocols
    endpoint.accept = False
    proto.connectionLost(Failure(ConnectionLost()))
    retry = [c for c in clock.getDelayedCalls() if c.getTime() - clock.seconds() == 1.0]
    assert len(retry) == 1
    service.stopService()


def test_backoffPolicyWithoutFactory() -> None:
    """backoffPolicy gives ClientService the same delays from plain numbers."""
    clock = Clock()
    service = ClientService(
        FakeEndpoint(),
        factoryOn(clock),
        retryPolicy=backoffPolicy(initialDelay=0.5, factor=3.0, maxDelay=5.0, jitter=0.0),
        clock=clock,
    )
    service.startService()
    assert waits(clock, 4) == [0.5, 1.5, 4.5, 5.0]
    service.stopService()


class StoppingFactory(AliveClientFactory):
    """The recipe of docs/guide.md: stop the service on a loss the factory would stop on."""

    service: ClientService | None = None

    def sessionLost(self, protocol: object, loss: Loss) -> None:
        super().sessionLost(protocol, loss)
        if self.service is not None and self.retryFor(loss) is Retry.STOP:
            self.service.stopService()
            self.stopTrying()


def test_stopRecipe() -> None:
    """The guide's recipe stops the service when the peer does not speak twisted_alive (a
    NOT_ALIVE_PEER cause, which the factory's policy stops on), not after a reset."""
    clock = Clock()
    factory = forProtocol(StoppingFactory, HeartbeatProtocol)
    cast(Any, factory).clock = clock  # Twisted types it as a full reactor
    factory.random = lambda: 0.5
    endpoint = FakeEndpoint()
    endpoint.accept = True
    service = factory.service = started(endpoint, factory, clock)
    endpoint.protocols[0].connectionLost(Failure(ConnectionLost()))
    assert factory.lastLoss is not None and factory.lastLoss.reason is Reason.RESET
    assert service.running
    clock.advance(factory.initialDelay)
    second = endpoint.protocols[1]
    second.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    second.connectionLost(Failure(ConnectionDone()))
    assert factory.lastLoss is not None and factory.lastLoss.cause is Cause.NOT_ALIVE_PEER
    assert not service.running
    assert not factory.continueTrying
