"""
Tests for the ``twisted-alive`` command line (L{twisted_alive.tools.cli},
L{twisted_alive.tools.probe}, L{twisted_alive.tools.demo}): the command runs as a
subprocess (``python -m twisted_alive``) against real servers on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from support import (
    LOOPBACK,
    ROOT,
    asyncYieldFixture,
    ensureDeferred,
    getReactor,
    killGroup,
    listenEndpoint,
    portOf,
    startProcess,
    tcp,
    waitFor,
)
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread

from twisted_alive._factories import AliveServerFactory
from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive.tools import cli as _cli


@dataclass(frozen=True)
class Ran:
    """A finished run of the command."""

    code: int
    out: str
    err: str
    seconds: float

    def json(self) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.out))


def runCli(*args: str, timeout: float = 30.0) -> Ran:
    """
    Run ``python -m twisted_alive ARGS`` in its own session, and kill its
    process group if it outlives C{timeout}.
    """
    started = time.monotonic()
    proc = startCli(*args)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        reap(proc)
    return Ran(proc.returncode, out, err, time.monotonic() - started)


def startCli(*args: str) -> subprocess.Popen[str]:
    """Start ``python -m twisted_alive ARGS`` in its own session (so that
    `reap` can kill its group), output and errors on two pipes."""
    return startProcess(sys.executable, "-m", "twisted_alive", *args, cwd=ROOT, separateErrors=True)


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill the process group of ``proc`` if it still runs, and wait for it."""
    if proc.poll() is None:
        killGroup(proc)
        proc.communicate()


def runCliInThread(*args: str, timeout: float = 30.0) -> Deferred[Ran]:
    """L{runCli} in a thread, so that the test's reactor keeps serving."""
    return deferToThread(runCli, *args, timeout=timeout)


def _closedPort() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return cast(int, s.getsockname()[1])


# -- servers for the probe ---------------------------------------------------


class _Banner(Protocol):
    """A plain TCP server that greets in its own protocol and keeps the
    connection open."""

    def connectionMade(self) -> None:
        self.transport.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # type: ignore[union-attr]


class _Echo(Protocol):
    """A plain TCP echo server."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class _Silent(Protocol):
    """A plain TCP server that never says anything."""


class _ResetAtOnce(Protocol):
    """Accepts, then resets (SO_LINGER 0 and an abort)."""

    def connectionMade(self) -> None:
        tcp = cast(ITCPTransport, self.transport)
        handle = cast(socket.socket, cast(ISystemHandle, tcp).getHandle())
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tcp.abortConnection()


class _CloseAfterReading(Protocol):
    """Reads what the client sends, then closes cleanly (a FIN, nothing left
    unread)."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class _AliveServer(HeartbeatProtocol):
    """A twisted_alive server with a distinctive heartbeat interval."""

    heartbeatInterval = 0.7


class Servers:
    """Starts servers in the test's reactor and stops them."""

    def __init__(self) -> None:
        self.ports: list[IListeningPort] = []

    async def start(self, factory: Factory[Any]) -> int:
        factory.noisy = False
        port = await listenEndpoint().listen(factory)
        self.ports.append(port)
        return portOf(port)

    async def stop(self) -> None:
        for port in self.ports:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped


@asyncYieldFixture
async def servers() -> Any:
    """Servers in the test's reactor, stopped after the test."""
    found = Servers()
    yield found
    await found.stop()


# -- help and usage -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_helpListsSubcommands() -> None:
    """``--help`` lists the subcommands and exits 0."""
    ran = runCli("--help")
    assert ran.code == 0, ran.err
    assert ran.out.startswith("usage: twisted-alive")
    for name in ("probe", "demo", "proxy"):
        assert name in ran.out


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("probe", ["ENDPOINT", "--timeout", "--json", "--interval", "exit codes", "7  other"]),
        ("demo", ["--json", "--fast", "exit codes", "silent peer"]),
        ("proxy", ["LISTEN", "TARGET", "--faults", "reset-after", "exit codes"]),
    ],
)
def test_subcommandHelp(name: str, words: list[str]) -> None:
    """``COMMAND --help`` shows the subcommand's usage, options and exit codes."""
    ran = runCli(name, "--help")
    assert ran.code == 0, ran.err
    assert ran.out.startswith(f"usage: twisted-alive {name}")
    for word in words:
        assert word in ran.out


@pytest.mark.timeout(30)
def test_noSubcommand() -> None:
    """Without a subcommand the usage and a one-line error go to stderr, exit 2."""
    ran = runCli()
    assert ran.code == 2
    assert ran.out == ""
    assert ran.err.startswith("usage: twisted-alive")
    assert ran.err.splitlines()[-1].startswith("twisted-alive: error: ")
    assert "Traceback" not in ran.err


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["probe", "xyz"],
            "twisted-alive probe: invalid endpoint \"xyz\": unknown endpoint type 'xyz' "
            "(write HOST:PORT or an endpoint string such as tcp:host=HOST:port=PORT)",
        ),
        (
            ["probe", "tcp:host=127.0.0.1:port=abc"],
            'twisted-alive probe: invalid endpoint "tcp:host=127.0.0.1:port=abc": '
            "port 'abc' is not a number from 0 to 65535",
        ),
        (
            ["probe", "tcp:host=127.0.0.1"],
            'twisted-alive probe: invalid endpoint "tcp:host=127.0.0.1": the port is missing',
        ),
        (
            ["probe", "127.0.0.1:-5"],
            'twisted-alive probe: invalid endpoint "127.0.0.1:-5": '
            "port '-5' is not a number from 0 to 65535",
        ),
        (
            ["probe", "host:notaport"],
            'twisted-alive probe: invalid endpoint "host:notaport": '
            "port 'notaport' is not a number from 0 to 65535",
        ),
        (
            ["probe", ":9000"],
            'twisted-alive probe: invalid endpoint ":9000": the host is missing (write HOST:PORT)',
        ),
        (
            ["probe", "127.0.0.1:99999"],
            'twisted-alive probe: invalid endpoint "127.0.0.1:99999": '
            "port 99999 is out of range (0 to 65535)",
        ),
        (
            ["proxy", "0", "127.0.0.1:9", "--faults", "reset-after=fast"],
            'twisted-alive proxy: invalid faults "reset-after=fast": bad value "fast" for '
            "reset-after: expected SECONDS or MIN..MAX seconds with 0 <= MIN <= MAX",
        ),
        (
            ["proxy", "nowhere:", "127.0.0.1:9"],
            'twisted-alive proxy: invalid listen endpoint "nowhere:": the port is missing',
        ),
        (
            ["proxy", "tcp:xyz", "127.0.0.1:9"],
            'twisted-alive proxy: invalid listen endpoint "tcp:xyz": '
            "port 'xyz' is not a number from 0 to 65535",
        ),
        (
            ["proxy", "tcp:9000:backlog=many", "127.0.0.1:9"],
            'twisted-alive proxy: invalid listen endpoint "tcp:9000:backlog=many": '
            "backlog 'many' is not a whole number of 1 or more",
        ),
        (
            ["proxy", "0", "xyz"],
            "twisted-alive proxy: invalid target endpoint \"xyz\": unknown endpoint type 'xyz' "
            "(write HOST:PORT or an endpoint string such as tcp:host=HOST:port=PORT)",
        ),
        (
            ["proxy", "0", "127.0.0.1:9", "xyz"],
            "twisted-alive proxy: invalid target endpoint \"xyz\": unknown endpoint type 'xyz' "
            "(write HOST:PORT or an endpoint string such as tcp:host=HOST:port=PORT)",
        ),
    ],
)
def test_badStrings(args: list[str], message: str) -> None:
    """A bad endpoint or faults string gives one exact line on stderr and exit 2,
    never a traceback."""
    ran = runCli(*args)
    assert ran.code == 2
    assert ran.out == ""
    assert ran.err == message + "\n"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("value", ["-1", "0", "soon", "nan"])
def test_badTimeout(value: str) -> None:
    """A timeout that is not a positive number is a usage error (exit 2, one
    line after the usage)."""
    ran = runCli("probe", "127.0.0.1:9", "--timeout", value)
    assert ran.code == 2
    assert ran.err.splitlines()[-1].startswith("twisted-alive probe: error: argument --timeout:")
    assert "Traceback" not in ran.err


# -- probe ------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["server", "peer"])
@ensureDeferred
async def test_probeAliveServer(servers: Servers, kind: str) -> None:
    """A twisted_alive server (sessions or plain peer) is alive and speaks the
    protocol: its interval and a PING round trip are reported, exit 0."""
    factory: Factory[Any]
    if kind == "server":
        factory = AliveServerFactory.forProtocol(_AliveServer)
    else:
        factory = Factory.forProtocol(_AliveServer)
    port = await servers.start(factory)
    ran = await runCliInThread("probe", f"tcp:host=127.0.0.1:port={port}", "--json")
    assert ran.code == 0, ran.err
    result = ran.json()
    assert result["state"] == "alive"
    assert result["speaksAlive"] is True
    assert result["peerInterval"] == 0.7
    assert result["rttMs"] is not None and result["rttMs"] > 0
    assert result["connectMs"] is not None and result["connectMs"] > 0
    assert set(result) == {
        "endpoint",
        "state",
        "connectMs",
        "speaksAlive",
        "peerInterval",
        "rttMs",
        "reason",
    }


@pytest.mark.timeout(30)
@ensureDeferred
async def test_probeAliveHumanLine(servers: Servers) -> None:
    """Without --json the probe prints one line naming the state, the connect
    time, the peer's interval and the round trip."""
    port = await servers.start(AliveServerFactory.forProtocol(_AliveServer))
    ran = await runCliInThread("probe", f"{LOOPBACK}:{port}")
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{LOOPBACK}:{port}: alive (connected in ")
    assert "speaks twisted_alive, heartbeat interval 0.7 s, round trip " in lines[0]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("protocol", "words"),
    [
        (_Banner, "21 bytes that are not a twisted_alive HELLO"),
        (_Echo, "echoed the HELLO back"),
        (_Silent, "sent nothing within 0.5 s"),
    ],
)
@ensureDeferred
async def test_probePlainTcp(servers: Servers, protocol: type[Protocol], words: str) -> None:
    """A plain TCP server (a banner, an echo, or silence) is alive but does not
    speak twisted_alive: exit 0, speaksAlive false."""
    port = await servers.start(Factory.forProtocol(protocol))
    ran = await runCliInThread("probe", f"{LOOPBACK}:{port}", "--json", "--timeout", "0.5")
    assert ran.code == 0, ran.err
    result = ran.json()
    assert result["state"] == "alive"
    assert result["speaksAlive"] is False
    assert result["peerInterval"] is None and result["rttMs"] is None
    assert words in result["reason"]


@pytest.mark.timeout(30)
def test_probeRefused() -> None:
    """A port nothing listens on is refused: exit 3."""
    port = _closedPort()
    ran = runCli("probe", f"{LOOPBACK}:{port}", "--json")
    assert ran.code == 3, ran.err
    result = ran.json()
    assert result["state"] == "refused"
    assert result["connectMs"] is None
    ran = runCli("probe", f"{LOOPBACK}:{port}")
    assert ran.code == 3
    assert ran.out == f"{LOOPBACK}:{port}: refused: connection refused (nothing listens)\n"


@pytest.mark.slow
@pytest.mark.timeout(30)
def test_probeConnectTimeout(blackhole: int) -> None:
    """A port that never answers the SYN is a connect timeout: exit 4, after
    about --timeout seconds."""
    ran = runCli("probe", f"{LOOPBACK}:{blackhole}", "--json", "--timeout", "1")
    assert ran.code == 4, ran.err
    result = ran.json()
    assert result["state"] == "connect timeout"
    assert result["reason"] == "no answer within 1 s"
    assert ran.seconds >= 1.0


@pytest.mark.timeout(30)
@ensureDeferred
async def test_probeReset(servers: Servers) -> None:
    """A server that accepts and then resets (SO_LINGER 0) is reported as reset
    (exit 5) or, if the kernel shows it as a close, closed by peer (exit 6)."""
    port = await servers.start(Factory.forProtocol(_ResetAtOnce))
    ran = await runCliInThread("probe", f"{LOOPBACK}:{port}", "--json")
    assert ran.code in (5, 6), ran.err
    result = ran.json()
    assert result["state"] == {5: "reset", 6: "closed by peer"}[ran.code]


@pytest.mark.timeout(30)
@ensureDeferred
async def test_probeClosedByPeer(servers: Servers) -> None:
    """A server that reads the HELLO and closes cleanly is closed by peer:
    exit 6."""
    port = await servers.start(Factory.forProtocol(_CloseAfterReading))
    ran = await runCliInThread("probe", f"{LOOPBACK}:{port}", "--json")
    assert ran.code == 6, ran.err
    result = ran.json()
    assert result["state"] == "closed by peer"
    assert result["reason"].startswith("the peer closed the connection")


@pytest.mark.timeout(30)
def test_probeOtherConnectFailure(tmp_path: Path) -> None:
    """A connect failure other than refused or timeout (here: a UNIX socket path
    that does not exist) is exit 7."""
    ran = runCli("probe", f"unix:{tmp_path / 'missing.sock'}", "--json")
    assert ran.code == 7, ran.err
    result = ran.json()
    assert result["state"] == "connect failed"
    assert "No such file or directory" in result["reason"]


# -- proxy --------------------------------------------------------------------------


@pytest.mark.timeout(60)
@ensureDeferred
async def test_proxyForwardsUntilInterrupted(servers: Servers) -> None:
    """``proxy 0 TARGET`` forwards to a twisted_alive server (a probe through it
    sees the server), and exits 0 with a summary on SIGINT."""
    target = await servers.start(AliveServerFactory.forProtocol(_AliveServer))
    proc = startCli("proxy", "0", f"{LOOPBACK}:{target}")
    try:
        assert proc.stdout is not None
        first = await deferToThread(proc.stdout.readline)
        assert first.startswith("twisted-alive proxy: listening on 127.0.0.1:"), first
        assert f"forwarding to {LOOPBACK}:{target}; faults: none; seed " in first
        port = int(first.split("listening on 127.0.0.1:")[1].split(",")[0])
        ran = await runCliInThread("probe", f"{LOOPBACK}:{port}", "--json")
        assert ran.code == 0, ran.err
        assert ran.json()["speaksAlive"] is True
        proc.send_signal(signal.SIGINT)
        out, err = await deferToThread(proc.communicate, timeout=10)
        assert proc.returncode == 0, err
        assert "twisted-alive proxy: stopped after 1 connection, " in out
        assert "Traceback" not in err
    finally:
        reap(proc)


class _Counting(Factory[Protocol]):
    """Counts the connections it accepts."""

    protocol = Protocol

    def __init__(self) -> None:
        self.built = 0

    def buildProtocol(self, addr: Any) -> Protocol | None:
        self.built += 1
        return super().buildProtocol(addr)


@pytest.mark.timeout(60)
@ensureDeferred
async def test_proxySeveralTargets(servers: Servers) -> None:
    """``proxy 0 A B`` sends each new connection to A or B, drawn from the
    seed, and its summary counts them per target."""
    counting = [_Counting(), _Counting()]
    targets = [f"{LOOPBACK}:{await servers.start(factory)}" for factory in counting]
    proc = startCli("proxy", "0", *targets, "--faults", "seed=3")
    try:
        assert proc.stdout is not None
        first = await deferToThread(proc.stdout.readline)
        assert f"forwarding to {targets[0]}, {targets[1]}; faults: seed=3; seed 3" in first
        port = int(first.split("listening on 127.0.0.1:")[1].split(",")[0])
        async def accepted(count: int) -> None:
            await waitFor(lambda: sum(f.built for f in counting) == count, 10, f"{count} accepted")

        for n in range(1, 13):
            client = await TCP4ClientEndpoint(getReactor(), LOOPBACK, port).connect(
                Factory.forProtocol(Protocol)
            )
            await accepted(n)
            tcp(client).loseConnection()
        proc.send_signal(signal.SIGINT)
        out, err = await deferToThread(proc.communicate, timeout=10)
        assert proc.returncode == 0, err
        built = [f.built for f in counting]
        assert all(built), built
        assert (
            f"stopped after 12 connections, 0 bytes forwarded; faults injected: none; "
            f"per target: {targets[0]} {built[0]}, {targets[1]} {built[1]}"
        ) in out, out
    finally:
        reap(proc)


@pytest.mark.timeout(30)
def test_proxyCannotListen() -> None:
    """A listen endpoint that is already taken is one exact line, exit 1."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        ran = runCli("proxy", f"{LOOPBACK}:{port}", f"{LOOPBACK}:9")
    assert ran.code == 1
    lines = ran.err.splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f'twisted-alive proxy: cannot listen on "{LOOPBACK}:{port}": address already in use'
    )


# -- demo ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demoJson() -> None:
    """``demo --json`` runs the six steps to completion in under 30 s, each ok,
    and exits 0."""
    ran = runCli("demo", "--json", timeout=80)
    assert ran.code == 0, ran.out + ran.err
    report = ran.json()
    assert report["ok"] is True
    assert [s["step"] for s in report["steps"]] == [1, 2, 3, 4, 5, 6]
    assert all(s["ok"] for s in report["steps"]), report["steps"]
    assert report["steps"][5]["messages"] == 2000
    assert report["steps"][5]["exactlyOnceInOrder"] is True
    assert report["steps"][3]["detectedAfter"] <= report["deadline"] + 0.25
    assert report["seconds"] < 30
    assert ran.seconds < 30


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_demoHuman() -> None:
    """``demo --fast`` prints a timeline naming each classified Reason and a
    summary table, and exits 0."""
    ran = runCli("demo", "--fast", "--seed", "7", timeout=80)
    assert ran.code == 0, ran.out + ran.err
    assert ran.err == ""
    for name in ("CLEAN_CLOSE", "RESET", "TIMEOUT", "REFUSED", "LOCAL_CLOSE"):
        assert f"  {name} " in ran.out, name
    assert "PEER_CLOSED" in ran.out or ran.out.count("  RESET ") >= 2
    for number in range(1, 7):
        assert f"\n[{number}] " in ran.out
    assert "\nSummary\n" in ran.out
    assert "6 of 6 steps ok in " in ran.out
    assert "(seed 7)" in ran.out


# -- the command machinery, in process -------------------------------------------


@pytest.mark.timeout(30)
def test_optionalSubcommandsPlugIn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An optional subcommand is offered only when its module exists, and its
    ``run`` return value becomes the exit code."""
    (tmp_path / "clicheckcmd.py").write_text(
        textwrap.dedent(
            '''
            """Say something, exit 5."""
            def addArguments(parser):
                parser.add_argument("--word", default="hello")
            def run(args):
                print(args.word)
                return 5
            '''
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(
        _cli,
        "SUBCOMMANDS",
        [
            ("check", "clicheckcmd", True),
            ("absent", "clicheck_no_such_module", True),
        ],
    )
    with pytest.raises(SystemExit) as exited:
        _cli.main(["check", "--word", "hi"])
    assert exited.value.code == 5
    assert capsys.readouterr().out == "hi\n"
    with pytest.raises(SystemExit) as exited:
        _cli.main(["--help"])
    assert exited.value.code == 0
    help = capsys.readouterr().out
    assert "Say something, exit 5." in help
    assert "absent" not in help


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("localhost:80", ("localhost", 80)),
        ("[::1]:9000", ("::1", 9000)),
        ("tcp:host=127.0.0.1:port=9000", ("127.0.0.1", 9000)),
    ],
)
def test_clientShortForms(text: str, spec: tuple[str, int]) -> None:
    """``HOST:PORT`` (and ``[V6]:PORT``) means a TCP client endpoint, as does a
    full ``tcp:`` string."""
    from twisted.internet.endpoints import TCP4ClientEndpoint

    endpoint = _cli.clientEndpoint(getReactor(), text)
    assert isinstance(endpoint, TCP4ClientEndpoint)
    assert (endpoint._host, endpoint._port) == spec


@pytest.mark.parametrize(
    ("text", "interface", "port"),
    [
        ("9000", "127.0.0.1", 9000),
        ("0.0.0.0:9000", "0.0.0.0", 9000),
        ("[::1]:9000", "::1", 9000),
        ("tcp:9000:interface=127.0.0.2", "127.0.0.2", 9000),
    ],
)
def test_serverShortForms(text: str, interface: str, port: int) -> None:
    """A bare port listens on 127.0.0.1; ``HOST:PORT`` on that interface."""
    endpoint = _cli.serverEndpoint(getReactor(), text)
    assert (endpoint._interface, endpoint._port) == (interface, port)  # type: ignore[attr-defined]


@pytest.mark.timeout(30)
def test_version() -> None:
    """twisted-alive --version prints the package's version (from its metadata) and exits 0."""
    from importlib.metadata import version

    import twisted_alive

    assert twisted_alive.__version__ == version("twisted_alive")
    ran = runCli("--version")
    assert ran.code == 0
    assert ran.out == f"twisted-alive {twisted_alive.__version__}\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("listen", "host", "warned"),
    [("tcp:0", "127.0.0.1", False), ("0", "127.0.0.1", False), ("0.0.0.0:0", "0.0.0.0", True),
     ("tcp:0:interface=0.0.0.0", "0.0.0.0", True)],
)
def test_proxyListensOnLoopbackUnlessTold(listen: str, host: str, warned: bool) -> None:
    """Over real sockets: the proxy listens on 127.0.0.1 unless LISTEN names an interface
    (a full tcp: string too); on another interface it warns, in one line, that other hosts
    can reach TARGET through it."""
    proc = startCli("proxy", listen, f"{LOOPBACK}:9")
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.match(r"twisted-alive proxy: listening on ([\d.]+):(\d+),", first)
        assert match is not None, first
        assert match.group(1) == host
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        warning = (
            f"twisted-alive proxy: warning: listening on {host}:{match.group(2)}, reachable "
            f"from other hosts, which can reach {LOOPBACK}:9 through it"
        )
        assert (warning in err.splitlines()) is warned, err
        assert "Traceback" not in err
    finally:
        reap(proc)
