"""
When a client reconnects, sans-IO: after a `Loss`, retry or not, and after
which delay.

The rules, in one place:

- The decision for a loss is `retryFor`: the policy for its `Cause` first
  (a configuration error: by default, stop), then the policy for the
  GOODBYE code it carries (``GO_AWAY`` stops), then the policy for its
  `Reason`.
- A `Retry.BACKOFF` waits ``initialDelay * factor ** retries``, capped at
  ``maxDelay``, with a multiplicative jitter of +/- ``jitter``, and never
  above ``maxDelay`` nor below zero (`RetrySettings.backoffDelay`).
- A `Retry.QUICK` after a connection that proved stable waits
  ``quickDelay`` plus a random part of ``quickSpread`` (never above
  ``maxDelay``); after an unstable one it backs off.
- After an unknown session the next attempt comes at once.
- The backoff resets once a connection stayed up ``stableAfter`` seconds
  (`RetryState.connectionStable`), and when the host answers again (a
  refusal, or a connection made) after attempts that got no answer.
- More than ``maxRetries`` retries in a row stop.

Nothing here imports Twisted, reads a clock or draws random numbers by
itself: randomness comes from a ``random`` callable (a float in [0, 1))
the caller passes, so every decision is deterministic under test.
`twisted_alive.AliveClientFactory` keeps a `RetryState` and schedules what
`RetryState.afterLoss` decides; `backoffPolicy` gives the same backoff to
Twisted's ``ClientService``.
"""

from __future__ import annotations

import enum
import random as _random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.core.reasons import Cause, Loss, Reason


class Retry(enum.Enum):
    """What `AliveClientFactory` does after a loss."""

    STOP = "stop"
    """Stop trying; the session ends and pending messages fail."""
    QUICK = "quick"
    """Reconnect soon (after ``quickDelay`` plus a random part of
    ``quickSpread``) if the lost connection was stable, else back off."""
    BACKOFF = "backoff"
    """Reconnect after the next backoff delay."""


DEFAULT_RETRY_POLICY: Mapping[Reason, Retry] = MappingProxyType(
    {
        Reason.RESET: Retry.QUICK,
        Reason.TIMEOUT: Retry.QUICK,
        Reason.PEER_CLOSED: Retry.QUICK,
        Reason.CLEAN_CLOSE: Retry.BACKOFF,
        Reason.REFUSED: Retry.BACKOFF,
        Reason.CONNECT_TIMEOUT: Retry.BACKOFF,
        Reason.CONNECT_FAILED: Retry.BACKOFF,
        Reason.LOCAL_CLOSE: Retry.BACKOFF,
        Reason.PROTOCOL_ERROR: Retry.BACKOFF,
    }
)
"""The default `Retry` per `Reason`: a connection lost to the network comes
back quickly; everything else backs off."""

DEFAULT_CAUSE_POLICY: Mapping[Cause, Retry] = MappingProxyType(
    {
        Cause.NOT_ALIVE_PEER: Retry.STOP,
        Cause.TLS: Retry.STOP,
    }
)
"""The default `Retry` per `Cause`: configuration errors stop (reconnecting
would meet the same error again)."""

DEFAULT_GOODBYE_POLICY: Mapping[GoodbyeCode, Retry] = MappingProxyType(
    {
        GoodbyeCode.GO_AWAY: Retry.STOP,
        GoodbyeCode.SESSION_UNKNOWN: Retry.QUICK,
    }
)
"""The default `Retry` per GOODBYE code received: ``GO_AWAY`` stops."""

NO_ANSWER = frozenset({Reason.CONNECT_TIMEOUT, Reason.CONNECT_FAILED})
"""Reasons of connection attempts that got no answer from the host (as
opposed to a refusal, or a connection made), unless the loss has a
`Cause` (a failed TLS handshake had an answer)."""


def retryFor(
    loss: Loss,
    retryPolicy: Mapping[Reason, Retry] = DEFAULT_RETRY_POLICY,
    goodbyePolicy: Mapping[GoodbyeCode, Retry] = DEFAULT_GOODBYE_POLICY,
    causePolicy: Mapping[Cause, Retry] = DEFAULT_CAUSE_POLICY,
) -> Retry:
    """
    The `Retry` decision for ``loss``: ``causePolicy`` for the `Cause` it
    names, else ``goodbyePolicy`` for the GOODBYE code it names, else
    ``retryPolicy`` (`Retry.BACKOFF` for a `Reason` it does not name).
    """
    if loss.cause is not None and loss.cause in causePolicy:
        return causePolicy[loss.cause]
    if loss.goodbye is not None and loss.goodbye in goodbyePolicy:
        return goodbyePolicy[loss.goodbye]
    return retryPolicy.get(loss.reason, Retry.BACKOFF)


def backoffDelay(
    retries: int,
    initialDelay: float,
    factor: float,
    maxDelay: float,
    jitter: float,
    random: Callable[[], float],
) -> float:
    """
    The backoff delay after ``retries`` retries in a row:
    ``initialDelay * factor ** retries``, capped at ``maxDelay``, with a
    multiplicative jitter of +/- ``jitter`` (``random`` is called once, only
    if ``jitter`` is not zero), and never above ``maxDelay`` nor below zero.
    """
    try:
        growth = factor ** min(retries, 1024)
    except OverflowError:
        growth = float("inf")
    base = min(maxDelay, initialDelay * growth)
    if jitter:
        base *= 1.0 + jitter * (2.0 * random() - 1.0)
    return max(0.0, min(maxDelay, base))


def backoffPolicy(
    initialDelay: float = 0.5,
    factor: float = 2.0,
    maxDelay: float = 60.0,
    jitter: float = 0.2,
    random: Callable[[], float] = _random.random,
) -> Callable[[int], float]:
    """
    The backoff of `backoffDelay` as a ``retryPolicy`` for Twisted's
    ``ClientService``: a callable from the number of failed attempts in a
    row (1 for the first) to the seconds to wait. The first retry waits
    ``initialDelay`` (with jitter), as `AliveClientFactory`'s first backoff
    does; the defaults are the factory's.

    ``ClientService`` asks only for a delay: a policy cannot make it stop
    (see ``docs/guide.md``, "Under ClientService").
    """
    settings = RetrySettings(
        initialDelay=initialDelay, factor=factor, maxDelay=maxDelay, jitter=jitter
    )
    return settings.servicePolicy(random)


@dataclass(frozen=True)
class RetrySettings:
    """
    The numbers behind the delays (the attributes of `AliveClientFactory`
    of the same names).

    :ivar initialDelay: the first backoff delay, in seconds.
    :ivar factor: how much each backoff delay grows over the previous one.
    :ivar maxDelay: the longest delay, jitter included.
    :ivar jitter: the multiplicative jitter of a backoff delay (0.2: +/- 20 %).
    :ivar quickDelay: the shortest delay of a quick reconnect.
    :ivar quickSpread: a quick reconnect waits ``quickDelay`` plus up to this.
    :ivar maxRetries: retries in a row at most (``None``: no limit).
    """

    initialDelay: float = 0.5
    factor: float = 2.0
    maxDelay: float = 60.0
    jitter: float = 0.2
    quickDelay: float = 0.05
    quickSpread: float = 1.0
    maxRetries: int | None = None

    def backoffDelay(self, retries: int, random: Callable[[], float]) -> float:
        """The backoff delay after ``retries`` retries (see `backoffDelay`)."""
        return backoffDelay(
            retries, self.initialDelay, self.factor, self.maxDelay, self.jitter, random
        )

    def servicePolicy(self, random: Callable[[], float]) -> Callable[[int], float]:
        """This backoff as a ``retryPolicy`` for ``ClientService`` (see
        `backoffPolicy`): failed attempts in a row (1 for the first) to
        seconds, the first retry after ``initialDelay``."""

        def policy(failedAttempts: int) -> float:
            return self.backoffDelay(max(0, failedAttempts - 1), random)

        return policy

    def quickReconnectDelay(self, random: Callable[[], float]) -> float:
        """``quickDelay`` plus ``quickSpread`` times one draw of ``random``,
        never above ``maxDelay`` nor below zero."""
        delay = self.quickDelay + self.quickSpread * random()
        return max(0.0, min(delay, self.maxDelay))


@dataclass(frozen=True)
class Step:
    """
    What `RetryState.afterLoss` decided.

    :ivar delay: seconds to wait before the next attempt; ``None`` to stop.
    :ivar answered: the host answered again after attempts that got none,
        so the backoff was reset before this decision.
    :ivar exhausted: it stops because ``maxRetries`` was passed (rather than
        because the policy said `Retry.STOP`).
    """

    delay: float | None
    answered: bool = False
    exhausted: bool = False

    @property
    def retry(self) -> bool:
        """Whether to try again."""
        return self.delay is not None


@dataclass
class RetryState:
    """
    What a client's reconnecting remembers from one loss to the next.

    :ivar retries: retries in a row since the backoff last reset.
    :ivar stable: the last connection stayed up long enough
        (`connectionStable`): the next `Retry.QUICK` is quick.
    :ivar noAnswer: the latest attempt got no answer from the host.
    :ivar atOnce: the next attempt comes at once (a new session after the
        server did not know ours).
    :ivar stopped: reconnecting stopped for good.
    """

    retries: int = 0
    stable: bool = False
    noAnswer: bool = False
    atOnce: bool = False
    stopped: bool = False

    def connectionStable(self) -> None:
        """A connection stayed up long enough after HELLO: reset the backoff,
        and make the reconnect after its loss quick."""
        self.stable = True
        self.retries = 0

    def resetBackoff(self) -> None:
        """Start the backoff over (the retries count goes back to zero)."""
        self.retries = 0

    def afterLoss(
        self,
        loss: Loss,
        decision: Retry,
        settings: RetrySettings,
        random: Callable[[], float],
        backoff: Callable[[], float] | None = None,
    ) -> Step:
        """
        Decide what follows ``loss``, and count the retry.

        First, if the host answers again after attempts that got none (the
        loss is a refusal or a connection made, the previous attempt got no
        answer, and there were retries), the backoff resets: the host is
        back, so the next attempt should come soon. Only an attempt that got
        no answer re-arms this, so it cannot make a client hammer a host
        that keeps refusing. Then ``decision`` (`retryFor`) says whether to
        stop; else the delay is zero after an unknown session, quick after
        a stable connection lost with `Retry.QUICK`, else the backoff's.
        Passing ``maxRetries`` stops too.

        :param decision: the `Retry` for ``loss``.
        :param random: draws a float in [0, 1) for the jitter and the spread.
        :param backoff: gives the backoff delay for the current `retries`
            (default: `RetrySettings.backoffDelay`).
        """
        noAnswer = loss.reason in NO_ANSWER and loss.cause is None
        answered = self.noAnswer and not noAnswer and self.retries > 0
        if answered:
            self.resetBackoff()
        self.noAnswer = noAnswer
        if decision is Retry.STOP:
            return Step(None, answered)
        if self.atOnce:
            self.atOnce = False
            delay = 0.0
        elif decision is Retry.QUICK and self.stable:
            self.stable = False
            delay = settings.quickReconnectDelay(random)
        elif backoff is not None:
            delay = backoff()
        else:
            delay = settings.backoffDelay(self.retries, random)
        self.retries += 1
        if settings.maxRetries is not None and self.retries > settings.maxRetries:
            return Step(None, answered, exhausted=True)
        return Step(delay, answered)


__all__ = [
    "DEFAULT_CAUSE_POLICY",
    "DEFAULT_GOODBYE_POLICY",
    "DEFAULT_RETRY_POLICY",
    "NO_ANSWER",
    "Retry",
    "RetrySettings",
    "RetryState",
    "Step",
    "backoffDelay",
    "backoffPolicy",
    "retryFor",
]
