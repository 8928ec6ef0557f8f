"""
twisted_alive: is the peer still there, why did the connection end, and did
my message really reach the peer's application?

Heartbeats, loss classification and confirmed, resumable delivery for
long-lived Twisted TCP connections.
"""

from twisted_alive._factories import AliveClientFactory, AliveServerFactory, Retry
from twisted_alive._frames import FrameError, GoodbyeCode
from twisted_alive._kernel import KernelLiveness, PeekState, peek, setKernelLiveness
from twisted_alive._mixin import HeartbeatMixin, HeartbeatProtocol
from twisted_alive._outcomes import DeliveryFailed, QueueFull, Receipt
from twisted_alive._reasons import Cause, Loss, Reason, causeOf, classify
from twisted_alive._wrapping import AliveWrappingFactory, AliveWrappingProtocol

__all__ = [
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
    "QueueFull",
    "GoodbyeCode",
    "FrameError",
    "setKernelLiveness",
    "KernelLiveness",
    "peek",
    "PeekState",
]
