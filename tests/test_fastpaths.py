"""
Tests for the sans-IO core's fast paths (the common case done in one step
must give the same result as the general path), for its lazily created
queues, and for the cooperative heartbeats option.
"""

from __future__ import annotations

from collections import deque

import pytest
from coresupport import fed, timed
from hypothesis import given
from hypothesis import strategies as st

from twisted_alive.core.connection import Connection, Role, Settings, State
from twisted_alive.core.delivery import EMPTY, Inbox, Outbox, ProtocolViolation
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    FrameDecoder,
    Hello,
    Ping,
    Pong,
    encode,
    encodeAck,
    encodeData,
    encodeDataHeader,
    encodePing,
    encodePong,
)
from twisted_alive.core.outcomes import QueueFull

# -- frames --------------------------------------------------------------------------------------


@given(st.integers(1, 2**64 - 1), st.binary(max_size=300))
def test_dataHeaderPlusPayloadIsDataFrame(seq: int, payload: bytes) -> None:
    """The header written apart from its payload makes the same frame as encodeData."""
    assert encodeDataHeader(seq, len(payload)) + payload == encodeData(seq, payload)


@given(st.integers(0, 2**64 - 1))
def test_pingPongEncoders(id: int) -> None:
    """encodePing/encodePong give the bytes of encode(Ping)/encode(Pong)."""
    assert encodePing(id) == encode(Ping(id))
    assert encodePong(id) == encode(Pong(id))


@pytest.mark.parametrize(
    ("encoder", "message"),
    [
        (encodePing, "PING id -1 is outside the range 0..18446744073709551615"),
        (encodePong, "PONG id -1 is outside the range 0..18446744073709551615"),
    ],
)
def test_pingPongEncodersCheckRange(encoder: object, message: str) -> None:
    """The direct encoders refuse an id that does not fit 64 bits, like encode()."""
    with pytest.raises(ValueError) as info:
        encoder(-1)  # type: ignore[operator]
    assert str(info.value) == message


@given(st.lists(st.sampled_from([Ack(7), Ping(2**64 - 1), Pong(0), Data(3, b"abc")]), max_size=8))
def test_shortFramesDecodeInEveryChunking(frames: list[object]) -> None:
    """ACK, PING and PONG (read in one step) decode the same whole or byte by byte."""
    wire = b"".join(encode(f) for f in frames)  # type: ignore[arg-type]
    assert FrameDecoder().feed(wire) == frames
    decoder = FrameDecoder()
    out: list[object] = []
    for i in range(len(wire)):
        out.extend(decoder.feed(wire[i : i + 1]))
    assert out == frames
    assert all(type(a) is type(b) for a, b in zip(out, frames, strict=True))


# -- lazily created queues -------------------------------------------------------------------------


def test_idleQueuesShareOnePlaceholder() -> None:
    """A new session holds no deque of its own: its queues are the shared, empty EMPTY."""
    conn = Connection(Settings(), Role.PEER, 0.0)
    outbox, inbox = conn.session.outbox, conn.session.inbox
    assert outbox.queue is EMPTY and outbox.inflight is EMPTY
    assert inbox.pending is EMPTY and inbox.sentRejections is EMPTY
    assert EMPTY.maxlen == 0 and not EMPTY


def test_queuesGetTheirOwnDequeOnFirstUse() -> None:
    """The first message gives an outbox its own queue; others stay untouched."""
    a, b = Outbox(), Outbox()
    a.submit(b"x", None)
    assert a.queue is not EMPTY and list(e.payload for e in a.queue) == [b"x"]
    assert b.queue is EMPTY and not EMPTY
    a.takeSendable(10, 0.0, 100)
    assert a.inflight is not EMPTY and b.inflight is EMPTY


def test_resumeAndMoveQueueCreateQueues() -> None:
    """resume() and moveQueueTo() give the receiving queue its own deque."""
    outbox = Outbox()
    outbox.submit(b"a", None)
    outbox.submit(b"b", None)
    outbox.takeSendable(10, 0.0, 100)
    assert outbox.queue is not EMPTY  # drained, but its own
    fresh = Outbox()
    outbox.resume(1)
    assert [e.seq for e in outbox.queue] == [1, 2]
    outbox.moveQueueTo(fresh)
    assert fresh.queue is not EMPTY and [e.seq for e in fresh.queue] == [1, 2]
    assert not EMPTY


def test_restartLeavesPlaceholderWhenNothingKept() -> None:
    """restart() of an outbox with nothing waiting leaves the shared placeholder."""
    outbox = Outbox()
    outbox.submit(b"a", None)
    outbox.takeSendable(10, 0.0, 100)
    assert [e.seq for e in outbox.restart()] == [1]
    assert outbox.queue is EMPTY


def test_rejectionsGetTheirOwnDeque() -> None:
    """The first REJECT sent gives the inbox its own deque of sent REJECTs."""
    inbox = Inbox()
    inbox.accept(1, b"x")
    inbox.reject(1, "bad")
    assert inbox.takeRejections() == [(1, "bad")]
    assert list(inbox.sentRejections) == [(1, "bad")] and not EMPTY


# -- in-order DATA in one step ---------------------------------------------------------------------


def data(*seqs: int) -> list[Data]:
    """DATA frames with these sequence numbers."""
    return [Data(seq, b"p%d" % seq) for seq in seqs]


@pytest.mark.parametrize(
    ("frames", "accepted"),
    [
        (data(1, 2, 3), 3),
        (data(1, 2, 4), 2),  # a gap: left to accept(), which refuses it
        (data(2, 3), 0),
        ([*data(1), Ack(0), *data(2)], 1),  # another frame: handled in order
        (data(1, 2, 3, 4, 5), 4),  # the fifth is beyond the window of 4
        ([], 0),
    ],
)
def test_acceptInOrderTakesTheLeadingRun(frames: list[object], accepted: int) -> None:
    """acceptInOrder queues the leading in-sequence DATA within the window, no further."""
    inbox = Inbox(window=4)
    assert inbox.acceptInOrder(frames) == accepted
    assert [seq for seq, _ in inbox.pending] == list(range(1, accepted + 1))
    assert inbox.receivedUpTo == accepted


def test_acceptInOrderMatchesAccept() -> None:
    """What acceptInOrder queues equals what accept() queues frame by frame."""
    fast, slow = Inbox(), Inbox()
    frames = data(1, 2, 3)
    fast.acceptInOrder(frames)
    for seq, payload in frames:
        slow.accept(seq, payload)
    assert list(fast.pending) == list(slow.pending)
    assert fast.receivedUpTo == slow.receivedUpTo == 3


def test_acceptInOrderLeavesDuplicatesToAccept() -> None:
    """A duplicate stops the run: accept() counts and drops it."""
    inbox = Inbox()
    inbox.acceptInOrder(data(1, 2))
    assert inbox.acceptInOrder(data(2, 3)) == 0
    assert inbox.accept(2, b"p2") is False and inbox.duplicates == 1


def test_acceptInOrderForgetsSeenRejections() -> None:
    """Sent REJECTs the peer must have seen are forgotten, as accept() forgets them."""
    inbox = Inbox(window=2)
    inbox.accept(1, b"x")
    inbox.reject(1, "bad")
    inbox.takeRejections()
    inbox.processedUpTo = inbox.ackedUpTo = 1
    inbox.acceptInOrder(data(2, 3))
    assert list(inbox.sentRejections) == [(1, "bad")]  # 3 is not beyond 1 + window
    inbox.processedUpTo = inbox.ackedUpTo = 3
    inbox.acceptInOrder(data(4))
    assert not inbox.sentRejections


def test_connectionRefusesGapAfterFastRun() -> None:
    """In a connection, the frames after the fast run still meet every rule."""
    conn = opened()
    events = fed(conn, b"".join(encode(f) for f in data(1, 2, 4)), 1.0)
    assert [seq for seq, _ in conn.session.inbox.pending] == [1, 2]
    assert conn.state is State.FAILED
    assert events and conn.error == "DATA sequence number 4 arrived, expected 3"


# -- sending in one step -----------------------------------------------------------------------


def opened(settings: Settings | None = None, window: int = 1024) -> Connection:
    """A peer connection whose HELLO exchange is done."""
    conn = Connection(settings or Settings(), Role.PEER, 0.0)
    fed(conn,
        encode(Hello(PROTOCOL_VERSION, 0, 5.0, DEFAULT_MAX_FRAME_SIZE, window, 1, NO_SESSION)), 0.0
    )
    conn.dataToSend(0.0)
    return conn


def test_sendGoesOutAtOnce() -> None:
    """On an open connection with room, send() queues the DATA frame at once."""
    conn = opened()
    entry = conn.send(b"hi", "handle", 2.0)
    assert (entry.seq, entry.sentAt, entry.handle) == (1, 2.0, "handle")
    assert conn.dataToSend(2.0) == encodeData(1, b"hi")
    assert list(conn.session.outbox.inflight) == [entry]
    assert conn.session.outbox.sentCount == 1


def test_sendQueuesBehindFullWindow() -> None:
    """With the peer's window full, send() queues; an ACK sends the queued message."""
    conn = opened(window=1)
    conn.send(b"one", None, 0.0)
    conn.dataToSend(0.0)
    second = conn.send(b"two", None, 0.0)
    assert second.seq == 0 and conn.dataToSend(0.0) == b""
    fed(conn, encodeAck(1), 1.0)
    assert second.seq == 2 and conn.dataToSend(1.0) == encodeData(2, b"two")


def test_sendKeepsOrderBehindQueue() -> None:
    """A message never overtakes one already waiting in the queue."""
    conn = Connection(Settings(), Role.PEER, 0.0)
    conn.send(b"early", None, 0.0)  # before the HELLO exchange: queued
    fed(conn,
        encode(Hello(PROTOCOL_VERSION, 0, 5.0, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION)), 0.0
    )
    conn.send(b"late", None, 0.0)
    frames = FrameDecoder().feed(conn.dataToSend(0.0))
    assert [f for f in frames if type(f) is Data] == [Data(1, b"early"), Data(2, b"late")]


def test_sendRaisesQueueFull() -> None:
    """send() refuses a message beyond the queue's limit, queuing nothing."""
    conn = opened(Settings(maxQueue=1), window=1)
    conn.send(b"a", None, 0.0)
    conn.send(b"b", None, 0.0)
    with pytest.raises(QueueFull):
        conn.send(b"c", None, 0.0)
    assert len(conn.session.outbox) == 2


def test_sendNowDeclines() -> None:
    """sendNow() declines when the queue is not empty, a window is full or the message is
    too large for the peer."""
    outbox = Outbox(window=2)
    assert outbox.sendNow(b"x" * 11, None, 5, 0.0, 10) is None
    assert outbox.sendNow(b"a", None, 1, 0.0, 10) is not None
    assert outbox.sendNow(b"b", None, 1, 0.0, 10) is None  # peer's window of 1 is full
    outbox.submit(b"c", None)
    assert outbox.sendNow(b"d", None, 5, 0.0, 10) is None  # "c" waits: keep the order


def test_acksSentCounted() -> None:
    """acksSent counts the ACK frames queued, not the messages they cover."""
    conn = opened()
    fed(conn, b"".join(encode(f) for f in data(1, 2, 3)), 1.0)
    inbox = conn.session.inbox
    inbox.pending.clear()
    inbox.processedUpTo = 3
    conn.flushAck()
    conn.flushAck()
    assert conn.acksSent == 1
    assert conn.dataToSend(1.0) == encodeAck(3)


# -- heartbeats on an idle link ----------------------------------------------------------


def link(a: Connection, b: Connection, until: float, step: float = 0.005) -> dict[str, list[float]]:
    """Run two connections against each other on one clock, in steps: each fires its
    timer when due, then the bytes of both cross (two PINGs due together cross, as on
    a real link). Returns when each side sent PINGs, and any frame."""
    sides = {"a": (a, b), "b": (b, a)}
    sent: dict[str, list[float]] = {f"{n}-{k}": [] for n in sides for k in ("ping", "any")}
    armed = {name: conn.nextWake() for name, (conn, _) in sides.items()}
    now = 0.0
    while now < until:
        now += step
        for name, (conn, _) in sides.items():
            if now >= armed[name]:
                timed(conn, now, armed[name])
        while True:
            out = {name: conn.dataToSend(now) for name, (conn, _) in sides.items()}
            if not any(out.values()):
                break
            for name, data in out.items():
                if data:
                    sent[f"{name}-any"].append(now)
                    if any(type(f) is Ping for f in FrameDecoder().feed(data)):
                        sent[f"{name}-ping"].append(now)
                    sides[name][1].receiveData(data, now)
        for name, (conn, _) in sides.items():
            armed[name] = conn.nextWake()
    return sent


def test_equalIntervalsPingBothWays() -> None:
    """Two sides with equal intervals whose PINGs fall due together both keep pinging:
    each PING crosses the peer's (measured in docs/performance.md)."""
    settings = Settings(interval=0.2)
    a = Connection(settings, Role.PEER, 0.0)
    b = Connection(settings, Role.PEER, 0.0)
    fed(b, a.dataToSend(0.0), 0.0)
    fed(a, b.dataToSend(0.0), 0.0)
    sent = link(a, b, 2.0)
    assert len(sent["a-ping"]) >= 8 and len(sent["b-ping"]) >= 8


def test_protocolViolationStillRaisedByAccept() -> None:
    """accept() still refuses a peer beyond the window (the fast path leaves it the case)."""
    inbox = Inbox(window=1)
    inbox.acceptInOrder(data(1))
    with pytest.raises(ProtocolViolation):
        inbox.accept(2, b"x")
    assert isinstance(inbox.pending, deque)


def test_equalSettingsShareOneInstance() -> None:
    """Connections made with equal settings hold one Settings object between them."""
    a = Connection(Settings(interval=1.25), Role.PEER, 0.0)
    b = Connection(Settings(interval=1.25), Role.PEER, 0.0)
    assert a.settings is b.settings
    assert Connection(Settings(interval=1.5), Role.PEER, 0.0).settings.interval == 1.5


def test_sharedSettingsAreBounded() -> None:
    """Beyond the bound, settings are used as given and no more are kept."""
    from twisted_alive.core import connection as _connection

    before = dict(_connection._SHARED_SETTINGS)
    try:
        _connection._SHARED_SETTINGS.clear()
        for i in range(_connection._MAX_SHARED_SETTINGS + 5):
            _connection.sharedSettings(Settings(interval=1.0 + i / 1000))
        assert len(_connection._SHARED_SETTINGS) == _connection._MAX_SHARED_SETTINGS
        late = Settings(interval=9.0)
        assert _connection.sharedSettings(late) is late
    finally:
        _connection._SHARED_SETTINGS.clear()
        _connection._SHARED_SETTINGS.update(before)
