"""
The interfaces of the adapter: between `HeartbeatMixin` protocols and the
factories that keep sessions for them (`ISessionHost`), and between the
factories and the stores that keep sessions (`ISessionStore`, and
`ITransactionalStore` for one that runs an application's work in its own
transactions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted_alive._binding import Binding
    from twisted_alive._reasons import Loss
    from twisted_alive.core.delivery import Session
    from twisted_alive.core.stored import StoredSession, StoreStatistics


class ISessionHost(Interface):
    """
    A factory that keeps sessions beyond one connection.

    A `HeartbeatMixin` protocol whose ``factory`` provides this interface
    carries that factory's sessions instead of a session of its own.
    """

    role = Attribute("The `Role` its protocols play: CLIENT or SERVER.")

    def connectionStarted(protocol: object) -> None:
        """A connection was made (before the HELLO exchange)."""

    def clientBinding() -> Binding:
        """(Client role.) The `Binding` of the session the next connection
        carries."""

    def bindingFor(session: Session) -> Binding:
        """(Server role.) The `Binding` of a session `sessionFor` gave."""

    def sessionFor(token: bytes, now: float) -> tuple[Session, bool] | None:
        """
        (Server role.) The session a client asked for: ``(session, resumed)``
        for a new (all-zero token) or known token, ``None`` for an unknown or
        expired one.
        """

    def sessionForHello(
        token: bytes, now: float
    ) -> tuple[Session, bool] | None | Deferred[tuple[Session, bool] | None]:
        """
        (Server role.) What the server answers a client's HELLO with:
        `sessionFor`'s answer, or a Deferred of it if the answer waits for
        a store (the server's HELLO goes once it fires; if it fails, the
        connection is aborted).
        """

    def sessionUnknown(protocol: object, detail: str) -> None:
        """(Client role.) The peer did not resume the session."""

    def sessionOpened(protocol: object, resumed: bool) -> None:
        """A connection completed its HELLO exchange and carries a session."""

    def sessionLost(protocol: object, loss: Loss) -> None:
        """A connection that carried a session ended."""


def hostOf(protocol: object) -> Any:
    """The `ISessionHost` that keeps the sessions of ``protocol``: its
    ``factory``, if that provides the interface; else ``None``."""
    factory = getattr(protocol, "factory", None)
    return factory if ISessionHost.providedBy(factory) else None


class ISessionStore(Interface):
    """
    Where sessions live: what a session needs to survive the loss of its
    connections (every store) or of its process (a durable store).

    A store keeps `StoredSession` records by token: the epoch, the
    positions, and the outbound messages not yet confirmed. Every method
    that reads or writes returns a Deferred; a durable store fires it once
    the change is durable (committed), and applies the operations in the
    order they were called. The records it gives back are snapshots.

    Limits are the store's (`StoreLimits`): appending beyond them fails
    with `QueueFull` and changes nothing; so does appending to a store
    whose own queue is full (a durable store whose writes fall behind). An
    operation on a token the store does not hold fails with `StoreError`,
    as does any operation after `close`.
    """

    limits = Attribute("The `StoreLimits` the store applies to each session.")

    def open() -> Deferred[None]:
        """
        Make the store ready (idempotent; other methods call it
        themselves).

        :returns: a Deferred that fires once the store is usable, or fails
            with `CorruptStore` (a file that cannot be read, or that is not
            a twisted_alive session store) or `StoreError`.
        """

    def createSession(record: StoredSession) -> Deferred[None]:
        """
        Store a new session, with the messages of ``record`` if any.

        :returns: a Deferred that fails with `StoreError` if the token is
            held already or the record is inconsistent (`checkRecord`), and
            with `QueueFull` if its messages exceed the limits.
        """

    def loadSession(token: bytes) -> Deferred[StoredSession | None]:
        """The record of session ``token``, with its messages; ``None`` if
        the store does not hold it."""

    def deleteSession(token: bytes) -> Deferred[bool]:
        """Forget session ``token`` and its messages; fires with whether
        the store held it."""

    def listSessions() -> Deferred[list[bytes]]:
        """The tokens of every session held, least recently seen first."""

    def appendMessages(token: bytes, messages: Sequence[tuple[int, bytes]]) -> Deferred[None]:
        """
        Store outbound messages ``(seq, payload)``: all or none. Their
        sequence numbers must continue the session's (its ``nextSeq`` on);
        the session's ``nextSeq`` moves past them.

        :returns: a Deferred that fails with `QueueFull` beyond the limits,
            with `StoreError` for numbers that do not follow on.
        """

    def confirmMessages(token: bytes, upTo: int) -> Deferred[None]:
        """
        The peer confirmed every message up to ``upTo``: drop them. Going
        backwards changes nothing.

        :returns: a Deferred that fails with `StoreError` if ``upTo`` was
            never appended.
        """

    def recordProcessed(
        token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        """This side's application processed every inbound message up to
        ``upTo`` (the position never goes backwards); ``rejections``, if
        given, replace the stored REJECTs the peer may not have seen yet
        (`StoredSession.rejections`). The ACK and REJECTs that report it
        may go once the Deferred fired."""

    def touchSession(token: bytes, lastSeen: float) -> Deferred[None]:
        """Session ``token`` was seen at ``lastSeen`` (seconds since the
        epoch); it never goes backwards."""

    def expireSessions(now: float, ttl: float) -> Deferred[list[bytes]]:
        """Forget the sessions last seen more than ``ttl`` seconds before
        ``now``, with their messages; fires with their tokens, least
        recently seen first."""

    def flush() -> Deferred[None]:
        """Fires once every operation called before it is done (durable, for
        a durable store): what a sender's ``whenStored()`` waits for."""

    def close() -> Deferred[None]:
        """
        Finish every operation called before, make it durable, and release
        the store (idempotent). Operations called after fail with
        `StoreError`.
        """

    def statistics() -> StoreStatistics:
        """
        What the store says of itself now, for monitoring: the sessions
        and the outbound messages it holds, and how long its commits take
        (`StoreStatistics`). Cheap and synchronous, for the reactor's
        thread: it blocks on nothing and reads no file (a durable store
        keeps the figures up to date as its commits complete; they count
        what is committed).
        """


class ITransactionalStore(ISessionStore):
    """
    A session store that can run a receiver's work in the transaction that
    commits the processed position (`SqliteSessionStore`): the work and
    the position are durable together or not at all, so a message is
    processed exactly once even across a crash of the receiver's process.

    A `HeartbeatMixin` protocol that defines
    ``messageReceivedInTransaction(payload, cursor)`` needs a session kept
    in such a store; the adapter then calls `processInTransaction` for each
    message instead of ``messageReceived``.
    """

    def processInTransaction(
        token: bytes, seq: int, function: Callable[[Any], object]
    ) -> Deferred[None]:
        """
        Run ``function(cursor)`` in the store's next transaction, inside a
        savepoint, then raise the processed position of session ``token``
        to ``seq`` in the same savepoint.

        ``function`` runs in the store's own thread: it must use only the
        cursor it is given (a DB-API cursor on the store's database) and
        call nothing of Twisted; it must not commit, roll back or touch
        the store's own tables (``alive_*``).

        :returns: a Deferred that fires once the work and the position are
            committed together; or fails with the exception ``function``
            raised (its work and the position rolled back, the rest of the
            transaction kept), or with `StoreError` if the session is not
            held or the transaction itself failed (nothing of it kept).
        """


class ISharedSessionStore(ISessionStore):
    """
    A session store that several processes share (`RedisSessionStore`): a
    server factory on it resumes any session in the store, whichever
    process created or held it, by taking it over (`takeSession`); an
    application on any process can send to any session
    (``AliveServerFactory.sendTo``), through the session's mailbox.

    Each store object is one holder: a session it created or took is held
    by it until another one takes it; from then on, every change it asks
    for that session is refused (fencing by the session's epoch).
    """

    problem = Attribute(
        "Why the store's operations wait now (the server behind it is slow or cannot be "
        "reached), or None: /health says 'degraded' with it."
    )

    def takeSession(token: bytes) -> Deferred[StoredSession | None]:
        """
        Take session ``token`` over and load it, in one atomic step: its
        epoch rises by one (unless this store holds it already with the
        epoch it still has), this store holds it from now on, and the
        previous holder is fenced off and told (`poll`).

        :returns: a Deferred of the record, or ``None`` if the store holds
            no such session.
        """

    def appendMessages(
        token: bytes, messages: Sequence[tuple[int, bytes]], mail: Sequence[str] = ()
    ) -> Deferred[None]:
        """`ISessionStore.appendMessages`; the first ``len(mail)``
        messages are the first of the session's mailbox (`readMail`), by
        id, and leave it in the same atomic step."""

    def postMessage(sessionId: str, payload: bytes) -> Deferred[str]:
        """
        Put ``payload`` in the mailbox of the session with public id
        ``sessionId`` (`sessionIdOf`).

        :returns: a Deferred of the message's id (its outcome: `poll`);
            it fails with `SessionNotFound` or `QueueFull`.
        """

    def readMail(token: bytes, limit: int) -> Deferred[list[tuple[str, bytes]]]:
        """The first ``limit`` messages of a held session's mailbox, as
        ``(message id, payload)``."""

    def rejectMessage(token: bytes, seq: int, text: str) -> Deferred[None]:
        """The client's application failed on message ``seq`` of a held
        session: if it came from the mailbox, its sender learns it (`poll`)."""

    def poll(messageIds: Sequence[str] = ()) -> Deferred[Any]:
        """
        The sessions other stores took from this one since the last poll,
        the sessions whose mailbox holds messages, and the outcome of each
        posted message of ``messageIds`` (a `Polled`).
        """
