"""
Flow control for senders: a registered push producer is paused while the
send queue is high and resumed once it drained, on a protocol and on an
AliveClientFactory (connected or not).
"""

from __future__ import annotations

import pytest
from support import built, forProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive import (
    AliveClientFactory,
    AliveServerFactory,
    HeartbeatProtocol,
    QueueFull,
    Receipt,
)
from twisted_alive._binding import Pacer
from twisted_alive.core.delivery import Outbox
from twisted_alive.testing import FakeLink


@implementer(IPushProducer)
class Producer:
    """Records pause/resume calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class Small(HeartbeatProtocol):
    maxInFlight = 4
    maxQueued = 8


def test_pacerHysteresis() -> None:
    """The pacer pauses at half the queue limit and resumes at a quarter,
    once each way."""
    outbox = Outbox(window=1, maxQueue=8, maxQueueBytes=1 << 20)
    producer = Producer()
    pacer = Pacer(outbox, producer)
    for i in range(3):
        outbox.submit(b"x", i)
        pacer.check()
    assert producer.calls == []
    outbox.submit(b"x", 3)
    pacer.check()
    assert producer.calls == ["pause"]
    outbox.submit(b"x", 4)
    pacer.check()
    assert producer.calls == ["pause"]
    outbox.takeSendable(1, 0.0, 100)
    outbox.ack(1)
    outbox.takeSendable(1, 0.0, 100)
    outbox.ack(2)
    pacer.check()
    assert producer.calls == ["pause"]  # 3 queued: above a quarter of 8
    outbox.takeSendable(1, 0.0, 100)
    pacer.check()
    assert producer.calls == ["pause", "resume"]


def test_pacerBytes() -> None:
    """Half of the byte limit pauses too."""
    outbox = Outbox(window=1, maxQueue=1000, maxQueueBytes=100)
    producer = Producer()
    pacer = Pacer(outbox, producer)
    outbox.submit(b"x" * 60, None)
    pacer.check()
    assert producer.calls == ["pause"]


def test_protocolProducerPausedAndResumed() -> None:
    """A producer registered on a protocol is paused while messages pile up
    behind the window, and resumed when the peer's ACKs drained them; a
    sender that respects the pause never meets QueueFull."""
    link = FakeLink(HeartbeatProtocol(), Small())
    link.flush()
    client = link.client
    producer = Producer()
    client.registerProducer(producer)
    link.stall(toServer=False, toClient=True)  # no ACKs come back
    results: list[object] = []
    for i in range(8):
        client.sendMessage(b"%d" % i).addBoth(results.append)
        if producer.calls[-1:] == ["pause"]:
            break
    assert producer.calls == ["pause"]
    assert not any(isinstance(r, BaseException) for r in results)
    link.unstall()
    link.flush()
    assert producer.calls == ["pause", "resume"]
    assert len(results) == i + 1


def test_protocolRefusesPullProducerAndSecondProducer() -> None:
    """Only one push producer at a time; pull producers are refused."""
    link = FakeLink(HeartbeatProtocol(), Small())
    link.flush()
    with pytest.raises(ValueError, match=r"only push producers \(streaming=True\) can be paced"):
        link.client.registerProducer(Producer(), False)
    link.client.registerProducer(Producer())
    with pytest.raises(RuntimeError, match="a producer is registered already"):
        link.client.registerProducer(Producer())
    link.client.unregisterProducer()
    link.client.registerProducer(Producer())


def test_factoryProducerWhileDisconnected() -> None:
    """An AliveClientFactory pauses its producer while disconnected once
    the queue is half full, long before QueueFull."""
    factory = forProtocol(AliveClientFactory, Small)
    producer = Producer()
    factory.registerProducer(producer)
    sent: list[Deferred[Receipt]] = []
    for i in range(4):
        sent.append(factory.sendMessage(b"%d" % i))
    assert producer.calls == ["pause"]
    for i in range(4, 8):
        sent.append(factory.sendMessage(b"%d" % i))
    failure: list[Failure] = []
    factory.sendMessage(b"overflow").addErrback(failure.append)
    assert failure and failure[0].check(QueueFull)  # type: ignore[no-untyped-call]
    addr = IPv4Address("TCP", "127.0.0.1", 9000)
    server = forProtocol(AliveServerFactory, HeartbeatProtocol).buildProtocol(addr)
    client = built(factory, addr)
    link = FakeLink(server, client)
    link.flush()
    assert producer.calls == ["pause", "resume"]
    receipts: list[object] = []
    for d in sent:
        d.addCallback(receipts.append)
    assert len(receipts) == 8


def test_serverProducerRegisteredBeforeHelloPacesTheSession() -> None:
    """A producer registered on a server protocol before the client's HELLO
    paces the session the HELLO attaches."""
    addr = IPv4Address("TCP", "127.0.0.1", 9000)
    serverFactory = forProtocol(AliveServerFactory, Small)
    server = built(serverFactory, addr)
    client = forProtocol(AliveClientFactory, HeartbeatProtocol).buildProtocol(addr)
    link = FakeLink(server, client)
    producer = Producer()
    server.registerProducer(producer)
    link.flush()
    assert server._binding is not None and server._binding.pacer is not None
    link.stall(toServer=False, toClient=True)
    for i in range(8):
        server.sendMessage(b"%d" % i).addErrback(lambda f: None)
        if producer.calls:
            break
    assert producer.calls == ["pause"]
