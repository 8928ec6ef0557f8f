"""
A fault-injecting TCP proxy: `ChaosProxy`, `Faults` and `parseFaults`.

The proxy sits between a client and a target over real sockets and forwards
bytes both ways; given several targets, it sends each new connection to one
of them drawn at random, as a TCP load balancer does. From code, at any
moment, it can reset connections (a real RST), close them (a FIN), stall
them (a black hole: nothing passes and nothing closes, as with a dead host
or a network partition), half-close them, delay and fragment the traffic,
and refuse new connections. `Faults` describes faults that every new
connection gets by itself (reset, stall or close after a random time or a
number of bytes), drawn from a seeded ``random.Random`` so that a failing
run can be replayed with the same seed.

Without faults the proxy is faithful: bytes pass unchanged and in order, a
half-close on one side becomes a half-close on the other, a FIN becomes a FIN
and a reset becomes a reset. Flow control is end to end: each transport is
the streaming producer of the other, so a slow reader pauses a fast writer
and the proxy never buffers without limit.
"""

from __future__ import annotations

import enum
import math
import random
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, cast

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    gatherResults,
    maybeDeferred,
    succeed,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IListeningPort,
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ISystemHandle,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

_log = Logger()

Window = tuple[float, float]
"""A time window in seconds, ``(low, high)``: a delay is drawn uniformly in it."""

Fragment = int | tuple[int, int]
"""A piece size in bytes, or a ``(low, high)`` range to draw each size from."""


class Direction(enum.Enum):
    """
    Which way bytes travel through the proxy.
    """

    TO_TARGET = "to target"
    """From the client that connected to the proxy, to the target."""

    TO_CLIENT = "to client"
    """From the target, back to the client."""


FAULT_KINDS = ("reset", "close", "stall", "half-close", "refuse")
"""The keys of `ChaosProxy.faultsInjected`."""


def _isNumber(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checkSeconds(name: str, value: float) -> None:
    if not (_isNumber(value) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}")


def _checkWindow(name: str, value: Window | None) -> None:
    if value is None:
        return
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and all(_isNumber(v) and math.isfinite(v) for v in value)
        and 0 <= value[0] <= value[1]
    ):
        raise ValueError(f"{name} must be (MIN, MAX) seconds with 0 <= MIN <= MAX, not {value!r}")


def _isCount(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _checkCount(name: str, value: int | None) -> None:
    if not (value is None or _isCount(value)):
        raise ValueError(f"{name} must be a whole number of bytes >= 1, not {value!r}")


def _checkFragment(name: str, value: Fragment | None) -> None:
    if value is None or _isCount(value):
        return
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and all(_isCount(v) for v in value)
        and value[0] <= value[1]
    ):
        raise ValueError(
            f"{name} must be a size in bytes >= 1 or (MIN, MAX) with 1 <= MIN <= MAX, not {value!r}"
        )


@dataclass(frozen=True)
class Faults:
    """
    Faults that the proxy injects by itself into every new connection.

    Times are counted from the moment the proxy accepts the connection; each
    connection draws its own time uniformly in the window, from the proxy's
    seeded random generator. Byte counts are the bytes forwarded by that
    connection, both directions added.

    :ivar resetAfter: reset the connection (RST to both sides) after a time
        drawn in this window, e.g. ``(0.03, 0.2)``.
    :ivar resetAfterBytes: reset the connection once it has forwarded this
        many bytes. Bytes still in the proxy's send buffers at that moment are
        discarded, as with any RST.
    :ivar stallAfter: stall the connection (see `ChaosProxy.stall`) after a
        time drawn in this window.
    :ivar stallAfterBytes: stall the connection once it has forwarded exactly
        this many bytes.
    :ivar closeAfter: close the connection (FIN to both sides) after a time
        drawn in this window.
    :ivar delay: hold every chunk of bytes this many seconds before
        forwarding it (order is kept).
    :ivar fragment: forward in pieces of at most this many bytes, each its own
        write on the transport, one per reactor iteration; a ``(MIN, MAX)``
        range draws the size of each piece in it.
    :ivar seed: the seed of the random generator, if the faults carry one
        (`parseFaults` reads it from ``seed=N``).
    """

    resetAfter: Window | None = None
    resetAfterBytes: int | None = None
    stallAfter: Window | None = None
    stallAfterBytes: int | None = None
    closeAfter: Window | None = None
    delay: float = 0.0
    fragment: Fragment | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        _checkWindow("resetAfter", self.resetAfter)
        _checkCount("resetAfterBytes", self.resetAfterBytes)
        _checkWindow("stallAfter", self.stallAfter)
        _checkCount("stallAfterBytes", self.stallAfterBytes)
        _checkWindow("closeAfter", self.closeAfter)
        _checkSeconds("delay", self.delay)
        _checkFragment("fragment", self.fragment)
        if self.seed is not None and (
            not isinstance(self.seed, int) or isinstance(self.seed, bool)
        ):
            raise ValueError(f"seed must be a whole number, not {self.seed!r}")

    def toSpec(self) -> str:
        """
        Write these faults in the syntax that `parseFaults` reads.

        :returns: a spec such as ``"delay=0.01,fragment=1,reset-after=0.03..0.2"``,
            or ``""`` when there is no fault.
        """
        items: list[str] = []
        for key, (attribute, _, _) in sorted(_SPEC.items()):
            value = getattr(self, attribute)
            if value is None or (attribute == "delay" and value == 0):
                continue
            items.append(f"{key}={_formatValue(value)}")
        return ",".join(items)


def _formatValue(value: object) -> str:
    if isinstance(value, tuple):
        low, high = value
        if low == high:
            return _formatValue(low)
        return f"{_formatValue(low)}..{_formatValue(high)}"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parseNumber(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(text)
    return number


def _parseWindow(text: str) -> Window:
    low, _, high = text.partition("..")
    window = (_parseNumber(low), _parseNumber(high or low))
    if not 0 <= window[0] <= window[1]:
        raise ValueError(text)
    return window


def _parseSeconds(text: str) -> float:
    seconds = _parseNumber(text)
    if seconds < 0:
        raise ValueError(text)
    return seconds


def _parseCount(text: str) -> int:
    count = int(text)
    if count < 1:
        raise ValueError(text)
    return count


def _parseFragment(text: str) -> Fragment:
    low, _, high = text.partition("..")
    sizes = (_parseCount(low), _parseCount(high or low))
    if sizes[0] > sizes[1]:
        raise ValueError(text)
    return sizes[0] if sizes[0] == sizes[1] else sizes


_WINDOW = "SECONDS or MIN..MAX seconds with 0 <= MIN <= MAX"
_COUNT = "a whole number of bytes >= 1"

_FRAGMENT = "a size in bytes >= 1 or MIN..MAX with 1 <= MIN <= MAX"

# spec key -> (Faults attribute, parser, what a good value looks like)
_SPEC: dict[str, tuple[str, Callable[[str], object], str]] = {
    "close-after": ("closeAfter", _parseWindow, _WINDOW),
    "delay": ("delay", _parseSeconds, "a number of seconds >= 0"),
    "fragment": ("fragment", _parseFragment, _FRAGMENT),
    "reset-after": ("resetAfter", _parseWindow, _WINDOW),
    "reset-after-bytes": ("resetAfterBytes", _parseCount, _COUNT),
    "seed": ("seed", int, "a whole number"),
    "stall-after": ("stallAfter", _parseWindow, _WINDOW),
    "stall-after-bytes": ("stallAfterBytes", _parseCount, _COUNT),
}


def parseFaults(spec: str) -> Faults:
    """
    Read faults from a command-line spec.

    The spec is a comma-separated list of ``name=value``; blank items are
    ignored. Names: ``reset-after``, ``stall-after`` and ``close-after`` take
    seconds (``0.1``) or a window (``0.03..0.2``); ``reset-after-bytes`` and
    ``stall-after-bytes`` take a byte count; ``delay`` takes seconds;
    ``fragment`` takes a size in bytes (``1``) or a range (``1..1000``);
    ``seed`` takes a whole number. Example:
    ``"reset-after=0.03..0.2,fragment=1,delay=0.01,stall-after-bytes=5000,seed=7"``.

    :param spec: the spec.
    :returns: the `Faults`.
    :raises ValueError: for an unknown name, an item without ``=``, a name
        given twice or a bad value; the message names the culprit.
    """
    values: dict[str, object] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        key, equals, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if key not in _SPEC:
            known = ", ".join(sorted(_SPEC))
            raise ValueError(f'unknown fault "{key}" (known: {known})')
        if not equals:
            raise ValueError(f'fault "{key}" has no value (write {key}=VALUE)')
        attribute, parse, expected = _SPEC[key]
        if attribute in values:
            raise ValueError(f'fault "{key}" is given twice')
        try:
            values[attribute] = parse(text)
        except ValueError:
            raise ValueError(f'bad value "{text}" for {key}: expected {expected}') from None
    return Faults(**values)  # type: ignore[arg-type]


class _Transport(ITCPTransport, IConsumer, IPushProducer, ISystemHandle):
    """
    What the proxy uses of a TCP transport (``twisted.internet.tcp``'s provide
    all of it).
    """


class _Role(enum.Enum):
    CLIENT = "client"
    TARGET = "target"


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """
    One of the two connections of a `ProxiedConnection`.
    """

    def __init__(self, proxy: ChaosProxy, role: _Role, pair: ProxiedConnection | None) -> None:
        self.proxy = proxy
        self.role = role
        self.pair = pair
        self.gone = False

    @property
    def tcp(self) -> _Transport:
        return cast(_Transport, self.transport)

    @property
    def live(self) -> bool:
        return self.transport is not None and not self.gone

    def connectionMade(self) -> None:
        try:
            self.tcp.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass
        if self.pair is None:
            self.pair = self.proxy._accepted(self)
        else:
            self.pair._targetConnected(self)

    def dataReceived(self, data: bytes) -> None:
        assert self.pair is not None
        self.pair._flowFrom(self).received(data)

    def readConnectionLost(self) -> None:
        assert self.pair is not None
        self.pair._readEnded(self)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        if self.pair is not None:
            self.pair._sideLost(self, reason)


class _ClientFactory(Factory[_Side]):
    def __init__(self, proxy: ChaosProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: IAddress | None) -> _Side | None:
        if not self.proxy._accepting:
            self.proxy._refused(addr)
            return None
        return _Side(self.proxy, _Role.CLIENT, None)


class _TargetFactory(Factory[_Side]):
    noisy = False

    def __init__(self, pair: ProxiedConnection) -> None:
        self.pair = pair

    def buildProtocol(self, addr: IAddress | None) -> _Side:
        return _Side(self.pair.proxy, _Role.TARGET, self.pair)


@implementer(IPushProducer)
class _Flow:
    """
    The bytes of one direction of a `ProxiedConnection`: a queue (for
    delays, fragments and stalls) between a source side and a sink side.
    Registered as the streaming producer of the sink's transport, so a full
    sink pauses reading from the source.
    """

    def __init__(self, pair: ProxiedConnection, direction: Direction) -> None:
        self.pair = pair
        self.direction = direction
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.sinkFull = False
        self.queueFull = False
        self.sourceEnded = False
        self.sinkShut = False
        self.discarding = False
        self.timer: IDelayedCall | None = None

    @property
    def source(self) -> _Side | None:
        if self.direction is Direction.TO_TARGET:
            return self.pair.clientSide
        return self.pair.targetSide

    @property
    def sink(self) -> _Side | None:
        if self.direction is Direction.TO_TARGET:
            return self.pair.targetSide
        return self.pair.clientSide

    @property
    def done(self) -> bool:
        return self.sourceEnded and self.sinkShut

    # IPushProducer, called by the sink's transport.
    def pauseProducing(self) -> None:
        self.sinkFull = True
        self.applyReading()

    def resumeProducing(self) -> None:
        self.sinkFull = False
        self.pump()
        self.applyReading()

    def stopProducing(self) -> None:
        pass

    def applyReading(self) -> None:
        """
        Read from the source unless something holds this flow back.
        """
        source = self.source
        if source is None or not source.live or self.sourceEnded or self.pair._ending:
            return
        sink = self.sink
        if (
            self.pair.stalled
            or self.sinkFull
            or self.queueFull
            or (sink is None and not self.discarding)
        ):
            source.tcp.pauseProducing()
        else:
            source.tcp.resumeProducing()

    def received(self, data: bytes) -> None:
        pair = self.pair
        if self.discarding or pair._ending:
            return
        release = pair.proxy._clock.seconds() + pair.delay
        if self.queue:
            release = max(release, self.queue[-1][0])
        self.queue.append((release, data))
        self.queued += len(data)
        if self.queued > pair.proxy.queueLimit:
            self.queueFull = True
            self.applyReading()
        self.pump()

    def clear(self) -> None:
        self.queue.clear()
        self.queued = 0
        if self.timer is not None:
            if self.timer.active():
                self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        self.pump()

    def pump(self) -> None:
        """
        Forward what is due, then restart reading or end the flow if it can.
        """
        if self.timer is None:
            self._writeDue()
        pair = self.pair
        if self.queueFull and self.queued <= pair.proxy.queueLimit // 4:
            self.queueFull = False
            self.applyReading()
        if self.sourceEnded and not self.queue and not self.sinkShut and not pair._ending:
            pair._flowDrained(self)

    def _writeDue(self) -> None:
        pair = self.pair
        clock = pair.proxy._clock
        while self.queue:
            sink = self.sink
            if pair.stalled or self.sinkFull or pair._ending or sink is None or not sink.live:
                return
            release, chunk = self.queue[0]
            wait = release - clock.seconds()
            if wait > 0:
                self.timer = clock.callLater(wait, self._fire)
                return
            size = len(chunk)
            piece = pair._pieceSize()
            if piece is not None:
                size = min(size, piece)
            limit = pair._bytesBeforeFault()
            if limit is not None:
                size = min(size, limit)
            if size < len(chunk):
                self.queue[0] = (release, chunk[size:])
            else:
                self.queue.popleft()
            self.queued -= size
            pair._forward(self, sink, chunk[:size])
            if piece is not None and self.queue:
                self.timer = clock.callLater(0, self._fire)
                return


class ProxiedConnection:
    """
    One client connection through a `ChaosProxy` and its connection to the
    target. Its methods act on this connection alone; those of
    `ChaosProxy` act on all of them.

    :ivar proxy: the `ChaosProxy`.
    :ivar number: 1 for the first connection the proxy accepted, and so on.
    :ivar clientAddress: the address of the client.
    :ivar target: the index in `ChaosProxy.targets` of the target this
        connection is forwarded to (``0`` when the proxy has one target).
    :ivar targetEndpoint: that target's endpoint.
    :ivar acceptedAt: the reactor time when the proxy accepted it.
    :ivar endedAt: the reactor time when both sides were gone, or ``None``.
    :ivar resetAfter: seconds after acceptance when `Faults.resetAfter`
        resets it (drawn from the seed), or ``None``.
    :ivar stallAfter: same for `Faults.stallAfter`.
    :ivar closeAfter: same for `Faults.closeAfter`.
    :ivar delay: the current delay in seconds (see `setDelay`).
    :ivar fragment: the current fragment size (see `setFragment`).
    :ivar stalled: whether it is stalled now.
    :ivar bytesForwarded: bytes forwarded, by `Direction`.
    """

    def __init__(
        self,
        proxy: ChaosProxy,
        number: int,
        clientSide: _Side,
        rng: random.Random,
    ) -> None:
        faults = proxy.faults
        self.proxy = proxy
        self.number = number
        self.clientSide = clientSide
        self.targetSide: _Side | None = None
        self.clientAddress = clientSide.tcp.getPeer()
        self.acceptedAt = proxy._clock.seconds()
        self.endedAt: float | None = None
        # Always four draws, in this order, whatever faults are set: a seed
        # gives the same reset times with or without other faults.
        self.resetAfter = _draw(rng.random(), faults.resetAfter)
        self.stallAfter = _draw(rng.random(), faults.stallAfter)
        self.closeAfter = _draw(rng.random(), faults.closeAfter)
        self._random = random.Random(rng.getrandbits(64))
        # One more draw only with several targets: with one, a seed gives
        # the same faults as before targets could be several.
        targets = proxy.targets
        self.target = rng.randrange(len(targets)) if len(targets) > 1 else 0
        self.targetEndpoint = targets[self.target]
        self.delay = proxy._delay
        self.fragment = proxy._fragment
        self.stalled = proxy._stalled
        self.bytesForwarded = {direction: 0 for direction in Direction}
        self._stallBytesDone = False
        self._ending: Literal["close", "reset"] | None = None
        self._ended = False
        self._connecting: Deferred[IProtocol] | None = None
        self._waiters: list[Deferred[None]] = []
        self._flows = {direction: _Flow(self, direction) for direction in Direction}
        self._timers: list[IDelayedCall] = []
        clock = proxy._clock
        for after, action in (
            (self.resetAfter, self.reset),
            (self.stallAfter, self.stall),
            (self.closeAfter, self.close),
        ):
            if after is not None:
                self._timers.append(clock.callLater(after, action))

    def __repr__(self) -> str:
        return f"<ProxiedConnection #{self.number}>"

    @property
    def bytesHeld(self) -> dict[Direction, int]:
        """
        Bytes the proxy holds now (read from one side, not yet written to the
        other), by `Direction`; at most about `ChaosProxy.queueLimit` plus
        one read each.
        """
        return {direction: flow.queued for direction, flow in self._flows.items()}

    # -- controls -----------------------------------------------------------

    def reset(self) -> None:
        """
        Reset both sides: each gets an RST (``SO_LINGER`` 0 and an abort), so
        Twisted reports ``ConnectionLost`` to the peers. Bytes that the proxy
        holds or has not yet sent are discarded.
        """
        if self._ended or self._ending == "reset":
            return
        self._inject("reset")
        self._resetSides()

    def close(self) -> None:
        """
        Close both sides cleanly: each gets a FIN, so Twisted reports
        ``ConnectionDone`` to the peers. Bytes already written to a transport
        are sent first; bytes the proxy still holds (delay, fragments,
        stall) are discarded.

        A side that sent bytes the proxy has not read yet (while stalled,
        say) gets an RST instead: the kernel sends one when a socket is
        closed with unread data.
        """
        if self._ended or self._ending is not None:
            return
        self._inject("close")
        self._closeSides()

    def stall(self, stalled: bool = True) -> None:
        """
        Stall or resume this connection.

        While stalled the proxy forwards nothing in either direction and
        stops reading from both sides, so their senders fill their buffers
        and stop, as with a dead host or a network partition. Neither side
        gets a FIN or an RST. Bytes already read are held, not dropped, and
        are forwarded in order on resume; bytes already written to a
        transport before the stall still go out.

        :param stalled: ``True`` to stall, ``False`` to resume.
        """
        if self._ended or self._ending or stalled == self.stalled:
            return
        self.stalled = stalled
        if stalled:
            self._inject("stall")
        for flow in self._flows.values():
            flow.applyReading()
            if not stalled:
                flow.pump()

    def halfClose(self) -> None:
        """
        Shut the write side towards the client: the client reads an end of
        file (a FIN) but can still send to the target. What the target sends
        from then on is read and discarded.
        """
        flow = self._flows[Direction.TO_CLIENT]
        if self._ended or self._ending or flow.sinkShut:
            return
        self._inject("half-close")
        flow.discarding = True
        flow.clear()
        flow.sinkShut = True
        if self.clientSide.live:
            self.clientSide.tcp.unregisterProducer()
            self.clientSide.tcp.loseWriteConnection()
        flow.applyReading()
        if self._allDone():
            self._closeSides()

    def setDelay(self, seconds: float) -> None:
        """
        Hold each chunk of bytes read from now on this many seconds before
        forwarding it. Order is kept: a chunk never overtakes an earlier one.

        :param seconds: the delay, ``0`` for none.
        :raises ValueError: if ``seconds`` is negative or not finite.
        """
        _checkSeconds("delay", seconds)
        self.delay = seconds

    def setFragment(self, size: Fragment | None) -> None:
        """
        Forward in pieces of at most ``size`` bytes, each its own write on the
        transport, one per reactor iteration (and ``TCP_NODELAY`` is set, so
        each goes out in its own segment).

        :param size: the piece size; a ``(MIN, MAX)`` tuple draws each piece's
            size in that range from the seed; ``None`` to stop fragmenting.
        :raises ValueError: for a size below 1 or a bad range.
        """
        _checkFragment("fragment", size)
        self.fragment = size

    def whenEnded(self) -> Deferred[None]:
        """
        :returns: a `Deferred` that fires when both sides of this connection
            are gone (at once if they are).
        """
        if self._ended:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    # -- internals ----------------------------------------------------------

    def _inject(self, kind: str) -> None:
        self.proxy.faultsInjected[kind] += 1
        _log.info(
            "chaos proxy: {fault} on connection {connection}",
            fault=kind,
            connection=self.number,
        )

    def _sides(self) -> Iterator[_Side]:
        for side in (self.clientSide, self.targetSide):
            if side is not None and side.live:
                yield side

    def _flowFrom(self, side: _Side) -> _Flow:
        if side.role is _Role.CLIENT:
            return self._flows[Direction.TO_TARGET]
        return self._flows[Direction.TO_CLIENT]

    def _flowTo(self, side: _Side) -> _Flow:
        if side.role is _Role.CLIENT:
            return self._flows[Direction.TO_CLIENT]
        return self._flows[Direction.TO_TARGET]

    def _pieceSize(self) -> int | None:
        if self.fragment is None:
            return None
        if isinstance(self.fragment, tuple):
            return self._random.randint(*self.fragment)
        return self.fragment

    def _totalForwarded(self) -> int:
        return sum(self.bytesForwarded.values())

    def _bytesBeforeFault(self) -> int | None:
        faults = self.proxy.faults
        total = self._totalForwarded()
        limits = []
        if faults.resetAfterBytes is not None:
            limits.append(faults.resetAfterBytes - total)
        if faults.stallAfterBytes is not None and not self._stallBytesDone:
            limits.append(faults.stallAfterBytes - total)
        return max(1, min(limits)) if limits else None

    def _forward(self, flow: _Flow, sink: _Side, data: bytes) -> None:
        sink.tcp.write(data)
        self.bytesForwarded[flow.direction] += len(data)
        self.proxy.bytesForwarded[flow.direction] += len(data)
        faults = self.proxy.faults
        total = self._totalForwarded()
        if faults.resetAfterBytes is not None and total >= faults.resetAfterBytes:
            self.reset()
        elif (
            faults.stallAfterBytes is not None
            and not self._stallBytesDone
            and total >= faults.stallAfterBytes
        ):
            self._stallBytesDone = True
            self.stall(True)

    def _targetConnected(self, side: _Side) -> None:
        self.targetSide = side
        self._connecting = None
        if self._ending == "reset":
            _abort(side)
            return
        if self._ending == "close":
            side.tcp.loseConnection()
            return
        self.proxy.connectionsProxied += 1
        for flow in self._flows.values():
            sink = flow.sink
            if sink is not None and sink.live and not flow.sinkShut:
                sink.tcp.registerProducer(flow, True)
        for flow in self._flows.values():
            flow.applyReading()
            flow.pump()

    def _connectDone(self, protocol: IProtocol) -> None:
        self._connecting = None

    def _targetFailed(self, reason: Failure) -> None:
        self._connecting = None
        if not (isinstance(reason.value, CancelledError) or self._ending):
            _log.failure(
                "chaos proxy: connection {connection} could not reach the target",
                reason,
                connection=self.number,
            )
            self._resetSides()
        self._maybeEnd()

    def _readEnded(self, side: _Side) -> None:
        flow = self._flowFrom(side)
        flow.sourceEnded = True
        flow.pump()
        if self._allDone():
            self._closeSides()

    def _flowDrained(self, flow: _Flow) -> None:
        flow.sinkShut = True
        if self._allDone():
            self._closeSides()
            return
        sink = flow.sink
        if sink is not None and sink.live:
            sink.tcp.unregisterProducer()
            sink.tcp.loseWriteConnection()

    def _allDone(self) -> bool:
        return all(flow.done for flow in self._flows.values())

    def _sideLost(self, side: _Side, reason: Failure) -> None:
        if self._ending is None:
            if isinstance(reason.value, ConnectionDone):
                # The peer is gone after a clean close: deliver what it sent,
                # then close the other side.
                towards = self._flowTo(side)
                towards.clear()
                towards.discarding = towards.sourceEnded = towards.sinkShut = True
                self._readEnded(side)
            else:
                self._resetSides()
        self._maybeEnd()

    def _stopAll(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        for flow in self._flows.values():
            flow.clear()
        if self._connecting is not None:
            self._connecting.cancel()

    def _closeSides(self) -> None:
        if self._ending is not None:
            return
        self._ending = "close"
        self._stopAll()
        for side in self._sides():
            side.tcp.unregisterProducer()
            side.tcp.loseConnection()

    def _resetSides(self) -> None:
        self._ending = "reset"
        self._stopAll()
        for side in self._sides():
            _abort(side)

    def _maybeEnd(self) -> None:
        if self._ended or self.clientSide.live or self._connecting is not None:
            return
        if self.targetSide is not None and self.targetSide.live:
            return
        self._ended = True
        self.endedAt = self.proxy._clock.seconds()
        self._stopAll()
        self.proxy._ended(self)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _draw(unit: float, window: Window | None) -> float | None:
    if window is None:
        return None
    low, high = window
    return low + unit * (high - low)


def _abort(side: _Side) -> None:
    """
    Abort a side's connection so that its peer gets an RST.
    """
    try:
        cast(socket.socket, side.tcp.getHandle()).setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
    except (AttributeError, OSError):
        pass
    side.tcp.abortConnection()


def _targetsOf(
    targetEndpoint: IStreamClientEndpoint | Sequence[IStreamClientEndpoint],
) -> tuple[IStreamClientEndpoint, ...]:
    """
    The targets of a proxy: one endpoint, or each of a non-empty list or
    tuple of endpoints.
    """
    if not isinstance(targetEndpoint, (list, tuple)):
        return (cast(IStreamClientEndpoint, targetEndpoint),)
    if not targetEndpoint:
        raise ValueError(
            f"targetEndpoint must be an endpoint or a non-empty list of endpoints, "
            f"not {targetEndpoint!r}"
        )
    for i, endpoint in enumerate(targetEndpoint):
        if not IStreamClientEndpoint.providedBy(endpoint):
            raise ValueError(
                f"targetEndpoint[{i}] must be an IStreamClientEndpoint, not {endpoint!r}"
            )
    return tuple(targetEndpoint)


class ChaosProxy:
    """
    A TCP proxy that injects faults: resets, closes, stalls, half-closes,
    delays, fragmentation and refused connections.

    Listen with `listen`; every connection accepted is forwarded to a new
    connection to the target. With several targets, each connection goes
    to one of them drawn uniformly from the seeded random generator (a TCP
    load balancer in front of several servers), and stays with it. The
    controls act on all live connections; each `ProxiedConnection` in
    `connections` has the same controls for itself alone.

    :ivar targets: the targets' endpoints, in the order given.
    :ivar connectionsPerTarget: how many connections were forwarded to each
        target so far, in the order of `targets`.
    :ivar faults: the `Faults` every new connection gets.
    :ivar seed: the seed of the random generator (logged at creation: pass it
        again to replay a run).
    :ivar connections: the live `ProxiedConnection` objects, oldest first.
    :ivar connectionsAccepted: how many connections the proxy accepted (not
        counting the refused ones).
    :ivar connectionsProxied: how many connections reached the target.
    :ivar bytesForwarded: bytes forwarded by all connections, by
        `Direction`.
    :ivar faultsInjected: how many faults were injected, by kind (the keys
        are `FAULT_KINDS`); a fault applied to all connections counts once
        per connection.
    :ivar queueLimit: bytes the proxy holds per direction of a connection
        (for delays and fragments) before it stops reading from the sender.
    """

    queueLimit = 65536

    def __init__(
        self,
        targetEndpoint: IStreamClientEndpoint | Sequence[IStreamClientEndpoint],
        faults: Faults | None = None,
        reactor: IReactorTime | None = None,
        seed: int | None = None,
    ) -> None:
        """
        :param targetEndpoint: where to forward each connection; or a list
            (or tuple) of endpoints, to send each new connection to one of
            them at random.
        :param faults: faults for every new connection; none by default.
        :param reactor: the clock for delays and timed faults; the global
            reactor by default.
        :param seed: the seed of the random generator; by default the seed
            of ``faults``, or else a random one.
        :raises ValueError: for an empty list of targets, or a list item
            that is not an ``IStreamClientEndpoint``.
        """
        self.targetEndpoint = targetEndpoint
        self.targets = _targetsOf(targetEndpoint)
        self.connectionsPerTarget = [0] * len(self.targets)
        self.faults = faults if faults is not None else Faults()
        self._reactor = reactor
        if seed is None:
            seed = self.faults.seed
        if seed is None:
            seed = random.SystemRandom().randrange(2**32)
        self.seed = seed
        self._random = random.Random(seed)
        self.connections: list[ProxiedConnection] = []
        self.connectionsAccepted = 0
        self.connectionsProxied = 0
        self.bytesForwarded = {direction: 0 for direction in Direction}
        self.faultsInjected = {kind: 0 for kind in FAULT_KINDS}
        self._accepting = True
        self._stalled = False
        self._delay = self.faults.delay
        self._fragment = self.faults.fragment
        self._ports: list[IListeningPort] = []
        _log.info(
            "chaos proxy seed {seed} (faults: {faults})",
            seed=self.seed,
            faults=self.faults.toSpec() or "none",
        )

    @property
    def _clock(self) -> IReactorTime:
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = cast(IReactorTime, reactor)
        return self._reactor

    def listen(self, endpoint: IStreamServerEndpoint) -> Deferred[IListeningPort]:
        """
        Accept connections on ``endpoint``. May be called more than once.

        :param endpoint: where clients connect, e.g. C{TCP4ServerEndpoint(reactor,
            0, interface="127.0.0.1")}.
        :returns: a `Deferred` that fires with the listening port.
        """

        def keep(port: IListeningPort) -> IListeningPort:
            self._ports.append(port)
            return port

        return endpoint.listen(_ClientFactory(self)).addCallback(keep)

    def stopListening(self) -> Deferred[None]:
        """
        Stop accepting connections on every port. Live connections go on.

        :returns: a `Deferred` that fires when every port is closed.
        """
        ports, self._ports = self._ports, []
        stopped = gatherResults([maybeDeferred(port.stopListening) for port in ports])
        return stopped.addCallback(lambda _: None)

    def resetAll(self) -> None:
        """
        Reset every live connection (see `ProxiedConnection.reset`).
        """
        for connection in list(self.connections):
            connection.reset()

    def closeAll(self) -> None:
        """
        Close every live connection cleanly (see `ProxiedConnection.close`).
        """
        for connection in list(self.connections):
            connection.close()

    def stall(self, stalled: bool = True) -> None:
        """
        Stall or resume every live connection, and the new ones (see
        `ProxiedConnection.stall`). A new connection accepted while stalled
        still gets its connection to the target, but nothing passes.

        :param stalled: ``True`` to stall, ``False`` to resume.
        """
        self._stalled = stalled
        for connection in list(self.connections):
            connection.stall(stalled)

    def halfClose(self) -> None:
        """
        Shut the write side towards the client of every live connection (see
        `ProxiedConnection.halfClose`).
        """
        for connection in list(self.connections):
            connection.halfClose()

    def setDelay(self, seconds: float) -> None:
        """
        Delay the bytes of every live connection, and the new ones (see
        `ProxiedConnection.setDelay`).

        :param seconds: the delay, ``0`` for none.
        :raises ValueError: if ``seconds`` is negative or not finite.
        """
        _checkSeconds("delay", seconds)
        self._delay = seconds
        for connection in self.connections:
            connection.setDelay(seconds)

    def setFragment(self, size: Fragment | None) -> None:
        """
        Fragment the bytes of every live connection, and the new ones (see
        `ProxiedConnection.setFragment`).

        :param size: the piece size, a ``(MIN, MAX)`` range, or ``None``.
        :raises ValueError: for a size below 1 or a bad range.
        """
        _checkFragment("fragment", size)
        self._fragment = size
        for connection in self.connections:
            connection.setFragment(size)

    def acceptNew(self, accept: bool) -> None:
        """
        Accept new connections, or refuse them: a refused connection is
        closed as soon as it is accepted (the client sees a FIN before any
        byte) and never reaches the target.

        :param accept: ``False`` to refuse, ``True`` to accept again.
        """
        self._accepting = accept

    def _accepted(self, clientSide: _Side) -> ProxiedConnection:
        clientSide.tcp.pauseProducing()
        self.connectionsAccepted += 1
        connection = ProxiedConnection(self, self.connectionsAccepted, clientSide, self._random)
        self.connections.append(connection)
        self.connectionsPerTarget[connection.target] += 1
        connecting = connection.targetEndpoint.connect(_TargetFactory(connection))
        connection._connecting = connecting
        connecting.addCallbacks(connection._connectDone, connection._targetFailed)
        return connection

    def _refused(self, addr: IAddress | None) -> None:
        self.faultsInjected["refuse"] += 1
        _log.info("chaos proxy: refuse on a new connection from {peer}", peer=addr)

    def _ended(self, connection: ProxiedConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)
