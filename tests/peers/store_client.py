"""
A client process whose session is kept in a `SqliteSessionStore`: the
kill tests of ``tests/test_store_client.py`` SIGKILL it at random points and
start it again on the same file.

Usage::

    store_client.py PATH PORT TOTAL [--outstanding K] [--rate R]

It loads the session from PATH (``factory.recovered()``), prints
``RECOVERED <count> <lastSubmitted> <epoch>``, connects to 127.0.0.1:PORT
and sends the messages ``b"0"``, ``b"1"``... up to ``TOTAL - 1``, at most K
(200) unconfirmed at a time and R (1,000) a second, so that a kill at a
random time meets it in the middle. Message ``n`` is the session's sequence number
``n + 1``: after a restart it carries on from the stored
``lastSubmitted``, so nothing is sent twice and nothing skipped. It prints
``CONFIRMED <n>`` every 100 receipts, and ``DONE <count>`` once every
Deferred it holds (the recovered ones and its own) fired with a `Receipt`
of the right sequence number; then it exits, keeping its session. Anything
else is an error, a reset of the session (``sessionReset``: the server did
not resume it) included: it prints ``ERROR ...`` and exits with status 1.
On exit it prints ``RESUMED <count>``, the times the session was resumed,
before ``DONE``.

Stopped in order (SIGTERM: its reactor stops, and closes the store first),
it prints ``STOPPED <kept> <errors>``: how many Deferreds failed saying
that the store keeps their message for the next process, and how many
failed otherwise (the first of those follows on an ``ERROR`` line); a
message sent once the store is closed fails at once with `StoreClosed`
(neither stored nor sent: the next process numbers its own from the
store), which is neither.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer, task

from twisted_alive import (
    AliveClientFactory,
    HeartbeatProtocol,
    Receipt,
    SqliteSessionStore,
    StoreClosed,
)

STORE_CLOSED = (
    "the session store closed (the message stays in the session store, for the next process)"
)


def say(*words: object) -> None:
    """One line on stdout, flushed at once (the test reads it)."""
    print(*words, flush=True)


class Client(AliveClientFactory):
    """Reconnects at once: the server stays up."""

    protocol = HeartbeatProtocol
    initialDelay = 0.01
    maxDelay = 0.1
    quickDelay = 0.01
    quickSpread = 0.0

    def __init__(self, store: SqliteSessionStore) -> None:
        super().__init__(store)
        self.resets: list[str] = []
        self.resumed = 0

    def sessionResumed(self) -> None:
        self.resumed += 1

    def sessionReset(self, reason: str, maybeProcessed: int) -> None:
        self.resets.append(f"{reason} ({maybeProcessed} maybe processed)")


async def main(reactor: Any, *argv: str) -> None:
    """Send what is left, then exit."""
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("port", type=int)
    parser.add_argument("total", type=int)
    parser.add_argument("--outstanding", type=int, default=200)
    parser.add_argument("--rate", type=int, default=1000)
    options = parser.parse_args(argv)
    store = SqliteSessionStore(options.path, reactor=reactor)
    factory = Client(store=store)
    recovered = await factory.recovered()
    last = factory.lastSubmitted
    say("RECOVERED", len(recovered), last, factory.epoch)
    errors: list[str] = []
    done: defer.Deferred[None] = defer.Deferred()
    state = {"next": last, "confirmed": 0, "waiting": 0, "allowed": last}

    kept = [0]

    def failed(why: str) -> None:
        if why.split(": ", 1)[-1].startswith(STORE_CLOSED):
            kept[0] += 1  # (stopping in order: the next process sends it)
            return
        errors.append(why)
        if not done.called:
            done.callback(None)

    def check(receipt: Receipt, number: int) -> None:
        if receipt.seq != number + 1:
            failed(f"message {number} confirmed as seq {receipt.seq}")
        state["waiting"] -= 1
        state["confirmed"] += 1
        if state["confirmed"] % 100 == 0:
            say("CONFIRMED", number)
        more()

    def tick() -> None:
        state["allowed"] += max(1, options.rate // 100)
        more()

    def watch(d: defer.Deferred[Receipt], number: int) -> None:
        state["waiting"] += 1
        def refused(f: Any) -> None:
            if not isinstance(f.value, StoreClosed):
                failed(f"message {number}: {f.value}")

        d.addCallbacks(check, refused, (number,))

    if factory.epoch != 1:
        failed(f"the session was reset (epoch {factory.epoch})")
    for expected, (payload, d) in enumerate(recovered, last - len(recovered)):
        if payload != b"%d" % expected:
            failed(f"recovered {payload!r}, expected message {expected}")
        watch(d, expected)

    def more() -> None:
        while (
            state["next"] < min(options.total, state["allowed"])
            and state["waiting"] < options.outstanding
            and not errors
        ):
            number = state["next"]
            state["next"] = number + 1
            watch(factory.sendMessage(b"%d" % number), number)
        if not state["waiting"] and state["next"] >= options.total and not done.called:
            done.callback(None)

    def stopped() -> None:
        if not done.called:
            say("STOPPED", kept[0], len(errors))
            if errors:
                say("ERROR", errors[0])

    reactor.addSystemEventTrigger("after", "shutdown", stopped)
    reactor.connectTCP("127.0.0.1", options.port, factory)
    ticks = task.LoopingCall(tick)
    ticks.clock = reactor
    ticks.start(0.01)
    await done
    ticks.stop()
    errors.extend(f"the session was reset: {reset}" for reset in factory.resets)
    if errors:
        say("ERROR", "; ".join(errors[:5]))
        sys.exit(1)
    # Exit keeping the session (no close(), which would end it): a process
    # started again carries on with it.
    await store.close()
    say("RESUMED", factory.resumed)
    say("DONE", state["confirmed"])


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
