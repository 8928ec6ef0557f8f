"""
The Twisted adapter: `HeartbeatMixin` and `HeartbeatProtocol`.

The mixin moves bytes between the transport and the sans-IO
`Connection`, keeps one timer (Twisted's ``TimeoutMixin``) armed for the
core's next deadline, calls the application, and turns the core's events
into Deferreds and hook calls. It records its own intent before it closes a
connection, so that every loss gets the right `Reason`.
"""

from __future__ import annotations

import errno
import inspect
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any, cast
from weakref import WeakKeyDictionary

from twisted.internet import defer, tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import BaseProtocol, Protocol, connectionDone
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._interfaces import ISessionHost
from twisted_alive._reasons import Cause, Loss, Reason, causeOf, classify
from twisted_alive._timers import wheelFor
from twisted_alive.core.connection import (
    Confirmed,
    Connection,
    Event,
    Expired,
    GoodbyeReceived,
    HelloReceived,
    Opened,
    PongReceived,
    Role,
    SessionUnknown,
    Settings,
    Stalled,
    State,
    Violation,
)
from twisted_alive.core.delivery import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_WINDOW,
    Entry,
    Inbox,
    Pacer,
    Session,
)
from twisted_alive.core.frames import DATA_OVERHEAD, DEFAULT_MAX_FRAME_SIZE, GoodbyeCode
from twisted_alive.core.liveness import STALL_THRESHOLD
from twisted_alive.core.outcomes import DeliveryFailed, QueueFull, Receipt
from twisted_alive.core.rejections import RejectionLog, Report

log = Logger(namespace="twisted_alive")

# Looked up once: in Python 3.11 each ``State.X`` goes through the enum
# metaclass (about 0.1 us), too slow for the per-message paths.
_HANDSHAKE = State.HANDSHAKE
_OPEN = State.OPEN
_FAILED = State.FAILED

_GOODBYE_REASONS = {
    GoodbyeCode.PROTOCOL_ERROR: Reason.PROTOCOL_ERROR,
}

STALL_LOG_EVERY = 1.0
"""Seconds between two stall warnings of one clock (see ``_stalled``)."""

_stallLogs: WeakKeyDictionary[IReactorTime, list[Any]] = WeakKeyDictionary()

_pongWatchers = [0]
"""How many status sites want ``pong`` events (see `watchPongs`)."""


def watchPongs(on: bool) -> None:
    """
    Ask for (``True``) or release (``False``) the ``pong`` log event of
    every connection of the process, whatever their ``logPongs``: a status
    site feeds its RTT histogram from them while it listens.
    """
    _pongWatchers[0] = max(0, _pongWatchers[0] + (1 if on else -1))


ABORT_GRACE = 2.0
"""Seconds a closing connection may take to flush before it is aborted."""

TURN_CHECK_EVERY = 16
"""Messages handed to the application between two looks at the time spent
in this turn of the reactor (`HeartbeatMixin.maxTurnTime`)."""

SERVER_MAX_PEER_INTERVAL = 60.0
"""The default `HeartbeatMixin.maxPeerInterval` of a side that accepted the
connection: a client may not make a server wait longer than 3 x 60 s for a
sign of life."""

CLIENT_MAX_PEER_INTERVAL = 3600.0
"""The default `HeartbeatMixin.maxPeerInterval` of a side that made the
connection (it chose its server)."""

_rejectionLogs: WeakKeyDictionary[IReactorTime, RejectionLog] = WeakKeyDictionary()


def unsentBytes(transport: Any) -> int | None:
    """
    The bytes ``transport`` holds that the kernel has not taken yet: what a
    reactor's TCP connection keeps in its buffers, plus what a TLS
    transport keeps above it; ``None`` for a transport of another kind
    (nothing is known, so nothing is bounded).
    """
    extra = 0
    for _ in range(3):
        if transport is None:
            return None
        buffer = getattr(transport, "dataBuffer", None)
        if buffer is not None and hasattr(transport, "_tempDataLen"):
            return (
                extra
                + len(buffer)
                - int(getattr(transport, "offset", 0))
                + int(transport._tempDataLen)
            )
        pending = getattr(transport, "_appSendBuffer", None)
        if pending:
            extra += sum(map(len, pending))
        transport = getattr(transport, "transport", None)
    return None


def describeSize(size: int) -> str:
    """A size in bytes, or in MiB (to a tenth) from 1 MiB up."""
    if size < 1048576:
        return f"{size} bytes"
    return f"{size / 1048576:.1f} MiB"


def describeAddress(address: Any) -> str | None:
    """``host:port`` for an IPv4/IPv6 address, ``str()`` of anything else."""
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    return None if address is None else str(address)


def canWriteThrough(transport: object) -> bool:
    """
    Whether ``transport`` is a reactor's TCP connection, whose socket
    `HeartbeatMixin` may write to directly when the transport holds nothing
    unsent (see ``HeartbeatMixin._writeNow``).
    """
    return isinstance(transport, tcp.Connection) and all(
        hasattr(transport, name)
        for name in (
            "socket",
            "_tempDataLen",
            "dataBuffer",
            "TLS",
            "_writeDisconnecting",
            "_writeDisconnected",
        )
    )


class BatchDeferred(Deferred[Receipt]):
    """
    The Deferred of messages sent together (`HeartbeatMixin.sendMessages`),
    held by the last one's entry; the others hold its ``member``. The
    others' rejections are looked up by sequence number, within the
    ``count`` before the last.
    """

    __slots__ = ("count", "member")

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.member = BatchMember(self)


class BatchMember:
    """
    The handle of a message sent together with others, but not the last:
    it has no Deferred of its own (``called`` is always true, so code that
    settles handles passes it by).
    """

    __slots__ = ("batch",)
    called = True

    def __init__(self, batch: BatchDeferred) -> None:
        self.batch = batch


def failDelivery(entry: Entry, message: str, loss: Loss | None) -> None:
    """Fail the Deferred of an unconfirmed entry (for one of several
    messages sent together, their shared Deferred)."""
    handle = entry.handle
    member = type(handle) is BatchMember
    d = cast("Deferred[Receipt] | None", handle.batch if member else handle)
    if d is not None and not d.called:
        # A member met first tells by its own seq whether the batch went
        # out; the last one alone (too large for the peer) may follow
        # members that were sent.
        maybe = entry.seq != 0 or (not member and type(d) is BatchDeferred and d.count > 1)
        d.errback(DeliveryFailed(message, loss, maybeProcessed=maybe))


@implementer(IHalfCloseableProtocol)
class HeartbeatMixin(TimeoutMixin):
    """
    Heartbeats, loss classification and confirmed delivery for a Twisted
    protocol. List it before ``Protocol`` in the bases (the other order
    raises ``TypeError`` when the class is created)::

        class Chat(HeartbeatMixin, Protocol):
            def messageReceived(self, payload):
                ...

    The transport carries the twisted_alive framing (``docs/protocol.md``):
    use `sendMessage` to send, override `messageReceived` to receive and
    `disconnected` to learn why the connection ended. Subclasses that
    override ``connectionMade``, ``dataReceived`` or ``connectionLost`` must
    call the base method. The mixin owns ``TimeoutMixin``'s timer: do not
    call ``setTimeout`` yourself.

    :cvar heartbeatInterval: seconds of outbound silence before a PING; this
        side promises the peer a frame at least this often (announced in
        HELLO).
    :cvar heartbeatMisses: the peer counts as dead after its interval times
        this many seconds of silence.
    :cvar maxFrameSize: the largest frame accepted, in bytes after the
        length prefix; a message may be up to ``maxFrameSize - 9`` bytes.
    :cvar maxInFlight: messages sent but not yet confirmed, at most (the
        window; also the receive window announced to the peer).
    :cvar maxQueued: messages waiting behind the window, at most.
    :cvar maxQueuedBytes: payload bytes waiting behind the window, at most.
    :cvar minPeerInterval: the smallest heartbeat interval accepted from the
        peer, in seconds.
    :cvar maxPeerInterval: the largest heartbeat interval accepted from the
        peer, in seconds; ``None`` (the default) for 60 s on the side that
        accepted the connection (`SERVER_MAX_PEER_INTERVAL`) and 3,600 s on
        the side that made it (`CLIENT_MAX_PEER_INTERVAL`).
    :cvar closeTimeout: seconds `close` waits for outstanding
        acknowledgements before it closes anyway.
    :cvar maxUnsentBytes: bytes this side lets wait in the transport for a
        peer that does not read, beyond the DATA frames in flight (which
        the window bounds): past it the connection is aborted, `Reason`
        ``TIMEOUT`` "peer stopped reading". The connection is aborted too
        when the transport could not hand anything to the kernel for the
        peer's deadline. Never less than two frames of ``maxFrameSize``.
    :cvar maxTurnTime: seconds of `messageReceived` calls for one
        connection in one turn of the reactor, at most (looked at every
        `TURN_CHECK_EVERY` messages); past it, reading from the transport
        pauses and the rest follows in the next turn, so that one
        connection's flood does not starve the others.
    :cvar logPongs: log a ``pong`` event (debug) at every heartbeat round
        trip. Off by default: an event costs more than the round trip
        itself. A listening status site turns them on for every connection
        (its RTT histogram is fed by them).
    :cvar tcpNoDelay: set ``TCP_NODELAY`` on the transport (where it has
        ``setTcpNoDelay``) when the connection is made, so that small frames
        (ACKs, PINGs) are not held back by Nagle's algorithm.
    :ivar clock: the ``IReactorTime`` used for timers; the global reactor
        unless set before the connection is made.
    :ivar loss: the `Loss`, once the connection has ended; ``None`` before.
    """

    heartbeatInterval: float = 5.0
    heartbeatMisses: int = 3
    maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE
    maxInFlight: int = DEFAULT_WINDOW
    maxQueued: int = DEFAULT_MAX_QUEUE
    maxQueuedBytes: int = DEFAULT_MAX_QUEUE_BYTES
    minPeerInterval: float = 0.1
    maxPeerInterval: float | None = None
    closeTimeout: float = 10.0
    maxUnsentBytes: int = 4 * 1048576
    maxTurnTime: float = 0.001
    logPongs: bool = False
    tcpNoDelay: bool = True

    clock: IReactorTime | None = None
    loss: Loss | None = None

    transport: Any
    factory: Any

    _alive: Connection | None = None
    _cause: tuple[Reason, str, GoodbyeCode | None, Cause | None] | None = None
    _closing: str | None = None
    _connectedAt = 0.0
    _armedFor = 0.0
    _abortCall: IDelayedCall | None = None
    _closeCall: IDelayedCall | None = None
    _lostWaiters: list[Deferred[Loss]] | None = None
    _openWaiters: list[Deferred[None]] | None = None
    _peer: str | None = None
    _written = 0
    _unsentSeen = 0
    _writtenSeen = 0
    _stuckSince: float | None = None
    _turnCall: IDelayedCall | None = None
    _pausedReading = False
    _gaveUp = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a class that lists a ``Protocol`` before the mixin: that
        protocol's ``connectionMade``, ``dataReceived`` and
        ``connectionLost`` would hide the mixin's, and nothing would work.

        :raises TypeError: naming the fix.
        """
        super().__init_subclass__(**kwargs)
        for base in cls.__mro__[1:]:
            if base is HeartbeatMixin:
                break
            if issubclass(base, BaseProtocol) and not issubclass(base, HeartbeatMixin):
                raise TypeError(
                    f"{cls.__qualname__} lists {base.__name__} before HeartbeatMixin, so "
                    f"{base.__name__}'s connectionMade/dataReceived/connectionLost hide the "
                    f"mixin's: list HeartbeatMixin before {base.__name__}: "
                    f"class {cls.__name__}(HeartbeatMixin, {base.__name__})"
                )

    def _notSetUp(self, what: str) -> RuntimeError:
        """The error of ``what`` called before `connectionMade` set the
        connection up."""
        if getattr(self, "transport", None) is None:
            return RuntimeError(f"{what} called before the connection was made")
        return RuntimeError(
            f"{what} called before the connection was set up: did the subclass's "
            "connectionMade() call super().connectionMade() (before using the connection)?"
        )

    # -- configuration -----------------------------------------------------

    def _clock(self) -> IReactorTime:
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = cast(IReactorTime, reactor)
        return clock

    def callLater(self, period: float, func: Any) -> IDelayedCall:
        """
        ``TimeoutMixin``'s timer, on a timer wheel kept per `clock`: the
        timers of all connections due in the same millisecond share one
        call of the reactor, and moving one is a dictionary operation.
        """
        return wheelFor(self._clock()).callLater(period, func)

    def aliveSettings(self) -> Settings:
        """
        The `Settings` of a new connection, from the class attributes.

        :raises ValueError: for an invalid setting (the message names it).
        """
        return Settings(
            interval=self.heartbeatInterval,
            misses=self.heartbeatMisses,
            maxFrameSize=self.maxFrameSize,
            window=self.maxInFlight,
            maxQueue=self.maxQueued,
            maxQueueBytes=self.maxQueuedBytes,
            minPeerInterval=self.minPeerInterval,
            maxPeerInterval=self._maxPeerInterval(),
        )

    def _maxPeerInterval(self) -> float:
        """`maxPeerInterval`, or its default for this side's role."""
        if self.maxPeerInterval is not None:
            return self.maxPeerInterval
        if self._accepting():
            return SERVER_MAX_PEER_INTERVAL
        return CLIENT_MAX_PEER_INTERVAL

    def _accepting(self) -> bool:
        """Whether this side accepted the connection (a server)."""
        host = self._host()
        if host is not None:
            return bool(host.role is Role.SERVER)
        transport = getattr(self, "transport", None)
        for _ in range(3):
            if transport is None:
                return False
            if isinstance(transport, tcp.Server):
                return True
            transport = getattr(transport, "transport", None)
        return False

    def _host(self) -> Any:
        factory = getattr(self, "factory", None)
        return factory if ISessionHost.providedBy(factory) else None

    # -- public API ----------------------------------------------------------

    @property
    def rtt(self) -> float | None:
        """The smoothed round-trip time in seconds (from PING/PONG), or
        ``None`` before the first sample."""
        return self._alive.liveness.srtt if self._alive is not None else None

    @property
    def session(self) -> Session | None:
        """The delivery session this connection carries (``None`` before the
        connection is made)."""
        return self._alive.session if self._alive is not None else None

    @property
    def state(self) -> State | None:
        """The protocol state (``None`` before the connection is made)."""
        return self._alive.state if self._alive is not None else None

    @property
    def lastHeard(self) -> float | None:
        """Clock time at which the peer was last heard from."""
        return self._alive.liveness.lastReceived if self._alive is not None else None

    def sendMessage(self, payload: bytes) -> Deferred[Receipt]:
        """
        Send one message; it reaches the peer's `messageReceived` once, in
        order.

        :param payload: the message, at most ``maxFrameSize - 9`` bytes.
        :returns: a Deferred that fires with a `Receipt` once the peer's
            application processed the message, or fails with
            `DeliveryFailed` (the connection ended first, or the peer's
            application failed on it) or `QueueFull` (at once: the send
            queue is at its limit and nothing was queued).
        :raises TypeError: if ``payload`` is not ``bytes``.
        :raises ValueError: if ``payload`` is larger than a frame allows.
        :raises RuntimeError: before the connection is set up (by
            `connectionMade`), or after this side called `close`.
        """
        conn = self._alive
        if conn is None:
            raise self._notSetUp("sendMessage()")
        if type(payload) is not bytes or len(payload) > conn.settings.maxPayload:
            checkPayload(payload, conn.settings)
        refused = self._refused(conn, "message")
        if refused is not None:
            return refused
        d: Deferred[Receipt] = Deferred()
        now = self._clock().seconds()
        try:
            conn.send(payload, d, now)
        except QueueFull as e:
            return defer.fail(e)
        self._sent(conn, now)
        return d

    def sendMessages(self, payloads: Iterable[bytes]) -> Deferred[Receipt]:
        """
        Send several messages, in order, with one receipt for all of them:
        the cheap way to send many. Each reaches the peer's
        `messageReceived` once, in order, exactly as if sent one by one with
        `sendMessage`; but no Deferred and no `Receipt` is made per message.

        :param payloads: the messages (at least one), each at most
            ``maxFrameSize - 9`` bytes.
        :returns: a Deferred that fires with the `Receipt` of the last
            message once the peer's application processed all of them; or
            fails with `DeliveryFailed` if the connection ended first or the
            peer's application failed on one of them (``rejected``; the
            others were processed), or at once with `QueueFull` if they do
            not all fit in the send queue (then none was queued).
        :raises TypeError: if a payload is not ``bytes``.
        :raises ValueError: if there is no payload, or one is larger than a
            frame allows.
        :raises RuntimeError: before the connection is set up (by
            `connectionMade`), or after this side called `close`.
        """
        conn = self._alive
        if conn is None:
            raise self._notSetUp("sendMessages()")
        payloads = checkPayloads(payloads, conn.settings)
        refused = self._refused(conn, "messages")
        if refused is not None:
            return refused
        d = BatchDeferred(len(payloads))
        now = self._clock().seconds()
        try:
            conn.sendMany(payloads, d, d.member, now)
        except QueueFull as e:
            return defer.fail(e)
        self._sent(conn, now)
        return d

    def _refused(self, conn: Connection, what: str) -> Deferred[Receipt] | None:
        """The failure of a send that may not go out now (``what`` names
        the message or messages), or ``None`` if it may.

        :raises RuntimeError: if this side called `close`: sending after
            one's own close is a programming error, reported at once rather
            than as a failed Deferred that nobody may be watching.
        """
        if self._closing == "local":
            api = "sendMessage()" if what == "message" else "sendMessages()"
            raise RuntimeError(f"{api} called after close()")
        if self.loss is not None:
            return defer.fail(
                DeliveryFailed(f"connection already lost ({self.loss})", self.loss)
            )
        if self._closing is not None or (conn.state is not _OPEN and conn.state is not _HANDSHAKE):
            return defer.fail(DeliveryFailed(f"connection is closing; {what} not sent"))
        return None

    def _sent(self, conn: Connection, now: float) -> None:
        """After a send: write its frames (unless a read burst will), fail
        what is too large for the peer, and tell a registered producer."""
        if not conn.reading:
            data = conn.dataToSend(now)
            if data:
                # The application's DATA (the window bounds it): no check
                # per message; the timer checks that the peer reads.
                self.transport.write(data)
                self._written += len(data)
        session = conn.session
        if session.outbox.tooLarge:
            self._failTooLarge()
        if session.pacer is not None:
            session.pacer.check()

    def _pump(self) -> None:
        """Write what the windows allow of the queued messages."""
        conn = self._alive
        if conn is not None and conn.state is _OPEN and self.loss is None:
            conn.pump(self._clock().seconds())
            self._flush()
            self._failTooLarge()

    def messageReceived(self, payload: bytes) -> Deferred[object] | object:
        """
        Override: a message from the peer, in order, exactly once.

        The message counts as processed (and the peer's `sendMessage`
        Deferred fires) when this returns, or, if it returns a Deferred,
        when that fires. Until then the next message waits. If it raises or
        its Deferred fails, the error is logged, the message counts as
        processed, and the peer's Deferred fails with `DeliveryFailed`
        (``rejected=True``) carrying the error's text: a message that makes
        the application fail is reported, never silently lost, and never
        redelivered in a loop.
        """
        return None

    def disconnected(self, loss: Loss) -> None:
        """Override: the connection ended, for the reason in ``loss``.
        Called once."""

    def connectionOpened(self, resumed: bool) -> None:
        """Override: the HELLO exchange completed; ``resumed`` tells whether a
        session was resumed."""

    def whenLost(self) -> Deferred[Loss]:
        """A Deferred that fires with the `Loss` when the connection ends
        (at once if it has)."""
        if self.loss is not None:
            return defer.succeed(self.loss)
        if self._lostWaiters is None:
            self._lostWaiters = []
        d: Deferred[Loss] = Deferred()
        self._lostWaiters.append(d)
        return d

    def whenOpened(self) -> Deferred[None]:
        """A Deferred that fires when the HELLO exchange has completed, or
        fails with `DeliveryFailed` if the connection ends first."""
        conn = self._alive
        if conn is not None and conn.peerHello is not None and conn.state is not State.FAILED:
            return defer.succeed(None)
        if self.loss is not None:
            return defer.fail(DeliveryFailed(f"connection lost ({self.loss})", self.loss))
        if self._openWaiters is None:
            self._openWaiters = []
        d: Deferred[None] = Deferred()
        self._openWaiters.append(d)
        return d

    def close(self, code: GoodbyeCode = GoodbyeCode.NORMAL, reason: str = "") -> Deferred[Loss]:
        """
        Close in order: send what is queued, then GOODBYE, wait (at most
        `closeTimeout` seconds) for the peer to acknowledge everything, then
        close the TCP connection. Messages still unconfirmed then fail with
        `DeliveryFailed`.

        :param code: the GOODBYE code (``SHUTTING_DOWN`` and ``GO_AWAY`` tell
            a reconnecting client whether to come back).
        :param reason: a text for the peer's logs.
        :returns: a Deferred that fires with the `Loss` (`Reason.LOCAL_CLOSE`)
            once the connection is closed (with the earlier `Loss` if it had
            ended already), or fails at once with ``RuntimeError`` if the
            connection is not set up yet (there is nothing to close).
        """
        if self._alive is None and self.loss is None:
            return defer.fail(self._notSetUp("close()"))
        d = self.whenLost()
        if self.loss is not None or self._closing == "local":
            return d
        self._setCause(Reason.LOCAL_CLOSE, f"closed by this side (GOODBYE {code.name})")
        self._closing = "local"
        self._goodbye = (code, reason)
        self._startCloseTimer()
        self._checkClose()
        return d

    def abort(self, detail: str = "aborted by this side") -> None:
        """Abort the connection now (an RST, no GOODBYE): `Reason.LOCAL_CLOSE`."""
        if self.loss is None:
            self._setCause(Reason.LOCAL_CLOSE, detail)
            self.transport.abortConnection()

    # -- Twisted protocol --------------------------------------------------

    def connectionMade(self) -> None:
        """Start the HELLO exchange and the heartbeat timer."""
        clock = self._clock()
        now = clock.seconds()
        self._connectedAt = now
        self._peer = describeAddress(self.transport.getPeer())
        host = self._host()
        settings = self.aliveSettings()
        if host is None:
            conn = Connection(settings, Role.PEER, now, phase=addressPhase(self.transport))
        elif host.role is Role.CLIENT:
            conn = Connection(settings, Role.CLIENT, now, host.clientSession())
        else:
            conn = Connection(settings, Role.SERVER, now, phase=0.5)
        self._alive = conn
        conn.writeThrough = canWriteThrough(self.transport)
        if self.tcpNoDelay:
            setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
            if setNoDelay is not None:
                try:
                    setNoDelay(True)
                except OSError:
                    pass
        if host is not None:
            host.connectionStarted(self)
        log.debug(
            "alive.connected: {peer} as {role}",
            peer=self._peer,
            role=conn.role.value,
            event="connected",
        )
        self._flush()
        self._arm()
        super().connectionMade()  # type: ignore[misc]

    def dataReceived(self, data: bytes) -> None:
        """Feed the core; act on what it says."""
        conn = self._alive
        if conn is None or conn.state is _FAILED:
            return
        now = self._clock().seconds()
        # What is sent while this burst is read (ACKs, PONGs, replies sent
        # by messageReceived or by receipt callbacks) leaves in one write.
        conn.reading = True
        try:
            events = conn.receiveData(data, now)
            if events:
                self._handleEvents(events)
            session = conn.session
            if session.inbox.pending and not session.busy and session.current is self:
                self._process()
                now = self._clock().seconds()
        finally:
            conn.reading = False
        out = conn.dataToSend(now)
        if out and self.loss is None:
            self._writeNow(out)
        if self._closing is not None:
            self._checkClose()

    def readConnectionLost(self) -> None:
        """The peer shut its write side (FIN): not dead, but it will not
        speak again. Finish what was received, then close."""
        if self._alive is not None and self._alive.state is not State.PEER_CLOSING:
            self._setCause(Reason.PEER_CLOSED, "peer closed the connection without GOODBYE")
        if self._closing is None:
            self._closing = "peer"
        self._readClosed = True
        self._startCloseTimer()
        self._checkClose()

    def writeConnectionLost(self) -> None:
        """This side's write half is closed; nothing to do."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Classify the loss, settle every pending Deferred, then call
        `disconnected`."""
        self._setTimer(None)
        for call in (self._abortCall, self._closeCall, self._turnCall):
            if call is not None and call.active():
                call.cancel()
        self._abortCall = self._closeCall = self._turnCall = None
        now = self._clock().seconds()
        conn = self._alive
        cause = self._cause
        if cause is None:
            if getattr(self.transport, "disconnecting", False) and isinstance(
                reason.value, ConnectionDone
            ):
                cause = (Reason.LOCAL_CLOSE, "closed by this side", None, None)
            else:
                kind = classify(reason)
                config = causeOf(reason)  # a failed TLS handshake
                if config is None:
                    cause = (kind, describeFailure(kind, reason), None, None)
                else:
                    cause = (kind, config[1], None, config[0])
        unconfirmed = len(conn.session.outbox) if conn is not None else 0
        loss = Loss(
            reason=cause[0],
            detail=cause[1],
            failure=reason,
            goodbye=cause[2],
            peer=self._peer,
            connectedFor=now - self._connectedAt,
            unconfirmed=unconfirmed,
            cause=cause[3],
        )
        self.loss = loss
        log.info(
            "alive.lost: {peer} {reason}: {detail} after {duration:.3f} s (rtt {rtt})",
            peer=self._peer,
            reason=loss.reason.name,
            detail=loss.detail,
            duration=loss.connectedFor,
            rtt=self.rtt,
            unconfirmed=unconfirmed,
            event="lost",
        )
        if conn is not None:
            session = conn.session
            if session.current is self:
                session.current = None
            host = self._host()
            if host is not None:
                host.sessionLost(self, loss)
            else:
                session.pacer = None
                for entry in session.outbox.drain():
                    failDelivery(entry, f"connection lost before confirmation ({loss})", loss)
        for d in self._openWaiters or ():
            d.errback(DeliveryFailed(f"connection lost before HELLO completed ({loss})", loss))
        self._openWaiters = None
        try:
            self.disconnected(loss)
        finally:
            for waiter in self._lostWaiters or ():
                waiter.callback(loss)
            self._lostWaiters = None
            super().connectionLost(reason)  # type: ignore[misc]

    def timeoutConnection(self) -> None:
        """``TimeoutMixin``'s timer fired: ask the core what liveness needs."""
        conn = self._alive
        if conn is None or self.loss is not None:
            return
        clock = self._clock()
        now = clock.seconds()
        # Time spent on the timers due with this one is no stall.
        running = wheelFor(clock).runningSince
        late = now - self._armedFor
        if late > 0.0 and self._stuckSince is not None:
            # As for liveness: while this process did not run, the transport
            # could not write either; that is not the peer's doing. After a
            # stall, the transport gets a turn to write before it is judged.
            self._stuckSince += late
        events = conn.handleTimer(now, self._armedFor, 0.0 if running is None else now - running)
        if events:
            self._handleEvents(events)
            now = self._clock().seconds()
        if conn.state is _FAILED and self._cause is not None:
            return
        data = conn.dataToSend(now)
        if data and self.loss is None:
            self._writeNow(data)
        self._checkUnsent(fromTimer=late <= STALL_THRESHOLD)
        if self.loss is None and not self._gaveUp:
            wake = self._nextWake(conn)
            self._armedFor = wake
            self._setTimer(wake - now if wake > now else 0.0)

    def _nextWake(self, conn: Connection) -> float:
        """The core's next wake, or sooner the time at which a transport
        that takes nothing shows that the peer does not read."""
        wake = conn.nextWake()
        stuck = self._stuckSince
        if stuck is not None:
            # A hair after the deadline, so that the check finds it passed.
            notReading = stuck + conn.liveness.deadline + 1e-6
            if notReading < wake:
                return notReading
        return wake

    # -- internals -----------------------------------------------------------

    _goodbye: tuple[GoodbyeCode, str] = (GoodbyeCode.NORMAL, "")
    _readClosed = False

    def _arm(self) -> None:
        conn = self._alive
        if conn is None or self.loss is not None:
            return
        now = self._clock().seconds()
        wake = self._nextWake(conn)
        if wake < now:
            wake = now
        self._armedFor = wake
        self._setTimer(wake - now)

    def _setTimer(self, period: float | None) -> None:
        """Arm ``TimeoutMixin``'s timer for ``period`` seconds (or disarm it)."""
        self.setTimeout(period)  # type: ignore[no-untyped-call]

    def _flush(self) -> None:
        conn = self._alive
        if conn is None:
            return
        data = conn.dataToSend(self._clock().seconds())
        if data and self.loss is None:
            self._write(data)

    def _writeNow(self, data: bytes) -> None:
        """
        Write ``data`` now. On a plain TCP transport with nothing unsent,
        the bytes go straight into the socket: ``transport.write`` would
        only buffer them and register for writability, a wakeup and two
        ``epoll_ctl`` calls more per write, which is most of the cost of a
        heartbeat or an ACK. What the socket does not take, and every other
        case (TLS, a transport of another kind, data already waiting), goes
        through ``transport.write``, in order.
        """
        transport = self.transport
        conn = self._alive
        if (
            conn is not None
            and conn.writeThrough
            and not transport._tempDataLen
            and not transport.dataBuffer
            and transport.connected
            and not transport.disconnecting
            and not transport.TLS
            and not transport._writeDisconnecting
            and not transport._writeDisconnected
        ):
            try:
                sent = transport.socket.send(data)
            except BlockingIOError:
                pass
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    # The read side may no longer see the error this send
                    # consumed: record it. Twisted meets it again on write.
                    self._setCause(
                        Reason.RESET,
                        f"connection reset or socket error (send: {e.strerror or e})",
                    )
            else:
                if sent == len(data):
                    return
                data = data[sent:]
        self._write(data)

    def _write(self, data: bytes) -> None:
        """Hand ``data`` to the transport, then check that the peer reads."""
        self.transport.write(data)
        self._written += len(data)
        self._checkUnsent()

    def _checkUnsent(self, fromTimer: bool = False) -> None:
        """
        Abort the connection if the peer does not read what is sent: the
        transport holds more than `maxUnsentBytes` beyond the DATA frames in
        flight, or (judged by the timer, which grants back a stall of this
        process) could not hand anything to the kernel for the peer's
        deadline. A peer that reads, however slowly, drains something.
        """
        if self.loss is not None or self._cause is not None:
            return
        unsent = unsentBytes(self.transport)
        if unsent is None:
            return
        conn = self._alive
        if conn is None:
            return
        now = self._clock().seconds()
        written = self._written
        if not unsent:
            self._stuckSince = None
        elif self._unsentSeen + (written - self._writtenSeen) > unsent:
            self._stuckSince = now  # some of it went out: the peer reads
        elif self._stuckSince is None:
            self._stuckSince = now
            if not fromTimer:
                # Have the timer judge it at the deadline.
                wake = now + conn.liveness.deadline + 1e-6
                if wake < self._armedFor:
                    self._armedFor = wake
                    self._setTimer(wake - now)
        self._unsentSeen = unsent
        self._writtenSeen = written
        if not unsent:
            return
        limit = max(self.maxUnsentBytes, 2 * (conn.settings.maxFrameSize + 4))
        if unsent > limit:
            outbox = conn.session.outbox
            frames = sum(len(entry.payload) + DATA_OVERHEAD for entry in outbox.inflight)
            if unsent - frames > limit:
                self._notReading(
                    f"peer stopped reading: {describeSize(unsent)} unsent, over the limit of "
                    f"{describeSize(limit)} beyond the {len(outbox.inflight)} messages in flight"
                )
                return
        stuck = self._stuckSince
        deadline = conn.liveness.deadline
        if fromTimer and stuck is not None and now - stuck >= deadline:
            self._notReading(
                f"peer stopped reading: {describeSize(unsent)} unsent, none taken for "
                f"{now - stuck:.3f} s (deadline {deadline:.3f} s)"
            )

    def _notReading(self, detail: str) -> None:
        self._gaveUp = True
        log.warn(
            "alive.not_reading: {peer}: {detail}",
            peer=self._peer,
            detail=detail,
            event="not_reading",
        )
        self._setCause(Reason.TIMEOUT, detail)
        self._setTimer(None)
        self.transport.abortConnection()

    def _setCause(
        self,
        reason: Reason,
        detail: str,
        code: GoodbyeCode | None = None,
        cause: Cause | None = None,
    ) -> None:
        """Record why the connection is ending; the first cause wins."""
        if self._cause is None:
            self._cause = (reason, detail, code, cause)

    def _handleEvents(self, events: list[Event]) -> None:
        for event in events:
            kind = type(event)
            if kind is Confirmed:
                self._confirmed(cast(Confirmed, event))
            elif kind is Opened:
                self._opened(cast(Opened, event))
            elif kind is HelloReceived:
                self._helloReceived(cast(HelloReceived, event))
            elif kind is PongReceived:
                if self.logPongs or _pongWatchers[0]:
                    log.debug(
                        "alive.pong: {peer} rtt {rtt:.6f} s",
                        peer=self._peer,
                        rtt=cast(PongReceived, event).rtt,
                        event="pong",
                    )
            elif kind is GoodbyeReceived:
                self._goodbyeReceived(cast(GoodbyeReceived, event))
            elif kind is Violation:
                self._violation(cast(Violation, event))
            elif kind is Expired:
                self._expired(cast(Expired, event).detail)
            elif kind is Stalled:
                self._stalled(cast(Stalled, event).seconds)
            elif kind is SessionUnknown:
                self._sessionUnknown(cast(SessionUnknown, event).detail)

    def _stalled(self, seconds: float) -> None:
        """
        Log a local stall, once per clock and second: a stall delays the
        timers of every connection of the process, and thousands of
        connections whose timers fall due together delay each other, so one
        line per connection would be a storm. ``suppressed`` counts the
        reports left out since the last line.
        """
        clock = self._clock()
        now = clock.seconds()
        last = _stallLogs.get(clock)
        if last is not None and now - last[0] < STALL_LOG_EVERY:
            last[1] += 1
            return
        log.warn(
            "alive.stall: this process did not run for {seconds:.3f} s; "
            "the time was not counted against {peer}",
            seconds=seconds,
            peer=self._peer,
            suppressed=last[1] if last is not None else 0,
            event="stall",
        )
        _stallLogs[clock] = [now, 0]

    def _opened(self, event: Opened) -> None:
        conn = self._alive
        assert conn is not None
        session = conn.session
        session.current = self
        log.info(
            "alive.hello: {peer} open, peer interval {interval:g} s, resumed {resumed}",
            peer=self._peer,
            interval=conn.liveness.peerInterval,
            resumed=event.resumed,
            event="hello",
        )
        self._failTooLarge()
        self._arm()
        self.connectionOpened(event.resumed)
        for d in self._openWaiters or ():
            d.callback(None)
        self._openWaiters = None
        host = self._host()
        if host is not None:
            host.sessionOpened(self, event.resumed)
        if session.inbox.pending and not session.busy:
            self._process()

    def _helloReceived(self, event: HelloReceived) -> None:
        conn = self._alive
        assert conn is not None
        if self._closing is not None or conn.state is not State.HANDSHAKE:
            return  # closing already: a GOODBYE went instead of HELLO; no session
        host = self._host()
        now = self._clock().seconds()
        found = host.sessionFor(event.hello.session, now) if host is not None else None
        if found is None:
            detail = f"session {event.hello.session.hex()[:8]} is unknown or expired"
            conn.refuseSession(detail)
            self._setCause(Reason.LOCAL_CLOSE, f"refused: {detail}")
            self._flush()
            self._loseSoon()
            return
        session, resumed = found
        previous = session.current
        if previous is not None and previous is not self:
            # The client came back while its old connection still looks
            # alive here (half-open): the new connection takes over.
            cast(HeartbeatMixin, previous).abort("session taken over by a new connection")
        before = conn.session
        events = conn.acceptSession(session, resumed, now)
        if before.pacer is not None and conn.session is session and session.pacer is None:
            # A producer registered before HELLO paces the real session.
            session.pacer, before.pacer = before.pacer, None
            session.pacer.outbox = session.outbox
        if events:
            self._handleEvents(events)

    def _confirmed(self, event: Confirmed) -> None:
        conn = self._alive
        assert conn is not None
        now = self._clock().seconds()
        rejected = conn.session.outbox.rejected
        if not rejected:
            for entry in event.entries:
                d = entry.handle
                if d is not None and not d.called:
                    d.callback(Receipt(entry.seq, entry.sentAt, now))
            self._failTooLarge()
            self._sendRoom()
            return
        for entry in event.entries:
            handle = entry.handle
            seq = entry.seq
            if handle is None:
                rejected.pop(seq, None)
                continue
            if type(handle) is BatchMember:
                # One of several sent together: the last one answers for it.
                continue
            d = cast("Deferred[Receipt]", handle)
            if type(d) is BatchDeferred:
                failed = sorted(
                    (other, rejected.pop(other))
                    for other in [s for s in rejected if seq - d.count < s <= seq]
                )
                if failed and not d.called:
                    first, text = failed[0]
                    d.errback(
                        DeliveryFailed(
                            f"peer application failed on message {first} "
                            f"({len(failed)} of the {d.count} sent together): {text}",
                            rejected=True,
                        )
                    )
                    continue
            if d.called:
                rejected.pop(seq, None)
                continue
            if seq in rejected:
                text = rejected.pop(seq)
                d.errback(
                    DeliveryFailed(
                        f"peer application failed on message {seq}: {text}",
                        rejected=True,
                    )
                )
            else:
                d.callback(Receipt(seq, entry.sentAt, now))
        self._failTooLarge()
        self._sendRoom()

    def _sendRoom(self) -> None:
        """Acknowledgements made room in the window and queue."""
        conn = self._alive
        if conn is not None and conn.session.pacer is not None:
            conn.session.pacer.check()

    def registerProducer(self, producer: IPushProducer, streaming: bool = True) -> None:
        """
        Have ``producer`` (a push producer: ``streaming`` must be true)
        paused while the send queue is high (half of
        ``maxQueued`` messages or ``maxQueuedBytes`` bytes) and resumed once
        it is down to a quarter, so that a sender that respects the pause
        never meets `QueueFull`. One producer at a time; it is forgotten when
        the connection ends.

        :raises RuntimeError: before the connection is made, or if a
            producer is registered already.
        :raises ValueError: for a pull producer (``streaming`` false).
        """
        if not streaming:
            raise ValueError("only push producers (streaming=True) can be paced")
        conn = self._alive
        if conn is None:
            raise self._notSetUp("registerProducer()")
        registerPacer(conn.session, producer)

    def unregisterProducer(self) -> None:
        """Forget the producer registered with `registerProducer`."""
        if self._alive is not None:
            self._alive.session.pacer = None

    def _failTooLarge(self) -> None:
        conn = self._alive
        assert conn is not None
        outbox = conn.session.outbox
        if outbox.tooLarge:
            entries, outbox.tooLarge = outbox.tooLarge, []
            for entry in entries:
                text = (
                    f"message of {len(entry.payload)} bytes exceeds the peer's maximum "
                    f"of {conn.peerMaxPayload} bytes"
                )
                handle = entry.handle
                if type(handle) is BatchMember:
                    # Sent together with others: all of them fail.
                    if not handle.batch.called:
                        handle.batch.errback(DeliveryFailed(text, None, maybeProcessed=True))
                else:
                    failDelivery(entry, text, None)

    def _goodbyeReceived(self, event: GoodbyeReceived) -> None:
        kind = _GOODBYE_REASONS.get(event.code, Reason.CLEAN_CLOSE)
        detail = f"peer said GOODBYE {event.code.name}"
        if event.reason:
            detail += f": {event.reason}"
        self._setCause(kind, detail, event.code)
        if self._closing is None:
            self._closing = "peer"
        self._startCloseTimer()

    def _violation(self, event: Violation) -> None:
        detail = event.detail
        log.warn(
            "alive.protocol_error: {peer}: {detail}",
            peer=self._peer,
            detail=detail,
            event="protocol_error",
        )
        self._setCause(
            Reason.PROTOCOL_ERROR,
            detail,
            cause=Cause.NOT_ALIVE_PEER if event.notAlive else None,
        )
        conn = self._alive
        assert conn is not None
        # The messages that came before the bad frame are processed and
        # acknowledged first; the GOODBYE goes out after their ACK.
        session = conn.session
        if session.inbox.pending and not session.busy and session.current is self:
            self._process()
        else:
            conn.flushAck()
        self._flush()
        self._loseSoon()

    def _expired(self, detail: str) -> None:
        self._setCause(Reason.TIMEOUT, detail)
        self._setTimer(None)
        self.transport.abortConnection()

    def _sessionUnknown(self, detail: str) -> None:
        self._setCause(Reason.LOCAL_CLOSE, detail)
        host = self._host()
        if host is not None:
            host.sessionUnknown(self, detail)
        self._loseSoon()

    def _loseSoon(self) -> None:
        """Close now, and abort if the flush takes longer than a grace
        period (a peer that stopped reading would hold it open)."""
        self._setTimer(None)
        self.transport.loseConnection()
        if self._abortCall is None and self.loss is None:
            self._abortCall = self._clock().callLater(ABORT_GRACE, self._abortNow)

    def _abortNow(self) -> None:
        self._abortCall = None
        if self.loss is None:
            self.transport.abortConnection()

    def _closeTimedOut(self) -> None:
        self._closeCall = None
        conn = self._alive
        if conn is not None and conn.state in (State.OPEN, State.HANDSHAKE):
            conn.close(*self._goodbye)
            self._flush()
        self._loseSoon()

    def _checkClose(self) -> None:
        """Close the connection once closing has nothing left to wait for."""
        conn = self._alive
        if conn is None or self.loss is not None or self._closing is None:
            return
        if conn.state is State.FAILED:
            return
        session = conn.session
        if session.current is self and (session.busy or session.inbox.pending):
            return  # finish what the peer sent; its ACK goes out after
        if (
            self._closing == "local"
            and not self._readClosed
            and conn.state is not State.PEER_CLOSING
        ):
            outbox = session.outbox
            if conn.state in (State.OPEN, State.HANDSHAKE) and outbox.queue:
                return  # still sending (before HELLO: waiting to send)
            if conn.state in (State.OPEN, State.HANDSHAKE):
                conn.close(*self._goodbye)
                self._flush()
            if outbox.inflight:
                return  # waiting for acknowledgements
        elif (
            conn.state is State.PEER_CLOSING
            and not self._readClosed
            and session.outbox.inflight
        ):
            # The peer sent GOODBYE but still processes and acknowledges
            # the DATA that reached it; wait for that (until its FIN or the
            # close timer) rather than leave the messages uncertain.
            return
        self._flush()
        self._loseSoon()

    def _startCloseTimer(self) -> None:
        if self._closeCall is None and self.loss is None:
            self._closeCall = self._clock().callLater(self.closeTimeout, self._closeTimedOut)

    def _process(self) -> None:
        """Hand pending messages to the application, one at a time."""
        conn = self._alive
        assert conn is not None
        if self._turnCall is not None:
            return  # the next turn goes on (fair reading)
        session = conn.session
        inbox = session.inbox
        pending = inbox.pending
        session.busy = True
        countdown = TURN_CHECK_EVERY
        clock = self._clock()
        started = clock.seconds()
        while pending:
            countdown -= 1
            if countdown < 0:
                countdown = TURN_CHECK_EVERY - 1
                if clock.seconds() - started >= self.maxTurnTime:
                    # Fair reading: the rest waits for the next turn of the
                    # reactor, and so does reading more from this peer.
                    session.busy = False
                    conn.flushAck()
                    self._yieldTurn()
                    return
            seq, payload = pending.popleft()
            try:
                result = self.messageReceived(payload)
            except Exception:
                self._rejected(session, seq, Failure())  # type: ignore[no-untyped-call]
                continue
            if result is None:
                # The common case, first: isinstance() against Deferred (an
                # ABC) costs more than the rest of this loop.
                inbox.processedUpTo = seq
                continue
            if not isinstance(result, Deferred):
                if inspect.isawaitable(result):
                    # ``async def messageReceived``: wait for it like a Deferred.
                    result = Deferred.fromCoroutine(cast(Any, result))
            if isinstance(result, Deferred):
                box: list[object] = []
                result.addBoth(box.append)
                if not box:
                    result.addCallback(partial(self._asyncDone, session, inbox, seq, box))
                    # What was processed before this message is confirmed now,
                    # not when this one completes.
                    if inbox.processedUpTo:
                        conn.flushAck()
                    return  # the next message waits for this one
                if isinstance(box[0], Failure):
                    self._rejected(session, seq, box[0])
                    continue
            inbox.processedUpTo = seq
        session.busy = False
        conn.flushAck()
        if self._pausedReading:
            self._pausedReading = False
            self.transport.resumeProducing()
        if self._closing is not None:
            self._checkClose()

    def _yieldTurn(self) -> None:
        """Pause reading from the transport and go on processing in the
        next turn of the reactor (`maxTurnTime`)."""
        if not self._pausedReading:
            pause = getattr(self.transport, "pauseProducing", None)
            if pause is not None:
                self._pausedReading = True
                pause()
        if self._turnCall is None:
            self._turnCall = self._clock().callLater(0, self._nextTurn)

    def _nextTurn(self) -> None:
        """Go on handing pending messages to the application."""
        self._turnCall = None
        conn = self._alive
        if conn is None or self.loss is not None:
            return
        session = conn.session
        if session.current is self and not session.busy:
            self._process()
        self._flush()

    def _asyncDone(
        self, session: Session, inbox: Inbox, seq: int, box: list[object], _: object
    ) -> None:
        """A Deferred returned by `messageReceived` fired; its outcome is in
        ``box``. If the session was restarted meanwhile, the message belonged
        to the old one: it is not counted in the new."""
        outcome = box[0]
        session.busy = False
        if session.inbox is inbox:
            if isinstance(outcome, Failure):
                self._rejected(session, seq, outcome)
            else:
                inbox.processedUpTo = seq
        current = cast("HeartbeatMixin | None", session.current)
        if current is not None and current._alive is not None and current.loss is None:
            current._process()
            current._flush()

    def _rejected(self, session: Session, seq: int, failure: Failure) -> None:
        text = f"{typeName(failure)}: {failure.getErrorMessage()}"
        session.inbox.reject(seq, text[:1000])
        clock = self._clock()
        rejections = _rejectionLogs.get(clock)
        if rejections is None:
            rejections = _rejectionLogs[clock] = RejectionLog()
        now = clock.seconds()
        verdict = rejections.record(text, now)
        if verdict.report is Report.FIRST:
            log.failure(
                "alive.rejected: messageReceived failed on message {seq} from {peer}: {cause}",
                failure=failure,
                level=LogLevel.error,
                seq=seq,
                peer=self._peer,
                cause=verdict.cause,
                count=1,
                event="rejected",
            )
        elif verdict.report is Report.SUMMARY:
            log.error(
                "alive.rejected: {count} rejections like {cause!r} in the last "
                "{seconds:.1f} s (last: message {seq} from {peer})",
                seq=seq,
                peer=self._peer,
                cause=verdict.cause,
                count=verdict.repeats,
                seconds=now - verdict.since,
                event="rejected",
            )


def registerPacer(session: Session, producer: IPushProducer) -> None:
    """Pace ``producer`` by ``session``'s send queue.

    :raises RuntimeError: if a producer is registered already.
    """
    if session.pacer is not None:
        raise RuntimeError("a producer is registered already; unregister it first")
    session.pacer = Pacer(session.outbox, producer)
    session.pacer.check()


def checkPayload(payload: bytes, settings: Settings) -> None:
    """
    :raises TypeError: unless ``payload`` is ``bytes``.
    :raises ValueError: if ``payload`` is too large for one frame.
    """
    if not isinstance(payload, bytes):
        raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
    if len(payload) > settings.maxPayload:
        raise ValueError(
            f"message of {len(payload)} bytes exceeds the maximum of {settings.maxPayload} "
            f"bytes (maxFrameSize {settings.maxFrameSize} minus 9)"
        )


def addressPhase(transport: Any) -> float:
    """
    The grid phase (see `Liveness`) of a connection whose roles are not
    known (no session host): half a step at the end whose own address is
    the larger, none at the other; none when the transport cannot tell.
    """
    try:
        host, peer = transport.getHost(), transport.getPeer()
    except Exception:
        return 0.0
    ours = (str(getattr(host, "host", "")), getattr(host, "port", 0))
    theirs = (str(getattr(peer, "host", "")), getattr(peer, "port", 0))
    return 0.5 if ours > theirs else 0.0


def checkPayloads(payloads: Iterable[bytes], settings: Settings) -> Sequence[bytes]:
    """
    The messages of one `HeartbeatMixin.sendMessages` call, as a sequence.

    :raises TypeError: unless every payload is ``bytes``.
    :raises ValueError: if there is none, or one is too large for a frame.
    """
    if not isinstance(payloads, (list, tuple)):
        payloads = list(payloads)
    if not payloads:
        raise ValueError("sendMessages() needs at least one message")
    maxPayload = settings.maxPayload
    for payload in payloads:
        if type(payload) is not bytes or len(payload) > maxPayload:
            checkPayload(payload, settings)
    return payloads


def describeFailure(kind: Reason, failure: Failure) -> str:
    """A sentence for a loss that this side did not cause."""
    if kind is Reason.PEER_CLOSED:
        return "peer closed the connection without GOODBYE"
    if kind is Reason.RESET:
        if type(failure.value) in (ConnectionLost, ConnectionDone):
            return f"connection reset or socket error ({typeName(failure)})"
        # Anything more specific (a TLS error, an OSError) says what it was.
        return (
            f"connection reset or socket error ({typeName(failure)}: {failure.getErrorMessage()})"
        )
    if kind is Reason.LOCAL_CLOSE:
        return "aborted by this side"
    return f"{typeName(failure)}: {failure.getErrorMessage()}"


def typeName(failure: Failure) -> str:
    """The name of a failure's exception type."""
    return failure.type.__name__ if failure.type is not None else "Exception"


class HeartbeatProtocol(HeartbeatMixin, Protocol):
    """
    `HeartbeatMixin` and ``Protocol``, ready to subclass: override
    `messageReceived` and `disconnected`; send with `sendMessage`.
    """
