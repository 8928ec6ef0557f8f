"""
Fakes and fault injection for testing protocols built on twisted_alive.

- `FakeLink` connects two protocols in memory, driven by a
  ``twisted.internet.task.Clock``, with fault hooks: `FakeLink.cut` (both
  sides see a FIN), `FakeLink.reset` (both see an RST), `FakeLink.stall`
  (one or both directions stop delivering, the way a dead host or a
  partition looks), and `FakeLink.fragment` (deliver in pieces of *n* bytes).
  Deterministic: no sockets, no reactor, no sleeping. As with Twisted's own
  transports, ``abortConnection`` calls ``connectionLost`` later (at the
  next `FakeLink.flush`), never from inside the call.
- `ChaosProxy` (in ``twisted_alive.testing.chaos``, loaded only when used)
  is a fault-injecting TCP proxy over real loopback sockets (resets,
  stalls, half-closes, fragmentation, delay; seeded), also available as
  ``twisted-alive proxy``.

Example::

    from twisted_alive.testing import FakeLink

    link = FakeLink(MyServerProtocol(), MyClientProtocol())
    d = link.client.sendMessage(b"hello")
    link.flush()
    receipt = successResultOf(d)
    link.stall()                 # the server goes silent
    link.advance(20)             # the client declares TIMEOUT
    assert link.client.loss.reason is Reason.TIMEOUT

The Testing page of the documentation (``docs/testing.md``) has more.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IProducer,
    IProtocol,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["FakeLink", "FakeTransport", "ChaosProxy", "Faults", "parseFaults"]

_Server = TypeVar("_Server", bound=IProtocol)
_Client = TypeVar("_Client", bound=IProtocol)


@implementer(ITCPTransport, IConsumer, IPushProducer)
class FakeTransport:
    """
    One end of a `FakeLink`: a transport that hands what is written to the
    link instead of a socket.

    :ivar protocol: the protocol this transport carries.
    :ivar disconnecting: ``loseConnection`` was called.
    :ivar disconnected: the protocol saw ``connectionLost``.
    :ivar aborted: ``abortConnection`` was called.
    :ivar readClosed: the protocol received a FIN (``readConnectionLost``).
    :ivar writeClosed: ``loseWriteConnection`` was called.
    :ivar outbound: bytes written and not yet delivered.
    """

    def __init__(self, link: FakeLink[Any, Any], protocol: IProtocol, host: IPv4Address,
                 peer: IPv4Address) -> None:
        self.link = link
        self.protocol = protocol
        self.host = host
        self.peer = peer
        self.outbound = bytearray()
        self.disconnecting = False
        self.disconnected = False
        self.aborted = False
        self.readClosed = False
        self.writeClosed = False
        self._halfCloseDone = False
        self.readingPaused = False
        self.producer: IProducer | None = None

    def write(self, data: bytes) -> None:
        """Queue bytes for the peer (dropped after a close or abort)."""
        if not (self.disconnecting or self.disconnected or self.writeClosed):
            self.outbound += data

    def writeSequence(self, data: Iterable[bytes]) -> None:
        """Queue the concatenation of ``data``."""
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close after the queued bytes were delivered (a FIN)."""
        self.disconnecting = True

    def loseWriteConnection(self) -> None:
        """Half-close: the peer sees a FIN once the queued bytes were delivered."""
        self.writeClosed = True

    def abortConnection(self) -> None:
        """Close at once (an RST): queued bytes are dropped, nothing more is
        read, and ``connectionLost`` follows at the next `FakeLink.flush`
        (Twisted calls it in a later reactor iteration too)."""
        if self.disconnected or self.aborted:
            return
        self.aborted = self.disconnecting = True
        self.outbound.clear()

    def getPeer(self) -> IPv4Address:
        """The fake peer address."""
        return self.peer

    def getHost(self) -> IPv4Address:
        """The fake local address."""
        return self.host

    def getTcpNoDelay(self) -> bool:
        """Always true."""
        return True

    def setTcpNoDelay(self, enabled: bool) -> None:
        """Ignored."""

    def getTcpKeepAlive(self) -> bool:
        """Always false."""
        return False

    def setTcpKeepAlive(self, enabled: bool) -> None:
        """Ignored."""

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """Remember a producer (a fake socket never fills, so it is never paused)."""
        self.producer = producer

    def unregisterProducer(self) -> None:
        """Forget the producer."""
        self.producer = None

    def pauseProducing(self) -> None:
        """Stop delivering bytes to this transport's protocol."""
        self.readingPaused = True

    def resumeProducing(self) -> None:
        """Deliver bytes to this transport's protocol again."""
        self.readingPaused = False

    def stopProducing(self) -> None:
        """Same as ``loseConnection``."""
        self.loseConnection()


def _gone(transport: FakeTransport) -> bool:
    """Whether ``transport`` reads no more: it is closed or aborted, or it
    received a FIN (its peer can no longer write, except after a cut)."""
    return transport.disconnected or transport.aborted or transport.readClosed


class FakeLink(Generic[_Server, _Client]):
    """
    Two protocols connected in memory, with a `Clock` and fault hooks.

    Generic in the two protocol types, so that ``link.client`` has the
    type of the client protocol given.

    The server's ``makeConnection`` runs first, then the client's. Protocols
    with a ``clock`` attribute that is ``None`` get the link's clock, and so
    do their factories (``AliveClientFactory`` and ``AliveServerFactory``
    keep timers too), so that nothing in the test reads the real reactor.

    :param server: the server-side protocol.
    :param client: the client-side protocol.
    :param clock: the clock to use (a new ``Clock`` by default).
    :ivar clock: the ``Clock``; `advance` moves it and delivers bytes.
    :ivar server: the server-side protocol.
    :ivar client: the client-side protocol.
    """

    def __init__(self, server: _Server, client: _Client, clock: Clock | None = None) -> None:
        self.clock = clock if clock is not None else Clock()
        self.server = server
        self.client = client
        serverAddress = IPv4Address("TCP", "127.0.0.1", 9000)
        clientAddress = IPv4Address("TCP", "127.0.0.1", 50000)
        self.serverTransport = FakeTransport(self, server, serverAddress, clientAddress)
        self.clientTransport = FakeTransport(self, client, clientAddress, serverAddress)
        self._stalled: set[FakeTransport] = set()
        self._fragment = 0
        for proto in (server, client):
            owners: tuple[Any, ...] = (proto, getattr(proto, "factory", None))
            for owner in owners:
                if owner is not None and getattr(owner, "clock", False) is None:
                    owner.clock = self.clock
        server.makeConnection(self.serverTransport)
        client.makeConnection(self.clientTransport)

    def _peerOf(self, transport: FakeTransport) -> FakeTransport:
        return self.clientTransport if transport is self.serverTransport else self.serverTransport

    # -- delivery --------------------------------------------------------------

    def flush(self, maxRounds: int = 10_000) -> int:
        """
        Deliver queued bytes both ways until nothing moves (stalled
        directions hold theirs), then carry out pending closes. Calls due
        now on the clock (a protocol going on in the reactor's next turn,
        as after ``maxTurnTime`` of messages) run in between.

        :returns: the number of bytes delivered.
        """
        moved = 0
        for _ in range(maxRounds):
            step = self._deliver(self.clientTransport) + self._deliver(self.serverTransport)
            step += self._closes()
            if not step:
                now = self.clock.seconds()
                if not any(call.getTime() <= now for call in self.clock.getDelayedCalls()):
                    break
                self.clock.advance(0)
            moved += step
        return moved

    def _deliver(self, source: FakeTransport) -> int:
        target = self._peerOf(source)
        if source in self._stalled or not source.outbound:
            return 0
        if _gone(target):
            # Nobody will ever read these bytes: the peer's socket is
            # closed. A side that keeps writing to it gets an RST, as from a
            # real peer's kernel; one that is closing just finishes.
            dropped = len(source.outbound)
            source.outbound.clear()
            if not source.disconnecting:
                self._lost(source, ConnectionLost("Connection lost"))
            return dropped
        if target.readingPaused:
            return 0
        size = len(source.outbound) if not self._fragment else self._fragment
        moved = 0
        while source.outbound and not _gone(target) and not target.readingPaused:
            piece = bytes(source.outbound[:size])
            del source.outbound[:size]
            moved += len(piece)
            target.protocol.dataReceived(piece)
        return moved

    def _closes(self) -> int:
        changed = 0
        for source in (self.clientTransport, self.serverTransport):
            if source.aborted and not source.disconnected:
                changed += 1
                self._abort(source)
        for source in (self.clientTransport, self.serverTransport):
            target = self._peerOf(source)
            if source.disconnected or source.outbound:
                continue
            if source in self._stalled and not _gone(target):
                continue  # the FIN is held with the bytes
            if source.disconnecting:
                changed += 1
                self._lost(source, ConnectionDone("Connection done"))
                self._fin(target)
            elif source.writeClosed and not source._halfCloseDone:
                changed += 1
                source._halfCloseDone = True
                self._fin(target)
                if IHalfCloseableProtocol.providedBy(source.protocol):
                    source.protocol.writeConnectionLost()
        return changed

    def _fin(self, target: FakeTransport) -> None:
        """``target`` receives a FIN."""
        if target.disconnected or target.readClosed:
            return
        if IHalfCloseableProtocol.providedBy(target.protocol):
            target.readClosed = True
            target.protocol.readConnectionLost()
        else:
            self._lost(target, ConnectionDone("Connection done"))

    def _lost(self, transport: FakeTransport, reason: Exception) -> None:
        if transport.disconnected:
            return
        transport.disconnected = True
        transport.disconnecting = True
        transport.outbound.clear()
        transport.protocol.connectionLost(Failure(reason))  # type: ignore[no-untyped-call]

    def _abort(self, source: FakeTransport) -> None:
        self._lost(source, ConnectionAborted())
        # A stalled path loses the RST too; the peer learns of it when it
        # writes again after the stall (see _deliver), or not at all.
        if source not in self._stalled:
            self._lost(self._peerOf(source), ConnectionLost("Connection lost"))

    def advance(self, seconds: float, step: float = 0.01) -> None:
        """
        Move the clock forward by ``seconds`` in steps of ``step``,
        delivering bytes after each step (timers fire, then traffic flows).
        """
        remaining = seconds
        self.flush()
        while remaining > 1e-12:
            delta = min(step, remaining)
            self.clock.advance(delta)
            remaining -= delta
            self.flush()

    # -- faults --------------------------------------------------------------

    def cut(self) -> None:
        """Both sides receive a FIN, as when each side's peer closed (a
        crashed peer's kernel sends one too). Bytes in flight are lost."""
        for transport in (self.clientTransport, self.serverTransport):
            transport.outbound.clear()
        for transport in (self.clientTransport, self.serverTransport):
            self._fin(transport)
        self.flush()

    def reset(self) -> None:
        """Both sides see an RST (``ConnectionLost``). Bytes in flight are lost."""
        for transport in (self.clientTransport, self.serverTransport):
            self._lost(transport, ConnectionLost("Connection lost"))

    def stall(self, toServer: bool = True, toClient: bool = True) -> None:
        """
        Stop delivering in one or both directions: bytes are held, nothing
        arrives, no FIN, no RST — a stopped peer, a dead host, a partition.
        `unstall` delivers what was held.
        """
        if toServer:
            self._stalled.add(self.clientTransport)
        if toClient:
            self._stalled.add(self.serverTransport)

    def unstall(self) -> None:
        """Deliver in both directions again."""
        self._stalled.clear()

    def fragment(self, size: int) -> None:
        """Deliver in pieces of at most ``size`` bytes (0: whole writes)."""
        if size < 0:
            raise ValueError(f"fragment size must not be negative, got {size}")
        self._fragment = size

    @property
    def stalled(self) -> bool:
        """Whether any direction is stalled."""
        return bool(self._stalled)


_CHAOS = frozenset({"ChaosProxy", "Faults", "parseFaults"})


def __getattr__(name: str) -> Any:
    """``ChaosProxy``, ``Faults`` and ``parseFaults`` live in
    ``twisted_alive.testing.chaos`` (real sockets): imported on first use,
    so that importing the in-memory fakes never loads the proxy."""
    if name in _CHAOS:
        from twisted_alive.testing import chaos

        return getattr(chaos, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
