"""
What a session store keeps of a session, sans-IO: the `StoredSession`
record, the rules every store applies to it, and the conversions between a
live `Session` and its record.

A store (``twisted_alive._stores``: memory, SQLite; ``twisted_alive._redis``:
Redis) keeps, per session, the token, an epoch, the outbound positions (the
next sequence number, what the peer confirmed), the messages not yet
confirmed, the inbound position (what this side's application processed)
and when the session was last seen.
Everything else in a `Session` (counters, the REJECTs to resend, a message
being processed) is rebuilt or lost when a session is loaded again.

Nothing here imports Twisted or does I/O: the stores call these functions,
and so do the tests, with plain values.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from twisted_alive.core.delivery import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_WINDOW,
    Entry,
    Session,
)
from twisted_alive.core.frames import DEFAULT_MAX_FRAME_SIZE, NO_SESSION
from twisted_alive.core.outcomes import QueueFull

DEFAULT_MAX_STORED = DEFAULT_WINDOW + DEFAULT_MAX_QUEUE
"""Unconfirmed messages a store keeps per session by default: what a
default `Outbox` holds at most (its window plus its queue)."""

DEFAULT_MAX_STORED_BYTES = DEFAULT_MAX_QUEUE_BYTES + DEFAULT_WINDOW * DEFAULT_MAX_FRAME_SIZE
"""Payload bytes a store keeps per session by default: what a default
`Outbox` holds at most (its queue's bytes plus a window of the largest
frames)."""


class StoreError(Exception):
    """A session store refused an operation, or cannot be used; the text
    says which and why."""


class StoreClosed(StoreError):
    """
    An operation called after the store's ``close``: the process (or the
    factory that uses the store) is stopping. It says nothing about the
    sessions the store holds: what it committed stays there, for the next
    process, and the factories stop using the session instead of ending it
    (see ``docs/stores.md``).
    """


class CorruptStore(StoreError):
    """
    A store's file cannot be read, or is not a twisted_alive session store:
    it is left as it is (never started afresh over), and the store does not
    open.
    """


@dataclass(frozen=True)
class StoreLimits:
    """
    How much a store keeps per session: beyond it, appending fails with
    `QueueFull`, as a full `Outbox` does.

    As with `Outbox.submit`, a session that holds no message always takes
    one, however large, so that a byte limit below one message's size
    cannot block a sender forever.

    :ivar maxMessages: unconfirmed messages per session at most.
    :ivar maxBytes: payload bytes of unconfirmed messages per session at
        most.
    """

    maxMessages: int = DEFAULT_MAX_STORED
    maxBytes: int = DEFAULT_MAX_STORED_BYTES

    def __post_init__(self) -> None:
        if self.maxMessages < 1:
            raise ValueError(f"maxMessages must be at least 1, got {self.maxMessages!r}")
        if self.maxBytes < 0:
            raise ValueError(f"maxBytes must not be negative, got {self.maxBytes!r}")

    @classmethod
    def forOutbox(
        cls,
        window: int = DEFAULT_WINDOW,
        maxQueue: int = DEFAULT_MAX_QUEUE,
        maxQueueBytes: int = DEFAULT_MAX_QUEUE_BYTES,
        maxPayload: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> StoreLimits:
        """The limits matching an `Outbox` with these limits, whose peer
        accepts payloads of ``maxPayload`` bytes at most: a store that
        refuses only what that outbox would refuse. (The window holds
        ``window`` payloads at most; the queue ``maxQueueBytes``, or one
        payload larger than that, which an empty queue always takes.)"""
        return cls(
            window + max(maxQueue, 1), max(maxQueueBytes, maxPayload) + window * maxPayload
        )

    def check(self, held: int, heldBytes: int, payloads: Sequence[bytes]) -> None:
        """
        Whether a session holding ``held`` messages of ``heldBytes`` bytes
        may take ``payloads`` too.

        :raises QueueFull: if not, saying which limit.
        """
        count = len(payloads)
        size = sum(map(len, payloads))
        if held + count > self.maxMessages or (
            (held or count > 1) and heldBytes + size > self.maxBytes
        ):
            raise QueueFull(
                f"session store full: the session holds {held} messages ({heldBytes} bytes), "
                f"{count} more ({size} bytes) would exceed maxMessages={self.maxMessages} "
                f"or maxBytes={self.maxBytes}"
            )


@dataclass(frozen=True)
class StoredSession:
    """
    A session as a store keeps it.

    The messages are those appended and not yet confirmed, in order, with
    consecutive sequence numbers: the first is ``confirmedUpTo + 1`` (or
    later, if confirmed ones were not all appended), the last
    ``nextSeq - 1``.

    :ivar token: the 16-byte session token.
    :ivar epoch: the session's epoch, as the caller gave it (the store
        keeps it and never changes it): it tells a session from another
        that reused nothing of it.
    :ivar nextSeq: the sequence number the next appended message takes.
    :ivar confirmedUpTo: the peer confirmed every message up to this one.
    :ivar processedUpTo: this side's application processed every inbound
        message up to this one.
    :ivar lastSeen: when the session was last seen (seconds since the
        epoch: wall-clock time, meaningful across restarts).
    :ivar messages: ``(seq, payload)`` of each unconfirmed message, in order.
    :ivar rejections: ``(seq, reason)`` of the REJECTs this side sent (or
        is about to send) that the peer may not have seen yet, in order:
        after a restart they go again, so that a REJECT lost in a crash
        never turns into an ACK. All are at or below ``processedUpTo``.
    """

    token: bytes
    epoch: int = 0
    nextSeq: int = 1
    confirmedUpTo: int = 0
    processedUpTo: int = 0
    lastSeen: float = 0.0
    messages: tuple[tuple[int, bytes], ...] = field(default=(), repr=False)
    rejections: tuple[tuple[int, str], ...] = field(default=(), repr=False)

    @property
    def storedBytes(self) -> int:
        """The payload bytes of the stored messages."""
        return sum(len(payload) for _, payload in self.messages)


def checkRecord(record: StoredSession) -> None:
    """
    Whether ``record`` is one a store may hold.

    :raises StoreError: if its token is not 16 bytes, its positions are
        negative or out of order, or its messages are not consecutive
        sequence numbers after ``confirmedUpTo`` and before ``nextSeq``.
    """
    if len(record.token) != 16:
        raise StoreError(f"a session token is 16 bytes, got {len(record.token)}")
    if record.confirmedUpTo < 0 or record.processedUpTo < 0 or record.epoch < 0:
        raise StoreError("epoch and positions must not be negative")
    if record.nextSeq <= record.confirmedUpTo:
        raise StoreError(
            f"nextSeq {record.nextSeq} must be beyond confirmedUpTo {record.confirmedUpTo}"
        )
    rejected = [seq for seq, _ in record.rejections]
    if rejected and (rejected != sorted(set(rejected)) or rejected[-1] > record.processedUpTo):
        raise StoreError(
            f"stored REJECTs must be in order and at or below processedUpTo "
            f"{record.processedUpTo}, got {rejected}"
        )
    if record.messages:
        first = record.messages[0][0]
        seqs = [seq for seq, _ in record.messages]
        if first <= record.confirmedUpTo or seqs != list(range(first, record.nextSeq)):
            raise StoreError(
                f"stored messages must be numbered consecutively from after confirmedUpTo "
                f"{record.confirmedUpTo} up to nextSeq {record.nextSeq} - 1, got {seqs[0]}.."
                f"{seqs[-1]} ({len(seqs)} messages)"
            )


def checkAppend(nextSeq: int, seqs: Sequence[int]) -> None:
    """
    Whether messages numbered ``seqs`` may be appended to a session whose
    next sequence number is ``nextSeq``: they must continue its numbering.

    :raises StoreError: if not.
    """
    if list(seqs) != list(range(nextSeq, nextSeq + len(seqs))):
        shown = ", ".join(map(str, seqs[:3])) + (", ..." if len(seqs) > 3 else "")
        raise StoreError(f"appended messages must be numbered from {nextSeq} on, got {shown}")


def checkConfirm(nextSeq: int, upTo: int) -> None:
    """
    Whether the peer may confirm messages up to ``upTo`` in a session whose
    next sequence number is ``nextSeq``.

    :raises StoreError: for a message never appended.
    """
    if upTo >= nextSeq:
        raise StoreError(
            f"cannot confirm up to {upTo}: only {nextSeq - 1} messages were appended"
        )


def sessionIdOf(token: bytes) -> str:
    """
    The public id of the session with ``token``: 32 hexadecimal characters
    derived from the token (SHA-256 under a label of its own), the same in
    every process. An application names a session by it (in its own
    records, in logs, to send to it from another process); it is not a
    secret: nothing can resume a session with it.
    """
    return hashlib.sha256(b"twisted_alive session id\x00" + token).hexdigest()[:32]


def unknownSession(token: bytes) -> StoreError:
    """The error of an operation on a session the store does not hold."""
    return StoreError(f"the store holds no session {token.hex()[:8]}")


def recordOf(session: Session, epoch: int = 0) -> StoredSession:
    """
    The record of a live `Session`.

    Messages queued and never sent have no sequence number yet: they get
    the numbers they will be sent with, in queue order, after the last one
    the outbox gave (as `Outbox.takeSendable` numbers them).

    :param epoch: the session's epoch (a `Session` does not hold one).
    """
    outbox = session.outbox
    messages: list[tuple[int, bytes]] = [(entry.seq, entry.payload) for entry in outbox.inflight]
    nextSeq = outbox.nextSeq
    for entry in outbox.queue:
        if entry.seq:
            messages.append((entry.seq, entry.payload))
        else:
            messages.append((nextSeq, entry.payload))
            nextSeq += 1
    messages.sort(key=lambda message: message[0])
    if messages:
        # Messages numbered when submitted (`Outbox.storedUpTo`) may be
        # numbered beyond the next one to send.
        nextSeq = max(nextSeq, messages[-1][0] + 1)
    inbox = session.inbox
    return StoredSession(
        token=session.token,
        epoch=epoch,
        nextSeq=nextSeq,
        confirmedUpTo=outbox.ackedUpTo,
        processedUpTo=inbox.processedUpTo,
        lastSeen=session.lastSeen,
        messages=tuple(messages),
        rejections=tuple(inbox.sentRejections) + tuple(inbox.rejections),
    )


def sessionOf(
    record: StoredSession,
    window: int = DEFAULT_WINDOW,
    maxQueue: int = DEFAULT_MAX_QUEUE,
    maxQueueBytes: int = DEFAULT_MAX_QUEUE_BYTES,
) -> Session:
    """
    A live `Session` from its record, as after a reconnect: every stored
    message waits at the head of the queue with its sequence number, to be
    sent (again) once the peer's HELLO says what it holds; the inbound side
    resumes after the last message processed, so the peer sends again what
    was received but not processed; the message after it is the one a
    previous process may have processed without committing its position
    (``Inbox.mayRepeat``; not for a session that never had a token).

    The entries' handles are ``None``: the caller gives them its own.
    """
    session = Session(record.token, window, maxQueue, maxQueueBytes)
    outbox = session.outbox
    outbox.nextSeq = record.nextSeq
    outbox.ackedUpTo = record.confirmedUpTo
    if record.messages:
        queue: deque[Entry] = deque()
        for seq, payload in record.messages:
            entry = Entry(payload, None)
            entry.seq = seq
            queue.append(entry)
        outbox.queue = queue
        outbox.queuedBytes = record.storedBytes
    inbox = session.inbox
    inbox.receivedUpTo = inbox.processedUpTo = inbox.ackedUpTo = record.processedUpTo
    inbox.committedUpTo = record.processedUpTo
    if record.token != NO_SESSION:
        # A previous process may have processed the next message without
        # committing its position (it crashed in between): flagged when it
        # is handed out again.
        inbox.mayRepeat = record.processedUpTo + 1
    if record.rejections:
        # Sent again when the next connection opens (`Inbox.takeRejections`).
        inbox.sentRejections = deque(record.rejections)
    session.lastSeen = record.lastSeen
    return session


COMMIT_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
"""Upper bounds, in seconds, of the buckets of a store's commit times
(`CommitTimes`), from 50 µs to 1 s; longer commits count in the last,
unbounded one."""


@dataclass(frozen=True)
class StoreStatistics:
    """
    What a session store says of itself, for monitoring (the status
    site's ``/metrics``): a snapshot, taken by `ISessionStore.statistics`.

    :ivar sessions: the sessions the store holds; ``None`` while it does
        not know (a file not opened yet).
    :ivar outboxMessages: the outbound messages it holds, stored and not
        yet confirmed, across every session; ``None`` while it does not
        know.
    :ivar commits: the commits timed so far (a store that makes nothing
        durable, `MemorySessionStore`, times none).
    :ivar commitSeconds: their times added up, in seconds.
    :ivar commitBuckets: how many took at most each bound of
        `COMMIT_BUCKETS` (cumulative, as Prometheus counts them), then all
        of them (the unbounded bucket, equal to ``commits``).
    """

    sessions: int | None = None
    outboxMessages: int | None = None
    commits: int = 0
    commitSeconds: float = 0.0
    commitBuckets: tuple[int, ...] = (0,) * (len(COMMIT_BUCKETS) + 1)


class CommitTimes:
    """
    A histogram of commit times, with the bounds of `COMMIT_BUCKETS`: what
    a durable store keeps to fill `StoreStatistics`. Not thread-safe: one
    thread observes and reads it (a store's reactor thread).
    """

    def __init__(self) -> None:
        self.counts = [0] * (len(COMMIT_BUCKETS) + 1)
        """Commits per bucket (not cumulative); the last is unbounded."""
        self.total = 0.0
        """Their times added up, in seconds."""

    def observe(self, seconds: float) -> None:
        """Count one commit that took ``seconds``."""
        self.counts[bisect_left(COMMIT_BUCKETS, seconds)] += 1
        self.total += seconds

    def statistics(
        self, sessions: int | None = None, outboxMessages: int | None = None
    ) -> StoreStatistics:
        """The `StoreStatistics` of these commits, with ``sessions`` and
        ``outboxMessages``."""
        cumulative: list[int] = []
        running = 0
        for count in self.counts:
            running += count
            cumulative.append(running)
        return StoreStatistics(sessions, outboxMessages, running, self.total, tuple(cumulative))


__all__ = [
    "COMMIT_BUCKETS",
    "DEFAULT_MAX_STORED",
    "CommitTimes",
    "DEFAULT_MAX_STORED_BYTES",
    "CorruptStore",
    "StoreClosed",
    "StoreError",
    "StoreLimits",
    "StoredSession",
    "StoreStatistics",
    "checkAppend",
    "checkConfirm",
    "checkRecord",
    "recordOf",
    "sessionIdOf",
    "unknownSession",
    "sessionOf",
]
