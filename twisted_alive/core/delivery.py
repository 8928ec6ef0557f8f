"""
Delivery state of a session: sequence numbers, the window, the bounded send
queue, cumulative acknowledgements, and what to resend after a reconnect.

Sans-IO: no Twisted, no clock, no I/O. A `Session` outlives the connections
that carry it; each side keeps one `Outbox` (what it sends) and one `Inbox`
(what it receives).

An idle connection should cost little memory: an empty deque takes 760
bytes, so the queues start as one shared, read-only empty deque (`EMPTY`,
``maxlen=0``) and get their own deque when the first element arrives. Read
them freely; only the methods of this module add to them.
"""

from __future__ import annotations

import hmac
import secrets
from collections import deque
from collections.abc import Sequence
from itertools import islice
from typing import Any

from twisted_alive.core.checks import atLeast
from twisted_alive.core.frames import NO_SESSION, Data
from twisted_alive.core.outcomes import QueueFull

DEFAULT_WINDOW = 1024
"""Unacknowledged messages a sender may have in flight."""

DEFAULT_MAX_QUEUE = 65536
"""Messages that may wait behind the window."""

DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
"""Payload bytes that may wait behind the window."""


EMPTY: deque[Any] = deque(maxlen=0)
"""The shared placeholder of every queue that never held anything."""


class ProtocolViolation(Exception):
    """The peer broke a delivery rule; the text says which."""


class Entry:
    """
    One message in an `Outbox`.

    :ivar handle: the sender's object for the message's outcome (the
        adapter's Deferred), or ``None``; messages sent together share the
        last one's handle.
    :ivar batch: 1 for a message sent alone; for messages sent together,
        their count on the last one and 0 on the others (whose outcome the
        last one's handle reports).
    """

    __slots__ = ("seq", "payload", "handle", "sentAt", "batch")

    def __init__(self, payload: bytes, handle: Any, batch: int = 1) -> None:
        self.seq = 0
        self.payload = payload
        self.handle = handle
        self.sentAt = 0.0
        self.batch = batch


def undelivered(entries: Sequence[Entry]) -> list[tuple[Any, bool]]:
    """
    The outcomes of unconfirmed entries that will never be confirmed (their
    session ended, or was replaced): one ``(handle, maybeProcessed)`` per
    handle, in order of first appearance, the handle of messages sent
    together once. ``maybeProcessed`` is true if one of its messages was
    sent (it has a sequence number), or it is the last of several sent
    together (the others may have gone out before): the peer may have
    processed it before the end.
    """
    out: list[list[Any]] = []
    index: dict[int, int] = {}
    for entry in entries:
        handle = entry.handle
        if handle is None:
            continue
        maybe = entry.seq != 0 or entry.batch > 1
        at = index.get(id(handle))
        if at is None:
            index[id(handle)] = len(out)
            out.append([handle, maybe])
        elif maybe:
            out[at][1] = True
    return [(handle, maybe) for handle, maybe in out]


class Outbox:
    """
    The sending half of a session.

    Messages wait in a bounded queue, move into the window when sent (which
    gives them their sequence number), and leave it when a cumulative ACK
    covers them. After a reconnect, `resume` puts what the peer did not
    receive back at the head of the queue, with the same sequence numbers.

    :param window: messages in flight at most.
    :param maxQueue: messages waiting behind the window at most.
    :param maxQueueBytes: payload bytes waiting behind the window at most.
    """

    __slots__ = (
        "window",
        "maxQueue",
        "maxQueueBytes",
        "queue",
        "queuedBytes",
        "inflight",
        "ackedUpTo",
        "nextSeq",
        "rejected",
        "tooLarge",
        "sentCount",
        "confirmedCount",
        "redelivered",
        "storedUpTo",
    )

    def __init__(
        self,
        window: int = DEFAULT_WINDOW,
        maxQueue: int = DEFAULT_MAX_QUEUE,
        maxQueueBytes: int = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        atLeast("window", window, 1)
        if maxQueue < 0 or maxQueueBytes < 0:
            raise ValueError("queue limits must not be negative")
        self.window = window
        self.maxQueue = maxQueue
        self.maxQueueBytes = maxQueueBytes
        self.queue: deque[Entry] = EMPTY
        self.queuedBytes = 0
        self.inflight: deque[Entry] = EMPTY
        self.ackedUpTo = 0
        self.nextSeq = 1
        self.rejected: dict[int, str] = {}
        self.tooLarge: list[Entry] = []
        self.sentCount = 0
        """Messages written for the first time."""
        self.confirmedCount = 0
        """Messages covered by an ACK (rejected ones included)."""
        self.redelivered = 0
        """Messages written again after a reconnect."""
        self.storedUpTo: int | None = None
        """``None`` (no store): a message gets its sequence number when it
        is first sent. A number (the session is kept in a store): a message
        gets its sequence number when it is submitted (`nextNumber`), so
        that it can be stored before it is sent, and no message numbered
        above ``storedUpTo`` is sent (the store has not committed it yet)."""

    def __len__(self) -> int:
        """Messages not yet confirmed: in flight plus queued."""
        return len(self.inflight) + len(self.queue)

    def hasRoom(self) -> bool:
        """Whether `submit` would accept a message now."""
        queue = self.queue
        # Like submit(): an empty queue always takes one message.
        return not queue or (len(queue) < self.maxQueue and self.queuedBytes < self.maxQueueBytes)

    def nextNumber(self) -> int:
        """The sequence number the next submitted message gets when
        messages are numbered at submission (`storedUpTo` is not ``None``):
        after the last one queued, or the next one to send."""
        queue = self.queue
        if queue and queue[-1].seq >= self.nextSeq:
            return queue[-1].seq + 1
        return self.nextSeq

    def withdraw(self, count: int) -> list[Entry]:
        """Take back the ``count`` messages submitted last (they are still
        queued, never sent): a store refused them."""
        queue = self.queue
        taken = [queue.pop() for _ in range(count)]
        taken.reverse()
        self.queuedBytes -= sum(len(entry.payload) for entry in taken)
        return taken

    def isHigh(self, extra: int = 0, extraBytes: int = 0) -> bool:
        """Whether the queue holds half of either limit (``maxQueue``
        messages or ``maxQueueBytes`` bytes): time to pause a producer.
        ``extra`` messages of ``extraBytes`` bytes waiting in front of the
        queue (a sender's own buffer) count too."""
        return len(self.queue) + extra >= max(
            1, self.maxQueue // 2
        ) or self.queuedBytes + extraBytes >= max(1, self.maxQueueBytes // 2)

    def isLow(self, extra: int = 0, extraBytes: int = 0) -> bool:
        """Whether the queue (with ``extra`` messages of ``extraBytes``
        bytes in front of it, as for `isHigh`) is down to a quarter of both
        limits: time to resume a paused producer."""
        return (
            len(self.queue) + extra <= self.maxQueue // 4
            and self.queuedBytes + extraBytes <= self.maxQueueBytes // 4
        )

    def submit(self, payload: bytes, handle: Any) -> Entry:
        """
        Queue a message.

        :raises QueueFull: at the queue's limit; nothing was queued.
        """
        queue = self.queue
        # An empty queue always takes one message, however large, so that a
        # byte limit below one message's size cannot block a sender forever.
        if queue and (
            len(queue) >= self.maxQueue or self.queuedBytes + len(payload) > self.maxQueueBytes
        ):
            raise QueueFull(
                f"send queue full: {len(queue)} messages ({self.queuedBytes} bytes) "
                f"waiting behind {len(self.inflight)} in flight "
                f"(maxQueue={self.maxQueue}, maxQueueBytes={self.maxQueueBytes})"
            )
        entry = Entry(payload, handle)
        if self.storedUpTo is not None:
            entry.seq = self.nextNumber()
        if queue is EMPTY:
            queue = self.queue = deque()
        queue.append(entry)
        self.queuedBytes += len(payload)
        return entry

    def sendNow(
        self, payload: bytes, handle: Any, peerWindow: int, now: float, maxPayload: int
    ) -> Entry | None:
        """
        Put a new message straight into the window, if nothing waits in the
        queue and both windows have room: the common case of `submit`
        followed by `takeSendable`, in one step.

        :returns: the entry, with its sequence number, to write now; or
            ``None`` if the message must go through `submit` instead.
        """
        inflight = self.inflight
        if (
            self.queue
            or self.storedUpTo is not None
            or len(inflight) >= (self.window if self.window < peerWindow else peerWindow)
            or len(payload) > maxPayload
        ):
            return None
        entry = Entry(payload, handle)
        entry.seq = seq = self.nextSeq
        self.nextSeq = seq + 1
        self.sentCount += 1
        entry.sentAt = now
        if inflight is EMPTY:
            inflight = self.inflight = deque()
        inflight.append(entry)
        return entry

    def submitMany(
        self,
        payloads: Sequence[bytes],
        handle: Any,
        peerWindow: int,
        now: float,
        maxPayload: int,
    ) -> list[Entry]:
        """
        Queue ``payloads`` as consecutive messages, all or none, with one
        ``handle`` for all (see `Entry.batch`). As many as the windows allow go
        straight into the window, as `sendNow` does; the rest wait in the
        queue.

        :param peerWindow: the peer's window; 0 while nothing may be sent.
        :param maxPayload: the largest payload the peer accepts; if one of
            the messages is larger, all of them go through the queue (see
            `takeSendable`).
        :returns: the entries put into the window, in order, to write now.
        :raises QueueFull: if those left for the queue do not fit in it;
            nothing was queued.
        """
        count = len(payloads)
        queue = self.queue
        inflight = self.inflight
        room = 0
        if not queue and peerWindow and self.storedUpTo is None:
            window = self.window if self.window < peerWindow else peerWindow
            room = window - len(inflight)
            if room > count:
                room = count
            elif room < 0:
                room = 0
            if room and max(map(len, payloads)) > maxPayload:
                room = 0
        waiting = count - room
        waitingBytes = 0
        if waiting:
            waitingBytes = sum(map(len, islice(payloads, room, None)))
            # As in submit(): an empty queue always takes one message.
            if (queue or waiting > 1) and (
                len(queue) + waiting > self.maxQueue
                or self.queuedBytes + waitingBytes > self.maxQueueBytes
            ):
                raise QueueFull(
                    f"send queue full: {count} messages sent together, {waiting} of which "
                    f"({waitingBytes} bytes) would wait behind {len(inflight)} in flight and "
                    f"{len(queue)} queued ({self.queuedBytes} bytes) "
                    f"(maxQueue={self.maxQueue}, maxQueueBytes={self.maxQueueBytes})"
                )
        sent: list[Entry] = []
        if room:
            seq = self.nextSeq
            append = sent.append
            for payload in islice(payloads, room) if room < count else payloads:
                entry = Entry(payload, handle, 0)
                entry.seq = seq
                entry.sentAt = now
                seq += 1
                append(entry)
            self.nextSeq = seq
            self.sentCount += room
            if inflight is EMPTY:
                inflight = self.inflight = deque()
            inflight.extend(sent)
            if not waiting:
                sent[-1].batch = count
                return sent
        first = self.nextNumber() if self.storedUpTo is not None else 0
        if queue is EMPTY:
            queue = self.queue = deque()
        entries = [Entry(payload, handle, 0) for payload in islice(payloads, room, None)]
        if first:
            for seq, entry in enumerate(entries, first):
                entry.seq = seq
        queue.extend(entries)
        queue[-1].batch = count
        self.queuedBytes += waitingBytes
        return sent

    def takeSendable(self, peerWindow: int, now: float, maxPayload: int) -> list[Entry]:
        """
        Move queued messages into the window, as far as both this side's and
        the peer's window allow, giving new ones their sequence number.

        A new message larger than ``maxPayload`` (the peer accepts smaller
        frames than this side) is moved to `tooLarge` instead, without a
        sequence number: the caller fails it.

        Messages numbered at submission (see `storedUpTo`) go out in order
        up to ``storedUpTo``; the first beyond it, or too large for the
        peer, stops the others (skipping it would leave a gap in the
        numbering the store holds; a session resumed with such a message
        fails at the HELLO, see `firstTooLargeResend`).

        :returns: the entries to write now, in order.
        """
        window = self.window if self.window < peerWindow else peerWindow
        inflight = self.inflight
        limit = window - len(inflight)
        queue = self.queue
        if limit <= 0 or not queue:
            return []
        if inflight is EMPTY:
            inflight = self.inflight = deque()
        out: list[Entry] = []
        append = out.append
        popleft = queue.popleft
        nextSeq = self.nextSeq
        stored = self.storedUpTo
        sentBytes = 0
        while limit and queue:
            entry = popleft()
            size = len(entry.payload)
            seq = entry.seq
            if not seq:
                sentBytes += size
                if size > maxPayload:
                    self.tooLarge.append(entry)
                    continue
                entry.seq = nextSeq
                nextSeq += 1
                entry.sentAt = now
            elif seq >= nextSeq:
                # Numbered at submission, never sent: once stored.
                if stored is None or seq > stored or size > maxPayload:
                    queue.appendleft(entry)
                    break
                sentBytes += size
                nextSeq = seq + 1
                entry.sentAt = now
            else:
                sentBytes += size
                self.redelivered += 1
            append(entry)
            limit -= 1
        self.sentCount += nextSeq - self.nextSeq
        self.nextSeq = nextSeq
        self.queuedBytes -= sentBytes
        inflight.extend(out)
        return out

    def ack(self, upTo: int) -> list[Entry]:
        """
        A cumulative ACK arrived.

        :returns: the entries it confirms, in order (including rejected ones:
            look their seq up in `rejected`).
        :raises ProtocolViolation: if it acknowledges a message never sent.
        """
        if upTo <= self.ackedUpTo:
            return []
        if upTo >= self.nextSeq:
            raise ProtocolViolation(
                f"ACK for sequence number {upTo}, but only {self.nextSeq - 1} were sent"
            )
        done = []
        inflight = self.inflight
        while inflight and inflight[0].seq <= upTo:
            done.append(inflight.popleft())
        if len(done) < upTo - self.ackedUpTo:
            # Covered entries that were put back in the queue by a resume.
            queue = self.queue
            while queue and queue[0].seq and queue[0].seq <= upTo:
                entry = queue.popleft()
                self.queuedBytes -= len(entry.payload)
                done.append(entry)
        self.ackedUpTo = upTo
        self.confirmedCount += len(done)
        return done

    def reject(self, seq: int, reason: str) -> None:
        """
        The peer's application failed on message ``seq``; the ACK that
        follows will cover it.

        A REJECT for a message already acknowledged is a resent one (after
        a reconnect) that this side has seen: ignored.

        :raises ProtocolViolation: if ``seq`` was never sent.
        """
        if seq <= self.ackedUpTo:
            return
        if seq >= self.nextSeq:
            raise ProtocolViolation(
                f"REJECT for sequence number {seq}, which is not awaiting confirmation"
            )
        self.rejected[seq] = reason

    def resume(self, peerNextExpected: int) -> None:
        """
        A new connection's HELLO says the peer holds everything below
        ``peerNextExpected``: put the rest of the window back at the head of
        the queue, to be resent with the same sequence numbers.

        :raises ProtocolViolation: if that contradicts what was acknowledged
            or sent (`checkResume`).
        """
        self.checkResume(peerNextExpected)
        inflight = self.inflight
        while inflight and inflight[-1].seq >= peerNextExpected:
            entry = inflight.pop()
            if self.queue is EMPTY:
                self.queue = deque()
            self.queue.appendleft(entry)
            self.queuedBytes += len(entry.payload)

    def checkResume(self, peerNextExpected: int) -> None:
        """
        Whether a HELLO's ``peerNextExpected`` fits this outbox: not below
        what the peer acknowledged, not beyond what was sent. Changes
        nothing.

        :raises ProtocolViolation: if not.
        """
        if peerNextExpected - 1 < self.ackedUpTo:
            raise ProtocolViolation(
                f"HELLO next_expected {peerNextExpected} is below the "
                f"{self.ackedUpTo} messages already acknowledged"
            )
        if peerNextExpected > self.nextSeq:
            raise ProtocolViolation(
                f"HELLO next_expected {peerNextExpected} is beyond the "
                f"{self.nextSeq - 1} messages sent"
            )

    def firstTooLargeResend(self, maxPayload: int) -> Entry | None:
        """
        The first message put back for resending (it has a sequence
        number) that is larger than ``maxPayload``, if any: it cannot be
        sent again, and skipping it would leave a gap.
        """
        for entry in self.queue:
            if not entry.seq:
                return None
            if len(entry.payload) > maxPayload:
                return entry
        return None

    def restart(self) -> list[Entry]:
        """
        The session is abandoned for a new one: every sent message becomes
        uncertain, queued messages that were never sent carry over.

        :returns: the entries that were sent but not confirmed (the caller
            fails them); queued, never-sent entries stay, and sequence numbers
            start again at 1.
        """
        uncertain = list(self.inflight)
        self.inflight.clear()
        kept: deque[Entry] = deque()
        sent = self.nextSeq
        for entry in self.queue:
            if entry.seq and entry.seq < sent:
                uncertain.append(entry)
                self.queuedBytes -= len(entry.payload)
            else:
                kept.append(entry)
        if self.storedUpTo is not None:
            # Numbered at submission: the kept messages are numbered again
            # from 1, and none goes out before the store holds them so.
            for seq, entry in enumerate(kept, 1):
                entry.seq = seq
            self.storedUpTo = 0
        self.queue = kept if kept else EMPTY
        self.ackedUpTo = 0
        self.nextSeq = 1
        self.rejected.clear()
        return uncertain

    def moveQueueTo(self, other: Outbox) -> None:
        """Move every queued (never sent) entry to the end of ``other``'s
        queue, in order."""
        if not self.queue:
            return
        if other.queue is EMPTY:
            other.queue = deque()
        for entry in self.queue:
            other.queue.append(entry)
            other.queuedBytes += len(entry.payload)
        self.queue.clear()
        self.queuedBytes = 0

    def drain(self) -> list[Entry]:
        """Remove and return every unconfirmed entry (the session ends)."""
        entries = list(self.inflight) + list(self.queue)
        self.inflight.clear()
        self.queue.clear()
        self.queuedBytes = 0
        return entries


class Inbox:
    """
    The receiving half of a session.

    Accepted messages wait in order to be handed to the application one at
    a time. `nextExpected` is what the HELLO announces after a reconnect;
    `processedUpTo` is what ACKs confirm.

    :param window: how many received messages may await processing (the
        window this side announces); a peer that exceeds it breaks the
        protocol.
    """

    __slots__ = (
        "window",
        "receivedUpTo",
        "processedUpTo",
        "ackedUpTo",
        "pending",
        "rejections",
        "sentRejections",
        "duplicates",
        "handedOut",
        "waitsForCommit",
        "committedUpTo",
        "mayRepeat",
    )

    def __init__(self, window: int = DEFAULT_WINDOW) -> None:
        self.window = window
        self.receivedUpTo = 0
        self.processedUpTo = 0
        self.ackedUpTo = 0
        """The highest seq an ACK sent to the peer covered: the peer may
        send up to `window` messages beyond it, no more."""
        self.pending: deque[Data] = EMPTY
        self.rejections: list[tuple[int, str]] = []
        self.sentRejections: deque[tuple[int, str]] = EMPTY
        self.duplicates = 0
        self.handedOut = 0
        """The message the application is processing (its seq), 0 if none;
        -1 while it processes one of the session this one replaced (see
        `Session.restart`). The next message waits until it is answered."""
        self.waitsForCommit = False
        """Whether ACKs and REJECTs wait until a store committed the
        processed position they report (`commit`): a side whose session a
        durable store keeps never confirms a message that a crash could
        make it process again."""
        self.committedUpTo = 0
        """The processed position a store committed (with `waitsForCommit`)."""
        self.mayRepeat = 0
        """The message a previous process may have processed already (its
        seq), 0 if none: the one after the position a store had committed
        when the session was loaded (`sessionOf`). With `waitsForCommit`
        the next message is handed out only once the previous one's
        position is committed (`mayHandOut`), so a crash leaves at most
        this one processed without its position."""

    @property
    def mayHandOut(self) -> bool:
        """Whether a received message may be handed to the application
        now: one waits, none is being processed, and, with
        `waitsForCommit`, the store committed the position of the last one
        processed (a crash can then repeat one message at most)."""
        return (
            bool(self.pending)
            and not self.handedOut
            and (not self.waitsForCommit or self.committedUpTo >= self.processedUpTo)
        )

    @property
    def ackUpTo(self) -> int:
        """What the next ACK may cover: `processedUpTo`, or with
        `waitsForCommit` as much of it as was committed."""
        processed = self.processedUpTo
        if self.waitsForCommit and self.committedUpTo < processed:
            return self.committedUpTo
        return processed

    def toCommit(self) -> tuple[int, list[tuple[int, str]]] | None:
        """With `waitsForCommit`: the processed position a store must
        commit before the ACK that reports it, and the rejections
        (``(seq, reason)``) the store must keep with it: every one the peer
        may not have seen yet (sent, or about to be), in order, as
        `ISessionStore.recordProcessed` replaces them. ``None`` if all is
        committed (or nothing waits for a commit)."""
        if not self.waitsForCommit or self.committedUpTo >= self.processedUpTo:
            return None
        return self.processedUpTo, [*self.sentRejections, *self.rejections]

    def commit(self, upTo: int) -> None:
        """A store committed the processed position ``upTo`` (and the
        rejections up to it): the ACK and REJECTs up to it may go."""
        if upTo > self.committedUpTo:
            self.committedUpTo = upTo

    def processed(self, seq: int) -> bool:
        """
        The application processed message ``seq`` (the one handed out): the
        next ACK covers it.

        :returns: whether it counted (``False`` for the answer to a message
            of a replaced session, or to one not handed out).
        """
        handedOut = self.handedOut
        if handedOut == seq:
            self.handedOut = 0
            self.processedUpTo = seq
            return True
        if handedOut == -1:
            self.handedOut = 0
        return False

    def failed(self, seq: int, reason: str) -> bool:
        """
        The application failed on message ``seq`` (the one handed out): it
        counts as processed, and a REJECT with ``reason`` goes to the peer
        before the ACK that covers it.

        :returns: whether it counted (as for `processed`).
        """
        handedOut = self.handedOut
        if handedOut == seq:
            self.handedOut = 0
            self.reject(seq, reason)
            return True
        if handedOut == -1:
            self.handedOut = 0
        return False

    def reject(self, seq: int, reason: str) -> None:
        """
        The application failed on message ``seq``: it counts as processed,
        and a REJECT goes to the peer before the ACK that covers it.
        """
        self.rejections.append((seq, reason))
        self.processedUpTo = seq

    def takeRejections(self, resend: bool = False) -> list[tuple[int, str]]:
        """
        The REJECTs to send now, before the next ACK.

        Sent REJECTs are remembered until the peer must have seen them (it
        sent a DATA more than a window beyond), so that after a reconnect
        they go again (``resend``): a REJECT lost in a cut must not turn
        into a confirmation.
        """
        out = list(self.sentRejections) if resend else []
        due = self.rejections
        if due:
            if self.waitsForCommit:
                upTo = self.committedUpTo
                due = [r for r in due if r[0] <= upTo]
                self.rejections = [r for r in self.rejections if r[0] > upTo]
            else:
                self.rejections = []
            out.extend(due)
            if due:
                if self.sentRejections is EMPTY:
                    self.sentRejections = deque()
                self.sentRejections.extend(due)
        return out

    @property
    def nextExpected(self) -> int:
        """The next sequence number this side needs from the peer."""
        return self.receivedUpTo + 1

    def accept(self, seq: int, payload: bytes) -> bool:
        """
        A DATA frame arrived.

        :returns: ``True`` if it was queued for the application, ``False`` for
            a duplicate (dropped).
        :raises ProtocolViolation: for a gap in the sequence or a peer that
            overran the window.
        """
        expected = self.receivedUpTo + 1
        if seq != expected:
            if seq < expected:
                self.duplicates += 1
                return False
            raise ProtocolViolation(f"DATA sequence number {seq} arrived, expected {expected}")
        if seq - self.ackedUpTo > self.window:
            raise ProtocolViolation(
                f"peer exceeded the window of {self.window} unacknowledged messages"
            )
        self.receivedUpTo = seq
        if self.pending is EMPTY:
            self.pending = deque()
        self.pending.append(Data(seq, payload))
        if self.sentRejections:
            self._forgetRejections(seq)
        return True

    def acceptInOrder(self, frames: Sequence[Any]) -> int:
        """
        Accept the leading run of ``frames`` that are `Data` frames carrying
        exactly the next sequence numbers, within the window: the common
        case, in one step. `accept` judges the rest one by one.

        :returns: how many frames, from the first, were queued.
        """
        expected = self.receivedUpTo + 1
        last = self.ackedUpTo + self.window
        count = 0
        for frame in frames:
            if type(frame) is not Data or frame[0] != expected or expected > last:
                break
            expected += 1
            count += 1
        if count:
            pending = self.pending
            if pending is EMPTY:
                pending = self.pending = deque()
            pending.extend(frames if count == len(frames) else frames[:count])
            self.receivedUpTo = expected - 1
            if self.sentRejections:
                self._forgetRejections(expected - 1)
        return count

    def _forgetRejections(self, seq: int) -> None:
        # The peer sent beyond a window past them: it saw their ACK, and the
        # REJECTs that went before it.
        sent = self.sentRejections
        while sent and sent[0][0] + self.window < seq:
            sent.popleft()


class Session:
    """
    State that outlives a connection: a token, an `Outbox` and an `Inbox`.

    Plain data: nothing in it points at a connection, a producer or a
    Deferred (the handles in the outbox are the sender's opaque values; the
    Twisted adapter gives numbers and keeps the Deferreds itself).
    What binds a session to the connection that carries it now belongs to
    the adapter (``twisted_alive._binding``).

    :param token: the 16-byte session token, or `NO_SESSION` for a session
        that lives only as long as one connection.
    """

    __slots__ = ("token", "outbox", "inbox", "lastSeen", "resumes")

    def __init__(
        self,
        token: bytes = NO_SESSION,
        window: int = DEFAULT_WINDOW,
        maxQueue: int = DEFAULT_MAX_QUEUE,
        maxQueueBytes: int = DEFAULT_MAX_QUEUE_BYTES,
    ) -> None:
        self.token = token
        self.outbox = Outbox(window, maxQueue, maxQueueBytes)
        self.inbox = Inbox(window)
        self.lastSeen = 0.0
        self.resumes = 0
        """How many connections resumed this session (after its first)."""

    @staticmethod
    def newToken() -> bytes:
        """16 random bytes (128 bits) from the operating system's CSPRNG."""
        return secrets.token_bytes(16)

    def matches(self, token: bytes) -> bool:
        """Compare ``token`` with this session's token in constant time."""
        return hmac.compare_digest(self.token, token)

    def restart(self, token: bytes = NO_SESSION) -> list[Entry]:
        """
        Replace this session with a new one (the peer did not know it).

        :returns: the sent-but-unconfirmed entries, now uncertain.
        """
        self.token = token
        busy = self.inbox.handedOut
        waits = self.inbox.waitsForCommit
        self.inbox = Inbox(self.inbox.window)
        self.inbox.waitsForCommit = waits
        if busy:
            # The application still processes a message of the old session:
            # the new one's first message waits for its answer.
            self.inbox.handedOut = -1
        self.resumes = 0
        return self.outbox.restart()
