"""
One connection of the twisted_alive protocol, sans-IO.

`Connection` is fed the bytes that arrived and the current time; it returns
events, and holds the bytes to send until `Connection.dataToSend` takes
them. It owns the frame decoder and the liveness state of its connection,
and drives the delivery state of the `Session` it carries. Every rule of
the HELLO exchange, of liveness and of delivery on one connection is here;
the Twisted adapter only moves bytes, keeps the timer and calls the
application.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from twisted_alive.core import frames as _frames
from twisted_alive.core.delivery import (
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_BYTES,
    DEFAULT_WINDOW,
    Entry,
    ProtocolViolation,
    Session,
)
from twisted_alive.core.frames import (
    DATA_OVERHEAD,
    HELLO_ASSIGNED,
    HELLO_KNOWN_FLAGS,
    HELLO_RESUMED,
    MIN_MAX_FRAME_SIZE,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    FrameDecoder,
    FrameError,
    Goodbye,
    GoodbyeCode,
    Hello,
    Ping,
    Pong,
    Reject,
)
from twisted_alive.core.liveness import PING_BURST, Liveness, TimerAction

_EXPIRED = TimerAction.EXPIRED
_PING = TimerAction.PING


def seconds(value: float) -> str:
    """A duration in seconds, to the millisecond, without trailing zeros."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


_ESCAPES = (("\\", "\\\\"), ("'", "\\'"), ("\r", "\\r"), ("\n", "\\n"), ("\t", "\\t"))

FIRST_BYTES_SHOWN = 16
"""How many of a non-speaking peer's first bytes a protocol error quotes."""


def describeBytes(data: bytes, limit: int = FIRST_BYTES_SHOWN) -> str:
    """
    The first ``limit`` bytes of ``data`` for a human: quoted text if they
    are printable ASCII (``'SSH-2.0-OpenSSH_'…``), else hex (``0x15 03 03…``);
    ``…`` says that more followed.
    """
    shown = data[:limit]
    more = "…" if len(data) > limit else ""
    if not shown:
        return "nothing"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in shown):
        text = shown.decode("ascii")
        for raw, escaped in _ESCAPES:
            text = text.replace(raw, escaped)
        return f"'{text}'{more}"
    return "0x" + shown.hex(" ") + more


class NotAlivePeer(ProtocolViolation):
    """
    The peer does not speak twisted_alive (version 2): its first bytes were
    no HELLO, or it reflected this side's own HELLO back.
    """


class Role(enum.Enum):
    """Which side of the HELLO exchange a connection plays."""

    PEER = "peer"
    """Keeps no sessions; sends HELLO at once."""
    CLIENT = "client"
    """Connecting side of a resumable session; sends HELLO at once."""
    SERVER = "server"
    """Accepting side that keeps sessions; answers the client's HELLO."""


class State(enum.Enum):
    """Where a `Connection` stands."""

    HANDSHAKE = "handshake"
    OPEN = "open"
    CLOSING = "closing"
    """This side sent GOODBYE."""
    PEER_CLOSING = "peer closing"
    """The peer sent GOODBYE."""
    FAILED = "failed"
    """A protocol error, an unknown session or an expired deadline."""


# The members, looked up once: in Python 3.11 each ``State.X`` goes through
# the enum metaclass (about 0.1 us), too slow for the per-frame paths.
_HANDSHAKE = State.HANDSHAKE
_OPEN = State.OPEN
_CLOSING = State.CLOSING
_PEER_CLOSING = State.PEER_CLOSING
_FAILED = State.FAILED


@dataclass(frozen=True, slots=True)
class Settings:
    """
    The parameters of one side of a connection.

    :ivar interval: seconds of outbound silence before a PING.
    :ivar misses: peer intervals of silence before the peer counts as dead.
    :ivar maxFrameSize: the largest frame accepted (bytes after the length).
    :ivar window: messages in flight at most, each way.
    :ivar maxQueue: messages queued behind the window at most.
    :ivar maxQueueBytes: payload bytes queued behind the window at most.
    :ivar minPeerInterval: smallest heartbeat interval accepted from a peer.
    :ivar maxPeerInterval: largest heartbeat interval accepted from a peer.
    """

    interval: float = 5.0
    misses: int = 3
    maxFrameSize: int = _frames.DEFAULT_MAX_FRAME_SIZE
    window: int = DEFAULT_WINDOW
    maxQueue: int = DEFAULT_MAX_QUEUE
    maxQueueBytes: int = DEFAULT_MAX_QUEUE_BYTES
    minPeerInterval: float = 0.1
    maxPeerInterval: float = 3600.0

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"heartbeatInterval must be positive, got {self.interval!r}")
        if self.interval < 0.001 or self.interval > 4_000_000:
            raise ValueError(
                "heartbeatInterval must be between 0.001 and 4000000 seconds, "
                f"got {self.interval!r}"
            )
        if self.misses < 1:
            raise ValueError(f"heartbeatMisses must be at least 1, got {self.misses!r}")
        if self.maxFrameSize < MIN_MAX_FRAME_SIZE or self.maxFrameSize > 2**32 - 1:
            raise ValueError(
                f"maxFrameSize must be between {MIN_MAX_FRAME_SIZE} and {2**32 - 1}, "
                f"got {self.maxFrameSize!r}"
            )
        if self.window < 1:
            raise ValueError(f"window must be at least 1, got {self.window!r}")

    @property
    def maxPayload(self) -> int:
        """The largest message payload a frame of `maxFrameSize` holds."""
        return self.maxFrameSize - (DATA_OVERHEAD - 4)

    def newSession(self, token: bytes = NO_SESSION) -> Session:
        """A session with these limits."""
        return Session(token, self.window, self.maxQueue, self.maxQueueBytes)


_SHARED_SETTINGS: dict[Settings, Settings] = {}
_MAX_SHARED_SETTINGS = 256


def sharedSettings(settings: Settings) -> Settings:
    """
    One instance for equal settings: thousands of connections made with the
    same parameters then hold one object, not one each. At most
    `_MAX_SHARED_SETTINGS` distinct settings are kept.
    """
    shared = _SHARED_SETTINGS.get(settings)
    if shared is not None:
        return shared
    if len(_SHARED_SETTINGS) < _MAX_SHARED_SETTINGS:
        _SHARED_SETTINGS[settings] = settings
    return settings


class HelloReceived(NamedTuple):
    """(Server role.) The client's HELLO arrived: answer with
    `Connection.acceptSession` or `Connection.refuseSession`."""

    hello: Hello


class Opened(NamedTuple):
    """Both HELLOs were exchanged; messages flow."""

    resumed: bool


class SessionUnknown(NamedTuple):
    """(Client role.) The peer did not resume the session asked for."""

    detail: str


class Confirmed(NamedTuple):
    """ACKs covered these entries (look rejected ones up in the outbox)."""

    entries: list[Entry]


class PongReceived(NamedTuple):
    """A PONG answered our PING after ``rtt`` seconds."""

    rtt: float


class GoodbyeReceived(NamedTuple):
    """The peer announced an orderly close."""

    code: GoodbyeCode
    reason: str


class Violation(NamedTuple):
    """
    The peer broke the protocol; a GOODBYE is due: hand the messages that
    arrived before the bad frame to the application, so that their ACK
    goes out before the GOODBYE (`Connection.dataToSend` adds it last),
    then close.
    """

    detail: str
    notAlive: bool = False
    """Whether the peer does not speak twisted_alive at all (see
    `NotAlivePeer`): a configuration error rather than a faulty peer."""


class Expired(NamedTuple):
    """The liveness deadline passed: the peer is presumed dead; abort."""

    detail: str


class Stalled(NamedTuple):
    """This process did not run for ``seconds``; the time was granted back."""

    seconds: float


Event = (
    HelloReceived
    | Opened
    | SessionUnknown
    | Confirmed
    | PongReceived
    | GoodbyeReceived
    | Violation
    | Expired
    | Stalled
)


class Connection:
    """
    The protocol state of one connection.

    :param settings: this side's parameters.
    :param role: this side's role in the HELLO exchange.
    :param now: the current time.
    :param session: the session to carry (client role: the one to resume or
        start). Peers get a fresh one that lives as long as the connection;
        servers get theirs in `acceptSession`.
    :param phase: where this end's wake times fall in a step of the grid
        (`Liveness`): 0.0 at one end of a link and 0.5 at the other, so that
        the two ends' PINGs never fall due together.
    :param nonce: the 64-bit nonce of this side's HELLO; random (and never
        0) unless given. A HELLO that comes back with it is a reflection.
    """

    __slots__ = (
        "settings",
        "role",
        "session",
        "decoder",
        "liveness",
        "state",
        "peerHello",
        "peerWindow",
        "peerMaxPayload",
        "resumed",
        "error",
        "acksSent",
        "_ackSent",
        "_held",
        "_pongDue",
        "_out",
        "_askedToken",
        "_goodbyeDue",
        "_firstBytes",
        "nonce",
        "reading",
        "writeThrough",
    )

    def __init__(
        self,
        settings: Settings,
        role: Role,
        now: float,
        session: Session | None = None,
        phase: float = 0.0,
        nonce: int | None = None,
    ) -> None:
        self.settings = settings = sharedSettings(settings)
        self.role = role
        self.session = session if session is not None else settings.newSession()
        self.decoder = FrameDecoder(settings.maxFrameSize)
        self.liveness = Liveness(
            settings.interval,
            settings.misses,
            now,
            phase,
            maxDeadline=settings.maxPeerInterval * settings.misses,
        )
        self.state = State.HANDSHAKE
        self.peerHello: Hello | None = None
        self.peerWindow = 0
        self.peerMaxPayload = settings.maxPayload
        self.resumed = False
        self.error: str | None = None
        self._ackSent = -1
        self.acksSent = 0
        """ACK frames queued for the peer on this connection."""
        self._held: tuple[list[_frames.Frame], str | None] | None = None
        self._pongDue: int | None = None
        self._out: list[bytes] = []
        self._askedToken = self.session.token
        self._goodbyeDue: bytes | None = None
        self._firstBytes = b""
        self.nonce = nonce if nonce is not None else secrets.randbits(64) | 1
        self.reading = False
        """For the adapter: whether it is reading a burst (sends wait for
        the write at its end)."""
        self.writeThrough = False
        """For the adapter: whether its transport's socket may be written
        directly."""
        if role is not Role.SERVER:
            self._sendHello(0)

    # -- output ------------------------------------------------------------

    def dataToSend(self, now: float) -> bytes:
        """Take the bytes queued for the peer (empty if none). A GOODBYE due
        after a protocol violation goes last, after the ACK of what the
        application finished meanwhile."""
        out = self._out
        if self._goodbyeDue is not None:
            out.append(self._goodbyeDue)
            self._goodbyeDue = None
        if not out:
            return b""
        self.liveness.sent(now)
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        return data

    def nextWake(self) -> float:
        """When the timer should next fire (`handleTimer`)."""
        return self.liveness.nextWake()

    @property
    def canSend(self) -> bool:
        """Whether new DATA may go out on this connection now."""
        return self.state is _OPEN

    # -- input -------------------------------------------------------------

    def receiveData(self, data: bytes, now: float) -> list[Event]:
        """
        Feed bytes that arrived from the peer.

        :returns: the events they caused, in order. New messages for the
            application are in ``session.inbox.pending``, not in events.
        """
        self.liveness.received(now)
        events: list[Event] = []
        error: str | None = None
        if self.peerHello is None and len(self._firstBytes) <= FIRST_BYTES_SHOWN:
            self._firstBytes += data[: FIRST_BYTES_SHOWN + 1 - len(self._firstBytes)]
        try:
            frames = self.decoder.feed(data)
        except FrameError as e:
            frames, error = e.frames, str(e)
            if (
                not frames
                and self.peerHello is None
                and self.state is _HANDSHAKE
                and self._held is None
            ):
                # The very first frame is not twisted_alive's.
                self._violateNotAlive(error, events)
                return events
        if self._held is not None:
            # A server still deciding on the session holds what followed
            # the client's HELLO; keep the order.
            heldFrames, heldError = self._held
            self._held = (heldFrames + frames, heldError or error)
            return events
        self._run(frames, error, now, events)
        if self._pongDue is not None:
            self._answerPing()
        return events

    def _answerPing(self) -> None:
        """The PONG of the read burst, for its last PING; one that came
        before a bad frame is answered too."""
        if self.state is not _FAILED or self._goodbyeDue is not None:
            assert self._pongDue is not None
            self._out.append(_frames.encodePong(self._pongDue))
        self._pongDue = None

    def _run(
        self, frames: list[_frames.Frame], error: str | None, now: float, events: list[Event]
    ) -> None:
        """Act on decoded frames, then on a decoding error that followed them."""
        state = self.state
        if frames and (state is _OPEN or state is _CLOSING) and type(frames[0]) is Data:
            # The common case: a run of DATA in sequence, accepted in one step.
            accepted = self.session.inbox.acceptInOrder(frames)
            if accepted:
                frames = frames[accepted:]
        try:
            for index, frame in enumerate(frames):
                if self._handleFrame(frame, now, events):
                    if self.state is _HANDSHAKE and self.role is Role.SERVER:
                        self._held = (frames[index + 1 :], error)
                    return
        except NotAlivePeer as e:
            self._violateNotAlive(str(e), events)
            return
        except ProtocolViolation as e:
            self._violate(str(e), events)
            return
        if error is not None:
            self._violate(error, events)

    def _violateNotAlive(self, error: str, events: list[Event]) -> None:
        """The peer's first bytes are not twisted_alive's (``error`` says
        what the decoder or the HELLO rules found)."""
        if error.startswith("the peer "):
            detail = error
        elif error.startswith("unsupported protocol version"):
            detail = f"the peer speaks another version of twisted_alive: {error}"
        else:
            first = self._firstBytes
            detail = (
                "the peer does not speak twisted_alive: its first bytes were "
                + describeBytes(first)
            )
            if len(first) >= 2 and first[0] in (0x15, 0x16) and first[1] == 0x03:
                detail += " (a TLS record: TLS mismatch, the peer expects TLS)"
            detail += f" ({error})"
        self._fail(GoodbyeCode.PROTOCOL_ERROR, detail, events, notAlive=True)

    def _handleFrame(self, frame: _frames.Frame, now: float, events: list[Event]) -> bool:
        """Act on one frame; ``True`` to stop reading further frames."""
        state = self.state
        if state is _FAILED:
            return True
        if type(frame) is Data:
            if state is _HANDSHAKE:
                raise ProtocolViolation("expected HELLO first, got DATA")
            if state is _PEER_CLOSING:
                raise ProtocolViolation("DATA after GOODBYE")
            self.session.inbox.accept(frame.seq, frame.payload)
            return False
        if type(frame) is Ack:
            if state is _HANDSHAKE:
                raise ProtocolViolation("expected HELLO first, got ACK")
            entries = self.session.outbox.ack(frame.seq)
            if entries:
                events.append(Confirmed(entries))
                self.pump(now)
            return False
        if type(frame) is Ping:
            if state is _HANDSHAKE:
                raise ProtocolViolation("expected HELLO first, got PING")
            if not self.liveness.pingReceived(now):
                raise ProtocolViolation(
                    f"too many PINGs: at most {PING_BURST} per heartbeat interval "
                    f"({seconds(self.liveness.peerInterval)} s) are allowed"
                )
            # One PONG per read burst, for the last PING: a peer that floods
            # PINGs without reading can't make this side buffer PONGs.
            self._pongDue = frame.id
            return False
        if type(frame) is Pong:
            if state is _HANDSHAKE:
                raise ProtocolViolation("expected HELLO first, got PONG")
            sample = self.liveness.pongReceived(frame.id, now)
            if sample is not None:
                events.append(PongReceived(sample))
            return False
        if type(frame) is Hello:
            self._handleHello(frame, now, events)
            return self.state is State.FAILED or (
                self.role is Role.SERVER and self.state is State.HANDSHAKE
            )
        if type(frame) is Goodbye:
            return self._handleGoodbye(frame, events)
        if type(frame) is Reject:
            if state is State.HANDSHAKE:
                raise ProtocolViolation("expected HELLO first, got REJECT")
            self.session.outbox.reject(frame.seq, frame.reason)
            return False
        raise AssertionError(f"unhandled frame {frame!r}")  # pragma: no cover

    def _handleGoodbye(self, frame: Goodbye, events: list[Event]) -> bool:
        if (
            self.role is Role.CLIENT
            and frame.code is GoodbyeCode.SESSION_UNKNOWN
            and self.state is State.HANDSHAKE
        ):
            self.state = State.FAILED
            self.error = f"peer does not know the session: {frame.reason}"
            events.append(GoodbyeReceived(frame.code, frame.reason))
            events.append(SessionUnknown(self.error))
            return True
        self.state = State.PEER_CLOSING
        events.append(GoodbyeReceived(frame.code, frame.reason))
        return False

    def _handleHello(self, hello: Hello, now: float, events: list[Event]) -> None:
        if self.peerHello is not None:
            raise ProtocolViolation("a second HELLO on one connection")
        if hello.nonce == self.nonce and self.role is not Role.SERVER:
            # Our own HELLO came back: an echo server, or a connection to
            # itself. Nothing on the other end would ever process a message.
            raise NotAlivePeer("the peer echoed our own HELLO: it does not speak twisted_alive")
        self._checkHelloRole(hello)
        self._firstBytes = b""
        settings = self.settings
        if not settings.minPeerInterval <= hello.interval <= settings.maxPeerInterval:
            raise ProtocolViolation(
                f"heartbeat interval {seconds(hello.interval)} s is outside the accepted range "
                f"{seconds(settings.minPeerInterval)}..{seconds(settings.maxPeerInterval)} s"
            )
        if hello.maxFrameSize < MIN_MAX_FRAME_SIZE:
            raise ProtocolViolation(
                f"HELLO max_frame {hello.maxFrameSize} is below the minimum of "
                f"{MIN_MAX_FRAME_SIZE}"
            )
        if hello.window < 1:
            raise ProtocolViolation("HELLO window 0 is invalid (it must be at least 1)")
        self.peerHello = hello
        self.liveness.handshake(hello.interval, now)
        if self.role is Role.SERVER:
            events.append(HelloReceived(hello))
            return
        if self.role is Role.PEER:
            if hello.session != NO_SESSION and not hello.flags & HELLO_ASSIGNED:
                self._fail(
                    GoodbyeCode.SESSION_UNKNOWN,
                    "this peer keeps no sessions and cannot resume one",
                    events,
                )
                return
            self._open(hello, False, now, events)
            return
        # Client: did the server resume the session we asked for?
        asked = self._askedToken
        if asked == NO_SESSION:
            self.session.token = hello.session
            self._open(hello, False, now, events)
        elif self.session.matches(hello.session) and hello.flags & HELLO_RESUMED:
            self._open(hello, True, now, events)
        else:
            self.state = State.FAILED
            self.error = "peer did not resume the session (it keeps no sessions)"
            events.append(SessionUnknown(self.error))

    def _checkHelloRole(self, hello: Hello) -> None:
        """The flag rules of the HELLO exchange (``docs/protocol.md``)."""
        flags = hello.flags & HELLO_KNOWN_FLAGS
        if self.role is Role.SERVER:
            if flags:
                raise ProtocolViolation(
                    f"a client's HELLO must not set ASSIGNED or RESUMED (flags 0x{flags:02x}): "
                    "the peer answers as a server"
                )
            return
        if flags & HELLO_ASSIGNED:
            if hello.session == NO_SESSION:
                raise ProtocolViolation("HELLO sets ASSIGNED but carries no session token")
        elif flags & HELLO_RESUMED:
            raise ProtocolViolation("HELLO sets RESUMED without ASSIGNED")
        elif hello.session != NO_SESSION and self.role is Role.CLIENT:
            raise ProtocolViolation(
                "the peer's HELLO asks to resume a session: it is a client, not a server"
            )
        if flags & HELLO_RESUMED and (
            self._askedToken == NO_SESSION or not self.session.matches(hello.session)
        ):
            raise ProtocolViolation("HELLO sets RESUMED for a session this side did not ask for")

    def acceptSession(self, session: Session, resumed: bool, now: float) -> list[Event]:
        """
        (Server role.) Answer the client's HELLO with ``session``, new or
        resumed. Messages queued on this connection before it carried a
        session move to the end of ``session``'s queue.
        """
        assert self.role is Role.SERVER and self.peerHello is not None
        events: list[Event] = []
        if self.state is not State.HANDSHAKE:
            return events  # closed meanwhile: a GOODBYE went instead of HELLO
        self.session.outbox.moveQueueTo(session.outbox)
        self.session = session
        self._sendHello(HELLO_ASSIGNED | (HELLO_RESUMED if resumed else 0))
        try:
            self._open(self.peerHello, resumed, now, events)
        except ProtocolViolation as e:
            self._violate(str(e), events)
            return events
        held, self._held = self._held, None
        if held is not None:
            self._run(held[0], held[1], now, events)
            if self._pongDue is not None:
                self._answerPing()
        return events

    def refuseSession(self, detail: str) -> None:
        """(Server role.) The client's token is unknown: say so, then close."""
        self.state = State.FAILED
        self.error = detail
        self._held = None
        self._out.append(_frames.encode(Goodbye(GoodbyeCode.SESSION_UNKNOWN, detail)))

    def _open(self, hello: Hello, resumed: bool, now: float, events: list[Event]) -> None:
        self.peerWindow = hello.window
        self.peerMaxPayload = min(self.settings.maxPayload, hello.maxFrameSize - 9)
        self.resumed = resumed
        outbox = self.session.outbox
        outbox.resume(hello.nextExpected)
        tooLarge = outbox.firstTooLargeResend(self.peerMaxPayload)
        if tooLarge is not None:
            raise ProtocolViolation(
                f"the peer's max_frame of {hello.maxFrameSize} is too small for message "
                f"{tooLarge.seq} ({len(tooLarge.payload)} bytes), which it has not "
                "acknowledged: the session cannot continue"
            )
        if self.state is State.HANDSHAKE:
            self.state = State.OPEN
        events.append(Opened(resumed))
        inbox = self.session.inbox
        if inbox.processedUpTo or inbox.rejections or inbox.sentRejections:
            self.flushAck(resend=True)
        self.pump(now)

    def _sendHello(self, flags: int) -> None:
        s = self.settings
        self._out.append(
            _frames.encode(
                Hello(
                    PROTOCOL_VERSION,
                    flags,
                    s.interval,
                    s.maxFrameSize,
                    s.window,
                    self.session.inbox.nextExpected,
                    self.session.token,
                    self.nonce,
                )
            )
        )

    # -- actions -------------------------------------------------------------

    def send(self, payload: bytes, handle: Any, now: float) -> Entry:
        """
        Queue a message (see `Outbox.submit`); if it may go out now, its DATA
        frame is queued for `dataToSend` at once.

        :param handle: the caller's object for this message (a Deferred).
        :returns: its entry (``seq`` 0 while it waits in the queue).
        :raises QueueFull: at the queue's limit; nothing was queued.
        """
        outbox = self.session.outbox
        if self.state is _OPEN:
            entry = outbox.sendNow(payload, handle, self.peerWindow, now, self.peerMaxPayload)
            if entry is not None:
                out = self._out
                out.append(_frames.encodeDataHeader(entry.seq, len(payload)))
                out.append(payload)
                return entry
        entry = outbox.submit(payload, handle)
        self.pump(now)
        return entry

    def sendMany(self, payloads: Sequence[bytes], handle: Any, member: Any, now: float) -> None:
        """
        Queue several messages at once, all or none (see
        `Outbox.submitMany`); the DATA frames of those the windows allow are
        queued for `dataToSend` at once.

        :param handle: the caller's object for the last message.
        :param member: the caller's object for each of the others.
        :raises QueueFull: if they do not all fit; nothing was queued.
        """
        outbox = self.session.outbox
        entries = outbox.submitMany(
            payloads,
            handle,
            member,
            self.peerWindow if self.state is _OPEN else 0,
            now,
            self.peerMaxPayload,
        )
        if entries:
            self._queueData(entries)
        if outbox.queue:
            self.pump(now)

    def pump(self, now: float) -> int:
        """
        Write as many queued messages as the windows allow.

        :returns: how many DATA frames were queued for sending.
        """
        if self.state is not _OPEN:
            return 0
        outbox = self.session.outbox
        if not outbox.queue or len(outbox.inflight) >= self.peerWindow:
            return 0
        entries = outbox.takeSendable(self.peerWindow, now, self.peerMaxPayload)
        self._queueData(entries)
        return len(entries)

    def _queueData(self, entries: list[Entry]) -> None:
        """Queue the DATA frames of ``entries`` for `dataToSend`, in order."""
        append = self._out.append
        header = _frames.encodeDataHeader
        for entry in entries:
            payload = entry.payload
            append(header(entry.seq, len(payload)))
            append(payload)

    def flushAck(self, resend: bool = False) -> None:
        """
        Queue the REJECTs of messages the application failed on (with
        ``resend``, also those sent on earlier connections of the session),
        then one cumulative ACK if processing advanced since the last one.
        """
        if (self.state is _FAILED and self._goodbyeDue is None) or self.peerHello is None:
            return
        inbox = self.session.inbox
        if inbox.rejections or (resend and inbox.sentRejections):
            for seq, reason in inbox.takeRejections(resend):
                self._out.append(_frames.encode(Reject(seq, reason)))
        processed = inbox.processedUpTo
        if processed > self._ackSent:
            self._ackSent = processed
            inbox.ackedUpTo = processed
            self.acksSent += 1
            self._out.append(_frames.encodeAck(processed))

    def close(self, code: GoodbyeCode = GoodbyeCode.NORMAL, reason: str = "") -> None:
        """Announce an orderly close with GOODBYE; no DATA goes out after it."""
        if self.state in (State.OPEN, State.HANDSHAKE, State.PEER_CLOSING):
            self._out.append(_frames.encode(Goodbye(code, reason)))
            if self.state is not State.PEER_CLOSING:
                self.state = State.CLOSING

    def handleTimer(self, now: float, scheduledFor: float, queued: float = 0.0) -> list[Event]:
        """
        The timer armed for ``scheduledFor`` fired at ``now``; act on
        liveness. ``queued``: see `Liveness.handleTimer`.
        """
        action, stall = self.liveness.handleTimer(now, scheduledFor, queued)
        events: list[Event] = []
        if stall:
            events.append(Stalled(stall))
        if action is _EXPIRED:
            self.state = _FAILED
            self.error = self.liveness.silenceDetail(now)
            events.append(Expired(self.error))
        elif action is _PING:
            self._out.append(_frames.encodePing(self.liveness.pingId))
        return events

    def _violate(self, detail: str, events: list[Event]) -> None:
        self._fail(GoodbyeCode.PROTOCOL_ERROR, detail, events)

    def _fail(
        self, code: GoodbyeCode, detail: str, events: list[Event], notAlive: bool = False
    ) -> None:
        """Fail the connection: the GOODBYE goes out with the next
        `dataToSend`, after the ACK of the messages that came before."""
        if self.state is State.FAILED:
            return
        self.state = State.FAILED
        self.error = detail
        self._goodbyeDue = _frames.encode(Goodbye(code, detail))
        events.append(Violation(detail, notAlive))
