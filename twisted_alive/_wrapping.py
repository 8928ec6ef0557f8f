"""
Heartbeats, loss reasons and delivery for protocols that don't know about
them: `AliveWrappingFactory` wraps any factory, the way Twisted's TLS
wrapper does.

The wrapped protocol keeps its code. Its writes travel as DATA frames, it
receives the peer's bytes as before (one ``dataReceived`` per DATA frame),
heartbeats keep the connection honest, and its ``connectionLost`` receives a
failure that carries the classified `Loss` in ``.loss``. Both ends must be
wrapped.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from twisted_alive._frames import DEFAULT_MAX_FRAME_SIZE
from twisted_alive._mixin import HeartbeatMixin
from twisted_alive._outcomes import QueueFull
from twisted_alive._reasons import ConnectionDoneWithLoss, ConnectionLostWithLoss, Loss, Reason

log = Logger(namespace="twisted_alive")

def failureFor(loss: Loss) -> Failure:
    """
    The failure a wrapped protocol's ``connectionLost`` receives: a
    ``ConnectionDone`` (subclass) for an orderly close by either side, a
    ``ConnectionLost`` (subclass) for everything else; both carry ``.loss``.
    """
    orderly = loss.reason is Reason.CLEAN_CLOSE or (
        loss.reason is Reason.LOCAL_CLOSE
        and loss.failure is not None
        and loss.failure.check(ConnectionDone) is not None
    )
    if orderly:
        return Failure(ConnectionDoneWithLoss(loss))
    return Failure(ConnectionLostWithLoss(loss))


@implementer(IPushProducer)
class AliveWrappingProtocol(HeartbeatMixin, Protocol):
    """
    The protocol `AliveWrappingFactory` builds: the framing on the
    outside, a transport for the wrapped protocol on the inside.

    The wrapped protocol's ``write`` becomes DATA frames (split to fit
    ``maxFrameSize``), ``loseConnection`` becomes an orderly `close`
    (queued data is sent and acknowledged, then GOODBYE), and
    ``abortConnection`` an `abort`. A producer it registers is paused when
    the send queue passes half its limit or the socket's buffer is full, and
    resumed when both have room again; a write beyond the queue's limit
    raises `QueueFull`.

    :ivar wrappedProtocol: the protocol of the wrapped factory.
    """

    def __init__(self, factory: AliveWrappingFactory, wrappedProtocol: IProtocol) -> None:
        self.factory = factory
        self.wrappedProtocol = wrappedProtocol
        self.disconnecting = False
        self._producer: IPushProducer | None = None
        self._streaming = True
        self._transportPaused = False
        self._queuePaused = False

    # -- protocol side -----------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        """Connect, then give the wrapped protocol this object as transport."""
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        transport.registerProducer(self, True)
        self.factory.registerProtocol(self)
        self.wrappedProtocol.makeConnection(self)

    def messageReceived(self, payload: bytes) -> None:
        """The peer's bytes, to the wrapped protocol."""
        self.wrappedProtocol.dataReceived(payload)

    def disconnected(self, loss: Loss) -> None:
        """Tell the wrapped protocol, with a failure that carries `loss`."""
        self.factory.unregisterProtocol(self)
        failure = failureFor(loss)
        self.factory._lastFailure = failure
        self.wrappedProtocol.connectionLost(failure)
        self._producer = None

    def _sendRoom(self) -> None:
        self._updatePause()

    # -- transport side (what the wrapped protocol sees) --------------------------

    def write(self, data: bytes) -> None:
        """Send C{data} in DATA frames.

        :raises QueueFull: if the send queue is at its limit.
        """
        if not data or self.disconnecting or self.loss is not None:
            return
        conn = self._alive
        if conn is None:
            raise RuntimeError("write() before the connection was made")
        maxPayload = conn.settings.maxPayload
        outbox = conn.session.outbox
        view = memoryview(data)
        for start in range(0, len(data), maxPayload):
            chunk = bytes(view[start : start + maxPayload])
            outbox.submit(chunk, None)
        self._pump()
        self._updatePause()

    def writeSequence(self, data: list[bytes]) -> None:
        """Send the concatenation of C{data}."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Orderly close: queued data is sent and acknowledged, then GOODBYE."""
        if not self.disconnecting:
            self.disconnecting = True
            self.close()

    def abortConnection(self) -> None:
        """Abort at once (an RST; unsent data is dropped)."""
        self.disconnecting = True
        self.abort()

    def getPeer(self) -> IAddress:
        """The real transport's peer address."""
        return self.transport.getPeer()

    def getHost(self) -> IAddress:
        """The real transport's host address."""
        return self.transport.getHost()

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        """Register the wrapped protocol's producer (see the class doc)."""
        self._producer = producer
        self._streaming = streaming
        if not streaming:
            producer.resumeProducing()  # type: ignore[attr-defined]
        self._updatePause()

    def unregisterProducer(self) -> None:
        """Forget the wrapped protocol's producer."""
        self._producer = None

    def __getattr__(self, name: str) -> Any:
        # Anything else a transport offers (getHandle, setTcpNoDelay...).
        if name.startswith("_") or "transport" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["transport"], name)

    # -- flow control ----------------------------------------------------------

    def pauseProducing(self) -> None:
        """The socket's buffer is full."""
        self._transportPaused = True
        self._updatePause()

    def resumeProducing(self) -> None:
        """The socket's buffer has room again."""
        self._transportPaused = False
        self._updatePause()

    def stopProducing(self) -> None:
        """The transport is going away."""
        producer = self._producer
        if producer is not None:
            producer.stopProducing()

    def _updatePause(self) -> None:
        conn = self._alive
        if conn is not None:
            outbox = conn.session.outbox
            high = len(outbox.queue) >= max(1, outbox.maxQueue // 2) or (
                outbox.queuedBytes >= outbox.maxQueueBytes // 2
            )
            self._queuePaused = high
        producer = self._producer
        if producer is None:
            return
        shouldPause = self._transportPaused or self._queuePaused
        if shouldPause and not getattr(self, "_producerPaused", False):
            self._producerPaused = True
            producer.pauseProducing()
        elif not shouldPause and getattr(self, "_producerPaused", False):
            self._producerPaused = False
            if self._streaming:
                producer.resumeProducing()


class AliveWrappingFactory(Factory):
    """
    Wrap any server or client factory so that its protocols, unchanged,
    get heartbeats, loss classification and acknowledged delivery.

    ::

        factory = AliveWrappingFactory(LineChatFactory(), heartbeatInterval=2.0)
        reactor.listenTCP(9000, factory)

    Both ends must be wrapped. The wrapped protocol's ``connectionLost``
    receives a ``ConnectionDone`` (orderly close by either side) or
    ``ConnectionLost`` (anything else) whose value has a ``.loss``
    attribute with the `Loss`. Client factories keep working: their
    ``clientConnectionFailed``/``clientConnectionLost`` are called as
    before (the latter with the same failure as the protocol).

    :param wrappedFactory: the factory to wrap.
    :param heartbeatInterval: seconds of outbound silence before a PING.
    :param heartbeatMisses: peer intervals of silence before it is dead.
    :param maxFrameSize: the largest frame accepted; longer writes are split.
    :ivar protocols: the live wrapping protocols.
    """

    protocol = AliveWrappingProtocol  # type: ignore[assignment]

    def __init__(
        self,
        wrappedFactory: Factory,
        heartbeatInterval: float = HeartbeatMixin.heartbeatInterval,
        heartbeatMisses: int = HeartbeatMixin.heartbeatMisses,
        maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self.wrappedFactory = wrappedFactory
        self.heartbeatInterval = heartbeatInterval
        self.heartbeatMisses = heartbeatMisses
        self.maxFrameSize = maxFrameSize
        self.protocols: set[AliveWrappingProtocol] = set()
        self._lastFailure: Failure | None = None

    def logPrefix(self) -> str:
        """The wrapped factory's log prefix, marked as wrapped."""
        prefix = getattr(self.wrappedFactory, "logPrefix", None)
        name = prefix() if callable(prefix) else self.wrappedFactory.__class__.__name__
        return f"{name} (alive)"

    def doStart(self) -> None:
        """Start the wrapped factory too."""
        self.wrappedFactory.doStart()
        Factory.doStart(self)

    def doStop(self) -> None:
        """Stop the wrapped factory too."""
        self.wrappedFactory.doStop()
        Factory.doStop(self)

    def buildProtocol(self, addr: IAddress) -> AliveWrappingProtocol | None:
        """Wrap the protocol the wrapped factory builds (or refuse if it
        refuses)."""
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        proto = AliveWrappingProtocol(self, wrapped)
        proto.heartbeatInterval = self.heartbeatInterval
        proto.heartbeatMisses = self.heartbeatMisses
        proto.maxFrameSize = self.maxFrameSize
        return proto

    def registerProtocol(self, proto: AliveWrappingProtocol) -> None:
        """Track a live protocol."""
        self.protocols.add(proto)

    def unregisterProtocol(self, proto: AliveWrappingProtocol) -> None:
        """Forget a protocol that ended."""
        self.protocols.discard(proto)

    # Client factory pass-through (for connectTCP and friends).

    def startedConnecting(self, connector: IConnector) -> None:
        """Forwarded to the wrapped client factory."""
        if isinstance(self.wrappedFactory, ClientFactory):
            self.wrappedFactory.startedConnecting(connector)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """Forwarded to the wrapped client factory."""
        if isinstance(self.wrappedFactory, ClientFactory):
            self.wrappedFactory.clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        """Forwarded to the wrapped client factory, with the failure that
        carries the `Loss`."""
        failure, self._lastFailure = self._lastFailure, None
        if isinstance(self.wrappedFactory, ClientFactory):
            self.wrappedFactory.clientConnectionLost(connector, failure or reason)


__all__ = ["AliveWrappingFactory", "AliveWrappingProtocol", "QueueFull"]
