"""
The rules of ``twisted_alive.core.connection`` on their own: the hand-off of
received messages, the outcomes of sent ones, every way a connection
closes, and the checks on a peer that stops reading. Pure sans-IO: time is
passed in, bytes are moved by hand and decoded with `FrameDecoder`.
"""

from __future__ import annotations

import pytest

from twisted_alive.core import connection as _connection
from twisted_alive.core.connection import (
    ABORT_GRACE,
    CloseNow,
    Confirmed,
    Connection,
    Ending,
    Event,
    GoodbyeReceived,
    HelloReceived,
    Opened,
    PeerNotReading,
    Rejected,
    Role,
    SessionUnknown,
    Settings,
    Stalled,
    State,
    TooLarge,
    Violation,
    describeBytes,
    describeSize,
    sharedSettings,
)
from twisted_alive.core.delivery import Entry, Session
from twisted_alive.core.frames import (
    DATA_OVERHEAD,
    HELLO_ASSIGNED,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    Frame,
    FrameDecoder,
    Goodbye,
    GoodbyeCode,
    Hello,
    Ping,
    Pong,
    Reject,
    encode,
    encodeData,
)
from twisted_alive.core.reasons import Reason

SETTINGS = Settings(interval=1.0, misses=3)
TOKEN = bytes(range(0x60, 0x70))
LOCAL = Ending(Reason.LOCAL_CLOSE, "closed by this side (GOODBYE NORMAL)")
FIN = Ending(Reason.PEER_CLOSED, "peer closed the connection without GOODBYE")


def decode(data: bytes) -> list[Frame]:
    """The frames in ``data``, which must hold whole frames only."""
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    assert decoder.buffered == 0
    return frames


def hello(session: bytes = NO_SESSION, flags: int = 0, window: int = 1024) -> bytes:
    """An encoded HELLO from a peer with a 1 s interval."""
    return encode(Hello(PROTOCOL_VERSION, flags, 1.0, 65536, window, 1, session, 7))


def pair(settingsA: Settings = SETTINGS, settingsB: Settings = SETTINGS) -> tuple[Connection, ...]:
    """Two PEER connections after the HELLO exchange, with no output or
    events left."""
    a = Connection(settingsA, Role.PEER, 0.0, nonce=1)
    b = Connection(settingsB, Role.PEER, 0.0, nonce=3, phase=0.5)
    b.receiveData(a.dataToSend(0.0), 0.0)
    a.receiveData(b.dataToSend(0.0), 0.0)
    assert a.takeEvents() == [Opened(False)] and b.takeEvents() == [Opened(False)]
    assert a.state is State.OPEN and b.state is State.OPEN
    return a, b


def move(src: Connection, dst: Connection, now: float = 0.0) -> list[Frame]:
    """Hand what ``src`` has to send to ``dst``; the frames moved."""
    data = src.dataToSend(now)
    dst.receiveData(data, now)
    return decode(data)


def drain(conn: Connection) -> list[Event]:
    """Every event ``nextEvent`` hands out now, without answering messages."""
    out: list[Event] = []
    while (event := conn.nextEvent()) is not None:
        out.append(event)
    return out


def server(session: bytes = NO_SESSION) -> Connection:
    """A SERVER connection that received a client's HELLO (events taken)."""
    conn = Connection(SETTINGS, Role.SERVER, 0.0)
    conn.receiveData(hello(session), 0.0)
    assert conn.takeEvents() == [HelloReceived(decode(hello(session))[0])]  # type: ignore[arg-type]
    return conn


# -- hand-off ------------------------------------------------------------------------------------


def test_handOffOrderOneAtATime() -> None:
    """Queued events come before received messages; a message is handed out
    only after the one before it was answered; the ACK covers both."""
    a, b = pair()
    a.send(b"one", "h1", 0.0)
    a.send(b"two", "h2", 0.0)
    a.sendGoodbye(GoodbyeCode.NORMAL, "done")
    assert move(a, b) == [Data(1, b"one"), Data(2, b"two"), Goodbye(GoodbyeCode.NORMAL, "done")]
    assert b.nextEvent() == GoodbyeReceived(GoodbyeCode.NORMAL, "done")
    assert b.handingOut
    assert b.nextEvent() == Data(1, b"one")
    assert not b.handingOut
    assert b.nextEvent() is None
    assert b.nextEvent() is None
    b.messageProcessed(1)
    assert b.nextEvent() == Data(2, b"two")
    assert b.nextEvent() is None
    b.messageProcessed(2)
    ending = Ending(Reason.CLEAN_CLOSE, "peer said GOODBYE NORMAL: done", GoodbyeCode.NORMAL)
    assert b.nextEvent() == CloseNow(False, ending)
    assert b.nextEvent() is None
    assert decode(b.dataToSend(0.0)) == [Ack(2)]


def test_takeEventsLeavesMessages() -> None:
    """takeEvents takes queued events only: received messages stay pending
    for nextEvent."""
    a, b = pair()
    a.send(b"m", "h", 0.0)
    a.sendGoodbye()
    move(a, b)
    assert b.takeEvents() == [GoodbyeReceived(GoodbyeCode.NORMAL, "")]
    assert list(b.session.inbox.pending) == [Data(1, b"m")]
    assert b.nextEvent() == Data(1, b"m")


def test_messageFailedSendsRejectThenAck() -> None:
    """A failed message is answered with a REJECT (text cut to 1,000
    characters) before the ACK; the sender reports Rejected for its handle."""
    a, b = pair()
    a.send(b"m", "h", 0.0)
    move(a, b)
    assert b.nextEvent() == Data(1, b"m")
    b.messageFailed(1, "x" * 1500)
    assert move(b, a) == [Reject(1, "x" * 1000), Ack(1)]
    assert a.takeEvents() == [Rejected("h", "peer application failed on message 1: " + "x" * 1000)]


def test_answerForReplacedSession() -> None:
    """After Session.restart, the answer to a message of the old session does
    not count (no ACK) but frees the hand-off for the new session's first
    message."""
    session = SETTINGS.newSession()
    first = Connection(SETTINGS, Role.PEER, 0.0, session=session, nonce=1)
    other = Connection(SETTINGS, Role.PEER, 0.0, nonce=3)
    move(first, other)
    move(other, first)
    other.send(b"old", "h", 0.0)
    move(other, first)
    first.takeEvents()
    assert first.nextEvent() == Data(1, b"old")
    first.lost()
    session.restart()
    assert session.inbox.handedOut == -1
    second = Connection(SETTINGS, Role.PEER, 1.0, session=session, nonce=5)
    fresh = Connection(SETTINGS, Role.PEER, 1.0, nonce=9)
    move(second, fresh, 1.0)
    move(fresh, second, 1.0)
    assert second.takeEvents() == [Opened(False)]
    fresh.send(b"new", "n", 1.0)
    move(fresh, second, 1.0)
    assert second.nextEvent() is None
    second.messageProcessed(1)
    assert (session.inbox.handedOut, session.inbox.processedUpTo) == (0, 0)
    assert second.dataToSend(1.0) == b""
    assert second.nextEvent() == Data(1, b"new")
    second.messageProcessed(1)
    assert decode(second.dataToSend(1.0)) == [Ack(1)]


def test_failedAnswerForReplacedSession() -> None:
    """A failure reported for a message of a replaced session sends no
    REJECT and frees the hand-off."""
    session = Session()
    session.inbox.handedOut = 4
    session.restart(TOKEN)
    assert session.token == TOKEN and session.inbox.handedOut == -1
    assert session.inbox.failed(4, "boom") is False
    assert session.inbox.handedOut == 0 and session.inbox.rejections == []


# -- outcomes ------------------------------------------------------------------------------------


def test_batchOutcomesWithRejectedMember() -> None:
    """An ACK over a batch with a rejected member, a rejected single and a
    confirmed single gives one Rejected per handle and one Confirmed."""
    a, b = pair()
    a.sendMany([b"b1", b"b2", b"b3"], "batch", 0.0)
    a.send(b"s4", "single", 0.0)
    a.send(b"s5", "ok", 0.0)
    a.send(b"s6", None, 0.0)
    move(a, b)
    for seq in (1, 2, 3, 4, 5, 6):
        assert b.nextEvent() is not None
        if seq in (2, 4, 6):
            b.messageFailed(seq, f"bad {seq}")
        else:
            b.messageProcessed(seq)
    frames = move(b, a)
    assert frames == [Reject(2, "bad 2"), Reject(4, "bad 4"), Reject(6, "bad 6"), Ack(6)]
    events = a.takeEvents()
    assert events[:2] == [
        Rejected("batch", "peer application failed on message 2 (1 of the 3 sent together): bad 2"),
        Rejected("single", "peer application failed on message 4: bad 4"),
    ]
    assert len(events) == 3 and type(events[2]) is Confirmed
    assert [(e.seq, e.handle) for e in events[2].entries] == [(5, "ok")]
    assert a.session.outbox.rejected == {}


def test_batchOutcomesRejectedWithoutHandle() -> None:
    """Rejected members of a batch without a handle give no event; the
    batch's other messages give none either."""
    a, b = pair()
    a.sendMany([b"b1", b"b2"], None, 0.0)
    move(a, b)
    b.nextEvent()
    b.messageFailed(1, "no")
    b.nextEvent()
    b.messageProcessed(2)
    assert move(b, a) == [Reject(1, "no"), Ack(2)]
    assert a.takeEvents() == []


def test_batchConfirmedOnceByLast() -> None:
    """A batch confirmed without rejections appears once, as its last entry."""
    a, b = pair()
    a.sendMany([b"b1", b"b2"], "batch", 0.0)
    a.send(b"s", "single", 0.0)
    move(a, b)
    for seq in (1, 2, 3):
        b.nextEvent()
        b.messageProcessed(seq)
    move(b, a)
    (event,) = a.takeEvents()
    assert type(event) is Confirmed
    assert [(e.seq, e.handle, e.batch) for e in event.entries] == [
        (2, "batch", 2),
        (3, "single", 1),
    ]


def test_tooLargeForBatch() -> None:
    """A batch with a message larger than the peer accepts waits in the
    queue; pumping fails its members: TooLarge for the handle, maybe
    processed for the last since others went out."""
    a, b = pair(SETTINGS, Settings(interval=1.0, misses=3, maxFrameSize=64))
    big = b"x" * 60
    a.sendMany([b"ok", big], "batch", 0.0)
    text = "message of 60 bytes exceeds the peer's maximum of 55 bytes"
    assert a.takeEvents() == [TooLarge("batch", text, True)]
    assert decode(a.dataToSend(0.0)) == [Data(1, b"ok")]
    a.send(big, "alone", 0.0)
    a.send(big, None, 0.0)
    assert a.takeEvents() == [TooLarge("alone", text, False)]


# -- closing: this side --------------------------------------------------------------------------


def test_localCloseWaitsForQueueThenAcks() -> None:
    """close() sends what is queued, then GOODBYE, waits for the ACKs, then
    CloseNow; a flush that outlasts ABORT_GRACE ends in an abort."""
    a, b = pair(SETTINGS, Settings(interval=1.0, misses=3, window=1))
    a.send(b"m1", "h1", 0.0)
    a.send(b"m2", "h2", 0.0)
    a.close(GoodbyeCode.NORMAL, "bye", now=1.0)
    assert a.ending == LOCAL
    assert a.refusal() == (True, "called after close()")
    assert a.nextEvent() is None
    assert move(a, b, 1.0) == [Data(1, b"m1")]
    assert b.nextEvent() == Data(1, b"m1")
    b.messageProcessed(1)
    move(b, a, 1.0)
    events = a.takeEvents()
    assert [type(e) for e in events] == [Confirmed]
    assert move(a, b, 1.0) == [Data(2, b"m2"), Goodbye(GoodbyeCode.NORMAL, "bye")]
    assert a.state is State.CLOSING
    a.close()
    assert a.takeEvents() == []
    assert b.nextEvent() == GoodbyeReceived(GoodbyeCode.NORMAL, "bye")
    assert b.nextEvent() == Data(2, b"m2")
    b.messageProcessed(2)
    assert b.nextEvent() == CloseNow(
        False, Ending(Reason.CLEAN_CLOSE, "peer said GOODBYE NORMAL: bye", GoodbyeCode.NORMAL)
    )
    move(b, a, 2.0)
    events = a.takeEvents()
    assert [type(e) for e in events] == [Confirmed, CloseNow]
    assert events[1] == CloseNow(False, LOCAL)
    assert a.nextWake() == 2.0 + ABORT_GRACE
    a.handleTimer(3.0, 3.0)
    assert a.takeEvents() == []
    a.handleTimer(2.0 + ABORT_GRACE, 2.0 + ABORT_GRACE)
    assert a.takeEvents() == [CloseNow(True, LOCAL)]
    assert a.nextWake() == float("inf")


def test_localCloseWithNothingToWaitFor() -> None:
    """close() with nothing queued or in flight sends GOODBYE and CloseNow at once."""
    a, b = pair()
    a.close(GoodbyeCode.GO_AWAY, "", now=0.5)
    ending = Ending(Reason.LOCAL_CLOSE, "closed by this side (GOODBYE GO_AWAY)")
    assert a.takeEvents() == [CloseNow(False, ending)]
    assert decode(a.dataToSend(0.5)) == [Goodbye(GoodbyeCode.GO_AWAY, "")]
    assert a.refusal() == (True, "called after close()")


def test_localCloseWaitsForHandOff() -> None:
    """close() while a received message is being processed waits for its
    answer; its ACK goes out with the GOODBYE, before CloseNow."""
    a, b = pair()
    b.send(b"m", "h", 0.0)
    move(b, a)
    assert a.nextEvent() == Data(1, b"m")
    a.close(now=0.0)
    assert a.nextEvent() is None
    a.messageProcessed(1)
    assert a.nextEvent() == CloseNow(False, LOCAL)
    assert decode(a.dataToSend(0.0)) == [Goodbye(GoodbyeCode.NORMAL, ""), Ack(1)]


def test_localCloseBeforeHello() -> None:
    """close() during the handshake with a message queued waits to send it;
    the close deadline then sends GOODBYE and closes."""
    settings = Settings(interval=1.0, misses=3, closeTimeout=0.25)
    a = Connection(settings, Role.PEER, 0.0, nonce=1)
    a.send(b"m", "h", 0.0)
    a.close(now=0.0)
    assert a.takeEvents() == []
    assert a.nextWake() == 0.25
    assert a.wakeMoved
    a.handleTimer(0.25, 0.25)
    assert a.takeEvents() == [CloseNow(False, LOCAL)]
    frames = decode(a.dataToSend(0.25))
    assert [type(f) for f in frames] == [Hello, Goodbye]
    assert a.state is State.CLOSING


def test_closeDeadlineWhileWaitingForAcks() -> None:
    """An unacknowledged message holds the close until closeTimeout passes."""
    a, b = pair(Settings(interval=1.0, misses=3, closeTimeout=0.5))
    a.send(b"m", "h", 0.0)
    a.close(now=0.2)
    assert move(a, b, 0.2) == [Data(1, b"m"), Goodbye(GoodbyeCode.NORMAL, "")]
    assert a.takeEvents() == []
    assert a.nextWake() == 0.7
    a.handleTimer(0.7, 0.7)
    assert a.takeEvents() == [CloseNow(False, LOCAL)]
    assert a.dataToSend(0.7) == b""


def test_closeAfterCloseNowDoesNothing() -> None:
    """close() after an abort neither changes the ending nor queues events."""
    a, _ = pair()
    a.abort("gone")
    a.takeEvents()
    a.close(now=1.0)
    assert a.takeEvents() == []
    assert a.ending == Ending(Reason.LOCAL_CLOSE, "gone")


# -- closing: the peer ---------------------------------------------------------------------------


def test_peerGoodbyeWaitsForInflightAcks() -> None:
    """After the peer's GOODBYE, this side waits for the ACK of what it sent
    (the peer still processes it), then closes."""
    a, b = pair()
    a.send(b"m", "h", 0.0)
    data = a.dataToSend(0.0)
    b.sendGoodbye(GoodbyeCode.NORMAL, "")
    move(b, a)
    assert drain(a) == [GoodbyeReceived(GoodbyeCode.NORMAL, "")]
    assert a.refusal() == (False, "connection is closing")
    assert a.nextWake() <= 10.0
    b.receiveData(data, 0.0)
    assert b.state is State.CLOSING
    assert b.nextEvent() == Data(1, b"m")
    b.messageProcessed(1)
    assert move(b, a) == [Ack(1)]
    events = a.takeEvents()
    ending = Ending(Reason.CLEAN_CLOSE, "peer said GOODBYE NORMAL", GoodbyeCode.NORMAL)
    assert [type(e) for e in events] == [Confirmed, CloseNow]
    assert events[1] == CloseNow(False, ending)


def test_peerGoodbyeThenFinClosesDespiteInflight() -> None:
    """The peer's FIN after its GOODBYE ends the wait for ACKs; the ending
    stays the clean close."""
    a, b = pair()
    a.send(b"m", "h", 0.0)
    b.sendGoodbye(GoodbyeCode.NORMAL, "x")
    move(b, a)
    a.takeEvents()
    a.readClosed(1.0)
    ending = Ending(Reason.CLEAN_CLOSE, "peer said GOODBYE NORMAL: x", GoodbyeCode.NORMAL)
    assert a.takeEvents() == [CloseNow(False, ending)]


def test_peerGoodbyeCloseDeadline() -> None:
    """Without the ACKs, the peer's GOODBYE wait ends at closeTimeout."""
    a, b = pair(Settings(interval=1.0, misses=3, closeTimeout=0.5))
    a.send(b"m", "h", 0.0)
    b.sendGoodbye()
    move(b, a, 0.1)
    a.takeEvents()
    assert a.nextWake() == pytest.approx(0.6)
    a.handleTimer(0.6, 0.6)
    ending = Ending(Reason.CLEAN_CLOSE, "peer said GOODBYE NORMAL", GoodbyeCode.NORMAL)
    assert a.takeEvents() == [CloseNow(False, ending)]


def test_finHandsOutWhatArrived() -> None:
    """A FIN without GOODBYE: what arrived is handed out and acknowledged,
    then CloseNow with PEER_CLOSED, even with messages in flight."""
    a, b = pair()
    b.send(b"m", "h", 0.0)
    a.send(b"out", "o", 0.0)
    move(b, a)
    a.readClosed(0.5)
    assert a.ending == FIN
    assert a.refusal() == (False, "connection is closing")
    assert a.nextEvent() == Data(1, b"m")
    assert a.nextEvent() is None
    a.messageProcessed(1)
    assert a.nextEvent() == CloseNow(False, FIN)
    assert decode(a.dataToSend(0.5)) == [Data(1, b"out"), Ack(1)]


def test_finAfterLocalClose() -> None:
    """A FIN while this side waits for ACKs after its own close closes now;
    the ending stays the local close."""
    a, b = pair()
    a.send(b"m", "h", 0.0)
    a.close(now=0.0)
    a.dataToSend(0.0)
    assert a.takeEvents() == []
    a.readClosed(0.1)
    assert a.takeEvents() == [CloseNow(False, LOCAL)]


def test_peerGoodbyeDuringLocalClose() -> None:
    """The peer's GOODBYE while this side waits for its queue: the queue no
    longer holds the close, the messages in flight do, until the peer's FIN."""
    a, b = pair(SETTINGS, Settings(interval=1.0, misses=3, window=1))
    a.send(b"m1", "h1", 0.0)
    a.send(b"m2", "h2", 0.0)
    a.close(now=0.0)
    assert a.takeEvents() == []
    b.sendGoodbye()
    move(b, a)
    assert drain(a) == [GoodbyeReceived(GoodbyeCode.NORMAL, "")]
    a.readClosed(0.5)
    assert a.takeEvents() == [CloseNow(False, LOCAL)]


# -- abort, loss, endings ------------------------------------------------------------------------


def test_abortEndsAtOnce() -> None:
    """abort() gives one CloseNow(abort) with its reason; a second abort adds
    nothing; the first cause stays; pending messages are no longer handed
    out and no wake is wanted."""
    a, b = pair()
    b.send(b"m", "h", 0.0)
    move(b, a)
    a.abort("give up", Reason.TIMEOUT)
    a.abort("again")
    a.writeFailed("reset")
    ending = Ending(Reason.TIMEOUT, "give up")
    assert drain(a) == [CloseNow(True, ending)]
    assert a.ending == ending
    assert a.nextWake() == float("inf")
    assert a.refusal() == (False, "connection is closing")
    a.handleTimer(100.0, 100.0)
    assert a.takeEvents() == []


def test_abortAfterOrderlyCloseNow() -> None:
    """abort() after an orderly CloseNow keeps that ending and cancels the
    grace deadline."""
    a, _ = pair()
    a.close(now=0.0)
    assert a.takeEvents() == [CloseNow(False, LOCAL)]
    a.abort("late")
    assert a.takeEvents() == [CloseNow(True, LOCAL)]
    assert a.nextWake() == float("inf")


def test_writeFailedRecordsReset() -> None:
    """writeFailed() records RESET as the ending, without an event; a later
    FIN does not replace it."""
    a, _ = pair()
    a.writeFailed("Connection reset by peer")
    assert a.takeEvents() == []
    a.readClosed(1.0)
    ending = Ending(Reason.RESET, "Connection reset by peer")
    assert a.ending == ending
    assert a.takeEvents() == [CloseNow(False, ending)]


def test_lostStopsEverything() -> None:
    """lost(): no message is handed out, no close starts, no wake is wanted."""
    a, b = pair()
    b.send(b"m", "h", 0.0)
    move(b, a)
    a.lost()
    assert a.nextEvent() is None
    assert not a.handingOut
    assert a.nextWake() == float("inf")
    assert a.refusal() == (False, "connection is closing")
    a.readClosed(1.0)
    assert a.takeEvents() == []
    assert a.ending == FIN


def test_firstCauseWins() -> None:
    """The peer's GOODBYE, then a local close: the ending is the peer's."""
    a, b = pair()
    b.sendGoodbye(GoodbyeCode.PROTOCOL_ERROR, "you")
    move(b, a)
    a.close(now=0.0)
    ending = Ending(
        Reason.PROTOCOL_ERROR, "peer said GOODBYE PROTOCOL_ERROR: you", GoodbyeCode.PROTOCOL_ERROR
    )
    assert a.ending == ending
    assert drain(a) == [GoodbyeReceived(GoodbyeCode.PROTOCOL_ERROR, "you"), CloseNow(False, ending)]


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("nothing", None),
        ("close", (True, "called after close()")),
        ("goodbye", (False, "connection is closing")),
        ("fin", (False, "connection is closing")),
        ("abort", (False, "connection is closing")),
        ("lost", (False, "connection is closing")),
    ],
)
def test_refusal(how: str, expected: tuple[bool, str] | None) -> None:
    """refusal() says whether a message may be sent, and why not."""
    a, b = pair()
    if how == "close":
        a.close(now=0.0)
    elif how == "goodbye":
        b.sendGoodbye()
        move(b, a)
    elif how == "fin":
        a.readClosed(0.0)
    elif how == "abort":
        a.abort("x")
    elif how == "lost":
        a.lost()
    assert a.refusal() == expected


def test_refusalDuringHandshake() -> None:
    """A connection still in the handshake accepts messages (they wait)."""
    assert Connection(SETTINGS, Role.PEER, 0.0).refusal() is None


# -- server and client sessions ------------------------------------------------------------------


def test_helloNotReportedWhileClosing() -> None:
    """A server closed before the client's HELLO reports no HelloReceived,
    and a late acceptSession does nothing."""
    conn = Connection(SETTINGS, Role.SERVER, 0.0)
    conn.close(now=0.0)
    assert conn.takeEvents() == [CloseNow(False, LOCAL)]
    assert decode(conn.dataToSend(0.0)) == [Goodbye(GoodbyeCode.NORMAL, "")]
    conn.receiveData(hello(), 0.1)
    assert conn.takeEvents() == []
    session = SETTINGS.newSession(TOKEN)
    conn.acceptSession(session, False, 0.1)
    assert conn.session is not session
    assert conn.dataToSend(0.1) == b""


def test_refusedSessionCloses() -> None:
    """refuseSession: GOODBYE SESSION_UNKNOWN, the frames held behind the
    HELLO dropped, then CloseNow."""
    conn = Connection(SETTINGS, Role.SERVER, 0.0)
    conn.receiveData(hello(TOKEN) + encodeData(1, b"m"), 0.0)
    assert [type(e) for e in conn.takeEvents()] == [HelloReceived]
    conn.receiveData(encodeData(2, b"n"), 0.1)
    conn.refuseSession("unknown")
    ending = Ending(Reason.LOCAL_CLOSE, "refused: unknown")
    assert drain(conn) == [CloseNow(False, ending)]
    assert decode(conn.dataToSend(0.1)) == [Goodbye(GoodbyeCode.SESSION_UNKNOWN, "unknown")]
    assert conn.state is State.FAILED


def test_acceptedSessionRunsHeldFrames() -> None:
    """Frames that followed the client's HELLO (before and after it arrived)
    run once the session is accepted, in order; a PING among them is
    answered."""
    conn = server()
    conn.receiveData(encodeData(1, b"m") + encode(Ping(5)), 0.1)
    conn.receiveData(encodeData(2, b"n"), 0.2)
    session = SETTINGS.newSession(TOKEN)
    conn.acceptSession(session, False, 0.3)
    assert conn.takeEvents() == [Opened(False)]
    assert list(session.inbox.pending) == [Data(1, b"m"), Data(2, b"n")]
    frames = decode(conn.dataToSend(0.3))
    assert [type(f) for f in frames] == [Hello, Pong]
    assert frames[0].flags == HELLO_ASSIGNED  # type: ignore[union-attr]


def test_clientUnknownSessionClosesAfterHandOff() -> None:
    """A client whose session the server does not resume: SessionUnknown, then
    CloseNow once nothing is left to hand out."""
    session = SETTINGS.newSession(TOKEN)
    conn = Connection(SETTINGS, Role.CLIENT, 0.0, session=session, nonce=1)
    conn.dataToSend(0.0)
    other = bytes(range(16))
    conn.receiveData(hello(other, HELLO_ASSIGNED), 0.0)
    detail = "peer did not resume the session (it keeps no sessions)"
    ending = Ending(Reason.LOCAL_CLOSE, detail)
    assert drain(conn) == [SessionUnknown(detail), CloseNow(False, ending)]


def test_clientGoodbyeSessionUnknown() -> None:
    """A server's GOODBYE SESSION_UNKNOWN during the handshake: the client
    reports it, then SessionUnknown, then closes."""
    conn = Connection(SETTINGS, Role.CLIENT, 0.0, session=SETTINGS.newSession(TOKEN))
    conn.receiveData(encode(Goodbye(GoodbyeCode.SESSION_UNKNOWN, "expired")), 0.0)
    ending = Ending(
        Reason.CLEAN_CLOSE,
        "peer said GOODBYE SESSION_UNKNOWN: expired",
        GoodbyeCode.SESSION_UNKNOWN,
    )
    assert drain(conn) == [
        GoodbyeReceived(GoodbyeCode.SESSION_UNKNOWN, "expired"),
        SessionUnknown("peer does not know the session: expired"),
        CloseNow(False, ending),
    ]


# -- violations ----------------------------------------------------------------------------------


def test_violationHandsOutEarlierMessagesThenAckGoodbyeClose() -> None:
    """Messages before a bad frame are handed out while each is answered at
    once (as the adapter does for a synchronous messageReceived); then
    CloseNow; the ACK, then the GOODBYE, go out."""
    a, b = pair()
    detail = "DATA sequence number 5 arrived, expected 3"
    b.receiveData(encodeData(1, b"m1") + encodeData(2, b"m2") + encodeData(5, b"bad"), 0.0)
    assert b.nextEvent() == Violation(detail)
    assert b.nextEvent() == Data(1, b"m1")
    b.messageProcessed(1)
    assert b.nextEvent() == Data(2, b"m2")
    b.messageProcessed(2)
    ending = Ending(Reason.PROTOCOL_ERROR, detail)
    assert b.nextEvent() == CloseNow(False, ending)
    assert decode(b.dataToSend(0.0)) == [Ack(2), Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)]
    assert b.dataToSend(0.0) == b""


def test_violationLeavesMessageInProcessingUnacknowledged() -> None:
    """A violation while a message is being processed closes at once: the
    GOODBYE goes out, the message stays unacknowledged (its late answer
    sends nothing), the messages after it are not handed out, and no PING
    follows the GOODBYE."""
    a, b = pair()
    detail = "DATA sequence number 5 arrived, expected 3"
    b.receiveData(encodeData(1, b"m1") + encodeData(2, b"m2") + encodeData(5, b"bad"), 0.0)
    assert b.nextEvent() == Violation(detail)
    assert b.nextEvent() == Data(1, b"m1")
    assert b.nextEvent() == CloseNow(False, Ending(Reason.PROTOCOL_ERROR, detail))
    assert b.nextEvent() is None
    assert decode(b.dataToSend(0.0)) == [Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)]
    b.messageProcessed(1)
    assert b.nextEvent() is None
    b.handleTimer(1.0, 1.0)
    assert b.dataToSend(1.0) == b""


def test_violationFailedStateSendsNoPing() -> None:
    """In the FAILED state the heartbeat sends no PING after the GOODBYE."""
    a, b = pair()
    b.receiveData(encodeData(1, b"m1") + encodeData(3, b"bad"), 0.0)
    drain(b)
    b.dataToSend(0.0)
    b.handleTimer(b.nextWake(), b.nextWake())
    assert b.dataToSend(b.nextWake()) == b""


def test_violationIgnoresLaterFrames() -> None:
    """After a violation, frames that follow are ignored."""
    a, b = pair()
    b.receiveData(encode(Hello(PROTOCOL_VERSION, 0, 1.0, 65536, 8, 1, NO_SESSION, 9)), 0.0)
    b.receiveData(encodeData(1, b"late"), 0.1)
    assert drain(b) == [
        Violation("a second HELLO on one connection"),
        CloseNow(False, Ending(Reason.PROTOCOL_ERROR, "a second HELLO on one connection")),
    ]
    assert b.session.inbox.pending == type(b.session.inbox.pending)()


# -- a peer that does not read -------------------------------------------------------------------


def test_unsentOverByteLimit() -> None:
    """More unsent bytes than maxUnsentBytes beyond the DATA in flight:
    PeerNotReading, then CloseNow(abort) with TIMEOUT."""
    settings = Settings(interval=1.0, misses=3, maxFrameSize=1024, maxUnsentBytes=4096)
    a, _ = pair(settings)
    a.send(b"x" * 1000, "h", 0.0)
    a.checkUnsent(4096 + 1000 + DATA_OVERHEAD, 10_000, 0.0)
    assert a.takeEvents() == []
    a.checkUnsent(8192, 20_000, 0.1)
    detail = (
        "peer stopped reading: 8192 bytes unsent, over the limit of 4096 bytes "
        "beyond the 1 messages in flight"
    )
    assert a.takeEvents() == [
        PeerNotReading(detail),
        CloseNow(True, Ending(Reason.TIMEOUT, detail)),
    ]
    a.checkUnsent(1 << 30, 30_000, 0.2)
    assert a.takeEvents() == []


def test_unsentLimitInMiB() -> None:
    """Sizes from 1 MiB up are told in MiB; the limit is at least two
    largest frames."""
    assert describeSize(1048575) == "1048575 bytes"
    assert describeSize(3 * 1048576 + 104858) == "3.1 MiB"
    settings = Settings(interval=1.0, misses=3, maxFrameSize=1048576, maxUnsentBytes=1)
    a, _ = pair(settings)
    a.checkUnsent(3 * 1048576, 0, 0.0)
    detail = (
        "peer stopped reading: 3.0 MiB unsent, over the limit of 2.0 MiB "
        "beyond the 0 messages in flight"
    )
    assert a.takeEvents()[0] == PeerNotReading(detail)


def test_unsentOverDeadlineOnlyFromTimer() -> None:
    """Unsent bytes that do not drain for the peer's deadline abort the
    connection, judged only when the timer fired."""
    a, _ = pair()
    a.wakeMoved = False
    a.checkUnsent(100, 100, 1.0)
    assert a.wakeMoved
    assert a.nextWake() == pytest.approx(min(a.liveness.nextWake(), 4.0 + 1e-6))
    a.checkUnsent(100, 100, 5.0)
    assert a.takeEvents() == []
    a.checkUnsent(100, 100, 5.0, fromTimer=True)
    detail = "peer stopped reading: 100 bytes unsent, none taken for 4.000 s (deadline 3.000 s)"
    assert a.takeEvents() == [
        PeerNotReading(detail),
        CloseNow(True, Ending(Reason.TIMEOUT, detail)),
    ]


def test_unsentDrainingIsReading() -> None:
    """Unsent bytes that shrink, or none at all, reset the judgement."""
    a, _ = pair()
    a.checkUnsent(100, 100, 1.0)
    a.checkUnsent(100, 150, 3.0)  # 50 more written, still 100 unsent: 50 went out
    a.checkUnsent(100, 150, 5.5, fromTimer=True)
    assert a.takeEvents() == []
    a.checkUnsent(0, 150, 6.0, fromTimer=True)
    a.checkUnsent(100, 250, 20.0, fromTimer=True)
    assert a.takeEvents() == []
    assert a.nextWake() <= 23.0 + 1e-6


def test_stallGrantedBackToUnsent() -> None:
    """A late timer (this process stalled) reports Stalled and moves the
    start of the unsent wait by the stall: the peer is not blamed for it."""
    a, _ = pair()
    a.checkUnsent(100, 100, 1.0)
    wake = a.liveness.nextWake()
    a.handleTimer(wake + 10.0, wake)
    events = a.takeEvents()
    assert isinstance(events[0], Stalled) and events[0].seconds == pytest.approx(10.0)
    a.checkUnsent(100, 100, wake + 10.0, fromTimer=True)
    assert [type(e) for e in a.takeEvents()] == []


# -- wakes and small pieces ----------------------------------------------------------------------


def test_nextWakeHasCloseDeadline() -> None:
    """nextWake is the close deadline when it comes before the liveness
    schedule."""
    a, b = pair(Settings(interval=5.0, misses=3, closeTimeout=0.25))
    a.send(b"m", "h", 0.0)
    a.close(now=1.0)
    assert a.nextWake() == 1.25
    assert a.liveness.nextWake() > 1.25


def test_describeBytes() -> None:
    """describeBytes quotes printable text, shows other bytes in hex, and
    says when there were none."""
    assert describeBytes(b"") == "nothing"
    assert describeBytes(b"GET /\r\n") == "'GET /\\r\\n'"
    assert describeBytes(b"\x16\x03\x01", 2) == "0x16 03…"


def test_sharedSettingsBounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Equal settings share one instance, until the table is full: then a
    new one is returned as it is, not kept."""
    monkeypatch.setattr(_connection, "_SHARED_SETTINGS", {})
    monkeypatch.setattr(_connection, "_MAX_SHARED_SETTINGS", 1)
    first = Settings(interval=2.0)
    assert sharedSettings(first) is first
    assert sharedSettings(Settings(interval=2.0)) is first
    other = Settings(interval=3.0)
    assert sharedSettings(other) is other
    assert sharedSettings(Settings(interval=3.0)) is not other


def test_entryBatchMarks() -> None:
    """Entries of messages sent together: batch n on the last, 0 on the others."""
    a, _ = pair()
    a.sendMany([b"1", b"2", b"3"], "h", 0.0)
    assert [e.batch for e in a.session.outbox.inflight] == [0, 0, 3]
    assert isinstance(a.session.outbox.inflight[0], Entry)


# -- outcomes of messages sent together -----------------------------------------------------------


def answerAll(conn: Connection) -> None:
    """Hand out every received message and answer each as processed."""
    while (event := conn.nextEvent()) is not None:
        if isinstance(event, Data):
            conn.messageProcessed(event.seq)


def test_batchBetweenSinglesConfirmedByItsLast() -> None:
    """One ACK covering a message alone, three sent together and another
    alone: `Confirmed` holds the two alone and the batch's last entry (whose
    seq the batch's Receipt carries), never a member before it."""
    a, b = pair()
    a.send(b"s1", "s1", 0.0)
    a.sendMany([b"b1", b"b2", b"b3"], "batch", 0.0)
    a.send(b"s2", "s2", 0.0)
    move(a, b)
    answerAll(b)
    move(b, a)
    (confirmed,) = a.takeEvents()
    assert isinstance(confirmed, Confirmed)
    assert [(e.handle, e.seq) for e in confirmed.entries] == [("s1", 1), ("batch", 4), ("s2", 5)]


def test_batchPartlyAcknowledgedConfirmsNothing() -> None:
    """An ACK that covers only the first members of a batch yields no
    `Confirmed`: the batch is answered once, by its last message."""
    a, b = pair()
    a.sendMany([b"b1", b"b2", b"b3"], "batch", 0.0)
    move(a, b)
    event = b.nextEvent()
    assert isinstance(event, Data) and event.seq == 1
    b.messageProcessed(1)
    move(b, a)
    assert a.takeEvents() == []
    answerAll(b)
    move(b, a)
    (confirmed,) = a.takeEvents()
    assert isinstance(confirmed, Confirmed)
    assert [(e.handle, e.seq) for e in confirmed.entries] == [("batch", 3)]


def test_violationWhileClosingSaysNoSecondGoodbye() -> None:
    """A violation after this side's GOODBYE sends the ACK of what was
    processed, but no second GOODBYE."""
    a, b = pair()
    b.send(b"x", "hx", 0.0)
    b.close(now=0.0)  # waits for the ACK of x
    assert decode(b.dataToSend(0.0)) == [Data(1, b"x"), Goodbye(GoodbyeCode.NORMAL, "")]
    b.receiveData(encodeData(1, b"m1") + encodeData(5, b"bad"), 0.1)
    answerAll(b)
    assert decode(b.dataToSend(0.1)) == [Ack(1)]
    assert b.dataToSend(0.2) == b""


def test_closeDeadlineAfterFinSaysNoGoodbye() -> None:
    """After the peer's FIN, a message still being processed at the close
    deadline: `CloseNow`, and no GOODBYE this side's application never
    asked for."""
    a, b = pair(SETTINGS, Settings(interval=1.0, misses=3, closeTimeout=0.5))
    a.send(b"m1", "h1", 0.0)
    move(a, b)
    assert b.nextEvent() == Data(1, b"m1")
    b.readClosed(0.1)
    assert b.nextEvent() is None
    b.handleTimer(0.6, 0.6)
    assert b.takeEvents() == [CloseNow(False, FIN)]
    assert Goodbye not in {type(frame) for frame in decode(b.dataToSend(0.6))}


# -- acknowledgements that wait for a store's commit -----------------------------------------------


def committing() -> tuple[Connection, Connection]:
    """A pair whose receiving side (``b``) waits for a store's commit
    before it acknowledges."""
    a, b = pair()
    b.session.inbox.waitsForCommit = True
    return a, b


def test_ackWaitsForTheCommit() -> None:
    """Processed messages are acknowledged only up to the committed
    position: nothing before the commit, then exactly what was committed."""
    a, b = committing()
    for payload in (b"m1", b"m2"):
        a.send(payload, payload, 0.0)
    move(a, b)
    answerAll(b)
    assert b.session.inbox.toCommit() == (1, [])
    assert b.dataToSend(0.0) == b""
    b.positionCommitted(1)
    assert decode(b.dataToSend(0.0)) == [Ack(1)]
    answerAll(b)
    assert b.session.inbox.toCommit() == (2, [])
    assert b.dataToSend(0.0) == b""
    b.positionCommitted(2)
    assert b.session.inbox.toCommit() is None
    assert decode(b.dataToSend(0.0)) == [Ack(2)]


def test_nextMessageWaitsForTheCommit() -> None:
    """With a store, the next message is handed out only once the store
    committed the previous one's position: a crash repeats one at most."""
    a, b = committing()
    for payload in (b"m1", b"m2", b"m3"):
        a.send(payload, payload, 0.0)
    move(a, b)
    assert b.nextEvent() == Data(1, b"m1")
    assert not b.handingOut
    b.messageProcessed(1)
    assert b.nextEvent() is None
    assert not b.handingOut
    b.positionCommitted(1)
    assert b.handingOut
    assert b.nextEvent() == Data(2, b"m2")
    b.messageFailed(2, "bad")
    assert b.nextEvent() is None
    b.positionCommitted(2)
    assert b.nextEvent() == Data(3, b"m3")


def test_withoutAStoreMessagesFollowAtOnce() -> None:
    """Without a store, the next message is handed out as soon as the
    previous one is answered (no commit to wait for)."""
    a, b = pair()
    for payload in (b"m1", b"m2"):
        a.send(payload, payload, 0.0)
    move(a, b)
    assert b.nextEvent() == Data(1, b"m1")
    b.messageProcessed(1)
    assert b.nextEvent() == Data(2, b"m2")


def test_toCommitHoldsEveryRejectionThePeerMayNotHaveSeen() -> None:
    """What a store must keep with the position: the REJECTs sent on (and
    not yet known to be seen by the peer) as well as the new ones, in
    order, since the store replaces the ones it held."""
    a, b = committing()
    for payload in (b"m1", b"m2"):
        a.send(payload, payload, 0.0)
    move(a, b)
    assert b.nextEvent() == Data(1, b"m1")
    b.messageFailed(1, "first")
    b.positionCommitted(1)
    assert decode(b.dataToSend(0.0)) == [Reject(1, "first"), Ack(1)]
    assert b.nextEvent() == Data(2, b"m2")
    b.messageFailed(2, "second")
    assert b.session.inbox.toCommit() == (2, [(1, "first"), (2, "second")])


def test_rejectWaitsForTheCommit() -> None:
    """A REJECT goes only once the store committed the rejection with the
    position: a crash before the commit can't turn it into an ACK."""
    a, b = committing()
    a.send(b"bad", "h", 0.0)
    move(a, b)
    assert b.nextEvent() == Data(1, b"bad")
    b.messageFailed(1, "no such command")
    assert b.session.inbox.toCommit() == (1, [(1, "no such command")])
    assert b.dataToSend(0.0) == b""
    b.positionCommitted(1)
    assert decode(b.dataToSend(0.0)) == [Reject(1, "no such command"), Ack(1)]


def test_closeWaitsForTheCommit() -> None:
    """After the peer's GOODBYE, `CloseNow` waits until the ACK of what was
    processed may go (its commit), so the peer is not left uncertain."""
    a, b = committing()
    a.send(b"m1", "h", 0.0)
    a.sendGoodbye(GoodbyeCode.NORMAL, "")
    move(a, b)
    events = []
    while (event := b.nextEvent()) is not None:
        events.append(event)
        if isinstance(event, Data):
            b.messageProcessed(event.seq)
    assert not any(isinstance(e, CloseNow) for e in events)
    b.positionCommitted(1)
    assert [type(e) for e in drain(b)] == [CloseNow]
    assert decode(b.dataToSend(0.0)) == [Ack(1)]
