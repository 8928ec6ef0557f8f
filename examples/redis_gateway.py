"""
A device gateway of three server processes sharing their sessions on
Redis: a device resumes its session on whichever process it reaches, and a
command sent to the device through any process reaches it once, confirmed.

Run:  python examples/redis_gateway.py redis://127.0.0.1:6379/0 [COMMANDS]   (default 200)

Starts three gateway processes (this script with ``gateway URL``), each an
`AliveServerFactory` on a `RedisSessionStore` and a small HTTP service
(twisted.web) on 127.0.0.1: ``POST /devices/SESSION_ID`` sends the request's
body to that device with ``factory.sendTo`` and answers once the device's
application processed it, with the message's number in its session. Then
it connects a device through a forwarder that sends each new connection to
one of the three at random and cuts every connection every 0.3 s, and
sends COMMANDS commands, 20 at a time, each through a gateway taken at
random. Checks that the device processed every command exactly once and
that every HTTP request answered with a receipt; exits 0 if so, 1
otherwise. The keys it writes in Redis have a prefix of their own
(``gateway-example-PID:``) and are deleted at the end.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from typing import Any

import treq
from twisted.internet import defer, endpoints, protocol, task
from twisted.internet.defer import Deferred
from twisted.web import resource, server

from twisted_alive import (
    AliveClientFactory,
    AliveServerFactory,
    DeliveryFailed,
    HeartbeatProtocol,
    QueueFull,
    sessionStoreFromString,
)

HOST = "127.0.0.1"


# -- a gateway process -------------------------------------------------------


class Gateway(HeartbeatProtocol):
    """What devices send the gateway is not this example's subject."""

    heartbeatInterval = 1.0

    def messageReceived(self, payload: bytes) -> None:
        pass


class Commands(resource.Resource):
    """``POST /devices/SESSION_ID``: send the body to that device."""

    isLeaf = True

    def __init__(self, factory: AliveServerFactory) -> None:
        super().__init__()
        self.factory = factory

    def render_POST(self, request: Any) -> Any:
        parts = request.postpath
        if len(parts) != 2 or parts[0] != b"devices":
            request.setResponseCode(404)
            return b"not found\n"
        d = self.factory.sendTo(parts[1].decode("ascii"), request.content.read())

        def confirmed(receipt: Any) -> None:
            request.write(json.dumps({"seq": receipt.seq}).encode())
            request.finish()

        def failed(failure: Any) -> None:
            failure.trap(DeliveryFailed, QueueFull)
            request.setResponseCode(503 if failure.check(QueueFull) else 410)
            request.write(json.dumps({"error": failure.getErrorMessage()}).encode())
            request.finish()

        d.addCallbacks(confirmed, failed)
        return server.NOT_DONE_YET


async def gateway(reactor: Any, url: str) -> None:
    store = sessionStoreFromString(reactor, url)
    factory = AliveServerFactory.forProtocol(Gateway, store=store)
    devices = reactor.listenTCP(0, factory, interface=HOST)
    web = reactor.listenTCP(0, server.Site(Commands(factory)), interface=HOST)
    print(devices.getHost().port, web.getHost().port, flush=True)
    await Deferred()  # until killed


# -- the device, the forwarder and the checks --------------------------------


class Device(HeartbeatProtocol):
    heartbeatInterval = 1.0

    def connectionOpened(self, resumed: bool) -> None:
        self.factory.connections += 1

    def messageReceived(self, payload: bytes) -> None:
        self.factory.commands.append(payload)


class Devices(AliveClientFactory):
    protocol = Device
    initialDelay = 0.02
    maxDelay = 0.1
    quickDelay = 0.01

    def __init__(self) -> None:
        super().__init__()
        self.commands: list[bytes] = []
        self.connections = 0


class Front(protocol.Protocol):
    """One connection through the forwarder, to a gateway at random."""

    def connectionMade(self) -> None:
        self.back: protocol.Protocol | None = None
        self.pending: list[bytes] = []
        self.factory.fronts.add(self)
        port = random.choice(self.factory.ports)
        backs = protocol.Factory()
        backs.buildProtocol = lambda addr: Back(self)  # type: ignore[method-assign]
        d = endpoints.TCP4ClientEndpoint(self.factory.reactor, HOST, port).connect(backs)
        d.addErrback(lambda _: self.transport.abortConnection())

    def dataReceived(self, data: bytes) -> None:
        if self.back is None:
            self.pending.append(data)
        else:
            self.back.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.fronts.discard(self)
        if self.back is not None:
            self.back.transport.abortConnection()


class Back(protocol.Protocol):
    def __init__(self, front: Front) -> None:
        self.front = front

    def connectionMade(self) -> None:
        self.front.back = self
        self.transport.write(b"".join(self.front.pending))

    def dataReceived(self, data: bytes) -> None:
        self.front.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.front.transport.abortConnection()


async def main(reactor: Any, url: str, count: int) -> int:
    prefix = f"gateway-example-{os.getpid()}:"
    url = f"{url}{'&' if '?' in url else '?'}prefix={prefix}"
    gateways = [
        subprocess.Popen(
            [sys.executable, __file__, "gateway", url], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        ports = [tuple(map(int, g.stdout.readline().split())) for g in gateways]  # type: ignore[union-attr]
        forwarder = protocol.Factory.forProtocol(Front)
        forwarder.reactor, forwarder.fronts = reactor, set()
        forwarder.ports = [devices for devices, _ in ports]
        front = reactor.listenTCP(0, forwarder, interface=HOST)

        def cut() -> None:
            for connection in list(forwarder.fronts):
                connection.transport.abortConnection()

        cutter = task.LoopingCall(cut)
        device = Devices()
        reactor.connectTCP(HOST, front.getHost().port, device)
        connected = await device.whenConnected()
        sessionId = connected.sessionId
        cutter.start(0.3, now=False)

        async def command(n: int) -> tuple[int, Any]:
            web = random.choice(ports)[1]
            address = f"http://{HOST}:{web}/devices/{sessionId}"
            response = await treq.post(address, data=b"command %d" % n)
            return web, (response.code, json.loads(await treq.content(response)))

        answers = []
        for first in range(0, count, 20):  # 20 at a time
            batch = [command(n) for n in range(first, min(count, first + 20))]
            answers += await defer.gatherResults([Deferred.fromCoroutine(c) for c in batch])
        cutter.stop()
        device.stopTrying()
        if device.connected is not None:
            device.connected.abort("done")
    finally:
        for g in gateways:
            g.kill()
            g.wait()
        # Once no gateway runs (a gateway's poll writes too).
        await defer.ensureDeferred(cleanUp(url, prefix))
    commands = device.commands
    ok = sorted(commands) == sorted(b"command %d" % n for n in range(count))
    ok = ok and all(code == 200 and "seq" in body for _, (code, body) in answers)
    print(
        f"{count} commands through 3 gateways, {device.connections} connections: "
        f"{len(commands)} processed, {len(set(commands))} distinct; "
        f"every request confirmed: {ok}"
    )
    return 0 if ok else 1


async def cleanUp(url: str, prefix: str) -> None:
    """Delete every key with ``prefix`` in the Redis of ``url``."""
    from urllib.parse import urlsplit

    import txredisapi

    parts = urlsplit(url)
    redis = txredisapi.lazyConnection(
        parts.hostname, parts.port or 6379, dbid=int(parts.path.strip("/") or 0)
    )
    keys = await redis.keys(prefix + "*")
    if keys:
        await redis.delete(*keys)
    await redis.disconnect()


if __name__ == "__main__":
    if sys.argv[1] == "gateway":
        task.react(lambda reactor: defer.ensureDeferred(gateway(reactor, sys.argv[2])))
    else:
        total = int(sys.argv[2]) if len(sys.argv) > 2 else 200
        task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1], total)))
