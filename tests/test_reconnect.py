"""
How an `AliveClientFactory` comes back after a loss, on a fake network and
a `Clock`: the first reconnect after a stable connection is spread over
``quickSpread`` (so that clients that lost a server together do not all
return in one wave), the backoff resets when the host answers again after
attempts that got no answer, and what a client does after a 30 s outage is
what docs/delivery.md says.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, cast

import pytest
from test_sessions import (
    Network,
    RecordingClientFactory,
    RecordingServerFactory,
    delays,
    failureOf,
)
from twisted.internet.error import ConnectionRefusedError, NoRouteError, TimeoutError
from twisted.internet.task import Clock

from twisted_alive._reasons import Reason


class Outage(Network):
    """
    A L{Network} whose connection attempts can fail as a link outage makes
    them fail: C{failWith} (an exception type) fails each attempt at once.
    """

    failWith: Callable[[], Exception] | None = None

    def connect(self) -> None:
        if self.failWith is None:
            super().connect()
            return
        self.attempts += 1
        self.attemptTimes.append(self.clock.seconds())
        factory = self.clientFactory
        factory.startedConnecting(self.connector)
        factory.clientConnectionFailed(self.connector, failureOf(self.failWith()))


def stableClient(
    clock: Clock | None = None, server: RecordingServerFactory | None = None, draw: float = 0.5
) -> tuple[Outage, RecordingClientFactory]:
    """A client whose connection is up and stable (its backoff reset), with
    the default backoff settings and C{draw} as every random draw."""
    clock = clock if clock is not None else Clock()
    cf = RecordingClientFactory()
    cf.random = lambda: draw
    network = Outage(cf, server if server is not None else RecordingServerFactory(), clock)
    network.connector.connect()
    network.flush()
    network.advance(cf.stableAfter + 0.5)
    assert cf.connected is not None and cf.retries == 0
    return network, cf


def firstReconnect(network: Outage) -> float:
    """Cut the client's connection (RESET); return how long until its first reconnect."""
    cutAt = network.clock.seconds()
    network.wires[-1].cut()
    network.run(lambda: network.attemptTimes[-1] > cutAt)
    return network.attemptTimes[-1] - cutAt


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.999])
def test_quickReconnectDrawnOverSpread(draw: float) -> None:
    """After a stable connection is lost, the first reconnect waits quickDelay + spread × draw."""
    network, cf = stableClient(draw=draw)
    assert firstReconnect(network) == pytest.approx(cf.quickDelay + cf.quickSpread * draw)


def test_quickReconnectWithinMaxDelay() -> None:
    """The spread never takes the first reconnect past maxDelay."""
    network, cf = stableClient(draw=0.9)
    cf.maxDelay = 0.3
    assert firstReconnect(network) == pytest.approx(0.3)


def test_massLossSpreadsReconnects() -> None:
    """200 clients that lose a server at the same instant come back spread over quickSpread, not
    in one wave: at most a fifth of them in any 0.1 s."""
    clock = Clock()
    server = RecordingServerFactory(reply=False)
    rng = random.Random(20)
    networks = []
    for _ in range(200):
        network, cf = stableClient(clock, server)
        cf.random = random.Random(rng.random()).random
        networks.append(network)
    cutAt = clock.seconds()
    for network in networks:
        network.refuse = True  # the server is restarting
        network.wires[-1].cut()
    clock.pump([0.005] * 400)  # the attempts are seen at 5 ms resolution
    firsts = sorted(min(t for t in n.attemptTimes if t > cutAt) - cutAt for n in networks)
    quick, spread = networks[0].clientFactory.quickDelay, networks[0].clientFactory.quickSpread
    step = 0.005  # the clock's resolution here
    assert quick <= firsts[0] and firsts[-1] <= quick + spread + step
    assert firsts[-1] - firsts[0] > 0.9 * spread
    busiest = max(sum(1 for t in firsts if s <= t < s + 0.1) for s in firsts)
    assert busiest <= 40


def test_backoffResetsWhenHostAnswersAgain() -> None:
    """Attempts that get no answer back off; the first refusal after them resets the backoff (the
    host is back), so the client connects soon after the service returns."""
    network, cf = stableClient()
    cf.quickSpread = 0.0
    network.failWith = cast(Callable[[], Exception], TimeoutError)
    cutAt = network.clock.seconds()
    network.wires[-1].cut()
    network.advance(16.0)
    # quick (0.05 s), then 1, 2, 4, 8 s: the backoff grew.
    assert delays(network)[-4:] == [1.0, 2.0, 4.0, 8.0]
    assert network.attemptTimes[-5] - cutAt == pytest.approx(0.05)
    assert cf.lastLoss is not None and cf.lastLoss.reason is Reason.CONNECT_TIMEOUT
    network.failWith = cast(Callable[[], Exception], ConnectionRefusedError)
    network.run(lambda: cf.lastLoss is not None and cf.lastLoss.reason is Reason.REFUSED)
    assert cf.retries == 1  # reset, then this retry
    network.failWith = None
    refusedAt = network.clock.seconds()
    network.run(lambda: cf.connected is not None)
    assert network.clock.seconds() - refusedAt == pytest.approx(cf.initialDelay)


def test_refusalsAfterRefusalsKeepBackingOff() -> None:
    """Only an attempt that got no answer re-arms the reset: refusals after refusals, or after
    one reset, keep backing off (a host that keeps refusing is not hammered)."""
    network, cf = stableClient()
    cf.quickSpread = 0.0
    network.failWith = cast(Callable[[], Exception], NoRouteError)
    network.wires[-1].cut()
    network.advance(4.0)
    network.failWith = cast(Callable[[], Exception], ConnectionRefusedError)
    network.advance(60.0)
    refused = [d for d in delays(network) if d > 0.05][-5:]
    assert refused == [1.0, 2.0, 4.0, 8.0, 16.0][-len(refused) :]
    assert cf.losses[Reason.CONNECT_FAILED] >= 2
    assert cf.retries > 4


def test_tlsFailureIsAnAnswer() -> None:
    """A TLS failure (a connection was made) is not an attempt that got no answer: it stops."""
    from twisted_alive._reasons import Cause, Loss

    cf = RecordingClientFactory()
    state = cf._retry
    state.noAnswer = True
    cf.retries = 5
    loss = Loss(Reason.CONNECT_FAILED, cause=Cause.TLS)
    step = state.afterLoss(loss, cf.retryFor(loss), cf.retrySettings(), cf.random)
    assert step.answered and not step.retry
    assert cf.retries == 0 and not state.noAnswer


@pytest.mark.parametrize(("outage", "back"), [(30.0, 31.55), (32.0, 63.55)])
def test_afterLinkOutage(outage: float, back: float) -> None:
    """What docs/delivery.md says of a link outage whose attempts fail at once (no route): the
    first reconnect comes after quickDelay + spread, then attempts double their spacing, so the
    client is back at the first attempt after the link is — up to about as long as the outage
    lasted (with every random draw 0.5: 31.55 s after a 30 s outage, 63.55 s after 32 s)."""
    network, cf = stableClient()
    network.failWith = cast(Callable[[], Exception], NoRouteError)
    cutAt = network.clock.seconds()
    network.wires[-1].cut()
    network.advance(outage)
    network.failWith = None
    network.run(lambda: cf.connected is not None)
    assert network.clock.seconds() - cutAt == pytest.approx(back)
    assert cast(Any, cf.connected)._alive.resumed
