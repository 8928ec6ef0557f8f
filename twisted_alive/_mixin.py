"""
The Twisted adapter: `HeartbeatMixin` and `HeartbeatProtocol`.

The mixin is glue: it feeds the transport's bytes and the timer's firing to
the sans-IO `Connection` (``twisted_alive.core.connection``), which decides
everything, and acts on the events it hands out: it calls the application
(`messageReceived`, the hooks), fires Deferreds, writes, closes the
transport when told to, and keeps one timer (Twisted's ``TimeoutMixin``)
armed for the core's next deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import BaseProtocol, Protocol, connectionDone
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._binding import (
    Binding,
    accepting,
    answer,
    answerHello,
    bind,
    refused,
    takeSession,
    transactionProblem,
    unbind,
)
from twisted_alive._interfaces import hostOf
from twisted_alive._logs import log, logConnected, logEvent, logOpened, watchPongs
from twisted_alive._reasons import describeFailure, describeSendError
from twisted_alive._timers import wheelFor
from twisted_alive._transport import (
    describeAddress,
    pauseReading,
    resumeReading,
    setNoDelay,
    unsentBytes,
    writeThrough,
)
from twisted_alive.core.connection import (
    ABORT_GRACE,
    CloseNow,
    Confirmed,
    Connection,
    Event,
    HelloReceived,
    MessageReceived,
    Opened,
    Rejected,
    Role,
    SessionUnknown,
    Settings,
    State,
    TooLarge,
)
from twisted_alive.core.delivery import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_WINDOW,
    Session,
)
from twisted_alive.core.frames import DEFAULT_MAX_FRAME_SIZE, NO_SESSION, GoodbyeCode
from twisted_alive.core.liveness import STALL_THRESHOLD
from twisted_alive.core.outcomes import DeliveryFailed, MessageInfo, Receipt
from twisted_alive.core.reasons import Loss
from twisted_alive.core.stored import sessionIdOf

__all__ = ["ABORT_GRACE", "HeartbeatMixin", "HeartbeatProtocol", "watchPongs"]

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


def settingsFor(protocol: Any, accepting: bool) -> Settings:
    """
    The `Settings` that a `HeartbeatMixin` class's (or instance's)
    attributes describe, for the side that accepted the connection
    (``accepting``: a server) or made it: ``maxPeerInterval``, when not
    set, is `SERVER_MAX_PEER_INTERVAL` or `CLIENT_MAX_PEER_INTERVAL`. An
    attribute the object lacks takes `HeartbeatMixin`'s default.

    Used by `HeartbeatMixin.aliveSettings`, by the factories (for their
    sessions) and by the twistd plugin (to check options).

    :raises ValueError: for an invalid setting (the message names it).
    """
    defaults = HeartbeatMixin
    maxPeer = getattr(protocol, "maxPeerInterval", None)
    if maxPeer is None:
        maxPeer = SERVER_MAX_PEER_INTERVAL if accepting else CLIENT_MAX_PEER_INTERVAL
    return Settings(
        interval=getattr(protocol, "heartbeatInterval", defaults.heartbeatInterval),
        misses=getattr(protocol, "heartbeatMisses", defaults.heartbeatMisses),
        maxFrameSize=getattr(protocol, "maxFrameSize", defaults.maxFrameSize),
        window=getattr(protocol, "maxInFlight", defaults.maxInFlight),
        maxQueue=getattr(protocol, "maxQueued", defaults.maxQueued),
        maxQueueBytes=getattr(protocol, "maxQueuedBytes", defaults.maxQueuedBytes),
        minPeerInterval=getattr(protocol, "minPeerInterval", defaults.minPeerInterval),
        maxPeerInterval=maxPeer,
        closeTimeout=getattr(protocol, "closeTimeout", defaults.closeTimeout),
        maxUnsentBytes=getattr(protocol, "maxUnsentBytes", defaults.maxUnsentBytes),
    )


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

    A protocol whose session is kept in a `SqliteSessionStore` (an
    `ITransactionalStore`) may define
    ``messageReceivedInTransaction(payload, cursor)`` instead of
    `messageReceived`: each message is then processed in the store's
    transaction, together with the session's processed position, exactly
    once even across a crash of this process. It runs in the store's
    thread: it may use ``cursor`` (on the store's database) and must call
    nothing of Twisted; if it raises, its work is rolled back and the
    message is rejected as when `messageReceived` raises. With a store that
    cannot run it, or none, the connection is aborted when it opens (and
    a client factory refuses to start, or its ``recovered()`` fails, with
    ``TypeError``). See ``docs/stores.md``.

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
    _binding: Binding  # set with _alive, by connectionMade
    _connectedAt = 0.0
    _armedFor = 0.0
    _lostWaiters: list[Deferred[Loss]] | None = None
    _openWaiters: list[Deferred[None]] | None = None
    _peer: str | None = None
    _written = 0
    _turnCall: IDelayedCall | None = None
    _transactional = False
    """Whether the class defines ``messageReceivedInTransaction``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a class that lists a ``Protocol`` before the mixin: that
        protocol's ``connectionMade``, ``dataReceived`` and
        ``connectionLost`` would hide the mixin's, and nothing would work.

        :raises TypeError: naming the fix.
        """
        super().__init_subclass__(**kwargs)
        checkBases(cls)
        cls._transactional = getattr(cls, "messageReceivedInTransaction", None) is not None

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
        return settingsFor(self, accepting(hostOf(self), getattr(self, "transport", None)))

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
    def sessionId(self) -> str | None:
        """
        The public id of the session this connection carries
        (`sessionIdOf`): how an application names it, in its own records or
        to send to it from anywhere (``AliveServerFactory.sendTo``). It is
        not a secret: nothing resumes a session with it. ``None`` until the
        session has its token (the HELLO exchange).
        """
        session = self.session
        if session is None or session.token == NO_SESSION:
            return None
        return sessionIdOf(session.token)

    @property
    def currentMessage(self) -> MessageInfo | None:
        """
        The message the application is processing: valid during
        `messageReceived` (and until the Deferred it returned fires), else
        ``None``. Its ``(session, seq)`` is the message's idempotency key;
        ``redelivered`` says that a previous process may have processed it
        already (see `MessageInfo`). Not for use in
        ``messageReceivedInTransaction``, which runs in another thread (and
        needs no key: it runs exactly once).
        """
        conn = self._alive
        if conn is None:
            return None
        session = conn.session
        inbox = session.inbox
        seq = inbox.handedOut
        if seq <= 0:
            return None
        return MessageInfo(session.token, seq, seq == inbox.mayRepeat)

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
            raise notSetUp(self, "sendMessage()")
        if type(payload) is not bytes or len(payload) > conn.settings.maxPayload:
            checkPayload(payload, conn.settings)
        return self._submit(conn, "message", conn.send, payload)

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
            raise notSetUp(self, "sendMessages()")
        return self._submit(conn, "messages", conn.sendMany, checkPayloads(payloads, conn.settings))

    def _submit(
        self, conn: Connection, what: str, send: Callable[[Any, Any, float], object], payload: Any
    ) -> Deferred[Receipt]:
        """Hand ``payload`` (one message or several) to the core's ``send``
        with a new Deferred for its outcome, unless the core refuses (see
        `refused`). Then write its frames (unless a read burst will), act
        on what the send caused, and tell a registered producer."""
        if conn.refusal() is not None:
            return refused(conn, what, self.loss)
        if self._binding.journal is not None:
            # The session is in a store: stored before sent, by its factory.
            host = hostOf(self)
            if host.role is Role.SERVER:
                payloads = [payload] if what == "message" else payload
                return cast(
                    Deferred[Receipt],
                    host.sendStored(self._binding, payloads, what == "messages"),
                )
            if what == "message":
                return cast(Deferred[Receipt], host.sendMessage(payload))
            return cast(Deferred[Receipt], host.sendMessages(payload))
        if conn.role is Role.SERVER and conn.session.token == NO_SESSION:
            host = hostOf(self)
            if host is not None and host.store is not None:
                return defer.fail(
                    DeliveryFailed(
                        f"{what} not sent: the sessions are kept in a store, and this "
                        "connection has no session yet; send once it is open "
                        "(connectionOpened)"
                    )
                )
        now = self._clock().seconds()
        d = self._binding.submit(lambda handle: send(payload, handle, now))
        if d.called:
            return d  # QueueFull
        if not conn.reading:
            data = conn.dataToSend(now)
            if data:
                # The application's DATA (the window bounds it): no check
                # per message; the timer checks that the peer reads.
                self.transport.write(data)
                self._written += len(data)
            if conn.events:
                self._service()
        self._binding.pace()
        return d

    def _pump(self, buffered: bool = False) -> None:
        """Write what the windows allow of the queued messages (the session
        got new ones while this connection carried it). ``buffered``: into
        the transport's buffer, never straight to the socket, so that the
        pumps of one turn of the reactor (a store firing the appends of a
        group commit one by one) leave in one ``send()``."""
        conn = self._alive
        if conn is not None and self.loss is None:
            conn.pump(self._clock().seconds())
            if buffered and conn.writeThrough:
                conn.writeThrough = False
                try:
                    self._service()
                finally:
                    conn.writeThrough = True
            else:
                self._service()

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

        `currentMessage` tells which message this is: its idempotency key,
        and whether a previous process may have processed it already (a
        session kept in a store, after a crash).
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
        Close in order: finish handing out what the peer sent, send what is
        queued, then GOODBYE, wait (at most `closeTimeout` seconds) for the
        peer to acknowledge everything, then close the TCP connection.
        Messages still unconfirmed then fail with `DeliveryFailed`, unless a
        factory keeps the session (`AliveClientFactory`,
        `AliveServerFactory`): there they stay in the session for its next
        connection.

        :param code: the GOODBYE code (``SHUTTING_DOWN`` and ``GO_AWAY`` tell
            a reconnecting client whether to come back).
        :param reason: a text for the peer's logs.
        :returns: a Deferred that fires with the `Loss` (`Reason.LOCAL_CLOSE`)
            once the connection is closed (with the earlier `Loss` if it had
            ended already), or fails at once with ``RuntimeError`` if the
            connection is not set up yet (there is nothing to close).
        """
        conn = self._alive
        if conn is None and self.loss is None:
            return defer.fail(notSetUp(self, "close()"))
        d = self.whenLost()
        if conn is not None and self.loss is None:
            conn.close(code, reason, self._clock().seconds())
            self._service()
        return d

    def abort(self, detail: str = "aborted by this side") -> None:
        """Abort the connection now (an RST, no GOODBYE): `Reason.LOCAL_CLOSE`."""
        conn = self._alive
        if self.loss is None and conn is not None:
            conn.abort(detail)
            self._service()

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
        if self._alive is None:
            raise notSetUp(self, "registerProducer()")
        self._binding.register(producer)

    def unregisterProducer(self) -> None:
        """Forget the producer registered with `registerProducer`."""
        if self._alive is not None:
            self._binding.pacer = None

    # -- Twisted protocol --------------------------------------------------

    def connectionMade(self) -> None:
        """Start the HELLO exchange and the heartbeat timer."""
        self._connectedAt = now = self._clock().seconds()
        transport = self.transport
        self._peer = describeAddress(transport.getPeer())
        host = hostOf(self)
        conn, self._binding = bind(host, self.aliveSettings(), transport, now)
        self._alive = conn
        if self.tcpNoDelay:
            setNoDelay(transport)
        if host is not None:
            host.connectionStarted(self)
        logConnected(self._peer, conn.role.value)
        self._service()
        self._arm()
        super().connectionMade()  # type: ignore[misc]

    def dataReceived(self, data: bytes) -> None:
        """Feed the core; act on what it says."""
        conn = self._alive
        if conn is None or self.loss is not None:
            return
        conn.receiveData(data, self._clock().seconds())
        self._service()

    def readConnectionLost(self) -> None:
        """The peer shut its write side (FIN): not dead, but it will not
        speak again. Finish what was received, then close."""
        conn = self._alive
        if conn is not None and self.loss is None:
            conn.readClosed(self._clock().seconds())
            self._service()

    def writeConnectionLost(self) -> None:
        """This side's write half is closed; nothing to do."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Classify the loss, settle every pending Deferred, then call
        `disconnected`."""
        self._setTimer(None)
        if self._turnCall is not None and self._turnCall.active():
            self._turnCall.cancel()
        self._turnCall = None
        conn = self._alive
        if conn is not None:
            conn.lost()
        self.loss = loss = lossOf(
            conn, reason, self.transport, self._peer, self._clock().seconds() - self._connectedAt
        )
        if conn is not None:
            unbind(self, self._binding, conn, hostOf(self), loss)
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
        """``TimeoutMixin``'s timer fired: let the core act on its deadlines."""
        conn = self._alive
        if conn is None or self.loss is not None:
            return
        clock = self._clock()
        now = clock.seconds()
        armed = self._armedFor
        conn.handleTimer(now, armed, wheelFor(clock).runningFor(now))
        self._service(timer=now - armed <= STALL_THRESHOLD)

    # -- acting on the core's events -----------------------------------------

    def _service(self, timer: bool | None = None) -> None:
        """
        Act on the core's events: hand received messages to the
        application, fire Deferreds, call hooks, close when told to; then
        write what the core has to send, and re-arm the timer if a deadline
        moved. ``timer``: called from the timer (``True`` if it fired in
        time: the unread-output check may judge).

        Messages are handed to the application for at most `maxTurnTime`
        per turn of the reactor (looked at every `TURN_CHECK_EVERY`): past
        it, reading pauses and the rest follows in the next turn.
        """
        conn = self._alive
        assert conn is not None
        if conn.reading or self._turnCall is not None:
            # The loop that runs (or the next turn) will see to it.
            if timer is not None:
                conn.wakeMoved = True
            return
        conn.reading = True
        transactional = self._transactional
        nextEvent = conn.nextEvent
        processed = conn.messageProcessed
        countdown = TURN_CHECK_EVERY
        started = self._clock().seconds()
        try:
            while True:
                event = nextEvent()
                if event is None:
                    # With a store, the position of what was processed is
                    # written now; once committed, the next message may go.
                    binding = self._binding
                    if binding.store is None or not binding.commitProcessed():
                        break
                    continue
                if type(event) is not MessageReceived:
                    self._event(conn, event)
                    continue
                seq = event[0]
                if transactional:
                    self._binding.processInTransaction(
                        self, conn, seq, event[1], self._clock(), self._peer
                    )
                    continue
                try:
                    result = self.messageReceived(event[1])
                except Exception:
                    answer(conn, seq, Failure(), self._clock(), self._peer)  # type: ignore[no-untyped-call]
                else:
                    if result is None:
                        # The common case, first: isinstance() against
                        # Deferred (an ABC) costs more than the rest.
                        processed(seq)
                    else:
                        self._binding.awaitResult(conn, seq, result, self._clock(), self._peer)
                countdown -= 1
                if countdown <= 0:
                    countdown = TURN_CHECK_EVERY
                    now = self._clock().seconds()
                    if now - started >= self.maxTurnTime and conn.handingOut:
                        # Pause reading; go on in the next turn of the reactor.
                        pauseReading(self.transport)
                        self._turnCall = self._clock().callLater(0, self._nextTurn)
                        break
        finally:
            conn.reading = False
        if self.loss is None:
            self._flush(timer)
            if timer is not None or conn.wakeMoved:
                self._arm(late=timer is not None)

    def _event(self, conn: Connection, event: Event) -> None:
        """Act on an event other than a received message."""
        kind = type(event)
        if kind is Confirmed or kind is Rejected or kind is TooLarge:
            if self._binding.settle(event, self._clock().seconds()):
                self._sendRoom()
        elif kind is CloseNow:
            self._flush(None)
            if cast(CloseNow, event).abort:
                self._setTimer(None)
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()
        elif kind is Opened:
            self._opened(conn, cast(Opened, event).resumed)
        elif kind is HelloReceived:
            token = cast(HelloReceived, event).hello.session
            now = self._clock().seconds()
            self._binding = answerHello(hostOf(self), self, self._binding, conn, token, now)
        elif kind is SessionUnknown:
            host = hostOf(self)
            if host is not None:
                host.sessionUnknown(self, cast(SessionUnknown, event).detail)
        else:
            logEvent(event, self._peer, self._clock(), self.logPongs)

    def _sessionFound(self, found: object, token: bytes) -> None:
        """
        (Server.) The factory's answer to the client's HELLO came later (it
        waited for a store): take the session or refuse it, unless the
        connection ended meanwhile. A ``Failure`` (the store failed) aborts
        the connection: the client comes back.
        """
        conn = self._alive
        if conn is None or self.loss is not None or conn.state is not State.HANDSHAKE:
            return
        if isinstance(found, Failure):
            self.abort(f"session store failed: {found.getErrorMessage()}")
            return
        now = self._clock().seconds()
        answer = cast("tuple[Session, bool] | None", found)
        self._binding = takeSession(hostOf(self), self, self._binding, conn, token, answer, now)
        self._service()

    def _sendRoom(self) -> None:
        """Acknowledgements made room in the window and the queue: resume a
        paused producer if the queue is low enough."""
        self._binding.pace()

    def _opened(self, conn: Connection, resumed: bool) -> None:
        if self._transactional:
            problem = transactionProblem(self, self._binding.store)
            if problem is not None:
                log.error("alive.store: {problem}", problem=problem, event="store_refused")
                self.abort(problem)
                return
        self._binding.carrier = self
        logOpened(self._peer, conn.liveness.peerInterval, resumed)
        self.connectionOpened(resumed)
        for d in self._openWaiters or ():
            d.callback(None)
        self._openWaiters = None
        host = hostOf(self)
        if host is not None:
            host.sessionOpened(self, resumed)
            if conn.session.outbox.queue and self.loss is None:
                # Queued through the factory during the hook, before it
                # knew this connection carries the session.
                self._pump(buffered=True)

    def _nextTurn(self) -> None:
        """Go on handing received messages to the application."""
        self._turnCall = None
        if self._alive is None or self.loss is not None:
            return
        resumeReading(self.transport)
        self._service()

    # -- the transport and the timer ----------------------------------------

    def _flush(self, timer: bool | None = None) -> None:
        """Write what the core has to send; then, if anything went to the
        transport's buffers or the timer fired, check that the peer reads."""
        conn = self._alive
        assert conn is not None
        now = self._clock().seconds()
        data = conn.dataToSend(now)
        if data and conn.writeThrough:
            data, error = writeThrough(self.transport, data)
            if error is not None:
                conn.writeFailed(describeSendError(error))
        if data:
            self.transport.write(data)
            self._written += len(data)
        elif timer is None:
            return
        unsent = unsentBytes(self.transport)
        if unsent is not None:
            conn.checkUnsent(unsent, self._written, now, bool(timer))
            if conn.events:
                self._service()

    def _arm(self, late: bool = False) -> None:
        """Arm ``TimeoutMixin``'s timer for the core's next wake. After the
        timer fired (``late``), a wake already past is kept as the time the
        timer was due: the core grants a stall of this process back."""
        conn = self._alive
        if conn is None or self.loss is not None:
            return
        conn.wakeMoved = False
        now = self._clock().seconds()
        wake = conn.nextWake()
        if wake == float("inf"):
            self._setTimer(None)
            return
        if wake < now and not late:
            wake = now
        self._armedFor = wake
        self._setTimer(wake - now if wake > now else 0.0)

    def _setTimer(self, period: float | None) -> None:
        """Arm ``TimeoutMixin``'s timer for ``period`` seconds (or disarm it)."""
        self.setTimeout(period)  # type: ignore[no-untyped-call]


def lossOf(
    conn: Connection | None, failure: Failure, transport: Any, peer: str | None, lasted: float
) -> Loss:
    """
    The `Loss` of a connection that ended with ``failure`` after ``lasted``
    seconds: as the core's `Ending` says, else as the failure says (see
    `describeFailure`); logged.
    """
    ending = conn.ending if conn is not None else None
    if ending is not None:
        kind, detail, code, cause = ending
    else:
        code = None
        closedHere = bool(getattr(transport, "disconnecting", False))
        kind, detail, cause = describeFailure(failure, closedHere=closedHere)
    unconfirmed = len(conn.session.outbox) if conn is not None else 0
    loss = Loss(kind, detail, failure, code, peer, lasted, unconfirmed, cause)
    rtt = conn.liveness.srtt if conn is not None else None
    log.info(
        "alive.lost: {peer} {reason}: {detail} after {duration:.3f} s (rtt {rtt})",
        **dict(peer=peer, reason=kind.name, detail=detail, duration=lasted, rtt=rtt),
        unconfirmed=unconfirmed,
        event="lost",
    )
    return loss


def checkBases(cls: type) -> None:
    """
    :raises TypeError: if ``cls`` lists a ``Protocol`` before
        `HeartbeatMixin` (naming the fix).
    """
    for base in cls.__mro__[1:]:
        if base is HeartbeatMixin:
            return
        if issubclass(base, BaseProtocol) and not issubclass(base, HeartbeatMixin):
            raise TypeError(
                f"{cls.__qualname__} lists {base.__name__} before HeartbeatMixin, so "
                f"{base.__name__}'s connectionMade/dataReceived/connectionLost hide the "
                f"mixin's: list HeartbeatMixin before {base.__name__}: "
                f"class {cls.__name__}(HeartbeatMixin, {base.__name__})"
            )


def notSetUp(protocol: HeartbeatMixin, what: str) -> RuntimeError:
    """The error of ``what`` called on ``protocol`` before
    `HeartbeatMixin.connectionMade` set the connection up: before the
    transport is there, or after (a subclass's ``connectionMade`` that did
    not call the base method first)."""
    if getattr(protocol, "transport", None) is None:
        return RuntimeError(f"{what} called before the connection was made")
    return RuntimeError(
        f"{what} called before the connection was set up: did the subclass's "
        "connectionMade() call super().connectionMade() (before using the connection)?"
    )


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


class HeartbeatProtocol(HeartbeatMixin, Protocol):
    """
    `HeartbeatMixin` and ``Protocol``, ready to subclass: override
    `messageReceived` and `disconnected`; send with `sendMessage`.
    """
