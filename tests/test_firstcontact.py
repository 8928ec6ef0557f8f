"""
A first contact without traps: mistakes a new user makes with the mixin are
reported at once, in words that name the fix, and ``close()`` and sends
around it always have a definite outcome.
"""

from __future__ import annotations

import pytest
from support import (
    RecordingPeer,
    TimedStringTransport,
    assertNoResult,
    connectAlone,
    failureResultOf,
    forProtocol,
    successResultOf,
)
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twisted_alive import (
    AliveServerFactory,
    DeliveryFailed,
    HeartbeatMixin,
    HeartbeatProtocol,
    Reason,
)
from twisted_alive.core.frames import Goodbye, GoodbyeCode, encode


class Peer(RecordingPeer):
    """A recording peer with a 1 s heartbeat."""

    heartbeatInterval = 1.0


# -- base order ------------------------------------------------------------------------


def test_protocolBeforeMixinRefused() -> None:
    """``class P(Protocol, HeartbeatMixin)`` is refused at class creation, naming the fix."""
    with pytest.raises(TypeError) as info:

        class P(Protocol, HeartbeatMixin):
            pass

    assert str(info.value) == (
        "test_protocolBeforeMixinRefused.<locals>.P lists Protocol before HeartbeatMixin, "
        "so Protocol's connectionMade/dataReceived/connectionLost hide the mixin's: list "
        "HeartbeatMixin before Protocol: class P(HeartbeatMixin, Protocol)"
    )


def test_protocolSubclassBeforeMixinRefused() -> None:
    """Any Protocol subclass listed before the mixin (a LineReceiver) is refused too."""
    with pytest.raises(TypeError, match=r"class Lines\(HeartbeatMixin, LineReceiver\)$"):

        class Lines(LineReceiver, HeartbeatMixin):
            pass


def test_rightOrdersAccepted() -> None:
    """The documented orders, a plain mixin before HeartbeatProtocol, and subclasses are
    accepted, and work with the factories."""

    class Plain:
        pass

    class A(HeartbeatMixin, Protocol):
        pass

    class B(HeartbeatMixin, LineReceiver):
        pass

    class C(Plain, HeartbeatProtocol):
        pass

    class D(C):
        pass

    for cls in (A, B, C, D):
        assert isinstance(forProtocol(AliveServerFactory, cls).buildProtocol(None), cls)
        assert isinstance(Factory.forProtocol(cls).buildProtocol(None), cls)


# -- a connectionMade that forgot super() ----------------------------------------------


class Forgetful(Peer):
    """Overrides connectionMade without calling the base method."""

    def connectionMade(self) -> None:
        self.greeted = True


FORGOT = (
    "{} called before the connection was set up: did the subclass's connectionMade() "
    "call super().connectionMade() (before using the connection)?"
)


def test_forgottenSuperNamed() -> None:
    """On a connected protocol whose connectionMade skipped super(), sendMessage,
    sendMessages and close say to call super().connectionMade()."""
    proto = Forgetful(Clock())
    proto.makeConnection(TimedStringTransport(Clock()))  # type: ignore[no-untyped-call]
    with pytest.raises(RuntimeError) as info:
        proto.sendMessage(b"hello")
    assert str(info.value) == FORGOT.format("sendMessage()")
    with pytest.raises(RuntimeError) as info:
        proto.sendMessages([b"hello"])
    assert str(info.value) == FORGOT.format("sendMessages()")
    f = failureResultOf(proto.close(), RuntimeError)  # type: ignore[no-untyped-call]
    assert str(f.value) == FORGOT.format("close()")


# -- close() before the connection -----------------------------------------------------


def test_closeBeforeConnectionFailsAtOnce() -> None:
    """close() before the connection is made fails at once (never hangs); the protocol
    can still be connected and closed afterwards."""
    clock = Clock()
    proto = Peer(clock)
    f = failureResultOf(proto.close(), RuntimeError)  # type: ignore[no-untyped-call]
    assert str(f.value) == "close() called before the connection was made"
    transport = TimedStringTransport(clock)
    proto.makeConnection(transport)  # type: ignore[no-untyped-call]
    assert proto.loss is None
    d = proto.close()
    assertNoResult(d)  # type: ignore[no-untyped-call]
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))  # type: ignore[no-untyped-call]
    assert successResultOf(d).reason is Reason.LOCAL_CLOSE


# -- sending after close() -------------------------------------------------------------


def test_sendAfterCloseRaises() -> None:
    """After close(), sendMessage/sendMessages raise RuntimeError at once (no failed
    Deferred left behind), while closing and once closed; nothing more is written."""
    proto, transport, clock = connectAlone(Peer)
    proto.close()
    written = transport.value()  # type: ignore[no-untyped-call]
    with pytest.raises(RuntimeError) as info:
        proto.sendMessage(b"late")
    assert str(info.value) == "sendMessage() called after close()"
    with pytest.raises(RuntimeError) as info:
        proto.sendMessages([b"late", b"later"])
    assert str(info.value) == "sendMessages() called after close()"
    assert transport.value() == written  # type: ignore[no-untyped-call]
    assert transport.disconnecting
    proto.connectionLost(Failure(ConnectionDone()))  # type: ignore[no-untyped-call]
    assert proto.loss is not None and proto.loss.reason is Reason.LOCAL_CLOSE
    with pytest.raises(RuntimeError, match=r"^sendMessage\(\) called after close\(\)$"):
        proto.sendMessage(b"much later")


def test_sendAfterPeersGoodbyeFails() -> None:
    """When the peer said GOODBYE (this side did not close), a send is a race, not a
    mistake: it fails at once with DeliveryFailed, as before."""
    proto, transport, clock = connectAlone(Peer)
    proto.dataReceived(encode(Goodbye(GoodbyeCode.NORMAL, "bye")))
    f = failureResultOf(proto.sendMessage(b"late"), DeliveryFailed)  # type: ignore[no-untyped-call]
    assert str(f.value) == "connection is closing; message not sent"
