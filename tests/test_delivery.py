"""
Tests for the sans-IO delivery state, ``twisted_alive.core.delivery``: the
outbox (sequence numbers, window, queue, acknowledgements, resume), the
inbox (order, duplicates, gaps, window) and the session token.
"""

from __future__ import annotations

import hmac
import secrets

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from twisted_alive.core.delivery import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_WINDOW,
    Entry,
    Inbox,
    Outbox,
    ProtocolViolation,
    Session,
)
from twisted_alive.core.frames import NO_SESSION
from twisted_alive.core.outcomes import QueueFull

BIG = 1 << 30
"""A payload limit no test message reaches."""


def filled(count: int, window: int = DEFAULT_WINDOW, **kwargs: int) -> Outbox:
    """An outbox holding C{count} queued messages, handles 0..count-1."""
    outbox = Outbox(window, **kwargs)
    for i in range(count):
        outbox.submit(b"m%d" % i, i)
    return outbox


def seqs(entries: list[Entry]) -> list[int]:
    """The sequence numbers of C{entries}."""
    return [e.seq for e in entries]


def handles(entries: list[Entry]) -> list[object]:
    """The handles of C{entries}."""
    return [e.handle for e in entries]


# -- Outbox: construction, queue limits ------------------------------------------------------------


def test_outboxDefaults() -> None:
    """A default outbox has the documented limits and nothing in it."""
    outbox = Outbox()
    assert (outbox.window, outbox.maxQueue, outbox.maxQueueBytes) == (
        DEFAULT_WINDOW,
        DEFAULT_MAX_QUEUE,
        DEFAULT_MAX_QUEUE_BYTES,
    )
    assert len(outbox) == 0
    assert outbox.nextSeq == 1 and outbox.ackedUpTo == 0
    assert outbox.hasRoom()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0,), "window must be at least 1, got 0"),
        ((-3,), "window must be at least 1, got -3"),
        ((1, -1), "queue limits must not be negative"),
        ((1, 10, -1), "queue limits must not be negative"),
    ],
)
def test_outboxConstructorErrors(args: tuple[int, ...], message: str) -> None:
    """Invalid limits are refused with an exact text."""
    with pytest.raises(ValueError) as info:
        Outbox(*args)
    assert str(info.value) == message


def test_submitQueuesWithoutSeq() -> None:
    """A submitted message waits in the queue without a sequence number."""
    outbox = Outbox()
    entry = outbox.submit(b"hello", "h")
    assert entry.seq == 0 and entry.payload == b"hello" and entry.handle == "h"
    assert list(outbox.queue) == [entry]
    assert outbox.queuedBytes == 5
    assert len(outbox) == 1


def test_queueFullByCount() -> None:
    """At maxQueue messages, submit raises QueueFull with an exact text and queues nothing."""
    outbox = filled(3, window=2, maxQueue=3)
    with pytest.raises(QueueFull) as info:
        outbox.submit(b"x", "x")
    assert str(info.value) == (
        "send queue full: 3 messages (6 bytes) waiting behind 0 in flight "
        "(maxQueue=3, maxQueueBytes=67108864)"
    )
    assert len(outbox.queue) == 3 and outbox.queuedBytes == 6
    assert not outbox.hasRoom()


def test_queueFullCountsInflight() -> None:
    """QueueFull says how many are in flight; only the queue counts toward the limit."""
    outbox = filled(2, window=2, maxQueue=2)
    assert seqs(outbox.takeSendable(2, 0.0, BIG)) == [1, 2]
    outbox.submit(b"m2", 2)
    outbox.submit(b"m3", 3)
    with pytest.raises(QueueFull) as info:
        outbox.submit(b"m4", 4)
    assert str(info.value) == (
        "send queue full: 2 messages (4 bytes) waiting behind 2 in flight "
        "(maxQueue=2, maxQueueBytes=67108864)"
    )


def test_queueFullByBytes() -> None:
    """A message that would push the queue past maxQueueBytes is refused."""
    outbox = Outbox(1, maxQueue=100, maxQueueBytes=10)
    outbox.submit(b"123456", 1)
    outbox.submit(b"7890", 2)  # exactly 10 bytes: allowed
    with pytest.raises(QueueFull) as info:
        outbox.submit(b"a", 3)
    assert str(info.value) == (
        "send queue full: 2 messages (10 bytes) waiting behind 0 in flight "
        "(maxQueue=100, maxQueueBytes=10)"
    )
    assert not outbox.hasRoom()


def test_emptyQueueTakesAnyMessage() -> None:
    """An empty queue takes one message even above the byte limit: a sender never blocks forever."""
    outbox = Outbox(1, maxQueue=100, maxQueueBytes=4)
    assert outbox.hasRoom()
    outbox.submit(b"much too large", 1)
    assert outbox.queuedBytes == 14
    with pytest.raises(QueueFull):
        outbox.submit(b"", 2)


def test_hasRoomMatchesSubmitWhenEmpty() -> None:
    """hasRoom() says yes whenever submit() would accept a message, even with zero limits."""
    for outbox in (Outbox(1, maxQueue=0), Outbox(1, maxQueueBytes=0)):
        assert outbox.hasRoom()
        outbox.submit(b"x", 1)
        assert not outbox.hasRoom()


def test_hasRoomFreedByTakeSendable() -> None:
    """Moving messages into the window frees room in the queue."""
    outbox = filled(2, window=5, maxQueue=2)
    assert not outbox.hasRoom()
    outbox.takeSendable(5, 0.0, BIG)
    assert outbox.hasRoom()
    assert outbox.queuedBytes == 0


# -- Outbox: sending -------------------------------------------------------------------------------


def test_takeSendableAssignsSeqs() -> None:
    """Sending gives messages consecutive sequence numbers from 1, in submission order."""
    outbox = filled(3)
    sent = outbox.takeSendable(100, 7.5, BIG)
    assert seqs(sent) == [1, 2, 3]
    assert handles(sent) == [0, 1, 2]
    assert [e.sentAt for e in sent] == [7.5, 7.5, 7.5]
    assert outbox.nextSeq == 4
    assert list(outbox.inflight) == sent
    assert not outbox.queue
    assert len(outbox) == 3


def test_seqsContinueAcrossCalls() -> None:
    """Later sends continue the numbering."""
    outbox = filled(2)
    outbox.takeSendable(100, 0.0, BIG)
    outbox.submit(b"late", "late")
    assert seqs(outbox.takeSendable(100, 1.0, BIG)) == [3]


@pytest.mark.parametrize(
    ("own", "peer", "expected"),
    [(3, 10, 3), (10, 3, 3), (4, 4, 4), (1, 100, 1)],
)
def test_windowIsMinimumOfBoth(own: int, peer: int, expected: int) -> None:
    """No more than min(own window, peer window) messages are ever in flight."""
    outbox = filled(20, window=own)
    assert len(outbox.takeSendable(peer, 0.0, BIG)) == expected
    assert outbox.takeSendable(peer, 0.0, BIG) == []
    assert len(outbox.inflight) == expected
    assert len(outbox.queue) == 20 - expected


def test_windowOpensOnAck() -> None:
    """An ACK frees as many window slots as it confirms."""
    outbox = filled(10, window=3)
    outbox.takeSendable(3, 0.0, BIG)
    outbox.ack(2)
    assert seqs(outbox.takeSendable(3, 0.0, BIG)) == [4, 5]


def test_peerWindowZeroSendsNothing() -> None:
    """Before the peer's HELLO (window 0), nothing is sendable."""
    outbox = filled(2)
    assert outbox.takeSendable(0, 0.0, BIG) == []


def test_tooLarge() -> None:
    """A message above the peer's maximum payload moves to tooLarge without a seq; others go."""
    outbox = Outbox()
    outbox.submit(b"ok", "a")
    outbox.submit(b"x" * 11, "big")
    outbox.submit(b"fine", "b")
    sent = outbox.takeSendable(2, 0.0, 10)
    assert seqs(sent) == [1, 2]
    assert handles(sent) == ["a", "b"]
    assert handles(outbox.tooLarge) == ["big"]
    assert outbox.tooLarge[0].seq == 0
    assert outbox.queuedBytes == 0
    assert len(outbox) == 2  # tooLarge entries are the caller's to fail


def test_tooLargeDoesNotUseWindow() -> None:
    """A too-large message takes no slot of the window."""
    outbox = Outbox(window=1)
    outbox.submit(b"x" * 50, "big")
    outbox.submit(b"y", "small")
    assert handles(outbox.takeSendable(1, 0.0, 10)) == ["small"]


# -- Outbox: acknowledgements ----------------------------------------------------------------------


def test_partialAck() -> None:
    """A cumulative ACK confirms exactly the entries up to its seq, in order."""
    outbox = filled(5)
    outbox.takeSendable(10, 0.0, BIG)
    done = outbox.ack(3)
    assert seqs(done) == [1, 2, 3]
    assert outbox.ackedUpTo == 3
    assert seqs(list(outbox.inflight)) == [4, 5]
    assert seqs(outbox.ack(5)) == [4, 5]
    assert len(outbox) == 0


@pytest.mark.parametrize("stale", [0, 1, 2])
def test_duplicateOrStaleAckIgnored(stale: int) -> None:
    """An ACK not above the last one confirms nothing and is no error."""
    outbox = filled(4)
    outbox.takeSendable(10, 0.0, BIG)
    outbox.ack(2)
    assert outbox.ack(stale) == []
    assert outbox.ackedUpTo == 2
    assert seqs(list(outbox.inflight)) == [3, 4]


def test_ackZeroBeforeAnything() -> None:
    """ACK 0 (nothing processed yet) is harmless on a fresh outbox."""
    assert Outbox().ack(0) == []


@pytest.mark.parametrize(("sent", "acked"), [(0, 1), (3, 4), (3, 100)])
def test_ackBeyondSent(sent: int, acked: int) -> None:
    """An ACK above the highest seq sent is a ProtocolViolation with an exact text."""
    outbox = filled(sent)
    outbox.takeSendable(10, 0.0, BIG)
    with pytest.raises(ProtocolViolation) as info:
        outbox.ack(acked)
    assert str(info.value) == f"ACK for sequence number {acked}, but only {sent} were sent"
    assert outbox.ackedUpTo == 0 and len(outbox.inflight) == sent


def test_ackOfQueuedButUnsentIsViolation() -> None:
    """Queued messages without a seq cannot be acknowledged."""
    outbox = filled(3)
    outbox.takeSendable(1, 0.0, BIG)
    with pytest.raises(ProtocolViolation) as info:
        outbox.ack(2)
    assert str(info.value) == "ACK for sequence number 2, but only 1 were sent"


# -- Outbox: rejections ----------------------------------------------------------------------------


def test_rejectBookkeeping() -> None:
    """A REJECT records its reason; the following ACK still confirms the entry."""
    outbox = filled(3)
    outbox.takeSendable(10, 0.0, BIG)
    outbox.reject(2, "ValueError: bad")
    assert outbox.rejected == {2: "ValueError: bad"}
    assert seqs(outbox.ack(3)) == [1, 2, 3]
    assert outbox.rejected == {2: "ValueError: bad"}  # the caller pops what it reports


@pytest.mark.parametrize("seq", [1, 2])
def test_rejectAlreadyAcknowledgedIgnored(seq: int) -> None:
    """A REJECT for an acknowledged seq is one resent after a reconnect: ignored."""
    outbox = filled(3)
    outbox.takeSendable(10, 0.0, BIG)
    outbox.ack(2)
    outbox.reject(seq, "nope")
    assert outbox.rejected == {}


@pytest.mark.parametrize("seq", [4, 5])
def test_rejectNotAwaitingConfirmation(seq: int) -> None:
    """A REJECT for a never-sent seq is a ProtocolViolation with an exact text."""
    outbox = filled(3)
    outbox.takeSendable(10, 0.0, BIG)
    outbox.ack(2)
    with pytest.raises(ProtocolViolation) as info:
        outbox.reject(seq, "nope")
    assert str(info.value) == (
        f"REJECT for sequence number {seq}, which is not awaiting confirmation"
    )
    assert outbox.rejected == {}


# -- Outbox: resume --------------------------------------------------------------------------------


def test_resumePutsUnreceivedBackInOrder() -> None:
    """resume() puts what the peer lacks back at the head of the queue, same seqs and order."""
    outbox = filled(5)
    sent = outbox.takeSendable(10, 1.0, BIG)
    outbox.submit(b"new", "new")
    outbox.ack(1)
    outbox.resume(3)
    assert seqs(list(outbox.inflight)) == [2]
    assert [e.seq for e in outbox.queue] == [3, 4, 5, 0]
    assert handles(list(outbox.queue)) == [2, 3, 4, "new"]
    assert outbox.queuedBytes == sum(len(e.payload) for e in outbox.queue)
    again = outbox.takeSendable(10, 9.0, BIG)
    assert seqs(again) == [3, 4, 5, 6]
    assert again[:3] == sent[2:]
    assert [e.sentAt for e in again] == [1.0, 1.0, 1.0, 9.0]  # first write time is kept
    assert outbox.redelivered == 3


def test_resumeWithEverythingReceived() -> None:
    """A peer that received everything gets nothing resent; unacked entries stay in flight."""
    outbox = filled(3)
    outbox.takeSendable(10, 0.0, BIG)
    outbox.resume(4)
    assert seqs(list(outbox.inflight)) == [1, 2, 3]
    assert not outbox.queue


def test_resumeFreshSession() -> None:
    """resume(1) on an outbox that never sent anything changes nothing."""
    outbox = filled(2)
    outbox.resume(1)
    assert [e.seq for e in outbox.queue] == [0, 0]


def test_ackCoversEntriesPutBackInQueue() -> None:
    """An ACK may confirm entries that a resume put back in the queue; they leave the queue."""
    outbox = filled(4)
    outbox.takeSendable(10, 0.0, BIG)
    outbox.resume(2)
    done = outbox.ack(3)
    assert seqs(done) == [1, 2, 3]
    assert [e.seq for e in outbox.queue] == [4]
    assert outbox.queuedBytes == len(outbox.queue[0].payload)


def test_resumeBelowAcked() -> None:
    """A next_expected below what was acknowledged is a ProtocolViolation with an exact text."""
    outbox = filled(5)
    outbox.takeSendable(10, 0.0, BIG)
    outbox.ack(3)
    with pytest.raises(ProtocolViolation) as info:
        outbox.resume(3)
    assert str(info.value) == ("HELLO next_expected 3 is below the 3 messages already acknowledged")
    outbox.resume(4)  # exactly what was acknowledged: fine


def test_resumeBeyondSent() -> None:
    """A next_expected beyond what was sent is a ProtocolViolation with an exact text."""
    outbox = filled(5)
    outbox.takeSendable(2, 0.0, BIG)
    with pytest.raises(ProtocolViolation) as info:
        outbox.resume(4)
    assert str(info.value) == "HELLO next_expected 4 is beyond the 2 messages sent"
    outbox.resume(3)  # one past the last sent: fine


# -- Outbox: restart and drain ---------------------------------------------------------------------


def test_restart() -> None:
    """restart() returns sent-but-unconfirmed entries; never-sent ones stay and renumber from 1."""
    outbox = filled(6)
    outbox.takeSendable(4, 0.0, BIG)  # 1..4 sent
    outbox.ack(1)
    outbox.reject(2, "r")
    outbox.resume(4)  # 4 back in the queue, before the never-sent 5th and 6th
    uncertain = outbox.restart()
    assert seqs(uncertain) == [2, 3, 4]
    assert handles(list(outbox.queue)) == [4, 5]
    assert outbox.queuedBytes == sum(len(e.payload) for e in outbox.queue)
    assert not outbox.inflight
    assert outbox.ackedUpTo == 0 and outbox.nextSeq == 1
    assert outbox.rejected == {}
    assert seqs(outbox.takeSendable(10, 0.0, BIG)) == [1, 2]


def test_drain() -> None:
    """drain() removes and returns every unconfirmed entry, in flight first."""
    outbox = filled(4)
    outbox.takeSendable(2, 0.0, BIG)
    entries = outbox.drain()
    assert handles(entries) == [0, 1, 2, 3]
    assert len(outbox) == 0 and outbox.queuedBytes == 0


def test_moveQueueTo() -> None:
    """moveQueueTo() appends every queued entry to the other queue, in order, bytes and all."""
    source = filled(3)
    target = Outbox()
    target.submit(b"first", "first")
    source.moveQueueTo(target)
    assert handles(list(target.queue)) == ["first", 0, 1, 2]
    assert target.queuedBytes == 5 + 6
    assert not source.queue and source.queuedBytes == 0


def test_counters() -> None:
    """sentCount counts first writes, redelivered re-writes, confirmedCount ACKed entries."""
    outbox = filled(4)
    outbox.takeSendable(3, 0.0, BIG)
    outbox.resume(2)
    outbox.takeSendable(3, 0.0, BIG)
    outbox.ack(2)
    outbox.takeSendable(3, 0.0, BIG)
    assert (outbox.sentCount, outbox.redelivered, outbox.confirmedCount) == (4, 2, 2)


# -- Inbox -----------------------------------------------------------------------------------------


def test_inboxAcceptsInOrder() -> None:
    """In-order DATA is queued for the application and advances nextExpected."""
    inbox = Inbox()
    assert inbox.nextExpected == 1
    assert inbox.accept(1, b"a") is True
    assert inbox.accept(2, b"b") is True
    assert list(inbox.pending) == [(1, b"a"), (2, b"b")]
    assert inbox.receivedUpTo == 2 and inbox.nextExpected == 3
    assert inbox.processedUpTo == 0


@pytest.mark.parametrize("seq", [1, 2])
def test_inboxDropsDuplicates(seq: int) -> None:
    """A DATA below nextExpected is a duplicate: dropped and counted, not queued."""
    inbox = Inbox()
    inbox.accept(1, b"a")
    inbox.accept(2, b"b")
    inbox.pending.clear()
    assert inbox.accept(seq, b"again") is False
    assert not inbox.pending
    assert inbox.duplicates == 1
    assert inbox.nextExpected == 3


@pytest.mark.parametrize(("seq", "expected"), [(2, 1), (5, 1)])
def test_inboxGap(seq: int, expected: int) -> None:
    """A DATA above nextExpected is a ProtocolViolation with an exact text."""
    inbox = Inbox()
    with pytest.raises(ProtocolViolation) as info:
        inbox.accept(seq, b"x")
    assert str(info.value) == f"DATA sequence number {seq} arrived, expected {expected}"
    assert inbox.receivedUpTo == 0 and not inbox.pending


def test_inboxGapAfterSome() -> None:
    """The gap text names the seq that was expected."""
    inbox = Inbox()
    inbox.accept(1, b"")
    with pytest.raises(ProtocolViolation) as info:
        inbox.accept(3, b"")
    assert str(info.value) == "DATA sequence number 3 arrived, expected 2"


def test_inboxWindowOverrun() -> None:
    """A DATA more than window beyond what was acknowledged: ProtocolViolation, exact text."""
    inbox = Inbox(window=2)
    inbox.accept(1, b"")
    inbox.accept(2, b"")
    with pytest.raises(ProtocolViolation) as info:
        inbox.accept(3, b"")
    assert str(info.value) == "peer exceeded the window of 2 unacknowledged messages"
    assert inbox.receivedUpTo == 2
    # Processed is not enough: the peer can only know of an ACK it was sent.
    inbox.processedUpTo = 1
    with pytest.raises(ProtocolViolation):
        inbox.accept(3, b"")
    inbox.ackedUpTo = 1
    assert inbox.accept(3, b"") is True


def test_inboxReject() -> None:
    """reject() records the failure and counts the message as processed."""
    inbox = Inbox()
    inbox.accept(1, b"a")
    inbox.accept(2, b"b")
    inbox.pending.clear()
    inbox.processedUpTo = 1
    inbox.reject(2, "KeyError: 'x'")
    assert inbox.rejections == [(2, "KeyError: 'x'")]
    assert inbox.processedUpTo == 2


# -- Session ---------------------------------------------------------------------------------------


def test_sessionDefaults() -> None:
    """A default session has no token and fresh halves with the given limits."""
    session = Session(window=7, maxQueue=8, maxQueueBytes=9)
    assert session.token == NO_SESSION
    assert session.outbox.window == 7 and session.inbox.window == 7
    assert session.outbox.maxQueue == 8 and session.outbox.maxQueueBytes == 9
    assert session.inbox.handedOut == 0 and session.resumes == 0


def test_newTokenIsRandom16Bytes() -> None:
    """Tokens are 16 bytes and differ from call to call."""
    tokens = {Session.newToken() for _ in range(64)}
    assert len(tokens) == 64
    assert all(type(t) is bytes and len(t) == 16 for t in tokens)
    assert NO_SESSION not in tokens


def test_newTokenUsesSecrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tokens come from the secrets module (the OS CSPRNG), 16 bytes asked."""
    asked: list[int] = []

    def fake(n: int) -> bytes:
        asked.append(n)
        return b"\x01" * n

    monkeypatch.setattr(secrets, "token_bytes", fake)
    assert Session.newToken() == b"\x01" * 16
    assert asked == [16]


def test_matches() -> None:
    """matches() is true for the same token only: not another, not a prefix, not a longer one."""
    token = bytes(range(16))
    session = Session(token)
    assert session.matches(bytes(range(16)))
    assert not session.matches(bytes(range(1, 17)))
    assert not session.matches(NO_SESSION)
    assert not session.matches(token[:15])
    assert not session.matches(token + b"\x00")
    assert not session.matches(b"")
    assert Session().matches(NO_SESSION)


def test_matchesIsConstantTime(monkeypatch: pytest.MonkeyPatch) -> None:
    """matches() compares with hmac.compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    token = b"t" * 16
    assert Session(token).matches(token)
    assert calls == [(token, token)]


def test_sessionRestart() -> None:
    """Session.restart() takes the new token, a fresh inbox, and returns the uncertain entries."""
    session = Session(b"a" * 16, window=4)
    session.outbox.submit(b"x", 1)
    session.outbox.submit(b"y", 2)
    session.outbox.takeSendable(1, 0.0, BIG)
    session.inbox.accept(1, b"in")
    uncertain = session.restart(b"b" * 16)
    assert session.token == b"b" * 16
    assert handles(uncertain) == [1]
    assert session.inbox.nextExpected == 1 and not session.inbox.pending
    assert session.inbox.window == 4
    assert handles(list(session.outbox.queue)) == [2]
    assert session.restart() == [] and session.token == NO_SESSION


# -- Property: random interleavings keep the outbox's invariants -----------------------------------


class OutboxMachine(RuleBasedStateMachine):
    """
    Random interleavings of submit, send, ACK, REJECT and resume against a
    model of a well-behaved peer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.window = 4
        self.outbox = Outbox(self.window, maxQueue=8, maxQueueBytes=BIG)
        self.submitted: list[int] = []
        self.confirmed: list[int] = []
        self.counter = 0
        # The peer's view: DATA it received (next_expected - 1).
        self.received = 0

    @rule(size=st.integers(min_value=0, max_value=5))
    def submit(self, size: int) -> None:
        """Queue a message, or see QueueFull at the limit."""
        handle = self.counter
        if len(self.outbox.queue) >= self.outbox.maxQueue:
            with pytest.raises(QueueFull):
                self.outbox.submit(b"p" * size, handle)
            return
        self.counter += 1
        self.outbox.submit(b"p" * size, handle)
        self.submitted.append(handle)

    @rule(peerWindow=st.integers(min_value=0, max_value=6), delivered=st.booleans())
    def send(self, peerWindow: int, delivered: bool) -> None:
        """Send what the windows allow; the peer receives it or the link drops it."""
        before = len(self.outbox.inflight)
        sent = self.outbox.takeSendable(peerWindow, 0.0, BIG)
        assert before + len(sent) <= max(before, min(self.window, peerWindow))
        if sent and delivered and sent[0].seq == self.received + 1:
            self.received = sent[-1].seq

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        """The peer acknowledges part of what it received."""
        upTo = data.draw(st.integers(min_value=0, max_value=self.received))
        before = self.outbox.ackedUpTo
        done = self.outbox.ack(upTo)
        if upTo > before:
            assert seqs(done) == list(range(before + 1, upTo + 1))
        else:
            assert done == []
        for entry in done:
            assert entry.handle not in self.confirmed
            self.confirmed.append(entry.handle)

    @precondition(lambda self: self.outbox.ackedUpTo < self.outbox.nextSeq - 1)
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        """The peer rejects a message awaiting confirmation."""
        seq = data.draw(
            st.integers(min_value=self.outbox.ackedUpTo + 1, max_value=self.outbox.nextSeq - 1)
        )
        self.outbox.reject(seq, "bad")
        assert self.outbox.rejected[seq] == "bad"

    @rule()
    def resume(self) -> None:
        """A new connection: the peer's HELLO says what it received."""
        self.outbox.resume(self.received + 1)

    @rule(data=st.data())
    def badAck(self, data: st.DataObject) -> None:
        """An ACK beyond what was sent is refused and changes nothing."""
        upTo = data.draw(
            st.integers(min_value=self.outbox.nextSeq, max_value=self.outbox.nextSeq + 3)
        )
        state = (self.outbox.ackedUpTo, len(self.outbox.inflight), len(self.outbox.queue))
        with pytest.raises(ProtocolViolation):
            self.outbox.ack(upTo)
        assert state == (self.outbox.ackedUpTo, len(self.outbox.inflight), len(self.outbox.queue))

    @invariant()
    def seqsContiguous(self) -> None:
        """Unconfirmed seqs run contiguously from ackedUpTo + 1 to nextSeq - 1, in order."""
        outbox = self.outbox
        numbered = [e.seq for e in outbox.inflight] + [e.seq for e in outbox.queue if e.seq]
        assert numbered == list(range(outbox.ackedUpTo + 1, outbox.nextSeq))
        # Never-sent entries come after every numbered one.
        queueSeqs = [e.seq for e in outbox.queue]
        assert queueSeqs == sorted(queueSeqs, key=lambda s: (s == 0, s))

    @invariant()
    def nothingLost(self) -> None:
        """Every submitted message is either confirmed, once, or still in the outbox, in order."""
        outbox = self.outbox
        remaining = handles(list(outbox.inflight)) + handles(list(outbox.queue))
        assert self.confirmed + remaining == self.submitted
        assert len(outbox) == len(self.submitted) - len(self.confirmed)

    @invariant()
    def bookkeeping(self) -> None:
        """The byte count matches the queue, and the window is never exceeded."""
        outbox = self.outbox
        assert outbox.queuedBytes == sum(len(e.payload) for e in outbox.queue)
        assert len(outbox.inflight) <= self.window
        assert outbox.ackedUpTo <= self.received < outbox.nextSeq
        assert outbox.sentCount == outbox.nextSeq - 1
        assert outbox.confirmedCount == len(self.confirmed)


OutboxMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)
TestOutboxInterleavings = OutboxMachine.TestCase
TestOutboxInterleavings.pytestmark = [pytest.mark.slow]  # type: ignore[attr-defined]
