"""
Tests for the client's sans-IO retry rules, ``twisted_alive.core.retry``:
which losses stop and which reconnect, after which delay, and when the
backoff resets. No reactor and no clock: randomness comes from the draws
each test passes.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_alive.core import retry as _retry
from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.core.reasons import Cause, Loss, Reason
from twisted_alive.core.retry import (
    DEFAULT_CAUSE_POLICY,
    DEFAULT_GOODBYE_POLICY,
    DEFAULT_RETRY_POLICY,
    NO_ANSWER,
    Retry,
    RetrySettings,
    RetryState,
    Step,
    backoffDelay,
    backoffPolicy,
    retryFor,
)

NO_JITTER = RetrySettings(initialDelay=1.0, factor=2.0, maxDelay=10.0, jitter=0.0)


def draws(*values: float) -> Callable[[], float]:
    """A C{random} that returns C{values} in turn, and fails if asked for more."""
    it: Iterator[float] = iter(values)

    def random() -> float:
        return next(it)

    return random


def never() -> float:
    """A C{random} for decisions that must not draw."""
    raise AssertionError("no random draw expected")


def test_noTwistedImport() -> None:
    """The retry rules import nothing from Twisted."""
    tree = ast.parse(Path(_retry.__file__).read_text())
    modules = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not [name for name in modules if name.split(".")[0] == "twisted"]


# -- retryFor ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        (Loss(Reason.RESET), Retry.QUICK),
        (Loss(Reason.TIMEOUT), Retry.QUICK),
        (Loss(Reason.PEER_CLOSED), Retry.QUICK),
        (Loss(Reason.REFUSED), Retry.BACKOFF),
        (Loss(Reason.CLEAN_CLOSE), Retry.BACKOFF),
        (Loss(Reason.CLEAN_CLOSE, goodbye=GoodbyeCode.GO_AWAY), Retry.STOP),
        (Loss(Reason.CLEAN_CLOSE, goodbye=GoodbyeCode.SESSION_UNKNOWN), Retry.QUICK),
        (Loss(Reason.CLEAN_CLOSE, goodbye=GoodbyeCode.NORMAL), Retry.BACKOFF),
        (Loss(Reason.CONNECT_FAILED, cause=Cause.TLS), Retry.STOP),
        (Loss(Reason.PROTOCOL_ERROR, cause=Cause.NOT_ALIVE_PEER), Retry.STOP),
        (Loss(Reason.PROTOCOL_ERROR, goodbye=GoodbyeCode.GO_AWAY, cause=Cause.TLS), Retry.STOP),
    ],
)
def test_retryForDefaults(loss: Loss, expected: Retry) -> None:
    """The default policies: network losses are quick, GO_AWAY and configuration errors stop."""
    assert retryFor(loss) is expected


def test_retryForPrecedence() -> None:
    """A cause's policy overrides the GOODBYE code's, which overrides the reason's."""
    loss = Loss(Reason.RESET, goodbye=GoodbyeCode.GO_AWAY, cause=Cause.TLS)
    causes = {Cause.TLS: Retry.BACKOFF}
    goodbyes = {GoodbyeCode.GO_AWAY: Retry.QUICK}
    reasons = {Reason.RESET: Retry.STOP}
    assert retryFor(loss, reasons, goodbyes, causes) is Retry.BACKOFF
    assert retryFor(loss, reasons, goodbyes, {}) is Retry.QUICK
    assert retryFor(loss, reasons, {}, {}) is Retry.STOP


def test_retryForUnnamedReasonBacksOff() -> None:
    """A reason the policy does not name backs off."""
    assert retryFor(Loss(Reason.RESET), {}, {}, {}) is Retry.BACKOFF


def test_defaultPoliciesAreReadOnly() -> None:
    """The default policies cannot be changed in place (a subclass sets its own)."""
    for policy in (DEFAULT_RETRY_POLICY, DEFAULT_CAUSE_POLICY, DEFAULT_GOODBYE_POLICY):
        with pytest.raises(TypeError):
            policy[next(iter(policy))] = Retry.STOP  # type: ignore[index]
    assert set(DEFAULT_RETRY_POLICY) == set(Reason)


# -- delays -----------------------------------------------------------------------


def test_backoffDelayValues() -> None:
    """initialDelay * factor ** retries, capped at maxDelay; no draw without jitter."""
    assert [backoffDelay(n, 1.0, 2.0, 10.0, 0.0, never) for n in range(6)] == [1, 2, 4, 8, 10, 10]


def test_backoffDelayJitter() -> None:
    """The jitter is multiplicative, +/- jitter, from one draw; never above maxDelay."""
    assert backoffDelay(0, 2.0, 2.0, 10.0, 0.5, draws(0.0)) == pytest.approx(1.0)
    assert backoffDelay(0, 2.0, 2.0, 10.0, 0.5, draws(0.5)) == pytest.approx(2.0)
    assert backoffDelay(0, 2.0, 2.0, 10.0, 0.5, draws(1.0)) == pytest.approx(3.0)
    assert backoffDelay(9, 2.0, 2.0, 10.0, 0.5, draws(1.0)) == 10.0


def test_backoffDelayNeverNegative() -> None:
    """A jitter above 1 cannot make a delay negative."""
    assert backoffDelay(0, 1.0, 2.0, 10.0, 3.0, draws(0.0)) == 0.0


def test_backoffDelayHugeFactor() -> None:
    """A factor whose power overflows gives maxDelay, not an error."""
    assert backoffDelay(5000, 1.0, 1e308, 7.0, 0.0, never) == 7.0


@given(
    retries=st.integers(0, 10_000),
    initial=st.floats(0.0, 1e6),
    factor=st.floats(1.0, 1e6),
    maxDelay=st.floats(0.0, 1e6),
    jitter=st.floats(0.0, 5.0),
    draw=st.floats(0.0, 1.0, exclude_max=True),
)
def test_backoffDelayBounds(
    retries: int, initial: float, factor: float, maxDelay: float, jitter: float, draw: float
) -> None:
    """Whatever the settings and the draw, a backoff delay is within [0, maxDelay]."""
    delay = backoffDelay(retries, initial, factor, maxDelay, jitter, lambda: draw)
    assert 0.0 <= delay <= maxDelay


def test_quickReconnectDelay() -> None:
    """quickDelay plus quickSpread times one draw, capped at maxDelay, never negative."""
    settings = RetrySettings(quickDelay=0.1, quickSpread=0.2, maxDelay=10.0)
    assert settings.quickReconnectDelay(draws(0.5)) == pytest.approx(0.2)
    assert RetrySettings(quickDelay=5.0, maxDelay=1.0).quickReconnectDelay(draws(0.0)) == 1.0
    assert RetrySettings(quickDelay=-5.0).quickReconnectDelay(draws(0.0)) == 0.0


def test_settingsBackoffDelay() -> None:
    """RetrySettings.backoffDelay is backoffDelay with its numbers."""
    assert NO_JITTER.backoffDelay(2, never) == 4.0


def test_backoffPolicyForClientService() -> None:
    """backoffPolicy maps failed attempts (1 for the first) to the factory's delays."""
    policy = backoffPolicy(initialDelay=1.0, factor=2.0, maxDelay=10.0, jitter=0.0)
    assert [policy(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert policy(0) == 1.0
    jittered = backoffPolicy(initialDelay=1.0, jitter=0.5, random=draws(1.0, 0.0))
    assert [jittered(1), jittered(1)] == pytest.approx([1.5, 0.5])


def test_backoffPolicyDefaultsAreTheFactorys() -> None:
    """backoffPolicy's defaults are RetrySettings' (the factory's)."""
    defaults = RetrySettings()
    policy = backoffPolicy(jitter=0.0)
    assert policy(1) == defaults.initialDelay
    assert policy(2) == defaults.initialDelay * defaults.factor


# -- RetryState.afterLoss ------------------------------------------------------------


def test_stepRetry() -> None:
    """A Step retries when it has a delay."""
    assert Step(0.0).retry
    assert not Step(None).retry


def test_backoffSequence() -> None:
    """Losses in a row back off, counting retries."""
    state = RetryState()
    delays = [
        state.afterLoss(Loss(Reason.REFUSED), Retry.BACKOFF, NO_JITTER, never).delay
        for _ in range(5)
    ]
    assert delays == [1, 2, 4, 8, 10]
    assert state.retries == 5


def test_stopDoesNotCount() -> None:
    """A Retry.STOP stops without counting a retry or drawing."""
    state = RetryState(retries=2)
    step = state.afterLoss(Loss(Reason.RESET), Retry.STOP, NO_JITTER, never)
    assert step == Step(None)
    assert not step.exhausted and state.retries == 2


def test_quickAfterStableConnection() -> None:
    """A QUICK loss after a stable connection waits quickDelay + spread, once."""
    state = RetryState(retries=3)
    state.connectionStable()
    assert state.retries == 0 and state.stable
    settings = RetrySettings(quickDelay=0.1, quickSpread=1.0, jitter=0.0)
    first = state.afterLoss(Loss(Reason.RESET), Retry.QUICK, settings, draws(0.25))
    assert first.delay == pytest.approx(0.35)
    assert not state.stable
    second = state.afterLoss(Loss(Reason.RESET), Retry.QUICK, settings, never)
    assert second.delay == settings.initialDelay * settings.factor


def test_quickAfterUnstableConnectionBacksOff() -> None:
    """A QUICK loss of a connection that never proved stable backs off."""
    state = RetryState()
    assert state.afterLoss(Loss(Reason.RESET), Retry.QUICK, NO_JITTER, never).delay == 1.0


def test_backoffKeepsStable() -> None:
    """A BACKOFF loss after a stable connection backs off and keeps the next QUICK quick."""
    state = RetryState(stable=True)
    assert state.afterLoss(Loss(Reason.CLEAN_CLOSE), Retry.BACKOFF, NO_JITTER, never).delay == 1.0
    assert state.stable


def test_atOnce() -> None:
    """After an unknown session the next attempt comes at once, then the rules apply again."""
    state = RetryState(atOnce=True, stable=True)
    step = state.afterLoss(Loss(Reason.CLEAN_CLOSE), Retry.QUICK, NO_JITTER, never)
    assert step.delay == 0.0 and not state.atOnce
    assert state.stable  # the quick reconnect is still owed
    assert state.retries == 1


def test_atOnceWaitsForStop() -> None:
    """A STOP wins over a pending reconnect at once."""
    state = RetryState(atOnce=True)
    assert not state.afterLoss(Loss(Reason.RESET), Retry.STOP, NO_JITTER, never).retry
    assert state.atOnce


def test_backoffCallable() -> None:
    """A given backoff callable replaces the settings' backoff, read after any reset."""
    state = RetryState(retries=4, noAnswer=True)
    seen: list[int] = []

    def backoff() -> float:
        seen.append(state.retries)
        return 42.0

    step = state.afterLoss(Loss(Reason.REFUSED), Retry.BACKOFF, NO_JITTER, never, backoff)
    assert step == Step(42.0, answered=True)
    assert seen == [0]


def test_maxRetries() -> None:
    """Passing maxRetries stops, after counting the retry; reaching it does not."""
    settings = RetrySettings(initialDelay=1.0, jitter=0.0, maxRetries=2)
    state = RetryState()
    steps = [
        state.afterLoss(Loss(Reason.REFUSED), Retry.BACKOFF, settings, never) for _ in range(3)
    ]
    assert [s.retry for s in steps] == [True, True, False]
    assert steps[-1].exhausted
    assert state.retries == 3


def test_maxRetriesZero() -> None:
    """maxRetries 0: the first loss stops."""
    step = RetryState().afterLoss(
        Loss(Reason.RESET), Retry.QUICK, RetrySettings(maxRetries=0, jitter=0.0), never
    )
    assert step == Step(None, exhausted=True)


# -- the host answers again -----------------------------------------------------------


@pytest.mark.parametrize("reason", sorted(NO_ANSWER, key=lambda r: str(r)))
def test_noAnswerArms(reason: Reason) -> None:
    """An attempt that got no answer arms the reset, and resets nothing itself."""
    state = RetryState(retries=3)
    step = state.afterLoss(Loss(reason), Retry.BACKOFF, NO_JITTER, never)
    assert state.noAnswer and not step.answered
    assert step.delay == 8.0 and state.retries == 4


@pytest.mark.parametrize("reason", [Reason.REFUSED, Reason.RESET, Reason.CLEAN_CLOSE])
def test_answerAfterNoAnswerResets(reason: Reason) -> None:
    """A refusal or a connection made after no answer resets the backoff before the delay."""
    state = RetryState(retries=5, noAnswer=True)
    step = state.afterLoss(Loss(reason), Retry.BACKOFF, NO_JITTER, never)
    assert step == Step(1.0, answered=True)
    assert state.retries == 1 and not state.noAnswer


def test_answerWithoutRetriesIsNoReset() -> None:
    """With no retries counted there is nothing to reset: no 'answered'."""
    state = RetryState(noAnswer=True)
    assert not state.afterLoss(Loss(Reason.REFUSED), Retry.BACKOFF, NO_JITTER, never).answered


def test_refusalsDoNotRearm() -> None:
    """Refusals in a row keep backing off: only an attempt with no answer re-arms the reset."""
    state = RetryState(retries=2, noAnswer=True)
    delays = [
        state.afterLoss(Loss(Reason.REFUSED), Retry.BACKOFF, NO_JITTER, never) for _ in range(3)
    ]
    assert [(s.delay, s.answered) for s in delays] == [(1.0, True), (2.0, False), (4.0, False)]


def test_tlsFailureIsAnAnswer() -> None:
    """A failed TLS handshake (CONNECT_FAILED with a cause) had an answer: it resets, and stops."""
    state = RetryState(retries=5, noAnswer=True)
    loss = Loss(Reason.CONNECT_FAILED, cause=Cause.TLS)
    step = state.afterLoss(loss, retryFor(loss), NO_JITTER, never)
    assert step == Step(None, answered=True)
    assert state.retries == 0 and not state.noAnswer


def test_resetBackoff() -> None:
    """resetBackoff starts the count over and leaves the other flags."""
    state = RetryState(retries=7, stable=True, noAnswer=True, atOnce=True, stopped=True)
    state.resetBackoff()
    assert state == RetryState(retries=0, stable=True, noAnswer=True, atOnce=True, stopped=True)
