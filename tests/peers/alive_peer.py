# mypy: disable-error-code="no-untyped-call"
"""
A twisted_alive peer process for ``tests/test_loss_real.py``.

Usage::

    alive_peer.py client|server HOST PORT INTERVAL BEHAVIOUR
        [--misses M] [--count N] [--every S] [--tag T]

As a client it connects to HOST:PORT; as a server it listens on HOST:PORT
(0 for any free port) and prints ``READY <port>``. It serves one connection
with a ``HeartbeatProtocol`` whose heartbeat interval is INTERVAL seconds
(and ``heartbeatMisses`` M, default 3), prints ``OPEN`` when the HELLO
exchange completes and ``LOST <REASON> <detail>`` when the connection ends,
then exits (status 0).

Behaviours:

- ``echo``: send every message received back to the peer.
- ``goodbye-after-first``: after the first message, close in order
  (GOODBYE SHUTTING_DOWN).
- ``rst-after-first``: after the first message has been acknowledged, abort
  with an RST (``SO_LINGER`` 0).
- ``send``: send ``--count`` messages ``<tag>:<i>``, one every ``--every``
  seconds; print ``CONFIRMED <n>`` once every one has a receipt, then close.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Loss
from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.core.outcomes import Receipt

BEHAVIOURS = ("echo", "goodbye-after-first", "rst-after-first", "send")


def say(*words: object) -> None:
    """One line on stdout, flushed at once (the test reads it)."""
    print(*words, flush=True)


class ScriptedPeer(HeartbeatProtocol):
    """The peer's protocol: one of ``BEHAVIOURS``."""

    def __init__(self, options: argparse.Namespace, reactor: Any, done: Deferred[Loss]) -> None:
        self.options = options
        self.reactor = reactor
        self.clock = reactor
        self.heartbeatInterval = options.interval
        self.heartbeatMisses = options.misses
        self.done = done
        self.count = 0

    def connectionOpened(self, resumed: bool) -> None:
        say("OPEN")
        if self.options.behaviour == "send":
            Deferred.fromCoroutine(self._sendAll())

    async def _sendAll(self) -> None:
        options = self.options
        receipts: list[Deferred[Receipt]] = []
        for i in range(options.count):
            await deferLater(self.reactor, options.every, lambda: None)
            receipts.append(self.sendMessage(f"{options.tag}:{i}".encode()))
        results = await DeferredList(receipts, consumeErrors=True)
        say("CONFIRMED", sum(1 for ok, _ in results if ok))
        self.close()

    def messageReceived(self, payload: bytes) -> None:
        self.count += 1
        behaviour = self.options.behaviour
        if behaviour == "echo":
            self.sendMessage(payload).addErrback(lambda f: None)
        elif behaviour == "goodbye-after-first" and self.count == 1:
            self.close(GoodbyeCode.SHUTTING_DOWN, "done after the first message")
        elif behaviour == "rst-after-first" and self.count == 1:
            # The ACK is written when this returns; abort once it is out.
            self.reactor.callLater(0.1, self._reset)

    def _reset(self) -> None:
        handle = self.transport.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.abort("reset on purpose")

    def disconnected(self, loss: Loss) -> None:
        say("LOST", loss.reason.name, loss.detail)
        self.done.callback(loss)


def main(reactor: Any, *argv: str) -> Deferred[None]:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("client", "server"))
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("interval", type=float)
    parser.add_argument("behaviour", choices=BEHAVIOURS)
    parser.add_argument("--misses", type=int, default=3)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--every", type=float, default=0.0)
    parser.add_argument("--tag", default="peer")
    options = parser.parse_args(argv)
    done: Deferred[Loss] = Deferred()

    def build() -> ScriptedPeer:
        return ScriptedPeer(options, reactor, done)

    def finish(result: object) -> None:
        if isinstance(result, Failure):
            say("FAILED", result.getErrorMessage())

    if options.role == "client":
        endpoint = TCP4ClientEndpoint(reactor, options.host, options.port, timeout=5)
        d = connectProtocol(endpoint, build())
        d.addErrback(lambda f: done.errback(f) if not done.called else None)
        return done.addBoth(finish)

    factory = Factory.forProtocol(build)
    server = TCP4ServerEndpoint(reactor, options.port, interface=options.host)
    listening: Deferred[Any] = server.listen(factory)

    def ready(port: Any) -> Deferred[None]:
        say("READY", port.getHost().port)
        return done.addBoth(finish)

    return listening.addCallback(ready)


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
