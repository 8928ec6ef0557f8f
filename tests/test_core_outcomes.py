"""
The plain data of the core: ``outcomes`` (`Receipt`, `DeliveryFailed`),
``reasons`` (`Loss`) and the rate limiting of ``rejections``
(`RejectionLog`), fed timestamps.
"""

from __future__ import annotations

from twisted_alive.core.outcomes import DeliveryFailed, Receipt
from twisted_alive.core.reasons import Loss, Reason
from twisted_alive.core.rejections import (
    MAX_CAUSE_LENGTH,
    MAX_CAUSES,
    MAX_NEW_CAUSES,
    OTHER_CAUSES,
    REJECTION_LOG_EVERY,
    RejectionLog,
    Report,
    Verdict,
    rejectionsTotal,
)


def test_receiptLatency() -> None:
    """A receipt's latency is confirmation time minus first write."""
    assert Receipt(3, 1.25, 2.0).latency == 0.75


def test_deliveryFailed() -> None:
    """DeliveryFailed keeps its text, loss and flags."""
    loss = Loss(Reason.RESET, "gone")
    failure = DeliveryFailed("no", loss, maybeProcessed=True, rejected=True)
    assert (str(failure), failure.loss, failure.maybeProcessed, failure.rejected) == (
        "no",
        loss,
        True,
        True,
    )
    plain = DeliveryFailed("x")
    assert (plain.loss, plain.maybeProcessed, plain.rejected) == (None, False, False)


def test_lossText() -> None:
    """A loss reads as its reason's name, then its detail if any."""
    assert str(Loss(Reason.TIMEOUT, "no data")) == "TIMEOUT: no data"
    assert str(Loss(Reason.CLEAN_CLOSE)) == "CLEAN_CLOSE"


def test_firstThenSummary() -> None:
    """The first rejection of a cause is logged with its traceback; the next
    ones within REJECTION_LOG_EVERY are counted, then summed up in one line."""
    log = RejectionLog()
    before = rejectionsTotal()
    assert log.record("E: a", 0.0) == Verdict(Report.FIRST, "E: a", 1, 0.0)
    assert log.record("E: a", 1.0) == Verdict(Report.NONE, "E: a", 0, 0.0)
    assert log.record("E: a", 2.0) == Verdict(Report.NONE, "E: a", 0, 0.0)
    assert log.suppressed == 2
    assert log.record("E: a", REJECTION_LOG_EVERY) == Verdict(Report.SUMMARY, "E: a", 3, 0.0)
    assert log.suppressed == 0
    assert rejectionsTotal() == before + 4


def test_causeShortened() -> None:
    """A cause is kept to MAX_CAUSE_LENGTH characters."""
    verdict = RejectionLog().record("x" * 500, 0.0)
    assert verdict.cause == "x" * MAX_CAUSE_LENGTH


def test_tooManyNewCauses() -> None:
    """Past MAX_NEW_CAUSES new causes in a window, new ones count under
    OTHER_CAUSES (a summary line first, then counted); a new window admits
    new causes again."""
    log = RejectionLog()
    for i in range(MAX_NEW_CAUSES):
        assert log.record(f"E: {i}", 1.0).report is Report.FIRST
    assert log.record("E: new", 2.0) == Verdict(Report.SUMMARY, OTHER_CAUSES, 1, 2.0)
    assert log.record("E: newer", 3.0) == Verdict(Report.NONE, OTHER_CAUSES, 0, 2.0)
    assert log.record("E: late", 1.0 + REJECTION_LOG_EVERY).report is Report.FIRST


def test_oldestCauseForgotten() -> None:
    """At MAX_CAUSES, the cause logged longest ago is forgotten, with its
    suppressed count; its next rejection is a first one again."""
    log = RejectionLog()
    now = 0.0
    log.record("E: 0", now)
    log.record("E: 0", now)
    assert log.suppressed == 1
    for i in range(1, MAX_CAUSES):
        now += REJECTION_LOG_EVERY
        log.record(f"E: {i}", now)
    now += REJECTION_LOG_EVERY
    assert log.record("E: extra", now).report is Report.FIRST
    assert log.suppressed == 0
    assert len(log._causes) == MAX_CAUSES
    now += REJECTION_LOG_EVERY
    assert log.record("E: 0", now).report is Report.FIRST
