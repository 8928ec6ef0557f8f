"""
The sans-IO records of session stores, ``twisted_alive.core.stored``: the
limits (`StoreLimits`), the consistency rules a store applies, and the
round trip between a live `Session` and its `StoredSession`.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_alive.core.delivery import DEFAULT_MAX_QUEUE, DEFAULT_WINDOW, Session
from twisted_alive.core.outcomes import QueueFull
from twisted_alive.core.stored import (
    COMMIT_BUCKETS,
    DEFAULT_MAX_STORED,
    CommitTimes,
    StoredSession,
    StoreError,
    StoreLimits,
    StoreStatistics,
    checkAppend,
    checkConfirm,
    checkRecord,
    recordOf,
    sessionOf,
    unknownSession,
)

TOKEN = bytes(range(16))
BIG = 1 << 30

# -- limits ---------------------------------------------------------------------------------------


def test_defaultLimitsAreTheOutboxs() -> None:
    """By default a store keeps what a default outbox holds: its window and
    its queue, in messages; its queue's bytes and a window of the largest
    frames, in bytes."""
    assert DEFAULT_MAX_STORED == DEFAULT_WINDOW + DEFAULT_MAX_QUEUE
    assert StoreLimits() == StoreLimits.forOutbox()
    assert StoreLimits.forOutbox(4, 10, 100, 50) == StoreLimits(14, 100 + 4 * 50)
    assert StoreLimits.forOutbox(4, 0, 0, 50).maxMessages == 5
    # An empty queue takes one message larger than its byte limit.
    assert StoreLimits.forOutbox(2, 10, 1000, 10_000) == StoreLimits(12, 10_000 + 2 * 10_000)


@given(
    window=st.integers(1, 4),
    maxQueue=st.integers(0, 4),
    maxQueueBytes=st.integers(0, 300),
    maxPayload=st.integers(1, 200),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 200), st.integers(1, 3)), max_size=40),
)
def test_forOutboxHoldsWhatTheOutboxTakes(
    window: int,
    maxQueue: int,
    maxQueueBytes: int,
    maxPayload: int,
    steps: list[tuple[bool, int, int]],
) -> None:
    """Whatever an outbox with these limits takes (messages submitted alone
    or together, sent as the window allows, never confirmed), a store with
    `StoreLimits.forOutbox` of the same limits takes it too: its refusals
    never come after the outbox accepted."""
    limits = StoreLimits.forOutbox(window, maxQueue, maxQueueBytes, maxPayload)
    outbox = Session(TOKEN).outbox
    outbox.window, outbox.maxQueue, outbox.maxQueueBytes = window, maxQueue, maxQueueBytes
    outbox.storedUpTo = 0
    held, heldBytes = 0, 0
    for together, size, count in steps:
        payloads = [b"x" * min(size, maxPayload)] * (count if together else 1)
        try:
            if together:
                outbox.submitMany(payloads, None, 0, 0.0, maxPayload)
            else:
                outbox.submit(payloads[0], None)
        except QueueFull:
            continue
        limits.check(held, heldBytes, payloads)  # must not raise
        held += len(payloads)
        heldBytes += sum(map(len, payloads))
        outbox.storedUpTo = outbox.nextNumber() - 1
        outbox.takeSendable(window, 0.0, maxPayload)


def test_limitsRefuseBeyondMessages() -> None:
    """Beyond ``maxMessages``, appending fails with `QueueFull`, saying
    what the session holds and the limits."""
    limits = StoreLimits(3, 1000)
    limits.check(2, 20, [b"x"])
    with pytest.raises(QueueFull) as caught:
        limits.check(2, 20, [b"x", b"y"])
    assert str(caught.value) == (
        "session store full: the session holds 2 messages (20 bytes), 2 more (2 bytes) "
        "would exceed maxMessages=3 or maxBytes=1000"
    )


def test_limitsRefuseBeyondBytes() -> None:
    """Beyond ``maxBytes``, appending fails; an empty session always takes
    one message however large, as an empty outbox queue does."""
    limits = StoreLimits(10, 5)
    limits.check(0, 0, [b"x" * 100])
    limits.check(1, 2, [b"abc"])
    with pytest.raises(QueueFull):
        limits.check(1, 2, [b"abcd"])
    with pytest.raises(QueueFull):
        limits.check(0, 0, [b"abc", b"abc"])


@pytest.mark.parametrize(
    ("messages", "size", "text"),
    [
        (0, 0, "maxMessages must be at least 1, got 0"),
        (1, -1, "maxBytes must not be negative, got -1"),
    ],
)
def test_limitsValidated(messages: int, size: int, text: str) -> None:
    """Limits that could hold nothing are refused."""
    with pytest.raises(ValueError) as caught:
        StoreLimits(messages, size)
    assert str(caught.value) == text


# -- consistency rules ----------------------------------------------------------------------------


def test_checkRecordAcceptsConsistent() -> None:
    """A record whose messages run from after ``confirmedUpTo`` to
    ``nextSeq - 1`` is accepted, as is one that holds none."""
    checkRecord(StoredSession(TOKEN))
    checkRecord(StoredSession(TOKEN, 3, 8, 4, 2, 1.0, ((5, b"a"), (6, b"b"), (7, b"c"))))
    checkRecord(StoredSession(TOKEN, 0, 8, 4, 0, 0.0, ((7, b"c"),)))


@pytest.mark.parametrize(
    ("record", "text"),
    [
        (StoredSession(b"short"), "a session token is 16 bytes, got 5"),
        (StoredSession(TOKEN, epoch=-1), "epoch and positions must not be negative"),
        (StoredSession(TOKEN, processedUpTo=-1), "epoch and positions must not be negative"),
        (
            StoredSession(TOKEN, nextSeq=3, confirmedUpTo=3),
            "nextSeq 3 must be beyond confirmedUpTo 3",
        ),
        (
            StoredSession(TOKEN, nextSeq=4, confirmedUpTo=1, messages=((1, b"a"), (2, b"b"))),
            "stored messages must be numbered consecutively from after confirmedUpTo 1 up to "
            "nextSeq 4 - 1, got 1..2 (2 messages)",
        ),
        (
            StoredSession(TOKEN, nextSeq=4, messages=((1, b"a"), (3, b"b"))),
            "stored messages must be numbered consecutively from after confirmedUpTo 0 up to "
            "nextSeq 4 - 1, got 1..3 (2 messages)",
        ),
        (
            StoredSession(TOKEN, nextSeq=5, messages=((1, b"a"), (2, b"b"))),
            "stored messages must be numbered consecutively from after confirmedUpTo 0 up to "
            "nextSeq 5 - 1, got 1..2 (2 messages)",
        ),
    ],
)
def test_checkRecordRefusesInconsistent(record: StoredSession, text: str) -> None:
    """An inconsistent record is refused with a `StoreError` saying why."""
    with pytest.raises(StoreError) as caught:
        checkRecord(record)
    assert str(caught.value) == text


def test_checkAppend() -> None:
    """Appended messages must continue the numbering from ``nextSeq``."""
    checkAppend(5, [5, 6, 7])
    checkAppend(5, [])
    with pytest.raises(StoreError) as caught:
        checkAppend(5, [6])
    assert str(caught.value) == "appended messages must be numbered from 5 on, got 6"
    with pytest.raises(StoreError) as caught:
        checkAppend(1, [1, 2, 4, 5])
    assert str(caught.value) == "appended messages must be numbered from 1 on, got 1, 2, 4, ..."


def test_checkConfirm() -> None:
    """Only appended messages can be confirmed."""
    checkConfirm(5, 4)
    checkConfirm(5, 0)
    with pytest.raises(StoreError) as caught:
        checkConfirm(5, 5)
    assert str(caught.value) == "cannot confirm up to 5: only 4 messages were appended"


def test_unknownSession() -> None:
    """The error of an unknown session names the token's first 8 hex digits
    only."""
    assert str(unknownSession(TOKEN)) == "the store holds no session 00010203"


# -- Session <-> record ---------------------------------------------------------------------------


def busySession() -> Session:
    """A session with confirmed, in-flight, resent and never-sent messages,
    and processed inbound ones."""
    session = Session(TOKEN, window=3)
    for n in range(6):
        session.outbox.submit(b"m%d" % n, None)
    sent = session.outbox.takeSendable(BIG, 1.0, BIG)
    assert [e.seq for e in sent] == [1, 2, 3]
    session.outbox.ack(1)
    session.outbox.resume(3)  # seq 3 goes back to the queue's head
    for seq in (1, 2):
        session.inbox.accept(seq, b"in")
        session.inbox.pending.popleft()
        session.inbox.handedOut = seq
        session.inbox.processed(seq)
    session.inbox.accept(3, b"received, not processed")
    session.lastSeen = 12.5
    return session


def test_recordOfNumbersQueuedMessages() -> None:
    """A live session's record holds every unconfirmed message in order:
    the in-flight and resent ones with their numbers, the never-sent ones
    with the numbers they will be sent with; the positions confirmed and
    processed (not merely received)."""
    record = recordOf(busySession(), epoch=7)
    assert record == StoredSession(
        TOKEN,
        epoch=7,
        nextSeq=7,
        confirmedUpTo=1,
        processedUpTo=2,
        lastSeen=12.5,
        messages=((2, b"m1"), (3, b"m2"), (4, b"m3"), (5, b"m4"), (6, b"m5")),
    )
    checkRecord(record)


def test_sessionOfPutsEverythingBackForResending() -> None:
    """A session loaded from its record waits to send every stored message
    again, with its number, once the peer's HELLO says what it holds; it
    asks the peer for what it did not process."""
    session = sessionOf(recordOf(busySession()), window=3)
    outbox = session.outbox
    assert (outbox.nextSeq, outbox.ackedUpTo, len(outbox.inflight)) == (7, 1, 0)
    assert [(e.seq, e.payload, e.handle) for e in outbox.queue] == [
        (2, b"m1", None),
        (3, b"m2", None),
        (4, b"m3", None),
        (5, b"m4", None),
        (6, b"m5", None),
    ]
    assert outbox.queuedBytes == 10
    assert session.inbox.nextExpected == 3
    assert session.inbox.processedUpTo == session.inbox.ackedUpTo == 2
    assert session.lastSeen == 12.5
    # The peer holds 1..3: 2 and 3 were processed there; the rest goes out.
    outbox.resume(4)
    assert [e.seq for e in outbox.ack(3)] == [2, 3]
    assert [e.seq for e in outbox.takeSendable(BIG, 2.0, BIG)] == [4, 5, 6]


def test_rejectionsSurviveTheRoundTrip() -> None:
    """The REJECTs sent (or due) are part of the record, and a session
    loaded from it sends them again when its next connection opens (so
    that a REJECT lost in a crash never turns into an ACK); the loaded
    position counts as committed."""
    session = Session(TOKEN)
    inbox = session.inbox
    for seq in (1, 2, 3):
        inbox.accept(seq, b"x")
    inbox.pending.clear()
    inbox.processedUpTo = 1
    inbox.reject(2, "second")
    inbox.takeRejections()
    inbox.reject(3, "third")
    record = recordOf(session)
    assert record.processedUpTo == 3
    assert record.rejections == ((2, "second"), (3, "third"))
    loaded = sessionOf(record).inbox
    assert loaded.committedUpTo == loaded.ackUpTo == 3
    assert loaded.takeRejections(resend=True) == [(2, "second"), (3, "third")]


def test_sessionOfEmptyRecord() -> None:
    """A record without messages gives a session with empty queues."""
    session = sessionOf(StoredSession(TOKEN, nextSeq=4, confirmedUpTo=3))
    assert len(session.outbox) == 0 and session.outbox.nextSeq == 4


records = st.builds(
    lambda confirmed, count, extra, processed, seen, payloads, epoch: StoredSession(
        TOKEN,
        epoch,
        confirmed + extra + count + 1,
        confirmed,
        processed,
        seen,
        tuple(
            (confirmed + extra + 1 + n, payloads[n % len(payloads)] if payloads else b"")
            for n in range(count)
        ),
    ),
    st.integers(0, 10**6),
    st.integers(0, 40),
    st.integers(0, 3),
    st.integers(0, 10**6),
    st.floats(0, 1e10, allow_nan=False),
    st.lists(st.binary(max_size=20), max_size=5),
    st.integers(0, 1000),
)


@given(records)
def test_recordRoundTrip(record: StoredSession) -> None:
    """Any consistent record, made a session and back, is the same record."""
    checkRecord(record)
    assert recordOf(sessionOf(record), record.epoch) == record


@given(
    st.lists(st.binary(max_size=8), max_size=30),
    st.integers(1, 8),
    st.data(),
)
def test_sessionRoundTrip(payloads: list[bytes], window: int, data: st.DataObject) -> None:
    """Any live session, stored and loaded, holds the same unconfirmed
    messages in the same order with the same numbers they have or will
    get, and the same positions; storing it again gives the same record."""
    session = Session(TOKEN, window=window)
    for payload in payloads:
        session.outbox.submit(payload, None)
    sent = session.outbox.takeSendable(BIG, 1.0, BIG)
    if sent:
        session.outbox.ack(data.draw(st.integers(0, sent[-1].seq), label="ack"))
    record = recordOf(session)
    checkRecord(record)
    loaded = sessionOf(record, window=window)
    assert recordOf(loaded) == record
    # What the loaded session sends is what the live one would have sent.
    assert toSend(loaded) == toSend(session) == list(record.messages)


def toSend(session: Session) -> list[tuple[int, bytes]]:
    """Every unconfirmed message ``session`` has sent or will send, in
    order: the in-flight ones, then the queue, taken a window at a time
    (acknowledging each window)."""
    outbox = session.outbox
    out = [(e.seq, e.payload) for e in outbox.inflight]
    while True:
        if outbox.inflight:
            outbox.ack(outbox.inflight[-1].seq)
        sent = outbox.takeSendable(BIG, 2.0, BIG)
        if not sent:
            return out
        out += [(e.seq, e.payload) for e in sent]


def test_recordOfNumberedOutbox() -> None:
    """The record of a session whose messages are numbered when submitted
    (``Outbox.storedUpTo``) holds them with their numbers, sent or not."""
    session = Session(bytes(range(16)))
    outbox = session.outbox
    outbox.storedUpTo = 0
    for payload in (b"a", b"b", b"c"):
        outbox.submit(payload, None)
    outbox.storedUpTo = 1
    outbox.takeSendable(8, 0.0, 100)
    record = recordOf(session, epoch=3)
    checkRecord(record)
    assert record.nextSeq == 4 and record.epoch == 3
    assert record.messages == ((1, b"a"), (2, b"b"), (3, b"c"))


def test_sessionOfMarksTheMessageThatMayRepeat() -> None:
    """A loaded session knows the one message a previous process may have
    processed without committing its position: the one after it. A record
    that never had a token (never connected) marks none."""
    token = bytes(range(16))
    loaded = sessionOf(StoredSession(token, processedUpTo=7))
    assert loaded.inbox.mayRepeat == 8
    assert sessionOf(StoredSession(bytes(16), processedUpTo=0)).inbox.mayRepeat == 0
    assert Session(token).inbox.mayRepeat == 0


def test_commitTimesBuckets() -> None:
    """`CommitTimes` counts a commit in the first bucket whose bound it does
    not exceed (a time equal to a bound counts in it), beyond the last in
    the unbounded one; its statistics are cumulative, as Prometheus counts."""
    assert COMMIT_BUCKETS[0] == 0.00005 and COMMIT_BUCKETS[-1] == 1.0
    times = CommitTimes()
    assert times.statistics() == StoreStatistics()
    for seconds in (0.0, 0.00005, 0.00006, 1.0, 1.5):
        times.observe(seconds)
    figures = times.statistics(3, 7)
    assert (figures.sessions, figures.outboxMessages) == (3, 7)
    assert figures.commits == 5
    assert figures.commitSeconds == pytest.approx(2.50011)
    assert figures.commitBuckets == (2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 5)


@given(st.lists(st.floats(0, 10), max_size=50))
def test_commitTimesCumulative(samples: list[float]) -> None:
    """Whatever the times, the buckets never decrease and the last holds
    every commit."""
    times = CommitTimes()
    for seconds in samples:
        times.observe(seconds)
    buckets = times.statistics().commitBuckets
    assert list(buckets) == sorted(buckets) and buckets[-1] == len(samples)
    assert buckets[0] == sum(1 for t in samples if t <= COMMIT_BUCKETS[0])
