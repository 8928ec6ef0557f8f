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
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
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

from twisted_alive._binding import Binding, checkTransactional, transactionProblem
from twisted_alive._interfaces import ISessionHost, ISessionStore, ISharedSessionStore
from twisted_alive._journal import (
    Journal,
    Recovered,
    ServerRecovered,
    checkLimits,
    claimStore,
    loadSessions,
    outboxLimits,
    partialSubmit,
    releaseStore,
)
from twisted_alive._mixin import (
    HeartbeatMixin,
    HeartbeatProtocol,
    checkPayload,
    checkPayloads,
    settingsFor,
)
from twisted_alive._reasons import Cause, Loss, Reason, describeFailure
from twisted_alive._redis import Polled, SessionNotFound, SessionTakenOver
from twisted_alive._stores import CLOSED
from twisted_alive.core.connection import Connection, Role, Settings, State
from twisted_alive.core.delivery import Entry, Session, undelivered
from twisted_alive.core.frames import NO_SESSION, GoodbyeCode
from twisted_alive.core.outcomes import DeliveryFailed, QueueFull, Receipt
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
from twisted_alive.core.stored import (
    StoreClosed,
    StoredSession,
    StoreError,
    sessionIdOf,
    sessionOf,
)

log = Logger(namespace="twisted_alive")


STAYS = "the message stays in the session store, for the next process"
"""What the `DeliveryFailed` of a stored message says when this process
stops before its confirmation: the next process sends it again."""

STORE_CLOSED = f"the session store closed ({STAYS}) before confirmation"
"""The text of the `DeliveryFailed` of a stored message left unconfirmed
when the store closed (`StoreClosed`: the process is stopping)."""


TAKEN_OVER = "session taken over by another connection"
"""The reason of the GOODBYE (``SHUTTING_DOWN``: a client still there
comes back and resumes) that closes a connection whose session another
process took over (a shared store)."""

MOVED = "the session moved to another process, which delivers the message"
"""The text of the `DeliveryFailed` of a message left unconfirmed in a
session another process took over (a shared store): that process sends it
and its client confirms it there; its outcome is not known here."""

NOT_STORED = (
    "the session moved to another process before the message was stored: it was not sent"
)
"""The text of the `DeliveryFailed` of a message whose session another
process took over before the store took the message: nobody sends it."""

MAIL_BATCH = 64

POLL_OUTCOMES = 1000
"""`sendTo` outcomes asked for per poll at most: the oldest awaited (they
are confirmed about in the order they were sent)."""
"""Messages moved from a session's mailbox into the session at a time."""


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
    :ivar store: the `ISessionStore` that keeps the session across a
        restart of the process, or ``None`` (the session lives in memory).
        With a store, each message is stored before it is sent, and the
        application must wait for `recovered` before the first connection.
    :ivar epoch: the session's epoch: it changes whenever the session is
        replaced by a new one (`sessionReset`); kept in the store, if any.
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
    store: ISessionStore | None = None
    _journal: Journal | None = None
    _recovered: list[Deferred[Recovered]] | None = None
    _loadOutcome: Recovered | Failure | None = None

    def __init__(self, store: ISessionStore | None = None) -> None:
        self._retry = RetryState()
        self.losses: dict[Reason, int] = {}
        self._waiters: list[Deferred[HeartbeatMixin]] = []
        self.connections = 0
        self.epoch = 1
        if store is not None:
            self.store = store

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

    def startFactory(self) -> None:
        """
        Check, when the factory starts (its first ``connectTCP`` or
        endpoint connection), that its protocol can receive with its
        ``store``.

        :raises TypeError: if the protocol defines
            ``messageReceivedInTransaction`` and the ``store`` (or the lack
            of one) cannot run it: an error that reconnecting cannot fix.
        """
        checkTransactional(self.protocol, self.store)
        super().startFactory()  # type: ignore[no-untyped-call]

    # -- the session -----------------------------------------------------------

    @property
    def session(self) -> Session:
        """The client session (created on first use)."""
        return self.clientBinding().session

    def clientBinding(self) -> Binding:
        """The binding of the session the next connection carries
        (`ISessionHost`).

        :raises RuntimeError: with a ``store``, before `recovered` fired.
        """
        if self._binding is None:
            if self.store is not None:
                raise RuntimeError(
                    "the session is in a store: wait for factory.recovered() before "
                    "sending or connecting"
                )
            self._binding = Binding(self.aliveSettings().newSession())
        return self._binding

    def recovered(self) -> Deferred[Recovered]:
        """
        With a ``store``: load the session (the one a previous process left
        in it, or a new one), once; to be awaited before the first
        connection and the first message.

        :returns: a Deferred that fires with what a previous process
            submitted and the server has not confirmed: ``(payload,
            Deferred[Receipt])`` per message, in order. Each is sent again
            (with its sequence number, in the same session if the server
            still knows it) and each Deferred fires exactly once, as
            `sendMessage`'s would: with a `Receipt`, or with
            `DeliveryFailed` (``maybeProcessed=True`` if the server no
            longer knows the session: the previous process may have sent
            it). Without a store: an empty list. Fails with
            ``TypeError`` if the protocol defines
            ``messageReceivedInTransaction`` and the store cannot run it
            (it is not an `ITransactionalStore`).
        """
        if self._recovered is None:
            self._recovered = []
            store = self.store
            problem = transactionProblem(self.protocol, store)
            if problem is not None:
                self._loadDone(Failure(TypeError(problem)))  # type: ignore[no-untyped-call]
            elif store is None:
                self._loadDone([])
            elif (taken := claimStore(store, self)) is not None:
                self._loadDone(Failure(StoreError(taken)))  # type: ignore[no-untyped-call]
            else:
                journal = self._journal = Journal(store, self._storeFailed, self._release)
                settings = self.aliveSettings()
                limits = outboxLimits(settings)
                Deferred.fromCoroutine(journal.load(settings.newSession, limits)).addCallback(
                    self._loaded
                ).addBoth(self._loadDone)
        outcome = self._loadOutcome
        if outcome is None:
            d: Deferred[Recovered] = Deferred()
            self._recovered.append(d)
            return d
        if isinstance(outcome, Failure):
            return defer.fail(outcome)
        return defer.succeed(outcome)

    def _loadDone(self, outcome: Recovered | Failure) -> None:
        """The session loaded (or the store failed to): tell every caller
        of `recovered` so far; later ones get the same outcome."""
        self._loadOutcome = outcome
        waiting, self._recovered = self._recovered or [], []
        for d in waiting:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)

    def _loaded(self, loaded: tuple[Binding, Recovered]) -> Recovered:
        binding, recovered = loaded
        assert self._journal is not None
        self._binding = binding
        self.epoch = self._journal.epoch
        log.info(
            "alive.store: session {token} loaded from {store} (epoch {epoch}): "
            "{count} messages not confirmed",
            token=tokenPrefix(binding.session.token),
            store=self.store,
            epoch=self.epoch,
            count=len(recovered),
            event="store_loaded",
        )
        return recovered

    def whenStored(self) -> Deferred[None]:
        """A Deferred that fires once every message submitted so far is
        durable in the ``store`` (at once without a store)."""
        if self._journal is None:
            return defer.succeed(None)
        return self._journal.flush()

    def _tooLargeForPeer(self, payloads: Sequence[bytes]) -> Deferred[Receipt] | None:
        """With a store, a message larger than the connected server accepts
        fails at once (`tooLargeFor`)."""
        return tooLargeFor(self.connected, payloads)

    def _release(self) -> None:
        """The store committed more messages: send what the window allows
        (buffered: a group commit fires its appends one after the other)."""
        current = self.connected
        if current is not None:
            current._pump(buffered=True)

    def _storeFailed(self, failure: Failure) -> None:
        """A store operation the session needs failed: end the session;
        unless the store is closed (`StoreClosed`: the process is
        stopping), then `_storeClosed`."""
        if isinstance(failure.value, StoreClosed):
            self._storeClosed()
            return
        self._abandon(f"session store failed: {failure.getErrorMessage()}")

    def _storeClosed(self) -> None:
        """
        The store is closed: the process (or this factory) is stopping, the
        session is not over. Stop reconnecting, fail what is unconfirmed
        here (`STORE_CLOSED`: the store keeps it, the next process sends
        it again) and abort the connection, so that nothing more is
        processed whose position could not be committed (the next process
        gets it again, flagged as redelivered). The store keeps the
        session as it was last committed (the `Journal` writes nothing
        more).
        """
        log.info(
            "alive.store: {store} is closed: this process stops using session {token}; "
            "the store keeps it, and its unconfirmed messages, for the next process",
            store=self.store,
            token=tokenPrefix(self.session.token),
            event="store_closed",
        )
        self._halt()
        entries = self.session.outbox.drain()
        self.clientBinding().failUndelivered(entries, STORE_CLOSED, None)
        for proto in (self.connected, self._starting):
            if proto is not None and proto.loss is None:
                proto.abort("the session store is closed")

    def _abandon(self, why: str) -> None:
        """End a stored session that cannot go on (``why``): stop
        reconnecting, fail what is unconfirmed, abort the connection."""
        if self._retry.stopped or (self._journal is not None and self._journal.stopped):
            return
        log.error("alive.store: {why}; the session ends", why=why, event="store_failed")
        self._halt()
        self._endSession(Loss(Reason.LOCAL_CLOSE, why))
        if self.connected is not None:
            self.connected.abort(why)

    def sessionResumed(self) -> None:
        """
        Override: a connection resumed the session (gap-free: every message
        sent in it is delivered exactly once, in order). Called after
        `whenConnected`'s Deferreds fire.
        """

    def sessionReset(self, reason: str, maybeProcessed: int) -> None:
        """
        Override: the session was replaced by a new one (the server no
        longer knew it), with a new ``epoch``.

        :param reason: why.
        :param maybeProcessed: how many outcomes (Deferreds) failed with
            ``DeliveryFailed(maybeProcessed=True)``: sent in the old session
            and not confirmed, they may or may not have been processed (a
            possible gap). The messages never sent carry over into the new
            session.
        """

    def bindingFor(self, session: Session) -> Binding:
        """Not used: this factory plays the client role."""
        raise NotImplementedError

    def sessionFor(self, token: bytes, now: float) -> tuple[Session, bool] | None:
        """Not used: this factory plays the client role."""
        raise NotImplementedError

    def sessionForHello(self, token: bytes, now: float) -> tuple[Session, bool] | None:
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
        if binding.journal is not None:
            refusal = self._tooLargeForPeer([payload])
            if refusal is not None:
                return refusal
            return self._queued(binding.journal.submit([payload], False), stored=True)
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
        if binding.journal is not None:
            refusal = self._tooLargeForPeer(payloads)
            if refusal is not None:
                return refusal
            return self._queued(binding.journal.submit(payloads, True), stored=True)
        outbox = binding.session.outbox
        # With no peer window given, all of them are queued: the
        # connection's pump sends them as its windows allow.
        return self._queued(
            binding.submit(lambda handle: outbox.submitMany(payloads, handle, 0, 0.0, 0))
        )

    def _queued(self, d: Deferred[Receipt], stored: bool = False) -> Deferred[Receipt]:
        """After messages were queued (unless ``d`` failed already): send
        what the connection allows, and tell a registered producer.
        ``stored``: queued by the journal, which sends them once the store
        committed them (`_release`): nothing to send now."""
        if d.called:
            return d  # QueueFull
        current = self.connected
        if current is not None and not stored:
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
    def lastSubmitted(self) -> int:
        """
        The sequence number of the last message submitted in the session
        (0 if none). With a ``store`` it is stored with the message, so that
        after a restart (`recovered`) it says, with the ``epoch``, how far a
        previous process got: every message up to it was stored, those the
        server did not confirm are recovered, and nothing after it was.
        """
        outbox = self.session.outbox
        if outbox.storedUpTo is not None:
            return outbox.nextNumber() - 1
        return outbox.nextSeq - 1 + sum(1 for entry in outbox.queue if not entry.seq)

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
        if self._journal is not None:
            if self.session.token == NO_SESSION:
                # The server keeps no sessions: nothing stored could be
                # resumed, and what was sent would be guessed at.
                self._abandon(
                    "the server keeps no sessions: a session in a store needs an "
                    "AliveServerFactory"
                )
                return
            self._journal.opened()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(proto)
        if resumed:
            self.sessionResumed()

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
        binding = self.clientBinding()
        failed = [handle for handle, maybe in _maybe(binding, uncertain) if maybe]
        binding.failUndelivered(
            uncertain,
            f"the server no longer knows session {old}: the message may or may not "
            "have been processed",
            None,
        )
        self.epoch += 1
        if self._journal is not None:
            self._journal.reset()
            self.epoch = self._journal.epoch
        self.sessionReset(detail, len(failed))

    def sessionLost(self, protocol: object, loss: Loss) -> None:
        """A connection ended; the session stays for the next one, unless
        the server refused to resume it (`_refusedResume`)."""
        proto = cast(HeartbeatMixin, protocol)
        wasOpen = self.connected is proto
        if wasOpen:
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
        elif not wasOpen and _refusedResume(conn, loss):
            # A position that went back (a store restored from a backup, or
            # that lost its last commits): the session cannot go on, on
            # either side; retrying it would fail the same way forever.
            self._restartSession(f"the session cannot be resumed: {loss.detail}")
            self._retry.atOnce = True
        if self._retry.stopped:
            self._endSession(loss)

    # -- reconnecting --------------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """Build a protocol carrying this factory's session (the backoff is
        not reset here, only once a connection proved stable). With a
        ``store``, none before `recovered` fired (the connection is
        refused, and retried)."""
        if self.store is not None and self._binding is None:
            log.error(
                "alive.store: connecting before factory.recovered() fired: connection refused",
                event="store_not_loaded",
            )
            return None
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
        if self._binding is None:
            return  # (a store not loaded yet: no session to end)
        entries = self.session.outbox.drain()
        if self._journal is not None:
            self._journal.ended()
            self.epoch = self._journal.epoch
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


def tooLargeFor(
    carrier: HeartbeatMixin | None, payloads: Sequence[bytes]
) -> Deferred[Receipt] | None:
    """
    A failed Deferred if one of ``payloads`` is larger than the peer of
    ``carrier`` (the connection that carries a stored session now)
    accepts, else ``None``. With a store, such a message fails at once
    (without a store it fails when its turn comes): a stored message
    cannot be skipped, its number is the session's.
    """
    conn = carrier._alive if carrier is not None else None
    if conn is None:
        return None
    largest = max(map(len, payloads))
    if largest <= conn.peerMaxPayload:
        return None
    return defer.fail(
        DeliveryFailed(
            f"message of {largest} bytes exceeds the peer's maximum of "
            f"{conn.peerMaxPayload} bytes; not stored, not sent"
        )
    )


def _refusedResume(conn: Connection | None, loss: Loss) -> bool:
    """
    Whether a client connection that ended before its session opened had
    asked to resume it and ended with a protocol error of a twisted_alive
    peer: the server answered its HELLO with GOODBYE(PROTOCOL_ERROR), or
    the server's HELLO broke the rules of a resume here (its
    ``next_expected`` does not fit what was sent, a message to send again
    is larger than it accepts). The session cannot be resumed, as after
    SESSION_UNKNOWN. A new session's HELLO (no token) never counts: a
    protocol error on it follows the usual retry rule, so this cannot
    loop.
    """
    return (
        conn is not None
        and conn.askedToResume
        and loss.reason is Reason.PROTOCOL_ERROR
        and loss.cause is not Cause.NOT_ALIVE_PEER
    )


def _maybe(binding: Binding, entries: list[Entry]) -> list[tuple[Any, bool]]:
    """The outcomes among ``entries`` still awaited (see `undelivered`)."""
    return [
        (handle, maybe)
        for handle, maybe in undelivered(entries)
        if handle in binding.waiting
    ]


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

    With a ``store`` (``AliveServerFactory.forProtocol(P, store=...)``),
    the sessions also outlive the process: a server started again on the
    same store accepts the resume of every session it had (see
    ``docs/stores.md``). The sessions are loaded when the factory starts
    (`recovered`); a client's HELLO that arrives before is answered once
    they are. A new session is created in the store before the HELLO that
    gives the client its token is sent; a session that ends (expired,
    evicted beyond ``maxSessions``, closed by its client) is deleted from
    it; each message the server's protocol sends in a session is stored
    before it is sent and dropped once the client confirmed it.

    With a shared store (`ISharedSessionStore`: `RedisSessionStore`),
    several processes serve the same sessions: a client's resume is
    answered by taking its session over (`ISharedSessionStore.takeSession`),
    wherever it was; the process that held it closes its connection, if it
    still has one, and never writes for it again. Nothing is loaded when
    the factory starts. `sendTo` reaches a session in any process.

    :cvar sessionTTL: seconds a session without connection is kept.
    :cvar maxSessions: sessions without connection kept at most.
    :cvar pollInterval: (Shared store.) Seconds between two looks at the
        store for sessions other processes took from this one, messages
        other processes sent to sessions this one holds, and the outcome of
        this one's `sendTo` messages.
    :cvar maxSendTo: `sendTo` messages whose outcome this process waits for
        at most; beyond, `sendTo` fails at once with `QueueFull`.
    :cvar storeExpiryInterval: (Shared store.) Seconds between two
        expiries of the sessions in the store that nobody resumed for
        ``sessionTTL`` seconds (whichever process held them).
    :ivar store: the `ISessionStore` that keeps the sessions across a
        restart of the process, or ``None`` (they live in memory).
    :ivar connections: the live protocols, HELLO done or not.
    :ivar sessions: sessions by token digest (read-only use).
    :ivar losses: how many losses each `Reason` had.
    :ivar sessionsTakenOver: (Shared store.) Resumes of sessions this
        process did not hold (another process held them, or none).
    :ivar sessionsLostToOthers: (Shared store.) Sessions another process
        took from this one.
    :ivar endedCounts: message counts of the sessions dropped so far
        (``sent``, ``confirmed``, ``redelivered``, ``processed``); added to the
        counts of the live sessions they give totals that never go backwards.
    """

    protocol: Any = HeartbeatProtocol
    role = Role.SERVER
    sessionTTL = 300.0
    maxSessions = 10_000
    clock: IReactorTime | None = None
    store: ISessionStore | None = None
    _expiryCall: IDelayedCall | None = None
    _touchCall: IDelayedCall | None = None
    _stoppedFactory = False
    _storeClosed = False
    _loadStarted = False
    _loadOutcome: ServerRecovered | Failure | None = None
    pollInterval = 0.1
    maxSendTo = 10_000
    storeExpiryInterval = 60.0
    _pollCall: IDelayedCall | None = None
    _storeExpiredAt = 0.0

    def __init__(self, store: ISessionStore | None = None) -> None:
        self.connections: set[HeartbeatMixin] = set()
        self._table: SessionTable[bytes, Session] = SessionTable()
        self._bindings: dict[bytes, Binding] = {}
        self.sessions: Mapping[bytes, Session] = MappingProxyType(self._table.entries)
        self.losses: dict[Reason, int] = {}
        self.endedCounts: Counter[str] = Counter()
        self.sessionsExpired = 0
        self.sessionsResumed = 0
        self.sessionsTakenOver = 0
        self.sessionsLostToOthers = 0
        self._loadWaiters: list[Deferred[None]] = []
        self._ids: dict[str, bytes] = {}
        self._remote: dict[str, tuple[Deferred[Receipt], float]] = {}
        self._draining: set[bytes] = set()
        self._drainAgain: set[bytes] = set()
        if store is not None:
            self.store = store

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
        """
        The session for a client's HELLO token (`ISessionHost`).

        :raises RuntimeError: with a ``store``, before its sessions are
            loaded (`recovered`).
        """
        if self.store is not None and not isinstance(self._loadOutcome, list):
            raise RuntimeError(
                "the sessions of the store are not loaded yet: wait for factory.recovered()"
            )
        found = self._sessionFor(token, now)
        if found is None:
            return None
        session, resumed, created = found
        if created is not None:
            created.addErrback(lambda _: None)  # (logged by _sessionFor)
        return session, resumed

    def sessionForHello(
        self, token: bytes, now: float
    ) -> tuple[Session, bool] | None | Deferred[tuple[Session, bool] | None]:
        """
        What the server's HELLO answers (`ISessionHost`): `sessionFor`; with
        a ``store``, a Deferred of it until the stored sessions are loaded,
        and for a new session (it fires once the session is created in the
        store: only then may the HELLO that gives its token go).
        """
        if self.store is not None and not isinstance(self._loadOutcome, list):
            return self._afterLoad().addCallback(
                lambda _: self.sessionForHello(token, self._now())
            )
        if self._storeClosed:
            # Stopping: the next process answers this HELLO (the session
            # may be in the store).
            return defer.fail(StoreClosed(CLOSED))
        if token != NO_SESSION and self._shared:
            return self._takeOver(token, now)
        found = self._sessionFor(token, now)
        if found is None:
            return None
        session, resumed, created = found
        if created is None:
            return session, resumed
        return created.addCallback(lambda _: (session, resumed))

    def _sessionFor(
        self, token: bytes, now: float
    ) -> tuple[Session, bool, Deferred[None] | None] | None:
        """`sessionFor`, with the Deferred of a new session's creation in
        the ``store`` (``None`` for a session resumed or without a store)."""
        self.expireSessions(now)
        table = self._table
        store = self.store
        if token == NO_SESSION:
            new = Session.newToken()
            session = self.aliveSettings().newSession()
            session.token = new
            session.lastSeen = now
            key = self._key(new)
            table.add(key, session, now)
            self._ids[sessionIdOf(new)] = key
            if store is None:
                return session, False, None
            binding = self._bindings[key] = Binding(session)
            self._journalFor(binding, 1)
            created = store.createSession(StoredSession(new, epoch=1, lastSeen=now))

            def notCreated(failure: Failure) -> Failure:
                (log.info if isinstance(failure.value, StoreClosed) else log.error)(
                    "alive.store: cannot create session {token} in {store}: {error}",
                    token=tokenPrefix(new),
                    store=store,
                    error=failure.getErrorMessage(),
                    event="store_failed",
                )
                if table.get(key) is session:
                    table.remove(key)
                    self._bindings.pop(key, None)
                return failure

            return session, False, created.addErrback(notCreated)
        key = self._key(token)
        known = table.get(key)
        if known is None or not known.matches(token):
            return None
        session = known
        session.lastSeen = now
        table.touch(key, now)
        self.sessionsResumed += 1
        session.resumes += 1
        return session, True, None

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

    def _failSession(
        self,
        session: Session,
        why: str,
        binding: Binding | None = None,
        forget: bool = True,
        stays: bool = True,
    ) -> None:
        """The session is over: fail its pending messages with ``why``;
        delete it from the ``store`` too, unless not to ``forget`` it (the
        server stops: the next process resumes it; ``stays`` adds so to
        ``why``)."""
        self._ids.pop(sessionIdOf(session.token), None)
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
            if kept.journal is not None:
                if forget:
                    kept.journal.dropped()
                elif stays:
                    why += f" ({STAYS})"
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
            if self.store is not None:
                self._touch(session, self._now())
                self._armTouch()
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
                self._failSession(session, "the server stopped", forget=False)
            elif loss.reason is Reason.CLEAN_CLOSE:
                table.remove(key)
                self._failSession(session, "the client closed the session")
            else:
                # It waits, the most recently seen (the least recently seen
                # go first).
                table.detach(key, now)
                if self.store is not None:
                    self._touch(session, now)
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
        for call in (self._expiryCall, self._touchCall, self._pollCall):
            if call is not None and call.active():
                call.cancel()
        self._expiryCall = self._touchCall = self._pollCall = None
        for session in self._table.removeIdle():
            self._failSession(session, "the server stopped", forget=False)
        self._loadStarted = False
        self._loadOutcome = None
        if self.store is not None:
            releaseStore(self.store, self)

    def startFactory(self) -> None:
        """
        Sessions are kept again (after a `stopFactory`). With a ``store``,
        loading its sessions begins (see `recovered`).

        :raises TypeError: if the protocol defines
            ``messageReceivedInTransaction`` and the ``store`` (or the lack
            of one) cannot run it: the server would abort every connection.
        """
        checkTransactional(self.protocol, self.store)
        self._stoppedFactory = False
        if self.store is not None:
            self._load()

    # -- the store -------------------------------------------------------------

    def recovered(self) -> Deferred[ServerRecovered]:
        """
        With a ``store``: the sessions it holds, loaded once per start of
        the factory (`startFactory` begins it; a call before does too).

        Sessions last seen more than ``sessionTTL`` seconds ago are deleted
        from the store first; beyond ``maxSessions``, the least recently
        seen are dropped (and deleted). Until the rest are in the session
        table, clients' HELLOs wait (never answered SESSION_UNKNOWN for a
        session in the store).

        :returns: a Deferred that fires with what previous processes
            submitted in those sessions and their clients have not
            confirmed: ``(token, payload, Deferred[Receipt])`` per message,
            in order within each session. Each is sent again once its
            client resumes the session, and each Deferred fires exactly
            once: with a `Receipt`, or with `DeliveryFailed` if the session
            ends first (it expired: its client never came back). Without a
            store: an empty list. It fails if the store cannot be read
            (`CorruptStore`, `StoreError`: nothing was deleted), keeps
            less per session than the protocol's window and queue may hold
            (``ValueError``), or cannot run the protocol's
            ``messageReceivedInTransaction`` (``TypeError``).
        """
        if self.store is None:
            return defer.succeed([])
        d = self._afterLoad()
        return d.addCallback(lambda _: cast(ServerRecovered, self._loadOutcome))

    def _afterLoad(self) -> Deferred[None]:
        """A Deferred that fires once the store's sessions are loaded (or
        fails with the reason they could not be)."""
        self._load()
        outcome = self._loadOutcome
        if isinstance(outcome, Failure):
            return defer.fail(outcome)
        if outcome is not None:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._loadWaiters.append(d)
        return d

    def _load(self) -> None:
        """Begin loading the store's sessions, unless begun already."""
        store = self.store
        if self._loadStarted or store is None:
            return
        self._loadStarted = True
        problem = transactionProblem(self.protocol, store)
        if problem is not None:
            self._loadDone(Failure(TypeError(problem)))  # type: ignore[no-untyped-call]
            return
        taken = claimStore(store, self)
        if taken is not None:
            self._loadDone(Failure(StoreError(taken)))  # type: ignore[no-untyped-call]
            return
        limits = outboxLimits(self.aliveSettings())
        now = self._now()
        if self._shared:
            self._startShared(now)
            return
        loading = Deferred.fromCoroutine(loadSessions(store, limits, now, self.sessionTTL))
        loading.addCallback(self._loaded, now).addBoth(self._loadDone)

    def _loaded(
        self, loaded: tuple[list[StoredSession], list[bytes]], now: float
    ) -> ServerRecovered:
        records, expired = loaded
        settings = self.aliveSettings()
        table = self._table
        recovered: ServerRecovered = []
        for record in records:
            key = self._key(record.token)
            if key in table:
                continue  # still carried (the factory stopped and started again)
            session = sessionOf(record, settings.window, settings.maxQueue, settings.maxQueueBytes)
            binding = self._bindings[key] = Binding(session)
            self._journalFor(binding, record.epoch)
            for entry in session.outbox.queue:
                d: Deferred[Receipt] = Deferred()
                entry.handle = binding.hold(d)
                recovered.append((record.token, entry.payload, d))
            table.add(key, session, record.lastSeen)
            self._ids[sessionIdOf(record.token)] = key
        dropped = self.expireSessions(now)
        self._armExpiry(now)
        log.info(
            "alive.store: {count} sessions loaded from {store} ({expired} expired in the "
            "store, {dropped} dropped beyond maxSessions): {messages} messages not confirmed",
            count=len(table),
            store=self.store,
            expired=len(expired),
            dropped=dropped,
            messages=len(recovered),
            event="store_loaded",
        )
        return recovered

    def _loadDone(self, outcome: ServerRecovered | Failure) -> None:
        """The sessions are loaded (or the store failed): answer the HELLOs
        and `recovered` calls that waited."""
        if isinstance(outcome, Failure):
            log.critical(
                "alive.store: cannot load the sessions of {store}: {error}",
                store=self.store,
                error=outcome.getErrorMessage(),
                event="store_failed",
            )
        self._loadOutcome = outcome
        waiting, self._loadWaiters = self._loadWaiters, []
        for d in waiting:
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(None)

    def _journalFor(self, binding: Binding, epoch: int) -> Journal:
        """Keep ``binding``'s session in the store: its messages are stored
        before they are sent."""
        assert self.store is not None
        return Journal.attach(
            self.store,
            binding,
            epoch,
            partial(self._storeFailed, binding),
            partial(self._releaseStored, binding),
        )

    def _releaseStored(self, binding: Binding) -> None:
        """The store committed more of ``binding``'s messages: send what the
        window allows."""
        carrier = binding.carrier
        if carrier is not None:
            carrier._pump()

    def _storeFailed(self, binding: Binding, failure: Failure) -> None:
        """A store operation of ``binding``'s session failed: the session
        ends (its connection is aborted, its messages fail). Unless the
        store is closed (`StoreClosed`: the server is stopping): then the
        session is not over, it stays in the store for the next process
        (`_storeClosedFor`)."""
        session = binding.session
        key = self._key(session.token)
        if isinstance(failure.value, StoreClosed):
            self._storeClosedFor(binding)
            return
        if isinstance(failure.value, SessionTakenOver):
            if self._table.get(key) is session:
                self._revoke(key, session)
            return
        why = f"session store failed: {failure.getErrorMessage()}"
        if self._table.get(key) is not session:
            # Over already (a write that followed its end, such as the
            # processed position after its deletion): nothing to end.
            log.info(
                "alive.store: session {token} (over): {why}",
                token=tokenPrefix(session.token),
                why=why,
                event="store_failed",
            )
            return
        log.error(
            "alive.store: session {token}: {why}; the session ends",
            token=tokenPrefix(session.token),
            why=why,
            event="store_failed",
        )
        self._table.remove(key)
        carrier = binding.carrier
        self._failSession(session, why)
        if carrier is not None:
            carrier.abort(why)

    def _storeClosedFor(self, binding: Binding) -> None:
        """
        The store is closed while ``binding``'s session goes on: the server
        is stopping. The session stops here as on `stopFactory`: it leaves
        the table, what is unconfirmed fails (`STORE_CLOSED`: the store
        keeps it, the next process sends it again), and its connection is
        aborted, so that nothing more is processed whose position could not
        be committed (the next process gets it again, flagged as
        redelivered). HELLOs are refused from now on (the connection is
        aborted: the client retries, and the next process resumes its
        session).
        """
        if not self._storeClosed:
            self._storeClosed = True
            log.info(
                "alive.store: {store} is closed: the server stops using its sessions; "
                "the store keeps them, and their unconfirmed messages, for the next process",
                store=self.store,
                event="store_closed",
            )
        session = binding.session
        key = self._key(session.token)
        if self._table.get(key) is not session:
            return
        self._table.remove(key)
        carrier = binding.carrier
        self._failSession(session, "the session store closed", forget=False)
        if carrier is not None:
            carrier.abort("the session store is closed")

    def sendStored(
        self, binding: Binding, payloads: Sequence[bytes], together: bool
    ) -> Deferred[Receipt]:
        """
        What the server's protocol's ``sendMessage`` (``together``: ``False``,
        one payload) and ``sendMessages`` do in a stored session: the
        messages are numbered and appended to the store at once, and sent
        once the store committed them.

        :returns: the Deferred of their outcome, as `HeartbeatMixin.sendMessage`
            gives; failed at once with `QueueFull` (the outbox or the store
            is full: nothing was queued nor stored) or `DeliveryFailed` (a
            message larger than the client accepts: neither stored nor
            sent).
        """
        journal = binding.journal
        assert journal is not None
        refusal = tooLargeFor(binding.carrier, payloads)
        if refusal is not None:
            return refusal
        d = journal.submit(payloads, together)
        if not d.called:
            self._releaseStored(binding)
            binding.pace()
        return d

    # -- a store shared by several processes ------------------------------------

    @property
    def _shared(self) -> bool:
        return self.store is not None and ISharedSessionStore.providedBy(self.store)

    def _sharedStore(self) -> ISharedSessionStore:
        assert self.store is not None
        return cast(ISharedSessionStore, self.store)

    def _startShared(self, now: float) -> None:
        """(Shared store.) Nothing to load: each session is taken when its
        client resumes it. Check the store's limits, expire what nobody
        resumed in time, and begin polling."""
        store = self._sharedStore()
        try:
            checkLimits(store, outboxLimits(self.aliveSettings()))
        except ValueError:
            self._loadDone(Failure())  # type: ignore[no-untyped-call]
            return
        log.info(
            "alive.store: sessions shared in {store}: each is taken over when its client "
            "resumes it here",
            store=store,
            event="store_loaded",
        )
        self._loadDone([])
        self._expireStored(now)
        self._armPoll()

    def _expireStored(self, now: float) -> None:
        """(Shared store.) Delete the sessions of the store that nobody
        resumed for ``sessionTTL`` seconds."""
        self._storeExpiredAt = now

        def expired(tokens: list[bytes]) -> None:
            if tokens:
                log.info(
                    "alive.store: {count} sessions expired in {store}",
                    count=len(tokens),
                    store=self.store,
                    event="store_expired",
                )

        d = self._sharedStore().expireSessions(now, self.sessionTTL)
        d.addCallbacks(expired, self._sharedFailed)

    def _sharedFailed(self, failure: Failure) -> None:
        """A shared store's poll or expiry failed (it is closed, or Redis
        refused): logged; the next poll tries again."""
        if not isinstance(failure.value, StoreClosed):
            log.warn(
                "alive.store: {store}: {error}",
                store=self.store,
                error=failure.getErrorMessage(),
                event="store_failed",
            )

    def _armPoll(self) -> None:
        if self._pollCall is None and not self._stoppedFactory and self._shared:
            self._pollCall = self._clockNow().callLater(self.pollInterval, self._poll)

    def _clockNow(self) -> IReactorTime:
        self._now()
        assert self.clock is not None
        return self.clock

    def _poll(self) -> None:
        """(Shared store.) Ask the store what changed for this process
        (one operation of its next batch), act on it, and poll again
        ``pollInterval`` seconds after the answer."""
        self._pollCall = None
        if self._storeClosed or self._stoppedFactory:
            return
        now = self._now()
        if now - self._storeExpiredAt >= self.storeExpiryInterval:
            self._expireStored(now)
        waiting = list(itertools.islice(self._remote, POLL_OUTCOMES))
        d = self._sharedStore().poll(waiting)
        d.addCallback(self._polled, waiting)
        d.addErrback(self._sharedFailed)
        d.addBoth(lambda _: self._armPoll())

    def _polled(self, polled: Polled, waiting: list[str]) -> None:
        table = self._table
        for token in polled.taken:
            key = self._key(token)
            session = table.get(key)
            if session is not None and session.matches(token):
                self._revoke(key, session)
        for token in polled.mailed:
            binding = self._bindings.get(self._key(token))
            if binding is not None and binding.session.token == token:
                self._drain(binding)
        now = self._now()
        for messageId, outcome in zip(waiting, polled.outcomes, strict=True):
            self._settleRemote(messageId, outcome, now)

    def _settleRemote(self, messageId: str, outcome: str, now: float) -> None:
        """Fire the Deferred of a `sendTo` message whose outcome is known."""
        if outcome in ("wait", "sent") or messageId not in self._remote:
            return
        d, sentAt = self._remote.pop(messageId)
        if outcome.startswith("ok "):
            d.callback(Receipt(int(outcome[3:]), sentAt, now))
        elif outcome.startswith("rejected "):
            d.errback(DeliveryFailed(outcome[9:], rejected=True))
        elif outcome == "gone":
            d.errback(DeliveryFailed("the session ended before the message was sent", None, False))
        elif outcome == "lost":
            d.errback(
                DeliveryFailed("the session ended before its client confirmed the message", None)
            )
        else:
            d.errback(DeliveryFailed("the outcome of the message is no longer known", None))

    def _takeOver(self, token: bytes, now: float) -> Deferred[tuple[Session, bool] | None]:
        """
        (Shared store.) Answer a client's resume: take its session over in
        the store (`ISharedSessionStore.takeSession`). A session this
        process still holds with the store's epoch stays as it is; else it
        is loaded as the store has it (an older copy here is dropped), and
        what its mailbox holds is moved into it.
        """
        key = self._key(token)

        def taken(record: StoredSession | None) -> tuple[Session, bool] | None:
            if self._storeClosed:
                raise StoreClosed(CLOSED)
            table = self._table
            local = table.get(key)
            if local is not None and not local.matches(token):
                local = None
            binding = self._bindings.get(key)
            if record is None:
                if local is not None:
                    self._revoke(key, local)
                return None
            if (
                local is not None
                and binding is not None
                and binding.session is local
                and binding.journal is not None
                and binding.journal.epoch == record.epoch
            ):
                session = local
                table.touch(key, now)
            else:
                if local is not None:
                    self._revoke(key, local)
                settings = self.aliveSettings()
                session = sessionOf(
                    record, settings.window, settings.maxQueue, settings.maxQueueBytes
                )
                binding = self._bindings[key] = Binding(session)
                self._journalFor(binding, record.epoch)
                for entry in session.outbox.queue:
                    # Its sender was another process (or this one, before):
                    # its outcome is not awaited here.
                    held: Deferred[Receipt] = Deferred()
                    held.addErrback(lambda _: None)
                    entry.handle = binding.hold(held)
                table.add(key, session, now)
                self._ids[sessionIdOf(token)] = key
                self.sessionsTakenOver += 1
                log.info(
                    "alive.session: {token} taken over (epoch {epoch})",
                    token=tokenPrefix(token),
                    epoch=record.epoch,
                    event="session_taken",
                )
            session.lastSeen = now
            self.sessionsResumed += 1
            session.resumes += 1
            self._drain(binding)
            return session, True

        return self._sharedStore().takeSession(token).addCallback(taken)

    def _revoke(self, key: bytes, session: Session) -> None:
        """
        (Shared store.) Another process took ``session`` over: it leaves
        this process without a write (the store keeps it as the other
        process has it), its unconfirmed messages fail here (`MOVED`: the
        other process sends them), and its connection, if it still has
        one, gets GOODBYE(SHUTTING_DOWN, `TAKEN_OVER`) and is closed.
        """
        if self._table.get(key) is session:
            self._table.remove(key)
        binding = self._bindings.get(key)
        carrier = None
        if binding is not None and binding.session is session:
            carrier = binding.carrier
            if binding.journal is not None:
                binding.journal.stopped = True
        self.sessionsLostToOthers += 1
        log.info(
            "alive.session: {token} taken over by another process; it is no longer served here",
            token=tokenPrefix(session.token),
            event="session_revoked",
        )

        def settle(_: object) -> None:
            # The store answered every write asked before: what it
            # committed is the other process's to send; the rest never
            # reached it.
            if binding is not None and binding.session is session:
                storedUpTo = session.outbox.storedUpTo or 0
                for entry in session.outbox.queue:
                    if entry.seq > storedUpTo:
                        binding.fail(entry.handle, DeliveryFailed(NOT_STORED, None, False))
            self._failSession(session, MOVED, forget=False, stays=False)

        assert self.store is not None
        self.store.flush().addBoth(settle)
        if carrier is not None:
            conn = carrier._alive
            if conn is not None:
                conn.sendGoodbye(GoodbyeCode.SHUTTING_DOWN, TAKEN_OVER)
            carrier.abort(TAKEN_OVER)

    def _drain(self, binding: Binding) -> None:
        """(Shared store.) Move what the mailbox of ``binding``'s session
        holds into the session (`Journal.submitMail`), a batch at a time,
        one read at a time per session."""
        journal = binding.journal
        session = binding.session
        key = self._key(session.token)
        if journal is None or journal.stopped or self._bindings.get(key) is not binding:
            return
        if key in self._draining:
            self._drainAgain.add(key)
            return
        self._draining.add(key)
        store = self._sharedStore()
        moved: list[int] = []

        def read(mail: list[tuple[str, bytes]]) -> Deferred[None] | None:
            if not mail or self._bindings.get(key) is not binding or journal.stopped:
                return None
            moved.append(len(mail))
            return journal.submitMail(mail)

        def done(result: object) -> None:
            self._draining.discard(key)
            again = key in self._drainAgain
            self._drainAgain.discard(key)
            if isinstance(result, Failure):
                if isinstance(result.value, QueueFull):
                    return  # the outbox is full: the next poll tries again
                self._storeFailed(binding, result)
                return
            if again or (moved and moved[0] == MAIL_BATCH):
                self._drain(binding)

        store.readMail(session.token, MAIL_BATCH).addCallback(read).addBoth(done)

    def sendTo(self, sessionId: str, payload: bytes) -> Deferred[Receipt]:
        """
        Send ``payload`` to the session whose public id is ``sessionId``
        (`HeartbeatMixin.sessionId`, `sessionIdOf`), wherever its client
        is.

        With a shared store (`RedisSessionStore`), the session may be held
        by any process: the message goes to the session's mailbox in the
        store; the process that holds the session (or the one its client
        resumes it on later) moves it into the session, sends it and has
        it confirmed, once; this process learns the outcome by polling
        (every ``pollInterval`` seconds). With another store, or none, the
        session must be one of this process's: the message is queued in it
        (stored first, with a store) and sent now or when its client comes
        back.

        :returns: a Deferred that fires with a `Receipt` once the client's
            application processed the message (with a shared store, its
            ``sentAt`` is when `sendTo` was called), or fails with
            `DeliveryFailed`: no such session, or the session ended first
            (``maybeProcessed`` says whether it had been sent); or
            `QueueFull`: the session's queue (or mailbox) is full, or
            ``maxSendTo`` outcomes are awaited already.
        :raises TypeError: if ``payload`` is not ``bytes``.
        :raises ValueError: if ``payload`` is larger than a frame allows.
        """
        settings = self.aliveSettings()
        checkPayload(payload, settings)
        if not self._shared:
            return self._sendLocal(sessionId, payload)
        if len(self._remote) >= self.maxSendTo:
            return defer.fail(
                QueueFull(f"{len(self._remote)} sendTo outcomes are awaited (maxSendTo)")
            )
        sentAt = self._now()
        d: Deferred[Receipt] = Deferred()

        def posted(messageId: str) -> None:
            self._remote[messageId] = (d, sentAt)
            key = self._ids.get(sessionId)
            binding = self._bindings.get(key) if key is not None else None
            if binding is not None:
                self._drain(binding)
            self._armPoll()

        def refused(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, SessionNotFound):
                d.errback(DeliveryFailed(f"no session {sessionId} in the store", None, False))
            elif isinstance(error, QueueFull):
                d.errback(error)
            else:
                d.errback(
                    DeliveryFailed(f"the session store failed: {error}", None, False)
                )

        self._sharedStore().postMessage(sessionId, payload).addCallbacks(posted, refused)
        return d

    def _sendLocal(self, sessionId: str, payload: bytes) -> Deferred[Receipt]:
        """`sendTo` a session of this process."""
        key = self._ids.get(sessionId)
        session = self._table.get(key) if key is not None else None
        if session is None:
            if key is not None:
                del self._ids[sessionId]
            return defer.fail(
                DeliveryFailed(f"no session {sessionId} in this process", None, False)
            )
        binding = self.bindingFor(session)
        if binding.journal is not None:
            return self.sendStored(binding, [payload], False)
        d = binding.submit(partialSubmit(session.outbox, payload))
        if not d.called:
            carrier = binding.carrier
            if carrier is not None:
                carrier._pump()
            binding.pace()
        return d

    @staticmethod
    def sessionIdOf(token: bytes) -> str:
        """The public id of the session with ``token`` (`sessionIdOf`)."""
        return sessionIdOf(token)

    def epochOf(self, session: Session) -> int | None:
        """The epoch of a stored session (as its store keeps it: 1 for a
        session this server created, unchanged across restarts), or
        ``None`` without a store."""
        binding = self._bindings.get(self._key(session.token))
        if binding is None or binding.journal is None:
            return None
        return binding.journal.epoch

    def _touch(self, session: Session, now: float) -> None:
        """Tell the store the session was seen ``now`` (when a connection
        takes it or leaves it, and every `touchInterval` while carried:
        never per frame)."""
        assert self.store is not None

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, StoreClosed):
                return  # (stopping: the other writes report it)
            if isinstance(failure.value, SessionTakenOver):
                key = self._key(session.token)
                if self._table.get(key) is session:
                    self._revoke(key, session)
                return
            log.warn(
                "alive.store: cannot record when session {token} was seen: {error}",
                token=tokenPrefix(session.token),
                error=failure.getErrorMessage(),
                event="store_failed",
            )

        self.store.touchSession(session.token, now).addErrback(failed)

    @property
    def touchInterval(self) -> float:
        """Seconds between the store's records of when a carried session
        was seen: a quarter of ``sessionTTL`` (at least one second), so
        that a server killed while a connection carried a session finds it
        unexpired at the next start."""
        return max(self.sessionTTL / 4, 1.0)

    def _armTouch(self) -> None:
        if self._stoppedFactory or (self._touchCall is not None and self._touchCall.active()):
            return
        self._now()
        assert self.clock is not None
        self._touchCall = self.clock.callLater(self.touchInterval, self._touchCarried)

    def _touchCarried(self) -> None:
        self._touchCall = None
        now = self._now()
        carried = [
            binding.session
            for binding in self._bindings.values()
            if binding.carrier is not None and binding.journal is not None
        ]
        for session in carried:
            self._touch(session, now)
        if carried:
            self._armTouch()

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
