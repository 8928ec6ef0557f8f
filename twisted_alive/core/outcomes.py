"""
What a sent message becomes: a `Receipt`, or a `DeliveryFailed`; and the
`QueueFull` error of a sender that outran its limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted_alive.core.reasons import Loss


@dataclass(frozen=True)
class Receipt:
    """
    Proof that the peer's application processed a message: its
    ``messageReceived`` returned (or the Deferred it returned fired) and the
    peer acknowledged the message's sequence number.

    :ivar seq: the message's sequence number in its session.
    :ivar sentAt: clock time when the message was first written.
    :ivar confirmedAt: clock time when the acknowledgement arrived.
    """

    seq: int
    sentAt: float
    confirmedAt: float

    @property
    def latency(self) -> float:
        """Seconds from first write to confirmation."""
        return self.confirmedAt - self.sentAt


class DeliveryFailed(Exception):
    """
    A message was not confirmed, and never will be.

    :ivar loss: the `Loss` that ended its connection or session, if any.
    :ivar maybeProcessed: ``True`` if the message was sent and may have been
        processed by the peer before the loss (its acknowledgement never
        came); ``False`` if the peer certainly did not process it (it was
        never sent, or the peer rejected it).
    :ivar rejected: ``True`` if the peer's application failed on it (the peer
        sent REJECT); the text is in ``str(exc)``.
    """

    def __init__(
        self,
        message: str,
        loss: Loss | None = None,
        maybeProcessed: bool = False,
        rejected: bool = False,
    ) -> None:
        super().__init__(message)
        self.loss = loss
        self.maybeProcessed = maybeProcessed
        self.rejected = rejected


class QueueFull(Exception):
    """
    ``sendMessage`` was called while the send queue was at its limit.

    Nothing was queued. Register an ``IPushProducer`` with
    ``registerProducer`` to be paused before this happens (see
    ``docs/delivery.md``), or wait for receipts and retry.
    """
