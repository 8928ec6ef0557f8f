r"""
One connection of the twisted_alive protocol, sans-IO.

`Connection` is fed the bytes that arrived, the timer's firing and the
application's calls, each with the current time; it queues events, which
`Connection.nextEvent` hands out one at a time (in the style of h11 and
aioquic), and holds the bytes to send until `Connection.dataToSend` takes
them. It owns the frame decoder and the liveness state of its connection,
and drives the delivery state of the `Session` it carries.

Every rule of the protocol on one connection is here: the HELLO exchange,
liveness, delivery, the hand-off of received messages to the application
(one at a time, answered with `Connection.messageProcessed` or
`Connection.messageFailed`), the outcome of every sent message
(`Confirmed`, `Rejected`, `TooLarge`), and closing in both directions
(`CloseNow`, with the `Ending` that says why). The Twisted adapter only
moves bytes, keeps one timer, calls the application and fires Deferreds.

How each state answers each frame (the rules of `Connection._handleFrame`):

============  =========  ========  =========  ============  ========
frame         HANDSHAKE  OPEN      CLOSING    PEER_CLOSING  FAILED
============  =========  ========  =========  ============  ========
HELLO         checked    error     checked*   error         ignored
DATA          error      accepted  accepted   error         ignored
ACK           error      confirms  confirms   confirms      ignored
REJECT        error      noted     noted      noted         ignored
PING          error      PONG      PONG       PONG          ignored
PONG          error      RTT       RTT        RTT           ignored
GOODBYE       closes**   closes    closes     closes        ignored
============  =========  ========  =========  ============  ========

\* the peer's first HELLO, when this side said GOODBYE before it came;
until that HELLO, CLOSING answers every other frame but GOODBYE as
HANDSHAKE does (an error). A second HELLO is always an error.
\*\* a client's GOODBYE(SESSION_UNKNOWN) in answer to its HELLO is
`SessionUnknown`. "error" is a protocol violation: GOODBYE(PROTOCOL_ERROR),
after the ACK of what came before and was processed.
"""

from __future__ import annotations

import enum
import secrets
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from twisted_alive.core import frames as _frames
from twisted_alive.core.checks import atLeast, positive
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
from twisted_alive.core.reasons import Cause, Reason

_EXPIRED = TimerAction.EXPIRED
_PING = TimerAction.PING

ABORT_GRACE = 2.0
"""Seconds a connection closed in order may take to flush its last bytes
before it is aborted (a peer that stopped reading would hold it open)."""


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
    :ivar closeTimeout: seconds an orderly close waits for what it waits
        for (the queue to drain, acknowledgements, the peer's close) before
        it closes anyway.
    :ivar maxUnsentBytes: bytes the transport may hold for a peer that does
        not read, beyond the DATA frames in flight (see
        `Connection.checkUnsent`); never less than two largest frames.
    """

    interval: float = 5.0
    misses: int = 3
    maxFrameSize: int = _frames.DEFAULT_MAX_FRAME_SIZE
    window: int = DEFAULT_WINDOW
    maxQueue: int = DEFAULT_MAX_QUEUE
    maxQueueBytes: int = DEFAULT_MAX_QUEUE_BYTES
    minPeerInterval: float = 0.1
    maxPeerInterval: float = 3600.0
    closeTimeout: float = 10.0
    maxUnsentBytes: int = 4 * 1048576

    def __post_init__(self) -> None:
        positive("heartbeatInterval", self.interval)
        if self.interval < 0.001 or self.interval > 4_000_000:
            raise ValueError(
                "heartbeatInterval must be between 0.001 and 4000000 seconds, "
                f"got {self.interval!r}"
            )
        atLeast("heartbeatMisses", self.misses, 1)
        if self.maxFrameSize < MIN_MAX_FRAME_SIZE or self.maxFrameSize > 2**32 - 1:
            raise ValueError(
                f"maxFrameSize must be between {MIN_MAX_FRAME_SIZE} and {2**32 - 1}, "
                f"got {self.maxFrameSize!r}"
            )
        atLeast("window", self.window, 1)

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


MessageReceived = Data
"""A message for the application (the `Data` frame that carried it: ``seq``
and ``payload``), handed out by `Connection.nextEvent` one at a time: the
next one comes after `Connection.messageProcessed` or
`Connection.messageFailed` answered this one."""


class Confirmed(NamedTuple):
    """The peer's application processed these messages: fire each entry's
    ``handle`` with a receipt (``seq``, ``sentAt``). Messages sent together
    appear once, as their last entry."""

    entries: list[Entry]


class Rejected(NamedTuple):
    """The peer's application failed on the message(s) of ``handle``; the
    ``text`` says on which and why."""

    handle: Any
    text: str


class TooLarge(NamedTuple):
    """The message(s) of ``handle`` are larger than the peer accepts; they
    were never sent (unless ``maybeProcessed``: others sent together were)."""

    handle: Any
    text: str
    maybeProcessed: bool


class Ending(NamedTuple):
    """Why a connection ends, as far as this side knows: the first cause
    recorded wins (`Connection.ending`)."""

    reason: Reason
    detail: str
    goodbye: GoodbyeCode | None = None
    cause: Cause | None = None


class CloseNow(NamedTuple):
    """
    Close the transport now: in order (``abort`` false: flush what is
    written, then FIN; if that takes more than `ABORT_GRACE` seconds, a
    second `CloseNow` with ``abort`` follows) or at once with an RST
    (``abort`` true). ``ending`` says why.
    """

    abort: bool
    ending: Ending


class PeerNotReading(NamedTuple):
    """The peer does not read what is sent (``detail`` says how it shows);
    a `CloseNow` (abort) follows."""

    detail: str


class PongReceived(NamedTuple):
    """A PONG answered our PING after ``rtt`` seconds."""

    rtt: float


class GoodbyeReceived(NamedTuple):
    """The peer announced an orderly close."""

    code: GoodbyeCode
    reason: str


class Violation(NamedTuple):
    """
    The peer broke the protocol. The messages that arrived before the bad
    frame are still handed out while the application answers each at once;
    one still being processed when the next is due stays unacknowledged. A
    `CloseNow` follows; the ACK of what was processed, then the GOODBYE, go
    out with the next `Connection.dataToSend`.
    """

    detail: str
    notAlive: bool = False
    """Whether the peer does not speak twisted_alive at all (see
    `NotAlivePeer`): a configuration error rather than a faulty peer."""


class Expired(NamedTuple):
    """The liveness deadline passed: the peer is presumed dead; a
    `CloseNow` (abort) follows."""

    detail: str


class Stalled(NamedTuple):
    """This process did not run for ``seconds``; the time was granted back."""

    seconds: float


Event = (
    HelloReceived
    | Opened
    | SessionUnknown
    | MessageReceived
    | Confirmed
    | Rejected
    | TooLarge
    | PongReceived
    | GoodbyeReceived
    | Violation
    | Expired
    | Stalled
    | PeerNotReading
    | CloseNow
)

_LOCAL = 1
_PEER = 2
"""Values of ``Connection._closing``: who started the orderly close."""


def describeSize(size: int) -> str:
    """A size in bytes, or in MiB (to a tenth) from 1 MiB up."""
    if size < 1048576:
        return f"{size} bytes"
    return f"{size / 1048576:.1f} MiB"


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
        "_saidHello",
        "_goodbyeDue",
        "_firstBytes",
        "nonce",
        "reading",
        "writeThrough",
        "ending",
        "wakeMoved",
        "bytesOut",
        "events",
        "_handOff",
        "_closing",
        "_readClosed",
        "_goodbye",
        "_closeDue",
        "_closeAt",
        "_abortAt",
        "_closedNow",
        "_aborted",
        "_now",
        "_stuckSince",
        "_unsentSeen",
        "_writtenSeen",
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
        self._saidHello = False
        self._goodbyeDue: bytes | None = None
        self._firstBytes = b""
        self.nonce = nonce if nonce is not None else secrets.randbits(64) | 1
        self.reading = False
        """For the adapter: whether it is reading a burst (sends wait for
        the write at its end)."""
        self.writeThrough = False
        """For the adapter: whether its transport's socket may be written
        directly."""
        self.ending: Ending | None = None
        """Why the connection ends, once something ended it (the first cause
        recorded wins); ``None`` while nothing did."""
        self.wakeMoved = False
        """Set when a deadline earlier than the timer's may have appeared:
        the adapter re-arms its timer for `nextWake` (and clears this)."""
        self.bytesOut = 0
        """Bytes `dataToSend` handed out."""
        self.events: deque[Event] = deque()
        """The queued events (read it to know whether there are any; take
        them with `nextEvent`)."""
        self._handOff = True
        self._closing = 0
        self._readClosed = False
        self._goodbye: tuple[GoodbyeCode, str] = (GoodbyeCode.NORMAL, "")
        self._closeDue = False
        self._closeAt: float | None = None
        self._abortAt: float | None = None
        self._closedNow = False
        self._aborted = False
        self._now = now
        self._stuckSince: float | None = None
        self._unsentSeen = 0
        self._writtenSeen = 0
        if role is not Role.SERVER:
            self._sendHello(0)

    # -- events ------------------------------------------------------------

    def nextEvent(self) -> Event | None:
        """
        The next event, or ``None`` when there is none for now.

        Queued events come first, in order; then received messages, one at
        a time: after a `MessageReceived`, the next one waits until
        `messageProcessed` or `messageFailed` answered it (other events do
        not wait) and, if the session's inbox `waitsForCommit`, until the
        store committed its position (`positionCommitted`). When nothing
        is left to hand out, an orderly close that has nothing more to
        wait for yields its `CloseNow`. After a
        `CloseNow` nothing more is handed out: what was received stays in
        the session's inbox.
        """
        events = self.events
        if events:
            return events.popleft()
        inbox = self.session.inbox
        if (
            inbox.pending
            and not inbox.handedOut
            and self._handOff
            and not self._closedNow
            and (not inbox.waitsForCommit or inbox.committedUpTo >= inbox.processedUpTo)
        ):
            message = inbox.pending.popleft()
            inbox.handedOut = message.seq
            return message
        if self._closing or self._closeDue:
            self._checkClose()
            if events:
                return events.popleft()
        return None

    @property
    def askedToResume(self) -> bool:
        """(Client role.) Whether this connection's HELLO asked to resume a
        session (it carried a token): a protocol error before the session
        opened then means that the session cannot be resumed (see
        ``docs/protocol.md``, Sessions and resume)."""
        return self._askedToken != NO_SESSION

    @property
    def handingOut(self) -> bool:
        """Whether a received message waits to be handed out now (none is
        being processed)."""
        return self._handOff and not self._closedNow and self.session.inbox.mayHandOut

    def takeEvents(self) -> list[Event]:
        """Take every queued event, without handing out received messages
        (they stay in ``session.inbox.pending``)."""
        out = list(self.events)
        self.events.clear()
        return out

    def messageProcessed(self, seq: int) -> None:
        """The application processed message ``seq`` (the `MessageReceived`
        handed out last): the next ACK covers it; the next message may go."""
        self.session.inbox.processed(seq)

    def messageFailed(self, seq: int, text: str) -> None:
        """The application failed on message ``seq``: it counts as
        processed, and a REJECT carrying ``text`` (at most 1,000 characters)
        goes to the peer before the ACK that covers it."""
        self.session.inbox.failed(seq, text[:1000])

    # -- output ------------------------------------------------------------

    def dataToSend(self, now: float) -> bytes:
        """Take the bytes queued for the peer (empty if none), with the
        REJECTs and the cumulative ACK of what the application processed
        since the last ACK. A GOODBYE due after a protocol violation goes
        last, after that ACK."""
        inbox = self.session.inbox
        processed = inbox.ackUpTo
        if (processed > self._ackSent and processed) or inbox.rejections:
            self.flushAck()
        out = self._out
        if self._goodbyeDue is not None:
            if self._goodbyeDue:
                out.append(self._goodbyeDue)
            self._goodbyeDue = None
        if not out:
            return b""
        self.liveness.sent(now)
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self.bytesOut += len(data)
        return data

    def nextWake(self) -> float:
        """When the timer should next fire (`handleTimer`): the liveness
        schedule, or sooner a close deadline or the time at which a
        transport that takes nothing shows that the peer does not read;
        ``inf`` once the connection was told to close at once."""
        if self._closedNow:
            return self._abortAt if self._abortAt is not None else float("inf")
        wake = self.liveness.nextWake()
        closeAt = self._closeAt
        if closeAt is not None and closeAt < wake:
            wake = closeAt
        stuck = self._stuckSince
        if stuck is not None:
            # A hair after the deadline, so that the check finds it passed.
            notReading = stuck + self.liveness.deadline + 1e-6
            if notReading < wake:
                wake = notReading
        return wake

    @property
    def canSend(self) -> bool:
        """Whether new DATA may go out on this connection now."""
        return self.state is _OPEN

    # -- input -------------------------------------------------------------

    def receiveData(self, data: bytes, now: float) -> None:
        """
        Feed bytes that arrived from the peer; what they cause comes out of
        `nextEvent`.
        """
        self._now = now
        self.liveness.received(now)
        events = self.events
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
                return
        if self._held is not None:
            # A server still deciding on the session holds what followed
            # the client's HELLO; keep the order.
            heldFrames, heldError = self._held
            self._held = (heldFrames + frames, heldError or error)
            return
        self._run(frames, error, now, events)
        if self._pongDue is not None:
            self._answerPing()

    def _answerPing(self) -> None:
        """The PONG of the read burst, for its last PING; one that came
        before a bad frame is answered too."""
        if self.state is not _FAILED or self._goodbyeDue is not None:
            assert self._pongDue is not None
            self._out.append(_frames.encodePong(self._pongDue))
        self._pongDue = None

    def _run(
        self, frames: list[_frames.Frame], error: str | None, now: float, events: deque[Event]
    ) -> None:
        """Act on decoded frames, then on a decoding error that followed them."""
        state = self.state
        if (
            frames
            and (state is _OPEN or (state is _CLOSING and self.peerHello is not None))
            and type(frames[0]) is Data
        ):
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

    def _violateNotAlive(self, error: str, events: deque[Event]) -> None:
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

    def _handleFrame(self, frame: _frames.Frame, now: float, events: deque[Event]) -> bool:
        """Act on one frame; ``True`` to stop reading further frames."""
        state = self.state
        if state is _FAILED:
            return True
        if self.peerHello is None and state is _CLOSING:
            # This side said GOODBYE before the peer's HELLO came: nothing
            # but HELLO or GOODBYE may come first, as in HANDSHAKE.
            state = _HANDSHAKE
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
                self._outcomes(entries, events)
                self.pump(now)
                if self._closing:
                    self._checkClose()
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
            if state is _HANDSHAKE:
                raise ProtocolViolation("expected HELLO first, got REJECT")
            self.session.outbox.reject(frame.seq, frame.reason)
            return False
        raise AssertionError(f"unhandled frame {frame!r}")  # pragma: no cover

    def _handleGoodbye(self, frame: Goodbye, events: deque[Event]) -> bool:
        detail = f"peer said GOODBYE {frame.code.name}"
        if frame.reason:
            detail += f": {frame.reason}"
        error = frame.code is GoodbyeCode.PROTOCOL_ERROR
        self._end(Reason.PROTOCOL_ERROR if error else Reason.CLEAN_CLOSE, detail, frame.code)
        events.append(GoodbyeReceived(frame.code, frame.reason))
        if (
            self.role is Role.CLIENT
            and frame.code is GoodbyeCode.SESSION_UNKNOWN
            and self.state is State.HANDSHAKE
        ):
            self.state = State.FAILED
            self.error = f"peer does not know the session: {frame.reason}"
            self._closeDue = True
            events.append(SessionUnknown(self.error))
            return True
        self.state = State.PEER_CLOSING
        if not self._closing:
            self._closing = _PEER
        self._startCloseTimer()
        return False

    def _handleHello(self, hello: Hello, now: float, events: deque[Event]) -> None:
        if self.peerHello is not None:
            raise ProtocolViolation("a second HELLO on one connection")
        if self.state is _PEER_CLOSING:
            raise ProtocolViolation("HELLO after GOODBYE")
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
            if not self._closing:
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
            self._end(Reason.LOCAL_CLOSE, self.error)
            self._closeDue = True
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

    def acceptSession(self, session: Session, resumed: bool, now: float) -> None:
        """
        (Server role.) Answer the client's HELLO with ``session``, new or
        resumed. Messages queued on this connection before it carried a
        session move to the end of ``session``'s queue.
        """
        assert self.role is Role.SERVER and self.peerHello is not None
        self._now = now
        events = self.events
        if self.state is not State.HANDSHAKE:
            return  # closed meanwhile: a GOODBYE went instead of HELLO
        self.session.outbox.moveQueueTo(session.outbox)
        self.session = session
        try:
            # The client's position must fit the session's before this side
            # answers: a refusal is a GOODBYE instead of a HELLO, so that
            # the client knows the session never opened.
            session.outbox.checkResume(self.peerHello.nextExpected)
        except ProtocolViolation as e:
            self._violate(str(e), events)
            return
        self._sendHello(HELLO_ASSIGNED | (HELLO_RESUMED if resumed else 0))
        try:
            self._open(self.peerHello, resumed, now, events)
        except ProtocolViolation as e:
            self._violate(str(e), events)
            return
        held, self._held = self._held, None
        if held is not None:
            self._run(held[0], held[1], now, events)
            if self._pongDue is not None:
                self._answerPing()

    def refuseSession(self, detail: str | None = None) -> None:
        """(Server role.) The client's token is unknown: say so (``detail``,
        by default "session TOKEN8 is unknown or expired", with the first 8
        hex digits of the token), then close."""
        if detail is None:
            token = self.peerHello.session if self.peerHello is not None else b""
            detail = f"session {token.hex()[:8]} is unknown or expired"
        self.state = State.FAILED
        self.error = detail
        self._end(Reason.LOCAL_CLOSE, f"refused: {detail}")
        self._closeDue = True
        self._held = None
        self._out.append(_frames.encode(Goodbye(GoodbyeCode.SESSION_UNKNOWN, detail)))

    def _open(self, hello: Hello, resumed: bool, now: float, events: deque[Event]) -> None:
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
        self.wakeMoved = True  # the peer's interval sets the schedule now
        events.append(Opened(resumed))
        inbox = self.session.inbox
        if inbox.processedUpTo or inbox.rejections or inbox.sentRejections:
            self.flushAck(resend=True)
        self.pump(now)
        if self._closing:
            self._checkClose()

    def _sendHello(self, flags: int) -> None:
        self._saidHello = True
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

    def refusal(self) -> tuple[bool, str] | None:
        """
        Why no message may be sent now, or ``None`` if it may: ``(True,
        text)`` if this side's application called `close` (sending after
        one's own close is a programming error), ``(False, text)`` if the
        connection is closing or failed otherwise.
        """
        state = self.state
        if (state is _OPEN or state is _HANDSHAKE) and not self._closing and not self._closedNow:
            return None
        if self._closing == _LOCAL:
            return True, "called after close()"
        return False, "connection is closing"

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

    def sendMany(self, payloads: Sequence[bytes], handle: Any, now: float) -> None:
        """
        Queue several messages at once, all or none, with one ``handle`` for
        their common outcome (see `Outbox.submitMany`); the DATA frames of
        those the windows allow are queued for `dataToSend` at once.

        :raises QueueFull: if they do not all fit; nothing was queued.
        """
        outbox = self.session.outbox
        entries = outbox.submitMany(
            payloads,
            handle,
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
        Write as many queued messages as the windows allow; a message too
        large for the peer becomes a `TooLarge` event.

        :returns: how many DATA frames were queued for sending.
        """
        if self.state is not _OPEN:
            return 0
        outbox = self.session.outbox
        if not outbox.queue or len(outbox.inflight) >= self.peerWindow:
            return 0
        entries = outbox.takeSendable(self.peerWindow, now, self.peerMaxPayload)
        self._queueData(entries)
        if outbox.tooLarge:
            self._tooLarge()
        return len(entries)

    def _tooLarge(self) -> None:
        """Report the messages `Outbox.takeSendable` found too large for
        the peer: messages sent together fail as one."""
        outbox = self.session.outbox
        entries, outbox.tooLarge = outbox.tooLarge, []
        for entry in entries:
            if entry.handle is None:
                continue
            text = (
                f"message of {len(entry.payload)} bytes exceeds the peer's maximum "
                f"of {self.peerMaxPayload} bytes"
            )
            # One of several sent together: the others may have gone out.
            maybe = entry.batch != 1
            self.events.append(TooLarge(entry.handle, text, maybe))

    def _outcomes(self, entries: list[Entry], events: deque[Event]) -> None:
        """The outcomes of the messages an ACK covered: `Confirmed` for those
        the peer's application processed, `Rejected` for those it failed on
        (for messages sent together: one outcome, by the last one)."""
        rejected = self.session.outbox.rejected
        if not rejected:
            if len(entries) == 1 and entries[0].batch:
                events.append(Confirmed(entries))  # one alone, or a batch's last
                return
            # A batch's members but its last (batch 0) are answered by it.
            answered = [e for e in entries if e.batch]
            if answered:
                events.append(Confirmed(answered))
            return
        confirmed: list[Entry] = []
        for entry in entries:
            seq = entry.seq
            count = entry.batch
            if not count:
                continue  # sent together with later ones: the last answers
            handle = entry.handle
            if count > 1:
                failed = sorted(s for s in rejected if seq - count < s <= seq)
                if failed:
                    texts = [rejected.pop(s) for s in failed]
                    if handle is not None:
                        events.append(
                            Rejected(
                                handle,
                                f"peer application failed on message {failed[0]} "
                                f"({len(failed)} of the {count} sent together): {texts[0]}",
                            )
                        )
                    continue
            if seq in rejected:
                text = rejected.pop(seq)
                if handle is not None:
                    events.append(
                        Rejected(handle, f"peer application failed on message {seq}: {text}")
                    )
            else:
                confirmed.append(entry)
        if confirmed:
            events.append(Confirmed(confirmed))

    def _queueData(self, entries: list[Entry]) -> None:
        """Queue the DATA frames of ``entries`` for `dataToSend`, in order."""
        append = self._out.append
        header = _frames.encodeDataHeader
        for entry in entries:
            payload = entry.payload
            append(header(entry.seq, len(payload)))
            append(payload)

    def positionCommitted(self, upTo: int) -> None:
        """
        A store committed the processed position ``upTo`` and the
        rejections up to it (the session's inbox `waitsForCommit`; what to
        commit is `Inbox.toCommit`): the ACK and REJECTs that report it go
        with the next `dataToSend`, the next received message may be handed
        out (`nextEvent`), and a close that waited for them goes on.
        """
        self.session.inbox.commit(upTo)
        if self._closing:
            self._checkClose()

    def flushAck(self, resend: bool = False) -> None:
        """
        Queue the REJECTs of messages the application failed on (with
        ``resend``, also those sent on earlier connections of the session),
        then one cumulative ACK if processing advanced since the last one.
        """
        if (
            (self.state is _FAILED and self._goodbyeDue is None)
            or self.peerHello is None
            or not self._saidHello  # (a server that refused the HELLO)
        ):
            return
        inbox = self.session.inbox
        if inbox.rejections or (resend and inbox.sentRejections):
            for seq, reason in inbox.takeRejections(resend):
                self._out.append(_frames.encode(Reject(seq, reason)))
        processed = inbox.ackUpTo
        if processed > self._ackSent and processed:
            self._ackSent = processed
            inbox.ackedUpTo = processed
            self.acksSent += 1
            self._out.append(_frames.encodeAck(processed))

    # -- closing -----------------------------------------------------------

    def close(
        self, code: GoodbyeCode = GoodbyeCode.NORMAL, reason: str = "", now: float | None = None
    ) -> None:
        """
        This side's application closes in order: what is queued is sent,
        then GOODBYE; then, once the peer acknowledged every message (or
        `Settings.closeTimeout` passed), `CloseNow`. The messages the peer
        sent before are still handed out and acknowledged before `CloseNow`
        (their ACK may follow the GOODBYE, as the spec allows). A second
        call does nothing.
        """
        if now is not None:
            self._now = now
        if self._closing == _LOCAL or self._closedNow:
            return
        self._end(Reason.LOCAL_CLOSE, f"closed by this side (GOODBYE {code.name})")
        self._closing = _LOCAL
        self._goodbye = (code, reason)
        self._startCloseTimer()
        self._checkClose()

    def sendGoodbye(self, code: GoodbyeCode = GoodbyeCode.NORMAL, reason: str = "") -> None:
        """Queue a GOODBYE now (no DATA goes out after it); `close` does it
        when the time comes."""
        if self.state in (State.OPEN, State.HANDSHAKE, State.PEER_CLOSING):
            self._out.append(_frames.encode(Goodbye(code, reason)))
            if self.state is not State.PEER_CLOSING:
                self.state = State.CLOSING

    def readClosed(self, now: float) -> None:
        """The peer shut its write side (a FIN): it will not speak again.
        What it sent is handed out and acknowledged, then `CloseNow`."""
        self._now = now
        if self.state is not _PEER_CLOSING:
            self._end(Reason.PEER_CLOSED, "peer closed the connection without GOODBYE")
        if not self._closing:
            self._closing = _PEER
        self._readClosed = True
        self._startCloseTimer()
        self._checkClose()

    def abort(self, detail: str, reason: Reason = Reason.LOCAL_CLOSE) -> None:
        """Close at once (an RST, no GOODBYE): a `CloseNow` with ``abort``.
        From now on no received message is handed out: this connection no
        longer carries its session."""
        self._end(reason, detail)
        self._handOff = False
        self._closedNow = True
        self._closeAt = self._abortAt = None
        if not self._aborted:
            self._aborted = True
            ending = self.ending
            assert ending is not None
            self.events.append(CloseNow(True, ending))

    def writeFailed(self, detail: str) -> None:
        """Writing to the transport failed (the peer reset the connection):
        recorded as the ending, unless something ended it before."""
        self._end(Reason.RESET, detail)

    def lost(self) -> None:
        """The transport is gone: nothing more is handed out or sent."""
        self._handOff = False
        self._closedNow = True
        self._closeAt = self._abortAt = None

    def _end(
        self,
        reason: Reason,
        detail: str,
        goodbye: GoodbyeCode | None = None,
        cause: Cause | None = None,
    ) -> None:
        """Record why the connection ends; the first cause wins."""
        if self.ending is None:
            self.ending = Ending(reason, detail, goodbye, cause)

    def _startCloseTimer(self) -> None:
        if self._closeAt is None and not self._closedNow:
            self._closeAt = self._now + self.settings.closeTimeout
            self.wakeMoved = True

    def _closeInOrder(self) -> None:
        """`CloseNow` (in order), and the deadline of its flush."""
        if self._closedNow:
            return
        self._closedNow = True
        self._closeAt = None
        self._abortAt = self._now + ABORT_GRACE
        self.wakeMoved = True
        ending = self.ending
        assert ending is not None
        self.events.append(CloseNow(False, ending))

    def _checkClose(self) -> None:
        """Close once closing has nothing left to wait for."""
        if self._closedNow:
            return
        if self._closeDue:
            # A violation, a refused or unknown session: the messages that
            # came before were handed out while each was answered at once;
            # one still being processed stays unacknowledged (the spec's
            # "Error handling"). Close now: the ACK of what was processed,
            # then the GOODBYE, go out with the next dataToSend.
            self._closeInOrder()
            return
        state = self.state
        if not self._closing or state is _FAILED:
            return
        session = self.session
        inbox = session.inbox
        if self._handOff and (inbox.handedOut or inbox.pending):
            return  # finish what the peer sent; its ACK goes out after
        if inbox.waitsForCommit and inbox.committedUpTo < inbox.processedUpTo:
            return  # its ACK waits for the store's commit
        outbox = session.outbox
        if self._closing == _LOCAL and not self._readClosed and state is not _PEER_CLOSING:
            if state is _OPEN or state is _HANDSHAKE:
                if outbox.queue:
                    return  # still sending (before HELLO: waiting to send)
                self.sendGoodbye(*self._goodbye)
            if outbox.inflight:
                return  # waiting for acknowledgements
        elif state is _PEER_CLOSING and not self._readClosed and outbox.inflight:
            # The peer sent GOODBYE but still processes and acknowledges
            # the DATA that reached it; wait for that (until its FIN or the
            # close deadline) rather than leave the messages uncertain.
            return
        self._closeInOrder()

    # -- time ----------------------------------------------------------------

    def handleTimer(self, now: float, scheduledFor: float, queued: float = 0.0) -> None:
        """
        The timer armed for ``scheduledFor`` (`nextWake`) fired at ``now``:
        act on liveness and on the close deadlines. ``queued``: see
        `Liveness.handleTimer`.
        """
        self._now = now
        events = self.events
        if self._closedNow:
            abortAt = self._abortAt
            if abortAt is not None and now >= abortAt:
                assert self.ending is not None
                self.abort(self.ending.detail)
            return
        late = now - scheduledFor
        if late > 0.0 and self._stuckSince is not None:
            # As for liveness: while this process did not run, the transport
            # could not write either; that is not the peer's doing.
            self._stuckSince += late
        action, stall = self.liveness.handleTimer(now, scheduledFor, queued)
        if stall:
            events.append(Stalled(stall))
        if action is _EXPIRED:
            self.state = _FAILED
            self.error = detail = self.liveness.silenceDetail(now)
            events.append(Expired(detail))
            self.abort(detail, Reason.TIMEOUT)
            return
        if action is _PING and self.state is not _FAILED:
            self._out.append(_frames.encodePing(self.liveness.pingId))
        closeAt = self._closeAt
        if closeAt is not None and now >= closeAt:
            if self._closing == _LOCAL and (self.state is _OPEN or self.state is _HANDSHAKE):
                # Only this side's close() says GOODBYE; after the peer's
                # FIN the deadline just closes.
                self.sendGoodbye(*self._goodbye)
            self._closeInOrder()

    def checkUnsent(self, unsent: int, written: int, now: float, fromTimer: bool = False) -> None:
        """
        The transport holds ``unsent`` bytes the kernel has not taken, after
        ``written`` bytes were handed to it in all. Abort (`PeerNotReading`,
        then `CloseNow`) if the peer does not read: more than
        `Settings.maxUnsentBytes` beyond the DATA frames in flight, or
        (judged when the timer fired, ``fromTimer``) nothing taken for the
        peer's deadline. A peer that reads, however slowly, drains
        something.
        """
        if self.ending is not None or self._closedNow:
            return
        stuck = self._stuckSince
        if not unsent:
            stuck = None
        elif self._unsentSeen + (written - self._writtenSeen) > unsent:
            stuck = now  # some of it went out: the peer reads
        elif stuck is None:
            stuck = now
            if not fromTimer:
                self.wakeMoved = True  # judge it at the deadline
        self._stuckSince = stuck
        self._unsentSeen = unsent
        self._writtenSeen = written
        if not unsent:
            return
        settings = self.settings
        limit = max(settings.maxUnsentBytes, 2 * (settings.maxFrameSize + 4))
        if unsent > limit:
            inflight = self.session.outbox.inflight
            frames = sum(len(entry.payload) + DATA_OVERHEAD for entry in inflight)
            if unsent - frames > limit:
                self._notReading(
                    f"peer stopped reading: {describeSize(unsent)} unsent, over the limit of "
                    f"{describeSize(limit)} beyond the {len(inflight)} messages in flight"
                )
                return
        deadline = self.liveness.deadline
        if fromTimer and stuck is not None and now - stuck >= deadline:
            self._notReading(
                f"peer stopped reading: {describeSize(unsent)} unsent, none taken for "
                f"{now - stuck:.3f} s (deadline {deadline:.3f} s)"
            )

    def _notReading(self, detail: str) -> None:
        self.events.append(PeerNotReading(detail))
        self.abort(detail, Reason.TIMEOUT)

    def _violate(self, detail: str, events: deque[Event]) -> None:
        self._fail(GoodbyeCode.PROTOCOL_ERROR, detail, events)

    def _fail(
        self, code: GoodbyeCode, detail: str, events: deque[Event], notAlive: bool = False
    ) -> None:
        """Fail the connection: the GOODBYE goes out with the next
        `dataToSend`, after the ACK of the messages that came before and
        were processed (those still received are handed out first, while
        the application answers each at once); then `CloseNow`."""
        if self.state is State.FAILED:
            return
        # A side says GOODBYE once: one that said it already (CLOSING) has
        # only the last ACK and PONG to send (an empty GOODBYE due).
        saidGoodbye = self.state is _CLOSING
        self.state = State.FAILED
        self.error = detail
        self._goodbyeDue = b"" if saidGoodbye else _frames.encode(Goodbye(code, detail))
        if code is GoodbyeCode.PROTOCOL_ERROR:
            self._end(
                Reason.PROTOCOL_ERROR, detail, cause=Cause.NOT_ALIVE_PEER if notAlive else None
            )
        else:
            self._end(Reason.LOCAL_CLOSE, detail)
        self._closeDue = True
        events.append(Violation(detail, notAlive))
