"""
A client session kept in a session store (`ISessionStore`): a `Journal`
stores each message before it is sent, drops what the server confirmed,
follows the session's token and epoch, and loads the session again in a
new process.

The rules, in the order a message meets them:

1. `Journal.submit` queues the message in the session's `Outbox`, which
   numbers it at once (``Outbox.storedUpTo`` is set), and appends it to the
   store under the token of the stored record.
2. The message is sent only once the store committed it **under the
   session's own token** (the outbox sends nothing numbered above
   ``storedUpTo``): a new session's messages are stored under the all-zero
   token until the server assigns one; the record is then written again
   under that token (`Journal.opened`) before anything is sent.
3. An ACK drops what it covers from the store (`Journal.confirmed`); the
   `Receipt` fires with the ACK, never because of a store write.
4. A session the server no longer knows is stored again as a new record
   (the messages never sent, numbered again from 1) with the next epoch
   (`Journal.reset`).

A store that is closed (`StoreClosed`: the process or the factory is
stopping) ends nothing: the journal stops writing (`Journal.stopped`) and
tells its factory once, which stops using the session and leaves it in
the store as it was last committed, for the next process.

Inbound, the binding keeps the processed position in the same store
(`Binding.keepIn`): it is committed before the ACK that covers it, and
the next message reaches the application only once the previous one's
position is committed.

A server's sessions (`AliveServerFactory` with a ``store``) each have a
journal too (`Journal.attach`): the server assigns the token, so a
session is in the store under it from the start (created before the HELLO
that tells the client the token), its messages follow the same rules 1
and 3, `loadSessions` gives them to the next process, and `Journal.dropped`
deletes one that ended.

A client's store holds one client session at a time. A record is always written
before the one it replaces is deleted, so a crash between the two leaves
both: `Journal.load` keeps the one of the highest epoch (at equal epochs,
the one with a token: the server had assigned it) and deletes the others.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_alive._binding import Binding
from twisted_alive._interfaces import ISessionStore, ISharedSessionStore
from twisted_alive.core.connection import Settings
from twisted_alive.core.delivery import Session
from twisted_alive.core.frames import NO_SESSION
from twisted_alive.core.outcomes import QueueFull, Receipt
from twisted_alive.core.stored import (
    StoreClosed,
    StoredSession,
    StoreError,
    StoreLimits,
    recordOf,
    sessionOf,
)

log = Logger(namespace="twisted_alive")

Recovered = list[tuple[bytes, "Deferred[Receipt]"]]
"""What a previous process submitted and the server has not confirmed:
``(payload, Deferred)`` per message, in order."""

ServerRecovered = list[tuple[bytes, bytes, "Deferred[Receipt]"]]
"""(Server.) What previous processes submitted in the sessions of a store
and their clients have not confirmed: ``(token, payload, Deferred)`` per
message, in order within each session."""


def outboxLimits(settings: Settings) -> StoreLimits:
    """What a store must keep per session for an outbox with the limits of
    ``settings`` (`StoreLimits.forOutbox`)."""
    return StoreLimits.forOutbox(
        settings.window, settings.maxQueue, settings.maxQueueBytes, settings.maxPayload
    )


def checkLimits(store: ISessionStore, limits: StoreLimits) -> None:
    """
    Whether ``store`` keeps at least ``limits`` per session (what the
    protocol's window and queue may hold): a store that keeps less would
    refuse a message after the outbox took it.

    :raises ValueError: if not.
    """
    kept = store.limits
    if kept.maxMessages < limits.maxMessages or kept.maxBytes < limits.maxBytes:
        raise ValueError(
            f"the store keeps {kept.maxMessages} messages ({kept.maxBytes} bytes) per "
            f"session, less than the protocol's window and queue may hold "
            f"({limits.maxMessages} messages, {limits.maxBytes} bytes): use "
            "StoreLimits.forOutbox(...) with the protocol's limits"
        )


_owners: weakref.WeakKeyDictionary[Any, weakref.ref[Any]] = weakref.WeakKeyDictionary()
"""The factory that keeps its sessions in each store (`claimStore`)."""


def claimStore(store: ISessionStore, owner: object) -> str | None:
    """
    Make ``owner`` (a factory) the one factory that keeps its sessions in
    ``store``, unless another (still alive) is already: two factories on
    one store would each load, expire and delete the other's sessions.

    :returns: ``None``, or the text of the refusal.
    """
    held = _owners.get(store)
    holder = held() if held is not None else None
    if holder is not None and holder is not owner:
        return (
            f"{store!r} keeps the sessions of {holder!r} already: each factory needs a "
            "session store of its own (one factory may listen on several ports)"
        )
    _owners[store] = weakref.ref(owner)
    return None


def releaseStore(store: ISessionStore, owner: object) -> None:
    """``owner`` no longer keeps its sessions in ``store`` (it stopped)."""
    held = _owners.get(store)
    if held is not None and held() is owner:
        del _owners[store]


def checkClientRecords(store: ISessionStore, records: Sequence[StoredSession]) -> None:
    """
    (Client.) Refuse a store that holds what a client never leaves in its
    store: more than two sessions, or two of which none is without a token
    (a crash between writing a record and deleting the one it replaces
    leaves two, one of them without a token). Such a store is a server's,
    or shared: carrying on would delete sessions that are not this
    client's.

    :raises StoreError: saying so; nothing is deleted.
    """
    if len(records) > 2 or (
        len(records) == 2 and all(record.token != NO_SESSION for record in records)
    ):
        raise StoreError(
            f"{store!r} holds {len(records)} sessions, as no client's store does (it is "
            "a server's, or shared): a client needs a session store of its own"
        )


def _best(records: Sequence[StoredSession]) -> StoredSession:
    """The record a restarted client carries on with: the highest epoch;
    at equal epochs, one with a token (see the module's docstring)."""
    return max(records, key=lambda record: (record.epoch, record.token != NO_SESSION))


class Journal:
    """
    The stored side of a client session: what `AliveClientFactory` does
    with its ``store``.

    :param store: the session store (it holds this client's session only).
    :param binding: the binding of the session (set by `load`).
    :param failed: called with the failure of a store operation that the
        session cannot go on without (the factory ends the session); for a
        store that is closed (`StoreClosed`), once, and the factory stops
        using the session instead.
    :param release: called once more messages may be sent (the factory
        pumps its connection).
    :ivar epoch: the epoch of the stored session: it changes whenever the
        session is replaced by a new one.
    :ivar stopped: whether the store was found closed (`StoreClosed`):
        from then on the journal writes nothing (the session stays in the
        store as it was last committed).
    """

    def __init__(
        self,
        store: ISessionStore,
        failed: Callable[[Failure], None],
        release: Callable[[], None],
    ) -> None:
        self.store = store
        self.binding: Binding | None = None
        self.epoch = 0
        self._token = NO_SESSION
        self._generation = 0
        self._confirmed = 0
        self._ended = False
        self.stopped = False
        self._failed = failed
        self._release = release
        self._mail: dict[Any, int] = {}
        """Handles of the messages moved in from the mailbox, not yet
        confirmed or rejected: their sequence numbers."""

    # -- loading -------------------------------------------------------------

    async def load(
        self, newSession: Callable[[], Session], limits: StoreLimits
    ) -> tuple[Binding, Recovered]:
        """
        Load the client session from the store, or store a new one (epoch
        1). Each stored message gets a Deferred for its outcome.

        :param newSession: makes a `Session` with the protocol's limits.
        :param limits: the store limits the outbox's limits need; a store
            that keeps less is refused (its refusals would come after the
            outbox took a message).
        :raises ValueError: if the store's limits are below ``limits``.
        :raises StoreError: if the store holds what no client leaves (see
            `checkClientRecords`): nothing is deleted then.
        """
        store = self.store
        checkLimits(store, limits)
        records = []
        for token in await store.listSessions():
            record = await store.loadSession(token)
            if record is not None:
                records.append(record)
        checkClientRecords(store, records)
        template = newSession()
        outbox = template.outbox
        if not records:
            record = StoredSession(NO_SESSION, epoch=1)
            await store.createSession(record)
        else:
            record = _best(records)
            for other in records:
                if other is not record:
                    await store.deleteSession(other.token)
        session = sessionOf(record, outbox.window, outbox.maxQueue, outbox.maxQueueBytes)
        outbox = session.outbox
        if record.token == NO_SESSION:
            # Never sent: the server never assigned this session a token.
            outbox.nextSeq = record.confirmedUpTo + 1
            outbox.storedUpTo = 0
        else:
            outbox.storedUpTo = record.nextSeq - 1
        self.epoch = record.epoch
        self._token = record.token
        self._confirmed = record.confirmedUpTo
        binding = self.binding = Binding(session)
        binding.journal = self
        binding.keepIn(store, self._broken)
        recovered: Recovered = []
        for entry in outbox.queue:
            d: Deferred[Receipt] = Deferred()
            entry.handle = binding.hold(d)
            recovered.append((entry.payload, d))
        return binding, recovered

    @classmethod
    def attach(
        cls,
        store: ISessionStore,
        binding: Binding,
        epoch: int,
        failed: Callable[[Failure], None],
        release: Callable[[], None],
    ) -> Journal:
        """
        The journal of a session that has its token from the start and is
        in the store under it (or is being created there): a server's
        session, new or loaded. From now on its messages are numbered when
        submitted, after those the store holds, and its processed position
        is kept in the store (`Binding.keepIn`).

        :param binding: the binding of the session; its ``journal`` is set.
        :param epoch: the session's epoch, as stored.
        """
        journal = cls(store, failed, release)
        session = binding.session
        outbox = session.outbox
        if outbox.storedUpTo is None:
            outbox.storedUpTo = outbox.nextNumber() - 1
        journal.binding = binding
        journal.epoch = epoch
        journal._token = session.token
        journal._confirmed = outbox.ackedUpTo
        binding.journal = journal
        binding.keepIn(store, journal._broken)
        return journal

    # -- writing -------------------------------------------------------------

    def submit(self, payloads: Sequence[bytes], together: bool) -> Deferred[Receipt]:
        """
        Queue ``payloads`` in the session (numbered at once) and append them
        to the store; they are sent once the append is committed.

        :param together: one outcome for all (``sendMessages``), else one
            message alone (``sendMessage``).
        :returns: the Deferred of their outcome; failed already with
            `QueueFull` if the outbox or the store refused (then nothing was
            queued or stored).
        """
        binding = self.binding
        assert binding is not None
        outbox = binding.session.outbox
        first = outbox.nextNumber()
        if together:
            d = binding.submit(lambda handle: outbox.submitMany(payloads, handle, 0, 0.0, 0))
        else:
            d = binding.submit(partialSubmit(outbox, payloads[0]))
        if d.called:
            return d  # QueueFull: nothing was queued
        messages = list(enumerate(payloads, first))
        stored = self.store.appendMessages(self._token, messages)
        if stored.called and isinstance(stored.result, Failure):
            # Refused at once (a store whose queue is full): take the
            # messages back, as if the outbox had refused them.
            refused: Failure = stored.result
            stored.addErrback(lambda _: None)
            taken = outbox.withdraw(len(payloads))
            binding.waiting.pop(taken[-1].handle, None)
            return defer.fail(refused)
        self._track(stored, messages[-1][0])
        return d

    def submitMail(self, mail: Sequence[tuple[str, bytes]]) -> Deferred[None]:
        """
        (Server, shared store.) Move the first messages of the session's
        mailbox, ``(message id, payload)`` as `ISharedSessionStore.readMail`
        gave them, into the session: numbered and queued like messages of
        `submit`, appended to the store in the same atomic step that takes
        them out of the mailbox, and sent once that is committed. Their
        senders, in any process, learn their outcome from the store; no
        Deferred here waits for it.

        :returns: a Deferred that fires once the store answered (with
            ``None`` whatever it answered: a refusal went to the factory,
            as for every write); failed at once with `QueueFull` if the
            outbox or the store refused (then nothing moved).
        """
        binding = self.binding
        assert binding is not None
        outbox = binding.session.outbox
        first = outbox.nextNumber()
        payloads = [payload for _, payload in mail]
        taken = 0
        for seq, payload in enumerate(payloads, first):
            # One handle each: each has a sender of its own, told its own
            # outcome (a REJECT of one is not the others'); nobody here
            # waits for the Deferreds.
            d: Deferred[Receipt] = Deferred()
            d.addErrback(lambda _: None)
            handle = binding.hold(d)
            try:
                outbox.submit(payload, handle)
            except QueueFull:
                del binding.waiting[handle]
                break
            self._mail[handle] = seq
            taken += 1
        if not taken:
            return defer.fail(QueueFull("the session's queue is full"))
        payloads = payloads[:taken]
        mail = mail[:taken]
        messages = list(enumerate(payloads, first))
        store = cast(ISharedSessionStore, self.store)
        stored = store.appendMessages(self._token, messages, [messageId for messageId, _ in mail])
        if stored.called and isinstance(stored.result, Failure):
            refused: Failure = stored.result
            stored.addErrback(lambda _: None)
            for entry in outbox.withdraw(len(payloads)):
                binding.waiting.pop(entry.handle, None)
                self._mail.pop(entry.handle, None)
            return defer.fail(refused)
        self._track(stored, messages[-1][0])
        return stored

    def rejected(self, handle: Any, text: str) -> None:
        """The client's application failed on the message of ``handle``:
        if it came from a session's mailbox, its sender is told so
        (`ISharedSessionStore.rejectMessage`), before the confirmation
        that covers it."""
        seq = self._mail.pop(handle, None)
        if seq is not None and not self.stopped:
            store = cast(ISharedSessionStore, self.store)
            store.rejectMessage(self._token, seq, text).addErrback(self._broken)

    def _track(self, stored: Deferred[None], last: int) -> None:
        """Once ``stored`` fires, messages up to ``last`` may be sent, if
        the record they were stored in is still the session's and has its
        token."""
        generation = self._generation
        token = self._token

        def committed(_: object) -> None:
            if generation != self._generation or token == NO_SESSION:
                return
            outbox = self._session().outbox
            if outbox.storedUpTo is not None and last > outbox.storedUpTo:
                outbox.storedUpTo = last
                self._release()

        stored.addCallbacks(committed, self._broken)

    def _session(self) -> Session:
        assert self.binding is not None
        return self.binding.session

    def _broken(self, failure: Failure) -> None:
        """A store operation failed: the factory ends the session (and
        logs why); a store that is closed is reported once, and the
        journal writes nothing more."""
        if isinstance(failure.value, StoreClosed):
            if self.stopped:
                return
            self.stopped = True
        self._failed(failure)

    def confirmed(self) -> None:
        """The server confirmed messages: drop them from the store."""
        session = self._session()
        upTo = session.outbox.ackedUpTo
        if self.stopped:
            return
        mail = self._mail
        while mail:
            handle, seq = next(iter(mail.items()))
            if seq > upTo:
                break
            del mail[handle]
        if upTo > self._confirmed and session.token == self._token:
            self._confirmed = upTo
            self.store.confirmMessages(self._token, upTo).addErrback(self._broken)

    def opened(self) -> None:
        """
        A connection completed its HELLO exchange. If the server assigned
        the session its token just now, the record is written again under
        it (then the all-zero one is deleted); messages go out once that
        is committed.
        """
        session = self._session()
        if self._token != NO_SESSION or session.token == NO_SESSION:
            return
        self._replace(session.token, "renamed")

    def reset(self) -> None:
        """The session was replaced by a new one (`Session.restart`): store
        the new one, the next epoch, with the messages carried over."""
        self.epoch += 1
        self._confirmed = 0
        self._replace(NO_SESSION, "reset")

    def ended(self) -> None:
        """The session ended (``stopTrying``, ``close``, ``GO_AWAY``...): its
        messages failed, so the store keeps none of them; a new, empty
        session (the next epoch) replaces it, for the next process.
        Nothing once the store is closed (`stopped`): the session stays
        there for the next process."""
        if self._ended or self.stopped:
            return
        self._ended = True
        self.epoch += 1
        self._confirmed = 0
        self._generation += 1
        old, self._token = self._token, NO_SESSION
        store = self.store
        if old == NO_SESSION:
            store.deleteSession(old).addErrback(self._broken)
            store.createSession(StoredSession(NO_SESSION, self.epoch)).addErrback(self._broken)
        else:
            store.createSession(StoredSession(NO_SESSION, self.epoch)).addErrback(self._broken)
            store.deleteSession(old).addErrback(self._broken)

    def dropped(self) -> None:
        """(Server.) The session is over (expired, evicted, or closed by
        its client): delete it from the store; nothing more is stored for
        it."""
        if self._ended or self.stopped:
            return
        self._ended = True
        self._generation += 1
        self.store.deleteSession(self._token).addErrback(self._broken)

    def _replace(self, token: bytes, why: str) -> None:
        if self.stopped:
            return
        session = self._session()
        old = self._token
        self._generation += 1
        generation = self._generation
        self._token = token
        record = recordOf(session, self.epoch)
        store = self.store
        if old == token:
            # A session that never had a token, replaced by another: the
            # same token, so the old record goes first.
            store.deleteSession(old).addErrback(self._broken)
            created = store.createSession(record)
        else:
            # The new record first: a crash between the two leaves both, and
            # `load` knows which to keep.
            created = store.createSession(record)
            store.deleteSession(old).addErrback(self._broken)
        log.debug(
            "alive.store: session {token} stored ({why}, epoch {epoch})",
            token=token.hex()[:8],
            why=why,
            epoch=self.epoch,
        )

        def committed(_: object) -> None:
            if generation != self._generation or token == NO_SESSION:
                return
            outbox = self._session().outbox
            if outbox.storedUpTo is not None and record.nextSeq - 1 > outbox.storedUpTo:
                outbox.storedUpTo = record.nextSeq - 1
            self._release()

        created.addCallbacks(committed, self._broken)

    def flush(self) -> Deferred[None]:
        """Fires once everything submitted so far is durable."""
        return self.store.flush()


async def loadSessions(
    store: ISessionStore, limits: StoreLimits, now: float, ttl: float
) -> tuple[list[StoredSession], list[bytes]]:
    """
    (Server.) Every session a store holds, least recently seen first,
    after the store forgot those last seen more than ``ttl`` seconds before
    ``now``.

    :param limits: what the protocol's outbox may hold (see `checkLimits`).
    :returns: the records, and the tokens of the sessions that expired.
    :raises ValueError: if the store keeps less than ``limits``.
    :raises StoreError: if the store cannot be read (`CorruptStore` for a
        file that is not a session store), or holds a client's session:
        nothing is deleted then.
    """
    checkLimits(store, limits)
    await store.open()
    records = []
    for token in await store.listSessions():
        if token == NO_SESSION:
            raise StoreError(
                f"{store!r} holds a client's session (one without a token): a server "
                "needs a session store of its own"
            )
    expired = await store.expireSessions(now, ttl)
    for token in await store.listSessions():
        record = await store.loadSession(token)
        if record is not None:
            records.append(record)
    return records, expired


def partialSubmit(outbox: Any, payload: bytes) -> Callable[[int], object]:
    """``outbox.submit(payload, handle)`` for `Binding.submit`."""
    return lambda handle: outbox.submit(payload, handle)
