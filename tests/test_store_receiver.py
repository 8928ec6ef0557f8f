"""
The receiving side of a client session kept in a session store
(``AliveClientFactory(store=...)``), over the simulated network of
``test_sessions``: the processed position is committed before the ACK
that covers it, one message at a time, with the REJECTs the peer may not
have seen; a store that fails ends the session.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from test_sessions import Network, RecordingServerFactory
from test_store_client import HeldStore, result
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_alive import AliveClientFactory, HeartbeatProtocol, MemorySessionStore
from twisted_alive._interfaces import ISessionStore
from twisted_alive.core.outcomes import DeliveryFailed, Receipt
from twisted_alive.core.stored import StoreError


class CountingStore(HeldStore):
    """A `HeldStore` that records each ``recordProcessed`` call and how
    many of them wait for the test to release them."""

    def __init__(self, inner: MemorySessionStore | None = None) -> None:
        super().__init__(inner)
        self.processed: list[tuple[int, list[tuple[int, str]] | None]] = []

    def recordProcessed(
        self, token: bytes, upTo: int, rejections: Sequence[tuple[int, str]] | None = None
    ) -> Deferred[None]:
        self.processed.append((upTo, None if rejections is None else list(rejections)))
        return super().recordProcessed(token, upTo, rejections)


class Receiver(HeartbeatProtocol):
    """Records what it processes in its factory; fails on ``b"bad"``."""

    factory: ReceiverFactory

    def messageReceived(self, payload: bytes) -> None:
        self.factory.received.append(payload)
        if payload == b"bad":
            raise ValueError("cannot handle bad")


class ReceiverFactory(AliveClientFactory):
    """A client factory whose protocols record what they receive."""

    protocol = Receiver

    def __init__(self, store: ISessionStore | None = None) -> None:
        super().__init__(store)
        self.received: list[bytes] = []


def start(store: ISessionStore, factory: ReceiverFactory | None = None) -> tuple[
    Network, ReceiverFactory, Any
]:
    """A receiving client on ``store``, connected to a server that does not
    reply; the server's protocol."""
    client = factory if factory is not None else ReceiverFactory(store)
    network = Network(client, RecordingServerFactory(reply=False), Clock())
    result(client.recovered())
    network.connect()
    network.flush()
    wire = network.current
    assert wire is not None
    return network, client, wire.server


def test_ackWaitsForTheCommit() -> None:
    """The sender's Deferred fires only after the store committed the
    receiver's processed position, never before."""
    store = CountingStore()
    network, client, server = start(store)
    store.holding = True
    d = server.sendMessage(b"one")
    network.flush()
    network.advance(1.0)
    assert client.received == [b"one"]
    assert store.processed == [(1, None)]
    assert not d.called
    store.holding = False
    store.release()
    network.flush()
    receipt = result(d)
    assert isinstance(receipt, Receipt) and receipt.seq == 1
    assert store.records()[0].processedUpTo == 1


def test_serialHandOff() -> None:
    """With a store, the next message reaches the application only once
    the previous one's position is committed; one write at a time."""
    store = CountingStore()
    network, client, server = start(store)
    store.holding = True
    ds = [server.sendMessage(b"m%d" % i) for i in range(1, 4)]
    network.flush()
    network.advance(1.0)
    assert client.received == [b"m1"]
    assert store.processed == [(1, None)]
    store.release()
    network.flush()
    assert client.received == [b"m1", b"m2"]
    assert store.processed == [(1, None), (2, None)]
    assert ds[0].called and not ds[1].called
    store.holding = False
    store.release()
    network.flush()
    assert client.received == [b"m1", b"m2", b"m3"]
    assert [result(d).seq for d in ds] == [1, 2, 3]
    assert store.processed == [(1, None), (2, None), (3, None)]


def test_synchronousStoreHandsOutEverything() -> None:
    """A store whose Deferreds have fired already (`MemorySessionStore`):
    every message is processed in one go, each position written once."""
    store = CountingStore()
    network, client, server = start(store)
    ds = [server.sendMessage(b"m%d" % i) for i in range(50)]
    network.flush()
    assert len(client.received) == 50
    assert [upTo for upTo, _ in store.processed] == list(range(1, 51))
    assert all(d.called for d in ds)


def test_rejectStoredBeforeSent() -> None:
    """A message the application failed on: its REJECT is stored with the
    position, sent only after the commit, and stored again with the next
    position until the peer must have seen it."""
    store = CountingStore()
    network, client, server = start(store)
    store.holding = True
    bad = server.sendMessage(b"bad")
    good = server.sendMessage(b"good")
    network.flush()
    network.advance(1.0)
    assert store.processed == [(1, [(1, "ValueError: cannot handle bad")])]
    assert not bad.called
    store.release()
    network.flush()
    failure = cast(Failure, bad.result)
    bad.addErrback(lambda _: None)
    assert isinstance(failure.value, DeliveryFailed) and failure.value.rejected
    assert store.processed[1] == (2, [(1, "ValueError: cannot handle bad")])
    store.holding = False
    store.release()
    network.flush()
    assert result(good).seq == 2
    assert store.records()[0].rejections == ((1, "ValueError: cannot handle bad"),)


def test_storeFailureEndsTheSession() -> None:
    """A failed write of the processed position ends the session: nothing
    is acknowledged beyond what the store committed, the factory stops."""
    store = CountingStore()
    network, client, server = start(store)
    store.holding = True
    d = server.sendMessage(b"one")
    network.flush()
    assert client.received == [b"one"]
    store.holding = False
    store.release(error=StoreError("disk I/O error"))
    network.flush()
    assert not client.continueTrying
    assert network.current is None
    assert not (d.called and isinstance(d.result, Receipt))
    d.addErrback(lambda _: None)
