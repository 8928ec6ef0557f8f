"""
What ties a session to the live objects of the Twisted adapter: the
protocol that carries it now and the producer its send queue paces (a
`Binding`). The `Session` itself stays plain data
(``twisted_alive.core.delivery``); a factory that keeps sessions
(`ISessionHost`) keeps their bindings.

Here too is what `HeartbeatMixin` does for a session rather than for its
one connection: make a new connection's core in the role of its host
(`bind`), find the session a client's HELLO names (`answerHello`), answer
a message once the application's Deferred fires, to whichever connection
carries the session by then (`Binding.awaitResult`), settle the Deferreds
of sent messages (`settle`, `refused`, `failUndelivered`), and let the
session go when its connection ends (`unbind`).

A session kept in a store (`Binding.keepIn`) has its processed position
written there after each answer, one write at a time, before the ACK
that reports it (`Binding.commitProcessed`); a protocol that defines
``messageReceivedInTransaction`` has each message processed in the
store's own transaction instead (`Binding.processInTransaction`).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.python.failure import Failure

from twisted_alive._interfaces import ITransactionalStore
from twisted_alive._logs import logRejection
from twisted_alive._transport import addressPhase, canWriteThrough, isAccepted
from twisted_alive.core.connection import (
    Confirmed,
    Connection,
    Event,
    Rejected,
    Role,
    Settings,
    TooLarge,
)
from twisted_alive.core.delivery import Entry, Outbox, Session, undelivered
from twisted_alive.core.outcomes import DeliveryFailed, QueueFull, Receipt
from twisted_alive.core.reasons import Loss

if TYPE_CHECKING:
    from twisted_alive._interfaces import ISessionStore
    from twisted_alive._journal import Journal
    from twisted_alive._mixin import HeartbeatMixin


_handles = itertools.count(1)
"""The handles `Binding.hold` gives out: unique in the process, so that a
binding can adopt another's."""


class Pacer:
    """
    Pauses a push producer while an `Outbox`'s queue is high, and resumes
    it once the queue has drained (`Outbox.isHigh`, `Outbox.isLow`): a
    sender that respects the pause never meets `QueueFull`.

    :param outbox: the outbox to watch.
    :param producer: the ``IPushProducer`` to pause and resume.
    """

    __slots__ = ("outbox", "producer", "paused")

    def __init__(self, outbox: Outbox, producer: IPushProducer) -> None:
        self.outbox = outbox
        self.producer = producer
        self.paused = False

    def check(self) -> None:
        """Pause or resume the producer as the queue's level says."""
        if not self.paused:
            if self.outbox.isHigh():
                self.paused = True
                self.producer.pauseProducing()
        elif self.outbox.isLow():
            self.paused = False
            self.producer.resumeProducing()


class Binding:
    """
    A session and the live objects tied to it.

    :ivar session: the session (plain data).
    :ivar carrier: the protocol that carries the session now (it completed
        its HELLO exchange and has not ended), or ``None``.
    :ivar pacer: the `Pacer` of a registered producer, or ``None``.
    :ivar waiting: the Deferred of each message of the session whose
        outcome is not known yet, by its handle: the session's entries hold
        only the handle (a number), so that the session stays plain data.
    :ivar journal: the `Journal` that keeps the session in a store (a
        client factory's ``store``), or ``None``: it stores what is
        submitted (``HeartbeatMixin.sendMessage`` goes through it) and
        drops what the peer confirmed.
    :ivar store: the `ISessionStore` that keeps the session's processed
        position (`keepIn`), or ``None``: then no ACK or REJECT reports
        more than the store committed (`commitProcessed`).
    """

    __slots__ = (
        "session",
        "carrier",
        "pacer",
        "waiting",
        "journal",
        "store",
        "_storeFailed",
        "_committing",
        "_storedRejections",
    )

    def __init__(self, session: Session) -> None:
        self.session = session
        self.carrier: HeartbeatMixin | None = None
        self.pacer: Pacer | None = None
        self.waiting: dict[int, Deferred[Receipt]] = {}
        self.journal: Journal | None = None
        self.store: ISessionStore | None = None
        self._storeFailed: Callable[[Failure], None] | None = None
        self._committing = False
        self._storedRejections: list[tuple[int, str]] = []

    # -- the processed position in a store -----------------------------------

    def keepIn(self, store: ISessionStore, failed: Callable[[Failure], None]) -> None:
        """
        Keep the session's processed position in ``store``: from now on
        the session's inbox `waitsForCommit` (no ACK or REJECT reports more
        than the store committed, and the next message is handed to the
        application only once the previous one's position is committed),
        and `commitProcessed` writes the position after each answer.

        :param failed: called with the failure of a write of the position:
            the session cannot go on (its host ends it).
        """
        self.store = store
        self._storeFailed = failed
        self.session.inbox.waitsForCommit = True

    def commitProcessed(self) -> bool:
        """
        With a `store`: write the processed position and the REJECTs the
        peer may not have seen (``Inbox.toCommit``) unless a write is
        outstanding already; one at a time per session: when it is
        committed, the connection that carries the session by then learns
        of it (``Connection.positionCommitted``) and acts on it, and the
        next write follows if more was processed meanwhile.

        :returns: whether a write was committed at once (a store whose
            Deferreds have fired already, such as `MemorySessionStore`):
            the caller may hand out the next message now; or failed at
            once: the caller then acts on what its host did about it (an
            aborted connection hands out nothing more).
        """
        store = self.store
        if store is None or self._committing:
            return False
        session = self.session
        due = session.inbox.toCommit()
        if due is None:
            return False
        upTo, rejections = due
        kept: list[tuple[int, str]] | None = rejections
        if not rejections and not self._storedRejections:
            kept = None  # nothing to replace: the position alone
        self._storedRejections = rejections
        self._committing = True
        token = session.token
        done: list[bool] = []
        d = store.recordProcessed(token, upTo, kept)
        d.addCallbacks(self._committed, self._commitFailed, (token, upTo, done), {}, (done,))
        return bool(done)

    def processInTransaction(
        self,
        protocol: Any,
        conn: Connection,
        seq: int,
        payload: bytes,
        clock: IReactorTime,
        peer: str | None,
    ) -> None:
        """
        Hand message ``seq`` (which ``conn`` handed out) to ``protocol``'s
        ``messageReceivedInTransaction`` in the `store`'s transaction
        (`ITransactionalStore.processInTransaction`). Once committed, the
        message is processed and its position committed already: the ACK
        may go at once. If the application's work raised, it was rolled
        back and the message is answered as failed (its REJECT is stored
        by `commitProcessed`, as for ``messageReceived``); if the store
        failed, the session ends.
        """
        store = self.store
        problem = transactionProblem(protocol, store)
        if problem is not None:
            # (The check when the connection opened aborts it first.)
            conn.messageFailed(seq, problem)
            return
        raised: list[Failure] = []
        handler = protocol.messageReceivedInTransaction

        def work(cursor: object) -> None:
            # (The store's thread.)
            try:
                handler(payload, cursor)
            except BaseException:
                raised.append(Failure())  # type: ignore[no-untyped-call]
                raise

        token = self.session.token
        d = cast(ITransactionalStore, store).processInTransaction(token, seq, work)

        def done(outcome: object) -> None:
            if raised:
                self.answerLater(seq, raised[0], clock, peer)
            elif isinstance(outcome, Failure):
                self._commitFailed(outcome)
            else:
                self._processedAndCommitted(seq)

        d.addBoth(done)

    def _processedAndCommitted(self, seq: int) -> None:
        """Message ``seq`` was processed in the store's transaction, its
        position committed with it: answer it, and let the connection that
        carries the session acknowledge it."""
        carrier = self.carrier
        conn = carrier._alive if carrier is not None else None
        inbox = self.session.inbox
        if carrier is not None and conn is not None and carrier.loss is None:
            if inbox.processed(seq):
                conn.positionCommitted(seq)
            carrier._service()
        elif inbox.processed(seq):
            inbox.commit(seq)

    def _committed(self, _: object, token: bytes, upTo: int, done: list[bool]) -> None:
        """The store committed the position ``upTo`` of session ``token``."""
        self._committing = False
        session = self.session
        if session.token != token:
            # The session was replaced meanwhile: its new inbox starts afresh.
            self.commitProcessed()
            return
        carrier = self.carrier
        conn = carrier._alive if carrier is not None else None
        if carrier is not None and conn is not None and carrier.loss is None:
            conn.positionCommitted(upTo)
            if conn.reading:
                done.append(True)  # the loop that runs hands out the next
                return
            carrier._service()
        else:
            session.inbox.commit(upTo)
        self.commitProcessed()

    def _commitFailed(self, failure: Failure, done: list[bool] | None = None) -> None:
        """A write of the processed position failed: the session ends (or,
        for a store that is closed, stops here: see `Journal`). No write
        follows (``_committing`` stays set), so nothing is acknowledged
        beyond what the store committed. ``done`` learns that the write is
        over (see `commitProcessed`)."""
        if done is not None:
            done.append(True)
        failed = self._storeFailed
        assert failed is not None
        failed(failure)

    def hold(self, d: Deferred[Receipt]) -> int:
        """The handle under which the session's entries stand for ``d``
        (unique in this process); `settle`, `fail` and `failUndelivered`
        fire ``d`` when the outcome is known."""
        handle = next(_handles)
        self.waiting[handle] = d
        return handle

    def submit(self, send: Callable[[int], object]) -> Deferred[Receipt]:
        """
        A new Deferred for the outcome of what ``send`` queues under the
        handle it is given (`hold`).

        :returns: the Deferred; failed already with `QueueFull` if ``send``
            raised it (nothing was queued, nothing is held).
        """
        d: Deferred[Receipt] = Deferred()
        handle = self.hold(d)
        try:
            send(handle)
        except QueueFull as e:
            del self.waiting[handle]
            return defer.fail(e)
        return d

    def settle(self, event: Event, now: float) -> bool:
        """
        Settle the Deferreds of the messages whose outcome ``event``
        reports: on `Confirmed`, each fires with its `Receipt`; on
        `Rejected` (the peer's application failed on it) or `TooLarge`
        (larger than the peer accepts), it fails with `DeliveryFailed`.

        :returns: whether the outcome made room in the window (a
            confirmation or a rejection).
        """
        kind = type(event)
        if kind is Confirmed:
            self.confirm(cast(Confirmed, event).entries, now)
            if self.journal is not None:
                self.journal.confirmed()
            return True
        if kind is Rejected:
            rejected = cast(Rejected, event)
            self.fail(rejected.handle, DeliveryFailed(rejected.text, rejected=True))
            if self.journal is not None:
                self.journal.rejected(rejected.handle, rejected.text)
                self.journal.confirmed()
            return True
        large = cast(TooLarge, event)
        self.fail(large.handle, DeliveryFailed(large.text, None, large.maybeProcessed))
        return False

    def confirm(self, entries: Sequence[Entry], now: float) -> None:
        """Fire the Deferreds of confirmed entries with their `Receipt`."""
        waiting = self.waiting
        for entry in entries:
            d = waiting.pop(entry.handle, None)
            if d is not None and not d.called:
                d.callback(Receipt(entry.seq, entry.sentAt, now))

    def fail(self, handle: Any, error: DeliveryFailed) -> None:
        """Fail the Deferred of ``handle`` unless it fired already."""
        d = self.waiting.pop(handle, None)
        if d is not None and not d.called:
            d.errback(error)

    def failUndelivered(self, entries: Sequence[Entry], message: str, loss: Loss | None) -> None:
        """Fail the Deferreds of entries that will never be confirmed, each
        once (see `undelivered`), with ``message``."""
        for handle, maybe in undelivered(entries):
            self.fail(handle, DeliveryFailed(message, loss, maybeProcessed=maybe))

    def register(self, producer: IPushProducer) -> None:
        """Pace ``producer`` by the session's send queue.

        :raises RuntimeError: if a producer is registered already.
        """
        if self.pacer is not None:
            raise RuntimeError("a producer is registered already; unregister it first")
        self.pacer = Pacer(self.session.outbox, producer)
        self.pacer.check()

    def pace(self) -> None:
        """Pause or resume the registered producer, if any, as the level of
        the session's send queue says (`Pacer.check`)."""
        if self.pacer is not None:
            self.pacer.check()

    def adopt(self, other: Binding) -> None:
        """Take over ``other``'s producer (registered on a connection before
        it knew its session), unless one is registered here already, and
        the Deferreds it holds."""
        self.waiting.update(other.waiting)
        other.waiting.clear()
        if other.pacer is not None and self.pacer is None:
            self.pacer, other.pacer = other.pacer, None
            self.pacer.outbox = self.session.outbox

    def takeOver(self, protocol: HeartbeatMixin) -> None:
        """Make ``protocol`` the carrier. A previous carrier still open (the
        client came back while its old connection looked alive here) is
        aborted: the new connection takes over."""
        previous = self.carrier
        if previous is not None and previous is not protocol and previous.loss is None:
            previous.abort("session taken over by a new connection")
        self.carrier = protocol

    def awaitResult(
        self, conn: Connection, seq: int, result: object, clock: IReactorTime, peer: str | None
    ) -> None:
        """
        `HeartbeatMixin.messageReceived` returned ``result`` (not ``None``)
        for message ``seq``, which ``conn`` handed out: if it is a Deferred
        (or an awaitable, such as the coroutine of ``async def
        messageReceived``), its outcome answers the message, and the next
        message waits for it; anything else answers it at once (processed).
        An outcome that was not there at once answers, when it comes, the
        connection that carries the session by then (`answerLater`).
        """
        if not isinstance(result, Deferred):
            if not inspect.isawaitable(result):
                conn.messageProcessed(seq)
                return
            result = Deferred.fromCoroutine(cast(Any, result))
        box: list[object] = []
        result.addBoth(box.append)
        if box:
            answer(conn, seq, box[0], clock, peer)
            return
        result.addCallback(lambda _: self.answerLater(seq, box[0], clock, peer))

    def answerLater(self, seq: int, outcome: object, clock: IReactorTime, peer: str | None) -> None:
        """
        The Deferred of message ``seq`` fired with ``outcome`` (a
        ``Failure`` if the application failed on it): answer the core of the
        connection that carries the session now, and have that connection
        act on the answer; with no such connection, record the answer in
        the session's inbox (``clock`` and ``peer``, those of the connection
        that handed the message out, are for the log of a failure).
        """
        carrier = self.carrier
        if carrier is not None and carrier._alive is not None and carrier.loss is None:
            answer(carrier._alive, seq, outcome, carrier._clock(), carrier._peer)
            carrier._service()
            return
        inbox = self.session.inbox
        if isinstance(outcome, Failure):
            inbox.failed(seq, logRejection(clock, peer, seq, outcome))
        else:
            inbox.processed(seq)
        self.commitProcessed()


def transactionProblem(protocol: Any, store: object) -> str | None:
    """
    Why ``protocol`` (a `HeartbeatMixin` protocol, or its class) cannot
    receive with a session kept in ``store`` (``None``: in no store): it
    defines ``messageReceivedInTransaction``, which needs a store that runs
    it in its transaction (`ITransactionalStore`). ``None`` if it can.
    """
    if getattr(protocol, "messageReceivedInTransaction", None) is None:
        return None
    if ITransactionalStore.providedBy(store):
        return None
    cls = protocol if isinstance(protocol, type) else type(protocol)
    kept = "is kept in no session store" if store is None else f"is kept in {store!r}"
    return (
        f"{cls.__qualname__} defines messageReceivedInTransaction(), which needs a session "
        f"store that runs it in its own transaction (ITransactionalStore, such as "
        f"SqliteSessionStore), but the session {kept}"
    )


def checkTransactional(protocol: Any, store: object) -> None:
    """
    :raises TypeError: if ``protocol`` (a `HeartbeatMixin` protocol class)
        defines ``messageReceivedInTransaction`` and ``store`` cannot run
        it (`transactionProblem`): a factory checks when it starts, rather
        than at each connection.
    """
    problem = transactionProblem(protocol, store)
    if problem is not None:
        raise TypeError(problem)


def accepting(host: Any, transport: Any) -> bool:
    """Whether this side accepted the connection on ``transport`` (a
    server): as the role of the session ``host`` says, if there is one,
    else as the kind of ``transport`` says (`isAccepted`)."""
    if host is not None:
        return bool(host.role is Role.SERVER)
    return isAccepted(transport)


def bind(host: Any, settings: Settings, transport: Any, now: float) -> tuple[Connection, Binding]:
    """
    The core of a new connection on ``transport`` and the `Binding` of the
    session it carries. With a session ``host`` (an `ISessionHost`
    factory), the connection plays the host's role: a client carries the
    host's session; a server learns its session from the client's HELLO
    (`answerHello`) and, until then, binds the connection's own. Without
    one, the connection is a peer that carries its own session for good.
    """
    if host is None:
        conn = Connection(settings, Role.PEER, now, phase=addressPhase(transport))
        binding = Binding(conn.session)
    elif host.role is Role.CLIENT:
        binding = host.clientBinding()
        conn = Connection(settings, Role.CLIENT, now, binding.session)
    else:
        conn = Connection(settings, Role.SERVER, now, phase=0.5)
        binding = Binding(conn.session)
    conn.writeThrough = canWriteThrough(transport)
    return conn, binding


def answerHello(
    host: Any,
    protocol: HeartbeatMixin,
    binding: Binding,
    conn: Connection,
    token: bytes,
    now: float,
) -> Binding:
    """
    (Server.) The client's HELLO on ``protocol`` (its core: ``conn``, its
    binding until now: ``binding``) names session ``token``: find it
    through ``host`` and take it (`takeSession`). A host that keeps its
    sessions in a store may answer later (a Deferred): the connection then
    holds what follows the HELLO until `HeartbeatMixin` takes the session.

    :returns: the binding of ``protocol`` from now on: the session's, or
        ``binding`` if the session was refused or the answer comes later.
    """
    found = host.sessionForHello(token, now) if host is not None else None
    if isinstance(found, Deferred):
        box: list[object] = []
        found.addBoth(box.append)
        if not box:
            found.addCallback(lambda _: protocol._sessionFound(box[0], token))
            return binding
        if isinstance(box[0], Failure):
            conn.abort(f"session store failed: {box[0].getErrorMessage()}")
            return binding
        found = cast("tuple[Session, bool] | None", box[0])
    return takeSession(host, protocol, binding, conn, token, found, now)


def takeSession(
    host: Any,
    protocol: HeartbeatMixin,
    binding: Binding,
    conn: Connection,
    token: bytes,
    found: tuple[Session, bool] | None,
    now: float,
) -> Binding:
    """
    (Server.) ``host`` answered the HELLO of ``protocol`` that named
    ``token`` with ``found``: the session's binding adopts the producer of
    ``binding``, ``protocol`` takes the session over (`Binding.takeOver`)
    and ``conn`` accepts it. A session that ``host`` does not know (unknown
    or expired: ``found`` is ``None``) is refused.

    :returns: the binding of ``protocol`` from now on: the session's, or
        ``binding`` if the session was refused.
    """
    if found is None:
        conn.refuseSession()
        return binding
    session, resumed = found
    taken: Binding = host.bindingFor(session)
    taken.adopt(binding)
    taken.takeOver(protocol)
    conn.acceptSession(session, resumed, now)
    return taken


def unbind(
    protocol: HeartbeatMixin, binding: Binding, conn: Connection, host: Any, loss: Loss
) -> None:
    """
    ``protocol`` (its binding: ``binding``; its core: ``conn``) ended with
    ``loss``: it no longer carries its session. The session's ``host``
    hears of it (`ISessionHost.sessionLost`); without a host, the session
    ends with the connection, and its messages that will never be
    confirmed fail.
    """
    if binding.carrier is protocol:
        binding.carrier = None
    if host is not None:
        host.sessionLost(protocol, loss)
    else:
        binding.failUndelivered(
            conn.session.outbox.drain(), f"connection lost before confirmation ({loss})", loss
        )


def answer(
    conn: Connection, seq: int, outcome: object, clock: IReactorTime, peer: str | None
) -> None:
    """
    Answer the core ``conn`` for message ``seq``: processed, or, if
    ``outcome`` is a ``Failure`` (the application failed on the message),
    failed with the text of its REJECT (`logRejection` logs the failure of
    ``peer`` on ``clock``).
    """
    if isinstance(outcome, Failure):
        conn.messageFailed(seq, logRejection(clock, peer, seq, outcome))
    else:
        conn.messageProcessed(seq)


def refused(conn: Connection, what: str, loss: Loss | None) -> Deferred[Receipt]:
    """
    The failure of a send that ``conn`` refuses (`Connection.refusal`;
    ``what`` names the message or messages; ``loss``: the connection's,
    if it ended).

    :raises RuntimeError: if this side called `HeartbeatMixin.close`:
        sending after one's own close is a programming error, reported at
        once rather than as a failed Deferred that nobody may be watching.
    """
    refusal = conn.refusal()
    assert refusal is not None
    if refusal[0]:
        api = "sendMessage()" if what == "message" else "sendMessages()"
        raise RuntimeError(f"{api} {refusal[1]}")
    if loss is not None:
        return defer.fail(DeliveryFailed(f"connection already lost ({loss})", loss))
    return defer.fail(DeliveryFailed(f"{refusal[1]}; {what} not sent"))
