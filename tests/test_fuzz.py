# mypy: disable-error-code="no-untyped-call"
"""
Stateful fuzzing (Hypothesis ``RuleBasedStateMachine``) of the Twisted
adapter over `FakeLink`: random messages both ways, random faults (cut,
reset, stalls one or both ways, fragmentation, closes, aborts), slow and
failing applications, clock advances and reconnects.

Two machines:

- `PeerPairMachine`: two `HeartbeatProtocol` peers without sessions; a new
  pair after each loss.
- `SessionMachine`: `AliveClientFactory` and `AliveServerFactory`, one
  session over many connections, including takeovers of half-open ones.

Invariants, checked after every step: no message is processed twice, and
what is processed is a prefix of what was sent, in order (per connection
for peers, per session for the factories); every Deferred fires at most
once, and a ``Receipt`` only for a message the peer processed; every
protocol is told of its loss once, with one `Reason`. ``settle`` (a rule,
and the end of every run) heals the link and checks that everything
resolved: what is alive was confirmed, what was lost has failed.

``HYPOTHESIS_PROFILE=long`` runs them with many more examples (see
``tests/conftest.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from twisted_alive._factories import AliveClientFactory, AliveServerFactory
from twisted_alive._mixin import ABORT_GRACE, HeartbeatMixin, HeartbeatProtocol
from twisted_alive._reasons import Loss, Reason
from twisted_alive.core.connection import State
from twisted_alive.core.frames import NO_SESSION, GoodbyeCode
from twisted_alive.core.outcomes import DeliveryFailed, QueueFull, Receipt
from twisted_alive.testing import FakeLink

INTERVAL = 0.5
MISSES = 3
DEADLINE = INTERVAL * MISSES
CLOSE_TIMEOUT = 2.0
SLOW = 0.2
"""Seconds a slow message keeps the application busy."""
SETTLE = DEADLINE + CLOSE_TIMEOUT + ABORT_GRACE + INTERVAL + 1.0
"""Seconds after which a healed link has resolved everything."""
STEP = 0.05


class App(HeartbeatProtocol):
    """
    A protocol whose application records what it processes. Payloads
    starting with ``s`` are slow (processed after `SLOW` seconds), with
    ``x`` make the application fail (a REJECT).
    """

    heartbeatInterval = INTERVAL
    heartbeatMisses = MISSES
    closeTimeout = CLOSE_TIMEOUT

    def __init__(
        self, received: list[bytes], losses: list[Loss], tokens: list[bytes] | None = None
    ) -> None:
        self.received = received
        self.losses = losses
        self.tokens = tokens
        self.ownLosses: list[Loss] = []
        self.lostWaiterFired = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        self.whenLost().addCallback(self._lostWaiter)

    def _lostWaiter(self, loss: Loss) -> None:
        self.lostWaiterFired += 1
        assert loss is self.loss

    def messageReceived(self, payload: bytes) -> Deferred[None] | None:
        self.received.append(payload)
        if self.tokens is not None:
            assert self.session is not None
            self.tokens.append(self.session.token)
        if payload.startswith(b"x"):
            raise ValueError("the application refuses " + payload.decode())
        if payload.startswith(b"s"):
            assert self.clock is not None
            return deferLater(cast(Clock, self.clock), SLOW, lambda: None)
        return None

    def disconnected(self, loss: Loss) -> None:
        self.ownLosses.append(loss)
        self.losses.append(loss)


@dataclass
class Sent:
    """One message sent and what became of its Deferred."""

    payload: bytes
    sender: Any
    fired: int = 0
    result: object = None
    session: Any = None
    then: Callable[[Sent], None] | None = None

    def watch(self, d: Deferred[Receipt]) -> None:
        """Record C{d}'s outcome (consumed: failures are expected), then call
        C{then} if set."""

        def fired(result: object) -> None:
            self.fired += 1
            self.result = result
            if self.then is not None:
                self.then(self)

        d.addBoth(fired)

    @property
    def uncertain(self) -> bool:
        """Failed, and may have been processed."""
        return (
            isinstance(self.result, Failure)
            and isinstance(self.result.value, DeliveryFailed)
            and self.result.value.maybeProcessed
        )

    @property
    def confirmed(self) -> bool:
        """Fired with a Receipt."""
        return isinstance(self.result, Receipt)

    @property
    def rejected(self) -> bool:
        """Failed because the peer's application failed on it."""
        return (
            isinstance(self.result, Failure)
            and isinstance(self.result.value, DeliveryFailed)
            and self.result.value.rejected
        )


payloads = st.tuples(st.sampled_from([b"", b"", b"", b"s", b"x"]), st.integers(0, 10**6)).map(
    lambda p: p[0] + b"%d" % p[1]
)
advances = st.sampled_from([STEP, 0.3, 1.0, DEADLINE + 0.2, 3.0])


def closedHere(proto: App) -> bool:
    """Whether C{proto}'s application called close() (sending is refused at once)."""
    refusal = proto._alive.refusal() if proto._alive is not None else None
    return refusal is not None and refusal[0]


def healthy(link: FakeLink[App, App]) -> bool:
    """Whether both sides of C{link} are open, with nothing ending or stalled."""
    return not link.stalled and all(
        p.loss is None
        and p.state is State.OPEN
        and p._alive is not None
        and p._alive.refusal() is None
        and p._alive.ending is None
        and not p.transport.disconnecting
        for p in (link.client, link.server)
    )


def isPrefix(processed: list[bytes], sent: list[bytes]) -> bool:
    """Whether C{processed} is C{sent}'s beginning."""
    return processed == sent[: len(processed)]


class LinkedMachine(RuleBasedStateMachine):
    """What both machines share: a clock, links, faults on the current link."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.links: list[FakeLink[App, App]] = []
        self.counter = 0

    @property
    def link(self) -> FakeLink[App, App]:
        """The current link."""
        return self.links[-1]

    def unique(self, payload: bytes) -> bytes:
        """C{payload} made unique (a message id after it)."""
        self.counter += 1
        return payload + b"#%d" % self.counter

    def advanceAll(self, seconds: float) -> None:
        """Move the clock in steps, delivering on every link after each."""
        for link in self.links:
            link.flush()
        remaining = seconds
        while remaining > 1e-9:
            delta = min(STEP, remaining)
            self.clock.advance(delta)
            remaining -= delta
            for link in self.links:
                link.flush()

    @rule(seconds=advances)
    def advance(self, seconds: float) -> None:
        """Time passes."""
        self.advanceAll(seconds)

    @rule()
    def flush(self) -> None:
        """Bytes move, no time passes."""
        for link in self.links:
            link.flush()

    @rule()
    def cut(self) -> None:
        """Both sides get a FIN."""
        self.link.cut()

    @rule()
    def reset(self) -> None:
        """Both sides get an RST."""
        self.link.reset()

    @rule(toServer=st.booleans(), toClient=st.booleans())
    def stall(self, toServer: bool, toClient: bool) -> None:
        """One or both directions stop."""
        self.link.stall(toServer, toClient)

    @rule()
    def unstall(self) -> None:
        """Bytes flow again."""
        self.link.unstall()

    @rule(size=st.sampled_from([0, 0, 1, 2, 3, 7, 40]))
    def fragment(self, size: int) -> None:
        """Deliver in small pieces (0: whole writes)."""
        self.link.fragment(size)

    @rule(client=st.booleans())
    def abort(self, client: bool) -> None:
        """One side aborts."""
        (self.link.client if client else self.link.server).abort("fuzz abort")

    def protocols(self) -> list[App]:
        """Every protocol of every link."""
        return [p for link in self.links for p in (link.server, link.client)]

    @invariant()
    def lossesOnce(self) -> None:
        """Every protocol is told of its loss at most once, and has a loss iff told."""
        for proto in self.protocols():
            assert len(proto.ownLosses) <= 1
            assert proto.lostWaiterFired == len(proto.ownLosses)
            assert (proto.loss is None) == (not proto.ownLosses)
            if proto.ownLosses:
                assert proto.ownLosses[0] is proto.loss
                assert isinstance(proto.loss.reason, Reason)


# -- two peers without sessions -----------------------------------------------------------


@dataclass
class PeerConnection:
    """What was sent and processed on one connection of two peers."""

    toServer: list[Sent] = field(default_factory=list)
    toClient: list[Sent] = field(default_factory=list)
    serverReceived: list[bytes] = field(default_factory=list)
    clientReceived: list[bytes] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)


class PeerPairMachine(LinkedMachine):
    """Two `HeartbeatProtocol` peers over a `FakeLink`; reconnects make a new pair."""

    def __init__(self) -> None:
        super().__init__()
        self.connections: list[PeerConnection] = []
        self.connect()

    def connect(self) -> None:
        """A new pair of peers on a new link."""
        conn = PeerConnection()
        self.connections.append(conn)
        server = App(conn.serverReceived, conn.losses)
        client = App(conn.clientReceived, conn.losses)
        self.links.append(FakeLink(server, client, self.clock))

    @rule()
    def reconnect(self) -> None:
        """A new connection (the old one may linger, half-open)."""
        self.connect()

    @rule(payload=payloads, fromClient=st.booleans())
    def send(self, payload: bytes, fromClient: bool) -> None:
        """Send a message on the current link."""
        link, conn = self.link, self.connections[-1]
        sender = link.client if fromClient else link.server
        sent = Sent(self.unique(payload), sender)
        if closedHere(sender):
            # This side called close(): sending is a mistake, refused at once.
            try:
                sender.sendMessage(sent.payload)
            except RuntimeError as e:
                assert str(e) == "sendMessage() called after close()"
                return
            raise AssertionError("sendMessage() after close() did not raise")
        try:
            d = sender.sendMessage(sent.payload)
        except QueueFull:  # pragma: no cover
            return
        sent.watch(d)
        (conn.toServer if fromClient else conn.toClient).append(sent)

    @rule(client=st.booleans(), code=st.sampled_from(list(GoodbyeCode)))
    def close(self, client: bool, code: GoodbyeCode) -> None:
        """One side closes in order."""
        (self.link.client if client else self.link.server).close(code, "fuzz close")

    @precondition(lambda self: healthy(self.link))
    @rule(how=st.sampled_from(["cut", "reset"]))
    def faultOnHealthyLink(self, how: str) -> None:
        """On an open, healthy link a cut is PEER_CLOSED and a reset RESET, on both sides
        (a side busy with a slow message first finishes it)."""
        link = self.link
        if how == "cut":
            link.cut()
            expected = Reason.PEER_CLOSED
        else:
            link.reset()
            expected = Reason.RESET
        self.advanceAll(SLOW + STEP)
        assert link.client.loss is not None and link.server.loss is not None
        assert (link.client.loss.reason, link.server.loss.reason) == (expected, expected)

    @precondition(lambda self: healthy(self.link))
    @rule()
    def silence(self) -> None:
        """A link stalled both ways is TIMEOUT on both sides, at the deadline counted
        from when each last heard from the other."""
        link = self.link
        link.stall()
        heard = {p: cast(float, p.lastHeard) for p in (link.client, link.server)}
        first, last = min(heard.values()), max(heard.values())
        self.advanceAll(max(0.0, first + DEADLINE - STEP - self.clock.seconds()))
        assert link.client.loss is None and link.server.loss is None
        # Each timer firing may be up to one STEP late, and lateness is granted
        # back to the peer (it is this process's, not the peer's, delay).
        self.advanceAll(last + DEADLINE + (MISSES + 2) * STEP - self.clock.seconds())
        for proto in heard:
            assert proto.loss is not None and proto.loss.reason is Reason.TIMEOUT

    @invariant()
    def processedOncePerConnection(self) -> None:
        """Each connection's peers process a prefix of what was sent to them, in order,
        nothing twice; a Receipt only for what was processed; no Deferred twice."""
        for conn in self.connections:
            toServer = [s.payload for s in conn.toServer]
            toClient = [s.payload for s in conn.toClient]
            assert isPrefix(conn.serverReceived, toServer)
            assert isPrefix(conn.clientReceived, toClient)
            for sent, received in (
                (conn.toServer, conn.serverReceived),
                (conn.toClient, conn.clientReceived),
            ):
                for s in sent:
                    assert s.fired <= 1
                    if s.confirmed or s.rejected:
                        assert s.payload in received
                    if s.rejected:
                        assert s.payload.startswith(b"x")

    @rule()
    def settle(self) -> None:
        """Heal the link and wait: live peers have confirmed everything, lost ones
        have failed everything."""
        for link in self.links:
            link.unstall()
            link.fragment(0)
        self.advanceAll(SETTLE)
        for link, conn in zip(self.links, self.connections, strict=True):
            for sent in (*conn.toServer, *conn.toClient):
                assert sent.fired == 1, (sent, link.client.loss, link.server.loss)
                if sent.sender.loss is None:
                    assert sent.confirmed or sent.rejected, sent
                if sent.confirmed or sent.rejected:
                    assert not sent.payload.startswith(b"x") or sent.rejected

    def teardown(self) -> None:
        """Every run ends settled."""
        self.settle()


TestPeerPair = PeerPairMachine.TestCase
TestPeerPair.pytestmark = [pytest.mark.slow]  # type: ignore[attr-defined]


# -- a session over many connections --------------------------------------------------------


class SessionServer(AliveServerFactory):
    """Builds L{App}s recording what the client sends (and in which session)."""

    def __init__(self, received: list[bytes], losses: list[Loss]) -> None:
        super().__init__()
        self.received = received
        self.tokens: list[bytes] = []
        self.lossRecord = losses
        self.protocol = App

    def buildProtocol(self, addr: Any) -> HeartbeatMixin | None:  # type: ignore[override]
        proto = App(self.received, self.lossRecord, self.tokens)
        proto.factory = self
        return proto


class SessionClient(AliveClientFactory):
    """Builds L{App}s recording what the server sends."""

    def __init__(self, received: list[bytes], losses: list[Loss]) -> None:
        super().__init__()
        self.received = received
        self.lossRecord = losses
        self.protocol = App

    def buildProtocol(self, addr: Any) -> HeartbeatMixin | None:  # type: ignore[override]
        proto = App(self.received, self.lossRecord)
        proto.factory = self
        return proto


ADDRESS = IPv4Address("TCP", "127.0.0.1", 9000)


class SessionMachine(LinkedMachine):
    """
    One client session (`AliveClientFactory`) with an `AliveServerFactory`
    over many links: messages sent while connected or not, faults, server
    closes, reconnects that may find the old connection still open on the
    server (a takeover). Exactly once, in order, both ways.
    """

    def __init__(self) -> None:
        super().__init__()
        self.serverReceived: list[bytes] = []
        self.clientReceived: list[bytes] = []
        self.losses: list[Loss] = []
        self.server = SessionServer(self.serverReceived, self.losses)
        self.client = SessionClient(self.clientReceived, self.losses)
        self.toServer: list[Sent] = []
        self.toClient: list[Sent] = []
        self.refused = 0
        self.connect()

    def connect(self) -> None:
        """A new connection of the session."""
        server = cast(App, self.server.buildProtocol(ADDRESS))
        client = cast(App, self.client.buildProtocol(ADDRESS))
        self.links.append(FakeLink(server, client, self.clock))

    @precondition(lambda self: self.link.client.loss is not None)
    @rule()
    def reconnect(self) -> None:
        """The client connects again (the server may still hold the old connection)."""
        self.connect()

    @rule(payload=payloads)
    def clientSends(self, payload: bytes) -> None:
        """The client's application sends, connected or not."""
        sent = Sent(self.unique(payload), self.client)
        sent.watch(self.client.sendMessage(sent.payload))
        self.toServer.append(sent)

    @precondition(
        lambda self: self.link.server.loss is None and self.link.server.state is State.OPEN
    )
    @rule(payload=payloads)
    def serverSends(self, payload: bytes) -> None:
        """The server's application sends on the open connection of the session. On a
        connection that is already closing (a FIN arrived while the application was
        busy) the message is refused at once, certainly unsent; the application keeps
        it for the next connection, so it does not count here."""
        proto = self.link.server
        sent = Sent(self.unique(payload), proto, session=proto.session)
        if closedHere(proto):
            # The server called close(): sending now is a mistake, refused at once.
            with pytest.raises(RuntimeError, match=r"^sendMessage\(\) called after close\(\)$"):
                proto.sendMessage(sent.payload)
            return
        sent.watch(proto.sendMessage(sent.payload))
        if sent.fired:
            assert isinstance(sent.result, Failure)
            failed = sent.result.value
            assert isinstance(failed, DeliveryFailed) and not failed.maybeProcessed, failed
            assert proto._alive is not None and proto._alive.refusal() is not None
            self.refused += 1
            return
        self.toClient.append(sent)

    @rule()
    def serverCloses(self) -> None:
        """The server closes the connection in order (the session stays), during the
        handshake too (then it keeps no session: test_closeDuringHandshakeCreatesNoSession)."""
        self.link.server.close(GoodbyeCode.SHUTTING_DOWN, "fuzz restart")

    def inClientSession(self, sent: Sent) -> bool:
        """Whether a server message went into the session the client holds. (A server
        session whose HELLO never reached the client is an orphan: its messages fail
        when it expires.)"""
        return bool(sent.session.matches(self.client.session.token))

    @invariant()
    def exactlyOnceInOrder(self) -> None:
        """Each side processed a prefix of what the other sent in the session, in order,
        nothing twice; no Deferred fired twice; a Receipt only for what was processed;
        nothing failed in the client's session."""
        toClient = [s for s in self.toClient if self.inClientSession(s)]
        assert isPrefix(self.serverReceived, [s.payload for s in self.toServer])
        assert isPrefix(self.clientReceived, [s.payload for s in toClient])
        for sent, received in (
            (self.toServer, self.serverReceived),
            (toClient, self.clientReceived),
        ):
            for s in sent:
                assert s.fired <= 1
                if s.confirmed or s.rejected:
                    assert s.payload in received
                if s.fired and not (s.confirmed or s.rejected):
                    raise AssertionError(f"{s.payload!r} failed in a live session: {s.result}")
        for s in self.toClient:
            assert s.fired <= 1

    def carriers(self) -> list[App]:
        """The server's live, open connections that carry the client's session."""
        token = self.client.session.token
        return [
            link.server
            for link in self.links
            if link.server.loss is None
            and not link.server.transport.disconnecting
            and link.server.state is State.OPEN
            and link.server.session is not None
            and link.server.session.matches(token)
        ]

    @invariant()
    def oneSession(self) -> None:
        """At most one live server connection carries the client's session (a new one
        takes over from a half-open old one), and once the client has a token the server
        knows it. (Sessions whose HELLO answer never reached the client are kept too,
        with their half-open connection if any, until they expire: the server cannot
        know.)"""
        assert len(self.carriers()) <= 1
        token = self.client.session.token
        if token != NO_SESSION:
            assert any(s.matches(token) for s in self.server.sessions.values())
        assert sum(self.client.losses.values()) == sum(
            1 for link in self.links if link.client.loss is not None
        )

    @rule()
    def settle(self) -> None:
        """Heal, reconnect if need be, wait: everything is processed once and confirmed."""
        for link in self.links:
            link.unstall()
            link.fragment(0)
        self.advanceAll(SETTLE)
        if self.link.client.loss is not None:
            self.connect()
        self.advanceAll(SETTLE)
        assert self.link.client.loss is None, self.link.client.loss
        # Orphan sessions expire (the client's has a connection and stays).
        self.server.expireSessions(self.clock.seconds() + self.server.sessionTTL + 1)
        assert len(self.server.sessions) == 1
        toClient = [s for s in self.toClient if self.inClientSession(s)]
        assert self.serverReceived == [s.payload for s in self.toServer]
        assert self.clientReceived == [s.payload for s in toClient]
        for s in (*self.toServer, *toClient):
            assert s.fired == 1, s
            assert s.confirmed or s.rejected, s
            assert s.rejected == s.payload.startswith(b"x"), s
        for s in self.toClient:
            if not self.inClientSession(s):
                assert s.fired == 1, s
                assert isinstance(s.result, Failure) and s.result.check(DeliveryFailed), s

    def teardown(self) -> None:
        """Every run ends settled."""
        self.settle()


TestSession = SessionMachine.TestCase
TestSession.pytestmark = [pytest.mark.slow]  # type: ignore[attr-defined]


class ExpiryMachine(SessionMachine):
    """
    `SessionMachine`, and the server may drop the session while the client is
    away (as after a restart, or `sessionTTL`): the client then starts a new
    session, and its application sends again each message that failed with
    ``maybeProcessed=True``. At least once overall, at most once per session.
    """

    def __init__(self) -> None:
        super().__init__()
        self.expired = 0

    @rule(payload=payloads)
    def clientSends(self, payload: bytes) -> None:
        """The client's application sends; an uncertain failure is sent again."""
        self.sendFromClient(self.unique(payload))

    def sendFromClient(self, payload: bytes) -> None:
        """Send C{payload} from the client, and again if it fails uncertain."""
        sent = Sent(payload, self.client, then=self.resendUncertain)
        self.toServer.append(sent)
        sent.watch(self.client.sendMessage(payload))

    def resendUncertain(self, sent: Sent) -> None:
        """The application's part of at-least-once."""
        if sent.uncertain:
            self.sendFromClient(sent.payload)

    @precondition(lambda self: self.link.client.loss is not None)
    @rule()
    def expire(self) -> None:
        """The server forgets the sessions without a connection (even while the client's
        application is still busy with one of its messages)."""
        self.expired += self.server.expireSessions(
            self.clock.seconds() + self.server.sessionTTL + 1
        )

    def finalAttempts(self) -> dict[bytes, Sent]:
        """The latest send of each client message."""
        return {s.payload: s for s in self.toServer}

    @invariant()
    def exactlyOnceInOrder(self) -> None:
        """At most once per server session; a Receipt only for what was processed; a
        client message fails only uncertain (and is sent again) or rejected; no
        Deferred fired twice; the client processes each server message once."""
        perSession = list(zip(self.server.tokens, self.serverReceived, strict=True))
        assert len(perSession) == len(set(perSession))
        assert len(self.clientReceived) == len(set(self.clientReceived))
        for s in self.toServer:
            assert s.fired <= 1
            if s.confirmed or s.rejected:
                assert s.payload in self.serverReceived
            elif s.fired:
                assert s.uncertain, s
        for s in self.toClient:
            assert s.fired <= 1
            if s.confirmed or s.rejected:
                assert s.payload in self.clientReceived

    @invariant()
    def oneSession(self) -> None:
        """At most one live server connection carries the client's session."""
        assert len(self.carriers()) <= 1

    @rule()
    def settle(self) -> None:
        """Heal, reconnect if need be, wait: every client message processed at least
        once, its latest attempt confirmed; server messages of the live session
        confirmed, the others failed."""
        for link in self.links:
            link.unstall()
            link.fragment(0)
        self.advanceAll(SETTLE)
        if self.link.client.loss is not None:
            self.connect()
        self.advanceAll(SETTLE)
        if self.link.client.loss is not None:  # it found its session gone: again
            self.connect()
            self.advanceAll(SETTLE)
        assert self.link.client.loss is None, self.link.client.loss
        self.server.expireSessions(self.clock.seconds() + self.server.sessionTTL + 1)
        assert set(self.serverReceived) == {s.payload for s in self.toServer}
        resent = {s.payload for s in self.toServer if s.uncertain}
        duplicates = {p for p in self.serverReceived if self.serverReceived.count(p) > 1}
        assert duplicates <= resent
        for s in self.finalAttempts().values():
            assert s.confirmed or s.rejected, s
        for s in self.toServer:
            assert s.fired == 1, s
        for s in self.toClient:
            assert s.fired == 1, s
            if self.inClientSession(s):
                assert s.confirmed or s.rejected, s
                assert s.payload in self.clientReceived
            elif not (s.confirmed or s.rejected):  # its session ended first
                assert isinstance(s.result, Failure) and s.result.check(DeliveryFailed), s


TestExpiry = ExpiryMachine.TestCase
TestExpiry.pytestmark = [pytest.mark.slow]  # type: ignore[attr-defined]


# -- regressions found by the machines ----------------------------------------------------


def sessionPair() -> tuple[AliveServerFactory, AliveClientFactory, FakeLink[App, App]]:
    """Session factories of L{App}s and a link between two of their protocols."""
    server = SessionServer([], [])
    client = SessionClient([], [])
    return server, client, reconnected(server, client, Clock())


def reconnected(
    server: AliveServerFactory, client: AliveClientFactory, clock: Clock
) -> FakeLink[App, App]:
    """A new link between protocols of C{server} and C{client}."""
    return FakeLink(
        cast(App, server.buildProtocol(ADDRESS)), cast(App, client.buildProtocol(ADDRESS)), clock
    )


def test_closeDuringHandshakeCreatesNoSession() -> None:
    """A server that closes before the client's HELLO arrived answers GOODBYE, and keeps
    no session for it (the client never learns a token to resume it with)."""
    server, client, link = sessionPair()
    link.server.close(GoodbyeCode.SHUTTING_DOWN, "going down")
    link.flush()
    assert link.client.loss is not None and link.client.loss.reason is Reason.CLEAN_CLOSE
    assert client.session.token == NO_SESSION
    assert len(server.sessions) == 0


def test_slowMessageOfAnAbandonedSession() -> None:
    """A message still being processed when the server forgets the session does not
    disturb the client's new session: the next connection opens and works. (Found by
    ExpiryMachine: the old message's completion used to mark message 1 of the new
    session as processed, and every later connection ended in PROTOCOL_ERROR.)"""
    server, client, link = sessionPair()
    clock = link.clock
    link.flush()
    link.server.sendMessage(b"s: slow to process")
    link.flush()  # the client's application is busy with it for SLOW seconds
    link.reset()
    server.expireSessions(clock.seconds() + server.sessionTTL + 1)
    link = reconnected(server, client, clock)
    link.flush()  # SESSION_UNKNOWN: the client starts a new session
    assert link.client.loss is not None
    link.advance(2 * SLOW)  # the old message's processing ends
    link = reconnected(server, client, clock)
    d = client.sendMessage(b"in the new session")
    link.advance(INTERVAL)
    assert link.client.loss is None, link.client.loss
    assert isinstance(d.result, Receipt)
