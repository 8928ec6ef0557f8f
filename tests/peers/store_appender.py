"""
A process that writes to a `SqliteSessionStore` until it is killed, saying
what the store made durable: the crash tests kill it with SIGKILL and check
that everything it reported is in the file.

Usage::

    store_appender.py PATH NORMAL|FULL

It loads session ``0x11 * 16`` (creating it if the file has none), then
appends messages numbered from the session's ``nextSeq`` on (payload
``b"message N"``), 64 waiting at a time, and confirms every message 100
behind the last one stored. It prints ``STORED N`` once message N's append
fired (it is durable) and ``CONFIRMED N`` once a confirmation up to N
fired.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import defer, task

from twisted_alive import SqliteSessionStore, StoredSession

TOKEN = bytes([0x11] * 16)
WINDOW = 64


def say(line: str) -> None:
    """Print ``line`` at once."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(reactor: Any, path: str, synchronous: str) -> None:
    """Append and confirm until killed."""
    store = SqliteSessionStore(path, synchronous, reactor=reactor)
    record = await store.loadSession(TOKEN)
    if record is None:
        record = StoredSession(TOKEN)
        await store.createSession(record)
    say(f"READY {record.nextSeq}")
    state = {"next": record.nextSeq}
    never: defer.Deferred[None] = defer.Deferred()

    def stored(_: object, seq: int) -> None:
        say(f"STORED {seq}")
        if seq > 100:
            store.confirmMessages(TOKEN, seq - 100).addCallback(
                lambda _: say(f"CONFIRMED {seq - 100}")
            )
        one()

    def one() -> None:
        seq = state["next"]
        state["next"] = seq + 1
        store.appendMessages(TOKEN, [(seq, b"message %d" % seq)]).addCallback(stored, seq)

    for _ in range(WINDOW):
        one()
    await never


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1], sys.argv[2])))
