"""
Check whether a TCP endpoint is alive, and whether it speaks twisted_alive.

``twisted-alive probe ENDPOINT`` connects to ENDPOINT and reports one state:
``alive`` (with the connect time), ``refused``, ``connect timeout``,
``reset`` or ``closed by peer`` (it connects, but the peer resets or closes
the connection while the probe watches), or ``connect failed``. The probe
sends a HELLO: if the peer answers with a HELLO it speaks twisted_alive, and
the probe also reports the peer's heartbeat interval and one PING round
trip, then closes with GOODBYE. A peer that answers with other bytes, echoes
the HELLO back, or says nothing within the timeout is plain TCP.

Exit codes:

- 0: alive
- 2: usage error (bad arguments or endpoint string)
- 3: refused
- 4: connect timeout
- 5: reset
- 6: closed by peer
- 7: other connect failure (name lookup, no route...)
"""

from __future__ import annotations

import argparse
import enum
import json
import math
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import Factory

from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Loss, Reason, describeFailure, resetWhileConnecting
from twisted_alive.core.frames import FrameDecoder, FrameError, Hello, Kind

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IAddress,
        IDelayedCall,
        IReactorTime,
        IStreamClientEndpoint,
    )


class ProbeState(enum.Enum):
    """
    What a probe found; the value is the text printed and put in JSON.
    """

    ALIVE = "alive"
    """It connected, and the peer kept the connection open."""
    REFUSED = "refused"
    """The connection attempt was refused: nothing listens there."""
    CONNECT_TIMEOUT = "connect timeout"
    """The connection attempt got no answer within the timeout."""
    RESET = "reset"
    """It connected, then the peer reset the connection."""
    CLOSED = "closed by peer"
    """It connected, then the peer closed the connection."""
    CONNECT_FAILED = "connect failed"
    """The connection attempt failed another way."""

    @property
    def exitCode(self) -> int:
        """The exit code of ``twisted-alive probe`` for this state."""
        return _EXIT_CODES[self]


EXIT_USAGE = 2
"""The exit code of a usage error."""

_EXIT_CODES = {
    ProbeState.ALIVE: 0,
    ProbeState.REFUSED: 3,
    ProbeState.CONNECT_TIMEOUT: 4,
    ProbeState.RESET: 5,
    ProbeState.CLOSED: 6,
    ProbeState.CONNECT_FAILED: 7,
}

OBSERVE = 0.3
"""Seconds after connecting during which a peer that sent bytes other than a
HELLO is still watched, to see whether it closes the connection."""

CLOSE_WAIT = 1.0
"""Seconds the probe waits for its own close to complete before it aborts."""

DEFAULT_TIMEOUT = 5.0
DEFAULT_INTERVAL = 0.1

_HEADER = struct.Struct(">IB")
_MAX_HELLO_LENGTH = 1024  # a HELLO of any version is far smaller
_MAX_GOODBYE_LENGTH = 65536


@dataclass(frozen=True)
class ProbeResult:
    """
    The outcome of one probe.

    :ivar endpoint: the endpoint string probed, as given.
    :ivar state: what was found.
    :ivar connectMs: milliseconds to connect, if it connected.
    :ivar speaksAlive: whether the peer speaks twisted_alive (it answered
        the HELLO with a HELLO, or refused with a GOODBYE).
    :ivar peerInterval: the heartbeat interval in the peer's HELLO, seconds.
    :ivar rttMs: the round trip of one PING, in milliseconds.
    :ivar reason: a sentence saying what happened.
    """

    endpoint: str
    state: ProbeState
    connectMs: float | None = None
    speaksAlive: bool = False
    peerInterval: float | None = None
    rttMs: float | None = None
    reason: str = ""

    def toJSON(self) -> dict[str, object]:
        """
        :returns: the result as a JSON-ready dict with the keys ``endpoint``,
            ``state``, ``connectMs``, ``speaksAlive``, ``peerInterval``,
            ``rttMs`` and ``reason``.
        """
        return {
            "endpoint": self.endpoint,
            "state": self.state.value,
            "connectMs": None if self.connectMs is None else round(self.connectMs, 3),
            "speaksAlive": self.speaksAlive,
            "peerInterval": self.peerInterval,
            "rttMs": None if self.rttMs is None else round(self.rttMs, 3),
            "reason": self.reason,
        }

    def describe(self) -> str:
        """
        :returns: the result as one line for humans.
        """
        line = f"{self.endpoint}: {self.state.value}"
        if self.connectMs is not None:
            line += f" (connected in {_ms(self.connectMs)})"
        if self.state is ProbeState.ALIVE:
            if self.speaksAlive:
                line += "; speaks twisted_alive"
                if self.peerInterval is not None:
                    line += f", heartbeat interval {self.peerInterval:g} s"
                if self.rttMs is not None:
                    return line + f", round trip {_ms(self.rttMs)}"
            else:
                line += "; plain TCP"
        if self.reason:
            line += f": {self.reason}"
        return line


def _ms(value: float) -> str:
    return f"{value:.2f} ms" if value < 100 else f"{value:.0f} ms"


class _Verdict(enum.Enum):
    SPEAKS = "speaks"
    OTHER = "other bytes"
    ECHO = "echo"


class _Watch:
    """
    What the probe saw on its connection; fires `outcome` once it knows.
    """

    def __init__(self, endpoint: str, clock: IReactorTime, timeout: float) -> None:
        self.endpoint = endpoint
        self.clock = clock
        self.timeout = timeout
        self.outcome: Deferred[ProbeResult] = Deferred()
        self.protocol: _ProbeProtocol | None = None
        self.startedAt = time.perf_counter()
        self.connectedAt: float | None = None
        self.connectMs: float | None = None
        self.verdict: _Verdict | None = None
        self.peerInterval: float | None = None
        self.bytesSeen = 0
        self._timers: list[IDelayedCall] = []

    # -- events from the protocol --------------------------------------------

    def connected(self, protocol: _ProbeProtocol) -> None:
        self.protocol = protocol
        self.connectedAt = time.perf_counter()
        self.connectMs = (self.connectedAt - self.startedAt) * 1000
        self._timers.append(self.clock.callLater(self.timeout, self._timedOut))

    def sniffed(self, verdict: _Verdict, peerHello: Hello | None, size: int) -> None:
        self.verdict = verdict
        self.bytesSeen += size
        if peerHello is not None:
            self.peerInterval = peerHello.interval
        if verdict is _Verdict.SPEAKS:
            return
        assert self.connectedAt is not None
        remaining = max(0.0, self.connectedAt + OBSERVE - time.perf_counter())
        if verdict is _Verdict.ECHO:
            reason = "the peer echoed the HELLO back (it does not speak twisted_alive)"
        else:
            reason = f"the peer sent {size} bytes that are not a twisted_alive HELLO"
        self._timers.append(self.clock.callLater(remaining, self._decide, ProbeState.ALIVE, reason))

    def roundTrip(self, rtt: float) -> None:
        self._decide(ProbeState.ALIVE, "the peer answered the HELLO and a PING", rttMs=rtt * 1000)

    def lost(self, loss: Loss) -> None:
        if self.outcome.called:
            return
        after = ""
        if loss.connectedFor is not None:
            after = f"{loss.connectedFor * 1000:.1f} ms after connecting"
        if loss.reason is Reason.RESET:
            self._decide(ProbeState.RESET, f"the peer reset the connection {after}".strip())
        elif loss.goodbye is not None:
            self._decide(ProbeState.CLOSED, f"{loss.detail} ({after})" if after else loss.detail)
        elif loss.reason is Reason.PEER_CLOSED:
            self._decide(ProbeState.CLOSED, f"the peer closed the connection {after}".strip())
        elif loss.reason is Reason.PROTOCOL_ERROR:
            self._decide(ProbeState.ALIVE, f"the peer broke the protocol: {loss.detail}")
        elif loss.reason is Reason.TIMEOUT:
            self._decide(ProbeState.ALIVE, f"the peer went silent: {loss.detail}")
        else:
            self._decide(ProbeState.CLOSED, f"the connection ended: {loss}")

    # -- deciding --------------------------------------------------------------

    def _timedOut(self) -> None:
        if self.verdict is None:
            self._decide(
                ProbeState.ALIVE,
                f"the peer sent nothing within {self.timeout:g} s (no twisted_alive HELLO)",
            )
        elif self.verdict is _Verdict.SPEAKS:
            self._decide(ProbeState.ALIVE, f"no PONG within {self.timeout:g} s")

    def _decide(self, state: ProbeState, reason: str, rttMs: float | None = None) -> None:
        if self.outcome.called:
            return
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        speaks = self.verdict is _Verdict.SPEAKS
        self.outcome.callback(
            ProbeResult(
                endpoint=self.endpoint,
                state=state,
                connectMs=self.connectMs,
                speaksAlive=speaks,
                peerInterval=self.peerInterval if speaks else None,
                rttMs=rttMs,
                reason=reason,
            )
        )


class _ProbeProtocol(HeartbeatProtocol):
    """
    A twisted_alive peer that looks at the first bytes the other side sends
    before it lets the heartbeat machinery see them: a HELLO (or a GOODBYE
    refusing the connection) goes on to the HELLO exchange and a PING; other
    bytes, or our own HELLO echoed back, mean plain TCP, and are ignored.
    """

    # Accept any interval the peer announces: the probe only reports it.
    minPeerInterval = 0.001
    maxPeerInterval = 4_000_000.0
    closeTimeout = CLOSE_WAIT

    def __init__(self, watch: _Watch, interval: float, misses: int) -> None:
        super().__init__()
        self.watch = watch
        self.heartbeatInterval = interval
        self.heartbeatMisses = misses
        self.opened = False
        self._sniffed = b""
        self._verdict: _Verdict | None = None

    def connectionMade(self) -> None:
        """Tell the watch, then send HELLO."""
        self.watch.connected(self)
        super().connectionMade()

    def connectionOpened(self, resumed: bool) -> None:
        """The HELLO exchange completed."""
        self.opened = True

    def dataReceived(self, data: bytes) -> None:
        """Sniff the first frame, then pass bytes on only to a twisted_alive peer."""
        if self._verdict is None:
            self._sniffed += data
            verdict, hello = self._sniff()
            if verdict is None:
                return
            self._verdict = verdict
            data, self._sniffed = self._sniffed, b""
            self.watch.sniffed(verdict, hello, len(data))
            if verdict is not _Verdict.SPEAKS:
                self.setTimeout(None)  # type: ignore[no-untyped-call]  # plain TCP: no deadline
                return
        elif self._verdict is not _Verdict.SPEAKS:
            self.watch.bytesSeen += len(data)
            return
        super().dataReceived(data)
        rtt = self.rtt
        if rtt is not None:
            self.watch.roundTrip(rtt)

    def disconnected(self, loss: Loss) -> None:
        """Tell the watch."""
        self.watch.lost(loss)

    def _sniff(self) -> tuple[_Verdict | None, Hello | None]:
        buffered = self._sniffed
        if len(buffered) < _HEADER.size:
            return None, None
        length, kind = _HEADER.unpack_from(buffered)
        if kind == Kind.GOODBYE and 3 <= length <= _MAX_GOODBYE_LENGTH:
            return _Verdict.SPEAKS, None
        if kind != Kind.HELLO or not 2 <= length <= _MAX_HELLO_LENGTH:
            return _Verdict.OTHER, None
        if len(buffered) < 4 + length:
            return None, None
        try:
            frames = FrameDecoder().feed(buffered[: 4 + length])
        except FrameError:
            # A HELLO of another protocol version, say: the heartbeat
            # machinery answers it with GOODBYE(PROTOCOL_ERROR).
            return _Verdict.SPEAKS, None
        hello = cast(Hello, frames[0])
        if self._isOwn(hello):
            return _Verdict.ECHO, None
        return _Verdict.SPEAKS, hello

    def _isOwn(self, hello: Hello) -> bool:
        conn = self._alive
        return conn is not None and hello.nonce == conn.nonce


class _ProbeFactory(Factory):
    noisy = False

    def __init__(self, watch: _Watch, interval: float, misses: int) -> None:
        self.watch = watch
        self.interval = interval
        self.misses = misses

    def buildProtocol(self, addr: IAddress | None) -> _ProbeProtocol:
        protocol = _ProbeProtocol(self.watch, self.interval, self.misses)
        protocol.factory = self
        protocol.clock = self.watch.clock
        return protocol


async def probeEndpoint(
    endpoint: IStreamClientEndpoint,
    name: str,
    clock: IReactorTime,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
) -> ProbeResult:
    """
    Probe an endpoint once.

    :param endpoint: where to connect.
    :param name: the endpoint's name for the result (the string given).
    :param clock: the reactor, for timers.
    :param timeout: seconds to wait for the connection, then again for the
        peer's HELLO and PONG.
    :param interval: the heartbeat interval this side announces; its PING
        goes out after this much silence.
    :returns: the `ProbeResult`.
    """
    watch = _Watch(name, clock, timeout)
    # The deadline before the peer's HELLO is interval x misses: make it
    # longer than the timeout, which ends the wait first.
    misses = max(3, math.ceil(timeout / interval) + 2)
    factory = _ProbeFactory(watch, interval, misses)
    connecting = endpoint.connect(factory)
    connecting.addTimeout(timeout, clock)
    try:
        await connecting
    except (TimeoutError, CancelledError, ConnectingCancelledError):
        return ProbeResult(
            name, ProbeState.CONNECT_TIMEOUT, reason=f"no answer within {timeout:g} s"
        )
    except Exception as e:
        return _connectFailed(name, e)
    result = await watch.outcome
    await _closeDown(watch, clock)
    return result


def _connectFailed(name: str, error: Exception) -> ProbeResult:
    kind, detail, _ = describeFailure(error, attempt=True)
    detail = detail or type(error).__name__
    if resetWhileConnecting(error):
        return ProbeResult(
            name, ProbeState.RESET, reason="the peer reset the connection as soon as it was made"
        )
    if kind is Reason.REFUSED:
        return ProbeResult(name, ProbeState.REFUSED, reason="connection refused (nothing listens)")
    if kind is Reason.CONNECT_TIMEOUT:
        return ProbeResult(name, ProbeState.CONNECT_TIMEOUT, reason=detail)
    return ProbeResult(name, ProbeState.CONNECT_FAILED, reason=detail)


async def _closeDown(watch: _Watch, clock: IReactorTime) -> None:
    """Close the probe's connection (GOODBYE to a twisted_alive peer, a plain
    close otherwise) and wait, briefly, until it is closed."""
    protocol = watch.protocol
    if protocol is None or protocol.loss is not None:
        return
    lost = protocol.whenLost()
    if watch.verdict is _Verdict.SPEAKS:
        protocol.close()
    else:
        protocol.transport.loseConnection()
    timer = clock.callLater(CLOSE_WAIT, protocol.abort, "the probe's close took too long")
    await lost
    if timer.active():
        timer.cancel()


# -- the subcommand ----------------------------------------------------------------

_EPILOG = """\
ENDPOINT is a Twisted client endpoint string (tcp:host=127.0.0.1:port=9000)
or HOST:PORT for TCP ([::1]:9000 for IPv6).

exit codes:
  0  alive
  2  usage error (bad arguments or endpoint string)
  3  refused
  4  connect timeout
  5  reset (it connected, then the peer reset the connection)
  6  closed by peer (it connected, then the peer closed the connection)
  7  other connect failure (name lookup, no route...)
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, not {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, not {text!r}")
    return value


def _interval(text: str) -> float:
    value = _seconds(text)
    if not 0.001 <= value <= 4_000_000:
        raise argparse.ArgumentTypeError(
            f"expected a heartbeat interval between 0.001 and 4000000 seconds, not {text!r}"
        )
    return value


def addArguments(parser: argparse.ArgumentParser) -> None:
    """
    The arguments of ``probe``.

    :param parser: the subcommand's parser.
    """
    parser.description = (
        "Connect to ENDPOINT and report whether it is alive (with the connect time),\n"
        "refused, timing out, reset or closed by the peer; for a twisted_alive peer,\n"
        "also its heartbeat interval and one PING round trip."
    )
    parser.epilog = _EPILOG
    parser.add_argument("endpoint", metavar="ENDPOINT", help="what to probe")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=(
            "seconds to wait for the connection, then again for the peer's HELLO "
            f"and PONG (default {DEFAULT_TIMEOUT:g})"
        ),
    )
    parser.add_argument(
        "--interval",
        type=_interval,
        default=DEFAULT_INTERVAL,
        metavar="S",
        help=(
            "heartbeat interval announced in the probe's HELLO; its PING goes out "
            f"after this much silence (default {DEFAULT_INTERVAL:g})"
        ),
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of a line"
    )


def run(args: argparse.Namespace) -> int:
    """
    Run ``probe``.

    :param args: the parsed arguments.
    :returns: the exit code.
    """
    from twisted.internet import reactor

    from twisted_alive.tools.cli import EndpointError, clientEndpoint, fail, runReactor

    try:
        endpoint = clientEndpoint(reactor, args.endpoint)
    except EndpointError as e:
        return fail("probe", f'invalid endpoint "{args.endpoint}": {e}', EXIT_USAGE)

    async def main(reactor: Any) -> int:
        result = await probeEndpoint(
            endpoint, args.endpoint, reactor, timeout=args.timeout, interval=args.interval
        )
        if args.json:
            print(json.dumps(result.toJSON()))
        else:
            print(result.describe())
        return result.state.exitCode

    code = runReactor(main, "probe")
    if code == 130:
        fail("probe", "interrupted")
    return code
