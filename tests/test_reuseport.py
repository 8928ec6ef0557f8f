"""
Tests for L{twisted_alive.service.reuseport} and the twistd plugin's
C{--reuse-port}: the options, the endpoint over real sockets in this
process, then three C{twistd -n alive --reuse-port} processes on one port.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any, cast

import pytest
import treq
from support import (
    LOOPBACK,
    CollectingFactory,
    RedisServer,
    connectCollecting,
    ensureDeferred,
    getReactor,
    waitFor,
    within,
)
from test_tls import Certificate
from test_twistd import Twistd, _freePort
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.python import usage

from twisted_alive._factories import AliveServerFactory
from twisted_alive._mixin import HeartbeatMixin
from twisted_alive._reasons import Loss, Reason
from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.service.reuseport import ReusePortEndpoint, reusePortProblem
from twisted_alive.service.tap import EchoProtocol, Options
from twisted_alive.tools.cli import listenProblem, serverParameters


def _parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


# -- the option ------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("listen", "port", "interface", "backlog"),
    [
        ("tcp:9000", 9000, "", 4096),
        ("tcp:9000:interface=127.0.0.1:backlog=100", 9000, "127.0.0.1", 100),
        ("tcp:9000:127.0.0.1:60", 9000, "127.0.0.1", 60),
        ("tcp6:9000", 9000, "::", 4096),
        ("tcp6:port=9000:interface=\\:\\:1", 9000, "::1", 4096),
    ],
)
def test_reusePortEndpoints(listen: str, port: int, interface: str, backlog: int) -> None:
    """With --reuse-port, each --listen TCP endpoint is a ReusePortEndpoint with the
    endpoint's port, interface (unescaped; every interface by default) and backlog
    (DEFAULT_BACKLOG by default); the --status endpoint is not affected."""
    options = _parse("--reuse-port", "--listen", listen, "--status", "tcp:9080")
    (named,) = options["endpoints"]
    endpoint = named.endpoint
    assert isinstance(endpoint, ReusePortEndpoint)
    assert (endpoint._port, endpoint._interface, endpoint._backlog) == (port, interface, backlog)
    assert named.given == listen
    assert not isinstance(options["statusEndpoint"].endpoint, ReusePortEndpoint)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("text", "parameters"),
    [
        ("tcp:9000", {"port": "9000"}),
        ("tcp:9000:127.0.0.1:60", {"port": "9000", "interface": "127.0.0.1", "backlog": "60"}),
        (
            "tcp6:backlog=5:port=1:interface=\\:\\:1",
            {"port": "1", "interface": "::1", "backlog": "5"},
        ),
        ("unix:/run/a\\:b.sock", {"address": "/run/a:b.sock"}),
        ("systemd:domain=INET:index=0", None),
    ],
)
def test_serverParameters(text: str, parameters: dict[str, str] | None) -> None:
    """serverParameters names the positional parameters of the known endpoint types and
    unescapes the values; an unknown type gives None."""
    assert serverParameters(text) == parameters


@pytest.mark.timeout(20)
def test_withoutReusePort() -> None:
    """Without --reuse-port, a --listen TCP endpoint is Twisted's own."""
    options = _parse("--listen", "tcp:9000")
    assert not options["reuse-port"]
    (named,) = options["endpoints"]
    assert not isinstance(named.endpoint, ReusePortEndpoint)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--reuse-port", "--listen", "unix:/tmp/alive-reuse.sock"],
            '--reuse-port shares TCP ports only (tcp:PORT, tcp6:PORT), not --listen '
            '"unix:/tmp/alive-reuse.sock"',
        ),
        (
            ["--reuse-port", "--listen", "tcp:9000", "--listen", "unix:/tmp/alive-reuse.sock"],
            '--reuse-port shares TCP ports only (tcp:PORT, tcp6:PORT), not --listen '
            '"unix:/tmp/alive-reuse.sock"',
        ),
        (
            ["--reuse-port", "--listen", "tcp:0"],
            '--reuse-port needs a fixed port, not --listen "tcp:0" (with port 0 each '
            "process would listen on a port of its own)",
        ),
        (
            ["--reuse-port", "--listen", "tpc:9000"],
            "invalid --listen endpoint \"tpc:9000\": unknown endpoint type 'tpc' "
            "(write an endpoint string such as tcp:9000:interface=127.0.0.1)",
        ),
        (
            ["--reuse-port", "--listen", "tcp:9000:backlog=0"],
            "invalid --listen endpoint \"tcp:9000:backlog=0\": backlog '0' is not a "
            "whole number of 1 or more",
        ),
    ],
)
def test_reusePortMistakes(args: list[str], message: str) -> None:
    """--reuse-port with an endpoint that is not TCP, or TCP on port 0, is a usage
    error naming the endpoint; an endpoint Twisted cannot read says so as without
    --reuse-port."""
    with pytest.raises(usage.UsageError) as caught:
        _parse(*args)
    assert str(caught.value) == message


@pytest.mark.timeout(20)
def test_reusePortNotOverTls(tmp_path: Path) -> None:
    """--reuse-port with a TLS --listen endpoint is a usage error."""
    certificate = Certificate(tmp_path / "tls")
    given = f"ssl:9443:privateKey={certificate.keyFile}:certKey={certificate.certFile}"
    with pytest.raises(usage.UsageError) as caught:
        _parse("--reuse-port", "--listen", given)
    assert str(caught.value) == (
        f'--reuse-port shares TCP ports only (tcp:PORT, tcp6:PORT), not --listen "{given}"'
    )


@pytest.mark.timeout(20)
def test_platformWithoutReusePort(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a platform without SO_REUSEPORT, --reuse-port is a usage error saying so,
    and a ReusePortEndpoint fails to listen with the same reason."""
    monkeypatch.delattr(socket, "SO_REUSEPORT", raising=False)
    reason = f"this platform ({sys.platform}) has no SO_REUSEPORT"
    assert reusePortProblem() == reason
    with pytest.raises(usage.UsageError) as caught:
        _parse("--reuse-port", "--listen", "tcp:9000")
    assert str(caught.value) == f"--reuse-port cannot be used here: {reason}"
    assert _parse("--listen", "tcp:9000")["endpoints"]  # without it: as before
    d = ReusePortEndpoint(getReactor(), 9000, LOOPBACK).listen(AliveServerFactory())
    failure = cast(Any, d).result
    d.addErrback(lambda _: None)
    assert isinstance(failure.value, CannotListenError)
    assert listenProblem(failure.value) == reason


@pytest.mark.skipif(reusePortProblem() is not None, reason="no SO_REUSEPORT here")
@pytest.mark.timeout(20)
def test_platformHasReusePort() -> None:
    """Where the socket module has SO_REUSEPORT (Linux, the BSDs, macOS), nothing
    stands in the way."""
    assert reusePortProblem() is None


@pytest.mark.timeout(20)
def test_reactorThatCannotAdopt() -> None:
    """A ReusePortEndpoint on a reactor without adoptStreamPort fails to listen
    with CannotListenError saying so."""
    clock = Clock()
    d = ReusePortEndpoint(clock, 9000, LOOPBACK).listen(AliveServerFactory())
    failure = cast(Any, d).result
    d.addErrback(lambda _: None)
    assert isinstance(failure.value, CannotListenError)
    assert listenProblem(failure.value) == f"{clock!r} cannot adopt a listening socket"


# -- the endpoint, over real sockets in this process ------------------------------


def _echoFactory() -> AliveServerFactory:
    factory = AliveServerFactory()
    factory.protocol = EchoProtocol
    return factory


async def _echoed(client: CollectingFactory, proto: HeartbeatMixin, payload: bytes) -> None:
    """Send ``payload`` on a new client's connection; wait for its echo."""
    receipt = await proto.sendMessage(payload)
    assert receipt.seq == 1
    await waitFor(lambda: client.received == [payload], 10, "the echo")


@pytest.mark.timeout(30)
@ensureDeferred
async def test_twoListenersShareAPort() -> None:
    """Two ReusePortEndpoints listen on the same port of 127.0.0.1 at once; clients
    connect through it and are echoed; a socket without SO_REUSEPORT cannot take the
    port meanwhile; once both stopped, the port is free."""
    port = _freePort()
    factories = [_echoFactory(), _echoFactory()]
    listening: list[IListeningPort] = []
    clients: list[CollectingFactory] = []
    try:
        for factory in factories:
            endpoint = ReusePortEndpoint(getReactor(), port, LOOPBACK, 16)
            listening.append(await endpoint.listen(factory))
        assert [p.getHost().port for p in listening] == [port, port]  # type: ignore[attr-defined]
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind((LOOPBACK, port))
        for i in range(10):
            client, proto = await connectCollecting(port)
            clients.append(client)
            await _echoed(client, proto, b"m%d" % i)
        assert sum(len(f.connections) for f in factories) == 10
    finally:
        for client in clients:
            await client.close()
        for p in listening:
            await maybeDeferred(p.stopListening)
    with socket.socket() as plain:
        plain.bind((LOOPBACK, port))


@pytest.mark.timeout(30)
@ensureDeferred
async def test_portTakenWithoutReusePort() -> None:
    """A port held by a socket without SO_REUSEPORT is refused: CannotListenError,
    'address already in use', and the endpoint's own socket is closed."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        endpoint = ReusePortEndpoint(getReactor(), port, LOOPBACK)
        with pytest.raises(CannotListenError) as caught:
            await endpoint.listen(_echoFactory())
    assert listenProblem(caught.value) == "address already in use"
    assert repr(endpoint) == (
        f"<ReusePortEndpoint port={port} interface='127.0.0.1' backlog=50>"
    )


@pytest.mark.timeout(30)
@ensureDeferred
async def test_ipv6Loopback() -> None:
    """An IPv6 interface makes an IPv6 socket."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback")
    listening = await ReusePortEndpoint(getReactor(), port, "::1").listen(_echoFactory())
    try:
        host = listening.getHost()
        assert (host.type, host.host, host.port) == (  # type: ignore[attr-defined]
            "TCP", "::1", port
        )
    finally:
        await maybeDeferred(listening.stopListening)


# -- three twistd processes on one port ---------------------------------------------


async def _connections(statusPort: int) -> list[dict[str, Any]]:
    response = await treq.get(
        f"http://{LOOPBACK}:{statusPort}/connections", persistent=False, timeout=5
    )
    return cast(list[dict[str, Any]], json.loads(await response.content()))


@pytest.mark.slow
@pytest.mark.timeout(120)
@ensureDeferred
async def test_threeProcessesOnOnePort(tmp_path: Path, redisServer: RedisServer) -> None:
    """Three twistd -n alive --reuse-port processes (sessions on one Redis) listen on
    one port of 127.0.0.1: 30 clients connect to it, each completes its HELLO and
    gets its echo; the connections are spread over more than one process; on
    SIGTERM each process closes its clients with GOODBYE and exits 0."""
    port = _freePort()
    statusPorts = [_freePort() for _ in range(3)]
    servers: list[Twistd] = []
    clients: list[CollectingFactory] = []
    losses: list[Deferred[Loss]] = []
    try:
        for i, statusPort in enumerate(statusPorts):
            directory = tmp_path / f"p{i + 1}"
            directory.mkdir()
            server = Twistd(directory)
            servers.append(server)
            server.start(
                f"--listen=tcp:{port}:interface={LOOPBACK}",
                "--reuse-port",
                f"--status=tcp:{statusPort}:interface={LOOPBACK}",
                "--app=echo",
                "--interval=0.5",
                "--close-timeout=5",
                f"--sessions=redis://{LOOPBACK}:{redisServer.port}/0?prefix=reuse{port}:",
            )
        for server, statusPort in zip(servers, statusPorts, strict=True):
            await server.waitForHealth(statusPort)

        for i in range(30):
            client, proto = await connectCollecting(port)
            clients.append(client)
            losses.append(proto.whenLost())
            await _echoed(client, proto, b"m%d" % i)

        counts = [len(await _connections(statusPort)) for statusPort in statusPorts]
        assert sum(counts) == 30, counts
        assert sum(1 for count in counts if count) >= 2, counts
        print(f"connections per process: {counts}")

        for server in servers:
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
        ended = await within(gatherResults(losses), 30)
        codes = [await server.waitForExit(30) for server in servers]
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            server.kill()
    assert {(loss.reason, loss.goodbye) for loss in ended} == {
        (Reason.CLEAN_CLOSE, GoodbyeCode.SHUTTING_DOWN)
    }
    for server, code in zip(servers, codes, strict=True):
        output = server.output()
        assert code == 0, output
        assert f"--listen listening on {LOOPBACK}:{port}" in output, output
        assert "Server Shut Down." in output, output
        assert "Traceback" not in output, output
