"""
The Redis session store (`RedisSessionStore`): sessions kept in a Redis
server, so that several processes, on one host or several, share them.

Every operation called in one turn of the reactor goes to Redis in one
``EVALSHA`` of one Lua script (``_redis.lua``), which applies them in
order, atomically; the next batch goes once the reply to this one came
back (operations called meanwhile wait for it, as a group commit does).
Each change checks the session's epoch against the one this store
created or loaded it with (*fencing*): a session another store took over
refuses the stale owner's writes with `SessionTakenOver`.

The connection is txredisapi's (``lazyConnection``), which reconnects by
itself; a batch whose reply was lost with the connection is sent again
with the same identity, and the script gives back the reply it stored
instead of applying it twice.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, NamedTuple, TypeVar, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IProtocol, IReactorTCP, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._interfaces import ISharedSessionStore
from twisted_alive.core.outcomes import QueueFull
from twisted_alive.core.stored import (
    DEFAULT_MAX_STORED,
    CommitTimes,
    StoreClosed,
    StoredSession,
    StoreError,
    StoreLimits,
    StoreStatistics,
    checkAppend,
    checkConfirm,
    checkRecord,
    sessionIdOf,
    unknownSession,
)

T = TypeVar("T")

SCRIPT = resources.files("twisted_alive").joinpath("_redis.lua").read_bytes()
"""The Lua script every batch runs."""

SCRIPT_SHA = hashlib.sha1(SCRIPT).hexdigest()
"""Its SHA-1, the name ``EVALSHA`` calls it by."""

CLOSED = "the session store is closed"

DEFAULT_PREFIX = "alive:"
"""The prefix of every key a `RedisSessionStore` writes, by default."""

RETRY_DELAY = 0.1
"""Seconds before a batch whose reply was lost is sent again (it then
waits for txredisapi's next connection)."""

MAX_FENCED = 65536
"""Sessions taken from a store that it still remembers the epoch of (the
most recent ones), so that a change it is asked for them is refused: a
change to a session a store neither created nor loaded is not checked."""

OUTCOME_TTL = 86400
"""Seconds Redis keeps the outcome of a posted message (`poll`)."""

DEFAULT_MAX_MAIL = 1000
"""Messages a session's mailbox holds at most, by default."""

REPLAY_TTL = 86400
"""Seconds Redis keeps the reply of a store's last batch that changed
something (one key per store), so that the batch sent again after a lost
connection gets it back instead of applying twice."""


NO_CLIENT = (
    "the Redis session store needs txredisapi: pip install 'twisted_alive[redis]' "
    "(or txredisapi==1.6.0)"
)
"""The error of a `RedisSessionStore` made where txredisapi is not
installed."""


def _client() -> Any:
    """The txredisapi module.

    :raises StoreError: `NO_CLIENT` if it is not installed.
    """
    try:
        import txredisapi
    except ImportError:
        raise StoreError(NO_CLIENT) from None
    return txredisapi


class SessionTakenOver(StoreError):
    """
    A change refused because the session's epoch in the store is no longer
    the one this store created or loaded it with: another process (or
    another store object) created the session again or took it over. The
    change was not made; this store must stop writing for the session.
    """


def takenOver(token: bytes, stored: int, held: int) -> SessionTakenOver:
    """The error of a change to session ``token`` whose epoch in the store
    is ``stored`` while this store holds it with epoch ``held``."""
    return SessionTakenOver(
        f"session {token.hex()[:8]} was taken over: its epoch is {stored} in the store, "
        f"this store holds epoch {held}"
    )


def unreachable(host: str, port: int, reason: str) -> StoreError:
    """The error of a Redis server that cannot be reached when the store
    opens."""
    return StoreError(f"cannot reach Redis at {host}:{port}: {reason}")


class SessionNotFound(StoreError):
    """A message posted to a session id that no session in the store has
    (it ended, or never was)."""


class Polled(NamedTuple):
    """What `RedisSessionStore.poll` found."""

    taken: list[bytes]
    """Tokens of the sessions other stores took from this one (and that it
    did not take back since)."""
    mailed: list[bytes]
    """Tokens of the sessions whose mailbox holds messages."""
    outcomes: list[str]
    """Per message id asked for: ``wait`` (in the mailbox), ``sent``
    (in the session, not confirmed yet), ``ok SEQ`` (confirmed, with its
    sequence number), ``rejected TEXT`` (the client's application failed
    on it), ``gone`` (its session ended before it was sent),
    ``lost`` (its session ended after it was sent: maybe processed) or
    ``unknown`` (no outcome kept: older than a day)."""


class _Operation:
    """One operation waiting for its batch: its name and arguments for the
    script (``name`` ``None`` for a `RedisSessionStore.flush` marker, which
    goes nowhere), what makes its result of the script's, and its
    Deferred."""

    __slots__ = ("name", "args", "outcome", "deferred")

    def __init__(
        self,
        name: str | None,
        args: list[bytes | str | int],
        outcome: Callable[[list[Any]], Any],
    ) -> None:
        self.name = name
        self.args = args
        self.outcome = outcome
        self.deferred: Deferred[Any] = Deferred()


def _bytes(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@implementer(ISharedSessionStore)
class RedisSessionStore:
    """
    Sessions in a Redis server, shared by every process that uses the same
    server, database and prefix.

    Per session (``HEX`` the token in hexadecimal): a hash
    ``PREFIXs:HEX`` (epoch, positions, last seen, the count and bytes of
    the messages held), a list ``PREFIXm:HEX`` of the unconfirmed payloads
    in order, and a list ``PREFIXr:HEX`` of the REJECTs to send again; a
    sorted set ``PREFIXseen`` of the tokens by last seen; a counter
    ``PREFIXmessages`` of the messages held across sessions.

    :param reactor: the reactor that schedules the batches (one per turn).
    :param host: the Redis server's host name or address.
    :param port: its port.
    :param db: the database number (``SELECT``).
    :param limits: what it keeps per session (`StoreLimits`).
    :param prefix: the prefix of every key it writes.
    :param maxPending: operations waiting for Redis at most (while a batch
        is under way, or Redis cannot be reached): beyond, `createSession`
        and `appendMessages` fail at once with `QueueFull`; the other
        operations are always taken.
    :param connectTimeout: seconds to wait for the first connection.
    :param maxMail: messages a session's mailbox holds at most
        (`postMessage`).
    :ivar slowAfter: seconds without an answer after which `problem`
        says Redis is slow.
    :raises StoreError: `NO_CLIENT` where txredisapi is not installed (the
        ``redis`` extra).
    :ivar roundTrips: requests sent to Redis so far (one per batch, plus
        one to load the script when Redis does not know it, plus one per
        batch sent again after a lost connection).
    :ivar batches: batches applied so far.
    :ivar operations: operations sent to Redis so far.
    """

    def __init__(
        self,
        reactor: Any,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        limits: StoreLimits | None = None,
        prefix: str = DEFAULT_PREFIX,
        maxPending: int = DEFAULT_MAX_STORED,
        connectTimeout: float = 5.0,
        maxMail: int = DEFAULT_MAX_MAIL,
    ) -> None:
        if maxPending < 1:
            raise ValueError(f"maxPending must be at least 1, got {maxPending!r}")
        if db < 0:
            raise ValueError(f"db must not be negative, got {db!r}")
        self._txredisapi = _client()
        self.host = host
        self.port = port
        self.db = db
        self.prefix = prefix
        self.limits = limits if limits is not None else StoreLimits()
        self.maxPending = maxPending
        self.connectTimeout = connectTimeout
        if maxMail < 1:
            raise ValueError(f"maxMail must be at least 1, got {maxMail!r}")
        self.maxMail = maxMail
        self.slowAfter = 1.0
        self.roundTrips = 0
        self.batches = 0
        self.operations = 0
        self._reactor = reactor
        self._epochs: dict[bytes, int] = {}
        self._fenced: OrderedDict[bytes, int] = OrderedDict()
        self._waiting: list[_Operation] = []
        self._sending: list[_Operation] | None = None
        self._scheduled: IDelayedCall | None = None
        self._identity = uuid.uuid4().hex
        self._counter = 0
        self._redis: Any = None
        self._connecting = False
        self._whenOpened: list[Deferred[None]] = []
        self._opened = False
        self._retry: IDelayedCall | None = None
        self.retries = 0
        """Batches sent again after a lost connection."""
        self._broken: StoreError | None = None
        self._closing = False
        self._whenClosed: list[Deferred[None]] = []
        self._sessionCount: int | None = None
        self._outboxMessages: int | None = None
        self._commitTimes = CommitTimes()
        self._batchStarted = 0.0

    def __repr__(self) -> str:
        return f"<RedisSessionStore redis://{self.host}:{self.port}/{self.db} {self.prefix!r}>"

    @property
    def pending(self) -> int:
        """Operations called and not yet answered."""
        return len(self._waiting) + len(self._sending or ())

    # -- connecting ----------------------------------------------------------------------------

    def open(self) -> Deferred[None]:
        """
        Connect to Redis and run the script once (idempotent; the other
        methods call it themselves).

        :returns: a Deferred that fires once connected, or fails with
            `StoreError` naming the server if it cannot be reached within
            ``connectTimeout`` seconds (``cannot reach Redis at
            HOST:PORT: ...``), or refuses the database or the script
            (``cannot use Redis at HOST:PORT: ...``). Once
            connected, a lost connection is not an error: txredisapi
            connects again, and the operations wait for it.
        """
        if self._closing:
            return defer.fail(StoreClosed(CLOSED))
        if self._broken is not None:
            return defer.fail(self._broken)
        if self._opened:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._whenOpened.append(d)
        if not self._connecting:
            self._connecting = True
            self._connect()
        return d

    def _connect(self) -> None:
        """Check that the server answers TCP, then hand it to txredisapi
        (which, told to reconnect, would keep trying an unreachable server
        without saying so); then run the script with no operation, which
        loads it and counts what the store holds."""
        endpoint = HostnameEndpoint(
            cast(IReactorTCP, self._reactor), self.host, self.port, timeout=self.connectTimeout
        )
        probe = endpoint.connect(Factory.forProtocol(Protocol))

        def reached(protocol: IProtocol) -> Deferred[Any]:
            transport = cast(Protocol, protocol).transport
            assert transport is not None
            transport.loseConnection()
            self._redis = self._txredisapi.lazyConnection(
                self.host,
                self.port,
                dbid=self.db,
                reconnect=True,
                charset=None,
                convertNumbers=False,
                connectTimeout=self.connectTimeout,
            )
            connected = cast(Deferred[Any], self._redis._connected)
            return connected.addCallback(
                lambda _: self._evaluate([self.prefix, self._identity, 0, REPLAY_TTL])
            )

        def ready(reply: list[Any]) -> None:
            self._opened = True
            self._sessionCount = int(reply[1])
            self._outboxMessages = int(reply[2])
            waiting, self._whenOpened = self._whenOpened, []
            for d in waiting:
                d.callback(None)
            self._next()

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, self._txredisapi.RedisError | ValueError):
                # Reached, but it refused the database or the script.
                self._broken = StoreError(
                    f"cannot use Redis at {self.host}:{self.port}: {failure.getErrorMessage()}"
                )
            else:
                self._broken = unreachable(self.host, self.port, failure.getErrorMessage())
            waiting, self._whenOpened = self._whenOpened, []
            for d in waiting:
                d.errback(self._broken)
            operations, self._waiting = self._waiting, []
            for operation in operations:
                operation.deferred.errback(self._broken)
            redis, self._redis = self._redis, None
            if redis is not None:
                redis.disconnect()
            self._next()

        probe.addCallback(reached).addCallbacks(ready, failed)

    # -- batches -------------------------------------------------------------------------------

    def _submit(
        self,
        name: str | None,
        args: list[bytes | str | int],
        outcome: Callable[[list[Any]], T],
        grows: bool = False,
    ) -> Deferred[T]:
        """Queue an operation for the next batch; its Deferred fires with
        ``outcome(result)`` once Redis applied it."""
        if self._closing:
            return defer.fail(StoreClosed(CLOSED))
        if self._broken is not None:
            return defer.fail(self._broken)
        if grows and self.pending >= self.maxPending:
            return defer.fail(
                QueueFull(
                    f"session store busy: {self.pending} operations wait for Redis at "
                    f"{self.host}:{self.port} (maxPending={self.maxPending})"
                )
            )
        operation = _Operation(name, args, outcome)
        self._waiting.append(operation)
        if not self._opened:
            if not self._connecting:
                self.open().addErrback(lambda _: None)
        else:
            self._schedule()
        return operation.deferred

    def _schedule(self) -> None:
        """Send the waiting operations at the end of this turn, unless a
        batch is under way (they go when it is answered)."""
        if self._scheduled is None and self._sending is None and self._waiting:
            self._scheduled = cast(IReactorTime, self._reactor).callLater(0, self._send)

    def _send(self) -> None:
        self._scheduled = None
        if self._sending is not None or not self._waiting:
            return
        batch, self._waiting = self._waiting, []
        if all(operation.name is None for operation in batch):
            # Nothing but flushes: everything before them is answered.
            for operation in batch:
                operation.deferred.callback(None)
            self._next()
            return
        self._sending = batch
        self._counter += 1
        self._batchStarted = cast(IReactorTime, self._reactor).seconds()
        self._transmit()

    def _transmit(self) -> None:
        """Send the batch under way (again, after a lost connection)."""
        self._retry = None
        assert self._sending is not None
        args: list[bytes | str | int] = [self.prefix, self._identity, self._counter, REPLAY_TTL]
        for operation in self._sending:
            if operation.name is not None:
                args += [operation.name, len(operation.args), *operation.args]
        self._evaluate(args).addCallbacks(self._answered, self._failed)

    def _evaluate(self, args: list[bytes | str | int]) -> Deferred[Any]:
        """``EVALSHA`` the script; when Redis does not know it (a restarted
        or flushed server), ``SCRIPT LOAD`` it and call it again."""
        self.roundTrips += 1
        d: Deferred[Any] = self._redis.evalsha(SCRIPT_SHA, [], [_bytes(arg) for arg in args])

        def unknownScript(failure: Failure) -> Deferred[Any]:
            if not isinstance(failure.value, self._txredisapi.ScriptDoesNotExist):
                return failure  # type: ignore[return-value]
            self.roundTrips += 1
            loaded: Deferred[Any] = self._redis.script_load(SCRIPT)
            return loaded.addCallback(lambda _: self._evaluate(args))

        return d.addErrback(unknownScript)

    def _failed(self, failure: Failure) -> None:
        if isinstance(failure.value, self._txredisapi.ConnectionError) and self._redis is not None:
            # The reply is lost with the connection: whether Redis applied
            # the batch or not, the same batch sent again gives its reply
            # (it waits for txredisapi to connect again).
            self.retries += 1
            self._retry = cast(IReactorTime, self._reactor).callLater(
                RETRY_DELAY, self._transmit
            )
            return
        batch, self._sending = self._sending, None
        assert batch is not None
        error = StoreError(
            f"Redis at {self.host}:{self.port} failed the batch: {failure.getErrorMessage()}"
        )
        for operation in batch:
            if operation.name is None:
                operation.deferred.callback(None)
            else:
                operation.deferred.errback(error)
        self._next()

    def _answered(self, reply: list[Any]) -> None:
        batch, self._sending = self._sending, None
        assert batch is not None
        results, sessions, messages = reply
        self.batches += 1
        self._sessionCount = int(sessions)
        self._outboxMessages = int(messages)
        self._commitTimes.observe(
            max(0.0, cast(IReactorTime, self._reactor).seconds() - self._batchStarted)
        )
        answers = iter(results)
        for operation in batch:
            if operation.name is None:
                operation.deferred.callback(None)
                continue
            self.operations += 1
            try:
                value = operation.outcome(next(answers))
            except Exception:
                operation.deferred.errback(Failure())  # type: ignore[no-untyped-call]
            else:
                operation.deferred.callback(value)
        self._next()

    def _next(self) -> None:
        if self._closing:
            self._maybeClosed()
        else:
            self._schedule()

    # -- outcomes ------------------------------------------------------------------------------

    def _checked(self, token: bytes, epoch: str, result: list[Any]) -> list[Any]:
        """``result`` if the script applied the operation, sent with
        ``epoch``; otherwise raise its error (an unknown session, or one
        taken over)."""
        code = result[0]
        if code == b"unknown":
            raise unknownSession(token)
        if code == b"taken":
            raise takenOver(token, int(result[1]), int(epoch))
        return result

    def _epochOf(self, token: bytes) -> str:
        """The epoch the script checks for ``token``: the one this store
        created or loaded it with; ``""`` (none checked) if neither."""
        epoch = self._epochs.get(token)
        if epoch is None:
            epoch = self._fenced.get(token)
        return "" if epoch is None else str(epoch)

    # -- ISessionStore -------------------------------------------------------------------------

    def createSession(self, record: StoredSession) -> Deferred[None]:
        """Store a new session (`ISessionStore.createSession`); this store
        then holds it with the record's epoch (fencing)."""
        if self._closing:
            return defer.fail(StoreClosed(CLOSED))
        try:
            checkRecord(record)
            self.limits.check(0, 0, [payload for _, payload in record.messages])
        except (StoreError, QueueFull) as error:
            return defer.fail(error)
        token = record.token
        previous = self._epochs.get(token)

        def created(result: list[Any]) -> None:
            if result[0] == b"exists":
                if previous is None:
                    self._epochs.pop(token, None)
                else:
                    self._epochs[token] = previous
                raise StoreError(f"the store holds session {token.hex()[:8]} already")

        args: list[bytes | str | int] = [
            token.hex(),
            sessionIdOf(token),
            record.epoch,
            record.nextSeq,
            record.confirmedUpTo,
            record.processedUpTo,
            repr(float(record.lastSeen)),
            record.storedBytes,
            len(record.messages),
        ]
        args += [payload for _, payload in record.messages]
        for seq, reason in record.rejections:
            args += [seq, reason.encode()]
        d = self._submit("create", args, created, grows=True)
        if not d.called:
            self._epochs[token] = record.epoch
            self._fenced.pop(token, None)
        return d

    def loadSession(self, token: bytes) -> Deferred[StoredSession | None]:
        """The record of a session (`ISessionStore.loadSession`); this
        store then holds it with the epoch loaded (fencing)."""
        return self._submit("load", [token.hex()], lambda result: self._loaded(token, result))

    def takeSession(self, token: bytes) -> Deferred[StoredSession | None]:
        """
        Take session ``token`` over: raise its epoch by one and load it, in
        one atomic step. This store then holds it with the new epoch, and
        every other store that held it is fenced off (its changes fail with
        `SessionTakenOver`; its next `poll` names the session). Two stores
        taking the same session at once get two different epochs: the
        first one's is fenced off by the second. A store that holds the
        session already, with the epoch it still has in Redis, keeps that
        epoch (nobody else took it meanwhile): its changes under way stay
        valid.

        :returns: a Deferred that fires with the record (its new epoch), or
            ``None`` if the store holds no such session.
        """
        return self._submit(
            "take", [token.hex(), self._epochOf(token)], lambda result: self._loaded(token, result)
        )

    def _loaded(self, token: bytes, result: list[Any]) -> StoredSession | None:
        """The record the script loaded, now held with its epoch."""
        if result[0] == b"none":
            return None
        _, epoch, nextSeq, confirmedUpTo, processedUpTo, lastSeen, payloads, flat = result
        nextSeq = int(nextSeq)
        first = nextSeq - len(payloads)
        rejections = tuple((int(flat[n]), _text(flat[n + 1])) for n in range(0, len(flat), 2))
        self._epochs[token] = int(epoch)
        self._fenced.pop(token, None)
        return StoredSession(
            token,
            int(epoch),
            nextSeq,
            int(confirmedUpTo),
            int(processedUpTo),
            float(lastSeen),
            tuple((first + n, bytes(payload)) for n, payload in enumerate(payloads)),
            rejections,
        )

    def deleteSession(self, token: bytes) -> Deferred[bool]:
        """Forget a session (`ISessionStore.deleteSession`); refused with
        `SessionTakenOver` if another store took it over."""

        epoch = self._epochOf(token)

        def deleted(result: list[Any]) -> bool:
            self._checked(token, epoch, result)
            self._epochs.pop(token, None)
            return bool(result[1])

        return self._submit("delete", [token.hex(), epoch], deleted)

    def listSessions(self) -> Deferred[list[bytes]]:
        """Every session's token, least recently seen first
        (`ISessionStore.listSessions`)."""
        return self._submit("list", [], lambda result: [bytes.fromhex(_text(h)) for h in result[1]])

    def appendMessages(
        self, token: bytes, messages: Sequence[tuple[int, bytes]], mail: Sequence[str] = ()
    ) -> Deferred[None]:
        """
        Store outbound messages (`ISessionStore.appendMessages`).

        :param mail: the ids of the first messages of the session's mailbox
            (`readMail`), in order, that the first ``len(mail)`` of
            ``messages`` are: they leave the mailbox in the same atomic
            step, and their senders learn their outcome from now on by
            their sequence numbers (`poll`). Refused with `StoreError` if
            they are no longer the first in the mailbox.
        """
        seqs = [seq for seq, _ in messages]
        payloads = [payload for _, payload in messages]
        epoch = self._epochOf(token)

        def appended(result: list[Any]) -> None:
            code = self._checked(token, epoch, result)[0]
            if code == b"seq":
                checkAppend(int(result[1]), seqs)
            elif code == b"full":
                self.limits.check(int(result[1]), int(result[2]), payloads)
            elif code == b"mail":
                raise StoreError(
                    f"the mailbox of session {token.hex()[:8]} no longer starts with the "
                    f"{len(mail)} messages read from it"
                )

        first = seqs[0] if seqs else 0
        args: list[bytes | str | int] = [
            token.hex(),
            epoch,
            first,
            self.limits.maxMessages,
            self.limits.maxBytes,
            len(mail),
            *mail,
            *payloads,
        ]
        if seqs and seqs != list(range(first, first + len(seqs))):
            # Not consecutive: refused whatever the session's nextSeq;
            # Redis still says which (and whether the session exists).
            args[2] = -1
        return self._submit("append", args, appended, grows=True)

    def confirmMessages(self, token: bytes, upTo: int) -> Deferred[None]:
        """Drop confirmed messages (`ISessionStore.confirmMessages`)."""

        epoch = self._epochOf(token)

        def confirmed(result: list[Any]) -> None:
            if self._checked(token, epoch, result)[0] == b"seq":
                checkConfirm(int(result[1]), upTo)

        return self._submit("confirm", [token.hex(), epoch, upTo], confirmed)

    def recordProcessed(
        self, token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        """Move the inbound position (`ISessionStore.recordProcessed`)."""
        epoch = self._epochOf(token)
        args: list[bytes | str | int] = [token.hex(), epoch, upTo]
        if rejections is None:
            args.append("0")
        else:
            args.append("1")
            for seq, reason in rejections:
                args += [seq, reason.encode()]
        return self._submit("processed", args, lambda result: self._ok(token, epoch, result))

    def _ok(self, token: bytes, epoch: str, result: list[Any]) -> None:
        self._checked(token, epoch, result)

    def touchSession(self, token: bytes, lastSeen: float) -> Deferred[None]:
        """Note when a session was seen (`ISessionStore.touchSession`)."""
        epoch = self._epochOf(token)
        return self._submit(
            "touch",
            [token.hex(), epoch, repr(float(lastSeen))],
            lambda result: self._ok(token, epoch, result),
        )

    def expireSessions(self, now: float, ttl: float) -> Deferred[list[bytes]]:
        """Forget sessions unseen for ``ttl`` seconds
        (`ISessionStore.expireSessions`), whichever process holds them."""

        def expired(result: list[Any]) -> list[bytes]:
            gone = [bytes.fromhex(_text(h)) for h in result[1]]
            for token in gone:
                self._epochs.pop(token, None)
            return gone

        return self._submit("expire", [repr(float(now - ttl))], expired)

    # -- several processes ----------------------------------------------------------------------

    def postMessage(self, sessionId: str, payload: bytes) -> Deferred[str]:
        """
        Put ``payload`` in the mailbox of the session whose public id is
        ``sessionId`` (`sessionIdOf`), whichever process holds it: the
        holder moves it into the session (`readMail`, `appendMessages`)
        and delivers it.

        :returns: a Deferred that fires with the message's id (32
            characters; its outcome: `poll`), or fails with
            `SessionNotFound` (no such session) or `QueueFull` (its
            mailbox holds ``maxMail`` messages, or ``maxPending``
            operations wait for Redis).
        """
        messageId = uuid.uuid4().hex

        def posted(result: list[Any]) -> str:
            code = result[0]
            if code == b"unknown":
                raise SessionNotFound(f"no session {sessionId} in the store")
            if code == b"full":
                raise QueueFull(
                    f"the mailbox of session {sessionId} is full ({self.maxMail} messages)"
                )
            return messageId

        return self._submit(
            "post",
            [sessionId, messageId, OUTCOME_TTL, self.maxMail, payload],
            posted,
            grows=True,
        )

    def readMail(self, token: bytes, limit: int) -> Deferred[list[tuple[str, bytes]]]:
        """
        The first ``limit`` messages of session ``token``'s mailbox, as
        ``(message id, payload)``, oldest first; they stay there until
        `appendMessages` moves them into the session. Refused with
        `SessionTakenOver` if another store took the session over.
        """
        epoch = self._epochOf(token)

        def read(result: list[Any]) -> list[tuple[str, bytes]]:
            self._checked(token, epoch, result)
            return [(_text(item[:32]), bytes(item[32:])) for item in result[1]]

        return self._submit("mail", [token.hex(), epoch, limit], read)

    def rejectMessage(self, token: bytes, seq: int, text: str) -> Deferred[None]:
        """
        Session ``token``'s client failed on message ``seq`` (a REJECT): if
        it came from the mailbox, its sender's outcome is ``rejected
        TEXT`` (`poll`) instead of the confirmation. Refused with
        `SessionTakenOver` if another store took the session over.
        """
        epoch = self._epochOf(token)
        return self._submit(
            "reject",
            [token.hex(), epoch, seq, text.encode()],
            lambda result: self._ok(token, epoch, result),
        )

    def poll(self, messageIds: Sequence[str] = ()) -> Deferred[Polled]:
        """
        What changed for this store in Redis: the sessions other stores
        took from it since the last poll (it no longer holds them), the
        sessions whose mailbox holds messages, and the outcome of each
        posted message of ``messageIds``.

        :returns: a Deferred of a `Polled`.
        """

        def polled(result: list[Any]) -> Polled:
            _, notices, mailed, outcomes = result
            taken = []
            for notice in notices:
                hex, epoch = _text(notice).split()
                token = bytes.fromhex(hex)
                held = self._epochs.get(token)
                if held is not None and held < int(epoch):
                    # (Not one this store took back since.) Its changes
                    # still carry the epoch it held: refused.
                    del self._epochs[token]
                    self._fenced[token] = held
                    if len(self._fenced) > MAX_FENCED:
                        self._fenced.popitem(last=False)
                    taken.append(token)
            return Polled(
                taken,
                [bytes.fromhex(_text(h)) for h in mailed],
                [_text(outcome) for outcome in outcomes],
            )

        return self._submit("poll", list(messageIds), polled)

    @property
    def problem(self) -> str | None:
        """
        What is wrong with Redis now, for ``/health``: ``None`` while it
        answers; else why the operations wait (it cannot be reached, or
        the batch under way has not been answered for ``slowAfter``
        seconds).
        """
        where = f"Redis at {self.host}:{self.port}"
        if self._broken is not None:
            return str(self._broken)
        if self._retry is not None:
            return f"{where}: the connection was lost, waiting to connect again"
        if self._sending is not None:
            waited = cast(IReactorTime, self._reactor).seconds() - self._batchStarted
            if waited >= self.slowAfter:
                return f"{where} has not answered for {waited:.1f} s"
        return None

    def flush(self) -> Deferred[None]:
        """Fires once every operation called before it is applied in Redis
        (`ISessionStore.flush`)."""
        if self._closing:
            return defer.fail(StoreClosed(CLOSED))
        if self._broken is not None:
            return defer.fail(self._broken)
        if not self._waiting and self._sending is None:
            return defer.succeed(None)
        return self._submit(None, [], lambda result: None)

    def close(self) -> Deferred[None]:
        """
        Send every operation called before, wait for their replies, then
        close the connection (`ISessionStore.close`). Idempotent. While
        Redis cannot be reached, this waits too.
        """
        d: Deferred[None] = Deferred()
        self._whenClosed.append(d)
        self._closing = True
        self._maybeClosed()
        return d

    def _maybeClosed(self) -> None:
        """(Closing.) Send what waits; once nothing does, disconnect and
        fire the Deferreds of `close`."""
        if self._sending is not None or (self._connecting and not (self._opened or self._broken)):
            return  # _next is called once the batch is answered, or the store opened
        if self._waiting and self._opened and self._broken is None:
            if self._scheduled is not None:
                self._scheduled.cancel()
            self._send()
            return
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        redis, self._redis = self._redis, None
        done: Deferred[Any] = redis.disconnect() if redis is not None else defer.succeed(None)

        def closed(_: object) -> None:
            waiting, self._whenClosed = self._whenClosed, []
            for d in waiting:
                d.callback(None)

        done.addBoth(closed)

    def statistics(self) -> StoreStatistics:
        """
        The sessions and messages held in Redis, as of the last batch
        applied (every process's, not only this store's), and the time of
        each batch, from sending it to its reply
        (`ISessionStore.statistics`); the counts are ``None`` until the
        first batch.
        """
        return self._commitTimes.statistics(self._sessionCount, self._outboxMessages)


__all__ = ["Polled", "RedisSessionStore", "SessionNotFound", "SessionTakenOver"]
