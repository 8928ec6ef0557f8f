"""
Show, live on 127.0.0.1, each kind of lost connection classified, reconnection and resumed delivery.

``twisted-alive demo`` needs no arguments. It starts a server
(`AliveServerFactory`, whose application records every message it
receives), a `ChaosProxy` in front of it and a client (`AliveClientFactory`)
that connects through the proxy, all with a heartbeat interval of 0.2 s and
3 misses, so that a silent peer counts as dead after 0.6 s. Then it walks
through six steps, printing a timeline line for each event (elapsed time,
what happened, the classified `Reason`, the round-trip time):

1. confirmed messages: 100 messages, each confirmed by a `Receipt`;
2. a clean close: the server closes with GOODBYE: ``CLEAN_CLOSE``, reconnect;
3. a reset: the proxy resets the connection: ``RESET``, reconnect;
4. a silent peer: the proxy stalls the connection: ``TIMEOUT`` at the 0.6 s
   deadline (by 0.85 s at the latest), reconnect;
5. a crash: a peer process killed with SIGKILL: ``PEER_CLOSED`` (or
   ``RESET``), never ``CLEAN_CLOSE``;
6. reconnect and resume: 2,000 numbered messages while the proxy resets the
   connection every 50 to 200 ms: each processed exactly once, in order.

It ends with a summary table and exits 0 if every step went as expected, 1
otherwise.

With ``--status ENDPOINT`` it also serves the status site of its server
(the operator's page at ``/``) from the start, prints its URL, and keeps it
up after the summary until interrupted (Ctrl-C), so that the page can be
looked at; the exit code is still the steps'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, cast

from twisted.internet.defer import Deferred, DeferredList, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorProcess,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

import twisted_alive
from twisted_alive._factories import AliveClientFactory, AliveServerFactory
from twisted_alive._mixin import HeartbeatMixin, HeartbeatProtocol
from twisted_alive._reasons import Loss, Reason
from twisted_alive.core.frames import GoodbyeCode
from twisted_alive.core.outcomes import Receipt
from twisted_alive.testing.chaos import ChaosProxy

if TYPE_CHECKING:
    from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint

    from twisted_alive.service.status import StatusSite

_T = TypeVar("_T")

LOOPBACK = "127.0.0.1"
INTERVAL = 0.2
"""The heartbeat interval of every side, in seconds."""
MISSES = 3
"""Missed intervals before a silent peer counts as dead."""
DEADLINE = round(INTERVAL * MISSES, 6)
TIMEOUT_SLACK = 0.25
"""How much later than the deadline a TIMEOUT may be detected and still count
as on time (timer granularity, a busy machine)."""

CONFIRM_COUNT = 100
RESUME_COUNT = 2000
RESUME_COUNT_FAST = 500
RESUME_SPAN = 2.0
"""Seconds over which step 6 spreads its messages (so that many resets hit
the stream)."""
RESUME_SPAN_FAST = 0.6
RESET_EVERY = (0.05, 0.2)
"""Step 6 resets the connection after a time drawn in this window, again and
again."""


class _Reactor(IReactorTCP, IReactorTime, IReactorProcess, IReactorCore):
    """The reactor interfaces the demo uses."""


class _Stuck(Exception):
    """Something the demo waited for did not happen in time."""


class CannotListen(Exception):
    """The demo's status site cannot listen where ``--status`` said; the
    message says why."""


# -- the applications ----------------------------------------------------------


class _RecordingServer(HeartbeatProtocol):
    """The server's application: records every message, in the order
    processed."""

    heartbeatInterval = INTERVAL
    heartbeatMisses = MISSES
    factory: _DemoServerFactory

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)


class _DemoServerFactory(AliveServerFactory):
    protocol = _RecordingServer
    noisy = False

    def __init__(self) -> None:
        super().__init__()
        self.received: list[bytes] = []


class _DemoClient(HeartbeatProtocol):
    heartbeatInterval = INTERVAL
    heartbeatMisses = MISSES
    resumed = False


class _DemoClientFactory(AliveClientFactory):
    """A client that reconnects within a fraction of a second, so that the
    demo moves on quickly."""

    protocol = _DemoClient
    noisy = False
    initialDelay = 0.05
    factor = 1.5
    maxDelay = 0.1
    quickDelay = 0.02
    stableAfter = 0.05

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.random = rng.random

    def sessionOpened(self, protocol: object, resumed: bool) -> None:
        """Note on the protocol whether its session was resumed (before the
        factory's C{whenConnected} waiters run)."""
        cast(_DemoClient, protocol).resumed = resumed
        super().sessionOpened(protocol, resumed)


_CRASH_PEER = r"""
import os, sys, threading
from twisted.internet import reactor
from twisted_alive import AliveServerFactory, HeartbeatProtocol

class Peer(HeartbeatProtocol):
    heartbeatInterval = float(sys.argv[1])
    heartbeatMisses = int(sys.argv[2])

def orphaned():
    sys.stdin.read()  # returns when the demo is gone
    os._exit(0)

threading.Thread(target=orphaned, daemon=True).start()
port = reactor.listenTCP(0, AliveServerFactory.forProtocol(Peer), interface="127.0.0.1")
sys.stdout.write("%d\n" % port.getHost().port)
sys.stdout.flush()
reactor.run()
"""


class _CrashPeer(ProcessProtocol):
    """A twisted_alive server in a child process, to be killed with
    SIGKILL."""

    def __init__(self) -> None:
        self.port: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.running = False
        self._out = b""
        self._err = b""

    def connectionMade(self) -> None:
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self._out += data
        if not self.port.called and b"\n" in self._out:
            line = self._out.split(b"\n", 1)[0]
            try:
                self.port.callback(int(line))
            except ValueError:
                self.port.errback(_Stuck(f"the peer process printed {line!r}, not a port"))

    def errReceived(self, data: bytes) -> None:
        self._err = (self._err + data)[-2000:]

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        if not self.port.called:
            text = self._err.decode(errors="replace").strip().splitlines()
            self.port.errback(
                _Stuck(f"the peer process ended before listening: {text[-1] if text else reason}")
            )
        self.ended.callback(None)

    @property
    def pid(self) -> int | None:
        transport = self.transport
        return None if transport is None else transport.pid

    def kill(self) -> None:
        if self.running and self.transport is not None:
            self.transport.signalProcess("KILL")


def _spawnCrashPeer(reactor: _Reactor) -> _CrashPeer:
    peer = _CrashPeer()
    root = os.path.dirname(os.path.dirname(os.path.abspath(twisted_alive.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    reactor.spawnProcess(
        peer,
        sys.executable,
        [sys.executable, "-c", _CRASH_PEER, repr(INTERVAL), str(MISSES)],
        env=env,
    )
    return peer


# -- results ---------------------------------------------------------------------


@dataclass
class StepResult:
    """
    The outcome of one demo step.

    :ivar number: 1 to 6.
    :ivar name: a few words naming the case.
    :ivar expected: what should happen.
    :ivar observed: what happened.
    :ivar ok: whether it happened as expected.
    :ivar details: measurements, for the JSON output.
    """

    number: int
    name: str
    expected: str
    observed: str = "not run"
    ok: bool = False
    details: dict[str, object] = field(default_factory=dict)

    def toJSON(self) -> dict[str, object]:
        """:returns: the result as a JSON-ready dict."""
        return {
            "step": self.number,
            "name": self.name,
            "expected": self.expected,
            "observed": self.observed,
            "ok": self.ok,
            **self.details,
        }


@dataclass(frozen=True)
class TimelineEntry:
    """
    One event of the demo.

    :ivar at: seconds since the demo started.
    :ivar step: the step it belongs to (0 before the first).
    :ivar text: what happened.
    :ivar reason: the classified `Reason` of a loss, if it is one.
    :ivar detail: the loss's detail sentence, if it is one.
    :ivar rttMs: the connection's round-trip time, if known.
    """

    at: float
    step: int
    text: str
    reason: str | None = None
    detail: str | None = None
    rttMs: float | None = None

    def toJSON(self) -> dict[str, object]:
        """:returns: the entry as a JSON-ready dict."""
        return {
            "t": round(self.at, 4),
            "step": self.step,
            "event": self.text,
            "reason": self.reason,
            "detail": self.detail,
            "rttMs": None if self.rttMs is None else round(self.rttMs, 3),
        }

    def line(self) -> str:
        """:returns: the entry as a line of the human timeline."""
        text = f"{self.at:8.3f} s  {self.reason or '':<11}  {self.text}"
        if self.detail:
            text += f": {self.detail}"
        if self.rttMs is not None:
            text += f"  (rtt {self.rttMs:.2f} ms)"
        return text


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def summaryTable(steps: list[StepResult]) -> list[str]:
    """
    The summary of the steps as lines of a plain-text table.

    :param steps: the results.
    :returns: the lines.
    """
    rows = [("step", "case", "expected", "observed", "ok")]
    rows += [
        (str(s.number), s.name, s.expected, s.observed, "yes" if s.ok else "NO") for s in steps
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return [
        "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4]
        for row in rows
    ]


# -- the demo --------------------------------------------------------------------


class Demo:
    """
    The demo: servers, proxy and clients on loopback, and the six steps.

    :param reactor: the reactor (TCP, time and processes).
    :param fast: a shorter run (fewer messages in step 6, no pause to show
        a heartbeat round trip).
    :param seed: the seed of every random draw (proxy, reconnect jitter,
        reset times).
    :param out: where to print the timeline as it happens, or ``None``.
    :param status: where to serve the status site of the server (it stays
        up after `stop`; `stopStatus` ends it), or ``None``.
    """

    def __init__(
        self,
        reactor: Any,
        fast: bool,
        seed: int,
        out: TextIO | None,
        status: IStreamServerEndpoint | None = None,
    ) -> None:
        self.reactor = cast(_Reactor, reactor)
        self.status = status
        self.statusSite: StatusSite | None = None
        self.statusPort: IListeningPort | None = None
        self.statusURL: str | None = None
        self.fast = fast
        self.seed = seed
        self.out = out
        self.rng = random.Random(seed)
        self.timeline: list[TimelineEntry] = []
        self.steps: list[StepResult] = []
        self.step = 0
        self.startedAt = self.reactor.seconds()
        self.server = _DemoServerFactory()
        self.client = _DemoClientFactory(self.rng)
        self.proxy: ChaosProxy | None = None
        self._ports: list[IListeningPort] = []
        self._crashPeer: _CrashPeer | None = None
        self._otherClients: list[AliveClientFactory] = []

    # -- output ------------------------------------------------------------------

    def _print(self, text: str = "") -> None:
        if self.out is not None:
            self.out.write(text + "\n")
            self.out.flush()

    def event(
        self,
        text: str,
        loss: Loss | None = None,
        reason: Reason | None = None,
        rtt: float | None = None,
    ) -> None:
        """Add a timeline line (and print it)."""
        if loss is not None:
            reason = loss.reason
        entry = TimelineEntry(
            at=self.reactor.seconds() - self.startedAt,
            step=self.step,
            text=text,
            reason=None if reason is None else reason.name,
            detail=None if loss is None else loss.detail,
            rttMs=None if rtt is None else rtt * 1000,
        )
        self.timeline.append(entry)
        self._print(entry.line())

    # -- waiting -----------------------------------------------------------------

    async def within(self, d: Deferred[_T], seconds: float, what: str) -> _T:
        """Wait for ``d``, at most ``seconds``.

        :raises _Stuck: if it did not fire in time.
        """
        d.addTimeout(seconds, self.reactor)
        try:
            return await d
        except TimeoutError:
            raise _Stuck(f"no {what} within {seconds:g} s") from None

    async def sleep(self, seconds: float) -> None:
        """Let the reactor run for ``seconds``."""
        await deferLater(self.reactor, seconds, lambda: None)

    async def until(self, test: Callable[[], object], seconds: float) -> bool:
        """Poll ``test`` until it is true, at most ``seconds``.

        :returns: whether it became true.
        """
        end = self.reactor.seconds() + seconds
        while not test():
            if self.reactor.seconds() >= end:
                return False
            await self.sleep(0.01)
        return True

    async def connected(self, client: AliveClientFactory | None = None) -> _DemoClient:
        """The client's connection, once its HELLO exchange is done."""
        client = client or self.client
        protocol = await self.within(client.whenConnected(), 5.0, "connection")
        return cast(_DemoClient, protocol)

    async def settle(self, protocol: HeartbeatMixin) -> None:
        """Give the connection time for one heartbeat round trip, to show its
        RTT (not in a fast run)."""
        if self.fast or protocol.rtt is not None:
            return
        await self.until(
            lambda: protocol.rtt is not None or protocol.loss is not None, 3 * INTERVAL
        )
        if protocol.rtt is not None and protocol.loss is None:
            self.event("heartbeat: PING answered by PONG", rtt=protocol.rtt)

    async def reconnected(self, lostAt: float) -> _DemoClient:
        """Wait for the client to reconnect, and say so."""
        protocol = await self.connected()
        took = self.reactor.seconds() - lostAt
        how = "session resumed" if protocol.resumed else "new session"
        self.event(f"client reconnected after {_ms(took)}, {how}")
        return protocol

    # -- setup and teardown -----------------------------------------------------

    async def start(self) -> None:
        """Start the peer process, the server, the proxy and the client."""
        reactor = self.reactor
        self._crashPeer = _spawnCrashPeer(reactor)
        serverPort = await _listenEndpoint(reactor).listen(self.server)
        self._ports.append(serverPort)
        serverNumber = _portNumber(serverPort)
        self.proxy = ChaosProxy(
            TCP4ClientEndpoint(reactor, LOOPBACK, serverNumber),
            reactor=reactor,
            seed=self.rng.randrange(2**32),
        )
        proxyPort = await self.proxy.listen(_listenEndpoint(reactor))
        proxyNumber = _portNumber(proxyPort)
        if self.statusSite is not None:
            self.statusSite.endpoints[:] = [
                f"tcp:{serverNumber}:interface={LOOPBACK}",
                f"tcp:{proxyNumber}:interface={LOOPBACK} (the chaos proxy)",
            ]
            self.event(f"status page: {self.statusURL} (open it in a browser)")
            if self.out is None:
                sys.stderr.write(f"status page: {self.statusURL}\n")
                sys.stderr.flush()
        self.event(
            f"server on {LOOPBACK}:{serverNumber}, chaos proxy on {LOOPBACK}:{proxyNumber}; "
            "the client connects through the proxy"
        )
        reactor.connectTCP(LOOPBACK, proxyNumber, self.client, timeout=2)
        protocol = await self.connected()
        token = self.client.session.token.hex()[:8]
        self.event(f"client connected, HELLO exchange done, session {token}")
        await self.settle(protocol)

    async def startStatus(self) -> None:
        """
        Serve the server's status site on `status` (if given).

        :raises CannotListen: if it cannot listen there.
        """
        from twisted_alive.service.status import statusSite

        if self.status is None:
            return
        site = self.statusSite = statusSite([self.server], clock=self.reactor)
        try:
            port = self.statusPort = await self.status.listen(site)
        except Exception as e:
            raise CannotListen(str(e)) from None
        address = port.getHost()
        host = getattr(address, "host", None)
        number = getattr(address, "port", None)
        if host is not None and number is not None:
            if host in ("0.0.0.0", "::", ""):
                host = LOOPBACK
            self.statusURL = f"http://{f'[{host}]' if ':' in host else host}:{number}/"
        else:
            self.statusURL = str(address)

    async def stopStatus(self) -> None:
        """Stop serving the status site."""
        port, self.statusPort = self.statusPort, None
        if port is not None:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped

    async def stop(self) -> None:
        """Close everything the demo started, but the status site."""
        for client in [self.client, *self._otherClients]:
            client.stopTrying()
            current = client.connected
            if current is not None and current.loss is None:
                current.abort("the demo is over")
        if self.proxy is not None:
            self.proxy.resetAll()
            await self.proxy.stopListening()
        for port in self._ports:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
        for proto in list(self.server.connections):
            proto.abort("the demo is over")
        peer = self._crashPeer
        if peer is not None and peer.running:
            peer.kill()
            try:
                await self.within(peer.ended, 5.0, "end of the peer process")
            except _Stuck:
                pass
        await self.sleep(0.05)

    # -- the steps ------------------------------------------------------------------

    async def run(self) -> bool:
        """
        Run the demo.

        :returns: whether every step went as expected.
        :raises CannotListen: if the status site cannot listen.
        """
        await self.startStatus()
        self._print("twisted-alive demo: a server, a chaos proxy and a client on 127.0.0.1")
        self._print(
            f"heartbeat every {INTERVAL:g} s, {MISSES} misses: a silent peer counts as dead "
            f"after {DEADLINE:g} s (seed {self.seed})"
        )
        self._print()
        steps: list[tuple[StepResult, Callable[[StepResult], Any]]] = [
            (
                StepResult(
                    1,
                    "confirmed messages",
                    f"{CONFIRM_COUNT} Receipts, processed in order",
                ),
                self.stepConfirmed,
            ),
            (StepResult(2, "clean close", "CLEAN_CLOSE, then reconnect"), self.stepCleanClose),
            (StepResult(3, "reset", "RESET, then reconnect"), self.stepReset),
            (
                StepResult(
                    4,
                    "silent peer",
                    f"TIMEOUT at the {DEADLINE:g} s deadline, by {DEADLINE + TIMEOUT_SLACK:g} s",
                ),
                self.stepSilent,
            ),
            (
                StepResult(5, "crash (SIGKILL)", "PEER_CLOSED or RESET, never CLEAN_CLOSE"),
                self.stepCrash,
            ),
            (
                StepResult(
                    6,
                    "reconnect and resume",
                    f"{self.resumeCount} processed exactly once, in order",
                ),
                self.stepResume,
            ),
        ]
        self.steps = [result for result, _ in steps]
        try:
            await self.start()
            for result, step in steps:
                self.step = result.number
                self._print()
                self._print(f"[{result.number}] {_TITLES[result.number]}")
                try:
                    await step(result)
                except _Stuck as e:
                    result.ok = False
                    result.observed = f"stuck: {e}"
                    self.event(f"stuck: {e}")
            self.step = 0
            self._print()
            self._print("[end] The client closes its session in order")
            await self.finish()
        except _Stuck as e:
            self.event(f"stuck: {e}")
        finally:
            await self.stop()
        return all(s.ok for s in self.steps)

    @property
    def resumeCount(self) -> int:
        """How many messages step 6 sends."""
        return RESUME_COUNT_FAST if self.fast else RESUME_COUNT

    async def stepConfirmed(self, result: StepResult) -> None:
        """Step 1: messages confirmed by the server's application."""
        await self.connected()
        base = len(self.server.received)
        payloads = [b"message %03d" % i for i in range(CONFIRM_COUNT)]
        self.event(f"client sends {CONFIRM_COUNT} messages")
        outcomes = await self.within(
            DeferredList([self.client.sendMessage(p) for p in payloads], consumeErrors=True),
            10.0,
            "confirmation of every message",
        )
        receipts = [value for success, value in outcomes if success]
        latencies = sorted(r.latency for r in receipts)
        median = statistics.median(latencies) if latencies else math.nan
        processed = self.server.received[base:]
        inOrder = processed == payloads
        current = self.client.connected
        self.event(
            f"{len(receipts)} of {CONFIRM_COUNT} confirmed (Receipts), median latency "
            f"{median * 1000:.2f} ms; the server processed {len(processed)}"
            f"{', in order' if inOrder else ', NOT in order'}",
            rtt=None if current is None else current.rtt,
        )
        result.ok = len(receipts) == CONFIRM_COUNT and inOrder
        result.observed = (
            f"{len(receipts)} Receipts, {'in order' if inOrder else 'NOT in order'}, "
            f"median {median * 1000:.2f} ms"
        )
        result.details = {"confirmed": len(receipts), "inOrder": inOrder, "medianMs": median * 1000}

    async def _lose(
        self, result: StepResult, expected: tuple[Reason, ...], action: Callable[[], None]
    ) -> tuple[Loss, float, float]:
        """Do ``action``, wait for the client's loss, show it, wait for the
        reconnect; record the outcome in ``result``."""
        protocol = await self.connected()
        await self.settle(protocol)
        lost = protocol.whenLost()
        started = self.reactor.seconds()
        action()
        loss = await self.within(lost, DEADLINE + 3.0, "loss")
        lostAt = self.reactor.seconds()
        self.event("client lost the connection", loss=loss, rtt=protocol.rtt)
        result.ok = loss.reason in expected
        result.observed = loss.reason.name
        result.details = {"reason": loss.reason.name, "detail": loss.detail}
        return loss, lostAt, lostAt - started

    async def _reconnect(self, result: StepResult, lostAt: float) -> None:
        await self.reconnected(lostAt)
        took = self.reactor.seconds() - lostAt
        result.observed += f", reconnected in {_ms(took)}"
        result.details["reconnectMs"] = took * 1000

    async def stepCleanClose(self, result: StepResult) -> None:
        """Step 2: the server closes its side with GOODBYE."""

        def close() -> None:
            token = self.client.session.token
            sides = [
                p
                for p in self.server.connections
                if p.loss is None and p.session is not None and p.session.token == token
            ]
            if not sides:
                raise _Stuck("server-side connection of the client")
            self.event("server closes the client's connection: close(GOODBYE SHUTTING_DOWN)")
            sides[0].close(GoodbyeCode.SHUTTING_DOWN, "demo step 2")

        _, lostAt, _ = await self._lose(result, (Reason.CLEAN_CLOSE,), close)
        await self._reconnect(result, lostAt)

    async def stepReset(self, result: StepResult) -> None:
        """Step 3: the proxy resets the connection (RST both ways)."""
        proxy = self._proxy()

        def reset() -> None:
            self.event("proxy resets the connection (an RST to both sides)")
            proxy.resetAll()

        _, lostAt, _ = await self._lose(result, (Reason.RESET,), reset)
        await self._reconnect(result, lostAt)

    async def stepSilent(self, result: StepResult) -> None:
        """Step 4: the proxy stalls the connection: nothing passes, nothing
        closes."""
        proxy = self._proxy()
        silentBefore: list[float] = []

        def stall() -> None:
            current = self.client.connected
            heard = None if current is None else current.lastHeard
            if heard is not None:
                silentBefore.append(self.reactor.seconds() - heard)
            self.event("proxy stalls the connection: nothing passes either way, no FIN, no RST")
            proxy.stall(True)

        try:
            loss, lostAt, detected = await self._lose(result, (Reason.TIMEOUT,), stall)
        finally:
            proxy.stall(False)
        onTime = detected <= DEADLINE + TIMEOUT_SLACK
        if silentBefore:
            self.event(
                f"the peer was last heard {silentBefore[0]:.3f} s before the stall: "
                f"{silentBefore[0] + detected:.3f} s of silence in all (deadline {DEADLINE:g} s)"
            )
        self.event(f"detected {detected:.3f} s after the stall; the proxy resumes forwarding")
        result.ok = result.ok and onTime
        result.observed = f"{loss.reason.name} {detected:.2f} s after the stall"
        result.details["detectedAfter"] = detected
        result.details["deadline"] = DEADLINE
        await self._reconnect(result, lostAt)

    async def stepCrash(self, result: StepResult) -> None:
        """Step 5: a peer process killed with SIGKILL."""
        peer = self._crashPeer
        assert peer is not None
        port = await self.within(peer.port, 20.0, "port from the peer process")
        client = _DemoClientFactory(self.rng)
        self._otherClients.append(client)
        self.reactor.connectTCP(LOOPBACK, port, client, timeout=2)
        protocol = await self.connected(client)
        self.event(
            f"client 2 connected straight to a twisted_alive server in process {peer.pid} "
            f"(port {port})"
        )
        await self.settle(protocol)
        lost = protocol.whenLost()
        killedAt = self.reactor.seconds()
        self.event(f"kill -KILL {peer.pid}: the kernel closes its sockets, no GOODBYE")
        peer.kill()
        loss = await self.within(lost, DEADLINE + 3.0, "loss")
        took = self.reactor.seconds() - killedAt
        self.event(f"client 2 lost the connection {_ms(took)} later", loss=loss, rtt=protocol.rtt)
        if await self.until(lambda: client.losses.get(Reason.REFUSED), 2.0):
            self.event(
                "client 2 tried to reconnect: nothing listens there now; it stops trying",
                reason=Reason.REFUSED,
            )
        client.stopTrying()
        result.ok = loss.reason in (Reason.PEER_CLOSED, Reason.RESET)
        result.observed = loss.reason.name
        result.details = {"reason": loss.reason.name, "detail": loss.detail}

    async def stepResume(self, result: StepResult) -> None:
        """Step 6: thousands of messages while the proxy keeps resetting the
        connection."""
        proxy = self._proxy()
        client = self.client
        await self.connected()
        count = self.resumeCount
        span = RESUME_SPAN_FAST if self.fast else RESUME_SPAN
        payloads = [b"resume %05d" % i for i in range(count)]
        base = len(self.server.received)
        connectionsBefore = client.connections
        resetsBefore = proxy.faultsInjected["reset"]
        receipts: list[Receipt | None] = [None] * count
        failures: list[str] = []
        firings = [0] * count
        queuedOffline = 0
        timer: list[IDelayedCall] = []
        started = self.reactor.seconds()

        def resetLater() -> None:
            timer[:] = [self.reactor.callLater(self.rng.uniform(*RESET_EVERY), resetNow)]

        def resetNow() -> None:
            proxy.resetAll()
            resetLater()

        def record(outcome: object, index: int) -> None:
            firings[index] += 1
            if isinstance(outcome, Receipt):
                receipts[index] = outcome
            else:
                failures.append(str(cast(Failure, outcome).value))

        self.event(
            f"client sends {count} numbered messages over {span:g} s; the proxy resets the "
            f"connection every {RESET_EVERY[0] * 1000:.0f} to {RESET_EVERY[1] * 1000:.0f} ms"
        )
        resetLater()
        sent: list[Deferred[Receipt]] = []
        try:
            tick = 0.01
            perTick = max(1, math.ceil(count / (span / tick)))
            index = 0
            while index < count:
                for _ in range(perTick):
                    if index >= count:
                        break
                    if client.connected is None:
                        queuedOffline += 1
                    d = client.sendMessage(payloads[index])
                    d.addBoth(record, index)
                    sent.append(d)
                    index += 1
                await self.sleep(tick)
            await self.within(DeferredList(sent), 30.0, "confirmation of every message")
        finally:
            for call in timer:
                if call.active():
                    call.cancel()
        took = self.reactor.seconds() - started
        resets = proxy.faultsInjected["reset"] - resetsBefore
        used = client.connections - connectionsBefore + 1
        confirmed = sum(1 for r in receipts if r is not None)
        once = all(n == 1 for n in firings)
        seqs = [r.seq for r in receipts if r is not None]
        ordered = all(a < b for a, b in zip(seqs, seqs[1:], strict=False))
        processed = self.server.received[base:]
        exact = processed == payloads
        self.event(
            f"{confirmed} of {count} confirmed in {took:.2f} s over {used} connections "
            f"({resets} resets); {queuedOffline} were sent while disconnected"
        )
        if exact:
            self.event(f"the server processed each of the {count} exactly once, in order")
        else:
            duplicates = len(processed) - len(set(processed))
            missing = len(set(payloads) - set(processed))
            self.event(
                f"the server processed {len(processed)} messages: {missing} missing, "
                f"{duplicates} duplicates, {'in' if processed == sorted(processed) else 'out of'} "
                "order"
            )
        for text in failures[:3]:
            self.event(f"failed: {text}")
        result.ok = confirmed == count and once and ordered and exact and not failures
        result.observed = (
            f"{confirmed} confirmed, "
            + ("exactly once, in order" if exact else "NOT exactly once in order")
            + f", {used} connections"
        )
        result.details = {
            "messages": count,
            "confirmed": confirmed,
            "exactlyOnceInOrder": exact,
            "connections": used,
            "resets": resets,
            "sentWhileDisconnected": queuedOffline,
            "seconds": took,
        }
        await self.connected()

    async def finish(self) -> None:
        """Close the client's session in order; the server sees CLEAN_CLOSE."""
        client = self.client
        protocol = client.connected
        if protocol is None:
            return
        before = self.server.losses.get(Reason.CLEAN_CLOSE, 0)
        self.event("client closes its session: close(GOODBYE NORMAL)")
        await self.within(client.close(), 5.0, "close")
        assert protocol.loss is not None
        self.event("client closed", loss=protocol.loss)
        if await self.until(lambda: self.server.losses.get(Reason.CLEAN_CLOSE, 0) > before, 1.0):
            self.event("server saw the client's GOODBYE", reason=Reason.CLEAN_CLOSE)

    def _proxy(self) -> ChaosProxy:
        assert self.proxy is not None
        return self.proxy

    # -- the report ---------------------------------------------------------------

    def report(self, ok: bool, seconds: float) -> dict[str, object]:
        """
        The whole outcome as a JSON-ready dict.

        :param ok: whether every step went as expected.
        :param seconds: how long the demo took.
        """
        return {
            "ok": ok,
            "seconds": round(seconds, 3),
            "seed": self.seed,
            "interval": INTERVAL,
            "misses": MISSES,
            "deadline": DEADLINE,
            "fast": self.fast,
            "steps": [s.toJSON() for s in self.steps],
            "timeline": [e.toJSON() for e in self.timeline],
            "losses": {
                "client": {r.name: n for r, n in self.client.losses.items()},
                "server": {r.name: n for r, n in self.server.losses.items()},
            },
        }


_TITLES = {
    1: f"Confirmed messages: send {CONFIRM_COUNT}, each confirmed by the server's application",
    2: "A clean close: the server closes the connection with GOODBYE",
    3: "A reset: the proxy resets the connection",
    4: "A silent peer: the proxy stalls the connection (a dead host, a partition)",
    5: "A crash: a peer process killed with SIGKILL",
    6: "Reconnect and resume: messages keep flowing while the proxy resets the connection",
}


def _portNumber(port: IListeningPort) -> int:
    return cast(int, port.getHost().port)  # type: ignore[attr-defined]


def _listenEndpoint(reactor: _Reactor) -> IStreamServerEndpoint:
    endpoint = cast("Callable[..., IStreamServerEndpoint]", TCP4ServerEndpoint)
    return endpoint(reactor, 0, interface=LOOPBACK)


async def runDemo(
    reactor: Any,
    fast: bool,
    seed: int,
    out: TextIO | None,
    status: IStreamServerEndpoint | None = None,
    linger: Callable[[dict[str, object]], Deferred[None]] | None = None,
) -> dict[str, object]:
    """
    Run the demo once.

    :param reactor: the reactor (TCP, time and processes).
    :param fast: a shorter run.
    :param seed: the seed of every random draw.
    :param out: where to print the timeline and summary as they happen, or
        ``None``.
    :param status: where to serve the server's status site, or ``None``.
    :param linger: with ``status``: called with the report once the demo is
        over; the status site stays up until the Deferred it returns fires.
    :returns: the report (see `Demo.report`); its ``ok`` says whether every
        step went as expected.
    """
    demo = Demo(reactor, fast, seed, out, status)
    try:
        return await _runAndReport(demo, out, linger)
    finally:
        await demo.stopStatus()


async def _runAndReport(
    demo: Demo,
    out: TextIO | None,
    linger: Callable[[dict[str, object]], Deferred[None]] | None,
) -> dict[str, object]:
    seed = demo.seed
    ok = await demo.run()
    seconds = demo.reactor.seconds() - demo.startedAt
    if out is not None:
        out.write("\nSummary\n")
        for line in summaryTable(demo.steps):
            out.write(line + "\n")
        passed = sum(1 for s in demo.steps if s.ok)
        out.write(
            f"\n{passed} of {len(demo.steps)} steps ok in {seconds:.2f} s (seed {seed}); "
            + ("every loss was classified as expected\n" if ok else "SOME STEPS FAILED\n")
        )
        out.flush()
    report = demo.report(ok, seconds)
    if demo.statusURL is not None and linger is not None:
        await linger(report)
    return report


# -- the subcommand ----------------------------------------------------------------

_EPILOG = """\
steps:
  1  confirmed messages     100 messages, each confirmed by a Receipt
  2  clean close            the server closes with GOODBYE: CLEAN_CLOSE
  3  reset                  the proxy resets the connection: RESET
  4  silent peer            the proxy stalls the connection: TIMEOUT in 0.6 s
  5  crash                  a peer process killed with SIGKILL: PEER_CLOSED
  6  reconnect and resume   2,000 messages while the proxy resets the
                            connection: each processed exactly once, in order

exit codes:
  0  every step went as expected
  1  some step did not
  2  usage error
"""


def addArguments(parser: argparse.ArgumentParser) -> None:
    """
    Add the options of ``demo``: its output (timeline or JSON), its length,
    its seed and the status page.

    :param parser: the subcommand's parser.
    """
    from twisted_alive.tools.cli import describe

    describe(
        parser,
        "Start a server, a fault-injecting proxy and a client on 127.0.0.1, and show\n"
        "each kind of lost connection classified, reconnection, and resumed delivery\n"
        "with nothing lost or duplicated.",
        _EPILOG,
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document at the end instead of the timeline",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help=(
            f"a shorter run: {RESUME_COUNT_FAST} messages in step 6 instead of "
            f"{RESUME_COUNT}, no pause to show heartbeat round trips"
        ),
    )
    parser.add_argument(
        "--seed",
        type=int,
        metavar="N",
        help="seed of the random draws (printed by every run), to replay a run",
    )
    parser.add_argument(
        "--status",
        metavar="ENDPOINT",
        help=(
            "serve the server's status page there (PORT or HOST:PORT, on 127.0.0.1 "
            "by default, or an endpoint string) and print its URL; the page stays up "
            "after the summary until Ctrl-C"
        ),
    )


def run(args: argparse.Namespace) -> int:
    """
    Run ``demo``.

    :param args: the parsed arguments.
    :returns: the exit code.
    """
    from twisted_alive.tools.cli import EndpointError, fail, runReactor, serverEndpoint

    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    status: IStreamServerEndpoint | None = None
    if args.status is not None:
        from twisted.internet import reactor

        try:
            status = serverEndpoint(reactor, args.status)
        except EndpointError as e:
            return fail("demo", f'invalid --status endpoint "{args.status}": {e}')
    finished: list[dict[str, object]] = []

    def linger(report: dict[str, object]) -> Deferred[None]:
        # The report is out; the page stays up until Ctrl-C stops the
        # reactor (then the exit code is still the steps').
        finished.append(report)
        if args.json:
            print(json.dumps(report, indent=2), flush=True)
        stream = sys.stderr if args.json else sys.stdout
        stream.write("\nThe status page stays up; press Ctrl-C to end.\n")
        stream.flush()
        return Deferred()

    async def main(reactor: Any) -> int:
        try:
            report = await runDemo(
                reactor, args.fast, seed, None if args.json else sys.stdout, status, linger
            )
        except CannotListen as e:
            return fail("demo", f'cannot listen on "{args.status}": {e}', 1)
        if args.json and not finished:
            print(json.dumps(report, indent=2))
        return 0 if report["ok"] else 1

    code = runReactor(main, "demo")
    if code == 130:
        if finished:
            return 0 if finished[0]["ok"] else 1
        fail("demo", "interrupted")
    return code
