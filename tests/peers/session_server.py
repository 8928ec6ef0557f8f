"""
A session server process for ``tests/test_reliability.py``: an
L{AliveServerFactory} whose application records what it processes.

Usage::

    session_server.py HOST PORT INTERVAL [--misses M] [--received FILE]
        [--losses FILE] [--hold-on MESSAGE] [--store PATH] [--fsync]
        [--redelivered FILE]

It listens on HOST:PORT (0 for any free port; the listening socket reuses
the address, so a restarted server can take the port of a killed one, and
its backlog is large enough for a flood of connections) and prints
``READY <port>``. Then:

- every message is appended to FILE (``--received``), one per line, with an
  unbuffered write *before* ``messageReceived`` returns, so that a message
  confirmed to the client is on disk even if this process is SIGKILLed the
  next instant;
- the message equal to ``--hold-on`` is recorded, then its processing hangs
  (``messageReceived`` returns a Deferred that never fires): killed then, the
  process has acted on it without confirming it;
- every ended connection is appended to ``--losses`` as a JSON line: the
  reason, the detail, the GOODBYE code, the peer address and how long the
  connection lasted (``connectedFor``, in seconds, by this process's clock);
- on SIGUSR1 it prints a ``STATUS`` JSON line: live connections, sessions
  kept, losses by reason, and its resident memory (``VmRSS``, KiB);
- with ``--store``, its sessions are kept in a `SqliteSessionStore` at
  PATH: started again on it, the server resumes every session it had;
- with ``--fsync``, each line of ``--received`` is fsynced before
  ``messageReceived`` returns (on disk even if the machine fails);
- every message flagged as possibly processed by a previous process
  (``currentMessage.redelivered``) is appended to ``--redelivered`` too.

It runs until killed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any, cast

from twisted.internet import task
from twisted.internet.defer import Deferred

from twisted_alive._factories import AliveServerFactory
from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Loss
from twisted_alive._stores import SqliteSessionStore


def say(*words: object) -> None:
    """One line on stdout, flushed at once (the test reads it)."""
    print(*words, flush=True)


def rssKiB() -> int:
    """This process's resident set size, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


class Recording(HeartbeatProtocol):
    """Appends every message to the factory's file; records every loss."""

    factory: Server

    def messageReceived(self, payload: bytes) -> Deferred[None] | None:
        info = self.currentMessage
        if info is not None and info.redelivered and self.factory.redeliveredFd is not None:
            os.write(self.factory.redeliveredFd, payload + b"\n")
        fd = self.factory.receivedFd
        if fd is not None:
            os.write(fd, payload + b"\n")
            if self.factory.fsync:
                os.fsync(fd)
        if payload == self.factory.holdOn:
            return Deferred()
        return None

    def disconnected(self, loss: Loss) -> None:
        self.factory.recordLoss(loss)


class Server(AliveServerFactory):
    """The factory: settings from the command line, files for the records."""

    protocol = Recording

    def __init__(self, options: argparse.Namespace, reactor: Any) -> None:
        store = SqliteSessionStore(options.store, reactor=reactor) if options.store else None
        super().__init__(store)
        self.fsync = options.fsync
        self.receivedFd: int | None = None
        self.lossesFd: int | None = None
        self.redeliveredFd: int | None = None
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if options.received:
            self.receivedFd = os.open(options.received, flags, 0o644)
        if options.losses:
            self.lossesFd = os.open(options.losses, flags, 0o644)
        if options.redelivered:
            self.redeliveredFd = os.open(options.redelivered, flags, 0o644)
        self.holdOn = options.hold_on.encode() if options.hold_on else None
        self.protocol = cast(
            "type[Recording]",
            type(
                "Recording",
                (Recording,),
                {"heartbeatInterval": options.interval, "heartbeatMisses": options.misses},
            ),
        )

    def recordLoss(self, loss: Loss) -> None:
        """Append one JSON line for a lost connection."""
        if self.lossesFd is None:
            return
        line = {
            "reason": loss.reason.name,
            "detail": loss.detail,
            "goodbye": loss.goodbye.name if loss.goodbye is not None else None,
            "peer": loss.peer,
            "connectedFor": loss.connectedFor,
        }
        os.write(self.lossesFd, json.dumps(line).encode() + b"\n")

    def status(self) -> None:
        """Print a STATUS line."""
        say(
            "STATUS",
            json.dumps(
                {
                    "connections": len(self.connections),
                    "sessions": len(self.sessions),
                    "losses": {reason.name: count for reason, count in self.losses.items()},
                    "rssKiB": rssKiB(),
                }
            ),
        )


def main(reactor: Any, *argv: str) -> Deferred[None]:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("interval", type=float)
    parser.add_argument("--misses", type=int, default=3)
    parser.add_argument("--received", default="")
    parser.add_argument("--losses", default="")
    parser.add_argument("--hold-on", default="")
    parser.add_argument("--store", default="")
    parser.add_argument("--fsync", action="store_true")
    parser.add_argument("--redelivered", default="")
    options = parser.parse_args(argv)
    factory = Server(options, reactor)
    port = reactor.listenTCP(options.port, factory, backlog=1024, interface=options.host)
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(factory.status))
    say("READY", port.getHost().port)
    return Deferred()  # until killed


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
