"""
The delivery state of ``twisted_alive.core.delivery`` beyond the common
paths: `undelivered`, the hand-off answers of `Inbox`, the producer marks
of `Outbox`, messages sent together (`Outbox.submitMany`), and the edges of
resume and restart.
"""

from __future__ import annotations

import pytest

from twisted_alive.core.delivery import EMPTY, Entry, Inbox, Outbox, Session, undelivered
from twisted_alive.core.frames import Data
from twisted_alive.core.outcomes import QueueFull

BIG = 1 << 30


def entry(handle: object, seq: int = 0, batch: int = 1) -> Entry:
    """An entry with the given handle, sequence number and batch mark."""
    e = Entry(b"p", handle, batch)
    e.seq = seq
    return e


# -- undelivered ---------------------------------------------------------------------------------


def test_undelivered() -> None:
    """One outcome per handle in order of first appearance; maybe processed
    if one of its messages was sent or it ends a batch; no handle, no
    outcome."""
    entries = [
        entry("sent", seq=3),
        entry(None, seq=4),
        entry("queued"),
        entry("batch", batch=0),
        entry("batch", batch=2),
        entry("mixed"),
        entry("mixed", seq=9),
        entry("sent", seq=0),
    ]
    assert undelivered(entries) == [
        ("sent", True),
        ("queued", False),
        ("batch", True),
        ("mixed", True),
    ]


def test_undeliveredEmpty() -> None:
    """No entries, no outcomes."""
    assert undelivered([]) == []


# -- Inbox answers -------------------------------------------------------------------------------


def test_processedOnlyForHandedOut() -> None:
    """processed() counts for the message handed out only."""
    inbox = Inbox()
    inbox.accept(1, b"a")
    inbox.handedOut = 1
    assert inbox.processed(2) is False
    assert (inbox.handedOut, inbox.processedUpTo) == (1, 0)
    assert inbox.processed(1) is True
    assert (inbox.handedOut, inbox.processedUpTo) == (0, 1)
    assert inbox.processed(1) is False


def test_failedOnlyForHandedOut() -> None:
    """failed() queues a REJECT for the message handed out only."""
    inbox = Inbox()
    inbox.handedOut = 2
    assert inbox.failed(3, "no") is False
    assert inbox.rejections == [] and inbox.handedOut == 2
    assert inbox.failed(2, "bad") is True
    assert inbox.rejections == [(2, "bad")] and inbox.processedUpTo == 2
    assert inbox.handedOut == 0


def test_processedAfterReplacedSession() -> None:
    """The answer to a message of a replaced session frees the hand-off and
    does not count."""
    inbox = Inbox()
    inbox.handedOut = -1
    assert inbox.processed(7) is False
    assert (inbox.handedOut, inbox.processedUpTo) == (0, 0)


def test_sentRejectionsForgottenOnceSeen() -> None:
    """Sent REJECTs are resent until the peer sent a DATA more than a window
    beyond them."""
    inbox = Inbox(window=2)
    inbox.accept(1, b"a")
    inbox.reject(1, "bad")
    assert inbox.takeRejections() == [(1, "bad")]
    assert inbox.takeRejections(resend=True) == [(1, "bad")]
    inbox.ackedUpTo = 1
    inbox.accept(2, b"b")
    inbox.accept(3, b"c")
    assert list(inbox.sentRejections) == [(1, "bad")]
    inbox.ackedUpTo = 3
    inbox.accept(4, b"d")
    assert list(inbox.sentRejections) == []
    assert inbox.takeRejections(resend=True) == []


def test_sentRejectionsForgottenInOrderRun() -> None:
    """acceptInOrder forgets sent REJECTs the same way."""
    inbox = Inbox(window=2)
    inbox.accept(1, b"a")
    inbox.reject(1, "bad")
    inbox.takeRejections()
    inbox.ackedUpTo = 2
    assert inbox.acceptInOrder([Data(2, b"b"), Data(3, b"c"), Data(4, b"d")]) == 3
    assert list(inbox.sentRejections) == []
    assert inbox.receivedUpTo == 4


def test_acceptInOrderStopsAtWindow() -> None:
    """acceptInOrder stops at a frame beyond the window; none accepted
    leaves pending untouched."""
    inbox = Inbox(window=1)
    assert inbox.acceptInOrder([Data(2, b"x")]) == 0
    assert inbox.pending is EMPTY
    assert inbox.acceptInOrder([Data(1, b"a"), Data(2, b"b")]) == 1
    assert list(inbox.pending) == [Data(1, b"a")]


# -- Outbox marks --------------------------------------------------------------------------------


def test_isHighAndIsLow() -> None:
    """High at half of either limit, low at a quarter of both."""
    outbox = Outbox(1, maxQueue=8, maxQueueBytes=1000)
    assert outbox.isLow() and not outbox.isHigh()
    for i in range(3):
        outbox.submit(b"x", i)
    assert not outbox.isHigh() and not outbox.isLow()
    outbox.submit(b"x", 3)
    assert outbox.isHigh()
    bytesOnly = Outbox(1, maxQueue=100, maxQueueBytes=100)
    bytesOnly.submit(b"x" * 50, 0)
    assert bytesOnly.isHigh() and not bytesOnly.isLow()
    assert Outbox(1, maxQueue=0, maxQueueBytes=0).isLow()


# -- submitMany ----------------------------------------------------------------------------------


def test_submitManyAllInWindow() -> None:
    """All fit in the window: all sent now, the last marks the batch."""
    outbox = Outbox(8)
    sent = outbox.submitMany([b"a", b"b", b"c"], "h", 8, 1.5, BIG)
    assert [(e.seq, e.batch, e.sentAt) for e in sent] == [(1, 0, 1.5), (2, 0, 1.5), (3, 3, 1.5)]
    assert outbox.queue is EMPTY and outbox.sentCount == 3 and outbox.nextSeq == 4


def test_submitManySplitsBetweenWindowAndQueue() -> None:
    """Those past the window wait in the queue; the last queued marks the batch."""
    outbox = Outbox(8)
    outbox.sendNow(b"z", "z", 3, 0.0, BIG)
    sent = outbox.submitMany([b"a", b"b", b"c", b"d"], "h", 3, 0.0, BIG)
    assert [(e.seq, e.batch) for e in sent] == [(2, 0), (3, 0)]
    assert [(e.seq, e.batch, e.payload) for e in outbox.queue] == [(0, 0, b"c"), (0, 4, b"d")]
    assert outbox.queuedBytes == 2


def test_submitManyNoRoomWhenWindowOverfull() -> None:
    """A peer window smaller than what is in flight gives no room: all queue."""
    outbox = Outbox(8)
    for i in range(3):
        outbox.sendNow(b"z", i, 8, 0.0, BIG)
    assert outbox.submitMany([b"a", b"b"], "h", 2, 0.0, BIG) == []
    assert [e.batch for e in outbox.queue] == [0, 2]


def test_submitManyTooLargeGoesThroughQueue() -> None:
    """One message larger than the peer accepts sends all through the queue."""
    outbox = Outbox(8)
    assert outbox.submitMany([b"a", b"bbbb"], "h", 8, 0.0, 3) == []
    assert len(outbox.queue) == 2 and outbox.inflight is EMPTY


def test_submitManyNotOpenQueuesAll() -> None:
    """With no peer window (not open), everything waits."""
    outbox = Outbox(8)
    assert outbox.submitMany([b"a"], "h", 0, 0.0, BIG) == []
    assert [(e.payload, e.batch) for e in outbox.queue] == [(b"a", 1)]


def test_submitManyQueueFull() -> None:
    """Those left for the queue must fit it, all or none; an empty queue
    takes a single one however large."""
    outbox = Outbox(1, maxQueue=2, maxQueueBytes=10)
    with pytest.raises(QueueFull) as info:
        outbox.submitMany([b"a", b"b", b"c"], "h", 0, 0.0, BIG)
    assert str(info.value) == (
        "send queue full: 3 messages sent together, 3 of which (3 bytes) would wait behind "
        "0 in flight and 0 queued (0 bytes) (maxQueue=2, maxQueueBytes=10)"
    )
    assert outbox.queue is EMPTY and outbox.nextSeq == 1
    with pytest.raises(QueueFull):
        outbox.submitMany([b"x" * 6, b"y" * 6], "h", 0, 0.0, BIG)
    assert outbox.submitMany([b"z" * 50], "h", 0, 0.0, BIG) == []
    assert outbox.queuedBytes == 50
    with pytest.raises(QueueFull):
        outbox.submitMany([b"w"], "h", 0, 0.0, BIG)


# -- resume, restart, moves ----------------------------------------------------------------------


def test_sendNowRefusals() -> None:
    """sendNow declines when the queue is not empty, the window is full or
    the payload is too large."""
    outbox = Outbox(1)
    assert outbox.sendNow(b"toolarge", "h", 1, 0.0, 3) is None
    assert outbox.sendNow(b"a", "h", 1, 0.0, BIG) is not None
    assert outbox.sendNow(b"b", "h", 1, 0.0, BIG) is None
    outbox.submit(b"c", "c")
    assert outbox.sendNow(b"d", "h", 5, 0.0, BIG) is None


def test_resumeIntoEmptyQueueThenFirstTooLarge() -> None:
    """resume puts unreceived messages back; firstTooLargeResend finds the
    one that no longer fits and ignores new ones."""
    outbox = Outbox(8)
    outbox.sendNow(b"aa", 1, 8, 0.0, BIG)
    outbox.sendNow(b"bbbbb", 2, 8, 0.0, BIG)
    outbox.submit(b"cccccccc", 3)
    outbox.resume(1)
    assert [e.seq for e in outbox.queue] == [1, 2, 0]
    assert outbox.queuedBytes == 15
    found = outbox.firstTooLargeResend(4)
    assert found is not None and found.seq == 2
    assert outbox.firstTooLargeResend(5) is None
    assert Outbox().firstTooLargeResend(1) is None


def test_restartKeepsOnlyUnsent() -> None:
    """restart makes sent entries (in flight or put back) uncertain and
    keeps never-sent ones; with none kept the queue is the shared empty one."""
    outbox = Outbox(8)
    outbox.sendNow(b"a", 1, 8, 0.0, BIG)
    outbox.sendNow(b"b", 2, 8, 0.0, BIG)
    outbox.resume(2)
    outbox.reject(1, "x")
    uncertain = outbox.restart()
    assert [e.handle for e in uncertain] == [1, 2]
    assert outbox.queue is EMPTY and outbox.queuedBytes == 0
    assert (outbox.nextSeq, outbox.ackedUpTo, outbox.rejected) == (1, 0, {})


def test_moveQueueTo() -> None:
    """moveQueueTo appends to a never-used queue; an empty one moves nothing."""
    source, target = Outbox(), Outbox()
    source.moveQueueTo(target)
    assert target.queue is EMPTY
    source.submit(b"ab", "x")
    source.moveQueueTo(target)
    assert [e.handle for e in target.queue] == ["x"] and target.queuedBytes == 2
    assert len(source.queue) == 0 and source.queuedBytes == 0


def test_sessionRestartIdle() -> None:
    """A restart with nothing handed out leaves the new inbox free."""
    session = Session(b"t" * 16, window=4)
    session.resumes = 3
    assert session.restart() == []
    assert session.inbox.handedOut == 0 and session.inbox.window == 4
    assert session.resumes == 0 and session.token == bytes(16)


# -- numbered at submission (a session kept in a store) ------------------------------------------


def numbered() -> Outbox:
    """An outbox that numbers messages when they are submitted, none
    stored yet."""
    outbox = Outbox(window=4)
    outbox.storedUpTo = 0
    return outbox


def test_numberedAtSubmission() -> None:
    """With ``storedUpTo`` set, a message gets its sequence number when
    submitted, alone or with others; none goes straight into the window."""
    outbox = numbered()
    assert outbox.nextNumber() == 1
    assert outbox.submit(b"a", "a").seq == 1
    assert outbox.sendNow(b"b", "b", BIG, 0.0, BIG) is None
    assert outbox.submitMany([b"b", b"c"], "bc", BIG, 0.0, BIG) == []
    assert [e.seq for e in outbox.queue] == [1, 2, 3]
    assert outbox.nextNumber() == 4
    assert outbox.nextSeq == 1  # nothing sent


def test_numberedSentOnlyOnceStored() -> None:
    """Nothing numbered above ``storedUpTo`` is sent; raising it sends the
    rest, as first sends (sent time, count), within the window."""
    outbox = numbered()
    for payload in (b"a", b"b", b"c", b"d", b"e", b"f"):
        outbox.submit(payload, payload)
    assert outbox.takeSendable(BIG, 1.0, BIG) == []
    outbox.storedUpTo = 2
    sent = outbox.takeSendable(BIG, 2.0, BIG)
    assert [(e.seq, e.sentAt) for e in sent] == [(1, 2.0), (2, 2.0)]
    assert outbox.nextSeq == 3 and outbox.sentCount == 2 and outbox.redelivered == 0
    outbox.storedUpTo = 6
    assert [e.seq for e in outbox.takeSendable(BIG, 3.0, BIG)] == [3, 4]  # the window
    assert outbox.queuedBytes == 2
    assert outbox.nextNumber() == 7
    assert [e.seq for e in outbox.ack(4)] == [1, 2, 3, 4]
    assert [e.seq for e in outbox.takeSendable(BIG, 4.0, BIG)] == [5, 6]


def test_numberedTooLargeStops() -> None:
    """A stored message larger than the peer accepts is not skipped (that
    would leave a gap in the stored numbering): sending stops at it."""
    outbox = numbered()
    outbox.submit(b"a", "a")
    outbox.submit(b"large", "large")
    outbox.submit(b"c", "c")
    outbox.storedUpTo = 3
    assert [e.seq for e in outbox.takeSendable(BIG, 0.0, 2)] == [1]
    assert outbox.tooLarge == []
    assert outbox.firstTooLargeResend(2) is not None


def test_numberedResumeAndNextNumber() -> None:
    """After a resume puts sent messages back, the next number still
    follows the last one submitted; with only resends queued, it is the
    next one to send."""
    outbox = numbered()
    outbox.submit(b"a", "a")
    outbox.storedUpTo = 1
    outbox.takeSendable(BIG, 0.0, BIG)
    outbox.resume(1)
    assert [e.seq for e in outbox.queue] == [1]
    assert outbox.nextNumber() == 2
    outbox.submit(b"b", "b")
    assert [e.seq for e in outbox.queue] == [1, 2]
    sent = outbox.takeSendable(BIG, 1.0, BIG)
    assert [e.seq for e in sent] == [1]  # 2 is not stored yet
    assert outbox.redelivered == 1


def test_numberedRestartNumbersAgain() -> None:
    """A restart fails what was sent, and numbers what was never sent
    again from 1, to be stored again before it is sent."""
    outbox = numbered()
    for payload in (b"a", b"b", b"c"):
        outbox.submit(payload, payload)
    outbox.storedUpTo = 1
    outbox.takeSendable(BIG, 0.0, BIG)
    uncertain = outbox.restart()
    assert [e.handle for e in uncertain] == [b"a"]
    assert [(e.seq, e.handle) for e in outbox.queue] == [(1, b"b"), (2, b"c")]
    assert outbox.storedUpTo == 0 and outbox.nextSeq == 1
    assert outbox.takeSendable(BIG, 0.0, BIG) == []


def test_withdraw() -> None:
    """The messages submitted last can be taken back (a store refused
    them), with their bytes."""
    outbox = numbered()
    outbox.submit(b"a", "a")
    outbox.submitMany([b"bb", b"cc"], "bc", BIG, 0.0, BIG)
    assert [e.payload for e in outbox.withdraw(2)] == [b"bb", b"cc"]
    assert [e.payload for e in outbox.queue] == [b"a"] and outbox.queuedBytes == 1
    assert outbox.nextNumber() == 2
