"""
Tests for the sans-IO connection, ``twisted_alive.core.connection``: two
`Connection` objects wired back to back in memory, with a fake clock, and
the test playing the application on each side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
from coresupport import accepted, fed, timed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_alive.core.connection import (
    CloseNow,
    Confirmed,
    Connection,
    Ending,
    Event,
    Expired,
    GoodbyeReceived,
    HelloReceived,
    Opened,
    PongReceived,
    Rejected,
    Role,
    SessionUnknown,
    Settings,
    Stalled,
    State,
    TooLarge,
    Violation,
)
from twisted_alive.core.delivery import Session
from twisted_alive.core.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    HELLO_ASSIGNED,
    HELLO_RESUMED,
    NO_SESSION,
    PROTOCOL_VERSION,
    Ack,
    Data,
    Frame,
    FrameDecoder,
    Goodbye,
    GoodbyeCode,
    Hello,
    Ping,
    Pong,
    Reject,
    encode,
    encodeData,
)
from twisted_alive.core.liveness import PING_BURST
from twisted_alive.core.reasons import Reason

SETTINGS = Settings(interval=1.0, misses=3)
TOKEN = bytes(range(0x40, 0x50))


def decode(data: bytes) -> list[Frame]:
    """The frames in C{data}, which must hold whole frames only."""
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    assert decoder.buffered == 0
    return frames


def hello(
    interval: float = 1.0,
    window: int = 1024,
    maxFrameSize: int = DEFAULT_MAX_FRAME_SIZE,
    nextExpected: int = 1,
    session: bytes = NO_SESSION,
    flags: int = 0,
) -> bytes:
    """An encoded HELLO with the given fields."""
    return encode(
        Hello(PROTOCOL_VERSION, flags, interval, maxFrameSize, window, nextExpected, session)
    )


def ofType(events: Iterable[Event], kind: type) -> list[Event]:
    """The events of one kind."""
    return [e for e in events if type(e) is kind]


def violations(events: Iterable[Event]) -> list[str]:
    """The details of the Violation events."""
    return [e.detail for e in events if isinstance(e, Violation)]


def confirmedHandles(events: Iterable[Event]) -> list[object]:
    """The handles of every entry confirmed by the Confirmed events."""
    return [entry.handle for e in events if isinstance(e, Confirmed) for entry in e.entries]


def submit(conn: Connection, now: float, *payloads: bytes) -> None:
    """Queue messages on C{conn}'s session (handle = payload) and pump."""
    for payload in payloads:
        conn.session.outbox.submit(payload, payload)
    conn.pump(now)


def processAll(conn: Connection) -> list[bytes]:
    """Play the application: take every pending message, mark it processed, ACK."""
    inbox = conn.session.inbox
    got = []
    while inbox.pending:
        seq, payload = inbox.pending.popleft()
        got.append(payload)
        inbox.processedUpTo = seq
    conn.flushAck()
    return got


Accept = Callable[[Connection, Hello, float], list[Event]]


class Wire:
    """
    Two connections back to back in memory, with a fake clock.

    Bytes taken from a side with ``dataToSend`` wait in ``inFlight[side]``
    until ``push`` hands some or all of them to the other side; dropping
    them models a connection cut with data in flight. A server side's
    ``HelloReceived`` is answered by ``accept``, as a session host would.
    """

    def __init__(
        self,
        a: Connection,
        b: Connection,
        now: float = 0.0,
        accept: Accept | None = None,
        apps: dict[Connection, App] | None = None,
    ) -> None:
        self.a = a
        self.b = b
        self.now = now
        self.accept = accept
        self.apps = apps or {}
        self.inFlight: dict[Connection, bytes] = {a: b"", b: b""}
        self.events: dict[Connection, list[Event]] = {a: [], b: []}

    def other(self, conn: Connection) -> Connection:
        """The connection at the other end."""
        return self.b if conn is self.a else self.a

    def pull(self, conn: Connection) -> bytes:
        """Take what C{conn} has to send and put it on the wire."""
        data = conn.dataToSend(self.now)
        self.inFlight[conn] += data
        return data

    def push(self, conn: Connection, size: int | None = None) -> list[Event]:
        """Deliver the first C{size} bytes (all by default) that C{conn} put on the wire."""
        buffered = self.inFlight[conn]
        if size is None:
            size = len(buffered)
        chunk, self.inFlight[conn] = buffered[:size], buffered[size:]
        return self.feed(self.other(conn), chunk) if chunk else []

    def feed(self, dst: Connection, data: bytes) -> list[Event]:
        """Hand C{data} to C{dst}, answer a client's HELLO, run its application."""
        events = fed(dst, data, self.now)
        for event in list(events):
            if isinstance(event, HelloReceived) and self.accept is not None:
                events.extend(self.accept(dst, event.hello, self.now))
        self.events[dst].extend(events)
        app = self.apps.get(dst)
        if app is not None:
            app.record(events)
            app.process(dst)
        return events

    def flow(self, conn: Connection) -> list[Event]:
        """Move everything C{conn} has to send to the other side."""
        self.pull(conn)
        return self.push(conn)

    def settle(self, rounds: int = 1000) -> None:
        """Move bytes both ways until neither side has anything to send."""
        for _ in range(rounds):
            moved = False
            for conn in (self.a, self.b):
                if self.pull(conn) or self.inFlight[conn]:
                    moved = True
                    self.push(conn)
            if not moved:
                return
        raise AssertionError("the connections never went quiet")

    def cut(self) -> None:
        """The TCP connection breaks: bytes in flight are lost."""
        self.inFlight = {self.a: b"", self.b: b""}


class App:
    """
    The application on one side: it sends numbered messages on its session,
    processes what arrives (in order, marking each processed) and records
    confirmations.
    """

    def __init__(self, name: str, session: Session | None = None) -> None:
        self.name = name
        self.session = session
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.confirmed: list[object] = []
        self.autoProcess = True

    def send(self, conn: Connection, now: float, count: int = 1) -> None:
        """Queue C{count} new messages; write them if C{conn} carries the session."""
        assert self.session is not None
        for _ in range(count):
            payload = f"{self.name}{len(self.sent) + 1}".encode()
            self.session.outbox.submit(payload, payload)
            self.sent.append(payload)
        if conn.session is self.session:
            conn.pump(now)

    def record(self, events: Iterable[Event]) -> None:
        """Note every confirmation, checking it is not a second one."""
        for handle in confirmedHandles(events):
            assert handle not in self.confirmed, f"{handle!r} confirmed twice"
            self.confirmed.append(handle)

    def process(self, conn: Connection, force: bool = False) -> None:
        """Process every pending message of the session and ACK on C{conn}."""
        if self.session is None or not (self.autoProcess or force):
            return
        inbox = self.session.inbox
        if not inbox.pending:
            return  # like the adapter: an ACK follows processing only
        while inbox.pending:
            seq, payload = inbox.pending.popleft()
            self.received.append(payload)
            inbox.processedUpTo = seq
        if conn.session is self.session:
            conn.flushAck()


class Server:
    """A session host for the server role: new sessions, resumes, refusals."""

    def __init__(self, settings: Settings, app: App) -> None:
        self.settings = settings
        self.app = app
        self.sessions: dict[bytes, Session] = {}

    def __call__(self, conn: Connection, hello: Hello, now: float) -> list[Event]:
        """Answer a client's HELLO."""
        if hello.session == NO_SESSION:
            session = self.settings.newSession(Session.newToken())
            self.sessions[session.token] = session
            self.app.session = session
            return accepted(conn, session, False, now)
        found = self.sessions.get(hello.session)
        if found is None:
            conn.refuseSession()
            return []
        return accepted(conn, found, True, now)


def peers(settingsA: Settings = SETTINGS, settingsB: Settings = SETTINGS, now: float = 0.0) -> Wire:
    """Two PEER connections, not yet handshaken."""
    return Wire(Connection(settingsA, Role.PEER, now), Connection(settingsB, Role.PEER, now), now)


def openPeers(settingsA: Settings = SETTINGS, settingsB: Settings = SETTINGS) -> Wire:
    """Two PEER connections after the HELLO exchange."""
    wire = peers(settingsA, settingsB)
    wire.settle()
    assert wire.a.state is State.OPEN and wire.b.state is State.OPEN
    return wire


def afterHandshake(conn: Connection, interval: float = 1.0, window: int = 1024) -> Connection:
    """C{conn} after a hand-made peer HELLO; its own output is discarded."""
    events = fed(conn, hello(interval=interval, window=window), 0.0)
    assert events == [Opened(False)]
    conn.dataToSend(0.0)
    return conn


# -- Settings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"interval": 0}, "heartbeatInterval must be positive, got 0"),
        (
            {"interval": 0.0001},
            "heartbeatInterval must be between 0.001 and 4000000 seconds, got 0.0001",
        ),
        ({"misses": 0}, "heartbeatMisses must be at least 1, got 0"),
        ({"maxFrameSize": 63}, "maxFrameSize must be between 64 and 4294967295, got 63"),
        ({"window": 0}, "window must be at least 1, got 0"),
    ],
)
def test_settingsErrors(kwargs: dict[str, Any], message: str) -> None:
    """Invalid settings are refused with an exact text."""
    with pytest.raises(ValueError) as info:
        Settings(**kwargs)
    assert str(info.value) == message


def test_settingsMaxPayload() -> None:
    """A message may be the maximum frame size minus 9 bytes (kind and seq)."""
    assert Settings(maxFrameSize=100).maxPayload == 91


# -- handshake -------------------------------------------------------------------------------------


def test_peerSendsHelloAtOnce() -> None:
    """A PEER's first bytes are its HELLO, with its settings and no session."""
    settings = Settings(interval=2.5, window=7, maxFrameSize=4096)
    conn = Connection(settings, Role.PEER, 0.0)
    assert conn.state is State.HANDSHAKE and not conn.canSend
    assert decode(conn.dataToSend(0.0)) == [
        Hello(PROTOCOL_VERSION, 0, 2.5, 4096, 7, 1, NO_SESSION, conn.nonce)
    ]
    assert conn.dataToSend(0.0) == b""


def test_peerHandshake() -> None:
    """Two PEERs exchange HELLOs and both open, learning the other's window and frame size."""
    wire = peers(Settings(interval=1.0, window=5), Settings(interval=2.0, maxFrameSize=1000))
    wire.settle()
    a, b = wire.a, wire.b
    assert wire.events[a] == [Opened(False)]
    assert wire.events[b] == [Opened(False)]
    assert a.state is State.OPEN and a.canSend and b.state is State.OPEN
    assert a.peerWindow == 1024 and b.peerWindow == 5
    # The smaller of the two maximum frames limits payloads both ways.
    assert a.peerMaxPayload == 991 and b.peerMaxPayload == 991
    assert a.liveness.peerInterval == 2.0 and b.liveness.peerInterval == 1.0
    assert a.resumed is False and a.error is None


def test_peerMessageFlow() -> None:
    """Messages arrive in order in the inbox; the application's ACK confirms them."""
    wire = openPeers()
    a, b = wire.a, wire.b
    submit(a, 0.0, b"one", b"two", b"three")
    wire.flow(a)
    assert list(b.session.inbox.pending) == [(1, b"one"), (2, b"two"), (3, b"three")]
    assert processAll(b) == [b"one", b"two", b"three"]
    events = wire.flow(b)
    assert confirmedHandles(events) == [b"one", b"two", b"three"]
    assert len(a.session.outbox) == 0


def test_messagesBothWays() -> None:
    """Both directions are numbered and confirmed independently."""
    wire = openPeers()
    a, b = wire.a, wire.b
    submit(a, 0.0, b"a1", b"a2")
    submit(b, 0.0, b"b1")
    wire.settle()
    assert processAll(a) == [b"b1"]
    assert processAll(b) == [b"a1", b"a2"]
    wire.settle()
    assert confirmedHandles(wire.events[a]) == [b"a1", b"a2"]
    assert confirmedHandles(wire.events[b]) == [b"b1"]


def test_messagesQueuedBeforeHandshakeGoOutOnOpen() -> None:
    """Messages submitted during the handshake are written once the peer's HELLO arrives."""
    wire = peers()
    a, b = wire.a, wire.b
    submit(a, 0.0, b"early")
    frames = decode(a.dataToSend(0.0))
    assert [type(f) for f in frames] == [Hello]
    wire.inFlight[a] = encode(frames[0])
    wire.flow(b)  # a gets b's HELLO, opens, pumps
    assert decode(a.dataToSend(0.0)) == [Data(1, b"early")]


def test_ackCoalescing() -> None:
    """100 messages arriving in one read are acknowledged by exactly one ACK frame."""
    wire = openPeers()
    a, b = wire.a, wire.b
    submit(a, 0.0, *[b"m%d" % i for i in range(100)])
    data = a.dataToSend(0.0)
    assert len(decode(data)) == 100
    events = fed(b, data, 0.0)
    assert events == []
    assert len(processAll(b)) == 100
    b.flushAck()  # nothing new processed: no second ACK
    assert decode(b.dataToSend(0.0)) == [Ack(100)]
    b.flushAck()
    assert b.dataToSend(0.0) == b""


def test_confirmationEvents() -> None:
    """Each ACK gives one Confirmed event with the entries it covers, seqs and send times kept."""
    wire = openPeers()
    a, b = wire.a, wire.b
    wire.now = 4.0
    submit(a, 4.0, b"x", b"y", b"z")
    wire.flow(a)
    b.session.inbox.pending.clear()
    b.session.inbox.processedUpTo = 2
    b.flushAck()
    first = wire.flow(b)
    b.session.inbox.processedUpTo = 3
    b.flushAck()
    second = wire.flow(b)
    assert len(first) == 1 and isinstance(first[0], Confirmed)
    assert [(e.seq, e.payload, e.sentAt) for e in first[0].entries] == [
        (1, b"x", 4.0),
        (2, b"y", 4.0),
    ]
    assert len(second) == 1 and isinstance(second[0], Confirmed)
    assert [e.seq for e in second[0].entries] == [3]


def test_duplicateAckIsHarmless() -> None:
    """An ACK that confirms nothing new gives no event and is no error."""
    wire = openPeers()
    a = wire.a
    submit(a, 0.0, b"x")
    wire.pull(a)
    assert confirmedHandles(fed(a, encode(Ack(1)), 0.0)) == [b"x"]
    assert fed(a, encode(Ack(1)) + encode(Ack(0)), 0.0) == []
    assert a.state is State.OPEN


def test_rejectFlow() -> None:
    """A rejected message: REJECT, then ACK; the sender gets the others Confirmed and it
    Rejected, with the peer's text."""
    wire = openPeers()
    a, b = wire.a, wire.b
    submit(a, 0.0, b"ok1", b"bad", b"ok3")
    wire.flow(a)
    inbox = b.session.inbox
    for seq, payload in list(inbox.pending):
        if payload == b"bad":
            inbox.reject(seq, "ValueError: bad input")
        else:
            inbox.processedUpTo = seq
    inbox.pending.clear()
    b.flushAck()
    data = b.dataToSend(0.0)
    assert decode(data) == [Reject(2, "ValueError: bad input"), Ack(3)]
    events = fed(a, data, 0.0)
    assert confirmedHandles(events) == [b"ok1", b"ok3"]
    assert ofType(events, Rejected) == [
        Rejected(b"bad", "peer application failed on message 2: ValueError: bad input")
    ]
    assert a.session.outbox.rejected == {}
    assert inbox.rejections == []


def test_rejectBeyondSentIsViolation() -> None:
    """A REJECT for a message not awaiting confirmation breaks the protocol."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    events = fed(conn, encode(Reject(1, "no")), 0.0)
    assert violations(events) == [
        "REJECT for sequence number 1, which is not awaiting confirmation"
    ]


# -- client and server -----------------------------------------------------------------------------


def clientServer(
    clientSession: Session | None = None,
    server: Server | None = None,
    clientApp: App | None = None,
    now: float = 0.0,
) -> tuple[Wire, Server]:
    """A CLIENT connection and a SERVER connection, wired, not yet handshaken."""
    if server is None:
        server = Server(SETTINGS, App("s"))
    if clientSession is None:
        clientSession = SETTINGS.newSession()
    client = Connection(SETTINGS, Role.CLIENT, now, clientSession)
    serverConn = Connection(SETTINGS, Role.SERVER, now)
    apps: dict[Connection, App] = {serverConn: server.app}
    if clientApp is not None:
        apps[client] = clientApp
    return Wire(client, serverConn, now, accept=server, apps=apps), server


def test_serverWaitsForClientHello() -> None:
    """A SERVER sends nothing until the client's HELLO; then it reports HelloReceived."""
    conn = Connection(SETTINGS, Role.SERVER, 0.0)
    assert conn.dataToSend(0.0) == b""
    (frame,) = decode(hello(session=TOKEN))
    assert isinstance(frame, Hello)
    events = fed(conn, hello(session=TOKEN), 0.0)
    assert events == [HelloReceived(frame)]
    assert conn.state is State.HANDSHAKE
    assert conn.dataToSend(0.0) == b""


def test_clientServerNewSession() -> None:
    """A client asking for a new session gets the server's token, ASSIGNED flag, both open."""
    wire, server = clientServer()
    client, serverConn = wire.a, wire.b
    assert decode(wire.pull(client)) == [
        Hello(PROTOCOL_VERSION, 0, 1.0, DEFAULT_MAX_FRAME_SIZE, 1024, 1, NO_SESSION, client.nonce)
    ]
    events = wire.push(client)
    assert serverConn.peerHello is not None
    assert events == [HelloReceived(serverConn.peerHello), Opened(False)]
    (token,) = server.sessions
    serverHello = decode(wire.pull(serverConn))
    assert serverHello == [
        Hello(
            PROTOCOL_VERSION,
            HELLO_ASSIGNED,
            1.0,
            DEFAULT_MAX_FRAME_SIZE,
            1024,
            1,
            token,
            serverConn.nonce,
        )
    ]
    assert wire.push(serverConn) == [Opened(False)]
    assert wire.events[serverConn][-1] == Opened(False)
    assert client.session.token == token
    assert serverConn.session is server.sessions[token]
    assert client.state is State.OPEN and serverConn.state is State.OPEN


def test_clientServerResumedSession() -> None:
    """A client resuming a known session gets it back with RESUMED; both report Opened(True)."""
    server = Server(SETTINGS, App("s"))
    serverSession = SETTINGS.newSession(TOKEN)
    server.sessions[TOKEN] = serverSession
    wire, _ = clientServer(SETTINGS.newSession(TOKEN), server)
    client, serverConn = wire.a, wire.b
    wire.flow(client)
    frames = decode(wire.pull(serverConn))
    assert isinstance(frames[0], Hello)
    assert frames[0].flags == HELLO_ASSIGNED | HELLO_RESUMED
    assert frames[0].session == TOKEN
    assert wire.push(serverConn) == [Opened(True)]
    assert ofType(wire.events[serverConn], Opened) == [Opened(True)]
    assert client.resumed and serverConn.resumed
    assert serverConn.session is serverSession


def test_serverRefusesSession() -> None:
    """An unknown token: only GOODBYE(SESSION_UNKNOWN) comes back; the client: SessionUnknown."""
    wire, _ = clientServer(SETTINGS.newSession(TOKEN))
    client, serverConn = wire.a, wire.b
    wire.flow(client)
    assert serverConn.state is State.FAILED
    assert serverConn.error == "session 40414243 is unknown or expired"
    frames = decode(wire.pull(serverConn))
    assert frames == [
        Goodbye(GoodbyeCode.SESSION_UNKNOWN, "session 40414243 is unknown or expired")
    ]
    events = wire.push(serverConn)
    assert events == [
        GoodbyeReceived(GoodbyeCode.SESSION_UNKNOWN, "session 40414243 is unknown or expired"),
        SessionUnknown("peer does not know the session: session 40414243 is unknown or expired"),
    ]
    assert client.state is State.FAILED


def test_clientResumingAgainstPeer() -> None:
    """A client asking a PEER to resume: GOODBYE(SESSION_UNKNOWN) from the PEER, SessionUnknown."""
    client = Connection(SETTINGS, Role.CLIENT, 0.0, SETTINGS.newSession(TOKEN))
    peer = Connection(SETTINGS, Role.PEER, 0.0)
    wire = Wire(client, peer)
    wire.flow(client)
    assert wire.events[peer] == [Violation("this peer keeps no sessions and cannot resume one")]
    frames = decode(wire.pull(peer))
    assert frames[-1] == Goodbye(
        GoodbyeCode.SESSION_UNKNOWN, "this peer keeps no sessions and cannot resume one"
    )
    events = wire.push(peer)
    assert events == [SessionUnknown("peer did not resume the session (it keeps no sessions)")]
    assert client.state is State.FAILED and peer.state is State.FAILED


def test_newClientAgainstPeer() -> None:
    """A client starting a new session with a PEER opens a session-less connection."""
    client = Connection(SETTINGS, Role.CLIENT, 0.0, SETTINGS.newSession())
    wire = Wire(client, Connection(SETTINGS, Role.PEER, 0.0))
    wire.settle()
    assert wire.events[client] == [Opened(False)]
    assert client.session.token == NO_SESSION


def test_peerAcceptsAssignedToken() -> None:
    """A PEER talking to a SERVER takes the server's assigned token as no resume request."""
    server = Server(SETTINGS, App("s"))
    peer = Connection(SETTINGS, Role.PEER, 0.0)
    serverConn = Connection(SETTINGS, Role.SERVER, 0.0)
    wire = Wire(peer, serverConn, accept=server)
    wire.settle()
    assert wire.events[peer] == [Opened(False)]
    assert peer.state is State.OPEN and serverConn.state is State.OPEN


def test_clientRefusesUnresumedAnswer() -> None:
    """A server answering a resume request without RESUMED, or a plain peer, is SessionUnknown."""
    other = bytes(range(16))
    for flags, token in ((HELLO_ASSIGNED, TOKEN), (HELLO_ASSIGNED, other), (0, NO_SESSION)):
        client = Connection(SETTINGS, Role.CLIENT, 0.0, SETTINGS.newSession(TOKEN))
        events = fed(client, hello(session=token, flags=flags), 0.0)
        assert events == [SessionUnknown("peer did not resume the session (it keeps no sessions)")]


# -- resume across connections ---------------------------------------------------------------------


class Scenario:
    """A client and a server application whose sessions outlive connections."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.settings = settings
        self.client = App("c", settings.newSession())
        self.serverApp = App("s")
        self.server = Server(settings, self.serverApp)
        self.now = 0.0
        self.wires: list[Wire] = []
        self.wire = self.connect()

    def connect(self) -> Wire:
        """A new TCP connection carrying the client's session."""
        assert self.client.session is not None
        client = Connection(self.settings, Role.CLIENT, self.now, self.client.session)
        serverConn = Connection(self.settings, Role.SERVER, self.now)
        wire = Wire(
            client,
            serverConn,
            self.now,
            accept=self.server,
            apps={client: self.client, serverConn: self.serverApp},
        )
        self.wire = wire
        self.wires.append(wire)
        return wire

    def reconnect(self) -> Wire:
        """Cut the current connection (bytes in flight are lost) and make a new one."""
        self.wire.cut()
        self.now += 1.0
        return self.connect()

    @property
    def serverSession(self) -> Session:
        """The server's session for the client (once the first HELLO arrived)."""
        assert self.serverApp.session is not None
        return self.serverApp.session

    def sendClient(self, count: int = 1) -> None:
        """The client application sends messages."""
        self.client.send(self.wire.a, self.now, count)

    def sendServer(self, count: int = 1) -> None:
        """The server application sends messages."""
        self.serverApp.send(self.wire.b, self.now, count)

    def finish(self) -> None:
        """Let everything flow on the current connection, then check exactly-once, in order."""
        self.client.autoProcess = self.serverApp.autoProcess = True
        self.wire.settle()
        for app in (self.client, self.serverApp):
            app.process(self.wire.a if app is self.client else self.wire.b, force=True)
        self.wire.settle()
        for wire in self.wires:
            for events in wire.events.values():
                assert violations(events) == []
                assert ofType(events, SessionUnknown) == []
        assert self.wire.a.state is State.OPEN and self.wire.b.state is State.OPEN
        assert self.serverApp.received == self.client.sent
        assert self.client.received == self.serverApp.sent
        assert self.client.confirmed == self.client.sent
        assert self.serverApp.confirmed == self.serverApp.sent
        assert self.client.session is not None and self.serverApp.session is not None
        assert len(self.client.session.outbox) == 0
        assert len(self.serverApp.session.outbox) == 0


def test_resumeCutBeforeDataArrives() -> None:
    """DATA lost with the connection is sent again, same seqs, on the resumed connection."""
    s = Scenario()
    s.wire.settle()
    s.sendClient(3)
    s.sendServer(2)
    s.wire.pull(s.wire.a)
    s.wire.pull(s.wire.b)  # written, never delivered
    wire = s.reconnect()
    wire.settle()
    assert ofType(wire.events[wire.a], Opened) == [Opened(True)]
    assert wire.a.session.outbox.redelivered == 3
    s.finish()


def test_resumeAfterProcessingBeforeAck() -> None:
    """Messages processed but whose ACK was lost are confirmed on the new connection, not resent."""
    s = Scenario()
    s.wire.settle()
    s.sendClient(3)
    s.wire.flow(s.wire.a)  # the server processes them and ACKs ...
    assert s.serverApp.received == [b"c1", b"c2", b"c3"]
    assert decode(s.wire.pull(s.wire.b)) == [Ack(3)]
    wire = s.reconnect()  # ... but the ACK is lost
    assert s.client.confirmed == []
    wire.flow(wire.a)
    serverOut = decode(wire.pull(wire.b))
    assert isinstance(serverOut[0], Hello) and serverOut[0].nextExpected == 4
    assert serverOut[1:] == [Ack(3)]
    wire.push(wire.b)
    assert s.client.confirmed == [b"c1", b"c2", b"c3"]
    assert wire.a.session.outbox.redelivered == 0
    s.finish()


def test_resumeReceivedNotProcessed() -> None:
    """Messages received but unprocessed at the cut are processed later, not resent, then ACKed."""
    s = Scenario()
    s.wire.settle()
    s.serverApp.autoProcess = False
    s.sendClient(2)
    s.wire.flow(s.wire.a)
    assert len(s.serverSession.inbox.pending) == 2
    wire = s.reconnect()
    wire.settle()
    assert wire.a.session.outbox.redelivered == 0
    assert s.client.confirmed == []
    s.serverApp.autoProcess = True
    s.serverApp.process(wire.b)
    s.finish()
    assert s.serverSession.inbox.duplicates == 0


def test_resumeCutMidFrame() -> None:
    """A frame cut in half by the connection loss is discarded and sent again whole."""
    s = Scenario()
    s.wire.settle()
    s.sendClient(3)
    data = s.wire.pull(s.wire.a)
    s.wire.push(s.wire.a, len(data) // 2)  # DATA 1 whole, DATA 2 in half
    assert s.serverApp.received == [b"c1"]
    wire = s.reconnect()
    wire.settle()
    assert wire.a.session.outbox.redelivered == 2
    s.finish()
    assert s.serverSession.inbox.duplicates == 0


def test_resumeCutDuringHello() -> None:
    """A connection cut halfway through the HELLO exchange is simply tried again."""
    s = Scenario()
    s.wire.settle()
    s.sendClient(2)
    s.sendServer(2)
    s.wire.pull(s.wire.a)  # lost
    wire = s.reconnect()
    wire.pull(wire.a)
    wire.push(wire.a, 20)  # half of the client's HELLO arrives
    assert wire.b.decoder.buffered == 20
    s.sendClient(1)  # queued while the handshake is pending
    wire = s.reconnect()
    wire.flow(wire.a)  # the server gets the whole HELLO and answers ...
    serverOut = decode(wire.pull(wire.b))
    assert isinstance(serverOut[0], Hello) and serverOut[0].flags & HELLO_RESUMED
    assert [f.seq for f in serverOut if isinstance(f, Data)] == [1, 2]
    s.reconnect()  # ... but its HELLO and resent DATA never arrive
    s.finish()


def test_firstConnectionCutDuringHello() -> None:
    """Messages queued during a first HELLO exchange that failed go out on the next connection."""
    s = Scenario()
    s.sendClient(2)
    s.wire.flow(s.wire.a)  # the server created a session, but its HELLO is lost
    s.wire.pull(s.wire.b)
    assert s.client.session is not None and s.client.session.token == NO_SESSION
    wire = s.reconnect()
    wire.settle()
    assert ofType(wire.events[wire.a], Opened) == [Opened(False)]
    s.finish()


def test_resumeManyTimes() -> None:
    """Messages keep flowing, exactly once, across several cuts at different moments."""
    s = Scenario(Settings(interval=1.0, window=3))
    s.wire.settle()
    for i in range(6):
        s.sendClient(4)
        s.sendServer(3)
        for _ in range(i % 3):
            s.wire.flow(s.wire.a)
            s.wire.flow(s.wire.b)
        s.wire.pull(s.wire.a)
        s.wire.push(s.wire.a, 7 * i)
        s.reconnect()
    s.finish()


OPS = st.tuples(
    st.sampled_from(["send", "pull", "push", "process", "hold", "cut"]),
    st.sampled_from("cs"),
    st.floats(0.0, 1.0),
)
"""(operation, side, value): ``send`` 1-3 messages, ``pull`` bytes onto the
wire, ``push`` that fraction of them (maybe mid-frame), ``process`` pending
messages, ``hold`` (value < 0.5) or resume automatic processing, ``cut``
the connection and reconnect."""


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OPS, max_size=40),
    window=st.integers(1, 4),
)
def test_resumeProperty(ops: list[tuple[str, str, float]], window: int) -> None:
    """Whatever the cuts (around DATA, ACK or HELLO), delivery is exactly once and in order."""
    s = Scenario(Settings(interval=1.0, window=window))
    s.wire.settle()
    for kind, which, value in ops:
        wire = s.wire
        if kind == "cut":
            s.reconnect()
            continue
        side = wire.a if which == "c" else wire.b
        app = s.client if which == "c" else s.serverApp
        if kind == "send":
            app.send(side, s.now, 1 + int(value * 2.99))
        elif kind == "pull":
            wire.pull(side)
        elif kind == "push":
            wire.push(side, int(len(wire.inFlight[side]) * value))
        elif kind == "process":
            app.process(side, force=True)
        else:
            app.autoProcess = value >= 0.5
    s.finish()


# -- chunking --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=40), max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=30),
    ping=st.booleans(),
)
def test_anyChunkingSameMessages(payloads: list[bytes], cuts: list[int], ping: bool) -> None:
    """However the byte stream is split into reads, the receiver gets the same messages."""
    a = Connection(SETTINGS, Role.PEER, 0.0)
    b = Connection(SETTINGS, Role.PEER, 0.0)
    for payload in payloads:
        a.session.outbox.submit(payload, payload)
    assert fed(a, b.dataToSend(0.0), 0.0) == [Opened(False)]
    if ping:
        assert timed(a, 1.0, 1.0) == []
    stream = a.dataToSend(1.0)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    events: list[Event] = []
    for start, end in zip(bounds, bounds[1:], strict=False):
        events.extend(fed(b, stream[start:end], 1.0))
    assert events == [Opened(False)]
    assert [p for _, p in b.session.inbox.pending] == payloads
    assert [s for s, _ in b.session.inbox.pending] == list(range(1, len(payloads) + 1))
    out = [f for f in decode(b.dataToSend(1.0)) if not isinstance(f, Hello)]
    assert out == ([Pong(1)] if ping else [])


@settings(max_examples=100, deadline=None)
@given(
    count=st.integers(0, 40),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=20),
    windowA=st.integers(1, 8),
    windowB=st.integers(1, 8),
)
def test_anyChunkingBothWays(count: int, sizes: list[int], windowA: int, windowB: int) -> None:
    """A full conversation moved in arbitrary small reads delivers and confirms everything once."""
    a = Connection(Settings(interval=1.0, window=windowA), Role.PEER, 0.0)
    b = Connection(Settings(interval=1.0, window=windowB), Role.PEER, 0.0)
    appA, appB = App("a", a.session), App("b", b.session)
    wire = Wire(a, b, apps={a: appA, b: appB})
    appA.send(a, 0.0, count)
    appB.send(b, 0.0, count // 2)
    step = 0
    for _ in range(10_000):
        moved = False
        for conn in (a, b):
            wire.pull(conn)
            if wire.inFlight[conn]:
                moved = True
                wire.push(conn, sizes[step % len(sizes)])
                step += 1
        if not moved:
            break
    assert appB.received == appA.sent and appA.received == appB.sent
    assert appA.confirmed == appA.sent and appB.confirmed == appB.sent
    assert violations(wire.events[a] + wire.events[b]) == []


# -- window ----------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    windowA=st.integers(1, 6),
    windowB=st.integers(1, 6),
    count=st.integers(0, 30),
    schedule=st.lists(st.sampled_from(["a", "b", "process"]), max_size=80),
)
def test_windowRespected(windowA: int, windowB: int, count: int, schedule: list[str]) -> None:
    """The sender never has more than min(own window, peer window) DATA unacknowledged."""
    a = Connection(Settings(interval=1.0, window=windowA), Role.PEER, 0.0)
    b = Connection(Settings(interval=1.0, window=windowB), Role.PEER, 0.0)
    wire = Wire(a, b)
    wire.settle()
    submit(a, 0.0, *[b"%d" % i for i in range(count)])
    limit = min(windowA, windowB)
    highest = 0
    for step in schedule + ["a", "process", "b"] * (count + 2):
        if step == "a":
            for frame in decode(wire.pull(a)):
                if isinstance(frame, Data):
                    highest = frame.seq
            wire.push(a)
        elif step == "b":
            wire.flow(b)
        else:
            processAll(b)
        assert highest - a.session.outbox.ackedUpTo <= limit
        assert len(a.session.outbox.inflight) <= limit
    assert violations(wire.events[b]) == []
    assert a.session.outbox.ackedUpTo == count


def test_windowOverrunIsViolation() -> None:
    """A peer sending more than this side's window unacknowledged breaks the protocol."""
    conn = afterHandshake(Connection(Settings(interval=1.0, window=2), Role.PEER, 0.0))
    events = fed(conn, encodeData(1, b"") + encodeData(2, b"") + encodeData(3, b""), 0.0)
    assert violations(events) == ["peer exceeded the window of 2 unacknowledged messages"]
    assert len(conn.session.inbox.pending) == 2


def test_pumpRespectsPeerMaxPayload() -> None:
    """A message too large for the peer's frames fails (TooLarge), it is not sent."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    fed(conn, hello(maxFrameSize=64), 0.0)
    conn.dataToSend(0.0)
    assert conn.peerMaxPayload == 55
    submit(conn, 0.0, b"x" * 56, b"y" * 55)
    assert decode(conn.dataToSend(0.0)) == [Data(1, b"y" * 55)]
    assert conn.takeEvents() == [
        TooLarge(b"x" * 56, "message of 56 bytes exceeds the peer's maximum of 55 bytes", False)
    ]


# -- protocol violations ---------------------------------------------------------------------------


def goodbyes(conn: Connection) -> list[Goodbye]:
    """The GOODBYE frames among what C{conn} has to send."""
    return [f for f in decode(conn.dataToSend(0.0)) if isinstance(f, Goodbye)]


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        (encodeData(1, b"x"), "expected HELLO first, got DATA"),
        (encode(Ack(0)), "expected HELLO first, got ACK"),
        (encode(Reject(1, "r")), "expected HELLO first, got REJECT"),
    ],
)
@pytest.mark.parametrize("role", [Role.PEER, Role.SERVER, Role.CLIENT])
def test_frameBeforeHello(frame: bytes, detail: str, role: Role) -> None:
    """DATA, ACK or REJECT before the HELLO is a violation answered with GOODBYE(PROTOCOL_ERROR)."""
    conn = Connection(SETTINGS, role, 0.0)
    conn.dataToSend(0.0)
    events = fed(conn, frame, 0.0)
    assert events == [Violation(detail)]
    assert conn.state is State.FAILED and conn.error == detail
    assert decode(conn.dataToSend(0.0)) == [Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)]


@pytest.mark.parametrize("frame", [Ping(9), Pong(9)])
def test_pingBeforeHelloIsViolation(frame: Ping | Pong) -> None:
    """PING or PONG before HELLO breaks the protocol (nothing but HELLO or
    GOODBYE may come first)."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    conn.dataToSend(0.0)
    detail = f"expected HELLO first, got {type(frame).__name__.upper()}"
    assert fed(conn, encode(frame), 0.0) == [Violation(detail)]
    assert decode(conn.dataToSend(0.0)) == [Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)]


def test_onePongPerReadBurst() -> None:
    """A burst of PINGs in one read gets one PONG, echoing the last id."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    conn.dataToSend(0.0)
    burst = b"".join(encode(Ping(i)) for i in range(1, PING_BURST + 1))
    assert fed(conn, burst, 0.0) == []
    assert decode(conn.dataToSend(0.0)) == [Pong(PING_BURST)]


def test_pingFloodIsAViolation() -> None:
    """One PING more than PING_BURST in an instant is a protocol error with an exact text."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    conn.dataToSend(0.0)
    burst = b"".join(encode(Ping(i)) for i in range(1, PING_BURST + 2))
    detail = f"too many PINGs: at most {PING_BURST} per heartbeat interval (1 s) are allowed"
    assert fed(conn, burst, 0.0) == [Violation(detail)]
    assert conn.state is State.FAILED
    assert decode(conn.dataToSend(0.0))[-1] == Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)


def test_pingRateRefills() -> None:
    """PINGs at the allowed average rate (PING_BURST per peer interval) never break the rule."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    step = 1.0 / PING_BURST
    for i in range(1, 10 * PING_BURST):
        assert fed(conn, encode(Ping(i)), i * step) == []
        assert decode(conn.dataToSend(i * step))[-1] == Pong(i)
    assert conn.state is State.OPEN


def test_secondHello() -> None:
    """A second HELLO on one connection is a violation."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    events = fed(conn, hello(), 0.0)
    assert events == [Violation("a second HELLO on one connection")]
    assert goodbyes(conn) == [
        Goodbye(GoodbyeCode.PROTOCOL_ERROR, "a second HELLO on one connection")
    ]


@pytest.mark.parametrize(
    ("interval", "detail"),
    [
        (0.05, "heartbeat interval 0.05 s is outside the accepted range 0.1..3600 s"),
        (0.099, "heartbeat interval 0.099 s is outside the accepted range 0.1..3600 s"),
        (3601.0, "heartbeat interval 3601 s is outside the accepted range 0.1..3600 s"),
        (0.0, "heartbeat interval 0 s is outside the accepted range 0.1..3600 s"),
    ],
)
def test_intervalOutOfRange(interval: float, detail: str) -> None:
    """A HELLO announcing an interval outside the accepted range is refused with the exact text."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    conn.dataToSend(0.0)
    assert fed(conn, hello(interval=interval), 0.0) == [Violation(detail)]
    assert goodbyes(conn) == [Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)]
    assert conn.liveness.handshaken is False


@pytest.mark.parametrize("interval", [0.1, 3600.0])
def test_intervalRangeInclusive(interval: float) -> None:
    """The bounds of the accepted interval range are accepted."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    assert fed(conn, hello(interval=interval), 0.0) == [Opened(False)]


def test_intervalRangeConfigurable() -> None:
    """minPeerInterval / maxPeerInterval set the accepted range and its text."""
    settings = Settings(interval=1.0, minPeerInterval=0.5, maxPeerInterval=10.0)
    conn = Connection(settings, Role.PEER, 0.0)
    assert fed(conn, hello(interval=20.0), 0.0) == [
        Violation("heartbeat interval 20 s is outside the accepted range 0.5..10 s")
    ]


def test_intervalTextKeepsMilliseconds() -> None:
    """The refusal text shows the announced interval to the millisecond."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    assert fed(conn, hello(interval=3600.001), 0.0) == [
        Violation("heartbeat interval 3600.001 s is outside the accepted range 0.1..3600 s")
    ]


def test_windowZero() -> None:
    """A HELLO announcing window 0 is a violation."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    assert fed(conn, hello(window=0), 0.0) == [
        Violation("HELLO window 0 is invalid (it must be at least 1)")
    ]


def test_maxFrameTooSmall() -> None:
    """A HELLO announcing a maximum frame below 64 is a violation."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    assert fed(conn, hello(maxFrameSize=63), 0.0) == [
        Violation("HELLO max_frame 63 is below the minimum of 64")
    ]


def test_helloNextExpectedBeyondSent() -> None:
    """A peer HELLO claiming to expect messages never sent is a violation."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    events = fed(conn, hello(nextExpected=5), 0.0)
    assert events == [Violation("HELLO next_expected 5 is beyond the 0 messages sent")]


def test_acceptSessionResumeViolation() -> None:
    """A client HELLO that contradicts the resumed session turns acceptSession
    into a Violation: a GOODBYE(PROTOCOL_ERROR) instead of the server's HELLO,
    so that the client knows the session never opened."""
    conn = Connection(SETTINGS, Role.SERVER, 0.0)
    fed(conn, hello(nextExpected=3, session=TOKEN), 0.0)
    events = accepted(conn, SETTINGS.newSession(TOKEN), True, 0.0)
    assert events == [Violation("HELLO next_expected 3 is beyond the 0 messages sent")]
    frames = decode(conn.dataToSend(0.0))
    assert frames == [
        Goodbye(GoodbyeCode.PROTOCOL_ERROR, "HELLO next_expected 3 is beyond the 0 messages sent")
    ]


def test_acceptSessionBelowAcknowledged() -> None:
    """A client HELLO whose next_expected is below what it acknowledged (its
    position went back) is refused the same way, with no ACK before the
    GOODBYE (nothing but HELLO or GOODBYE may answer a HELLO), and the
    session's outbox is left as it was."""
    conn = Connection(SETTINGS, Role.SERVER, 0.0)
    fed(conn, hello(nextExpected=1, session=TOKEN), 0.0)
    session = SETTINGS.newSession(TOKEN)
    session.outbox.nextSeq = 3
    session.outbox.ackedUpTo = 2
    session.inbox.processedUpTo = 4  # (what an ACK would report)
    events = accepted(conn, session, True, 0.0)
    text = "HELLO next_expected 1 is below the 2 messages already acknowledged"
    assert events == [Violation(text)]
    assert decode(conn.dataToSend(0.0)) == [Goodbye(GoodbyeCode.PROTOCOL_ERROR, text)]
    assert session.outbox.ackedUpTo == 2 and session.outbox.nextSeq == 3


def test_gap() -> None:
    """A DATA skipping a sequence number is a violation."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    events = fed(conn, encodeData(1, b"a") + encodeData(3, b"c"), 0.0)
    assert events == [Violation("DATA sequence number 3 arrived, expected 2")]
    assert list(conn.session.inbox.pending) == [(1, b"a")]


def test_duplicateDataDropped() -> None:
    """A DATA already received is dropped silently."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    events = fed(conn, encodeData(1, b"a") + encodeData(1, b"a"), 0.0)
    assert events == []
    assert list(conn.session.inbox.pending) == [(1, b"a")]
    assert conn.session.inbox.duplicates == 1


def test_ackBeyondSent() -> None:
    """An ACK for a message never sent is a violation."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    events = fed(conn, encode(Ack(5)), 0.0)
    assert events == [Violation("ACK for sequence number 5, but only 0 were sent")]
    assert goodbyes(conn) == [
        Goodbye(GoodbyeCode.PROTOCOL_ERROR, "ACK for sequence number 5, but only 0 were sent")
    ]


def test_dataAfterGoodbye() -> None:
    """DATA after the peer's GOODBYE is a violation."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    data = encode(Goodbye(GoodbyeCode.NORMAL, "")) + encodeData(1, b"late")
    events = fed(conn, data, 0.0)
    assert events == [GoodbyeReceived(GoodbyeCode.NORMAL, ""), Violation("DATA after GOODBYE")]
    assert not conn.session.inbox.pending


@pytest.mark.parametrize("role", [Role.PEER, Role.SERVER, Role.CLIENT])
def test_garbage(role: Role) -> None:
    """64 bytes of 0xff first: not a twisted_alive peer, GOODBYE queued, nothing buffered."""
    conn = Connection(SETTINGS, role, 0.0)
    conn.dataToSend(0.0)
    detail = (
        "the peer does not speak twisted_alive: its first bytes were "
        "0xff ff ff ff ff ff ff ff ff ff ff ff ff ff ff ff… "
        "(frame of 4294967295 bytes exceeds the maximum of 1048576 bytes)"
    )
    assert fed(conn, b"\xff" * 64, 0.0) == [Violation(detail, notAlive=True)]
    assert conn.state is State.FAILED
    assert decode(conn.dataToSend(0.0)) == [Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)]
    assert conn.decoder.buffered == 0
    # Later bytes are ignored: no second event, no second GOODBYE.
    assert fed(conn, hello() + b"\xff" * 64, 0.0) == []
    assert conn.dataToSend(0.0) == b""


def test_garbageAfterOpen() -> None:
    """Garbage on an open connection fails it the same way."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    events = fed(conn, b"\x00\x00\x00\x02\x08\x00", 0.0)
    assert events == [Violation("unknown frame kind 0x08")]
    assert not conn.canSend


def test_framesBeforeBadFrameHandled() -> None:
    """Frames before a bad one in the same read are acted on: PONG, then ACK, then GOODBYE."""
    a = Connection(SETTINGS, Role.PEER, 0.0)
    a.dataToSend(0.0)
    data = hello() + encodeData(1, b"first") + encode(Ping(3)) + b"\xff" * 8
    events = fed(a, data, 0.0)
    assert events == [
        Opened(False),
        Violation("frame of 4294967295 bytes exceeds the maximum of 1048576 bytes"),
    ]
    assert list(a.session.inbox.pending) == [(1, b"first")]
    # The adapter hands the message to the application, then flushes the ACK.
    a.session.inbox.pending.popleft()
    a.session.inbox.processedUpTo = 1
    a.flushAck()
    assert decode(a.dataToSend(0.0)) == [
        Pong(3),
        Ack(1),
        Goodbye(
            GoodbyeCode.PROTOCOL_ERROR,
            "frame of 4294967295 bytes exceeds the maximum of 1048576 bytes",
        ),
    ]
    # Once the GOODBYE is out, nothing more goes.
    a.flushAck()
    assert a.dataToSend(0.0) == b""


def test_ackBeforeBadFrameConfirms() -> None:
    """An ACK decoded before a bad frame in the same read still confirms."""
    wire = openPeers()
    a = wire.a
    submit(a, 0.0, b"x")
    wire.pull(a)
    events = fed(a, encode(Ack(1)) + b"\x00\x00\x00\x00", 0.0)
    assert confirmedHandles(events) == [b"x"]
    assert violations(events) == ["frame length 0: a frame holds at least its kind byte"]


def test_violationBeforeBadFrame() -> None:
    """A rule broken by a frame that precedes a malformed one is a Violation, not an exception."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    events = fed(conn, encodeData(2, b"gap") + b"\xff" * 8, 0.0)
    assert events == [Violation("DATA sequence number 2 arrived, expected 1")]
    assert conn.state is State.FAILED


# -- PING / PONG and timers ------------------------------------------------------------------------


def test_pingAnsweredByPong() -> None:
    """A PING is answered at once by a PONG with the same id."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    assert fed(conn, encode(Ping(2**64 - 1)), 0.0) == []
    assert decode(conn.dataToSend(0.0)) == [Pong(2**64 - 1)]


def test_pingAfterIntervalAndRtt() -> None:
    """After interval of outbound silence the timer sends a PING; its PONG gives the RTT."""
    wire = openPeers()
    a, b = wire.a, wire.b
    assert a.nextWake() == 1.0
    assert timed(a, 0.5, 0.5) == []
    assert a.dataToSend(0.5) == b""
    assert timed(a, 1.0, 1.0) == []
    wire.now = 1.0
    assert decode(wire.pull(a)) == [Ping(1)]
    wire.push(a)
    wire.now = 1.25
    events = wire.flow(b)
    assert events == [PongReceived(0.25)]
    assert a.liveness.srtt == 0.25
    assert fed(a, encode(Pong(1)), 2.0) == []  # answered already: ignored


def test_dataPostponesPing() -> None:
    """Sending DATA counts as outbound traffic: the PING moves later."""
    wire = openPeers()
    a = wire.a
    submit(a, 0.6, b"x")
    a.dataToSend(0.6)
    assert a.nextWake() == pytest.approx(1.5625)  # 1.6, rounded down to the 1/16 s grid
    assert timed(a, 1.0, 1.0) == []
    assert a.dataToSend(1.0) == b""


def test_ackPostponesPing() -> None:
    """Sending an ACK counts as outbound traffic too."""
    wire = openPeers()
    a, b = wire.a, wire.b
    submit(a, 0.0, b"x")
    wire.flow(a)
    processAll(b)
    b.dataToSend(0.7)
    assert b.nextWake() == pytest.approx(1.6875)  # 1.7, rounded down to the 1/16 s grid


def test_noPingBeforeHandshake() -> None:
    """No PING is sent before the peer's HELLO; the timer waits for the handshake deadline."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    conn.dataToSend(0.0)
    assert conn.nextWake() == 3.0
    assert timed(conn, 2.0, 2.0) == []
    assert conn.dataToSend(2.0) == b""


def test_expiredAfterDeadline() -> None:
    """Silence for peer interval x misses: Expired with its detail, state FAILED, no GOODBYE."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    fed(conn, hello(interval=2.0), 1.0)
    conn.dataToSend(1.0)
    fed(conn, encode(Ping(1)), 3.0)
    conn.dataToSend(3.0)
    assert conn.nextWake() == 4.0  # our own PING first
    assert timed(conn, 4.0, 4.0) == []
    conn.dataToSend(4.0)
    assert conn.nextWake() == 5.0
    assert timed(conn, 5.0, 5.0) == []
    conn.dataToSend(5.0)
    assert conn.nextWake() == 6.0
    assert timed(conn, 6.0, 6.0) == []
    conn.dataToSend(6.0)
    assert conn.nextWake() == 7.0
    assert timed(conn, 8.99, 8.99) == []
    assert decode(conn.dataToSend(8.99)) == [Ping(4)]
    detail = "no data from peer for 6.000 s (deadline 6.000 s = 2 s x 3)"
    ending = Ending(Reason.TIMEOUT, detail)
    assert timed(conn, 9.0, 9.0) == [Expired(detail), CloseNow(True, ending)]
    assert conn.nextWake() == float("inf")
    assert conn.state is State.FAILED and conn.error == detail
    assert conn.dataToSend(9.0) == b""


def test_handshakeExpired() -> None:
    """No HELLO within the deadline from connection start: Expired, even if bytes trickled in."""
    conn = Connection(SETTINGS, Role.SERVER, 10.0)
    fed(conn, hello()[:10], 11.0)
    fed(conn, hello()[10:20], 12.5)
    assert conn.nextWake() == 13.0
    detail = "no HELLO from peer for 3.000 s (deadline 3.000 s = 1 s x 3)"
    assert timed(conn, 13.0, 13.0) == [
        Expired(detail),
        CloseNow(True, Ending(Reason.TIMEOUT, detail)),
    ]


def test_inboundBytesKeepAlive() -> None:
    """After the handshake, any inbound byte, even part of a frame, pushes the deadline back."""
    conn = afterHandshake(Connection(SETTINGS, Role.PEER, 0.0))
    big = encodeData(1, b"z" * 1000)
    for i, t in enumerate((2.0, 4.0, 6.0, 8.0)):
        fed(conn, big[i * 10 : i * 10 + 10], t)
        conn.dataToSend(t)
        assert timed(conn, t + 0.5, t + 0.5) == []
    assert conn.liveness.expiresAt() == 11.0


def test_lateTimerStalled() -> None:
    """A timer firing 1.0 s late reports Stalled(1.0) and does not expire the connection."""
    conn = afterHandshake(Connection(Settings(interval=10.0, misses=3), Role.PEER, 0.0), 1.0)
    scheduled = conn.nextWake()
    assert scheduled == 3.0
    events = timed(conn, scheduled + 1.0, scheduled)
    assert events == [Stalled(1.0)]
    assert conn.state is State.OPEN
    fed(conn, encode(Pong(0)), 4.0)  # what the peer sent during the stall
    assert timed(conn, 4.0, conn.nextWake()) == []
    assert conn.state is State.OPEN


# -- close -----------------------------------------------------------------------------------------


def test_closeSendsGoodbyeThenNoData() -> None:
    """close() queues GOODBYE; later messages stay queued, while ACKs and PONGs still flow."""
    wire = openPeers()
    a, b = wire.a, wire.b
    submit(a, 0.0, b"before")
    a.close(GoodbyeCode.SHUTTING_DOWN, "restarting")
    assert a.state is State.CLOSING and not a.canSend
    submit(a, 0.0, b"after")
    frames = decode(wire.pull(a))
    assert frames == [Data(1, b"before"), Goodbye(GoodbyeCode.SHUTTING_DOWN, "restarting")]
    events = wire.push(a)
    assert events == [GoodbyeReceived(GoodbyeCode.SHUTTING_DOWN, "restarting")]
    assert b.state is State.PEER_CLOSING
    processAll(b)
    submit(b, 0.0, b"from b")  # the side receiving GOODBYE sends no new DATA either
    assert decode(wire.pull(b)) == [Ack(1)]
    assert confirmedHandles(wire.push(b)) == [b"before"]
    # the closing side still answers PINGs and acknowledges
    fed(a, encode(Ping(4)), 0.0)
    assert decode(a.dataToSend(0.0)) == [Pong(4)]
    assert [e.payload for e in a.session.outbox.queue] == [b"after"]


def test_closeTwiceOneGoodbye() -> None:
    """A second close() sends no second GOODBYE."""
    wire = openPeers()
    wire.a.close()
    wire.a.close(GoodbyeCode.GO_AWAY)
    assert goodbyes(wire.a) == [Goodbye(GoodbyeCode.NORMAL, "")]


def test_closeAfterPeerGoodbye() -> None:
    """Answering the peer's GOODBYE with ours keeps the PEER_CLOSING state."""
    wire = openPeers()
    wire.a.close()
    wire.flow(wire.a)
    wire.b.sendGoodbye()
    assert wire.b.state is State.PEER_CLOSING
    assert goodbyes(wire.b) == [Goodbye(GoodbyeCode.NORMAL, "")]


def test_closeDuringHandshake() -> None:
    """close() before the HELLO exchange queues GOODBYE after our HELLO."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    conn.close()
    assert [type(f) for f in decode(conn.dataToSend(0.0))] == [Hello, Goodbye]
    assert conn.state is State.CLOSING


def test_closeOnFailedConnectionDoesNothing() -> None:
    """A failed connection sends no GOODBYE on close()."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    fed(conn, b"\xff" * 8, 0.0)
    conn.dataToSend(0.0)
    conn.close()
    assert conn.dataToSend(0.0) == b""


def test_noDataAfterGoodbyeSentDuringHandshake() -> None:
    """After close() during the handshake, the peer's HELLO makes no DATA follow the GOODBYE."""
    wire = peers()
    a, b = wire.a, wire.b
    submit(a, 0.0, b"queued")
    a.sendGoodbye()
    wire.flow(b)  # b's HELLO reaches a after a's GOODBYE
    frames = decode(a.dataToSend(0.0))
    assert [type(f) for f in frames] == [Hello, Goodbye]
    assert a.state is State.CLOSING


def test_serverKeepsFramesAfterClientHello() -> None:
    """A client's HELLO and GOODBYE arriving in one read: the server still sees the GOODBYE."""
    server = Server(SETTINGS, App("s"))
    client = Connection(SETTINGS, Role.CLIENT, 0.0, SETTINGS.newSession())
    client.close(GoodbyeCode.GO_AWAY, "bye")
    serverConn = Connection(SETTINGS, Role.SERVER, 0.0)
    wire = Wire(client, serverConn, accept=server)
    wire.flow(client)
    assert GoodbyeReceived(GoodbyeCode.GO_AWAY, "bye") in wire.events[serverConn]
    assert serverConn.state is State.PEER_CLOSING


def test_serverAnswersPingHeldBehindHello() -> None:
    """A PING in the same read as the client's HELLO is answered with the server's HELLO."""
    serverConn = Connection(SETTINGS, Role.SERVER, 0.0)
    events = fed(serverConn, hello() + encode(Ping(9)), 0.0)
    assert [type(e) for e in events] == [HelloReceived]
    accepted(serverConn, SETTINGS.newSession(TOKEN), False, 0.0)
    frames = decode(serverConn.dataToSend(0.0))
    assert isinstance(frames[0], Hello) and frames[1:] == [Pong(9)]


# -- first contact: reflections, roles, peers that do not speak twisted_alive -----------------


@pytest.mark.parametrize("role", [Role.PEER, Role.CLIENT])
def test_echoedHelloRefused(role: Role) -> None:
    """Our own HELLO reflected back (an echo server) is refused: no session, no open, no DATA."""
    conn = Connection(SETTINGS, role, 0.0)
    own = conn.dataToSend(0.0)
    events = fed(conn, own, 0.0)
    detail = "the peer echoed our own HELLO: it does not speak twisted_alive"
    assert events == [Violation(detail, notAlive=True)]
    assert conn.state is State.FAILED and conn.peerHello is None
    assert decode(conn.dataToSend(0.0)) == [Goodbye(GoodbyeCode.PROTOCOL_ERROR, detail)]


def test_echoedHelloWithDataNeverConfirms() -> None:
    """A reflected HELLO followed by our own reflected DATA is never delivered nor confirmed."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    conn.send(b"job", "handle", 0.0)
    own = conn.dataToSend(0.0)
    events = fed(conn, own + encodeData(1, b"job") + encode(Ack(1)), 0.0)
    assert confirmedHandles(events) == []
    assert not conn.session.inbox.pending


def test_nonceIsRandomAndNonZero() -> None:
    """Each connection draws its own non-zero nonce; one may be given for tests."""
    nonces = {Connection(SETTINGS, Role.PEER, 0.0).nonce for _ in range(64)}
    assert len(nonces) == 64 and 0 not in nonces
    assert Connection(SETTINGS, Role.PEER, 0.0, nonce=7).nonce == 7


@pytest.mark.parametrize("flags", [HELLO_ASSIGNED, HELLO_RESUMED, HELLO_ASSIGNED | HELLO_RESUMED])
def test_serverRefusesServerHello(flags: int) -> None:
    """A server refuses a HELLO with ASSIGNED or RESUMED: it comes from another server."""
    server = Connection(SETTINGS, Role.SERVER, 0.0)
    events = fed(server, hello(session=TOKEN, flags=flags), 0.0)
    assert violations(events) == [
        f"a client's HELLO must not set ASSIGNED or RESUMED (flags 0x{flags:02x}): "
        "the peer answers as a server"
    ]
    assert not ofType(events, HelloReceived)


NO_TOKEN_DETAIL = "HELLO sets ASSIGNED but carries no session token"


@pytest.mark.parametrize(
    "role,flags,token,detail",
    [
        (Role.CLIENT, HELLO_ASSIGNED, NO_SESSION, NO_TOKEN_DETAIL),
        (Role.PEER, HELLO_ASSIGNED, NO_SESSION, NO_TOKEN_DETAIL),
        (Role.CLIENT, HELLO_RESUMED, TOKEN, "HELLO sets RESUMED without ASSIGNED"),
        (
            Role.CLIENT,
            HELLO_ASSIGNED | HELLO_RESUMED,
            TOKEN,
            "HELLO sets RESUMED for a session this side did not ask for",
        ),
        (
            Role.PEER,
            HELLO_ASSIGNED | HELLO_RESUMED,
            TOKEN,
            "HELLO sets RESUMED for a session this side did not ask for",
        ),
        (
            Role.CLIENT,
            0,
            TOKEN,
            "the peer's HELLO asks to resume a session: it is a client, not a server",
        ),
    ],
)
def test_helloFlagRules(role: Role, flags: int, token: bytes, detail: str) -> None:
    """Each HELLO flag rule of the spec is a protocol error with an exact text."""
    conn = Connection(SETTINGS, role, 0.0)
    conn.dataToSend(0.0)
    events = fed(conn, hello(session=token, flags=flags), 0.0)
    assert events == [Violation(detail)]


def test_unknownFlagBitsIgnoredInHandshake() -> None:
    """Flag bits other than RESUMED and ASSIGNED do not change the handshake."""
    server = Connection(SETTINGS, Role.SERVER, 0.0)
    events = fed(server, hello(flags=0xFC), 0.0)
    assert ofType(events, HelloReceived)


@pytest.mark.parametrize(
    "first,shown",
    [
        (b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n", "'SSH-2.0-OpenSSH_'…"),
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "'HTTP/1.1 400 Bad'…"),
        (b"220 it's\r\n", "'220 it\\'s\\r\\n'"),
    ],
)
def test_bannerPeer(first: bytes, shown: str) -> None:
    """A peer whose first bytes are text says so in words, quoting them."""
    conn = Connection(SETTINGS, Role.CLIENT, 0.0)
    conn.dataToSend(0.0)
    (event,) = fed(conn, first, 0.0)
    assert isinstance(event, Violation) and event.notAlive
    assert event.detail.startswith(
        f"the peer does not speak twisted_alive: its first bytes were {shown} (frame of "
    )


def test_bannerInPieces() -> None:
    """The first bytes are quoted even when they arrive one by one."""
    conn = Connection(SETTINGS, Role.CLIENT, 0.0)
    conn.dataToSend(0.0)
    events: list[Event] = []
    for byte in b"SSH-2.0-x":
        events += fed(conn, bytes([byte]), 0.0)
    (event,) = events
    assert isinstance(event, Violation)
    assert "its first bytes were 'SSH-' (" in event.detail


def test_tlsRecordNamed() -> None:
    """A TLS record (an alert from a TLS port) is named as a TLS mismatch."""
    conn = Connection(SETTINGS, Role.CLIENT, 0.0)
    conn.dataToSend(0.0)
    (event,) = fed(conn, bytes.fromhex("15030300020246"), 0.0)
    assert isinstance(event, Violation) and event.notAlive
    assert event.detail.startswith(
        "the peer does not speak twisted_alive: its first bytes were 0x15 03 03 00 02 02 46 "
        "(a TLS record: TLS mismatch, the peer expects TLS) (frame of "
    )


def test_otherVersionNamed() -> None:
    """A HELLO of another protocol version is a peer that does not speak ours."""
    conn = Connection(SETTINGS, Role.CLIENT, 0.0)
    conn.dataToSend(0.0)
    data = bytearray(hello())
    data[5] = 1
    (event,) = fed(conn, bytes(data), 0.0)
    assert event == Violation(
        "the peer speaks another version of twisted_alive: "
        "unsupported protocol version 1 (this side speaks 2)",
        notAlive=True,
    )


def test_badFrameAfterHelloIsNoNonSpeaker() -> None:
    """Garbage after a valid HELLO is an ordinary protocol error, not a non-speaker."""
    conn = Connection(SETTINGS, Role.PEER, 0.0)
    conn.dataToSend(0.0)
    events = fed(conn, hello() + b"\xff" * 8, 0.0)
    assert events[-1] == Violation("frame of 4294967295 bytes exceeds the maximum of 1048576 bytes")


def test_windowCountsFromAckSent() -> None:
    """DATA beyond the last ACK sent plus the window is a violation, even if processed."""
    settings = Settings(window=2)
    conn = afterHandshake(Connection(settings, Role.PEER, 0.0))
    events = fed(conn, encodeData(1, b"a") + encodeData(2, b"b"), 0.0)
    assert not violations(events)
    conn.session.inbox.processedUpTo = 2  # processed, but no ACK went out yet
    events = fed(conn, encodeData(3, b"c"), 0.0)
    assert violations(events) == ["peer exceeded the window of 2 unacknowledged messages"]


def test_windowMovesWithAck() -> None:
    """Once an ACK went out, the peer may send a window beyond it."""
    settings = Settings(window=2)
    conn = afterHandshake(Connection(settings, Role.PEER, 0.0))
    fed(conn, encodeData(1, b"a") + encodeData(2, b"b"), 0.0)
    conn.session.inbox.pending.clear()
    conn.session.inbox.processedUpTo = 2
    conn.flushAck()
    events = fed(conn, encodeData(3, b"c") + encodeData(4, b"d"), 0.0)
    assert not violations(events)


def test_resumeWithSmallerMaxFrameRefused() -> None:
    """A resumed peer whose max_frame is too small for an unacknowledged message ends it."""
    session = SETTINGS.newSession()
    first = Connection(SETTINGS, Role.CLIENT, 0.0, session)
    fed(first, hello(session=TOKEN, flags=HELLO_ASSIGNED), 0.0)
    first.send(b"x" * 500, "big", 0.0)
    assert first.session.outbox.inflight
    second = Connection(SETTINGS, Role.CLIENT, 0.0, session)
    events = fed(second,
        hello(session=TOKEN, flags=HELLO_ASSIGNED | HELLO_RESUMED, maxFrameSize=100), 0.0
    )
    assert violations(events) == [
        "the peer's max_frame of 100 is too small for message 1 (500 bytes), which it has not "
        "acknowledged: the session cannot continue"
    ]
