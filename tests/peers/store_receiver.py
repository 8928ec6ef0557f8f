"""
A receiving client process whose session is kept in a `SqliteSessionStore`:
the receiver kill tests of ``tests/test_store_receiver_real.py`` SIGKILL it
at random points and start it again on the same file.

Usage::

    store_receiver.py PATH PORT [--transactional] [--out FILE] [--work SECONDS]

It loads the session from PATH (``factory.recovered()``), connects to
127.0.0.1:PORT and prints ``READY <token> <epoch>`` once its session is
stored under the token the server gave it. Then it processes what the
server sends, and runs until killed:

- with ``messageReceived`` (the default), each message is appended to FILE
  as ``<payload> <redelivered>`` (1 if `currentMessage` flags it), with an
  unbuffered write and ``fsync`` before the work goes on; the work then
  takes ``--work`` seconds (a Deferred), after which the message counts as
  processed: a kill in between leaves it recorded without its position;
- with ``--transactional``, ``messageReceivedInTransaction`` inserts each
  payload into the table ``app_received`` of the store's own file, in the
  store's transaction, then works ``--work`` seconds in that thread: a kill
  before the commit loses both the row and the position.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from typing import Any

from twisted.internet import defer, task

from twisted_alive import AliveClientFactory, HeartbeatProtocol, SqliteSessionStore


def say(*words: object) -> None:
    """One line on stdout, flushed at once (the test reads it)."""
    print(*words, flush=True)


class Recording(HeartbeatProtocol):
    """Records each message, with its redelivered flag, in a file."""

    factory: Receiver

    def messageReceived(self, payload: bytes) -> defer.Deferred[None] | None:
        info = self.currentMessage
        assert info is not None
        fd = self.factory.fd
        os.write(fd, b"%s %d\n" % (payload, info.redelivered))
        os.fsync(fd)
        if self.factory.work:
            return task.deferLater(self.factory.reactor, self.factory.work, lambda: None)
        return None


class InTransaction(HeartbeatProtocol):
    """Inserts each message into a table of the store's file, in the
    store's transaction."""

    factory: Receiver

    def messageReceivedInTransaction(self, payload: bytes, cursor: sqlite3.Cursor) -> None:
        cursor.execute("INSERT INTO app_received (payload) VALUES (?)", (payload,))
        if self.factory.work:
            time.sleep(self.factory.work)


class Receiver(AliveClientFactory):
    """Reconnects at once: the server stays up."""

    initialDelay = 0.01
    maxDelay = 0.1
    quickDelay = 0.01
    quickSpread = 0.0

    def __init__(self, store: SqliteSessionStore, options: argparse.Namespace, reactor: Any):
        super().__init__(store)
        self.reactor = reactor
        self.work = options.work
        self.protocol = InTransaction if options.transactional else Recording
        self.fd = -1
        if options.out:
            self.fd = os.open(options.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


async def main(reactor: Any, *argv: str) -> None:
    """Load the session, connect, say READY once stored, run until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("port", type=int)
    parser.add_argument("--transactional", action="store_true")
    parser.add_argument("--out", default="")
    parser.add_argument("--work", type=float, default=0.002)
    options = parser.parse_args(argv)
    store = SqliteSessionStore(options.path, reactor=reactor)
    if options.transactional:
        # The application's table, in the store's file (which the store
        # locks for itself).
        await store.runInTransaction(
            lambda cursor: cursor.execute(
                "CREATE TABLE IF NOT EXISTS app_received "
                "(n INTEGER PRIMARY KEY AUTOINCREMENT, payload BLOB NOT NULL)"
            )
        )
    factory = Receiver(store, options, reactor)
    await factory.recovered()
    reactor.connectTCP("127.0.0.1", options.port, factory)
    await factory.whenConnected()
    await factory.whenStored()
    say("READY", factory.session.token.hex(), factory.epoch)
    await defer.Deferred()  # until killed


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
