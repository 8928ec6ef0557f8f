"""
Heartbeats, loss reasons and delivery for protocols that don't know about
them: `AliveWrappingFactory` wraps any factory, the way Twisted's TLS
wrapper does. The classes are Twisted's `policies.ProtocolWrapper` and
`policies.WrappingFactory`, with the writes, the close and the flow control
replaced by the framed ones.

The wrapped protocol keeps its code. Its writes travel as DATA frames, it
receives the peer's bytes as before (one ``dataReceived`` per DATA frame),
heartbeats keep the connection honest, and its ``connectionLost`` receives a
failure that carries the classified `Loss` in ``.loss``. Both ends must be
wrapped.
"""

from __future__ import annotations

from collections import deque
from typing import Any, cast

from twisted.internet import defer
from twisted.internet._producer_helpers import _PullToPush
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IProtocol,
    IPushProducer,
)
from twisted.internet.protocol import ClientFactory, Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._mixin import HeartbeatMixin
from twisted_alive._reasons import Loss, failureFor
from twisted_alive.core.connection import State
from twisted_alive.core.frames import DEFAULT_MAX_FRAME_SIZE
from twisted_alive.core.outcomes import QueueFull

log = Logger(namespace="twisted_alive")


@implementer(IPushProducer)
class _SocketRoom:
    """
    The producer `AliveWrappingProtocol` registers with the real transport:
    the transport says through it when the socket's send buffer is full
    (``pauseProducing``) or has room again, and when it goes away.

    A separate object, because the wrapping protocol's own
    ``pauseProducing``/``resumeProducing`` belong to the wrapped protocol,
    which calls them on its transport to stop and restart reading.
    """

    def __init__(self, proto: AliveWrappingProtocol) -> None:
        self._proto = proto

    def pauseProducing(self) -> None:
        """The socket's send buffer is full."""
        self._proto._socketFull(True)

    def resumeProducing(self) -> None:
        """The socket's send buffer has room again."""
        self._proto._socketFull(False)

    def stopProducing(self) -> None:
        """The transport is going away: stop the wrapped protocol's producer."""
        producer = self._proto._producer
        if producer is not None:
            producer.stopProducing()


class _Relay(ProtocolWrapper):
    """
    ``ProtocolWrapper`` whose ``connectionLost`` (reached last, from
    `HeartbeatMixin.connectionLost`) gives the wrapped protocol the failure
    that carries the classified `Loss` rather than the transport's own.
    """

    lostWith: Failure | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Unregister, and tell the wrapped protocol (once) why it ended.
        ``wrappedProtocol`` stays set (``ProtocolWrapper`` clears it), so an
        application can still reach the protocol that ended."""
        wrapped = self.wrappedProtocol
        ProtocolWrapper.connectionLost(self, self.lostWith or reason)  # type: ignore[no-untyped-call]
        self.wrappedProtocol = wrapped


@implementer(IPushProducer)
class AliveWrappingProtocol(HeartbeatMixin, _Relay):
    """
    The protocol `AliveWrappingFactory` builds: the framing on the
    outside, a transport for the wrapped protocol on the inside.

    The wrapped protocol's ``write`` becomes DATA frames: each write of up
    to the largest payload both sides accept is one frame (one
    ``dataReceived`` call on the other side); a longer write is split. Until
    the HELLO exchange tells the peer's frame limit, writes wait whole.
    ``loseConnection`` becomes an orderly `close` (what was written is sent
    and acknowledged, then GOODBYE; writes after it are dropped) and
    ``abortConnection`` an `abort`.

    Flow control: a producer the wrapped protocol registers (streaming or
    not) is paused when the writes waiting to be sent reach half of
    ``maxQueued`` or half of ``maxQueuedBytes``, or the socket's buffer is
    full, and resumed once they are down to a quarter of both and the socket
    has room (`Outbox.isHigh`, `Outbox.isLow`); a write that would take the
    waiting bytes beyond ``maxQueuedBytes`` raises `QueueFull` and nothing of
    it is sent. When the wrapped protocol pauses reading (``pauseProducing``
    on its transport), the next DATA frame waits unacknowledged until it
    resumes, so the peer's window fills and the peer's producer is paused;
    heartbeats go on meanwhile, so a long pause is not a timeout.

    :ivar wrappedProtocol: the protocol of the wrapped factory.
    """

    factory: AliveWrappingFactory

    def __init__(self, factory: AliveWrappingFactory, wrappedProtocol: IProtocol) -> None:
        ProtocolWrapper.__init__(self, factory, wrappedProtocol)
        self.disconnecting = False
        self._producer: IPushProducer | None = None
        self._producerPaused = False
        self._socketPaused = False
        self._held: deque[bytes] = deque()
        self._heldOffset = 0
        self._heldBytes = 0
        self._closeWhenSent = False
        self._readPaused = False
        self._heldInbound: tuple[bytes, Deferred[None]] | None = None

    # -- protocol side -----------------------------------------------------

    def connectionMade(self) -> None:
        """Say HELLO, and learn from the real transport when its send buffer
        fills (``ProtocolWrapper.makeConnection`` then connects the wrapped
        protocol, with this object as its transport)."""
        super().connectionMade()
        self.transport.registerProducer(_SocketRoom(self), True)

    def connectionOpened(self, resumed: bool) -> None:
        """The peer's frame limit is known: send what was written."""
        self._feed()

    def messageReceived(self, payload: bytes) -> Deferred[None] | None:
        """The peer's bytes, to the wrapped protocol (or held, unacknowledged,
        while it has paused reading)."""
        if self._readPaused:
            d: Deferred[None] = Deferred()
            self._heldInbound = (payload, d)
            return d
        self.wrappedProtocol.dataReceived(payload)
        return None

    def disconnected(self, loss: Loss) -> None:
        """Drop what was not sent; the wrapped protocol hears of `loss` (a
        failure that carries it) from ``ProtocolWrapper.connectionLost``."""
        self._held.clear()
        self._heldOffset = self._heldBytes = 0
        self.lostWith = self.factory._lastFailure = failureFor(loss)
        self._producer = None

    def _sendRoom(self) -> None:
        self._feed()

    # -- transport side (what the wrapped protocol sees) --------------------------

    def write(self, data: bytes) -> None:
        """Send ``data`` in DATA frames.

        :raises QueueFull: if the bytes waiting to be sent would pass
            ``maxQueuedBytes``; nothing of ``data`` is sent then.
        """
        if not data or self.disconnecting or self.loss is not None:
            return
        conn = self._alive
        if conn is None:
            raise RuntimeError("write() before the connection was made")
        outbox = conn.session.outbox
        waiting = self._heldBytes + outbox.queuedBytes
        if waiting and waiting + len(data) > outbox.maxQueueBytes:
            raise QueueFull(
                f"send queue full: {waiting} bytes waiting to be sent "
                f"(maxQueuedBytes={outbox.maxQueueBytes}); "
                f"nothing of this write of {len(data)} bytes was queued"
            )
        self._held.append(bytes(data))
        self._heldBytes += len(data)
        self._feed()

    def writeSequence(self, data: list[bytes]) -> None:
        """Send the concatenation of ``data``."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Orderly close: what was written is sent and acknowledged, then
        GOODBYE."""
        if not self.disconnecting:
            self.disconnecting = True
            if self._held:
                self._closeWhenSent = True
            else:
                self.close()

    def abortConnection(self) -> None:
        """Abort at once (an RST; unsent data is dropped)."""
        self.disconnecting = True
        self.abort()

    def registerProducer(self, producer: IPushProducer, streaming: bool = True) -> None:
        """Register the wrapped protocol's producer (see the class doc); a
        non-streaming one is called as long as there is room.

        :raises RuntimeError: if a producer is registered already.
        """
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer "
                f"{self._producer!r} was never unregistered."
            )
        if self.loss is not None:
            producer.stopProducing()
            return
        if not streaming:
            # As Twisted's TLS wrapper does: call a pull producer's
            # resumeProducing as long as it is not paused. Twisted has no
            # public API for this (twisted.protocols.tls uses the same
            # private _PullToPush); a copy of it here would drift from it.
            pushing: Any = cast(Any, _PullToPush)(producer, self)
            producer = pushing
            pushing.startStreaming()
        self._producer = producer
        self._producerPaused = False
        self._updatePause()

    def unregisterProducer(self) -> None:
        """Forget the wrapped protocol's producer."""
        producer, self._producer = self._producer, None
        self._producerPaused = False
        if isinstance(producer, _PullToPush):
            producer.stopStreaming()

    def pauseProducing(self) -> None:
        """The wrapped protocol stops reading: DATA from the peer waits,
        unacknowledged, until `resumeProducing`."""
        self._readPaused = True

    def resumeProducing(self) -> None:
        """The wrapped protocol reads again: hand it what waited."""
        self._readPaused = False
        held, self._heldInbound = self._heldInbound, None
        if held is not None:
            payload, d = held
            defer.maybeDeferred(self.wrappedProtocol.dataReceived, payload).chainDeferred(d)

    def stopProducing(self) -> None:
        """The wrapped protocol asks to stop: close in order."""
        self.loseConnection()

    def loseWriteConnection(self) -> None:
        """A half-close can't be expressed inside the framing: it closes in
        order, like ``loseConnection``."""
        self.loseConnection()

    def __getattr__(self, name: str) -> Any:
        # Anything else a transport offers (getHandle, setTcpNoDelay...), as
        # ProtocolWrapper does; but no private names, and none before the
        # transport is there.
        if name.startswith("_") or "transport" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["transport"], name)

    # -- sending and flow control ------------------------------------------------

    def _feed(self) -> None:
        """Move written bytes into the send queue, in frames the peer
        accepts, as far as the queue has room; close once all is in, if
        asked to."""
        conn = self._alive
        if conn is not None and conn.state is State.OPEN and self.loss is None:
            outbox = conn.session.outbox
            size = conn.peerMaxPayload
            held = self._held
            offset = self._heldOffset
            moved = False
            while held and (not outbox.queue or len(outbox.queue) < outbox.maxQueue):
                data = held[0]
                chunk = data if offset == 0 and len(data) <= size else data[offset : offset + size]
                try:
                    outbox.submit(chunk, None)
                except QueueFull:
                    break
                moved = True
                self._heldBytes -= len(chunk)
                offset += len(chunk)
                if offset >= len(data):
                    held.popleft()
                    offset = 0
            self._heldOffset = offset
            if moved:
                self._pump()
            if not held and self._closeWhenSent:
                self._closeWhenSent = False
                self.close()
        self._updatePause()

    def _socketFull(self, full: bool) -> None:
        self._socketPaused = full
        self._updatePause()

    def _updatePause(self) -> None:
        producer = self._producer
        if producer is None:
            return
        # The session's queue levels (Outbox.isHigh, isLow), with the
        # writes held here in front of it, and the socket's own buffer.
        conn = self._alive
        outbox = conn.session.outbox if conn is not None else None
        held, heldBytes = len(self._held), self._heldBytes
        if not self._producerPaused:
            if self._socketPaused or (outbox is not None and outbox.isHigh(held, heldBytes)):
                self._producerPaused = True
                producer.pauseProducing()
        elif not self._socketPaused and (outbox is None or outbox.isLow(held, heldBytes)):
            self._producerPaused = False
            producer.resumeProducing()


class AliveWrappingFactory(WrappingFactory[AliveWrappingProtocol]):
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
    :ivar protocols: the live wrapping protocols (the keys; Twisted's
        ``WrappingFactory`` keeps a dict).
    """

    protocol = AliveWrappingProtocol

    def __init__(
        self,
        wrappedFactory: Factory[Any],
        heartbeatInterval: float = HeartbeatMixin.heartbeatInterval,
        heartbeatMisses: int = HeartbeatMixin.heartbeatMisses,
        maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self.heartbeatInterval = heartbeatInterval
        self.heartbeatMisses = heartbeatMisses
        self.maxFrameSize = maxFrameSize
        self._lastFailure: Failure | None = None

    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> AliveWrappingProtocol | None:
        """Wrap the protocol the wrapped factory builds, or refuse if it
        refuses (``WrappingFactory`` would wrap ``None``)."""
        wrapped = self.wrappedFactory.buildProtocol(addr)
        if wrapped is None:
            return None
        proto = AliveWrappingProtocol(self, wrapped)
        proto.heartbeatInterval = self.heartbeatInterval
        proto.heartbeatMisses = self.heartbeatMisses
        proto.maxFrameSize = self.maxFrameSize
        return proto

    # Client factory pass-through (for connectTCP and friends), as
    # WrappingFactory's but for a wrapped factory that is no ClientFactory.

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
