"""
Session stores (`ISessionStore`): `MemorySessionStore`, the default, and
`SqliteSessionStore`, durable on one machine; `sessionStoreFromString`
makes one from a description such as ``sqlite:/var/lib/alive/sessions.db``.

The SQLite store never runs SQLite in the reactor's thread: one thread of
its own owns the connection, takes every operation waiting in its queue,
runs them in one transaction and commits them together (a *group commit*:
one ``fsync`` for many messages), then fires their Deferreds in the
reactor's thread (``callFromThread``). The records and the rules they obey
are sans-IO, in ``twisted_alive.core.stored``.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._interfaces import ISessionStore, ITransactionalStore
from twisted_alive.core.outcomes import QueueFull
from twisted_alive.core.stored import (
    DEFAULT_MAX_STORED,
    CommitTimes,
    CorruptStore,
    StoreClosed,
    StoredSession,
    StoreError,
    StoreLimits,
    StoreStatistics,
    checkAppend,
    checkConfirm,
    checkRecord,
    unknownSession,
)

T = TypeVar("T")

CLOSED = "the session store is closed"
"""The text of the `StoreClosed` of an operation called after ``close``."""


class _Held:
    """One session of a `MemorySessionStore` (mutable)."""

    __slots__ = (
        "epoch",
        "nextSeq",
        "confirmedUpTo",
        "processedUpTo",
        "lastSeen",
        "messages",
        "bytes",
        "rejections",
    )

    def __init__(self, record: StoredSession) -> None:
        self.epoch = record.epoch
        self.nextSeq = record.nextSeq
        self.confirmedUpTo = record.confirmedUpTo
        self.processedUpTo = record.processedUpTo
        self.lastSeen = record.lastSeen
        self.messages: deque[tuple[int, bytes]] = deque(record.messages)
        self.bytes = record.storedBytes
        self.rejections = record.rejections


@implementer(ISessionStore)
class MemorySessionStore:
    """
    Sessions in this process's memory: they survive lost connections, not
    the end of the process. Every Deferred it returns has fired already.

    :param limits: what it keeps per session (`StoreLimits`).
    """

    def __init__(self, limits: StoreLimits | None = None) -> None:
        self.limits = limits if limits is not None else StoreLimits()
        self._sessions: dict[bytes, _Held] = {}
        self._outboxMessages = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"<MemorySessionStore: {len(self._sessions)} sessions>"

    def _do(self, function: Callable[[], T]) -> Deferred[T]:
        if self._closed:
            return defer.fail(StoreClosed(CLOSED))
        try:
            return defer.succeed(function())
        except (StoreError, QueueFull) as error:
            return defer.fail(error)

    def _held(self, token: bytes) -> _Held:
        held = self._sessions.get(token)
        if held is None:
            raise unknownSession(token)
        return held

    def open(self) -> Deferred[None]:
        """Nothing to open: fires at once (`ISessionStore`)."""
        return self._do(lambda: None)

    def createSession(self, record: StoredSession) -> Deferred[None]:
        """Store a new session (`ISessionStore.createSession`)."""

        def create() -> None:
            if record.token in self._sessions:
                raise StoreError(f"the store holds session {record.token.hex()[:8]} already")
            checkRecord(record)
            self.limits.check(0, 0, [payload for _, payload in record.messages])
            self._sessions[record.token] = _Held(record)
            self._outboxMessages += len(record.messages)

        return self._do(create)

    def loadSession(self, token: bytes) -> Deferred[StoredSession | None]:
        """The record of a session (`ISessionStore.loadSession`)."""

        def load() -> StoredSession | None:
            held = self._sessions.get(token)
            if held is None:
                return None
            return StoredSession(
                token,
                held.epoch,
                held.nextSeq,
                held.confirmedUpTo,
                held.processedUpTo,
                held.lastSeen,
                tuple(held.messages),
                held.rejections,
            )

        return self._do(load)

    def deleteSession(self, token: bytes) -> Deferred[bool]:
        """Forget a session (`ISessionStore.deleteSession`)."""
        return self._do(lambda: self._forget(token))

    def _forget(self, token: bytes) -> bool:
        held = self._sessions.pop(token, None)
        if held is None:
            return False
        self._outboxMessages -= len(held.messages)
        return True

    def listSessions(self) -> Deferred[list[bytes]]:
        """Every session's token, least recently seen first
        (`ISessionStore.listSessions`)."""
        return self._do(self._byAge)

    def _byAge(self) -> list[bytes]:
        return sorted(self._sessions, key=lambda token: (self._sessions[token].lastSeen, token))

    def appendMessages(self, token: bytes, messages: Sequence[tuple[int, bytes]]) -> Deferred[None]:
        """Store outbound messages (`ISessionStore.appendMessages`)."""

        def append() -> None:
            held = self._held(token)
            checkAppend(held.nextSeq, [seq for seq, _ in messages])
            payloads = [payload for _, payload in messages]
            self.limits.check(len(held.messages), held.bytes, payloads)
            held.messages.extend(messages)
            held.bytes += sum(map(len, payloads))
            self._outboxMessages += len(messages)
            held.nextSeq += len(messages)

        return self._do(append)

    def confirmMessages(self, token: bytes, upTo: int) -> Deferred[None]:
        """Drop confirmed messages (`ISessionStore.confirmMessages`)."""

        def confirm() -> None:
            held = self._held(token)
            checkConfirm(held.nextSeq, upTo)
            if upTo <= held.confirmedUpTo:
                return
            messages = held.messages
            before = len(messages)
            while messages and messages[0][0] <= upTo:
                held.bytes -= len(messages.popleft()[1])
            held.confirmedUpTo = upTo
            self._outboxMessages -= before - len(messages)

        return self._do(confirm)

    def recordProcessed(
        self, token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        """Move the inbound position (`ISessionStore.recordProcessed`)."""

        def record() -> None:
            held = self._held(token)
            held.processedUpTo = max(held.processedUpTo, upTo)
            if rejections is not None:
                held.rejections = tuple(rejections)

        return self._do(record)

    def touchSession(self, token: bytes, lastSeen: float) -> Deferred[None]:
        """Note when a session was seen (`ISessionStore.touchSession`)."""

        def touch() -> None:
            held = self._held(token)
            held.lastSeen = max(held.lastSeen, lastSeen)

        return self._do(touch)

    def expireSessions(self, now: float, ttl: float) -> Deferred[list[bytes]]:
        """Forget sessions unseen for ``ttl`` seconds
        (`ISessionStore.expireSessions`)."""

        def expire() -> list[bytes]:
            cutoff = now - ttl
            gone = [t for t in self._byAge() if self._sessions[t].lastSeen < cutoff]
            for token in gone:
                self._forget(token)
            return gone

        return self._do(expire)

    def flush(self) -> Deferred[None]:
        """Everything is done already: fires at once (`ISessionStore.flush`)."""
        return self._do(lambda: None)

    def close(self) -> Deferred[None]:
        """Release the store (`ISessionStore.close`); the sessions are
        gone with it."""
        self._closed = True
        self._sessions.clear()
        self._outboxMessages = 0
        return defer.succeed(None)

    def statistics(self) -> StoreStatistics:
        """
        The sessions and messages held (`ISessionStore.statistics`). A
        memory store commits nothing: it times no commit, and its commit
        histogram stays empty (a dashboard tells a store that makes
        nothing durable from one whose commits are fast).
        """
        return StoreStatistics(len(self._sessions), self._outboxMessages)


# -- SQLite ---------------------------------------------------------------------------------------

APPLICATION_ID = 0x54416C76
"""``PRAGMA application_id`` of a twisted_alive session store (``"TAlv"``):
it tells our file from any other SQLite database."""

SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the schema this module reads and writes."""

MIN_SQLITE = (3, 35, 0)
"""The oldest SQLite the store works with (``DELETE ... RETURNING``)."""

SYNCHRONOUS = ("NORMAL", "FULL")
"""The ``synchronous`` settings a `SqliteSessionStore` takes."""

_SCHEMA = (
    """CREATE TABLE alive_sessions (
        token BLOB PRIMARY KEY,
        epoch INTEGER NOT NULL,
        next_seq INTEGER NOT NULL,
        confirmed_up_to INTEGER NOT NULL,
        processed_up_to INTEGER NOT NULL,
        last_seen REAL NOT NULL,
        message_count INTEGER NOT NULL,
        message_bytes INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX alive_sessions_by_age ON alive_sessions (last_seen, token)",
    """CREATE TABLE alive_messages (
        token BLOB NOT NULL,
        seq INTEGER NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (token, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE alive_rejections (
        token BLOB NOT NULL,
        seq INTEGER NOT NULL,
        reason TEXT NOT NULL,
        PRIMARY KEY (token, seq)
    ) WITHOUT ROWID""",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_Operation = tuple[Callable[[sqlite3.Connection], Any], Deferred[Any], float]
"""An operation waiting for the writer: what to run, the Deferred of its
outcome, and when it was called (``time.perf_counter()``, the store's
clock)."""


class _FailsAlone(Exception):
    """(Writer thread.) An operation failed after undoing what it wrote:
    it fails alone, with ``failure``, and the transaction goes on."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.getErrorMessage())
        self.failure = failure


_STOP = None


def _raiseColumn(
    executor: sqlite3.Connection | sqlite3.Cursor, column: str, token: bytes, value: float
) -> None:
    """(Writer thread.) Raise ``column`` of session ``token`` to ``value``
    (never lower it); `unknownSession` if there is no such session."""
    updated = executor.execute(
        f"UPDATE alive_sessions SET {column} = max({column}, ?) WHERE token = ?",
        (value, token),
    )
    if updated.rowcount == 0:
        raise unknownSession(token)


def _savepoint(connection: sqlite3.Connection, function: Callable[[sqlite3.Cursor], T]) -> T:
    """(Writer thread.) ``function(cursor)`` inside a savepoint of the
    transaction under way: what it did is rolled back if it raises, and it
    fails alone (`_FailsAlone`) with its error."""
    connection.execute("SAVEPOINT alive_work")
    cursor = connection.cursor()
    try:
        result = function(cursor)
    except BaseException:
        # (Even SystemExit: the application's, not the writer's, to end.)
        failure = Failure()  # type: ignore[no-untyped-call]
        connection.execute("ROLLBACK TO alive_work")
        connection.execute("RELEASE alive_work")
        raise _FailsAlone(failure) from None
    finally:
        cursor.close()
    connection.execute("RELEASE alive_work")
    return result


class _Alone:
    """An operation the writer runs on its own, between two transactions,
    outside any (a backup)."""

    def __init__(self, function: Callable[[sqlite3.Connection], Any]) -> None:
        self.function = function

    def __call__(self, connection: sqlite3.Connection) -> Any:
        return self.function(connection)


_Figures = tuple[float | None, int, int]
"""What the writer reports with the results of a batch: how long its
commit took (``None`` if nothing was committed), and the sessions and
messages in the file after it."""


class _Tally:
    """
    (Writer thread.) How many sessions and stored messages the file holds:
    counted once when it opens (`count`), then kept up to date by the
    operations (`add`) as their transaction commits (`commit`); a
    transaction that fails changes nothing (`drop`).
    """

    def __init__(self) -> None:
        self.sessions = 0
        self.messages = 0
        self._sessions = 0
        self._messages = 0

    def count(self, connection: sqlite3.Connection) -> None:
        """Count what the file holds."""
        self.sessions = connection.execute("SELECT count(*) FROM alive_sessions").fetchone()[0]
        self.messages = connection.execute("SELECT count(*) FROM alive_messages").fetchone()[0]

    def add(self, sessions: int, messages: int) -> None:
        """The transaction under way adds (or removes) this many."""
        self._sessions += sessions
        self._messages += messages

    def commit(self) -> None:
        """The transaction committed: what it added counts."""
        self.sessions += self._sessions
        self.messages += self._messages
        self._sessions = self._messages = 0

    def drop(self) -> None:
        """The transaction failed: what it added never happened."""
        self._sessions = self._messages = 0


class _Positions:
    """
    (Writer thread.) The outbound positions of the sessions the writer has
    touched: ``[nextSeq, confirmedUpTo, messageCount, messageBytes]`` by
    token, read once from the file, then kept here, and written back once
    per transaction for the sessions that changed (`write`). The writer is
    the file's only user (it holds an exclusive lock), so they stay true;
    a transaction that fails forgets them all (`clear`).
    """

    def __init__(self) -> None:
        self.rows: dict[bytes, list[int]] = {}
        self.dirty: set[bytes] = set()

    def get(self, connection: sqlite3.Connection, token: bytes) -> list[int]:
        """The positions of session ``token`` (change them in place, then
        call `changed`); `StoreError` if there is no such session."""
        row = self.rows.get(token)
        if row is None:
            fetched = connection.execute(
                "SELECT next_seq, confirmed_up_to, message_count, message_bytes "
                "FROM alive_sessions WHERE token = ?",
                (token,),
            ).fetchone()
            if fetched is None:
                raise unknownSession(token)
            row = self.rows[token] = list(fetched)
        return row

    def changed(self, token: bytes) -> None:
        """The positions of ``token`` changed: write them back."""
        self.dirty.add(token)

    def forget(self, token: bytes) -> None:
        """Session ``token`` is gone."""
        self.rows.pop(token, None)
        self.dirty.discard(token)

    def write(self, connection: sqlite3.Connection) -> None:
        """Write the changed positions to the file."""
        if self.dirty:
            rows = self.rows
            connection.executemany(
                "UPDATE alive_sessions SET next_seq = ?, confirmed_up_to = ?, "
                "message_count = ?, message_bytes = ? WHERE token = ?",
                [(*rows[token], token) for token in self.dirty],
            )
            self.dirty.clear()

    def clear(self) -> None:
        """Forget everything (the transaction that changed them failed)."""
        self.rows.clear()
        self.dirty.clear()


@implementer(ITransactionalStore)
class SqliteSessionStore:
    """
    Sessions in a SQLite file, durable across a crash of this process
    (``synchronous="NORMAL"``, the default) or a power loss
    (``synchronous="FULL"``).

    The file is in WAL mode and locked for this store alone
    (``locking_mode=EXCLUSIVE``): a second process, or a second store in
    this one, cannot open it while this store has it open. Its schema is
    versioned (``PRAGMA user_version``) and marked as ours (``PRAGMA
    application_id``); a file that cannot be read, is damaged (``PRAGMA
    quick_check``) or holds another schema makes `open` fail with
    `CorruptStore`, and is left as it is. A file that does not exist yet,
    or is empty, becomes a new store.

    One thread of its own, started by the first operation, owns the
    connection: it takes every operation waiting (at most ``maxBatch``),
    runs them in one transaction, commits once, and fires their Deferreds
    in the reactor's thread. An operation refused (`QueueFull`,
    `StoreError`) changes nothing and fails alone; if the transaction
    itself fails, every operation in it fails with `StoreError`.

    :param path: the database file.
    :param synchronous: ``"NORMAL"`` or ``"FULL"`` (SQLite's ``PRAGMA
        synchronous`` in WAL mode): NORMAL survives a crash of the process,
        FULL also a crash of the machine.
    :param limits: what it keeps per session (`StoreLimits`).
    :param reactor: the reactor whose thread gets the results; the global
        one if not given. The store closes itself before it shuts down.
    :param maxBatch: operations per transaction at most.
    :param maxPending: operations waiting for the thread at most: beyond,
        `createSession` and `appendMessages` fail at once with `QueueFull`
        (a writer that falls behind does not let its queue grow without
        limit); the other operations, which free room or read, are always
        taken.
    :ivar commits: transactions committed so far.
    :ivar operations: operations done so far.

    `statistics` gives the sessions and messages in the file and the time
    of each commit: from the moment the first operation of its group was
    called (or the file opened, if later) to the end of the ``COMMIT``,
    measured by the writer thread; the figures reach the reactor's thread
    with the results of the group.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        synchronous: Literal["NORMAL", "FULL"] | str = "NORMAL",
        limits: StoreLimits | None = None,
        reactor: IReactorFromThreads | None = None,
        maxBatch: int = 4096,
        maxPending: int = DEFAULT_MAX_STORED,
    ) -> None:
        level = synchronous.upper()
        if level not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        if maxBatch < 1 or maxPending < 1:
            raise ValueError(
                f"maxBatch and maxPending must be at least 1, got {maxBatch!r}, {maxPending!r}"
            )
        self.path = Path(path)
        self.synchronous = level
        self.limits = limits if limits is not None else StoreLimits()
        self.maxBatch = maxBatch
        self.maxPending = maxPending
        self.pending = 0
        """Operations called and not yet answered."""
        self.commits = 0
        self.operations = 0
        self._reactor = reactor
        self._queue: queue.SimpleQueue[_Operation | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stopped = False
        self._whenClosed: list[Deferred[None]] = []
        self._shutdownTrigger: Any = None
        self._positions = _Positions()
        self._tally = _Tally()
        self._commitTimes = CommitTimes()
        self._now: Callable[[], float] = time.perf_counter
        """The clock of the commit times (both threads read it)."""
        self._sessionCount: int | None = None
        self._outboxMessages: int | None = None

    def __repr__(self) -> str:
        return f"<SqliteSessionStore {str(self.path)!r} synchronous={self.synchronous}>"

    # -- the writer thread, seen from the reactor ----------------------------------------------

    def _getReactor(self) -> IReactorFromThreads:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = cast(IReactorFromThreads, reactor)
        return self._reactor

    def _submit(
        self, function: Callable[[sqlite3.Connection], T], grows: bool = False
    ) -> Deferred[T]:
        """Run ``function(connection)`` in the writer thread, in the next
        transaction; its result or error fires the Deferred once committed.
        An operation that ``grows`` the store is refused once `maxPending`
        operations wait."""
        if self._closing:
            return defer.fail(StoreClosed(CLOSED))
        if grows and self.pending >= self.maxPending:
            return defer.fail(
                QueueFull(
                    f"session store busy: {self.pending} operations wait for its thread "
                    f"(maxPending={self.maxPending})"
                )
            )
        if self._thread is None:
            self._start()
        self.pending += 1
        d: Deferred[T] = Deferred()
        self._queue.put((function, d, self._now()))
        return d

    def _start(self) -> None:
        reactor = self._getReactor()
        self._thread = threading.Thread(
            target=self._run,
            args=(reactor,),
            name=f"twisted_alive store {self.path.name}",
            daemon=True,
        )
        self._thread.start()
        if IReactorCore.providedBy(reactor):
            self._shutdownTrigger = cast(IReactorCore, reactor).addSystemEventTrigger(
                "before", "shutdown", self.close
            )

    def close(self) -> Deferred[None]:
        """
        Commit every operation called before, close the file and end the
        thread (`ISessionStore.close`). Idempotent: every call's Deferred
        fires once the thread is done.
        """
        if not self._closing:
            self._closing = True
            if self._thread is None:
                self._stopped = True
            else:
                trigger, self._shutdownTrigger = self._shutdownTrigger, None
                if trigger is not None:
                    cast(IReactorCore, self._getReactor()).removeSystemEventTrigger(trigger)
                self._queue.put(_STOP)
        if self._stopped:
            return defer.succeed(None)
        d: Deferred[None] = Deferred()
        self._whenClosed.append(d)
        return d

    def statistics(self) -> StoreStatistics:
        """
        The sessions and messages in the file, and the times of the
        commits so far (`ISessionStore.statistics`): as of the last group
        committed; the counts are ``None`` until the file opened.
        """
        return self._commitTimes.statistics(self._sessionCount, self._outboxMessages)

    def _deliver(
        self,
        results: list[tuple[Deferred[Any], bool, Any]],
        stopped: bool,
        figures: _Figures | None = None,
    ) -> None:
        """(Reactor thread.) Note the figures of a batch (`statistics`),
        then fire its Deferreds."""
        if figures is not None:
            seconds, self._sessionCount, self._outboxMessages = figures
            if seconds is not None:
                self._commitTimes.observe(seconds)
        self.pending -= len(results)
        for d, ok, value in results:
            if ok:
                d.callback(value)
            else:
                d.errback(value)
        if stopped:
            self._stopped = True
            waiting, self._whenClosed = self._whenClosed, []
            for d in waiting:
                d.callback(None)

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self, reactor: IReactorFromThreads) -> None:
        """(Writer thread.) Open the file, then run batches until stopped."""
        connection: sqlite3.Connection | None = None
        broken: StoreError | None = None
        try:
            connection = self._connect()
        except StoreError as error:
            broken = error
        now = self._now
        openedAt = now()
        tally = self._tally
        stopped = False
        waiting: _Operation | None = None
        while not stopped:
            batch: list[_Operation] = []
            item = self._queue.get() if waiting is None else waiting
            waiting = None
            while item is not _STOP:
                if isinstance(item[0], _Alone):
                    # On its own: after the batch taken so far, if any.
                    if batch:
                        waiting = item
                    else:
                        batch.append(item)
                    break
                batch.append(item)
                if len(batch) >= self.maxBatch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            else:
                stopped = True
            figures: _Figures | None = None
            if connection is None:
                assert broken is not None
                results = [(d, False, broken) for _, d, _ in batch]
            else:
                seconds = None
                if batch and isinstance(batch[0][0], _Alone):
                    results = [self._alone(connection, batch[0])]
                elif batch:
                    results, committed = self._transact(connection, batch)
                    if committed:
                        seconds = now() - max(batch[0][2], openedAt)
                else:
                    results = []
                figures = (seconds, tally.sessions, tally.messages)
            if stopped and connection is not None:
                connection.close()
            reactor.callFromThread(self._deliver, results, stopped, figures)

    def _alone(
        self, connection: sqlite3.Connection, operation: _Operation
    ) -> tuple[Deferred[Any], bool, Any]:
        """(Writer thread.) Run an operation outside any transaction; its
        outcome."""
        function, d, _ = operation
        try:
            return d, True, function(connection)
        except StoreError as error:
            return d, False, error
        except Exception as error:
            failed = StoreError(f"session store {self.path}: {error!r}")
            failed.__cause__ = error
            return d, False, failed

    def _transact(
        self, connection: sqlite3.Connection, batch: list[_Operation]
    ) -> tuple[list[tuple[Deferred[Any], bool, Any]], bool]:
        """(Writer thread.) Run ``batch`` in one transaction; the outcome of
        each operation, and whether the transaction committed."""
        results: list[tuple[Deferred[Any], bool, Any]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for function, d, _ in batch:
                try:
                    results.append((d, True, function(connection)))
                except (StoreError, QueueFull) as refused:
                    # Refused before it wrote anything: it fails alone.
                    results.append((d, False, refused))
                except _FailsAlone as alone:
                    # Undid what it wrote (an application's work, rolled
                    # back to its savepoint): it fails alone too.
                    results.append((d, False, alone.failure))
            self._positions.write(connection)
            connection.execute("COMMIT")
        except Exception as error:
            # Not a refusal: what the batch wrote so far is undone, and
            # every operation in it fails.
            self._positions.clear()
            self._tally.drop()
            try:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            failed = StoreError(f"session store {self.path}: the transaction failed: {error!r}")
            failed.__cause__ = error
            return [(d, False, failed) for _, d, _ in batch], False
        self._tally.commit()
        self.commits += 1
        self.operations += len(batch)
        return results, True

    def _connect(self) -> sqlite3.Connection:
        """(Writer thread.) Open the file and check it is ours, or make it
        ours if it is new.

        :raises StoreError: if it cannot be opened or is in use.
        :raises CorruptStore: if it is damaged or not a session store.
        """
        path = self.path
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StoreError(
                f"session store {path} needs SQLite {'.'.join(map(str, MIN_SQLITE))} or "
                f"later; this Python has SQLite {sqlite3.sqlite_version}"
            )
        try:
            connection = sqlite3.connect(path, isolation_level=None, timeout=0.0)
        except sqlite3.Error as error:
            raise StoreError(f"cannot open session store {path}: {error}") from None
        try:
            self._prepare(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _prepare(self, connection: sqlite3.Connection) -> None:
        path = self.path
        try:
            connection.execute("PRAGMA locking_mode = EXCLUSIVE")
            applicationId = connection.execute("PRAGMA application_id").fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            tables = [
                name
                for (name,) in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
                )
            ]
            if applicationId == 0 and version == 0 and not tables:
                connection.execute("BEGIN IMMEDIATE")
                for statement in _SCHEMA:
                    connection.execute(statement)
                connection.execute("COMMIT")
            elif applicationId != APPLICATION_ID:
                raise CorruptStore(
                    f"{path} is not a twisted_alive session store: its application_id is "
                    f"{applicationId:#x}, not {APPLICATION_ID:#x}, and it holds the tables "
                    f"{', '.join(tables) or '(none)'}; it was left as it is"
                )
            elif version != SCHEMA_VERSION:
                raise StoreError(
                    f"{path} is a twisted_alive session store of schema version {version}; "
                    f"this twisted_alive reads version {SCHEMA_VERSION}"
                )
            problems = [row[0] for row in connection.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise CorruptStore(
                    f"{path} is a damaged twisted_alive session store "
                    f"(quick_check: {'; '.join(problems)}); it was left as it is"
                )
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"session store {path} cannot use WAL mode (journal_mode {mode})")
            connection.execute(f"PRAGMA synchronous = {self.synchronous}")
            # Take the file's lock now: another opener fails at once.
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("COMMIT")
            self._tally.count(connection)
        except sqlite3.Error as error:
            name = getattr(error, "sqlite_errorname", "")
            if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
                raise StoreError(
                    f"session store {path} is in use by another process or store ({error})"
                ) from None
            if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
                raise CorruptStore(
                    f"{path} is not a twisted_alive session store: it cannot be read as "
                    f"a SQLite database ({error}); it was left as it is"
                ) from None
            raise StoreError(f"cannot open session store {path}: {error}") from None

    def check(self) -> None:
        """
        Open the file in the calling thread, as the writer thread does, and
        close it again: blocking, for a tool that must refuse to start on a
        bad file (the twistd plugin's ``--sessions``) before its reactor
        runs. A file that does not exist yet becomes a new store.

        :raises StoreError: if it cannot be opened or is in use.
        :raises CorruptStore: if it is damaged or not a session store (it
            is left as it is).
        """
        self._connect().close()

    # -- ISessionStore -----------------------------------------------------------------------

    def open(self) -> Deferred[None]:
        """Open the file in the writer thread (`ISessionStore.open`)."""
        return self._submit(lambda connection: None)

    def flush(self) -> Deferred[None]:
        """Fires once every operation called before is committed
        (`ISessionStore.flush`)."""
        return self._submit(lambda connection: None)

    def backup(self, path: str | os.PathLike[str]) -> Deferred[None]:
        """
        Copy the store, while it is open, into the file ``path`` with
        SQLite's online backup API: a consistent copy of everything
        committed by the operations called before, none of those called
        after. The writer thread makes it between two transactions (the
        operations called meanwhile wait). The copy is a session store
        that a `SqliteSessionStore` can open; a file at ``path`` is
        replaced.

        While a store has its file open, no other process can read it (the
        file is locked): this is how to back up a store in use.

        :returns: a Deferred that fires once the copy is complete, or fails
            with `StoreError` (``path`` is the store's own file, or cannot
            be written).
        """
        target = Path(path)

        def copy(connection: sqlite3.Connection) -> None:
            if target.resolve() == self.path.resolve():
                raise StoreError(f"cannot back up session store {self.path} onto itself")
            try:
                out = sqlite3.connect(target, isolation_level=None)
                try:
                    connection.backup(out)
                finally:
                    out.close()
            except sqlite3.Error as error:
                raise StoreError(
                    f"cannot back up session store {self.path} to {target}: {error}"
                ) from None

        return self._submit(_Alone(copy))

    def createSession(self, record: StoredSession) -> Deferred[None]:
        """Store a new session (`ISessionStore.createSession`)."""
        limits = self.limits
        positions = self._positions
        tally = self._tally

        def create(connection: sqlite3.Connection) -> None:
            exists = connection.execute(
                "SELECT 1 FROM alive_sessions WHERE token = ?", (record.token,)
            ).fetchone()
            if exists:
                raise StoreError(f"the store holds session {record.token.hex()[:8]} already")
            checkRecord(record)
            limits.check(0, 0, [payload for _, payload in record.messages])
            connection.execute(
                "INSERT INTO alive_sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.token,
                    record.epoch,
                    record.nextSeq,
                    record.confirmedUpTo,
                    record.processedUpTo,
                    record.lastSeen,
                    len(record.messages),
                    record.storedBytes,
                ),
            )
            connection.executemany(
                "INSERT INTO alive_messages VALUES (?, ?, ?)",
                [(record.token, seq, payload) for seq, payload in record.messages],
            )
            connection.executemany(
                "INSERT INTO alive_rejections VALUES (?, ?, ?)",
                [(record.token, seq, reason) for seq, reason in record.rejections],
            )
            positions.rows[record.token] = [
                record.nextSeq,
                record.confirmedUpTo,
                len(record.messages),
                record.storedBytes,
            ]
            tally.add(1, len(record.messages))

        return self._submit(create, grows=True)

    def loadSession(self, token: bytes) -> Deferred[StoredSession | None]:
        """The record of a session (`ISessionStore.loadSession`)."""

        def load(connection: sqlite3.Connection) -> StoredSession | None:
            self._positions.write(connection)
            row = connection.execute(
                "SELECT epoch, next_seq, confirmed_up_to, processed_up_to, last_seen "
                "FROM alive_sessions WHERE token = ?",
                (token,),
            ).fetchone()
            if row is None:
                return None
            messages = connection.execute(
                "SELECT seq, payload FROM alive_messages WHERE token = ? ORDER BY seq", (token,)
            ).fetchall()
            rejections = connection.execute(
                "SELECT seq, reason FROM alive_rejections WHERE token = ? ORDER BY seq", (token,)
            ).fetchall()
            epoch, nextSeq, confirmedUpTo, processedUpTo, lastSeen = row
            return StoredSession(
                token,
                epoch,
                nextSeq,
                confirmedUpTo,
                processedUpTo,
                lastSeen,
                tuple(messages),
                tuple(rejections),
            )

        return self._submit(load)

    def deleteSession(self, token: bytes) -> Deferred[bool]:
        """Forget a session (`ISessionStore.deleteSession`)."""

        def delete(connection: sqlite3.Connection) -> bool:
            return self._delete(connection, token)

        return self._submit(delete)

    def _delete(self, connection: sqlite3.Connection, token: bytes) -> bool:
        """(Writer thread.) Delete session ``token`` and what it holds;
        whether there was one."""
        self._positions.forget(token)
        messages = connection.execute("DELETE FROM alive_messages WHERE token = ?", (token,))
        dropped = messages.rowcount
        connection.execute("DELETE FROM alive_rejections WHERE token = ?", (token,))
        cursor = connection.execute("DELETE FROM alive_sessions WHERE token = ?", (token,))
        self._tally.add(-cursor.rowcount, -dropped)
        return cursor.rowcount > 0

    def listSessions(self) -> Deferred[list[bytes]]:
        """Every session's token, least recently seen first
        (`ISessionStore.listSessions`)."""

        def tokens(connection: sqlite3.Connection) -> list[bytes]:
            rows = connection.execute("SELECT token FROM alive_sessions ORDER BY last_seen, token")
            return [token for (token,) in rows]

        return self._submit(tokens)

    def appendMessages(self, token: bytes, messages: Sequence[tuple[int, bytes]]) -> Deferred[None]:
        """Store outbound messages (`ISessionStore.appendMessages`)."""
        limits = self.limits
        positions = self._positions
        tally = self._tally
        messages = list(messages)

        def append(connection: sqlite3.Connection) -> None:
            row = positions.get(connection, token)
            nextSeq, _, count, size = row
            checkAppend(nextSeq, [seq for seq, _ in messages])
            payloads = [payload for _, payload in messages]
            limits.check(count, size, payloads)
            connection.executemany(
                "INSERT INTO alive_messages VALUES (?, ?, ?)",
                [(token, seq, payload) for seq, payload in messages],
            )
            row[0] = nextSeq + len(messages)
            row[2] = count + len(messages)
            row[3] = size + sum(map(len, payloads))
            positions.changed(token)
            tally.add(0, len(messages))

        return self._submit(append, grows=True)

    def confirmMessages(self, token: bytes, upTo: int) -> Deferred[None]:
        """Drop confirmed messages (`ISessionStore.confirmMessages`)."""
        positions = self._positions
        tally = self._tally

        def confirm(connection: sqlite3.Connection) -> None:
            row = positions.get(connection, token)
            nextSeq, confirmedUpTo, count, size = row
            checkConfirm(nextSeq, upTo)
            if upTo <= confirmedUpTo:
                return
            dropped = connection.execute(
                "DELETE FROM alive_messages WHERE token = ? AND seq <= ? RETURNING length(payload)",
                (token, upTo),
            ).fetchall()
            row[1] = upTo
            row[2] = count - len(dropped)
            row[3] = size - sum(length for (length,) in dropped)
            positions.changed(token)
            tally.add(0, -len(dropped))

        return self._submit(confirm)

    def _raise(self, column: str, token: bytes, value: float) -> Deferred[None]:
        """Raise ``column`` of a session to ``value`` (never lower it)."""

        return self._submit(lambda connection: _raiseColumn(connection, column, token, value))

    def recordProcessed(
        self, token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        """Move the inbound position (`ISessionStore.recordProcessed`)."""
        if rejections is None:
            return self._raise("processed_up_to", token, upTo)
        kept = [(token, seq, reason) for seq, reason in rejections]

        def record(connection: sqlite3.Connection) -> None:
            _raiseColumn(connection, "processed_up_to", token, upTo)
            connection.execute("DELETE FROM alive_rejections WHERE token = ?", (token,))
            connection.executemany("INSERT INTO alive_rejections VALUES (?, ?, ?)", kept)

        return self._submit(record)

    def runInTransaction(self, function: Callable[[sqlite3.Cursor], T]) -> Deferred[T]:
        """
        Run ``function(cursor)`` in the writer thread, in its next
        transaction, inside a savepoint: the way for an application to
        create, read and change its own tables in the store's file (which
        the store locks for itself). The Deferred fires with what
        ``function`` returned once committed; if it raises, what it did is
        rolled back, the rest of the transaction is kept, and the Deferred
        fails with its error. The rules of
        `ITransactionalStore.processInTransaction` apply to ``function``.
        """
        return self._submit(lambda connection: _savepoint(connection, function))

    def processInTransaction(
        self, token: bytes, seq: int, function: Callable[[sqlite3.Cursor], object]
    ) -> Deferred[None]:
        """
        Run a receiver's work and raise its processed position in one
        transaction (`ITransactionalStore.processInTransaction`): in the
        writer thread, inside a savepoint, ``function(cursor)`` and then the
        position of session ``token`` up to ``seq``. If ``function`` raises
        (or the session is not held), the savepoint is rolled back: neither
        its work nor the position is kept, the other operations of the
        transaction are, and the Deferred fails with that error. Several
        messages' work may share one commit (the writer's group commit);
        each is all or nothing by its savepoint.
        """

        def work(cursor: sqlite3.Cursor) -> None:
            function(cursor)
            _raiseColumn(cursor, "processed_up_to", token, seq)

        return self._submit(lambda connection: _savepoint(connection, work))

    def touchSession(self, token: bytes, lastSeen: float) -> Deferred[None]:
        """Note when a session was seen (`ISessionStore.touchSession`)."""
        return self._raise("last_seen", token, lastSeen)

    def expireSessions(self, now: float, ttl: float) -> Deferred[list[bytes]]:
        """Forget sessions unseen for ``ttl`` seconds
        (`ISessionStore.expireSessions`)."""
        cutoff = now - ttl

        def expire(connection: sqlite3.Connection) -> list[bytes]:
            gone = [
                token
                for (token,) in connection.execute(
                    "SELECT token FROM alive_sessions WHERE last_seen < ? "
                    "ORDER BY last_seen, token",
                    (cutoff,),
                )
            ]
            for token in gone:
                self._delete(connection, token)
            return gone

        return self._submit(expire)


REDIS_FORM = "redis://HOST:PORT/DB[?prefix=PREFIX]"
"""What a Redis description looks like, for messages."""


def _redisStore(reactor: Any, text: str) -> ISessionStore:
    """The `RedisSessionStore` of a ``redis://`` description."""
    from urllib.parse import parse_qsl, urlsplit

    from twisted_alive._redis import DEFAULT_PREFIX, RedisSessionStore

    parts = urlsplit(text)
    if not text.startswith("redis://"):
        raise ValueError(f"{text!r} is not a Redis description: use {REDIS_FORM}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r}: a user or password in the description is not supported")
    if not parts.hostname:
        raise ValueError(f"{text!r} names no host: use {REDIS_FORM}")
    try:
        port = 6379 if parts.port is None else parts.port
        if port == 0:
            raise ValueError(port)
    except ValueError:
        raise ValueError(
            f"invalid port in {text!r}: use {REDIS_FORM}, PORT from 1 to 65535"
        ) from None
    path = parts.path.strip("/")
    if path and not (path.isascii() and path.isdigit()):
        raise ValueError(f"invalid database {path!r} in {text!r}: DB is a number, 0 or more")
    prefix = DEFAULT_PREFIX
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name != "prefix":
            raise ValueError(
                f"unknown Redis option {name!r} in {text!r}: the option is prefix=PREFIX"
            )
        prefix = value
    if parts.fragment:
        raise ValueError(f"{text!r}: a Redis description has no #fragment")
    return RedisSessionStore(reactor, parts.hostname, port, int(path or 0), prefix=prefix)


# -- descriptions ---------------------------------------------------------------------------------

DESCRIPTIONS = "memory, sqlite:PATH[:synchronous=NORMAL|FULL] or redis://HOST:PORT/DB"
"""The description strings `sessionStoreFromString` reads, for messages."""


def _split(description: str) -> list[str]:
    """Split at the colons not escaped by a backslash (``\\:`` is a colon
    in a path, ``\\\\`` a backslash), as Twisted's endpoint strings do."""
    parts = [""]
    escaped = False
    for char in description:
        if escaped:
            parts[-1] += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("")
        else:
            parts[-1] += char
    if escaped:
        parts[-1] += "\\"
    return parts


def sessionStoreFromString(reactor: Any, description: str) -> ISessionStore:
    """
    A session store from a description, as ``serverFromString`` makes an
    endpoint:

    - ``memory``: a `MemorySessionStore`;
    - ``sqlite:PATH``: a `SqliteSessionStore` on the file ``PATH``
      (relative paths are taken from the current directory now, so a later
      ``chdir`` does not move the store); a colon in ``PATH`` is written
      ``\\:``. Options follow as ``:NAME=VALUE``: ``synchronous=NORMAL``
      (the default) or ``synchronous=FULL``, as in
      ``sqlite:/var/lib/alive/sessions.db:synchronous=FULL``;
    - ``redis://HOST:PORT/DB``: a `RedisSessionStore` on that server and
      database (``PORT`` 6379 and ``DB`` 0 if left out); the option
      ``?prefix=P`` sets the prefix of its keys (``alive:`` by default).

    Nothing is opened yet: the store opens on its first operation (or
    `ISessionStore.open`).

    :param reactor: the reactor the store reports to.
    :raises ValueError: for a description that is none of these, with the
        reason.
    :raises StoreError: for a Redis description where txredisapi is not
        installed.
    """
    text = description.strip()
    if not text:
        raise ValueError(f"empty session store description: use {DESCRIPTIONS}")
    if text.startswith("redis:"):
        return _redisStore(reactor, text)
    kind, _, rest = text.partition(":")
    if kind == "memory":
        if rest:
            raise ValueError(f"the memory session store takes no options, got {text!r}")
        return MemorySessionStore()
    if kind != "sqlite":
        raise ValueError(f"unknown session store {text!r}: use {DESCRIPTIONS}")
    path, *options = _split(rest)
    if not path:
        raise ValueError(f"{text!r} names no file: use sqlite:PATH[:synchronous=NORMAL|FULL]")
    synchronous = "NORMAL"
    for option in options:
        name, equals, value = option.partition("=")
        if not equals:
            raise ValueError(f"sqlite option {option!r} in {text!r} is not NAME=VALUE")
        if name != "synchronous":
            raise ValueError(
                f"unknown sqlite option {name!r} in {text!r}: the option is "
                "synchronous=NORMAL|FULL"
            )
        if value.upper() not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be NORMAL or FULL, got {value!r} in {text!r}")
        synchronous = value.upper()
    return SqliteSessionStore(os.path.abspath(path), synchronous, reactor=reactor)


__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "MemorySessionStore",
    "SqliteSessionStore",
    "sessionStoreFromString",
]
