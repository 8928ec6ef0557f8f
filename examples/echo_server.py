"""
An echo server: every message a client sends comes back to it, confirmed.

Run:  python examples/echo_server.py [PORT]     (default 9000; 0 picks one)

It prints ``listening on 127.0.0.1:PORT`` when ready, logs every loss with
its reason, and on SIGINT/SIGTERM says GOODBYE(SHUTTING_DOWN) to every
client (they see CLEAN_CLOSE) before it exits.
"""

from __future__ import annotations

import sys

from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorCore

from twisted_alive import AliveServerFactory, HeartbeatProtocol, Loss


class Echo(HeartbeatProtocol):
    """Sends every message back; the ACK goes out once it is queued."""

    heartbeatInterval = 1.0

    def messageReceived(self, payload: bytes) -> None:
        self.sendMessage(payload).addErrback(lambda f: None)

    def disconnected(self, loss: Loss) -> None:
        print(f"client {loss.peer} gone: {loss}", flush=True)


async def main(reactor: IReactorCore, port: int) -> None:
    factory = AliveServerFactory.forProtocol(Echo)
    # A large backlog: after a restart, every client reconnects at once
    # (Twisted's default of 50 makes the rest wait for SYN retransmissions).
    endpoint = TCP4ServerEndpoint(reactor, port, backlog=4096, interface="127.0.0.1")
    listening = await endpoint.listen(factory)
    print(f"listening on 127.0.0.1:{listening.getHost().port}", flush=True)
    stopped: Deferred[None] = Deferred()

    async def shutdown() -> None:
        await factory.closeAll()
        await listening.stopListening()

    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(shutdown()))
    await stopped  # until the reactor stops


def run() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, port)))



if __name__ == "__main__":
    run()
