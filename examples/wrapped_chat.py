"""
An unchanged ``LineReceiver`` chat, wrapped on both ends.

Run:  python examples/wrapped_chat.py

Starts, on 127.0.0.1, a chat server (a plain ``LineReceiver``: a line from
one member goes to every other member) and two chat clients (plain
``LineReceiver`` too). Nothing in their code knows about twisted_alive:
``AliveWrappingFactory`` wraps their factories, so their lines travel in
acknowledged DATA frames with heartbeats around them. The two clients
exchange lines; then alice's connection is aborted and bob closes in order.
The server's ``connectionLost`` receives, as always, a ``ConnectionLost`` or
a ``ConnectionDone``, and prints the classified reason it carries in
``.loss``: RESET for alice, CLEAN_CLOSE for bob. Exits 0 if all of that
happened, 1 otherwise.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twisted_alive import AliveWrappingFactory, HeartbeatMixin, Loss, Reason

HOST = "127.0.0.1"
INTERVAL = 0.5
"""Seconds of outbound silence before a heartbeat, on both ends."""


# -- the application: plain Twisted, unchanged ----------------------------------------------


class ChatMember(LineReceiver):
    """The server side of one member: the first line is the member's name,
    every later line goes to all other members."""

    factory: ChatRoom
    name = b"?"

    def lineReceived(self, line: bytes) -> None:
        if self.name == b"?":
            self.name = line
            self.factory.members.append(self)
            return
        for member in self.factory.members:
            if member is not self:
                member.sendLine(self.name + b": " + line)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self in self.factory.members:
            self.factory.members.remove(self)
        # Old code sees what it always saw; new code can ask why.
        kind = "ConnectionDone" if isinstance(reason.value, ConnectionDone) else "ConnectionLost"
        loss: Loss | None = getattr(reason.value, "loss", None)
        if loss is not None:
            print(f"server: {self.name.decode()} left ({kind}): {loss}", flush=True)
            self.factory.departures[self.name] = loss.reason


class ChatRoom(Factory[ChatMember]):
    """The chat server's factory."""

    protocol = ChatMember

    def __init__(self) -> None:
        self.members: list[ChatMember] = []
        self.departures: dict[bytes, Reason] = {}


class ChatClient(LineReceiver):
    """A chat client: says its name, then queues the lines it receives."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.lines: DeferredQueue[bytes] = DeferredQueue()
        self.ended: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.sendLine(self.name)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        self.lines.put(line)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.ended.callback(None)


# -- wiring it up, wrapped -------------------------------------------------------------------


async def join(reactor: Any, port: int, name: bytes) -> ChatClient:
    """Connect a wrapped chat client called ``name``."""
    client = ChatClient(name)
    endpoint = TCP4ClientEndpoint(reactor, HOST, port, timeout=5)
    factory = AliveWrappingFactory(Factory.forProtocol(lambda: client), heartbeatInterval=INTERVAL)
    # The endpoint gives the wrapping protocol (a HeartbeatMixin) around the client.
    wrapper = cast(HeartbeatMixin, await endpoint.connect(factory))
    await wrapper.whenOpened()  # the HELLO exchange is done
    return client


async def waitFor(reactor: Any, condition: Any, timeout: float = 5.0) -> bool:
    """Poll ``condition()`` every 10 ms for up to ``timeout`` seconds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return True
        await task.deferLater(reactor, 0.01, lambda: None)
    return bool(condition())


async def main(reactor: Any) -> int:
    room = ChatRoom()
    listening = reactor.listenTCP(
        0, AliveWrappingFactory(room, heartbeatInterval=INTERVAL), interface=HOST
    )
    port = cast(IPv4Address, listening.getHost()).port
    print(f"chat server on {HOST}:{port}", flush=True)

    alice = await join(reactor, port, b"alice")
    bob = await join(reactor, port, b"bob")
    await waitFor(reactor, lambda: len(room.members) == 2)

    alice.sendLine(b"hello bob")  # type: ignore[no-untyped-call]
    bob.sendLine(b"hi alice")  # type: ignore[no-untyped-call]
    heardByBob = await bob.lines.get()
    heardByAlice = await alice.lines.get()
    print(f"bob got:   {heardByBob.decode()}", flush=True)
    print(f"alice got: {heardByAlice.decode()}", flush=True)

    # alice's connection dies abruptly (an RST), bob leaves in order.
    cast(ITCPTransport, alice.transport).abortConnection()
    await alice.ended
    await waitFor(reactor, lambda: b"alice" in room.departures)
    cast(ITCPTransport, bob.transport).loseConnection()
    await bob.ended
    await waitFor(reactor, lambda: b"bob" in room.departures)
    await defer.maybeDeferred(listening.stopListening)

    ok = (
        heardByBob == b"alice: hello bob"
        and heardByAlice == b"bob: hi alice"
        and room.departures.get(b"alice") is Reason.RESET
        and room.departures.get(b"bob") is Reason.CLEAN_CLOSE
    )
    print("ok" if ok else "FAILED", flush=True)
    return 0 if ok else 1


def run() -> None:
    async def go(reactor: Any) -> None:
        code = await main(reactor)
        if code:
            raise SystemExit(code)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))


if __name__ == "__main__":
    run()
