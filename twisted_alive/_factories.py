"""
Sessions that outlive connections: `AliveClientFactory` and
`AliveServerFactory`.

A session holds what each side sent and has not seen confirmed, and how far
it processed what it received. The client's factory keeps one session across
reconnects; the server's factory keeps one per client, by token, for a
bounded time and count. After a reconnect the HELLO exchange tells each side
what the other holds, the rest is resent, and duplicates are dropped: every
message reaches the peer's application exactly once, in order, while both
processes live.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from types import MappingProxyType
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Factory, ReconnectingClientFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._binding import Binding
from twisted_alive._interfaces import ISessionHost
from twisted_alive._mixin import (
    HeartbeatMixin,
    HeartbeatProtocol,
    checkPayload,
    checkPayloads,
    settingsFor,
)
from twisted_alive._reasons import Cause, Loss, Reason, describeFailure
from twisted_alive.core.connection import Role, Settings, State
from twisted_alive.core.delivery import Entry, Session
from twisted_alive.core.frames import NO_SESSION, GoodbyeCode
from twisted_alive.core.outcomes import DeliveryFailed, Receipt
from twisted_alive.core.retry import (
    DEFAULT_CAUSE_POLICY,
    DEFAULT_GOODBYE_POLICY,
    DEFAULT_RETRY_POLICY,
    Retry,
    RetrySettings,
    RetryState,
)
from twisted_alive.core.retry import retryFor as _retryFor
from twisted_alive.core.sessions import SessionTable

log = Logger(namespace="twisted_alive")


def tokenPrefix(token: bytes) -> str:
    """The first 8 hex digits of a session token, for logs and status pages
    (never the whole token)."""
    return token.hex()[:8] if token != NO_SESSION else "-"


@implementer(ISessionHost)
class AliveClientFactory(ReconnectingClientFactory):
    """
    A ``ReconnectingClientFactory`` that owns a client session: messages
    given to `sendMessage` reach the server's application exactly once and
    in order, across any number of reconnects.

    Use it like any client factory: ``AliveClientFactory.forProtocol(P)``
    with ``reactor.connectTCP`` or ``connectSSL`` (the factory reconnects
    itself), or with an endpoint under ``ClientService`` (which then does the
    reconnecting; the session works the same). ``P`` is a
    `HeartbeatProtocol` subclass; its class attributes set the limits.

    Backoff keeps the stock attributes (``initialDelay``, ``maxDelay``,
    ``factor``, ``jitter``, ``maxRetries``) and fixes the stock flaws: the delay
    resets itself once a connection completed HELLO and stayed up
    ``stableAfter`` seconds, and when the host answers again after attempts
    that got none; a jittered delay is never above ``maxDelay`` nor below
    zero; the jitter comes from ``random`` (a callable returning a float in
    [0, 1), replaceable in tests). The first reconnect after a stable
    connection is lost is spread over ``quickSpread`` seconds.

    The decisions themselves are sans-IO, in ``twisted_alive.core.retry``
    (`RetryState.afterLoss`); this class schedules what they say.
    `clientServicePolicy` gives the same backoff to ``ClientService``.

    :cvar retryPolicy: `Retry` per `Reason` of a loss.
    :cvar goodbyePolicy: `Retry` per GOODBYE code received; it overrides
        ``retryPolicy`` (by default ``GO_AWAY`` stops retrying).
    :cvar causePolicy: `Retry` per `Cause` of a loss; it overrides both (by
        default a peer that does not speak twisted_alive and a failed TLS
        handshake stop retrying: both are configuration errors).
    :cvar quickDelay: the shortest delay of a `Retry.QUICK` reconnect, in
        seconds.
    :cvar quickSpread: a `Retry.QUICK` reconnect waits ``quickDelay`` plus a
        delay drawn uniformly over [0, ``quickSpread``] seconds (never more
        than ``maxDelay`` in all), so that clients that lost their
        connections together (a server restart) do not all come back in the
        same instant.
    :cvar stableAfter: seconds a connection must stay up after HELLO for the
        backoff to reset. The backoff also resets when the host answers
        again: a connection attempt refused, or a connection made, after an
        attempt that got no answer (``CONNECT_TIMEOUT``, or
        ``CONNECT_FAILED`` such as no route to the host).
    :ivar lastLoss: the `Loss` of the latest lost connection or failed
        attempt.
    :ivar losses: how many losses each `Reason` had.
    :ivar connected: the protocol carrying the session now, or ``None``.
    """

    protocol: Any = HeartbeatProtocol
    role = Role.CLIENT
    initialDelay = 0.5
    maxDelay: float = 60.0  # type: ignore[assignment]
    factor = 2.0
    jitter = 0.2
    retryPolicy: Mapping[Reason, Retry] = DEFAULT_RETRY_POLICY
    goodbyePolicy: Mapping[GoodbyeCode, Retry] = DEFAULT_GOODBYE_POLICY
    causePolicy: Mapping[Cause, Retry] = DEFAULT_CAUSE_POLICY
    quickDelay = 0.05
    quickSpread = 1.0
    stableAfter = 5.0
    random: Callable[[], float] = random.random

    connected: HeartbeatMixin | None = None
    lastLoss: Loss | None = None
    _protocolLoss: Loss | None = None
    _binding: Binding | None = None
    _stableCall: IDelayedCall | None = None
    _connectedAt: float | None = None
    _starting: HeartbeatMixin | None = None

    def __init__(self) -> None:
        self._retry = RetryState()
        self.losses: dict[Reason, int] = {}
        self._waiters: list[Deferred[HeartbeatMixin]] = []
        self.connections = 0

    @property
    def retries(self) -> int:
        """Retries in a row since the backoff last reset (the stock
        attribute, kept in the `RetryState`)."""
        return self._retry.retries

    @retries.setter
    def retries(self, value: int) -> None:
        self._retry.retries = value

    def aliveSettings(self) -> Settings:
        """The `Settings` of this factory's connections (client role)."""
        return settingsFor(self.protocol, accepting=False)

    # -- the session -----------------------------------------------------------

    @property
    def session(self) -> Session:
        """The client session (created on first use)."""
        return self.clientBinding().session

    def clientBinding(self) -> Binding:
        """The binding of the session the next connection carries
        (`ISessionHost`)."""
        if self._binding is None:
            self._binding = Binding(self.aliveSettings().newSession())
        return self._binding

    def bindingFor(self, session: Session) -> Binding:
        """Not used: this factory plays the client role."""
        raise NotImplementedError

    def sessionFor(self, token: bytes, now: float) -> tuple[Session, bool] | None:
        """Not used: this factory plays the client role."""
        raise NotImplementedError

    def sendMessage(self, payload: bytes) -> Deferred[Receipt]:
        """
        Send one message in the session, connected or not: it is queued
        while disconnected and resent after a reconnect until confirmed.

        :returns: a Deferred that fires with a `Receipt` once the server's
            application processed the message, or fails with
            `DeliveryFailed` (the session ended: `stopTrying`, ``GO_AWAY``,
            an unknown session, or the peer's application failed on it) or
            `QueueFull` (at once; nothing was queued).
        """
        checkPayload(payload, self.aliveSettings())
        if self._retry.stopped:
            return defer.fail(DeliveryFailed("the factory stopped trying; message not sent"))
        binding = self.clientBinding()
        return self._queued(binding.submit(partial(binding.session.outbox.submit, payload)))

    def sendMessages(self, payloads: Iterable[bytes]) -> Deferred[Receipt]:
        """
        Send several messages in the session, connected or not, with one
        receipt for all of them (as `HeartbeatMixin.sendMessages` does on
        one connection): they are queued while disconnected and resent after
        a reconnect until confirmed.

        :param payloads: the messages (at least one), in order.
        :returns: a Deferred that fires with the `Receipt` of the last
            message once the server's application processed all of them; or
            fails with `DeliveryFailed` (the session ended, or the peer's
            application failed on one of them: ``rejected``) or at once with
            `QueueFull` (then none was queued).
        :raises TypeError: if a payload is not ``bytes``.
        :raises ValueError: if there is no payload, or one is larger than a
            frame allows.
        """
        payloads = checkPayloads(payloads, self.aliveSettings())
        if self._retry.stopped:
            return defer.fail(DeliveryFailed("the factory stopped trying; messages not sent"))
        binding = self.clientBinding()
        outbox = binding.session.outbox
        # With no peer window given, all of them are queued: the
        # connection's pump sends them as its windows allow.
        return self._queued(
            binding.submit(lambda handle: outbox.submitMany(payloads, handle, 0, 0.0, 0))
        )

    def _queued(self, d: Deferred[Receipt]) -> Deferred[Receipt]:
        """After messages were queued (unless ``d`` failed already): send
        what the connection allows, and tell a registered producer."""
        if d.called:
            return d  # QueueFull
        current = self.connected
        if current is not None:
            current._pump()
        self.clientBinding().pace()
        return d

    def registerProducer(self, producer: IPushProducer) -> None:
        """
        Have ``producer`` paused while the session's send queue is high
        (half of ``maxQueued`` messages or ``maxQueuedBytes`` bytes) and
        resumed once it is down to a quarter, connected or not: a sender that
        respects the pause never meets `QueueFull`.

        :raises RuntimeError: if a producer is registered already.
        """
        self.clientBinding().register(producer)

    def unregisterProducer(self) -> None:
        """Forget the producer registered with `registerProducer`."""
        self.clientBinding().pacer = None

    def whenConnected(self) -> Deferred[HeartbeatMixin]:
        """A Deferred that fires with the protocol once a connection has
        completed its HELLO exchange (at once if one has)."""
        if self.connected is not None:
            return defer.succeed(self.connected)
        d: Deferred[HeartbeatMixin] = Deferred()
        self._waiters.append(d)
        return d

    @property
    def pending(self) -> int:
        """Messages sent or queued but not yet confirmed."""
        return len(self.session.outbox)

    # -- ISessionHost ---------------------------------------------------------------

    def connectionStarted(self, protocol: object) -> None:
        """A connection was made (before HELLO)."""
        self.connections += 1
        self._starting = cast(HeartbeatMixin, protocol)

    def sessionOpened(self, protocol: object, resumed: bool) -> None:
        """A connection completed HELLO: it carries the session now."""
        proto = cast(HeartbeatMixin, protocol)
        self.connected = proto
        clock = self._clockNow()
        self._connectedAt = clock.seconds()
        self._cancelStable()
        self._stableCall = clock.callLater(self.stableAfter, self._stable)
        log.info(
            "alive.session: {token} {how} with {peer}",
            token=tokenPrefix(self.session.token),
            how="resumed" if resumed else "started",
            peer=proto._peer,
            resumed=resumed,
            event="session",
        )
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(proto)

    def sessionUnknown(self, protocol: object, detail: str) -> None:
        """The server did not resume the session: start a new one at once;
        what was sent and unconfirmed may or may not have been processed."""
        self._restartSession(detail)
        self._retry.atOnce = True

    def _restartSession(self, detail: str) -> None:
        session = self.session
        old = tokenPrefix(session.token)
        uncertain = session.restart()
        log.warn(
            "alive.session_lost: session {token} is gone ({detail}); "
            "{count} unconfirmed messages may or may not have been processed",
            token=old,
            detail=detail,
            count=len(uncertain),
            event="session_unknown",
        )
        self.clientBinding().failUndelivered(
            uncertain,
            f"the server no longer knows session {old}: the message may or may not "
            "have been processed",
            None,
        )

    def sessionLost(self, protocol: object, loss: Loss) -> None:
        """A connection ended; the session stays for the next one."""
        proto = cast(HeartbeatMixin, protocol)
        if self.connected is proto:
            self.connected = None
        self._cancelStable()
        self.lastLoss = self._protocolLoss = loss
        self.losses[loss.reason] = self.losses.get(loss.reason, 0) + 1
        session = self.session
        conn = proto._alive
        opened = conn is not None and conn.peerHello is not None
        if self._starting is proto:
            self._starting = None
        if opened and session.token == NO_SESSION:
            # The server keeps no sessions: the next connection starts a new
            # one (after the usual delay), and what was in flight is
            # uncertain.
            self._restartSession("the server keeps no sessions")
        if self._retry.stopped:
            self._endSession(loss)

    # -- reconnecting --------------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """Build a protocol carrying this factory's session (the backoff is
        not reset here, only once a connection proved stable)."""
        proto: Any = ClientFactory.buildProtocol(self, addr)
        if proto is not None and self.clock is not None:
            proto.clock = self.clock
        return proto

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        """A connection attempt failed: classify it, then retry or stop."""
        kind, detail, cause = describeFailure(reason, attempt=True)
        loss = Loss(kind, f"connection attempt failed: {detail}", reason, cause=cause)
        self.lastLoss = loss
        self.losses[kind] = self.losses.get(kind, 0) + 1
        log.info(
            "alive.connect_failed: {reason}: {detail}",
            reason=kind.name,
            detail=loss.detail,
            event="connect_failed",
        )
        self.connector = connector
        self._retryAfter(loss, connector)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        """A connection ended (the protocol classified it): retry or stop."""
        # The protocol classified the loss (sessionLost) just before: under
        # TLS it saw the handshake error, while ``reason`` here is only the
        # TCP connection's end.
        loss, self._protocolLoss = self._protocolLoss, None
        if loss is None:
            kind, detail, cause = describeFailure(reason, attempt=True)
            loss = Loss(kind, detail, reason, cause=cause)
        self.connector = connector
        self._retryAfter(loss, connector)

    def retryFor(self, loss: Loss) -> Retry:
        """
        The `Retry` decision for ``loss``: ``causePolicy`` for the `Cause`
        it names, else ``goodbyePolicy`` for the GOODBYE code it names, else
        ``retryPolicy``. Override for other rules.
        """
        return _retryFor(loss, self.retryPolicy, self.goodbyePolicy, self.causePolicy)

    def retrySettings(self) -> RetrySettings:
        """This factory's backoff attributes, as `RetrySettings`."""
        return RetrySettings(
            initialDelay=self.initialDelay,
            factor=self.factor,
            maxDelay=self.maxDelay,
            jitter=self.jitter,
            quickDelay=self.quickDelay,
            quickSpread=self.quickSpread,
            maxRetries=self.maxRetries,
        )

    def nextDelay(self) -> float:
        """
        The next backoff delay: ``initialDelay * factor ** retries``, capped
        at ``maxDelay``, with multiplicative jitter of +/- ``jitter``, and
        never above ``maxDelay`` nor below zero.
        """
        return self.retrySettings().backoffDelay(self.retries, self.random)

    def clientServicePolicy(self) -> Callable[[int], float]:
        """
        This factory's backoff (``initialDelay``, ``factor``, ``maxDelay``,
        ``jitter``, ``random``) as a ``retryPolicy`` for Twisted's
        ``ClientService``: failed attempts in a row to seconds, the first
        retry after ``initialDelay``. Only the backoff carries over:
        ``ClientService`` cannot stop from a policy, nor reconnect quickly
        after a stable connection (see ``docs/guide.md``).
        """
        return self.retrySettings().servicePolicy(self.random)

    def _retryAfter(self, loss: Loss, connector: IConnector) -> None:
        if not self.continueTrying:
            self._endSession(loss)
            return
        decision = self.retryFor(loss)
        step = self._retry.afterLoss(
            loss, decision, self.retrySettings(), self.random, self.nextDelay
        )
        if step.answered:
            log.info(
                "alive.retry: the host answers again ({reason}): backoff reset",
                reason=loss.reason.name,
                event="retry",
            )
            self.delay = self.initialDelay
        if step.delay is None:
            if step.exhausted:
                log.info(
                    "alive.retry: giving up after {retries} retries",
                    retries=self.retries - 1,
                    event="retry",
                )
            else:
                log.info(
                    "alive.retry: giving up after {reason}: {detail}",
                    reason=loss.reason.name,
                    detail=loss.detail,
                    event="retry",
                )
            self._halt()
            self._endSession(loss)
            return
        delay = self.delay = step.delay
        log.info(
            "alive.retry: reconnecting in {delay:.3f} s after {reason} (attempt {attempt})",
            delay=delay,
            reason=loss.reason.name,
            attempt=self.retries,
            event="retry",
        )

        def reconnector() -> None:
            self._callID = None
            connector.connect()

        self._callID = self._clockNow().callLater(delay, reconnector)

    def resetDelay(self) -> None:
        """Reset the backoff (done by itself once a connection is stable).
        Unlike the stock method, it never undoes `stopTrying`."""
        self.delay = self.initialDelay
        self.retries = 0

    def stopTrying(self) -> None:
        """
        Stop reconnecting. The session ends: if no connection is open,
        pending messages fail with `DeliveryFailed` at once; otherwise the
        open connection carries on, and they fail when it ends.
        """
        self._halt()
        if self.connected is None or self.connected.state is not State.OPEN:
            self._endSession(None)

    def _halt(self) -> None:
        """Stop reconnecting, without ending the session yet."""
        ReconnectingClientFactory.stopTrying(self)  # type: ignore[no-untyped-call]
        self._retry.stopped = True

    def close(self, code: GoodbyeCode = GoodbyeCode.NORMAL, reason: str = "") -> Deferred[None]:
        """
        Stop reconnecting, then close the open connection in order (its
        queued messages are sent and acknowledged first, within the
        protocol's ``closeTimeout``).

        :returns: a Deferred that fires once the connection is closed.
        """
        current = self.connected or self._starting
        ReconnectingClientFactory.stopTrying(self)  # type: ignore[no-untyped-call]
        self._retry.stopped = True
        if current is None or current.loss is not None:
            self._endSession(None)
            return defer.succeed(None)
        return current.close(code, reason).addCallback(lambda _: None)

    def _endSession(self, loss: Loss | None) -> None:
        entries = self.session.outbox.drain()
        if not entries:
            return
        why = f"the session ended ({loss})" if loss is not None else "the session ended"
        self.clientBinding().failUndelivered(entries, f"{why} before confirmation", loss)

    # -- time ----------------------------------------------------------------------

    def _clockNow(self) -> IReactorTime:
        if self.clock is None:
            from twisted.internet import reactor

            self.clock = reactor
        return cast(IReactorTime, self.clock)

    def _stable(self) -> None:
        self._stableCall = None
        self._retry.connectionStable()
        self.resetDelay()

    def _cancelStable(self) -> None:
        if self._stableCall is not None and self._stableCall.active():
            self._stableCall.cancel()
        self._stableCall = None


@implementer(ISessionHost)
class AliveServerFactory(Factory):
    """
    A server factory that keeps a session per client, so that a client
    that comes back (`AliveClientFactory`) resumes where it left off, in
    both directions.

    Sessions are found by their token (128 random bits, compared in
    constant time), kept for ``sessionTTL`` seconds after their last
    connection ended, and at most ``maxSessions`` of them without a
    connection (the least recently seen goes first). A client that asks for
    an unknown or expired session gets GOODBYE(SESSION_UNKNOWN) and starts a
    new one.

    :cvar sessionTTL: seconds a session without connection is kept.
    :cvar maxSessions: sessions without connection kept at most.
    :ivar connections: the live protocols, HELLO done or not.
    :ivar sessions: sessions by token digest (read-only use).
    :ivar losses: how many losses each `Reason` had.
    :ivar endedCounts: message counts of the sessions dropped so far
        (``sent``, ``confirmed``, ``redelivered``, ``processed``); added to the
        counts of the live sessions they give totals that never go backwards.
    """

    protocol: Any = HeartbeatProtocol
    role = Role.SERVER
    sessionTTL = 300.0
    maxSessions = 10_000
    clock: IReactorTime | None = None
    _expiryCall: IDelayedCall | None = None
    _stoppedFactory = False

    def __init__(self) -> None:
        self.connections: set[HeartbeatMixin] = set()
        self._table: SessionTable[bytes, Session] = SessionTable()
        self._bindings: dict[bytes, Binding] = {}
        self.sessions: Mapping[bytes, Session] = MappingProxyType(self._table.entries)
        self.losses: dict[Reason, int] = {}
        self.endedCounts: Counter[str] = Counter()
        self.sessionsExpired = 0
        self.sessionsResumed = 0

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """Build a protocol; it uses this factory's clock if one is set."""
        proto: Any = Factory.buildProtocol(self, addr)
        if proto is not None and self.clock is not None:
            proto.clock = self.clock
        return proto

    @staticmethod
    def _key(token: bytes) -> bytes:
        # Look sessions up by a digest of the token, then compare the token
        # itself in constant time: lookup timing reveals nothing useful.
        return hashlib.sha256(token).digest()

    def _now(self) -> float:
        clock = self.clock
        if clock is None:
            from twisted.internet import reactor

            clock = self.clock = cast(IReactorTime, reactor)
        return clock.seconds()

    def aliveSettings(self) -> Settings:
        """The `Settings` of this factory's connections (server role: the
        accepting side's ``maxPeerInterval``)."""
        return settingsFor(self.protocol, accepting=True)

    def clientBinding(self) -> Binding:
        """Not used: this factory plays the server role."""
        raise NotImplementedError

    def bindingFor(self, session: Session) -> Binding:
        """The binding of a session of this factory (`ISessionHost`): which
        connection carries it, which producer it paces."""
        key = self._key(session.token)
        binding = self._bindings.get(key)
        if binding is None or binding.session is not session:
            binding = self._bindings[key] = Binding(session)
        return binding

    def sessionFor(self, token: bytes, now: float) -> tuple[Session, bool] | None:
        """The session for a client's HELLO token (`ISessionHost`)."""
        self.expireSessions(now)
        table = self._table
        if token == NO_SESSION:
            new = Session.newToken()
            session = self.aliveSettings().newSession()
            session.token = new
            session.lastSeen = now
            table.add(self._key(new), session, now)
            return session, False
        key = self._key(token)
        known = table.get(key)
        if known is None or not known.matches(token):
            return None
        session = known
        session.lastSeen = now
        table.touch(key, now)
        self.sessionsResumed += 1
        session.resumes += 1
        return session, True

    def expireSessions(self, now: float | None = None) -> int:
        """
        Drop sessions without a connection for longer than ``sessionTTL``,
        and the least recently seen beyond ``maxSessions``; their pending
        messages fail with `DeliveryFailed`. It costs O(1) per session
        dropped: only the sessions it drops are looked at.

        :returns: how many sessions were dropped.
        """
        if now is None:
            now = self._now()
        dropped = self._table.expire(now, self.sessionTTL, self.maxSessions)
        for session in dropped:
            self._failSession(session, "the session expired")
        self.sessionsExpired += len(dropped)
        return len(dropped)

    def _armExpiry(self, now: float) -> None:
        """Arm one timer for the earliest expiry of a session without
        connection, so that sessions expire even if no client comes. An
        armed timer is left alone: sessions only ever join the end of the
        queue, so the earliest expiry can only move later, and a timer that
        fires early re-arms itself."""
        if self._stoppedFactory or (
            self._expiryCall is not None and self._expiryCall.active()
        ):
            return
        self._expiryCall = None
        due = self._table.nextExpiry(self.sessionTTL)
        if due is None:
            return
        clock = self.clock
        if clock is None:
            self._now()
            clock = self.clock
        assert clock is not None
        self._expiryCall = clock.callLater(max(due - now, 0.001), self._expireDue)

    def _expireDue(self) -> None:
        self._expiryCall = None
        now = self._now()
        self.expireSessions(now)
        self._armExpiry(now)

    def _failSession(self, session: Session, why: str, binding: Binding | None = None) -> None:
        outbox = session.outbox
        self.endedCounts.update(
            sent=outbox.sentCount,
            confirmed=outbox.confirmedCount,
            redelivered=outbox.redelivered,
            processed=session.inbox.processedUpTo,
        )
        kept = self._bindings.get(self._key(session.token))
        if kept is not None and kept.session is session:
            del self._bindings[self._key(session.token)]
            binding = kept
        entries = session.outbox.drain()
        if binding is not None:
            binding.failUndelivered(entries, f"{why} before confirmation", None)

    def connectionStarted(self, protocol: object) -> None:
        """A connection was made (before HELLO)."""
        self.connections.add(cast(HeartbeatMixin, protocol))

    def sessionOpened(self, protocol: object, resumed: bool) -> None:
        """A client completed HELLO: its session does not expire while the
        connection lasts."""
        proto = cast(HeartbeatMixin, protocol)
        session = proto.session
        assert session is not None
        key = self._key(session.token)
        if self._table.get(key) is session:
            self._table.attach(key)
        log.info(
            "alive.session: {token} {how} for {peer}",
            token=tokenPrefix(session.token),
            how="resumed" if resumed else "started",
            peer=proto._peer,
            resumed=resumed,
            event="session",
        )

    def sessionUnknown(self, protocol: object, detail: str) -> None:
        """Not used: this factory plays the server role."""

    def sessionLost(self, protocol: object, loss: Loss) -> None:
        """A connection ended; its session waits for the client to return,
        unless the client said GOODBYE (then the session is over)."""
        proto = cast(HeartbeatMixin, protocol)
        self.connections.discard(proto)
        self.losses[loss.reason] = self.losses.get(loss.reason, 0) + 1
        session = proto.session
        if session is None or session.token == NO_SESSION:
            # No session was attached (HELLO never completed).
            if session is not None:
                self._failSession(session, f"the connection ended ({loss})", proto._binding)
            return
        now = self._now()
        session.lastSeen = now
        key = self._key(session.token)
        table = self._table
        binding = self._bindings.get(key)
        if table.get(key) is session and (binding is None or binding.carrier is None):
            # Not taken over by a newer connection (that one decides when
            # it ends).
            if self._stoppedFactory:
                table.remove(key)
                self._failSession(session, "the server stopped")
            elif loss.reason is Reason.CLEAN_CLOSE:
                table.remove(key)
                self._failSession(session, "the client closed the session")
            else:
                # It waits, the most recently seen (the least recently seen
                # go first).
                table.detach(key, now)
        self.expireSessions(now)
        self._armExpiry(now)

    def stopFactory(self) -> None:
        """
        Fail the pending messages of every session without a connection;
        sessions whose connection is still up (for example while
        `closeAll` runs after the port stopped listening) are failed when
        that connection ends.
        """
        self._stoppedFactory = True
        if self._expiryCall is not None and self._expiryCall.active():
            self._expiryCall.cancel()
        self._expiryCall = None
        for session in self._table.removeIdle():
            self._failSession(session, "the server stopped")

    def startFactory(self) -> None:
        """Sessions are kept again (after a `stopFactory`)."""
        self._stoppedFactory = False

    def closeAll(
        self, code: GoodbyeCode = GoodbyeCode.SHUTTING_DOWN, reason: str = "server shutting down"
    ) -> Deferred[list[Any]]:
        """
        Close every live connection in order (GOODBYE, then wait for
        outstanding acknowledgements, within each protocol's
        ``closeTimeout``).

        :returns: a Deferred that fires when all are closed.
        """
        return defer.gatherResults(
            [proto.close(code, reason) for proto in list(self.connections)]
        )

    def isCarried(self, session: Session) -> bool:
        """Whether a live connection carries ``session`` now."""
        binding = self._bindings.get(self._key(session.token))
        return binding is not None and binding.carrier is not None

    def connectionsInfo(self) -> list[dict[str, Any]]:
        """One dict per live connection: peer, state, RTT, last heard,
        unconfirmed count and session token prefix."""
        now = self._now()
        out = []
        for proto in self.connections:
            session = proto.session
            heard = proto.lastHeard
            out.append(
                {
                    "peer": proto._peer,
                    "state": proto.state.value if proto.state is not None else None,
                    "rtt": proto.rtt,
                    "lastHeard": None if heard is None else max(0.0, now - heard),
                    "unconfirmed": len(session.outbox) if session is not None else 0,
                    "session": tokenPrefix(session.token) if session is not None else "-",
                }
            )
        return out


__all__ = [
    "AliveClientFactory",
    "AliveServerFactory",
    "Retry",
    "Entry",
]
