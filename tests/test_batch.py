# mypy: disable-error-code="no-untyped-call"
"""
Tests for ``HeartbeatMixin.sendMessages``: several messages sent together
with one Deferred, driven by a ``task.Clock`` and in-memory transports
(``FakeLink``, ``StringTransport``), and once over a real loopback socket.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterator
from typing import Any, cast

import pytest
import pytest_twisted
from support import (
    BuiltProtocols,
    RecordingPeer,
    assertNoResult,
    built,
    connectAlone,
    deferring,
    failureResultOf,
    forProtocol,
    getReactor,
    listeningOn,
    successResultOf,
)
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from twisted_alive._factories import AliveClientFactory, AliveServerFactory
from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Reason
from twisted_alive.core.connection import State
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    FrameDecoder,
    Hello,
    encode,
)
from twisted_alive.core.outcomes import DeliveryFailed, QueueFull, Receipt
from twisted_alive.testing import FakeLink

_TwistedTest = Callable[[Callable[..., Generator[Any, Any, None]]], Callable[..., Any]]
twistedTest: _TwistedTest = pytest_twisted.inlineCallbacks
"""``pytest_twisted.inlineCallbacks``, typed."""

HOST = "127.0.0.1"


# -- fixtures ------------------------------------------------------------------


class Peer(RecordingPeer):
    """Records the messages it processes and every loss it is told of."""

    heartbeatInterval = 1.0


def openLink(
    serverHandler: Callable[[bytes], object] | None = None, **attributes: object
) -> FakeLink[Peer, Peer]:
    """A ``FakeLink`` of two ``Peer``s with ``attributes`` set on both, HELLOs exchanged."""
    server, client = Peer(handler=serverHandler), Peer()
    for name, value in attributes.items():
        setattr(server, name, value)
        setattr(client, name, value)
    link = FakeLink(server, client)
    link.flush()
    return link


def helloFrom(window: int = 1024, maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """The bytes of the HELLO of a peer played by the test."""
    return encode(Hello(PROTOCOL_VERSION, 0, 1.0, maxFrameSize, window, 1, NO_SESSION))


def lone(**attributes: object) -> tuple[Peer, StringTransport, Clock]:
    """One ``Peer`` on a ``StringTransport`` (the test plays the other side),
    before the peer's HELLO."""
    return connectAlone(Peer, None, **attributes)


def opened(**attributes: object) -> tuple[Peer, StringTransport, Clock]:
    """`lone`, after the peer's HELLO (window 1,024)."""
    proto, transport, clock = lone(**attributes)
    proto.dataReceived(helloFrom())
    return proto, transport, clock


def dataSent(transport: StringTransport) -> list[Data]:
    """Every DATA frame written to ``transport`` so far."""
    return [f for f in FrameDecoder().feed(transport.value()) if type(f) is Data]


def payloads(count: int, prefix: bytes = b"m") -> list[bytes]:
    """``count`` numbered payloads."""
    return [prefix + b"%d" % i for i in range(count)]


def outboxOf(proto: HeartbeatProtocol) -> Any:
    """The ``Outbox`` of ``proto``'s session."""
    session = proto.session
    assert session is not None
    return session.outbox


def fail(text: str) -> Callable[[bytes], None]:
    """A handler that raises ``ValueError`` on the payloads in ``text``
    (comma-separated)."""
    bad = set(text.encode().split(b","))

    def handler(payload: bytes) -> None:
        if payload in bad:
            raise ValueError(f"bad {payload.decode()}")

    return handler


# -- delivery and the one receipt ------------------------------------------------


def test_allDeliveredInOrderOneReceipt() -> None:
    """Each message of a batch reaches messageReceived once, in order; one Receipt for the last."""
    link = openLink()
    link.clock.advance(0.5)
    d = link.client.sendMessages(payloads(5))
    assertNoResult(d)
    link.flush()
    receipt = successResultOf(d)
    assert isinstance(receipt, Receipt)
    assert receipt.seq == 5
    assert receipt.sentAt == receipt.confirmedAt == pytest.approx(0.5)
    assert link.server.received == payloads(5)
    link.advance(5.0, step=0.5)
    assert link.server.received == payloads(5)
    assert link.server.losses == link.client.losses == []


def test_receiptOnlyAfterFullAck() -> None:
    """A cumulative ACK that covers only part of the batch does not fire its Deferred."""
    proto, transport, clock = opened()
    d = proto.sendMessages(payloads(5))
    assert [(f.seq, f.payload) for f in dataSent(transport)] == list(
        zip(range(1, 6), payloads(5), strict=True)
    )
    proto.dataReceived(encode(Ack(1)))
    assertNoResult(d)
    clock.advance(1.0)
    proto.dataReceived(encode(Ack(4)))
    assertNoResult(d)
    assert len(outboxOf(proto)) == 1
    clock.advance(1.0)
    proto.dataReceived(encode(Ack(5)))
    receipt = successResultOf(d)
    assert (receipt.seq, receipt.sentAt, receipt.confirmedAt) == (5, 0.0, 2.0)
    assert len(outboxOf(proto)) == 0


def test_receiptWaitsForAsyncProcessing() -> None:
    """While the peer still processes a batch member (a Deferred), the batch stays unconfirmed."""
    handler, waiting = deferring(b"m2")

    link = openLink(handler)
    d = link.client.sendMessages(payloads(5))
    link.flush()
    assert link.server.received == payloads(3)
    assert outboxOf(link.client).ackedUpTo == 2
    assertNoResult(d)
    waiting[0].callback(None)
    link.flush()
    assert successResultOf(d).seq == 5
    assert link.server.received == payloads(5)


def test_mixedWithSendMessage() -> None:
    """sendMessage calls before and after a batch keep their order and their own Receipts."""
    link = openLink()
    before = link.client.sendMessage(b"before")
    batch = link.client.sendMessages(payloads(4))
    after = link.client.sendMessage(b"after")
    second = link.client.sendMessages([b"x", b"y"])
    link.flush()
    assert link.server.received == [b"before", *payloads(4), b"after", b"x", b"y"]
    assert successResultOf(before).seq == 1
    assert successResultOf(batch).seq == 5
    assert successResultOf(after).seq == 6
    assert successResultOf(second).seq == 8


def test_batchOfOne() -> None:
    """A batch of one message behaves like sendMessage: its own Receipt."""
    link = openLink()
    d = link.client.sendMessages([b"alone"])
    link.flush()
    assert successResultOf(d).seq == 1
    assert link.server.received == [b"alone"]


def test_anyIterable() -> None:
    """A generator, a tuple or a list of payloads is accepted; each is sent in order."""
    link = openLink()
    fromGenerator = link.client.sendMessages(b"g%d" % i for i in range(3))
    fromTuple = link.client.sendMessages((b"t0", b"t1"))
    link.flush()
    assert successResultOf(fromGenerator).seq == 3
    assert successResultOf(fromTuple).seq == 5
    assert link.server.received == [b"g0", b"g1", b"g2", b"t0", b"t1"]


class WriteCounting(StringTransport):
    """A ``StringTransport`` that counts the calls to ``write``."""

    writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        super().write(data)


def test_sentFromMessageReceivedOneWrite() -> None:
    """A batch sent from inside messageReceived leaves with the read's ACK in one write."""
    clock = Clock()
    replies: list[Deferred[Receipt]] = []
    proto = Peer(clock, lambda payload: replies.append(proto.sendMessages(payloads(3, b"r"))))
    transport = WriteCounting()
    proto.makeConnection(transport)
    proto.dataReceived(helloFrom())
    transport.clear()
    writes = transport.writes
    proto.dataReceived(encode(Data(1, b"ask")))
    assert transport.writes == writes + 1
    frames = FrameDecoder().feed(transport.value())
    assert frames == [Data(1, b"r0"), Data(2, b"r1"), Data(3, b"r2"), Ack(1)]
    proto.dataReceived(encode(Ack(3)))
    assert successResultOf(replies[0]).seq == 3


def test_bothDirections() -> None:
    """Both sides send batches at once over one connection; each gets its Receipt."""
    link = openLink()
    toServer = link.client.sendMessages(payloads(3, b"c"))
    toClient = link.server.sendMessages(payloads(4, b"s"))
    link.flush()
    assert successResultOf(toServer).seq == 3
    assert successResultOf(toClient).seq == 4
    assert link.server.received == payloads(3, b"c")
    assert link.client.received == payloads(4, b"s")


# -- the window and the queue ------------------------------------------------------


def test_moreThanTheWindow() -> None:
    """A batch larger than the window: part is written at once, the rest waits, in order."""
    proto, transport, clock = opened(maxInFlight=4)
    d = proto.sendMessages(payloads(10))
    assert [f.seq for f in dataSent(transport)] == [1, 2, 3, 4]
    outbox = outboxOf(proto)
    assert (len(outbox.inflight), len(outbox.queue)) == (4, 6)
    clock.advance(1.0)
    proto.dataReceived(encode(Ack(4)))
    assert [f.seq for f in dataSent(transport)] == list(range(1, 9))
    assertNoResult(d)
    clock.advance(1.0)
    proto.dataReceived(encode(Ack(8)))
    sent = dataSent(transport)
    assert [(f.seq, f.payload) for f in sent] == list(zip(range(1, 11), payloads(10), strict=True))
    assertNoResult(d)
    clock.advance(1.0)
    proto.dataReceived(encode(Ack(10)))
    receipt = successResultOf(d)
    # The last message went out when the ACK of 8 made room for it.
    assert (receipt.seq, receipt.sentAt, receipt.confirmedAt) == (10, 2.0, 3.0)


def test_moreThanTheWindowOverLink() -> None:
    """A batch of 10 through a window of 4 reaches the peer in order, with one Receipt."""
    link = openLink(maxInFlight=4)
    before = link.client.sendMessage(b"before")
    d = link.client.sendMessages(payloads(10))
    after = link.client.sendMessage(b"after")
    outbox = outboxOf(link.client)
    assert (len(outbox.inflight), len(outbox.queue)) == (4, 8)
    link.flush()
    assert link.server.received == [b"before", *payloads(10), b"after"]
    assert successResultOf(before).seq == 1
    assert successResultOf(d).seq == 11
    assert successResultOf(after).seq == 12
    assert len(outbox) == 0


def test_peerWindowSmaller() -> None:
    """The peer's smaller window (from its HELLO) bounds what the batch writes at once."""
    proto, transport, clock = lone()
    proto.dataReceived(helloFrom(window=3))
    d = proto.sendMessages(payloads(7))
    assert [f.seq for f in dataSent(transport)] == [1, 2, 3]
    proto.dataReceived(encode(Ack(3)))
    proto.dataReceived(encode(Ack(6)))
    proto.dataReceived(encode(Ack(7)))
    assert [f.seq for f in dataSent(transport)] == list(range(1, 8))
    assert successResultOf(d).seq == 7


def test_queueFullAllOrNothing() -> None:
    """A batch whose rest does not fit in the queue fails at once with QueueFull; nothing queued."""
    proto, transport, clock = opened(maxInFlight=2, maxQueued=3)
    outbox = outboxOf(proto)
    d = proto.sendMessages([b"abc"] * 6)  # 2 would go into the window, 4 wait: one too many
    f = failureResultOf(d, QueueFull)
    assert str(f.value) == (
        "send queue full: 6 messages sent together, 4 of which (12 bytes) would wait "
        "behind 0 in flight and 0 queued (0 bytes) (maxQueue=3, maxQueueBytes=67108864)"
    )
    assert len(outbox) == 0
    assert (outbox.nextSeq, outbox.queuedBytes, outbox.sentCount) == (1, 0, 0)
    assert dataSent(transport) == []
    fits = proto.sendMessages([b"abc"] * 5)  # 2 in the window, 3 queued
    assert len(outbox) == 5
    assert [f.seq for f in dataSent(transport)] == [1, 2]
    full = proto.sendMessages([b"x"])
    assert str(failureResultOf(full, QueueFull).value) == (
        "send queue full: 1 messages sent together, 1 of which (1 bytes) would wait "
        "behind 2 in flight and 3 queued (9 bytes) (maxQueue=3, maxQueueBytes=67108864)"
    )
    assert len(outbox) == 5
    proto.dataReceived(encode(Ack(2)))  # 2 leave the queue for the window
    later = proto.sendMessages([b"y", b"z"])
    assert len(outbox) == 5
    for upTo in (4, 6, 7):
        proto.dataReceived(encode(Ack(upTo)))
    assert successResultOf(fits).seq == 5
    assert successResultOf(later).seq == 7
    assert [f.payload for f in dataSent(transport)] == [b"abc"] * 5 + [b"y", b"z"]


def test_queueFullByBytes() -> None:
    """maxQueuedBytes bounds a batch's queued part too; nothing is queued when it does not fit."""
    proto, transport, clock = opened(maxInFlight=1, maxQueuedBytes=10)
    outbox = outboxOf(proto)
    first = proto.sendMessage(b"in flight")
    d = proto.sendMessages([b"12345", b"123456"])
    assert str(failureResultOf(d, QueueFull).value) == (
        "send queue full: 2 messages sent together, 2 of which (11 bytes) would wait "
        "behind 1 in flight and 0 queued (0 bytes) (maxQueue=65536, maxQueueBytes=10)"
    )
    assert len(outbox) == 1
    fits = proto.sendMessages([b"12345", b"12345"])
    assert (len(outbox.queue), outbox.queuedBytes) == (2, 10)
    proto.dataReceived(encode(Ack(1)))
    proto.dataReceived(encode(Ack(2)))
    proto.dataReceived(encode(Ack(3)))
    assert successResultOf(first).seq == 1
    assert successResultOf(fits).seq == 3


def test_emptyQueueTakesOneMessage() -> None:
    """An empty queue takes a batch of one however large (as submit() does), not two."""
    proto, transport, clock = opened(maxInFlight=1, maxQueued=0, maxQueuedBytes=4)
    outbox = outboxOf(proto)
    first = proto.sendMessage(b"in flight")
    two = proto.sendMessages([b"x" * 50, b"y"])
    assert isinstance(failureResultOf(two, QueueFull).value, QueueFull)
    assert len(outbox) == 1
    one = proto.sendMessages([b"x" * 50])
    assert (len(outbox.queue), outbox.queuedBytes) == (1, 50)
    assert str(failureResultOf(proto.sendMessage(b"z"), QueueFull).value) == (
        "send queue full: 1 messages (50 bytes) waiting behind 1 in flight "
        "(maxQueue=0, maxQueueBytes=4)"
    )
    proto.dataReceived(encode(Ack(1)))
    assert [f.payload for f in dataSent(transport)] == [b"in flight", b"x" * 50]
    proto.dataReceived(encode(Ack(2)))
    assert successResultOf(first).seq == 1
    assert successResultOf(one).seq == 2


# -- errors raised at once -----------------------------------------------------------


def test_beforeConnectionMade() -> None:
    """sendMessages() before connectionMade raises RuntimeError with an exact message."""
    with pytest.raises(RuntimeError) as info:
        Peer().sendMessages([b"too early"])
    assert str(info.value) == "sendMessages() called before the connection was made"


@pytest.mark.parametrize("empty", [[], (), iter(())], ids=["list", "tuple", "iterator"])
def test_emptyBatch(empty: Any) -> None:
    """sendMessages() with no payload raises ValueError; nothing is sent."""
    proto, transport, clock = opened()
    with pytest.raises(ValueError) as info:
        proto.sendMessages(empty)
    assert str(info.value) == "sendMessages() needs at least one message"
    assert len(outboxOf(proto)) == 0


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("text", "payload must be bytes, not str"),
        (bytearray(b"x"), "payload must be bytes, not bytearray"),
        (None, "payload must be bytes, not NoneType"),
    ],
    ids=["str", "bytearray", "None"],
)
def test_notBytes(bad: object, message: str) -> None:
    """A payload that is not bytes, anywhere in the batch, raises TypeError; nothing is queued."""
    proto, transport, clock = opened(maxInFlight=1)
    before = len(transport.value())
    for batch in ([bad, b"ok"], [b"ok", b"ok", bad]):
        with pytest.raises(TypeError) as info:
            proto.sendMessages(cast(list[bytes], batch))
        assert str(info.value) == message
    assert len(outboxOf(proto)) == 0
    assert len(transport.value()) == before
    assert outboxOf(proto).nextSeq == 1


def test_oversize() -> None:
    """A payload larger than a frame allows raises ValueError; nothing is queued; the limit fits."""
    proto, transport, clock = opened(maxFrameSize=64)
    with pytest.raises(ValueError) as info:
        proto.sendMessages([b"a", b"x" * 56, b"b"])
    assert str(info.value) == (
        "message of 56 bytes exceeds the maximum of 55 bytes (maxFrameSize 64 minus 9)"
    )
    assert len(outboxOf(proto)) == 0
    assert dataSent(transport) == []
    d = proto.sendMessages([b"a", b"x" * 55])
    assert [f.payload for f in dataSent(transport)] == [b"a", b"x" * 55]
    proto.dataReceived(encode(Ack(2)))
    assert successResultOf(d).seq == 2


def test_afterLossAndWhileClosing() -> None:
    """After this side's close(), sendMessages() raises RuntimeError (closing or closed); after
    another loss it fails at once with DeliveryFailed."""
    link = openLink()
    link.client.close()
    for late in ([b"late"], [b"later", b"still"]):
        with pytest.raises(RuntimeError) as info:
            link.client.sendMessages(late)
        assert str(info.value) == "sendMessages() called after close()"
        link.flush()
    assert link.client.loss is not None
    link = openLink()
    link.cut()
    loss = link.client.loss
    assert loss is not None
    f = failureResultOf(link.client.sendMessages([b"later", b"still"]), DeliveryFailed)
    assert str(f.value) == f"connection already lost ({loss})"
    assert cast(DeliveryFailed, f.value).loss is loss
    assert link.server.received == []


# -- the peer's application fails ------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "first", "count"),
    [("m2", 3, 1), ("m0,m4", 1, 2), ("m4", 5, 1), ("m0,m1,m2,m3,m4", 1, 5)],
)
@pytest.mark.parametrize("window", [1024, 2])
def test_rejected(bad: str, first: int, count: int, window: int) -> None:
    """Rejected members fail the batch (naming the first); all were processed; next one is fine."""
    link = openLink(fail(bad), maxInFlight=window)
    with capturedLogs() as logs:
        d = link.client.sendMessages(payloads(5))
        link.flush()
    exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
    assert exc.rejected is True
    assert exc.maybeProcessed is False
    text = bad.split(",")[0]
    assert str(exc) == (
        f"peer application failed on message {first} ({count} of the 5 sent together): "
        f"ValueError: bad {text}"
    )
    assert link.server.received == payloads(5)
    assert [e["seq"] for e in logs if e.get("event") == "rejected"] == [
        int(b[1:]) + 1 for b in bad.split(",")
    ]
    assert outboxOf(link.client).rejected == {}
    after = link.client.sendMessage(b"after")
    link.flush()
    assert successResultOf(after).seq == 6
    assert link.server.losses == link.client.losses == []


def test_rejectedAsync() -> None:
    """A Deferred from messageReceived that fails on a batch member rejects the batch."""
    handler, waiting = deferring(b"m1")

    link = openLink(handler)
    with capturedLogs():
        d = link.client.sendMessages(payloads(3))
        link.flush()
        assertNoResult(d)
        waiting[0].errback(KeyError("gone"))
        link.flush()
    exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
    assert str(exc) == (
        "peer application failed on message 2 (1 of the 3 sent together): KeyError: 'gone'"
    )
    assert link.server.received == payloads(3)


def test_rejectionsStayWithTheirMessage() -> None:
    """A rejection fails only the message or batch it belongs to, not its neighbours."""
    link = openLink(fail("bad,n1"))
    with capturedLogs():
        before = link.client.sendMessage(b"bad")
        batch = link.client.sendMessages(payloads(3))
        after = link.client.sendMessage(b"bad")
        nextBatch = link.client.sendMessages(payloads(2, b"n"))
        last = link.client.sendMessages(payloads(2, b"o"))
        link.flush()
    assert str(failureResultOf(before, DeliveryFailed).value) == (
        "peer application failed on message 1: ValueError: bad bad"
    )
    assert successResultOf(batch).seq == 4
    assert str(failureResultOf(after, DeliveryFailed).value) == (
        "peer application failed on message 5: ValueError: bad bad"
    )
    assert str(failureResultOf(nextBatch, DeliveryFailed).value) == (
        "peer application failed on message 7 (1 of the 2 sent together): ValueError: bad n1"
    )
    assert successResultOf(last).seq == 9
    assert outboxOf(link.client).rejected == {}


def test_tooLargeForThePeer() -> None:
    """A member larger than the peer's HELLO allows fails the batch at once; others go out."""
    proto, transport, clock = lone()
    proto.dataReceived(helloFrom(maxFrameSize=64))
    d = proto.sendMessages([b"a", b"x" * 100, b"c"])
    exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
    assert str(exc) == "message of 100 bytes exceeds the peer's maximum of 55 bytes"
    assert exc.maybeProcessed is True
    assert [(f.seq, f.payload) for f in dataSent(transport)] == [(1, b"a"), (2, b"c")]
    proto.dataReceived(encode(Ack(2)))
    assert len(outboxOf(proto)) == 0
    last = proto.sendMessages([b"y" * 100])
    assert str(failureResultOf(last, DeliveryFailed).value) == (
        "message of 100 bytes exceeds the peer's maximum of 55 bytes"
    )


# -- losses ---------------------------------------------------------------------------


def test_lossFailsTheBatchOnce() -> None:
    """A loss before the ACK fails the batch once (maybeProcessed); no error left unhandled."""
    proto, transport, clock = opened(maxInFlight=2)
    with capturedLogs() as logs:
        before = proto.sendMessage(b"before")
        d = proto.sendMessages(payloads(5))  # 1 in flight, 4 queued
        after = proto.sendMessage(b"after")
        proto.dataReceived(encode(Ack(1)))  # room for one more
        assert successResultOf(before).seq == 1
        assert [f.seq for f in dataSent(transport)] == [1, 2, 3]
        proto.connectionLost(Failure(error.ConnectionLost("Connection lost")))
        loss = proto.loss
        assert loss is not None and loss.reason is Reason.RESET
        assert loss.unconfirmed == 6
        exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
        assert str(exc) == f"connection lost before confirmation ({loss})"
        assert exc.loss is loss
        assert exc.maybeProcessed is True
        assert exc.rejected is False
        afterExc = cast(DeliveryFailed, failureResultOf(after, DeliveryFailed).value)
        assert afterExc.maybeProcessed is False
        assert len(outboxOf(proto)) == 0
        del d, after, exc, afterExc
        gc.collect()
    assert [e for e in logs if "log_failure" in e] == []


def test_lossOverLinkBatchInFlight() -> None:
    """A reset while a batch is in flight fails its Deferred once; the peer got nothing."""
    link = openLink()
    link.stall(toServer=True, toClient=False)
    with capturedLogs() as logs:
        d = link.client.sendMessages(payloads(3))
        link.reset()
        link.flush()
        exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
        assert exc.maybeProcessed is True
        assert exc.loss is link.client.loss
        del d, exc
        gc.collect()
    assert [e for e in logs if "log_failure" in e] == []
    assert link.server.received == []
    assert [loss.reason for loss in link.client.losses] == [Reason.RESET]


def test_ackAfterProcessingLost() -> None:
    """A batch the peer processed whose ACK was lost fails (maybeProcessed), exactly once."""
    link = openLink()
    link.stall(toServer=False, toClient=True)
    d = link.client.sendMessages(payloads(4))
    link.flush()
    assert link.server.received == payloads(4)
    assertNoResult(d)
    link.reset()
    exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
    assert exc.maybeProcessed is True


# -- before HELLO -----------------------------------------------------------------------


def test_duringHandshake() -> None:
    """A batch sent before the HELLO exchange waits, then goes out after the peer's HELLO."""
    proto, transport, clock = lone()
    assert proto.state is State.HANDSHAKE
    d = proto.sendMessages(payloads(4))
    assert [type(f) for f in FrameDecoder().feed(transport.value())] == [Hello]
    assert len(outboxOf(proto).queue) == 4
    proto.dataReceived(helloFrom(window=2))
    assert [type(f) for f in FrameDecoder().feed(transport.value())] == [Hello, Data, Data]
    proto.dataReceived(encode(Ack(2)))
    assert [(f.seq, f.payload) for f in dataSent(transport)] == list(
        zip(range(1, 5), payloads(4), strict=True)
    )
    assertNoResult(d)
    proto.dataReceived(encode(Ack(4)))
    assert successResultOf(d).seq == 4


def test_duringHandshakeOverLink() -> None:
    """Batches and messages sent by both sides before HELLO completes arrive after it, in order."""
    link = FakeLink(Peer(), Peer())
    assert link.client.state is State.HANDSHAKE
    first = link.client.sendMessages(payloads(3))
    single = link.client.sendMessage(b"single")
    toClient = link.server.sendMessages(payloads(2, b"s"))
    link.flush()
    assert link.server.received == [*payloads(3), b"single"]
    assert link.client.received == payloads(2, b"s")
    assert successResultOf(first).seq == 3
    assert successResultOf(single).seq == 4
    assert successResultOf(toClient).seq == 2


def test_duringHandshakeQueueLimits() -> None:
    """Before HELLO the whole batch waits in the queue, so the queue's limits apply to all."""
    proto, transport, clock = lone(maxQueued=3)
    d = proto.sendMessages(payloads(4))
    assert str(failureResultOf(d, QueueFull).value) == (
        "send queue full: 4 messages sent together, 4 of which (8 bytes) would wait "
        "behind 0 in flight and 0 queued (0 bytes) (maxQueue=3, maxQueueBytes=67108864)"
    )
    assert len(outboxOf(proto)) == 0
    fits = proto.sendMessages(payloads(3))
    proto.dataReceived(helloFrom())
    proto.dataReceived(encode(Ack(3)))
    assert successResultOf(fits).seq == 3


# -- sessions that outlive a connection ---------------------------------------------------


class SessionPeer(Peer):
    """A ``Peer`` that records what it processes in its factory (across connections)."""

    heartbeatInterval = 1.0
    maxInFlight = 4

    def messageReceived(self, payload: bytes) -> object:
        self.factory.received.append(payload)
        return super().messageReceived(payload)


class RecordingServerFactory(AliveServerFactory):
    """A server factory whose protocols record, in it, what they process."""

    protocol = SessionPeer

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []


class RecordingClientFactory(AliveClientFactory):
    """A client factory of ``SessionPeer``s."""

    protocol = SessionPeer

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []


ADDRESS = IPv4Address("TCP", "127.0.0.1", 9000)


def connectFactories(
    server: Factory[Any], client: AliveClientFactory, clock: Clock
) -> FakeLink[Peer, Peer]:
    """A new connection between the factories' protocols, HELLOs exchanged."""
    serverProto = built(server, ADDRESS)
    clientProto = built(client, ADDRESS)
    assert isinstance(serverProto, Peer) and isinstance(clientProto, Peer)
    link = FakeLink(serverProto, clientProto, clock)
    link.flush()
    return link


@pytest.mark.parametrize("cut", ["before-arrival", "ack-lost", "mid-batch"])
def test_batchAcrossResume(cut: str) -> None:
    """A batch in flight across a cut is delivered exactly once on resume; one Receipt."""
    clock = Clock()
    server = RecordingServerFactory()
    client = RecordingClientFactory()
    link = connectFactories(server, client, clock)
    before = link.client.sendMessage(b"before")
    link.flush()
    if cut == "before-arrival":
        link.stall(toServer=True, toClient=False)
    elif cut == "ack-lost":
        link.stall(toServer=False, toClient=True)
    d = link.client.sendMessages(payloads(10))  # 4 in flight, 6 queued
    if cut == "mid-batch":
        # Half of the bytes written arrive: the cut falls inside the batch.
        written = bytes(link.clientTransport.outbound)
        link.clientTransport.outbound.clear()
        link.server.dataReceived(written[: len(written) // 2])
        assert server.received == [b"before", *payloads(2)]
    else:
        link.flush()
    link.reset()
    assertNoResult(d)
    link = connectFactories(server, client, clock)
    assert server.sessionsResumed == 1
    link.flush()
    assert server.received == [b"before", *payloads(10)]
    assert successResultOf(before).seq == 1
    assert successResultOf(d).seq == 11
    assert len(client.session.outbox) == 0
    after = link.client.sendMessages([b"after"])
    link.flush()
    assert successResultOf(after).seq == 12
    assert server.received == [b"before", *payloads(10), b"after"]


def test_batchSplitBySessionRestart() -> None:
    """A batch whose sent members were lost by a session restart fails; it has no Receipt."""
    clock = Clock()
    client = RecordingClientFactory()
    server = Factory.forProtocol(Peer)  # no sessions: every connection starts anew
    link = connectFactories(server, client, clock)
    link.stall(toServer=True, toClient=False)
    d = link.client.sendMessages(payloads(10))  # 1..4 in flight (lost), 5..10 queued
    link.flush()
    link.reset()
    link = connectFactories(server, client, clock)
    link.flush()
    # The first four were never processed by anyone...
    assert link.server.received == payloads(10)[4:]
    # ...so the batch must not report that all ten were.
    exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
    assert exc.maybeProcessed is True


def test_sessionEndsPingHalfAStepApart() -> None:
    """With sessions, the server's end PINGs half a grid step off the
    client's: an idle link carries one PING per interval."""
    clock = Clock()
    link = connectFactories(RecordingServerFactory(), RecordingClientFactory(), clock)
    server, client = link.server._alive, link.client._alive
    assert server is not None and client is not None
    assert (server.liveness.phase, client.liveness.phase) == (0.5, 0.0)
    link.advance(20.0)
    assert 20 <= server.liveness.pingId + client.liveness.pingId <= 22


def test_factoryBatchQueuedWhileDisconnected() -> None:
    """The client factory's sendMessages works before any connection: the
    batch waits in the session and goes out, in order, once connected."""
    clock = Clock()
    server = RecordingServerFactory()
    client = RecordingClientFactory()
    d = client.sendMessages(payloads(10))
    assertNoResult(d)
    assert len(client.session.outbox) == 10
    link = connectFactories(server, client, clock)
    link.flush()
    assert server.received == payloads(10)
    assert successResultOf(d).seq == 10
    later = client.sendMessages(iter([b"x", b"y"]))  # connected: any iterable
    link.flush()
    assert successResultOf(later).seq == 12
    assert server.received == [*payloads(10), b"x", b"y"]


def test_factoryBatchAcrossResume() -> None:
    """A factory batch cut in the middle is delivered exactly once after
    the reconnect, with one Receipt."""
    clock = Clock()
    server = RecordingServerFactory()
    client = RecordingClientFactory()
    link = connectFactories(server, client, clock)
    d = client.sendMessages(payloads(10))  # 4 in flight (the window), 6 queued
    written = bytes(link.clientTransport.outbound)
    link.clientTransport.outbound.clear()
    link.server.dataReceived(written[: len(written) // 2])
    link.reset()
    assertNoResult(d)
    link = connectFactories(server, client, clock)
    link.flush()
    assert server.received == payloads(10)
    assert successResultOf(d).seq == 10


def test_factoryBatchRejected() -> None:
    """The server's application failing on one member fails the factory's
    batch as rejected; the others were processed."""
    clock = Clock()
    server = RecordingServerFactory()
    client = RecordingClientFactory()
    link = connectFactories(server, client, clock)
    link.server.handler = fail("m2")
    d = client.sendMessages(payloads(5))
    link.flush()
    exc = cast(DeliveryFailed, failureResultOf(d, DeliveryFailed).value)
    assert exc.rejected
    assert str(exc).startswith("peer application failed on message 3 (1 of the 5 sent together)")
    assert server.received == payloads(5)


def test_factoryBatchAllOrNothing() -> None:
    """A factory batch that does not fit in the queue fails at once with
    QueueFull and queues nothing; bad payloads raise at once."""
    client = RecordingClientFactory()
    client.protocol = cast("type[SessionPeer]", type("Small", (SessionPeer,), {"maxQueued": 5}))
    client.sendMessages(payloads(3))
    failureResultOf(client.sendMessages(payloads(3)), QueueFull)
    assert len(client.session.outbox) == 3
    with pytest.raises(ValueError, match="needs at least one message"):
        client.sendMessages([])
    with pytest.raises(TypeError, match="payload must be bytes, not str"):
        client.sendMessages([b"ok", "text"])  # type: ignore[list-item]
    assert len(client.session.outbox) == 3


def test_factoryBatchFailsOnceWhenTheSessionEnds() -> None:
    """A queued factory batch fails once when the factory closes; after
    that, sendMessages fails at once."""
    client = RecordingClientFactory()
    d = client.sendMessages(payloads(5))
    client.close()
    exc = failureResultOf(d, DeliveryFailed).value
    assert "the session ended before confirmation" in str(exc)
    after = failureResultOf(client.sendMessages([b"late"]), DeliveryFailed).value
    assert str(after) == "the factory stopped trying; messages not sent"


# -- a real socket ----------------------------------------------------------------------



class Sink(HeartbeatProtocol):
    """Records every message it processes."""

    def __init__(self) -> None:
        self.received: list[bytes] = []

    def messageReceived(self, payload: bytes) -> None:
        self.received.append(payload)


class SinkFactory(BuiltProtocols, Factory):
    """Builds ``Sink``s and keeps them."""

    def __init__(self) -> None:
        BuiltProtocols.__init__(self)

    def buildProtocol(self, addr: object) -> Sink:
        proto = Sink()
        proto.factory = self
        return cast(Sink, self.record(proto))


@pytest.fixture
def listening() -> Iterator[tuple[SinkFactory, int]]:
    """A ``SinkFactory`` listening on 127.0.0.1 (port 0), and its port."""
    factory = SinkFactory()
    with listeningOn(factory) as port:
        yield factory, port


@pytest.mark.timeout(30)
@twistedTest
def test_loopbackFactoryBatchBeforeConnecting(
    listening: tuple[SinkFactory, int],
) -> Generator[Deferred[Any], Any, None]:
    """Over a real socket, a batch given to the client factory before it
    connects arrives in order, with one Receipt."""
    factory, port = listening
    client = forProtocol(AliveClientFactory, Sink)
    sent = [b"%050d" % i for i in range(2000)]
    d = client.sendMessages(sent)
    getReactor().connectTCP(HOST, port, client, timeout=5)
    try:
        receipt = yield d.addTimeout(10, getReactor())
        assert receipt.seq == 2000
        server = cast(Sink, (yield factory.connection(0)))
        assert server.received == sent
    finally:
        yield client.close()


@pytest.mark.timeout(30)
@twistedTest
def test_loopbackThreeBatches(
    listening: tuple[SinkFactory, int],
) -> Generator[Deferred[Any], Any, None]:
    """Over a real socket, 3 batches of 1,000 messages of 100 bytes arrive in order, 3 receipts."""
    factory, port = listening
    endpoint = TCP4ClientEndpoint(getReactor(), HOST, port, timeout=5)
    client = cast(Sink, (yield connectProtocol(endpoint, Sink())))
    try:
        yield client.whenOpened()
        sent = [[b"%0100d" % (b * 1000 + i) for i in range(1000)] for b in range(3)]
        assert all(len(p) == 100 for batch in sent for p in batch)
        receipts = yield gatherResults([client.sendMessages(batch) for batch in sent])
        assert [r.seq for r in receipts] == [1000, 2000, 3000]
        server = cast(Sink, (yield factory.connection(0)))
        assert server.received == [p for batch in sent for p in batch]
        loss = yield client.close()
        assert loss.reason is Reason.LOCAL_CLOSE
        serverLoss = yield server.whenLost()
        assert serverLoss.reason is Reason.CLEAN_CLOSE
    finally:
        if client.loss is None:
            client.transport.abortConnection()
