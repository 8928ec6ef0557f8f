"""
The processes that ``twisted-alive bench`` measures.

Run as ``python -m twisted_alive.tools.bench_worker ROLE [options]``. Each worker
runs its own reactor and talks to the bench in JSON lines on its standard
output: a server prints ``{"port": N}`` once it listens, a client prints one
``{"result": ...}`` line when its measurement is done, and every worker
prints ``{"error": "..."}`` and exits with status 1 when it cannot go on.

Roles (``--impl`` says which implementation is measured):

- ``server --impl alive|alive-sessions|int32-sink|int32-ack|amp``: the
  receiving end of the throughput and latency runs, for one connection; an
  ``alive`` server prints ``{"stats": ...}`` (ACK frames sent, DATA frames
  received) when that connection ends. ``alive-sessions`` is the same
  application behind an `AliveServerFactory` (it keeps sessions, as a
  stored client needs).
- ``oneway --impl alive|alive-batch|int32``: send ``--count`` messages
  without waiting for confirmation, then an empty message; the run ends
  when the server answers it. ``alive`` sends with ``sendMessage`` (a
  receipt per message), ``alive-batch`` with ``sendMessages`` (256
  messages per call, one receipt per call).
- ``confirmed --impl alive|alive-batch|amp|window``: send ``--count`` messages and wait
  for each one's confirmation, many at a time.
- ``latency --impl alive|amp|pingpong``: one message at a time; prints the
  round-trip percentiles.
- ``idle-server --impl bare|naive|shared|floor|alive|alive-peers`` and
  ``idle-client``: many idle connections with a heartbeat every
  ``--interval`` seconds. The server is the measured side; its peers answer
  its heartbeat as cheaply as possible (``alive``: `PongPeer`), except with
  ``alive-peers``, where they are twisted_alive protocols with heartbeats of
  their own.
- ``store --impl memory|sqlite-normal|sqlite-full|adbapi-normal|adbapi-full``:
  the session store alone, no network: ``--count`` messages, each appended
  then, once stored, confirmed (dropped), ``--outstanding`` at a time;
  prints the rate and the percentiles of each message's time from append
  to confirmed. ``sqlite-*`` is `SqliteSessionStore` (group commit);
  ``adbapi-*`` is the baseline, a plain ``adbapi.ConnectionPool`` (one
  connection) doing one transaction per append and one per confirmation,
  with the same WAL and ``synchronous`` settings.
- ``stored --impl none|memory|sqlite-normal|sqlite-full|adbapi-normal|adbapi-full``:
  an `AliveClientFactory` sending ``--count`` messages through
  ``sendMessage`` to an ``alive-sessions`` server at ``--port``,
  ``--outstanding`` unconfirmed at a time, each counted when its
  `Receipt` fires; prints the rate and the percentiles of each message's
  time from ``sendMessage`` to its `Receipt`. ``none``: no store;
  ``memory``/``sqlite-*``: the factory's ``store=`` (each message stored
  before it is sent, dropped once confirmed); ``adbapi-*``: the baseline,
  no store, but each message first inserted into a SQLite file by an
  ``adbapi`` ``runInteraction`` (one transaction, committed), then sent,
  and deleted by another once confirmed (what a store does).
- ``push-server --impl memory|redis --sender server|client`` and
  ``push-client --port N --sender server|client``: a server's sessions in
  a store, end to end. The server is an `AliveServerFactory` whose store
  is a `MemorySessionStore` or a `RedisSessionStore` (the Redis at
  ``--redis-port`` on 127.0.0.1, keys under ``--prefix``); the client an
  `AliveClientFactory` without a store. The sender (``--sender``) prints
  ``{"ready": true}`` once its session is open (so does the server
  either way); on SIGUSR1 it sends ``--count`` messages in that session
  through ``sendMessage``, ``--outstanding`` unconfirmed at a time, and
  prints the run's start and end (``time.monotonic``, comparable across
  processes) and the percentiles of each message's time from
  ``sendMessage`` to its `Receipt`. The server sending: each message is
  stored before it is sent and dropped once confirmed, and its result
  also says how much the store's ``roundTrips``, ``batches``,
  ``operations`` and ``retries`` grew meanwhile (0 for the memory
  store). The client sending: the server's receiver commits each
  message's processed position in the store before its ACK; on SIGUSR1
  (once the client is done) the server prints the messages it processed
  and how much those counters grew since the session opened.
- ``detect-server`` and ``detect-peer``: a heartbeat server that prints
  ``{"opened": PORT}`` and ``{"lost": PORT, "at": T, ...}`` (``T`` from
  ``time.monotonic``), and the peer the bench stops with SIGSTOP.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from struct import Struct
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogBeginner
from twisted.protocols import amp
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_alive._mixin import HeartbeatProtocol
from twisted_alive._reasons import Loss
from twisted_alive.core.delivery import DEFAULT_WINDOW
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    FrameDecoder,
    Hello,
    Ping,
    encode,
    encodePong,
)
from twisted_alive.core.outcomes import Receipt

HOST = "127.0.0.1"
"""Every connection of the bench is on loopback."""

SEQ = Struct(">Q")
"""A hand-rolled sequence number or acknowledgement: 8 bytes."""

NAIVE_PING = b"ping\x00\x00\x00\x00"
"""The naive heartbeat's 8-byte ping (answered by the same 8 bytes)."""

DONE = b"done"
"""What a one-way server answers to the empty message that ends a run."""

BACKLOG = 4096
"""The listen backlog (the kernel caps it at ``somaxconn``)."""


def emit(message: dict[str, Any]) -> None:
    """Print one JSON line for the bench."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _quietLogging() -> None:
    """Send warnings and errors to standard error and drop the rest, as a
    production process whose log level is ``warn`` does (without this,
    Twisted keeps every early event in memory)."""

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level")
        if level is not None and level >= LogLevel.warn:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            sys.stderr.write(text + "\n")

    globalLogBeginner.beginLoggingTo([cast(ILogObserver, observe)], redirectStandardIO=False)


def raiseFileLimit(needed: int) -> None:
    """
    Raise the soft limit on open files to the hard limit.

    :param needed: how many descriptors the worker will hold.
    :raises SystemExit: if the hard limit is below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        fatal(
            f"{needed} connections need {needed} file descriptors, but the hard limit "
            f"(ulimit -Hn) is {hard}"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def fatal(message: str) -> None:
    """Report an error to the bench and exit."""
    emit({"error": message})
    raise SystemExit(1)


def percentile(samples: Sequence[float], fraction: float) -> float:
    """
    The nearest-rank percentile of ``samples``.

    :param samples: the values (not necessarily sorted); at least one.
    :param fraction: 0.5 for the median, 0.99 for the 99th percentile.
    :returns: the value at that rank.
    """
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[rank]


class Run:
    """
    The outcome of a client measurement: a Deferred that fires with the
    result, plus the moment the measurement started.
    """

    def __init__(self) -> None:
        self.done: Deferred[dict[str, Any]] = Deferred()
        self.started = 0.0

    def start(self) -> None:
        """The measured part begins now."""
        self.started = time.perf_counter()

    def finish(self, **result: Any) -> None:
        """The measured part is over; report ``result`` with the elapsed time."""
        if not self.done.called:
            result["seconds"] = time.perf_counter() - self.started
            self.done.callback(result)

    def fail(self, message: str) -> None:
        """The measurement cannot complete."""
        if not self.done.called:
            self.done.errback(Failure(RuntimeError(message)))  # type: ignore[no-untyped-call]


# -- throughput and latency: servers --------------------------------------------


class AliveSink(HeartbeatProtocol):
    """Receives messages; answers the empty message with ``done``; reports
    its acknowledgement counts when the connection ends."""

    def messageReceived(self, payload: bytes) -> None:
        """Count nothing: the receiving cost is the protocol's own."""
        if not payload:
            self.sendMessage(DONE).addErrback(lambda _: None)

    def disconnected(self, loss: Loss) -> None:
        """Report the ACKs sent and the DATA received on this connection."""
        conn = self._alive
        if conn is not None:
            emit(
                {
                    "stats": {
                        "acks": conn.acksSent,
                        "data": conn.session.inbox.receivedUpTo,
                    }
                }
            )


class Int32Sink(Int32StringReceiver):
    """Receives strings; answers the empty string with ``done``."""

    def stringReceived(self, string: bytes) -> None:
        """Count nothing: the receiving cost is the protocol's own."""
        if not string:
            self.sendString(DONE)  # type: ignore[no-untyped-call]


class Int32Acker(Int32StringReceiver):
    """The hand-rolled receiver: answers each string with its first 8 bytes
    (the sender's sequence number), an acknowledgement per message."""

    def stringReceived(self, string: bytes) -> None:
        """Acknowledge this message."""
        self.sendString(string[:8])  # type: ignore[no-untyped-call]


class Deliver(amp.Command):
    """An AMP call that carries one message and returns when it was handled."""

    arguments = [(b"payload", amp.String())]  # type: ignore[no-untyped-call]
    response = []


class AmpSink(amp.AMP):
    """Answers each L{Deliver} call once its message is handled."""

    @Deliver.responder
    def deliver(self, payload: bytes) -> dict[str, Any]:
        """Handle one message."""
        return {}


def serve(args: argparse.Namespace) -> None:
    """The receiving end of a throughput or latency run."""
    protocols: dict[str, Callable[[], Protocol]] = {
        "alive": AliveSink,
        "int32-sink": Int32Sink,
        "int32-ack": Int32Acker,
        "amp": AmpSink,
    }
    reactor = _reactor()
    if args.impl == "alive-sessions":
        from twisted_alive._factories import AliveServerFactory

        factory: Factory = AliveServerFactory.forProtocol(AliveSink)
    else:
        factory = Factory.forProtocol(protocols[args.impl])
    port = reactor.listenTCP(0, factory, interface=HOST)
    emit({"port": port.getHost().port})
    reactor.run()


# -- throughput and latency: clients ---------------------------------------------


class AliveSender(HeartbeatProtocol):
    """
    Sends ``count`` messages through L{sendMessage}, keeping at most
    ``backlog`` unconfirmed. With ``confirmed``, the run ends when the last
    receipt arrives; without, when the server has processed the empty
    message sent last.

    The backlog is the window: as much as may be in flight, refilled as
    receipts come back, so nothing waits in the send queue. Keeping more
    unconfirmed would not send more (the window holds it back) but would
    pass each message through the queue, a second handling that costs the
    sender about a fifth of its throughput (see ``docs/performance.md``).
    """

    run: Run
    payload: bytes
    count: int
    confirmed: bool
    backlog = DEFAULT_WINDOW
    step = 256

    def connectionOpened(self, resumed: bool) -> None:
        """Start sending."""
        self.sent = 0
        self.checkpoint = 0
        self.receipts = 0
        self.run.start()
        self._send()

    def _send(self) -> None:
        send = self.sendMessage
        payload = self.payload
        step = self.step
        sent = self.sent
        stop = min(self.count, self.checkpoint + self.backlog)
        if self.confirmed:
            counted = self._counted
            while sent < stop:
                d = send(payload)
                d.addCallback(counted)
                sent += 1
                if not sent % step:
                    d.addCallback(self._reached, sent)
        else:
            while sent < stop:
                d = send(payload)
                sent += 1
                if not sent % step:
                    d.addCallback(self._reached, sent)
            if sent == self.count and self.sent < self.count:
                send(b"").addErrback(lambda _: None)
        self.sent = sent

    def _reached(self, receipt: Receipt, sent: int) -> Receipt:
        self.checkpoint = sent
        self._send()
        return receipt

    def _counted(self, receipt: Receipt) -> Receipt:
        self.receipts += 1
        if self.receipts == self.count:
            self.run.finish(count=self.count)
        return receipt

    def messageReceived(self, payload: bytes) -> None:
        """The server processed everything."""
        if payload == DONE and not self.confirmed:
            self.run.finish(count=self.count)


class AliveBatchSender(AliveSender):
    """
    Like L{AliveSender}, through L{sendMessages}: ``step`` messages per
    call, one receipt for each call.
    """

    def _send(self) -> None:
        send = self.sendMessages
        payload = self.payload
        step = self.step
        sent = self.sent
        stop = min(self.count, self.checkpoint + self.backlog)
        while sent < stop:
            n = min(step, stop - sent)
            d = send([payload] * n)
            sent += n
            if self.confirmed:
                d.addCallback(self._countedMany, n)
            d.addCallback(self._reached, sent)
        if not self.confirmed and sent == self.count and self.sent < self.count:
            self.sendMessage(b"").addErrback(lambda _: None)
        self.sent = sent

    def _countedMany(self, receipt: Receipt, n: int) -> Receipt:
        self.receipts += n
        if self.receipts == self.count:
            self.run.finish(count=self.count)
        return receipt


@implementer(IPushProducer)
class Int32Sender(Int32StringReceiver):
    """Sends ``count`` strings as fast as the transport takes them, then an
    empty one; the run ends when the server answers it."""

    run: Run
    payload: bytes
    count: int

    def connectionMade(self) -> None:
        """Start sending."""
        self.remaining = self.count
        self._writePaused = False
        cast(IConsumer, self.transport).registerProducer(self, True)
        self.run.start()
        self._send()

    def _send(self) -> None:
        send = cast(Callable[[bytes], None], self.sendString)
        payload = self.payload
        remaining = self.remaining
        while remaining and not self._writePaused:
            send(payload)
            remaining -= 1
        if self.remaining and not remaining:
            send(b"")
        self.remaining = remaining

    def pauseProducing(self) -> None:
        """The transport's buffer is full."""
        self._writePaused = True

    def resumeProducing(self) -> None:
        """The transport's buffer drained."""
        self._writePaused = False
        if self.remaining:
            self._send()

    def stopProducing(self) -> None:
        """The connection is going away."""
        self.remaining = 0

    def stringReceived(self, string: bytes) -> None:
        """The server received everything."""
        if string == DONE:
            self.run.finish(count=self.count)


class WindowSender(Int32StringReceiver):
    """The hand-rolled confirmed sender: each string carries an 8-byte
    sequence number, the receiver acknowledges each one, and at most
    ``window`` go unacknowledged."""

    run: Run
    payload: bytes
    count: int
    window = 1000

    def connectionMade(self) -> None:
        """Start sending."""
        self.issued = 0
        self.acked = 0
        self.run.start()
        self._fill()

    def _fill(self) -> None:
        send = cast(Callable[[bytes], None], self.sendString)
        pack = SEQ.pack
        payload = self.payload
        issued = self.issued
        stop = min(self.count, self.acked + self.window)
        while issued < stop:
            issued += 1
            send(pack(issued) + payload)
        self.issued = issued

    def stringReceived(self, string: bytes) -> None:
        """An acknowledgement."""
        self.acked = SEQ.unpack(string)[0]
        if self.acked == self.count:
            self.run.finish(count=self.count)
        else:
            self._fill()


class PingPongSender(Int32StringReceiver):
    """The hand-rolled one-at-a-time sender: a message, then its
    acknowledgement, then the next message."""

    run: Run
    payload: bytes
    count: int

    def connectionMade(self) -> None:
        """Start."""
        self.samples: list[float] = []
        self.run.start()
        self._next()

    def _next(self) -> None:
        self.sentAt = time.perf_counter()
        self.sendString(SEQ.pack(len(self.samples) + 1) + self.payload)  # type: ignore[no-untyped-call]

    def stringReceived(self, string: bytes) -> None:
        """The acknowledgement of the message in flight."""
        self.samples.append(time.perf_counter() - self.sentAt)
        if len(self.samples) == self.count:
            self.run.finish(**latencySummary(self.samples))
        else:
            self._next()


class AliveOneAtATime(HeartbeatProtocol):
    """One message at a time through L{sendMessage}; the next goes when the
    receipt of the previous one arrives."""

    run: Run
    payload: bytes
    count: int

    def connectionOpened(self, resumed: bool) -> None:
        """Start."""
        self.samples: list[float] = []
        self.run.start()
        self._next()

    def _next(self) -> None:
        self.sentAt = time.perf_counter()
        self.sendMessage(self.payload).addCallback(self._answered)

    def _answered(self, receipt: Receipt) -> None:
        self.samples.append(time.perf_counter() - self.sentAt)
        if len(self.samples) == self.count:
            self.run.finish(**latencySummary(self.samples))
        else:
            self._next()


def latencySummary(samples: list[float]) -> dict[str, Any]:
    """The percentiles of round-trip ``samples``, in microseconds."""
    return {
        "count": len(samples),
        "p50": percentile(samples, 0.5) * 1e6,
        "p99": percentile(samples, 0.99) * 1e6,
        "mean": sum(samples) / len(samples) * 1e6,
    }


class _RunFactory(ClientFactory):
    """Builds one client protocol wired to a L{Run}."""

    def __init__(self, protocolClass: type[Protocol], run: Run, **attributes: Any) -> None:
        self.protocolClass = protocolClass
        self.run = run
        self.attributes = attributes

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self.protocolClass()
        protocol.factory = self
        for name, value in self.attributes.items():
            setattr(protocol, name, value)
        cast(Any, protocol).run = self.run
        return protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.run.fail(f"cannot connect: {reason.getErrorMessage()}")

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        self.run.fail(f"connection lost during the run: {reason.getErrorMessage()}")


async def _ampRun(reactor: Any, args: argparse.Namespace, run: Run) -> dict[str, Any]:
    """AMP calls, ``--outstanding`` at a time (latency: one at a time)."""
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    endpoint = TCP4ClientEndpoint(reactor, HOST, args.port)
    client = amp.AMP()  # type: ignore[no-untyped-call]
    await connectProtocol(endpoint, client)  # type: ignore[no-untyped-call]
    payload = b"x" * args.size
    count = args.count
    if args.role == "latency":
        samples = []
        run.start()
        for _ in range(count):
            sentAt = time.perf_counter()
            await client.callRemote(Deliver, payload=payload)  # type: ignore[no-untyped-call]
            samples.append(time.perf_counter() - sentAt)
        return latencySummary(samples) | {"seconds": time.perf_counter() - run.started}
    finished: Deferred[None] = Deferred()
    state = {"issued": 0, "answered": 0}

    def call() -> None:
        state["issued"] += 1
        client.callRemote(Deliver, payload=payload).addCallback(answered)  # type: ignore[no-untyped-call]

    def answered(_: object) -> None:
        state["answered"] += 1
        if state["answered"] == count:
            finished.callback(None)
        elif state["issued"] < count:
            call()

    run.start()
    for _ in range(min(args.outstanding, count)):
        call()
    await finished
    return {"count": count, "seconds": time.perf_counter() - run.started}


def client(args: argparse.Namespace) -> None:
    """A throughput or latency measurement against ``--port``."""
    reactor = _reactor()
    run = Run()
    payload = b"x" * args.size
    if args.impl == "amp":
        from twisted.internet.defer import ensureDeferred

        run.done = ensureDeferred(_ampRun(reactor, args, run))
    else:
        classes: dict[tuple[str, str], type[Protocol]] = {
            ("oneway", "alive"): AliveSender,
            ("oneway", "int32"): Int32Sender,
            ("oneway", "alive-batch"): AliveBatchSender,
            ("confirmed", "alive"): AliveSender,
            ("confirmed", "alive-batch"): AliveBatchSender,
            ("confirmed", "window"): WindowSender,
            ("latency", "alive"): AliveOneAtATime,
            ("latency", "pingpong"): PingPongSender,
        }
        attributes: dict[str, Any] = {"payload": payload, "count": args.count}
        if args.impl in ("alive", "alive-batch") and args.role != "latency":
            attributes["confirmed"] = args.role == "confirmed"
        factory = _RunFactory(classes[args.role, args.impl], run, **attributes)
        reactor.connectTCP(HOST, args.port, factory)
    raise SystemExit(_report(reactor, lambda: run.done))


# -- idle connections ---------------------------------------------------------------


class Bare(Protocol):
    """A connection that does nothing."""


class NaivePinger(Protocol):
    """The naive heartbeat: its own timer sends an 8-byte ping every
    interval, and a peer silent for ``misses`` intervals is dropped."""

    interval = 1.0
    misses = 3
    clock: IReactorTime
    _call: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """Start the timer."""
        self.lastHeard = self.clock.seconds()
        self._call = self.clock.callLater(self.interval, self.ping)

    def ping(self) -> None:
        """Send a ping, or drop a silent peer."""
        if self.clock.seconds() - self.lastHeard > self.interval * self.misses:
            self._call = None
            cast(ITCPTransport, self.transport).abortConnection()
            return
        cast(ITCPTransport, self.transport).write(NAIVE_PING)
        self._call = self.clock.callLater(self.interval, self.ping)

    def dataReceived(self, data: bytes) -> None:
        """The peer answered."""
        self.lastHeard = self.clock.seconds()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Stop the timer."""
        if self._call is not None and self._call.active():
            self._call.cancel()


class SharedPinger(Protocol):
    """A connection pinged by one timer shared by all (see L{serveIdle})."""

    clock: IReactorTime
    members: set[SharedPinger]

    def connectionMade(self) -> None:
        """Join the shared timer."""
        self.lastHeard = self.clock.seconds()
        self.members.add(self)

    def dataReceived(self, data: bytes) -> None:
        """The peer answered."""
        self.lastHeard = self.clock.seconds()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Leave the shared timer."""
        self.members.discard(self)


class PongPeer(Protocol):
    """
    The lightest peer a twisted_alive server can have, as cheap as the naive
    heartbeat's: it sends its HELLO, then answers each PING with a PONG
    (which keeps it from ever needing a PING of its own), and sends nothing
    else. It keeps the client process of the idle-scale runs from weighing
    on the server's figures.
    """

    interval = 1.0

    def connectionMade(self) -> None:
        """Say HELLO."""
        self._decoder = FrameDecoder()
        hello = Hello(
            PROTOCOL_VERSION, 0, self.interval, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION
        )
        cast(ITCPTransport, self.transport).write(encode(hello))

    def dataReceived(self, data: bytes) -> None:
        """Answer PINGs."""
        for frame in self._decoder.feed(data):
            if type(frame) is Ping:
                cast(ITCPTransport, self.transport).write(encodePong(frame.id))


class Echo(Protocol):
    """The peer of the naive heartbeats: answers each ping."""

    def dataReceived(self, data: bytes) -> None:
        """Answer."""
        cast(ITCPTransport, self.transport).write(data)


def _aliveClass(interval: float, misses: int = 3) -> type[HeartbeatProtocol]:
    class Idle(HeartbeatProtocol):
        heartbeatInterval = interval
        heartbeatMisses = misses
        minPeerInterval = 0.01

    return Idle


def serveIdle(args: argparse.Namespace) -> None:
    """Hold idle connections with one kind of heartbeat."""
    raiseFileLimit(args.connections + 64)
    reactor = _reactor()
    interval = args.interval
    protocolClass: type[Protocol]
    if args.impl == "bare":
        protocolClass = Bare
    elif args.impl == "naive":

        class Naive(NaivePinger):
            pass

        Naive.interval = interval
        Naive.clock = reactor
        protocolClass = Naive
    elif args.impl in ("shared", "floor"):
        members: set[SharedPinger] = set()
        direct = args.impl == "floor"

        class Shared(SharedPinger):
            pass

        Shared.clock = reactor
        Shared.members = members
        deadline = interval * 3

        def pingAll() -> None:
            # The floor is the least a heartbeat can cost through Twisted's
            # reactor: one timer for all, the ping handed straight to the
            # socket (no transport buffer, so no writability polling).
            now = reactor.seconds()
            for member in list(members):
                transport = cast(Any, member.transport)
                if now - member.lastHeard > deadline:
                    transport.abortConnection()
                elif not direct:
                    transport.write(NAIVE_PING)
                else:
                    try:
                        transport.socket.send(NAIVE_PING)
                    except OSError:
                        transport.abortConnection()

        LoopingCall(pingAll).start(interval, now=False)
        protocolClass = Shared
    else:
        protocolClass = _aliveClass(interval)
    port = reactor.listenTCP(0, Factory.forProtocol(protocolClass), backlog=BACKLOG, interface=HOST)
    emit({"port": port.getHost().port})
    reactor.run()


class _IdleClients(ClientFactory):
    """Opens many connections; fires ``ready`` when they all are up."""

    def __init__(self, protocolClass: type[Protocol], count: int) -> None:
        self.protocolClass = protocolClass
        self.count = count
        self.up = 0
        self.failures: list[str] = []
        self.batch: Deferred[None] | None = None
        self.waiting = 0

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self.protocolClass()
        protocol.factory = self
        if isinstance(protocol, HeartbeatProtocol):
            protocol.whenOpened().addCallbacks(lambda _: self._upped(), self._failed)
        else:
            made = cast(Callable[[], None], protocol.connectionMade)

            def connectionMade() -> None:
                made()
                self._upped()

            cast(Any, protocol).connectionMade = connectionMade
        return protocol

    def _upped(self) -> None:
        self.up += 1
        self.waiting -= 1
        if not self.waiting and self.batch is not None:
            batch, self.batch = self.batch, None
            batch.callback(None)

    def _failed(self, failure: Failure) -> None:
        self._lost(failure.getErrorMessage())

    def _lost(self, message: str) -> None:
        self.failures.append(message)
        self.waiting -= 1
        if not self.waiting and self.batch is not None:
            batch, self.batch = self.batch, None
            batch.callback(None)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._lost(reason.getErrorMessage())


async def _openIdle(reactor: Any, args: argparse.Namespace) -> None:
    protocolClass: type[Protocol]
    if args.impl == "bare":
        protocolClass = Bare
    elif args.impl in ("naive", "shared", "floor"):
        protocolClass = Echo
    elif args.impl == "alive":
        protocolClass = PongPeer
    else:
        protocolClass = _aliveClass(args.interval)
    factory = _IdleClients(protocolClass, args.connections)
    started = time.perf_counter()
    remaining = args.connections
    while remaining:
        size = min(remaining, 250)
        factory.waiting = size
        batch: Deferred[None] = Deferred()
        factory.batch = batch
        for _ in range(size):
            reactor.connectTCP(HOST, args.port, factory)
        await batch
        if factory.failures:
            fatal(f"{len(factory.failures)} connections failed: {factory.failures[0]}")
        remaining -= size
    emit({"ready": factory.up, "seconds": time.perf_counter() - started})


def idleClient(args: argparse.Namespace) -> None:
    """Open ``--connections`` idle connections and answer heartbeats."""
    raiseFileLimit(args.connections + 64)
    reactor = _reactor()
    from twisted.internet.defer import ensureDeferred

    d = ensureDeferred(_openIdle(reactor, args))

    def failed(failure: Failure) -> None:
        if not failure.check(SystemExit):  # type: ignore[no-untyped-call]
            emit({"error": failure.getErrorMessage()})
        reactor.stop()

    d.addErrback(failed)
    reactor.run()


# -- dead-peer detection -----------------------------------------------------------


def detectServer(args: argparse.Namespace) -> None:
    """Report when each peer's connection opens and when it is lost."""
    reactor = _reactor()

    class Watch(HeartbeatProtocol):
        heartbeatInterval = args.interval
        heartbeatMisses = args.misses
        minPeerInterval = 0.01

        def connectionOpened(self, resumed: bool) -> None:
            emit({"opened": self.transport.getPeer().port})

        def disconnected(self, loss: Loss) -> None:
            emit(
                {
                    "lost": self.transport.getPeer().port,
                    "at": time.monotonic(),
                    "reason": loss.reason.name,
                    "detail": loss.detail,
                }
            )

    port = reactor.listenTCP(0, Factory.forProtocol(Watch), interface=HOST)
    emit({"port": port.getHost().port})
    reactor.run()


def detectPeer(args: argparse.Namespace) -> None:
    """One heartbeat connection to ``--port``; prints its local port once
    open, then waits to be stopped."""
    reactor = _reactor()

    class Peer(_aliveClass(args.interval, args.misses)):  # type: ignore[misc]
        def connectionOpened(self, resumed: bool) -> None:
            emit({"ready": self.transport.getHost().port})

        def disconnected(self, loss: Loss) -> None:
            reactor.stop()

    class Connect(ClientFactory):
        protocol = Peer

        def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
            emit({"error": f"cannot connect: {reason.getErrorMessage()}"})
            reactor.stop()

    reactor.connectTCP(HOST, args.port, Connect())
    reactor.run()


# -- session stores ---------------------------------------------------------------


class AdbapiBaseline:
    """
    The baseline of the store runs: what an application would write first
    with Twisted's own tools, an ``adbapi.ConnectionPool`` over ``sqlite3``
    with one transaction per operation.
    """

    def __init__(self, path: str, synchronous: str) -> None:
        from twisted.enterprise import adbapi

        def prepare(connection: Any) -> None:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute(f"PRAGMA synchronous = {synchronous}")

        self.pool: Any = cast(Any, adbapi).ConnectionPool(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=prepare,
        )

    def open(self) -> Any:
        """Create the table."""
        return self.pool.runOperation(
            "CREATE TABLE messages (token BLOB, seq INTEGER, payload BLOB, "
            "PRIMARY KEY (token, seq)) WITHOUT ROWID"
        )

    def createSession(self, record: Any) -> Any:
        """Nothing to create: the baseline keeps messages only."""
        return self.pool.runOperation("SELECT 1")

    def appendMessages(self, token: bytes, messages: Sequence[tuple[int, bytes]]) -> Any:
        """One transaction: insert the messages."""
        return self.pool.runOperation(
            "INSERT INTO messages VALUES (?, ?, ?)", (token, *messages[0])
        )

    def confirmMessages(self, token: bytes, upTo: int) -> Any:
        """One transaction: delete up to ``upTo``."""
        return self.pool.runOperation(
            "DELETE FROM messages WHERE token = ? AND seq <= ?", (token, upTo)
        )

    def close(self) -> Deferred[None]:
        """Close the pool."""
        from twisted.internet.defer import succeed

        self.pool.close()
        return succeed(None)


async def _storeRun(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    import os
    import shutil
    import tempfile

    from twisted_alive import MemorySessionStore, SqliteSessionStore, StoredSession

    directory = tempfile.mkdtemp(prefix="alive-bench-store-")
    path = os.path.join(directory, "store.db")
    kind, _, synchronous = args.impl.partition("-")
    store: Any
    if kind == "memory":
        store = MemorySessionStore()
    elif kind == "sqlite":
        store = SqliteSessionStore(path, synchronous.upper(), reactor=reactor)
    else:
        store = AdbapiBaseline(path, synchronous.upper())
    token = bytes(16)
    payload = b"x" * args.size
    count = args.count
    latencies: list[float] = []
    finished: Deferred[None] = Deferred()
    state = {"issued": 0, "done": 0, "wanted": 0, "pumping": 0}
    try:
        await store.open()
        await store.createSession(StoredSession(token))

        def one() -> None:
            seq = state["issued"] = state["issued"] + 1
            started = time.perf_counter()
            d = store.appendMessages(token, [(seq, payload)])
            d.addCallback(lambda _: store.confirmMessages(token, seq))
            d.addCallbacks(lambda _: done(started), failed)

        def done(started: float) -> None:
            latencies.append(time.perf_counter() - started)
            state["done"] += 1
            if state["done"] == count:
                finished.callback(None)
            else:
                state["wanted"] += 1
                pump()

        def pump() -> None:
            # A store whose Deferreds fire at once (memory) would recurse
            # one() -> done() -> one()...: issue from a loop instead.
            if state["pumping"]:
                return
            state["pumping"] = 1
            while state["wanted"] and state["issued"] < count:
                state["wanted"] -= 1
                one()
            state["pumping"] = 0

        def failed(failure: Failure) -> None:
            if not finished.called:
                finished.errback(failure)

        began = time.perf_counter()
        state["wanted"] = min(args.outstanding, count)
        pump()
        await finished
        seconds = time.perf_counter() - began
        await store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result = {
        "count": count,
        "seconds": seconds,
        "p50": percentile(latencies, 0.5) * 1e6,
        "p99": percentile(latencies, 0.99) * 1e6,
    }
    if kind == "sqlite":
        result["commits"] = store.commits
    return result


def _report(
    reactor: Any,
    run: Callable[[], Coroutine[Any, Any, dict[str, Any]] | Deferred[dict[str, Any]]],
) -> int:
    """Run the reactor until ``run()`` (a coroutine or a Deferred, begun
    once the reactor runs) is done; print its result (or its error). The
    process's exit status: 0 if it gave a result."""
    from twisted.internet.defer import ensureDeferred

    outcome: list[int] = []

    def report(result: dict[str, Any]) -> None:
        emit({"result": result})
        outcome.append(0)

    def failed(failure: Failure) -> None:
        emit({"error": failure.getErrorMessage()})
        outcome.append(1)

    def start() -> None:
        d = ensureDeferred(run())
        d.addCallbacks(report, failed)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome[0] if outcome else 1


def storeClient(args: argparse.Namespace) -> None:
    """A store run: print its result."""
    reactor = _reactor()
    raise SystemExit(_report(reactor, lambda: _storeRun(reactor, args)))


# -- a client's session in a store, end to end -------------------------------------


def _adbapiPool(path: str, synchronous: str) -> Any:
    """The baseline's pool: one ``sqlite3`` connection, WAL, ``synchronous``."""
    from twisted.enterprise import adbapi

    def prepare(connection: Any) -> None:
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute(f"PRAGMA synchronous = {synchronous}")
        connection.execute(
            "CREATE TABLE IF NOT EXISTS messages (seq INTEGER PRIMARY KEY, payload BLOB)"
        )

    return cast(Any, adbapi).ConnectionPool(
        "sqlite3", path, check_same_thread=False, cp_min=1, cp_max=1, cp_openfun=prepare
    )


def _insert(cursor: Any, seq: int, payload: bytes) -> None:
    """(The pool's thread.) The baseline's transaction before a message is
    sent: one insert."""
    cursor.execute("INSERT INTO messages VALUES (?, ?)", (seq, payload))


def _delete(cursor: Any, seq: int) -> None:
    """(The pool's thread.) The baseline's transaction once a message is
    confirmed: one delete (what a store does, so that a restart does not
    send it again and the file stays bounded)."""
    cursor.execute("DELETE FROM messages WHERE seq = ?", (seq,))


async def _storedRun(reactor: Any, args: argparse.Namespace, path: str) -> dict[str, Any]:
    """Messages confirmed end to end by a client whose session is in a
    store (or not, or beside an adbapi transaction each)."""
    from twisted_alive import (
        AliveClientFactory,
        ISessionStore,
        MemorySessionStore,
        SqliteSessionStore,
    )

    kind, _, synchronous = args.impl.partition("-")
    store: ISessionStore | None = None
    pool: Any = None
    if kind == "memory":
        store = MemorySessionStore()
    elif kind == "sqlite":
        store = SqliteSessionStore(path, synchronous.upper(), reactor=reactor)
    elif kind == "adbapi":
        pool = _adbapiPool(path, synchronous.upper())
    elif kind != "none":
        raise ValueError(f"unknown stored-client implementation {args.impl!r}")
    factory = AliveClientFactory(store=store)
    factory.protocol = HeartbeatProtocol
    await factory.recovered()
    reactor.connectTCP(HOST, args.port, factory)
    await factory.whenConnected()
    if pool is not None:
        await pool.runInteraction(lambda cursor: None)  # open it before the clock starts

    payload = b"x" * args.size
    count = args.count
    latencies: list[float] = []
    finished: Deferred[None] = Deferred()
    state = {"issued": 0, "done": 0}

    def one() -> None:
        seq = state["issued"] = state["issued"] + 1
        started = time.perf_counter()
        if pool is None:
            d = factory.sendMessage(payload)
        else:
            d = pool.runInteraction(_insert, seq, payload)
            d.addCallback(lambda _: factory.sendMessage(payload))
            d.addCallback(lambda receipt: dropped(seq, receipt))
        d.addCallbacks(lambda _: done(started), failed)

    def dropped(seq: int, receipt: object) -> object:
        # Confirmed: deleted in a transaction of its own, as a store
        # drops it; the Receipt does not wait for it (as with a store).
        pool.runInteraction(_delete, seq).addErrback(failed)
        return receipt

    def done(started: float) -> None:
        latencies.append(time.perf_counter() - started)
        state["done"] += 1
        if state["done"] == count:
            finished.callback(None)
        elif state["issued"] < count:
            one()

    def failed(failure: Failure) -> None:
        if not finished.called:
            finished.errback(failure)

    began = time.perf_counter()
    for _ in range(min(args.outstanding, count)):
        one()
    await finished
    seconds = time.perf_counter() - began
    result = {"count": count, "seconds": seconds} | latencySummary(latencies)
    if isinstance(store, SqliteSessionStore):
        result["commits"] = store.commits
    return result


def storedClient(args: argparse.Namespace) -> None:
    """A stored-client run: print its result. The store closes when the
    reactor stops; its file is removed after."""
    import shutil
    import tempfile

    reactor = _reactor()
    directory = tempfile.mkdtemp(prefix="alive-bench-stored-")
    try:
        status = _report(reactor, lambda: _storedRun(reactor, args, f"{directory}/client.db"))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    raise SystemExit(status)


# -- a server's sessions in a store (Redis), end to end -------------------------------


REDIS_COUNTERS = ("roundTrips", "batches", "operations", "retries")
"""The counters of `RedisSessionStore` a push run reports (their growth
during the measured part)."""


class _PushRun:
    """
    A push run's sending side: its protocol sends ``count`` messages in its
    session, ``outstanding`` unconfirmed at a time, once the bench says go
    (SIGUSR1).
    """

    def __init__(self, store: Any, count: int, outstanding: int, size: int) -> None:
        self.store = store
        self.count = count
        self.outstanding = outstanding
        self.payload = b"x" * size
        self.protocol: HeartbeatProtocol | None = None
        self.latencies: list[float] = []
        self.issued = 0
        self.began = 0.0
        self.counters: dict[str, int] = {}
        self.done: Deferred[dict[str, Any]] = Deferred()

    def opened(self, protocol: HeartbeatProtocol) -> None:
        """The session is open (and stored): ready to go."""
        if self.protocol is None:
            self.protocol = protocol
            emit({"ready": True})

    def go(self) -> None:
        """The bench says go: send."""
        if self.protocol is None:
            self.fail("go before the session opened")
            return
        self.counters = _counters(self.store)
        self.began = time.monotonic()
        for _ in range(min(self.outstanding, self.count)):
            self._one()

    def _one(self) -> None:
        assert self.protocol is not None
        self.issued += 1
        started = time.perf_counter()
        d = self.protocol.sendMessage(self.payload)
        d.addCallbacks(lambda _: self._confirmed(started), self._failed)

    def _confirmed(self, started: float) -> None:
        self.latencies.append(time.perf_counter() - started)
        if len(self.latencies) == self.count:
            ended = time.monotonic()
            result = {"began": self.began, "ended": ended, "seconds": ended - self.began}
            result |= latencySummary(self.latencies)
            result |= _grown(self.store, self.counters)
            if not self.done.called:
                self.done.callback(result)
        elif self.issued < self.count:
            self._one()

    def _failed(self, failure: Failure) -> None:
        self.fail(f"a message failed: {failure.getErrorMessage()}")

    def fail(self, message: str) -> None:
        """The run cannot complete."""
        if not self.done.called:
            self.done.errback(Failure(RuntimeError(message)))  # type: ignore[no-untyped-call]


def _counters(store: Any) -> dict[str, int]:
    """The `REDIS_COUNTERS` of ``store`` (0 for a store without them)."""
    return {name: int(getattr(store, name, 0)) for name in REDIS_COUNTERS}


def _grown(store: Any, before: dict[str, int]) -> dict[str, int]:
    """How much the `REDIS_COUNTERS` of ``store`` grew since ``before``."""
    now = _counters(store)
    return {name: now[name] - before[name] for name in REDIS_COUNTERS}


class _Received:
    """
    A push run's receiving server: counts what its protocol processed and,
    when the bench asks (SIGUSR1, once the client saw its last receipt),
    reports that count and how much the store's counters grew since the
    session opened.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.received = 0
        self.counters: dict[str, int] | None = None
        self.done: Deferred[dict[str, Any]] = Deferred()

    def opened(self) -> None:
        """The client's session is open (and stored)."""
        if self.counters is None:
            self.counters = _counters(self.store)
            emit({"ready": True})

    def report(self) -> None:
        """The bench asks for the figures."""
        if self.counters is None:
            self.fail("asked to report before the session opened")
        elif not self.done.called:
            self.done.callback({"count": self.received} | _grown(self.store, self.counters))

    def fail(self, message: str) -> None:
        """The run cannot complete."""
        if not self.done.called:
            self.done.errback(Failure(RuntimeError(message)))  # type: ignore[no-untyped-call]


def _onSignal(reactor: Any, action: Callable[[], None]) -> None:
    """Call ``action`` in the reactor's thread on each SIGUSR1 (the bench's
    go)."""
    import signal

    signal.signal(signal.SIGUSR1, lambda number, frame: reactor.callFromThread(action))


async def _pushServerRun(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Serve one client with a store. ``--sender server``: once the bench
    says go, send it ``--count`` messages; the result once the last is
    confirmed. ``--sender client``: take what it sends; the count and the
    store's counters when the bench asks."""
    from twisted_alive import AliveServerFactory, MemorySessionStore, RedisSessionStore

    store: Any
    if args.impl == "memory":
        store = MemorySessionStore()
    elif args.impl == "redis":
        store = RedisSessionStore(reactor, HOST, args.redis_port, prefix=args.prefix)
    else:
        raise ValueError(f"unknown push-server store {args.impl!r}")
    factory = AliveServerFactory(store=store)
    done: Deferred[dict[str, Any]]
    if args.sender == "server":
        run = _PushRun(store, args.count, args.outstanding, args.size)
        done = run.done

        class Pusher(HeartbeatProtocol):
            def connectionOpened(self, resumed: bool) -> None:
                run.opened(self)

            def disconnected(self, loss: Loss) -> None:
                if self is run.protocol:
                    run.fail(f"the client's connection was lost: {loss.reason.name} {loss.detail}")

        _onSignal(reactor, run.go)
        factory.protocol = Pusher
    else:
        received = _Received(store)
        done = received.done

        class Taker(HeartbeatProtocol):
            def connectionOpened(self, resumed: bool) -> None:
                received.opened()

            def messageReceived(self, payload: bytes) -> None:
                received.received += 1

        _onSignal(reactor, received.report)
        factory.protocol = Taker
    port = reactor.listenTCP(0, factory, interface=HOST)
    await factory.recovered()
    emit({"port": port.getHost().port})
    return await done


def pushServer(args: argparse.Namespace) -> None:
    """A push run's server: print its result."""
    reactor = _reactor()
    raise SystemExit(_report(reactor, lambda: _pushServerRun(reactor, args)))


async def _pushClientRun(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A session (no store) with the server at ``--port``. ``--sender
    client``: once the bench says go, send ``--count`` messages; the result
    once the last is confirmed. ``--sender server``: take what the server
    sends, until the bench stops this process."""
    from twisted_alive import AliveClientFactory

    run = _PushRun(None, args.count, args.outstanding, args.size)

    class Peer(HeartbeatProtocol):
        def connectionOpened(self, resumed: bool) -> None:
            if args.sender == "client":
                run.opened(self)

        def messageReceived(self, payload: bytes) -> None:
            """Take it: the receiving cost is the protocol's own."""

        def disconnected(self, loss: Loss) -> None:
            run.fail(f"the connection was lost: {loss.reason.name} {loss.detail}")

    _onSignal(reactor, run.go)
    factory = AliveClientFactory()
    factory.protocol = Peer
    reactor.connectTCP(HOST, args.port, factory)
    return await run.done


def pushClient(args: argparse.Namespace) -> None:
    """A push run's client: print its result (``--sender client``)."""
    reactor = _reactor()
    raise SystemExit(_report(reactor, lambda: _pushClientRun(reactor, args)))


# -- command line -----------------------------------------------------------------------


ROLES: dict[str, Callable[[argparse.Namespace], None]] = {
    "server": serve,
    "oneway": client,
    "confirmed": client,
    "latency": client,
    "idle-server": serveIdle,
    "idle-client": idleClient,
    "detect-server": detectServer,
    "detect-peer": detectPeer,
    "store": storeClient,
    "stored": storedClient,
    "push-server": pushServer,
    "push-client": pushClient,
}


def parser() -> argparse.ArgumentParser:
    """The worker's command line."""
    p = argparse.ArgumentParser(prog="python -m twisted_alive.tools.bench_worker")
    p.add_argument("role", choices=sorted(ROLES))
    p.add_argument("--impl", default="alive")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--outstanding", type=int, default=100)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--misses", type=int, default=3)
    p.add_argument("--redis-port", type=int, default=6379)
    p.add_argument("--prefix", default="alive-bench:")
    p.add_argument("--sender", choices=("server", "client"), default="server")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Run one worker."""
    args = parser().parse_args(argv)
    _quietLogging()
    ROLES[args.role](args)


if __name__ == "__main__":
    main()
