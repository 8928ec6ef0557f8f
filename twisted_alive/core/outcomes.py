"""
What a sent message becomes: a `Receipt`, or a `DeliveryFailed`; the
`QueueFull` error of a sender that outran its limits; and what a receiver
knows of the message it is processing (`MessageInfo`).
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


@dataclass(frozen=True)
class MessageInfo:
    """
    The message a receiver's application is processing
    (``HeartbeatMixin.currentMessage``).

    ``(session, seq)`` is the message's idempotency key: no other message
    has it (a session that is replaced gets a new token, and numbers its
    messages from 1 again), and a message delivered again after a crash has
    the same one. An application that records the keys it processed, in
    the same transaction as its work, can tell a repeat for sure.

    :ivar session: the 16-byte token of the session the message came in
        (all zero on a connection that keeps no session: the key is then
        unique on that connection only).
    :ivar seq: its sequence number in the session.
    :ivar redelivered: ``True`` if a previous process may have processed
        it already: its session was loaded from a store, and it is the one
        message after the processed position the store had committed (the
        previous process may have crashed between its work and that
        commit). At most one message per load is flagged; a message not
        flagged was never handed to an application before.
    """

    session: bytes
    seq: int
    redelivered: bool


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
