"""
twisted_alive: is the peer still there, why did the connection end, and did
my message really reach the peer's application?

Heartbeats, loss classification and confirmed, resumable delivery for
long-lived Twisted TCP connections.
"""

from pathlib import Path

from twisted_alive._factories import AliveClientFactory, AliveServerFactory
from twisted_alive._interfaces import ISessionStore, ISharedSessionStore, ITransactionalStore
from twisted_alive._kernel import KernelLiveness, PeekState, peek, setKernelLiveness
from twisted_alive._mixin import HeartbeatMixin, HeartbeatProtocol
from twisted_alive._reasons import Cause, Loss, Reason, causeOf, classify
from twisted_alive._redis import RedisSessionStore, SessionNotFound, SessionTakenOver
from twisted_alive._stores import MemorySessionStore, SqliteSessionStore, sessionStoreFromString
from twisted_alive._wrapping import AliveWrappingFactory, AliveWrappingProtocol
from twisted_alive.core.frames import FrameError, GoodbyeCode
from twisted_alive.core.outcomes import DeliveryFailed, MessageInfo, QueueFull, Receipt
from twisted_alive.core.retry import Retry
from twisted_alive.core.stored import (
    CorruptStore,
    StoreClosed,
    StoredSession,
    StoreError,
    StoreLimits,
    StoreStatistics,
    sessionIdOf,
)


def _version() -> str:
    """This package's version: from its installed metadata; in a source
    checkout that was never installed, from ``setup.cfg``; else
    ``0+unknown``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("twisted_alive")
    except PackageNotFoundError:
        pass
    try:
        text = (Path(__file__).resolve().parent.parent / "setup.cfg").read_text()
    except OSError:
        return "0+unknown"
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if equals and name.strip() == "version" and value.strip():
            return value.strip()
    return "0+unknown"


__version__: str = _version()
"""The version of twisted_alive, e.g. ``"0.1.0"``."""

__all__ = [
    "__version__",
    "HeartbeatMixin",
    "HeartbeatProtocol",
    "AliveClientFactory",
    "AliveServerFactory",
    "AliveWrappingFactory",
    "AliveWrappingProtocol",
    "Retry",
    "Reason",
    "Cause",
    "Loss",
    "classify",
    "causeOf",
    "Receipt",
    "DeliveryFailed",
    "MessageInfo",
    "QueueFull",
    "GoodbyeCode",
    "FrameError",
    "setKernelLiveness",
    "KernelLiveness",
    "peek",
    "PeekState",
    "ISessionStore",
    "ITransactionalStore",
    "ISharedSessionStore",
    "MemorySessionStore",
    "SqliteSessionStore",
    "RedisSessionStore",
    "SessionTakenOver",
    "SessionNotFound",
    "sessionIdOf",
    "sessionStoreFromString",
    "StoredSession",
    "StoreLimits",
    "StoreStatistics",
    "StoreClosed",
    "StoreError",
    "CorruptStore",
]
